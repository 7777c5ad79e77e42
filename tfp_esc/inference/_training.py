"""What the trainers share: checked data, its scale, the record of an ELBO.

Data scale. The model is equivariant under scaling the data: for c > 0, the
data c x are explained by the same dictionary W with codes c z, scales
c lambda and noise variance c^2 sigma^2, and every ELBO moves by the
Jacobian, F(c x) = F(x) - D log c. The optimisers are not: posterior-scale
floors, initial scales, step sizes and the L-BFGS geometry are absolute
numbers. So every entry point (`fit_joint`, both `fit_em` engines,
`fit_amortized`, the evaluations) divides its data by one number,
`data_scale(x)`, the root mean square of x, works on x / s, and maps what it
reports back to x's units with `to_data_units` and `scale_posterior`: the
dictionary unchanged, means, standard deviations and scales times s, noise
variances times s^2, ELBOs minus D log s. Training on 2^k x repeats training
on x bit for bit (scaling by a power of two is exact in floating point,
within the float's range); for any other c, c x / s differs from x / s by a
rounding of each entry, so results agree as closely as the optimiser's
sensitivity to one rounding of its input allows (measured in the tests).
(A power-of-two s would not be better: for c = 10^6, x / s would then be x
times c / 2^20 = 0.95, a genuinely different input to the optimiser.)
(Relative floors alone would not do: the joint L-BFGS mixes scale-free
dictionary parameters with means in data units, and an encoder network sees
raw inputs; neither is equivariant without normalising the data.)
"""

import math

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from tfp_esc import _checks
from tfp_esc.objective.annealing import (SCHEDULE_NAMES,
                                         AnnealingCoefficients, NoAnnealing,
                                         get_schedule)
from tfp_esc.posterior.gaussian import (DiagonalGaussian, FullGaussian,
                                        LowRankGaussian)

__all__ = ['TERMS', 'ElboEarlyStopping', 'as_data', 'batches',
           'check_callbacks', 'check_schedule', 'data_scale',
           'elbo_has_stalled', 'elbo_record', 'epoch_index_batches',
           'epoch_under_way',
           'scale_posterior', 'tensorboard_callbacks', 'to_data_units']

TERMS = ('elbo', 'q_entropy', 'prior_entropy', 'likelihood_entropy')

# Rows of x summed at once when computing its root mean square in float64.
_CHUNK = 65536


# The posterior scale floor, relative to the data's root mean square: the
# model is equivariant under scaling the data, and so is this floor (EM,
# masked EM, restoration, the amortization gap).
RELATIVE_SCALE_FLOOR = 1e-4
# Column norms of an M-step's W~ = B A^-1 below this fraction of the largest
# belong to latents whose means are all zero (they keep their old column).
DEAD_COLUMN = 1e-10


def elbo_record(terms, where):
  """The history values of an `EntropyElbo`, checked for NaN/inf.

  Args:
    terms: `EntropyElbo` (scalar tensors, `scales` `[H]`).
    where: what the values belong to, for the error message (e.g.
      'epoch 3').

  Returns:
    dict with 'elbo', 'q_entropy', 'prior_entropy', 'likelihood_entropy',
    'noise_variance' (floats) and 'scales' (list).

  Raises:
    FloatingPointError: a non-finite term, naming `where`.
  """
  values = {k: float(getattr(terms, k)) for k in TERMS}
  if not all(np.isfinite(list(values.values()))):
    raise FloatingPointError(f'non-finite ELBO terms after {where}: {values}')
  values['noise_variance'] = float(terms.noise_variance)
  values['scales'] = np.asarray(terms.scales).tolist()
  return values


def as_data(x, name='x'):
  """Training data as a NumPy `[N, D]` float32/float64 array, checked.

  See `tfp_esc._checks.check_data` (integer input becomes float32).

  Raises:
    TypeError: a non-numeric, bool or complex dtype.
    ValueError: not rank 2, empty, or NaN/inf values.
  """
  return _checks.check_data(x, name)


