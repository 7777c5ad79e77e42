"""Analytic ELBOs of the sparse coding model (SPEC 4-6).

For data x `[N, D]`, a dictionary W `[D, H]` and Gaussian posteriors q_n:

Classical ELBO, any lambda and sigma^2 (SPEC 4):

  L = (1/N) sum_n  E_q[log p(x_n|z)] + E_q[log p(z)] + H[q_n]
  E_q[log p(x_n|z)] = -(D/2) log(2 pi sigma^2)
                      - (||x_n - W nu_n||^2 + tr(W T_n W^T)) / (2 sigma^2)
  E_q[log p(z)]     = -sum_h [log(2 lambda_h) + A(nu_nh, sqrt(T_n,hh)) / lambda_h]

Optimal scale and noise (Theorem 2):

  sigma^2* = (1/(N D)) sum_n [||x_n - W nu_n||^2 + tr(W T_n W^T)]
  lambda_h* = (1/N) sum_n A(nu_nh, sqrt(T_n,hh))

Entropy ELBO (Theorem 1, Eq. 15, with annealing coefficients of Eq. 17):

  F_a = a_q (1/N) sum_n H[q_n] - a_prior H[p(z|lambda*)]
        - a_lik H[p(x|z, sigma^2*)]

F_1 = L(lambda*, sigma^2*) exactly; only the non-annealed value is an ELBO.

Observation masks (image restoration: missing pixels). With m_n in {0, 1}^D
(1 = observed) the likelihood runs over the observed entries only,
p(x_n,obs | z) = N(M_n W z, sigma^2 I) on the |m_n| observed coordinates:

  E_q[log p(x_n,obs|z)] = -(|m_n|/2) log(2 pi sigma^2)
        - (||m_n * (x_n - W nu_n)||^2 + tr(M_n W T_n W^T M_n)) / (2 sigma^2)

with M_n = diag(m_n). Maximising over sigma^2 gives the mean expected squared
residual per observed entry, sigma^2* = sum_n E_q||m_n * (x_n - W z)||^2 /
sum_n |m_n|, and lambda* is unchanged. Substituting both as in Theorem 2,

  F = (1/N) sum_n H[q_n] - H[p(z|lambda*)] - (Dbar/2) log(2 pi e sigma^2*),
  Dbar = (1/N) sum_n |m_n|,

i.e. F with D replaced by the mean number of observed entries per point:
`entropy_elbo_from_statistics(statistics, num_observed=Dbar)`. A mask of
all ones gives the unmasked F exactly.

Everything works inside `tf.function` and XLA, in float32 and float64.
"""

import collections
import math

import numpy as np
import tensorflow as tf

from tfp_esc import _checks
from tfp_esc.objective.special import LOG_2_PI_E, expected_magnitude, laplace_entropy

__all__ = [
  'ElboStatistics',
  'EntropyElbo',
  'add_statistics',
  'classical_elbo',
  'classical_elbo_from_statistics',
  'elbo_statistics',
  'entropy_elbo',
  'entropy_elbo_from_statistics',
  'held_prior_elbo_from_statistics',
  'optimal_noise_variance',
  'optimal_scales',
  'reconstruction_error',
]

# Floors that keep log() finite; far below any value a fit reaches.
_NOISE_FLOOR = {tf.float32: 1e-20, tf.float64: 1e-100}

EntropyElbo = collections.namedtuple(
    'EntropyElbo',
    ['elbo', 'objective', 'q_entropy', 'prior_entropy', 'likelihood_entropy',
     'noise_variance', 'scales'])
EntropyElbo.__doc__ = """Terms of the entropy ELBO, all per data point.

Fields:
  elbo: `[]` the non-annealed F = q_entropy - prior_entropy
    - likelihood_entropy. The only value to report as an ELBO.
  objective: `[]` the annealed F_a that a trainer maximises (= elbo when all
    coefficients are 1).
  q_entropy: `[]` (1/N) sum_n H[q_n].
  prior_entropy: `[]` H[p(z | lambda*)] = sum_h log(2 e lambda*_h).
  likelihood_entropy: `[]` H[p(x | z, sigma^2*)] = (D/2) log(2 pi e sigma^2*).
  noise_variance: `[]` sigma^2*.
  scales: `[H]` lambda*.
"""


