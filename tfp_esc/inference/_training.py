"""What the trainers share: checked data, the record of an ELBO's terms."""

import numpy as np

from tfp_esc import _checks

__all__ = ['TERMS', 'as_data', 'batches', 'elbo_record']

TERMS = ('elbo', 'q_entropy', 'prior_entropy', 'likelihood_entropy')


def elbo_record(terms, where):
  """The history values of an `EntropyElbo`, checked for NaN/inf.

  Args:
    terms: `EntropyElbo` (scalar tensors, `scales` `[H]`).
    where: what the values belong to, for the error message (e.g.
      'epoch 3').

  Returns:
    dict with 'elbo', 'q_entropy', 'prior_entropy', 'likelihood_entropy',
    'sigma2' (floats) and 'scales' (list).

  Raises:
    FloatingPointError: a non-finite term, naming `where`.
  """
  values = {k: float(getattr(terms, k)) for k in TERMS}
  if not all(np.isfinite(list(values.values()))):
    raise FloatingPointError(f'non-finite ELBO terms after {where}: {values}')
  values['sigma2'] = float(terms.noise_variance)
  values['scales'] = terms.scales.numpy().tolist()
  return values


def as_data(x):
  """Training data as a NumPy `[N, D]` float32/float64 array, checked.

  Kept in NumPy: a TF copy of a paper-size data set would add 210 MB to the
  peak memory. Integer input becomes float32.

  Raises:
    ValueError: not rank 2, or NaN/inf values.
  """
  x = np.asarray(x)
  if x.dtype not in (np.float32, np.float64):
    x = x.astype(np.float32)
  if x.ndim != 2:
    raise ValueError(f'x must have rank 2, got shape {x.shape}.')
  _checks.check_finite(x, 'x')
  return x


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
