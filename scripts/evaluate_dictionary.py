"""Scores any dictionary (e.g. a MAP / l1 one) with the entropy ELBO.

  python scripts/evaluate_dictionary.py --data=X.npy --dictionary=W.npy \
      [--posterior=diagonal] [--output=result.json]

Normalises the dictionary's columns, fits the variational parameters with
it frozen, and writes elbo (F), entropies, noise_variance, scales, gini and
log_likelihood_bound as JSON (to --output, and to stdout).

Held-out evaluation (SPEC 12) of a trained model on data it was not trained
on:

  python scripts/evaluate_dictionary.py --data=X_test.npy \
      --dictionary=run/dictionary.npy --model=run/metrics.json

--model is a JSON file with the trained 'scales' ([H] list, lambda of the
dictionary's columns) and 'noise_variance' (sigma^2): a training run's metrics.json,
or this script's --output on the training data. lambda and sigma^2 are then
frozen too, and elbo is the classical ELBO L(lambda, sigma^2) (see
tfp_esc.evaluation.evaluate.evaluate_heldout).
"""

import json
import os

import _cli  # pylint: disable=unused-import  (first: quiets TensorFlow)
import numpy as np
from absl import flags

from tfp_esc import artifacts
from tfp_esc.evaluation.evaluate import evaluate_dictionary, evaluate_heldout
from tfp_esc.experiment import POSTERIORS

FLAGS = flags.FLAGS
flags.DEFINE_string('data', None, '.npy of shape [N, D].', required=True)
flags.DEFINE_string('dictionary', None, '.npy of shape [D, H].', required=True)
flags.DEFINE_string('model', None, 'Optional JSON with the trained "scales" '
                    'and "noise_variance": held-out evaluation with them frozen.')
flags.DEFINE_enum('posterior', 'diagonal', list(POSTERIORS),
                  'Posterior family.')
flags.DEFINE_integer('rank', 2, 'Rank of the low-rank family.')
flags.DEFINE_integer('num_iw_samples', 100,
                     'Samples of the importance-weighted bound (0: skip).')
flags.DEFINE_integer('gini_samples', 10,
                     'Posterior samples per point for the Gini index.')
flags.DEFINE_integer('max_calls', 20, 'Most L-BFGS calls of the fit.')
flags.DEFINE_integer('max_iterations', 200, 'L-BFGS iterations per call.')
flags.DEFINE_bool('jit_compile', True, 'Compile the fit with XLA (faster '
                  'iterations; about as much CPU time in all on 1000 bars '
                  'points, where tracing the L-BFGS graph dominates).')
flags.DEFINE_integer('seed', 0, 'Seed.')
flags.DEFINE_string('output', None, 'Optional JSON output path.')


def _load(path, name):
  if not os.path.isfile(path):
    raise FileNotFoundError(f'--{name} file {path!r} does not exist.')
  try:
    return np.load(path, allow_pickle=False)
  except (OSError, ValueError, EOFError) as e:
    raise ValueError(f'--{name} file {path!r} is not a readable .npy array '
                     f'({e}).') from None


def _load_model(path):
  """(scales, noise_variance) from a JSON file holding both keys (or the
  key 'sigma2' of metrics files written before the one-name rename)."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f'--model file {path!r} does not exist.')
  try:
    with open(path) as f:
      model = json.load(f)
  except (OSError, ValueError) as e:
    raise ValueError(f'--model file {path!r} is not readable JSON ({e}).'
                     ) from None
  if isinstance(model, dict) and 'noise_variance' not in model:
    model['noise_variance'] = model.get('sigma2')
  missing = [k for k in ('scales', 'noise_variance')
             if not isinstance(model, dict) or model.get(k) is None]
  if missing:
    raise ValueError(f'--model file {path!r} lacks {missing}; it needs the '
                     'trained "scales" ([H] list) and "noise_variance" (a '
                     'number).')
  try:
    return (np.asarray(model['scales'], np.float64),
            float(model['noise_variance']))
  except (TypeError, ValueError) as e:
    raise ValueError(f'--model file {path!r}: "scales" must be a list of '
                     f'numbers and "noise_variance" a number ({e}).') from None


def _check_output(path):
  """Refuses an --output that cannot be written, before any work."""
  if path and os.path.isdir(path):
    raise IsADirectoryError(f'--output {path!r} is a directory; name a JSON '
                            'file.')


def main(argv):
  del argv  # Checked by _cli.run.
  _check_output(FLAGS.output)
  x = _load(FLAGS.data, 'data')
  dictionary = _load(FLAGS.dictionary, 'dictionary')
  options = {'posterior': FLAGS.posterior, 'rank': FLAGS.rank,
             'num_iw_samples': FLAGS.num_iw_samples, 'seed': FLAGS.seed,
             'gini_samples': FLAGS.gini_samples,
             'max_calls': FLAGS.max_calls,
             'max_iterations': FLAGS.max_iterations,
             'jit_compile': FLAGS.jit_compile, 'log_every': 1}
  if FLAGS.model:
    result = evaluate_heldout(x, dictionary, *_load_model(FLAGS.model),
                              **options)
  else:
    result = evaluate_dictionary(x, dictionary, **options)
  if FLAGS.output:
    artifacts.save_json(FLAGS.output, result)
  print(json.dumps(result))


if __name__ == '__main__':
  _cli.run(main)
