"""Monte-Carlo ELBO from the TFP distributions (SPEC 5, fact 4).

  ELBO ~= (1/S) sum_s (1/N) sum_n [log p(x_n, z_sn) - log q_n(z_sn)],
  z_sn ~ q_n, reparameterized,

built from `SparseCodingModel` (tfd.Laplace, tfd.Normal) and the posterior's
TFP distribution. It is the stochastic estimate that the analytic ELBO is held
against, and the objective of sampled-ELBO training.
"""

import collections

import tensorflow as tf

from tfp_esc import _checks

__all__ = ['SampledElbo', 'sampled_elbo']

SampledElbo = collections.namedtuple('SampledElbo',
                                     ['mean', 'stderr', 'per_sample'])
SampledElbo.__doc__ = """A Monte-Carlo ELBO estimate per data point.

Fields:
  mean: `[]` the estimate (differentiable: reparameterized samples).
  stderr: `[]` its standard error, std over samples / sqrt(S).
  per_sample: `[S]` the ELBO of each sample averaged over data points.
"""


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
  if int(num_samples) < 1:
    raise ValueError(f'num_samples must be >= 1, got {num_samples}.')
  x = _checks.as_float_tensor(x, 'x', posterior.dtype, rank=2)
  if not x.shape[-1:].is_compatible_with(model.dictionary.shape[:1]):
    raise ValueError(f'x has shape {x.shape.as_list()} but the dictionary has '
                     f'shape {model.dictionary.shape.as_list()}.')
  _checks.check_finite(x, 'x')
  q = posterior.distribution()
  z = q.sample(int(num_samples), seed=_checks.stateless_seed(seed))
  log_weights = model.joint_log_prob(x, z) - q.log_prob(z)  # [S, N]
  per_sample = tf.reduce_mean(log_weights, axis=-1)
  s = tf.cast(tf.shape(per_sample)[0], per_sample.dtype)
  mean = tf.reduce_mean(per_sample)
  stderr = tf.math.reduce_std(per_sample) / tf.sqrt(s)
  return SampledElbo(mean=mean, stderr=stderr, per_sample=per_sample)