def data_scale(x, name='x'):
  """The number s every trainer divides x by (module doc).

  Args:
    x: `[N, D]` finite float NumPy array (as from `as_data`).
    name: argument name used in error messages.

  Returns:
    float, the root mean square of x (computed in float64).

  Raises:
    ValueError: every row of x is the same (all zeros, constant data, or a
      single row): such data lie exactly on the model's subspaces, sigma^2*
      can go to 0 and the ELBO F grows without bound, so there is nothing to
      learn or to score.
  """
  if np.all(x == x[:1]):
    kind = ('all zeros' if not np.any(x) else
            'a single row' if len(x) == 1 else 'constant: every row the same')
    raise ValueError(f'{name} has no variation ({kind}, shape {x.shape}): '
                     'the ELBO is unbounded above for such data (sigma^2* '
                     '-> 0); give data whose rows differ.')
  total = sum(float(np.sum(np.square(x[i:i + _CHUNK], dtype=np.float64)))
              for i in range(0, len(x), _CHUNK))
  rms = math.sqrt(total / x.size)
  return rms


# How each reported value moves, per unit of log s, between x / s and x:
# entropies by the Jacobians (H for the codes, D for the data).
def _log_shift(key, values, num_observed, num_latents):
  if key == 'elbo':
    return -num_observed
  if key in ('q_entropy', 'prior_entropy'):
    return num_latents
  if key == 'likelihood_entropy':
    return num_observed
  if key in ('objective', 'batch_objective'):
    # F_a = a_q H[q] - a_prior H[prior] - a_lik H[lik] (or the
    # cross-entropies, which move alike).
    # Floats, arrays or (in a tf.function) tensors alike.
    a_q, a_prior, a_lik = (values.get(k, 1.0)
                           for k in ('a_q', 'a_prior', 'a_lik'))
    return (a_q - a_prior) * num_latents - a_lik * num_observed
  return None


_POWERS = {'scales': 1, 'noise_variance': 2, 'learned_noise_variance': 2}


def to_data_units(values, scale, num_observed, num_latents):
  """ELBO terms computed on x / s, as those of x (module doc).

  Args:
    values: dict (e.g. a history record, a trace of arrays, or
      `EntropyElbo._asdict()`); the keys 'elbo', 'objective',
      'batch_objective', 'q_entropy', 'prior_entropy', 'likelihood_entropy'
      (ELBO values and entropies or cross-entropies), 'scales',
      'noise_variance' and 'learned_noise_variance' are mapped (an annealed
      objective with the record's 'a_q', 'a_prior', 'a_lik', default 1);
      other keys are kept.
    scale: s (a float).
    num_observed: D.
    num_latents: H.

  Returns:
    A new dict of the same kinds of values (floats, lists, arrays or
    tensors).
  """
  log_scale = math.log(scale)
  out = {}
  for key, value in values.items():
    shift = _log_shift(key, values, num_observed, num_latents)
    power = _POWERS.get(key)
    if shift is not None:
      factor = None
      offset = shift * log_scale
    elif power is not None:
      factor, offset = scale ** power, None
    else:
      out[key] = value
      continue
    if isinstance(offset, (int, float, np.number)):
      offset = float(offset)  # a Python float adds to tensors of any dtype
    if isinstance(value, list):
      array = np.asarray(value, np.float64)
      out[key] = (array * factor if factor else array + offset).tolist()
    elif isinstance(value, (float, int, np.floating)):
      # In float64: a float32 value plus D log s would round the shift.
      value = float(value)
      out[key] = value * factor if factor else value + offset
    elif factor:
      out[key] = value * factor
    elif isinstance(value, np.ndarray):
      out[key] = np.asarray(value, np.float64) + offset  # (as above)
    else:
      out[key] = value + offset
  return out


def scale_posterior(posterior, scale):
  """The posterior of s z for z ~ `posterior` (a `GaussianPosterior`).

  Means, standard deviations, Cholesky and low-rank factors times s.
  """
  if scale == 1.0:
    return posterior
  if isinstance(posterior, DiagonalGaussian):
    return DiagonalGaussian(posterior.loc * scale, posterior.scale * scale)
  if isinstance(posterior, FullGaussian):
    return FullGaussian(posterior.loc * scale, posterior.scale_tril * scale)
  if isinstance(posterior, LowRankGaussian):
    return LowRankGaussian(posterior.loc * scale, posterior.scale * scale,
                           posterior.factor * scale)
  raise TypeError(f'posterior must be a GaussianPosterior, got '
                  f'{type(posterior).__name__}.')


