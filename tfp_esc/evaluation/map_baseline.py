"""MAP (l1) dictionary learning: the baseline of the ELBO-trained dictionaries.

MAP sparse coding of the original model (Eq. 1) with unit Laplace prior and
noise sigma^2 minimises, per data point,

  (1/2) ||x_n - U s_n||^2 + alpha ||s_n||_1,   ||u_h||_2 <= 1,

with alpha a hand-set sparsity weight (alpha = sigma^2 / lambda in the
reparameterised model of Eq. 5), where the ELBO learns sigma^2 and lambda
(SPEC 7, 11). `learn_map_dictionary` wraps scikit-learn's
`MiniBatchDictionaryLearning`, which minimises exactly this objective (the
mean over data points), alternating sparse coding of minibatches with
dictionary updates. Evaluate its dictionary with
`tfp_esc.evaluation.evaluate.evaluate_dictionary` (which normalises the
columns and learns lambda*, sigma^2*).

The module lives in `evaluation` because it produces baselines to evaluate,
not a model of the library; scikit-learn is an optional dependency
(`pip install tfp_esc[baselines]`), imported only when a MAP dictionary is
learned.
"""

import time
import warnings

import numpy as np
from absl import logging

from tfp_esc import _checks

__all__ = ['learn_map_dictionary']


class _Stop(Exception):
  """Raised inside scikit-learn's fit loop when the callback asks to stop."""


def _check_positive_int(value, name):
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
    raise TypeError(f'{name} must be an int, got {value!r}.')
  if value < 1:
    raise ValueError(f'{name} must be >= 1, got {value}.')
  return int(value)


def _import_sklearn():
  """(MiniBatchDictionaryLearning, ConvergenceWarning), or a clear ImportError."""
  try:
    # pylint: disable=import-outside-toplevel
    from sklearn.decomposition import MiniBatchDictionaryLearning
    from sklearn.exceptions import ConvergenceWarning
  except ImportError as e:
    raise ImportError(
        'learn_map_dictionary needs scikit-learn (>= 1.4), which is not '
        'installed: pip install tfp_esc[baselines]  (or: pip install '
        f'"scikit-learn>=1.4"). Original error: {e}') from e
  return MiniBatchDictionaryLearning, ConvergenceWarning


def learn_map_dictionary(x, num_latents, alpha, *, seed=0, batch_size=256,
                         max_iter=10, fit_algorithm='cd', early_stopping=True,
                         callback=None):
  """Learns an l1 (MAP) sparse coding dictionary with scikit-learn.

  Args:
    x: `[N, D]` float data (float32 is kept, anything else becomes float64).
    num_latents: H, int >= 1.
    alpha: positive, finite l1 weight (see the module doc); the larger, the
      sparser the codes (all codes vanish for alpha >= max |U^T x_n|).
    seed: seeds scikit-learn's initialisation and minibatch order.
    batch_size: minibatch size, int >= 1 (scikit-learn uses at most N).
    max_iter: most epochs (passes over x), int >= 1.
    fit_algorithm: scikit-learn's lasso solver for the codes, 'cd'
      (coordinate descent; same dictionaries as 'lars' here, several times
      faster on image patches) or 'lars'.
    early_stopping: let scikit-learn stop before `max_iter` epochs when the
      dictionary or the smoothed objective stops changing (its defaults
      tol=1e-3, max_no_improvement=10); False runs exactly `max_iter` epochs.
    callback: optional callable(step, dictionary) run after every minibatch
      step (scikit-learn's own `callback`): step counts from 1, dictionary
      is the current `[D, H]` (a view: copy what you keep). Returning True
      stops training there, and that dictionary is returned. Since each
      step depends only on the steps before it, the dictionary after k
      epochs' steps is the one a run with max_iter=k returns.

  Returns:
    `[D, H]` NumPy dictionary of x's float dtype: scikit-learn's
    `components_` `[H, D]` transposed. Its columns have norm <= 1 (1 for
    every atom that is used); do not assume unit norm.

  Raises:
    ValueError: x not `[N, D]` with N, D >= 1 (shape printed), NaN/inf in x,
      num_latents / batch_size / max_iter < 1, alpha not positive and
      finite, unknown fit_algorithm.
    TypeError: non-numeric x, non-int num_latents / batch_size / max_iter,
      callback not callable.
    ImportError: scikit-learn is missing (says how to install it).
  """
  x = np.asarray(x)
  if x.dtype.kind not in 'fiu':
    raise TypeError(f'x must be numeric, got dtype {x.dtype}.')
  if x.ndim != 2 or 0 in x.shape:
    raise ValueError(f'x must be [N, D] with N, D >= 1, got shape {x.shape}.')
  x = x if x.dtype in (np.float32, np.float64) else x.astype(np.float64)
  _checks.check_finite(x, 'x')
  num_latents = _check_positive_int(num_latents, 'num_latents')
  batch_size = _check_positive_int(batch_size, 'batch_size')
  max_iter = _check_positive_int(max_iter, 'max_iter')
  try:
    alpha = float(alpha)
  except (TypeError, ValueError) as e:
    raise TypeError(f'alpha must be a positive float, got {alpha!r}.') from e
  if not (np.isfinite(alpha) and alpha > 0):
    raise ValueError(f'alpha must be positive and finite, got {alpha}.')
  if fit_algorithm not in ('lars', 'cd'):
    raise ValueError(f"fit_algorithm must be 'lars' or 'cd', got "
                     f'{fit_algorithm!r}.')
  if callback is not None and not callable(callback):
    raise TypeError(f'callback must be callable, got {callback!r}.')
  learner_class, convergence_warning = _import_sklearn()
  stopped = []

  def on_step(state):
    # scikit-learn passes its fit loop's locals: the step index i and the
    # current components `[H, D]`.
    if callback(state['i'] + 1, state['dictionary'].T):
      stopped.append((state['i'] + 1, state['dictionary'].copy()))
      raise _Stop()

  learner = learner_class(
      n_components=num_latents, alpha=alpha, max_iter=max_iter,
      batch_size=min(batch_size, x.shape[0]), fit_algorithm=fit_algorithm,
      tol=1e-3 if early_stopping else 0.0,
      max_no_improvement=10 if early_stopping else None,
      random_state=int(seed), callback=None if callback is None else on_step)
  start = time.perf_counter()
  with warnings.catch_warnings(record=True) as caught:
    # The per-batch lasso solver warns about unconverged codes, often
    # hundreds of times; they are counted and logged once instead.
    warnings.simplefilter('always', convergence_warning)
    try:
      learner.fit(x)
    except _Stop:
      learner.n_steps_, learner.components_ = stopped[0]
  num_unconverged = 0
  for w in caught:
    if issubclass(w.category, convergence_warning):
      num_unconverged += 1
    else:
      warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
  logging.info('MAP dictionary: H=%d, alpha=%g, %d steps (%d epochs at '
               'most), %.1f s, %d unconverged lasso warnings.', num_latents,
               alpha, learner.n_steps_, max_iter,
               time.perf_counter() - start, num_unconverged)
  return np.ascontiguousarray(learner.components_.T, dtype=x.dtype)
