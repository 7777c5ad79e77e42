"""Scores any dictionary (e.g. a MAP / l1 one) with the entropy ELBO.

  python scripts/evaluate_dictionary.py --data=X.npy --dictionary=W.npy \
      [--posterior=diagonal] [--output=result.json]

Normalises the dictionary's columns, fits the variational parameters with
it frozen, and writes elbo, entropies, sigma2, scales, gini and
log_likelihood_bound as JSON (to --output, and to stdout).
"""

import json
import os

import numpy as np
from absl import app, flags

from tfp_esc import artifacts
from tfp_esc.evaluation.evaluate import evaluate_dictionary

FLAGS = flags.FLAGS
flags.DEFINE_string('data', None, '.npy of shape [N, D].', required=True)
flags.DEFINE_string('dictionary', None, '.npy of shape [D, H].', required=True)
flags.DEFINE_enum('posterior', 'diagonal', ['diagonal', 'full', 'lowrank'],
                  'Posterior family.')
flags.DEFINE_integer('rank', 2, 'Rank of the low-rank family.')
flags.DEFINE_integer('num_iw_samples', 100,
                     'Samples of the importance-weighted bound (0: skip).')
flags.DEFINE_integer('seed', 0, 'Seed.')
flags.DEFINE_string('output', None, 'Optional JSON output path.')


def _load(path, name):
  if not os.path.isfile(path):
    raise FileNotFoundError(f'--{name} file {path!r} does not exist.')
  return np.load(path, allow_pickle=False)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  result = evaluate_dictionary(
      _load(FLAGS.data, 'data'), _load(FLAGS.dictionary, 'dictionary'),
      posterior=FLAGS.posterior, rank=FLAGS.rank,
      num_iw_samples=FLAGS.num_iw_samples, seed=FLAGS.seed, log_every=1)
  if FLAGS.output:
    artifacts.save_json(FLAGS.output, result)
  print(json.dumps(result))


if __name__ == '__main__':
  app.run(main)