def _check_mask(mask, x):
  """`mask` (None, or bool/0-1 `[N, D]` like x) as a 0/1 float tensor."""
  if mask is None:
    return None
  if not tf.is_tensor(mask):
    mask = _checks.check_mask(mask, np.shape(mask))
  mask = tf.cast(mask, x.dtype)
  if not mask.shape.is_compatible_with(x.shape):
    raise ValueError(f'mask has shape {mask.shape.as_list()} but x has shape '
                     f'{x.shape.as_list()}; they must be equal.')
  return mask


def _check_inputs(x, dictionary, posterior):
  """Converts and checks x `[N, D]` and W `[D, H]` against the posterior."""
  dtype = posterior.dtype
  x = _checks.as_float_tensor(x, 'x', dtype, rank=2)
  dictionary = _checks.as_float_tensor(dictionary, 'dictionary', dtype, rank=2)
  if not x.shape[-1:].is_compatible_with(dictionary.shape[:1]):
    raise ValueError(f'x has shape {x.shape.as_list()} but dictionary has '
                     f'shape {dictionary.shape.as_list()}: their D differ.')
  if not dictionary.shape[1:].is_compatible_with(posterior.loc.shape[-1:]):
    raise ValueError(f'dictionary has shape {dictionary.shape.as_list()} but '
                     f'the posterior means have shape '
                     f'{posterior.loc.shape.as_list()}: their H differ.')
  if not x.shape[:1].is_compatible_with(posterior.loc.shape[:1]):
    raise ValueError(f'x has shape {x.shape.as_list()} but the posterior means '
                     f'have shape {posterior.loc.shape.as_list()}: their N '
                     'differ.')
  _checks.check_finite(x, 'x')
  _checks.check_finite(dictionary, 'dictionary')
  return x, dictionary


def reconstruction_error(x, dictionary, posterior, mask=None):
  """E_q ||m_n * (x_n - W z)||^2 = ||m_n * (x_n - W nu_n)||^2 + tr(M_n W T_n W^T).

  Args:
    x: `[N, D]` float.
    dictionary: `[D, H]` float W.
    posterior: a `GaussianPosterior` with N points.
    mask: optional `[N, D]` bool or 0/1, true where x is observed; default
      all observed (m_n = 1).

  Returns:
    `[N]` float.
  """
  x, dictionary = _check_inputs(x, dictionary, posterior)
  return _reconstruction_error(x, dictionary, posterior,
                               _check_mask(mask, x))


def _reconstruction_error(x, dictionary, posterior, mask=None):
  # For callers that have already checked their inputs.
  residual = x - tf.matmul(posterior.loc, dictionary, transpose_b=True)
  if mask is not None:
    residual = mask * residual
  return (tf.reduce_sum(tf.square(residual), axis=-1)
          + posterior.trace_term(dictionary, mask))


def _num_observed(x, mask):
  """Mean observed entries per point: D, or sum(mask) / N with a mask."""
  if mask is None:
    return tf.cast(tf.shape(x)[-1], x.dtype)
  return tf.reduce_sum(mask) / tf.cast(tf.shape(x)[0], x.dtype)


def optimal_noise_variance(x, dictionary, posterior, mask=None):
  """sigma^2* = sum_n E_q ||m_n * (x_n - W z)||^2 / sum_n |m_n|: `[]` float.

  Without a mask |m_n| = D: (1/(N D)) sum_n E_q ||x_n - W z||^2.
  """
  x, dictionary = _check_inputs(x, dictionary, posterior)
  mask = _check_mask(mask, x)
  error = _reconstruction_error(x, dictionary, posterior, mask)
  return tf.reduce_mean(error) / _num_observed(x, mask)


def optimal_scales(posterior):
  """lambda*_h = (1/N) sum_n A(nu_nh, sqrt(T_n,hh)): `[H]` float."""
  return tf.reduce_mean(_expected_magnitudes(posterior), axis=0)


def _expected_magnitudes(posterior):
  return expected_magnitude(posterior.loc, posterior.marginal_stddev())