def batches(num_points, batch_size, seed, epoch, drop_remainder=False):
  """An epoch's minibatches: a permutation that depends only on (seed, epoch).

  So a run resumed from a checkpoint draws the same batches as an
  uninterrupted one.

  Returns:
    list of int index arrays of length `batch_size` (the last one shorter
    unless `drop_remainder`).
  """
  order = np.random.default_rng([seed, epoch]).permutation(num_points)
  stop = num_points - (num_points % batch_size if drop_remainder else 0)
  return [order[i:i + batch_size] for i in range(0, stop, batch_size)]


def check_schedule(schedule, name='schedule'):
  """An annealing schedule from `schedule`: None, a name or a schedule.

  Args:
    schedule: None (no annealing), one of `SCHEDULE_NAMES` (built by
      `get_schedule` with its default arguments) or an `AnnealingSchedule`
      (anything with `__call__(step)` and `is_annealed(step)`).
    name: argument name used in error messages.

  Returns:
    An `AnnealingSchedule`.

  Raises:
    TypeError: not None, a string or a schedule.
    ValueError: an unknown name, or a schedule that needs arguments.
  """
  if schedule is None:
    return NoAnnealing()
  if isinstance(schedule, str):
    if schedule.lower() not in SCHEDULE_NAMES:
      raise ValueError(f'{name} must be an AnnealingSchedule, None or one of '
                       f'{list(SCHEDULE_NAMES)}, got {schedule!r}.')
    try:
      return get_schedule(schedule)
    except (TypeError, ValueError) as e:
      raise ValueError(f'{name}={schedule!r} needs arguments: pass '
                       f'get_schedule({schedule!r}, ...) ({e})') from None
  if callable(schedule) and callable(getattr(schedule, 'is_annealed', None)):
    return schedule
  raise TypeError(f'{name} must be an AnnealingSchedule, None or one of '
                  f'{list(SCHEDULE_NAMES)}, got {type(schedule).__name__}.')


def elbo_has_stalled(history, patience, min_delta=0.0):
  """Whether the ELBO has not risen by more than `min_delta` for `patience`
  epochs (module doc, "Early stopping on the ELBO").

  Only non-annealed training epochs count: a_q = a_prior = a_lik = 1 where
  the history records the coefficients (an annealed phase moves the ELBO
  for the schedule's sake), and not the records of incremental EM's
  refinement rounds (phase 'refine', which come after the epochs).

  Args:
    history: dict of per-epoch lists with at least 'elbo' (as returned by
      `fit_amortized` and `fit_em`).
    patience: P >= 1 epochs.
    min_delta: float >= 0, the smallest rise that counts as progress.

  Returns:
    bool: True when more than P non-annealed epochs are recorded and the
    best of the last P exceeds the best before them by at most min_delta.
  """
  elbo = history.get('elbo', [])
  coefficients = zip(*(history.get(k, [1.0] * len(elbo))
                       for k in ('a_q', 'a_prior', 'a_lik')))
  phases = history.get('phase', ['em'] * len(elbo))
  elbo = np.asarray([value for value, c, phase in zip(elbo, coefficients,
                                                       phases)
                     if phase != 'refine'
                     and not AnnealingCoefficients(*c).is_annealed],
                    np.float64)
  if elbo.size <= patience:
    return False
  return bool(elbo[-patience:].max() <= elbo[:-patience].max() + min_delta)


class ElboEarlyStopping(keras.callbacks.Callback):
  """Stops training once `elbo_has_stalled(history, patience, min_delta)`.

  Args:
    history: the dict of per-epoch lists that the trainer fills (this
      callback must come after the callback that records the epoch, so it
      sees the epoch's record).
    patience, min_delta: as in `elbo_has_stalled`.
  """

  def __init__(self, history, patience, min_delta=0.0):
    super().__init__()
    self.history, self.patience, self.min_delta = history, patience, min_delta

  def on_epoch_end(self, epoch, logs=None):
    if elbo_has_stalled(self.history, self.patience, self.min_delta):
      logging.info('epoch %d: the ELBO has not risen by more than %g for %d '
                   'epochs; stopping.', epoch, self.min_delta, self.patience)
      self.model.stop_training = True


