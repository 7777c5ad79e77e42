"""Monte-Carlo ELBO from the TFP distributions (SPEC 5, fact 4).

  ELBO ~= (1/S) sum_s (1/N) sum_n [log p(x_n, z_sn) - log q_n(z_sn)],
  z_sn ~ q_n, reparameterized,

built from `SparseCodingModel` (tfd.Laplace, tfd.Normal) and the posterior's
TFP distribution. It is the stochastic estimate that the analytic ELBO is held
against, and the objective of sampled-ELBO training.

Also the importance-weighted bound (SPEC 12) with q as the proposal,

  log p(x_n) >= E log (1/K) sum_k p(x_n, z_k) / q_n(z_k),   z_k ~ q_n,

which equals the ELBO in expectation for K = 1 and rises with K towards
log p(x_n): a tighter bound for honest model comparison.
"""

import collections

import tensorflow as tf
import tensorflow_probability as tfp

from tfp_esc import _checks

__all__ = ['ImportanceWeightedBound', 'SampledElbo',
           'importance_weighted_bound', 'sampled_elbo']

SampledElbo = collections.namedtuple('SampledElbo',
                                     ['mean', 'stderr', 'per_sample'])
SampledElbo.__doc__ = """A Monte-Carlo ELBO estimate per data point.

Fields:
  mean: `[]` the estimate (differentiable: reparameterized samples).
  stderr: `[]` its standard error, std over samples / sqrt(S).
  per_sample: `[S]` the ELBO of each sample averaged over data points.
"""


def _check_inputs(x, model, posterior, num_samples):
  """Converts x `[N, D]` and checks it and num_samples; returns both."""
  num_samples = _checks.check_count(num_samples, 'num_samples')
  x = _checks.as_float_tensor(x, 'x', posterior.dtype, rank=2)
  if x.shape[0] == 0 or x.shape[1] == 0:
    raise ValueError(f'x is empty: shape {x.shape.as_list()}.')
  if not x.shape[-1:].is_compatible_with(model.dictionary.shape[:1]):
    raise ValueError(f'x has shape {x.shape.as_list()} but the dictionary has '
                     f'shape {model.dictionary.shape.as_list()}.')
  _checks.check_finite(x, 'x')
  return x, num_samples


def _log_weights(x, model, q, num_samples, seed):
  """log p(x, z) - log q(z) for z ~ q (reparameterized): `[S, N]`."""
  z = q.sample(num_samples, seed=seed)
  return model.joint_log_prob(x, z) - q.log_prob(z)


def sampled_elbo(x, model, posterior, num_samples, seed):
  """Monte-Carlo ELBO with `num_samples` reparameterized samples per point.

  Args:
    x: `[N, D]` float.
    model: `SparseCodingModel` (dictionary, scales, noise variance).
    posterior: `GaussianPosterior` with N points, same dtype.
    num_samples: int S >= 1 (S >= 2 for a standard error).
    seed: stateless seed (int or shape-[2] int tensor).

  Returns:
    `SampledElbo`.

  Raises:
    ValueError: num_samples < 1, mismatched shapes or NaN/inf data.
  """
  x, num_samples = _check_inputs(x, model, posterior, num_samples)
  log_weights = _log_weights(x, model, posterior.distribution(), num_samples,
                             _checks.stateless_seed(seed))  # [S, N]
  per_sample = tf.reduce_mean(log_weights, axis=-1)
  s = tf.cast(tf.shape(per_sample)[0], per_sample.dtype)
  mean = tf.reduce_mean(per_sample)
  stderr = tf.math.reduce_std(per_sample) / tf.sqrt(s)
  return SampledElbo(mean=mean, stderr=stderr, per_sample=per_sample)


ImportanceWeightedBound = collections.namedtuple(
    'ImportanceWeightedBound', ['mean', 'stderr', 'per_point'])
ImportanceWeightedBound.__doc__ = """Importance-weighted bound per data point.

Fields:
  mean: `[]` mean over data points of the per-point bounds.
  stderr: `[]` standard error of that mean over data points (it includes
    the sampling noise of each point's estimate).
  per_point: `[N]` log (1/K) sum_k p(x_n, z_k) / q_n(z_k).
"""


def importance_weighted_bound(x, model, posterior, num_samples, seed,
                              chunk_size=1024):
  """Importance-weighted lower bound of log p(x_n) with K samples from q_n.

  Args:
    x: `[N, D]` float.
    model: `SparseCodingModel`.
    posterior: `GaussianPosterior` with N points, same dtype.
    num_samples: K >= 1.
    seed: stateless seed.
    chunk_size: data points per chunk (memory is K x chunk_size x H).

  Returns:
    `ImportanceWeightedBound`.

  Raises:
    ValueError: num_samples < 1, mismatched shapes or NaN/inf data.
  """
  x, num_samples = _check_inputs(x, model, posterior, num_samples)
  q = posterior.distribution()
  num_points = int(x.shape[0])
  seeds = tfp.random.split_seed(_checks.stateless_seed(seed),
                                max(1, -(-num_points // chunk_size)))
  parts = []
  for i, start in enumerate(range(0, num_points, chunk_size)):
    stop = min(start + chunk_size, num_points)
    log_weights = _log_weights(x[start:stop], model, q[start:stop],
                               num_samples, seeds[i])  # [K, B]
    parts.append(tf.reduce_logsumexp(log_weights, axis=0)
                 - tf.math.log(tf.cast(num_samples, log_weights.dtype)))
  per_point = tf.concat(parts, axis=0)
  n = tf.cast(tf.shape(per_point)[0], per_point.dtype)
  return ImportanceWeightedBound(
      mean=tf.reduce_mean(per_point),
      stderr=tf.math.reduce_std(per_point) / tf.sqrt(n),
      per_point=per_point)