def classical_elbo(x, dictionary, posterior, scales, noise_variance,
                   per_point=False, mask=None):
  """The classical analytic ELBO L for any lambda and sigma^2 (SPEC 4).

  With scales = 1 and a free dictionary W~ this is the ELBO of the original
  model (the trace term uses W~'s column norms). The prior scales and the
  noise variance may differ from point to point (a point's own prior
  z_nh ~ Laplace(lambda_nh) and noise sigma_n^2, as in
  `tfp_esc.restoration`'s per-patch scales and misfits); L_n is then the
  same formula with point n's values.

  Args:
    x: `[N, D]` float.
    dictionary: `[D, H]` float.
    posterior: a `GaussianPosterior` with N points, same dtype.
    scales: `[H]` (or per point `[N, H]`) positive float, lambda.
    noise_variance: positive scalar sigma^2 (or per point `[N]`).
    per_point: return L_n `[N]` instead of the mean.
    mask: optional `[N, D]` bool or 0/1, true where x is observed (the
      likelihood runs over observed entries only); default all observed.

  Returns:
    `[]` (or `[N]`) float.

  Raises:
    ValueError: mismatched shapes, NaN/inf, non-positive scales or variance.
  """
  x, dictionary = _check_inputs(x, dictionary, posterior)
  mask = _check_mask(mask, x)
  dtype = posterior.dtype
  scales = _checks.as_float_tensor(scales, 'scales', dtype)
  noise_variance = _checks.as_float_tensor(noise_variance, 'noise_variance',
                                           dtype)
  # [H] for every point, or [N, H]; a scalar sigma^2, or [N].
  if not (scales.shape.is_compatible_with(dictionary.shape[1:])
          or scales.shape.is_compatible_with([x.shape[0],
                                              dictionary.shape[1]])):
    raise ValueError(f'scales has shape {scales.shape.as_list()} but '
                     f'dictionary {dictionary.shape.as_list()} has '
                     f'{dictionary.shape[1]} columns and x '
                     f'{x.shape[0]} rows: expected [H] or [N, H].')
  if not (noise_variance.shape.rank == 0
          or noise_variance.shape.is_compatible_with(x.shape[:1])):
    raise ValueError(f'noise_variance has shape '
                     f'{noise_variance.shape.as_list()}; expected a scalar '
                     f'or [N] with N = {x.shape[0]}.')
  _checks.check_positive(scales, 'scales')
  _checks.check_positive(noise_variance, 'noise_variance')
  if mask is None:
    num_observed = tf.cast(tf.shape(x)[-1], dtype)
  else:
    num_observed = tf.reduce_sum(mask, axis=-1)
  log_lik = (-0.5 * num_observed * tf.math.log(2.0 * math.pi
                                                * noise_variance)
             - _reconstruction_error(x, dictionary, posterior, mask)
             / (2.0 * noise_variance))
  log_prior = -tf.reduce_sum(
      tf.math.log(2.0 * scales) + _expected_magnitudes(posterior) / scales,
      axis=-1)
  per_point_elbo = log_lik + log_prior + posterior.entropy()
  return per_point_elbo if per_point else tf.reduce_mean(per_point_elbo)


ElboStatistics = collections.namedtuple(
    'ElboStatistics',
    ['count', 'reconstruction', 'expected_magnitude', 'q_entropy'])
ElboStatistics.__doc__ = """Sums over data points from which F is computed.

F depends on the data only through these sums, so the full-data F of a data
set seen in minibatches is `entropy_elbo_from_statistics` of the summed
statistics of its batches.

Fields:
  count: `[]` number of data points N.
  reconstruction: `[]` sum_n ||x_n - W nu_n||^2 + tr(W T_n W^T).
  expected_magnitude: `[H]` sum_n A(nu_n, sqrt(diag T_n)).
  q_entropy: `[]` sum_n H[q_n].
"""


def elbo_statistics(x, dictionary, posterior, mask=None):
  """The sums (`ElboStatistics`) of x `[N, D]`, W `[D, H]` and q that F needs.

  With `mask` (`[N, D]`, true = observed) the reconstruction sum runs over
  observed entries only; F then needs num_observed = sum(mask) / N.

  Raises:
    ValueError: mismatched shapes or NaN/inf inputs.
  """
  x, dictionary = _check_inputs(x, dictionary, posterior)
  mask = _check_mask(mask, x)
  dtype = posterior.dtype
  return ElboStatistics(
      count=tf.cast(tf.shape(x)[0], dtype),
      reconstruction=tf.reduce_sum(
          _reconstruction_error(x, dictionary, posterior, mask)),
      expected_magnitude=tf.reduce_sum(_expected_magnitudes(posterior), 0),
      q_entropy=tf.reduce_sum(posterior.entropy()))


