"""Learns the bars dictionary with the entropy ELBO and writes plots + metrics.

  python scripts/train_bars.py --output_dir=runs/bars

Writes dictionary.npy, metrics.json, dictionary.png and training.png to
--output_dir. See tfp_esc.experiment.BarsConfig for what each setting means.
"""

from absl import app, flags

from tfp_esc import experiment

_DEFAULTS = experiment.BarsConfig()
FLAGS = flags.FLAGS
flags.DEFINE_integer('seed', _DEFAULTS.seed, 'Seed of data and initialisation.')
flags.DEFINE_integer('num_points', _DEFAULTS.num_points,
                     'Number of generated data points N.')
flags.DEFINE_enum('posterior', _DEFAULTS.posterior,
                  ['full', 'diagonal', 'lowrank'], 'Posterior family.')
flags.DEFINE_integer('rank', _DEFAULTS.rank, 'Rank R of the low-rank family.')
flags.DEFINE_enum('annealing', _DEFAULTS.annealing,
                  ['none', 'prior', 'prior_linear', 'likelihood', 'beta'],
                  'Entropy annealing scheme (indexed by L-BFGS call).')
flags.DEFINE_string('data', None,
                    'Optional .npy of shape [N, 25] to train on instead of '
                    'generated bars.')
flags.DEFINE_string('output_dir', 'runs/bars', 'Where outputs are written.')
flags.DEFINE_integer('max_calls', _DEFAULTS.max_calls, 'Most L-BFGS calls.')
flags.DEFINE_integer('max_iterations', _DEFAULTS.max_iterations,
                     'L-BFGS iterations per call.')
flags.DEFINE_enum('dtype', _DEFAULTS.dtype, ['float64', 'float32'],
                  'Float type of the computation.')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  config = experiment.BarsConfig(
      seed=FLAGS.seed, num_points=FLAGS.num_points, posterior=FLAGS.posterior,
      rank=FLAGS.rank, annealing=FLAGS.annealing, data_path=FLAGS.data,
      max_calls=FLAGS.max_calls, max_iterations=FLAGS.max_iterations,
      dtype=FLAGS.dtype)
  experiment.train_bars(config, FLAGS.output_dir)


if __name__ == '__main__':
  app.run(main)
