"""What the encoder costs: the amortization gap after a fixed training time.

  python benchmarks/amortization_gap.py [--seconds=60] [--num_patches=8192]

Data: whitened 16x16 patches of photographs outside the embedded default
(`benchmarks/unseen_photographs.py`), H = --num_latents. For each posterior
family (diagonal; low-rank R = --rank) an amortized model is trained with the
library's defaults until --seconds of training have passed (checked at epoch
ends), then `tfp_esc.evaluation.evaluate.amortization_gap` compares its
encoder's F with F after a converged per-point re-fit of the posteriors for
the same dictionary. With --posterior_steps=K > 0 two more rows refine the
diagonal family's posteriors by K majorise-minimise steps: one in training
and evaluation, one at inference only (`refine_in_training=False`: trained
exactly as K = 0, its posteriors and their ELBO refined). The EM default
(`fit_em`) runs on the same patches and its ELBO at the last epoch or round
within the same seconds is the
reference for the re-fit ELBO (issue 11, goal 1: gap <= 1 nat per patch;
re-fit within 3 nats of EM). --learning_rate and --batch_size change Adam's
step and the minibatch of every amortized row (default: the paper's 1e-3
and 512, which are fit_amortized's); --factor_rate=c makes the low-rank
factor's read-out learn at c times Adam's rate; --evaluate_every=k evaluates the
full data (the history) after every k-th epoch only, leaving more of the
budget to training.

Writes benchmarks/results/amortization_gap_<tag>.{json,md}.
"""

import json
import os
import time

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')

import numpy as np  # pylint: disable=wrong-import-position
from absl import app, flags  # pylint: disable=wrong-import-position

from unseen_photographs import unseen_patches  # pylint: disable=wrong-import-position

FLAGS = flags.FLAGS
flags.DEFINE_integer('num_patches', 8192, 'Training patches N.')
flags.DEFINE_integer('num_latents', 64, 'Latents H.')
flags.DEFINE_integer('rank', 5, 'Rank R of the low-rank family.')
flags.DEFINE_float('seconds', 60.0, 'Training seconds of every method.')
flags.DEFINE_integer('posterior_steps', 1,
                     'K of the extra diagonal row whose posteriors are '
                     'refined by K majorise-minimise steps (fit_amortized\'s '
                     'posterior_steps); 0: no such row.')
flags.DEFINE_list('rows', ['diagonal', 'lowrank', 'refined', 'inference'],
                  'Rows to run: diagonal, lowrank, and with --posterior_steps '
                  '> 0 refined (in training) and inference (refined at '
                  'inference only). EM always runs.')
flags.DEFINE_float('learning_rate', None,
                   "Adam's learning rate of every amortized row; default "
                   "fit_amortized's (the paper's 1e-3).")
flags.DEFINE_integer('batch_size', None,
                     'Minibatch size of every amortized row; default '
                     "fit_amortized's (the paper's 512).")
flags.DEFINE_integer('evaluate_every', 1,
                     "fit_amortized's evaluate_every for every amortized row: "
                     'the full-data evaluation after every this many epochs '
                     '(and the last); training does not depend on it.')
flags.DEFINE_float('factor_rate', 1.0,
                   "fit_amortized's factor_rate for the low-rank row: its "
                   "factor's read-out learns at this times Adam's rate.")
flags.DEFINE_integer('seed', 0, 'Seed.')
flags.DEFINE_string('tag', time.strftime('%Y-%m-%d'), 'Results file tag.')

_RESULTS = os.path.join(os.path.dirname(__file__), 'results')


def _amortized(x, posterior, posterior_steps=0, refine_in_training=True):
  import keras  # pylint: disable=import-outside-toplevel
  from tfp_esc.evaluation.evaluate import amortization_gap  # pylint: disable=import-outside-toplevel
  from tfp_esc.inference.amortized import fit_amortized  # pylint: disable=import-outside-toplevel
  start = time.perf_counter()

  class StopAtBudget(keras.callbacks.Callback):
    """Ends training after the first epoch that ends past the budget."""

    def on_epoch_end(self, epoch, logs=None):
      if time.perf_counter() - start >= FLAGS.seconds:
        self.model.stop_training = True

  options = {k: FLAGS[k].value for k in ('learning_rate', 'batch_size')
             if FLAGS[k].value is not None}
  model, history = fit_amortized(
      x, FLAGS.num_latents, posterior=posterior, rank=FLAGS.rank, **options,
      epochs=10_000, seed=FLAGS.seed, callbacks=[StopAtBudget()], verbose=0,
      posterior_steps=posterior_steps, refine_in_training=refine_in_training,
      evaluate_every=FLAGS.evaluate_every, factor_rate=FLAGS.factor_rate)
  seconds = time.perf_counter() - start
  gap_start = time.perf_counter()
  gap = amortization_gap(model, x)
  del gap['model']   # its 'elbo' is encoder_elbo; the table needs no more
  return dict(gap, epochs=history['epoch'][-1] + 1, train_seconds=seconds,
              gap_seconds=time.perf_counter() - gap_start)


