"""Analytic vs. sampled ELBOs: gradient variance, step time, F per second.

  python scripts/compare_elbos.py --data=bars --posterior=diagonal \
      --samples=1,10,100 --seconds=30 --output_dir=runs/compare_elbos

Trains the same amortized model (same initial weights and batches) once on
the analytic entropy ELBO F and once per S on the Monte-Carlo ELBO with S
reparameterised samples, each for --seconds of training time, and writes
compare_elbos.json (dictionary-gradient variance over seeds, seconds per
step, full-data F at regular checkpoints; see
tfp_esc.inference.elbo_comparison.compare_elbos) and elbo_vs_seconds.png to
--output_dir. Data: generated bars, or whitened natural-image patches (the
embedded scikit-image photographs unless --images names other images).
"""

import os

import _cli  # pylint: disable=unused-import  (first: quiets TensorFlow)
import numpy as np
from absl import flags, logging

from tfp_esc import artifacts
from tfp_esc.data.bars import make_bars
from tfp_esc.data.patches import whitened_patches
from tfp_esc.evaluation import plots
from tfp_esc.experiment import POSTERIORS
from tfp_esc.inference.elbo_comparison import compare_elbos

# Per-data defaults of the flags that default to None.
_DEFAULTS = {'bars': {'num_points': 1000, 'num_latents': 10,
                      'batch_size': 100},
             'patches': {'num_points': 10240, 'num_latents': 100,
                         'batch_size': 256}}

FLAGS = flags.FLAGS
flags.DEFINE_enum('data', 'bars', ['bars', 'patches'], 'Data set.')
flags.DEFINE_enum('posterior', 'diagonal', list(POSTERIORS),
                  'Posterior family of the encoder.')
flags.DEFINE_integer('rank', 5, 'Rank R of the low-rank family.')
flags.DEFINE_list('samples', ['1', '10', '100'],
                  'Comma-separated S of the sampled ELBOs.')
flags.DEFINE_float('seconds', 30.0, 'Training-time budget per method.')
flags.DEFINE_integer('num_points', None, 'Data points N (default: 1000 bars, '
                     '10240 patches).')
flags.DEFINE_integer('num_latents', None, 'Latents H (default: 10 bars, 100 '
                     'patches).')
flags.DEFINE_integer('batch_size', None, 'Minibatch size (default: 100 bars, '
                     '256 patches).')
flags.DEFINE_integer('num_checkpoints', 10,
                     'Full-data F evaluations within the budget.')
flags.DEFINE_integer('num_repeats', 20,
                     'Seeds per dictionary-gradient variance measurement.')
flags.DEFINE_float('learning_rate', 1e-3, 'Adam learning rate.')
flags.DEFINE_integer('hidden_units', 256, 'Width of the encoder.')
flags.DEFINE_string('images', None, 'Patches: IMAGES.mat, an image folder or '
                    '.npy/.npz; default: embedded scikit-image photographs.')
flags.DEFINE_integer('seed', 0, 'Seed of data, weights, batches, samples.')
flags.DEFINE_string('output_dir', 'runs/compare_elbos',
                    'Where outputs are written.')


def _samples(values):
  try:
    samples = [int(v) for v in values]
  except ValueError:
    raise ValueError(f'--samples must be comma-separated integers, got '
                     f'{",".join(values)!r}.') from None
  if not samples or min(samples) < 1:
    raise ValueError(f'--samples must be integers >= 1, got {samples}.')
  return samples


def _option(name):
  value = getattr(FLAGS, name)
  return _DEFAULTS[FLAGS.data][name] if value is None else value


def main(argv):
  del argv  # Checked by _cli.run.
  samples = _samples(FLAGS.samples)
  num_points = _option('num_points')
  if FLAGS.data == 'bars':
    x = make_bars(num_points, seed=FLAGS.seed).x.astype(np.float32)
  else:
    x = whitened_patches(FLAGS.images, num_patches=num_points,
                         seed=FLAGS.seed, dtype=np.float32)
  result = compare_elbos(
      x, _option('num_latents'), posterior=FLAGS.posterior, rank=FLAGS.rank,
      num_samples=samples, seconds=FLAGS.seconds,
      num_checkpoints=FLAGS.num_checkpoints,
      batch_size=_option('batch_size'), learning_rate=FLAGS.learning_rate,
      hidden_units=FLAGS.hidden_units, num_repeats=FLAGS.num_repeats,
      seed=FLAGS.seed)
  result['config']['data'] = FLAGS.data
  artifacts.save_json(os.path.join(FLAGS.output_dir, 'compare_elbos.json'),
                      result)
  with artifacts.atomic_path(
      os.path.join(FLAGS.output_dir, 'elbo_vs_seconds.png')) as tmp:
    plots.plot_elbo_vs_seconds(
        {m['name']: m['trace'] for m in result['methods']}, path=tmp,
        title=f'{FLAGS.data}, {FLAGS.posterior} posterior: analytic vs. '
        'sampled ELBO')
  for m in result['methods']:
    logging.info('%-16s F %9.4f  %.4g s/step  %5d steps  grad variance %.3g '
                 '(relative %.3g)', m['name'], m['final_elbo'],
                 m['seconds_per_step'], m['steps'],
                 m['gradient_initial']['mean_variance'],
                 m['gradient_initial']['relative_variance'])
  logging.info('Wrote %s', FLAGS.output_dir)


if __name__ == '__main__':
  _cli.run(main)