def add_statistics(a, b):
  """Elementwise sum of two `ElboStatistics` (e.g. of two minibatches)."""
  return ElboStatistics(*(u + v for u, v in zip(a, b)))


def entropy_elbo_from_statistics(statistics, num_observed, a_q=1.0,
                                 a_prior=1.0, a_lik=1.0):
  """F and its terms from `ElboStatistics` of N points in D dimensions.

  Args:
    statistics: `ElboStatistics`.
    num_observed: D, or with observation masks the mean number of observed
      entries per point, sum_n |m_n| / N (module doc).
    a_q, a_prior, a_lik: annealing coefficients, as in `entropy_elbo`.

  Returns:
    `EntropyElbo`.
  """
  dtype = statistics.reconstruction.dtype
  count = statistics.count
  num_observed = tf.cast(num_observed, dtype)
  noise_variance = tf.maximum(
      statistics.reconstruction / (count * num_observed), _NOISE_FLOOR[dtype])
  scales = statistics.expected_magnitude / count
  q_entropy = statistics.q_entropy / count
  prior_entropy = laplace_entropy(scales)
  likelihood_entropy = 0.5 * num_observed * (
      LOG_2_PI_E + tf.math.log(noise_variance))
  elbo = q_entropy - prior_entropy - likelihood_entropy
  a_q, a_prior, a_lik = (tf.cast(tf.convert_to_tensor(a, dtype_hint=dtype),
                                  dtype) for a in (a_q, a_prior, a_lik))
  objective = (a_q * q_entropy - a_prior * prior_entropy
               - a_lik * likelihood_entropy)
  return EntropyElbo(elbo=elbo, objective=objective, q_entropy=q_entropy,
                     prior_entropy=prior_entropy,
                     likelihood_entropy=likelihood_entropy,
                     noise_variance=noise_variance, scales=scales)


def entropy_elbo(x, dictionary, posterior, a_q=1.0, a_prior=1.0, a_lik=1.0,
                 mask=None):
  """The entropy ELBO F (Eq. 15) and its annealed form F_a (Eq. 17).

  Args:
    x: `[N, D]` float (a data set or a minibatch: averages are over its rows).
    dictionary: `[D, H]` float, unit-norm columns W.
    posterior: a `GaussianPosterior` with N points, same dtype.
    a_q, a_prior, a_lik: annealing coefficients (floats or scalar tensors;
      pass tensors inside a `tf.function` to avoid retracing).
    mask: optional `[N, D]` bool or 0/1, true where x is observed: the
      masked F of the module doc; default all observed.

  Returns:
    `EntropyElbo` of scalar tensors (and `scales` `[H]`).

  Raises:
    ValueError: mismatched shapes or NaN/inf inputs.
  """
  statistics = elbo_statistics(x, dictionary, posterior, mask)
  if mask is None:
    num_observed = tf.shape(x)[-1]
  else:
    x = tf.convert_to_tensor(x, posterior.dtype)
    num_observed = _num_observed(x, _check_mask(mask, x))
  return entropy_elbo_from_statistics(statistics, num_observed, a_q,
                                      a_prior, a_lik)