def _optimizer_note():
  parts = [f'{name} {FLAGS[k].value:g}' for k, name in (
      ('learning_rate', 'learning rate'), ('batch_size', 'batch size'))
           if FLAGS[k].value is not None]
  if FLAGS.evaluate_every != 1:
    parts.append(f'full-data evaluation every {FLAGS.evaluate_every} epochs')
  if FLAGS.factor_rate != 1.0:
    parts.append(f'low-rank factor rate {FLAGS.factor_rate:g}')
  return f' (amortized: {", ".join(parts)})' if parts else ''


def _em(x):
  from tfp_esc.inference.em import fit_em  # pylint: disable=import-outside-toplevel
  result = fit_em(x, FLAGS.num_latents, seed=FLAGS.seed, epochs=6,
                  verbose=0)
  seconds = np.asarray(result.history['seconds'])
  within = np.flatnonzero(seconds <= FLAGS.seconds)
  last = int(within[-1]) if within.size else 0
  return {'elbo_within_budget': result.history['elbo'][last],
          'seconds_at_that_point': float(seconds[last]),
          'elbo_final': result.history['elbo'][-1],
          'seconds_final': float(seconds[-1])}


def main(argv):
  del argv
  k = FLAGS.posterior_steps
  known = {'diagonal': ('diagonal', ('diagonal', 0, True)),
           'lowrank': ('lowrank', ('lowrank', 0, True)),
           'refined': (f'diagonal, {k} posterior steps', ('diagonal', k, True)),
           'inference': (f'diagonal, {k} posterior steps at inference only',
                         ('diagonal', k, False))}
  unknown = sorted(set(FLAGS.rows) - set(known))
  if unknown:
    raise app.UsageError(f'--rows: unknown {unknown}; known {sorted(known)}.')
  rows = dict(known[r] for r in FLAGS.rows
              if k or r not in ('refined', 'inference'))
  x = unseen_patches(FLAGS.num_patches, FLAGS.seed)
  results = {'em_default': _em(x)}
  for name, (posterior, steps, in_training) in rows.items():
    results[name] = _amortized(x, posterior, steps, in_training)
    print(name, json.dumps(results[name]), flush=True)
  em = results['em_default']['elbo_within_budget']
  lines = [
      '# Amortization gap', '',
      f'{FLAGS.num_patches} whitened 16x16 patches of unseen photographs, '
      f'H = {FLAGS.num_latents}, {FLAGS.seconds:.0f} s of training each'
      f'{_optimizer_note()}. '
      f'EM default within the same seconds: ELBO {em:.2f} '
      f'(at {results["em_default"]["seconds_at_that_point"]:.0f} s).', '',
      '| posterior | epochs | model ELBO | re-fit ELBO | gap (goal <= 1) '
      '| re-fit - EM (goal >= -3) |', '|---|---|---|---|---|---|']
  for name in rows:
    r = results[name]
    lines.append(f'| {name} | {r["epochs"]} | {r["encoder_elbo"]:.2f} | '
                 f'{r["refit_elbo"]:.2f} | {r["gap"]:.2f} | '
                 f'{r["refit_elbo"] - em:+.2f} |')
  os.makedirs(_RESULTS, exist_ok=True)
  stem = os.path.join(_RESULTS, f'amortization_gap_{FLAGS.tag}')
  with open(stem + '.json', 'w') as f:
    json.dump({'flags': {k: FLAGS[k].value for k in (
        'num_patches', 'num_latents', 'rank', 'seconds', 'seed',
        'posterior_steps', 'rows', 'learning_rate', 'batch_size',
        'evaluate_every', 'factor_rate')},
               'results': results}, f, indent=1)
  with open(stem + '.md', 'w') as f:
    f.write('\n'.join(lines) + '\n')
  print('\n'.join(lines))


if __name__ == '__main__':
  app.run(main)
