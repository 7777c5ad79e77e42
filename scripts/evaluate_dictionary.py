"""Scores any dictionary (e.g. a MAP / l1 one) with the entropy ELBO.

  python scripts/evaluate_dictionary.py --data=X.npy --dictionary=W.npy \
      [--posterior=diagonal] [--output=result.json]

Normalises the dictionary's columns, fits the variational parameters with
it frozen, and writes elbo (F), entropies, sigma2, scales, gini and
log_likelihood_bound as JSON (to --output, and to stdout).

Held-out evaluation (SPEC 12) of a trained model on data it was not trained
on:

  python scripts/evaluate_dictionary.py --data=X_test.npy \
      --dictionary=run/dictionary.npy --model=run/metrics.json

--model is a JSON file with the trained 'scales' ([H] list, lambda of the
dictionary's columns) and 'sigma2' (sigma^2): a training run's metrics.json,
or this script's --output on the training data. lambda and sigma^2 are then
frozen too, and elbo is the classical ELBO L(lambda, sigma^2) (see
tfp_esc.evaluation.evaluate.evaluate_heldout).
"""

import json
import os

import numpy as np
from absl import app, flags

from tfp_esc import artifacts
from tfp_esc.evaluation.evaluate import evaluate_dictionary, evaluate_heldout

FLAGS = flags.FLAGS
flags.DEFINE_string('data', None, '.npy of shape [N, D].', required=True)
flags.DEFINE_string('dictionary', None, '.npy of shape [D, H].', required=True)
flags.DEFINE_string('model', None, 'Optional JSON with the trained "scales" '
                    'and "sigma2": held-out evaluation with them frozen.')
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


def _load_model(path):
  """(scales, sigma2) from a JSON file holding both keys."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f'--model file {path!r} does not exist.')
  with open(path) as f:
    model = json.load(f)
  missing = [k for k in ('scales', 'sigma2')
             if not isinstance(model, dict) or model.get(k) is None]
  if missing:
    raise ValueError(f'--model file {path!r} lacks {missing}; it needs the '
                     'trained "scales" ([H] list) and "sigma2" (a number).')
  return np.asarray(model['scales'], np.float64), float(model['sigma2'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  x = _load(FLAGS.data, 'data')
  dictionary = _load(FLAGS.dictionary, 'dictionary')
  options = {'posterior': FLAGS.posterior, 'rank': FLAGS.rank,
             'num_iw_samples': FLAGS.num_iw_samples, 'seed': FLAGS.seed,
             'log_every': 1}
  if FLAGS.model:
    result = evaluate_heldout(x, dictionary, *_load_model(FLAGS.model),
                              **options)
  else:
    result = evaluate_dictionary(x, dictionary, **options)
  if FLAGS.output:
    artifacts.save_json(FLAGS.output, result)
  print(json.dumps(result))


if __name__ == '__main__':
  app.run(main)