def classical_elbo_from_statistics(statistics, num_observed, scales,
                                   noise_variance, a_q=1.0, a_prior=1.0,
                                   a_lik=1.0):
  """L(lambda, sigma^2) and its terms from `ElboStatistics` (SPEC 4).

  The classical ELBO beside F's `entropy_elbo_from_statistics`, from the same
  sums over N points:

    L = (1/N) sum_n H[q_n] - CE_prior - CE_lik,
    CE_prior = sum_h [log(2 lambda_h) + (1/N) sum_n A(nu_nh, sqrt(T_n,hh))
                      / lambda_h]
    CE_lik   = (D/2) log(2 pi sigma^2)
               + (1/N) sum_n E_q||x_n - W z||^2 / (2 sigma^2),

  the cross-entropies that become H[p(z | lambda*)] and H[p(x | z,
  sigma^2*)] at lambda*, sigma^2*, where L = F. The statistics may carry
  leading batch dimensions (e.g. count 1 for per-point values L_n).

  Args:
    statistics: `ElboStatistics` (fields `[...]`, expected_magnitude
      `[..., H]`).
    num_observed: D.
    scales: positive lambda, broadcastable to `[..., H]`.
    noise_variance: positive sigma^2, broadcastable to `[...]`.
    a_q, a_prior, a_lik: annealing coefficients of the objective L_a =
      a_q H[q] - a_prior CE_prior - a_lik CE_lik.

  Returns:
    `EntropyElbo` whose 'prior_entropy' and 'likelihood_entropy' hold
    CE_prior and CE_lik, 'scales' and 'noise_variance' the given lambda and
    sigma^2, 'elbo' L and 'objective' L_a.
  """
  dtype = statistics.reconstruction.dtype
  # dtype_hint first: tf.cast of a Python float would round it to float32.
  count, num_observed, scales, noise_variance = (
      tf.cast(tf.convert_to_tensor(v, dtype_hint=dtype), dtype)
      for v in (statistics.count, num_observed, scales, noise_variance))
  q_entropy = statistics.q_entropy / count
  prior_cross_entropy = tf.reduce_sum(
      tf.math.log(2.0 * scales)
      + statistics.expected_magnitude / (tf.expand_dims(count, -1) * scales),
      -1)
  likelihood_cross_entropy = (
      0.5 * num_observed * tf.math.log(2.0 * math.pi * noise_variance)
      + statistics.reconstruction / (2.0 * count * noise_variance))
  elbo = q_entropy - prior_cross_entropy - likelihood_cross_entropy
  a_q, a_prior, a_lik = (tf.cast(tf.convert_to_tensor(a, dtype_hint=dtype),
                                  dtype) for a in (a_q, a_prior, a_lik))
  objective = (a_q * q_entropy - a_prior * prior_cross_entropy
               - a_lik * likelihood_cross_entropy)
  return EntropyElbo(elbo=elbo, objective=objective, q_entropy=q_entropy,
                     prior_entropy=prior_cross_entropy,
                     likelihood_entropy=likelihood_cross_entropy,
                     noise_variance=noise_variance, scales=scales)


def held_prior_elbo_from_statistics(statistics, num_observed, held_scales,
                                    a_q=1.0, a_prior=1.0, a_lik=1.0):
  """F's terms, with an objective bounded under prior annealing.

  Where a_prior > 1, F_a is unbounded above under a common shrinkage c of
  all codes (it grows by (a_prior - a_q) H log(1/c)). The trainers then
  hold lambda at `held_scales` (a lambda* computed earlier, e.g. at the
  start of an L-BFGS call or an epoch) and maximise the classical L_a at
  lambda = `held_scales`, sigma^2 = sigma^2* of the statistics: the prior
  entropy becomes the cross-entropy sum_h [log(2 lambda_h) + lambda*_h /
  lambda_h], bounded below as the codes shrink. Where a_prior <= 1 the
  objective is F_a itself.

  Args:
    statistics: `ElboStatistics` of N points.
    num_observed: D.
    held_scales: positive `[H]` lambda held while a_prior > 1.
    a_q, a_prior, a_lik: annealing coefficients (scalars).

  Returns:
    `EntropyElbo` of `entropy_elbo_from_statistics` (F, lambda*, sigma^2*)
    whose 'objective' is L_a(held_scales, sigma^2*) where a_prior > 1.
  """
  terms = entropy_elbo_from_statistics(statistics, num_observed, a_q,
                                       a_prior, a_lik)
  held = classical_elbo_from_statistics(statistics, num_observed, held_scales,
                                        terms.noise_variance, a_q, a_prior,
                                        a_lik)
  dtype = terms.objective.dtype
  a_prior = tf.cast(tf.convert_to_tensor(a_prior, dtype_hint=dtype), dtype)
  return terms._replace(objective=tf.where(a_prior > 1.0, held.objective,
                                           terms.objective))