def tensorboard_callbacks(log_dir):
  """[keras.callbacks.TensorBoard(log_dir)], or [] without a log_dir or
  where TensorBoard is not installed (then with a warning: it is the
  optional extra "tfp_esc[tensorboard]")."""
  if not log_dir:
    return []
  try:
    import tensorboard  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import,import-outside-toplevel
  except ImportError:
    logging.warning('TensorBoard is not installed (pip install '
                    '"tfp_esc[tensorboard]"); no logs in %s.', log_dir)
    return []
  return [keras.callbacks.TensorBoard(log_dir)]


def epoch_under_way(state):
  """An EM trainer's epoch state, or a clear error where no epoch was begun
  (its `visit` or `end_epoch` without `begin_epoch`)."""
  if state is None:
    raise RuntimeError('visit or end_epoch without begin_epoch: begin an '
                       'epoch first (run_epoch does all three).')
  return state


def check_callbacks(callbacks):
  """A list of Keras callbacks from `callbacks` (None or an iterable)."""
  if callbacks is None:
    return []
  if isinstance(callbacks, keras.callbacks.Callback):
    raise TypeError('callbacks must be a list of keras.callbacks.Callback, '
                    'got one callback; wrap it in a list.')
  try:
    callbacks = list(callbacks)
  except TypeError:
    raise TypeError('callbacks must be a list of keras.callbacks.Callback, '
                    f'got {type(callbacks).__name__}.') from None
  for i, callback in enumerate(callbacks):
    if not isinstance(callback, keras.callbacks.Callback):
      raise TypeError(f'callbacks[{i}] must be a keras.callbacks.Callback, '
                      f'got {type(callback).__name__}.')
  return callbacks


def epoch_index_batches(epoch_order, batch_size, first_epoch, last_epoch,
                        drop_remainder):
  """`tf.data.Dataset` of `[B]` int64 index batches, epoch after epoch.

  Each epoch's order is drawn by `epoch_order` only when the pipeline
  reaches that epoch (`tf.numpy_function`), so a run asked for many epochs
  holds one epoch's order, not all of them, and cut into consecutive
  batches of `batch_size`. (A `from_generator` pipeline instead left
  something running after Keras' `fit` that slowed later work in the same
  process: `tfp_esc.inference.em.fit_epochs`.)

  tf.data's autotuning is off. The pipeline has no parallel stage to tune,
  and with it on, deleting the iterator when Keras' `fit` returned waited
  for the tuning thread (py-spy: `~LogicalThreadWrapper` under
  `RootDataset::Iterator::~Iterator`): on 8,192 unseen patches `fit_em`
  returned 5-15 s and `fit_amortized` 8-40 s after their last epoch, in
  about one call of three (session 27); with it off, within 1 s. The
  option carries over to datasets made from this one (`map`, `prefetch`).

  Args:
    epoch_order: `f(epoch) -> [n]` int array, a function of the epoch only
      (e.g. the concatenated `batches` of that epoch).
    batch_size: B.
    first_epoch, last_epoch: the epochs [first_epoch, last_epoch).
    drop_remainder: drop each epoch's last batch if shorter than B (then
      the batches have the static shape [B]).

  Returns:
    The dataset.
  """
  def order(epoch):
    return np.asarray(epoch_order(int(epoch)), np.int64)

  def epoch_batches(epoch):
    indices = tf.ensure_shape(
        tf.numpy_function(order, [epoch], tf.int64, stateful=False), [None])
    return tf.data.Dataset.from_tensor_slices(indices).batch(
        batch_size, drop_remainder=drop_remainder)

  # No tf.data autotuning: this pipeline has nothing parallel to tune, and
  # the tuning thread made deleting the iterator at the end of Keras' `fit`
  # wait for it, 5 to 40 s in about one fit of three (see the doc).
  options = tf.data.Options()
  options.autotune.enabled = False
  return tf.data.Dataset.range(first_epoch, last_epoch).flat_map(
      epoch_batches).with_options(options)
