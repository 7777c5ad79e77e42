"""Special functions of the analytic ELBO: the expected magnitude and entropies.

The expected magnitude (SPEC 3) of u ~ N(m, s^2) is

  A(m, s) = E|u| = s sqrt(2/pi) exp(-m^2 / (2 s^2)) + m erf(m / (sqrt(2) s)).

Its gradient is given in closed form (dA/dm = erf(m / (sqrt(2) s)),
dA/ds = sqrt(2/pi) exp(-m^2 / (2 s^2))) rather than by differentiating the
formula, whose two halves cancel for small s.
"""

import math

import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp

tfd = tfp.distributions

__all__ = [
  'LOG_2_PI_E',
  'expected_magnitude',
  'expected_magnitude_partials',
  'gaussian_entropy',
  'laplace_entropy',
]

LOG_2_PI_E = math.log(2.0 * math.pi * math.e)
_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)


def _value_and_partials(m, s):
  # erf and the density are saturated far before |z| = 30; clipping keeps
  # float64 erf (NaN above ~1e154) finite when s -> 0.
  z = tf.clip_by_value(m / (math.sqrt(2.0) * s), -30.0, 30.0)
  density = _SQRT_2_OVER_PI * tf.exp(-tf.square(z))
  erf = tf.math.erf(z)
  return s * density + m * erf, erf, density


@tf.custom_gradient
def _expected_magnitude(m, s):
  value, erf, density = _value_and_partials(m, s)

  def grad(upstream):
    return upstream * erf, upstream * density

  return value, grad


def expected_magnitude(loc, scale):
  """E|u| for u ~ N(loc, scale^2), elementwise.

  Args:
    loc: float tensor, any shape (e.g. posterior means `[N, H]`).
    scale: positive float tensor broadcastable with `loc`, same dtype
      (posterior standard deviations). Scales below the dtype's smallest
      normal number are raised to it, so scale -> 0 gives |loc| without NaN.

  Returns:
    Tensor of the broadcast shape and the input dtype; >= |loc| everywhere.
  """
  loc = tf.convert_to_tensor(loc)
  scale = tf.convert_to_tensor(scale, dtype=loc.dtype)
  shape = tf.broadcast_dynamic_shape(tf.shape(loc), tf.shape(scale))
  tiny = np.finfo(loc.dtype.as_numpy_dtype).tiny
  scale = tf.maximum(tf.broadcast_to(scale, shape), tiny)
  return _expected_magnitude(tf.broadcast_to(loc, shape), scale)


def expected_magnitude_partials(loc, scale):
  """A = E|u| and its partial derivatives, for second-order solvers.

  Args:
    loc: float tensor m, any shape.
    scale: positive float tensor s of the same shape and dtype (callers keep
      it above a floor; no broadcasting).

  Returns:
    (value, d_loc, d_scale), each of the input's shape and dtype:
    A(m, s), dA/dm = erf(m / (sqrt(2) s)) and
    dA/ds = sqrt(2/pi) exp(-m^2 / (2 s^2)). The second derivatives follow
    from these: d2A/dm2 = d_scale / s, d2A/dm ds = -d_scale m / s^2,
    d2A/ds2 = d_scale m^2 / s^3.
  """
  return _value_and_partials(loc, scale)


def gaussian_entropy(log_det_covariance, num_latents):
  """Entropy of a num_latents-variate Gaussian from log det of its covariance.

  H = (num_latents / 2) log(2 pi e) + (1/2) log det T.

  Args:
    log_det_covariance: float tensor `[...]`.
    num_latents: int, the dimension H.

  Returns:
    Tensor `[...]`, same dtype.
  """
  log_det_covariance = tf.convert_to_tensor(log_det_covariance)
  return (0.5 * num_latents * LOG_2_PI_E
          + 0.5 * log_det_covariance)


def laplace_entropy(scales):
  """Entropy of the factorised Laplace prior, sum_h log(2 e lambda_h).

  Computed from `tfd.Laplace`.

  Args:
    scales: positive float tensor `[H]` (or `[..., H]`).

  Returns:
    Tensor `[]` (or `[...]`), same dtype.
  """
  scales = tf.convert_to_tensor(scales)
  return tf.reduce_sum(
      tfd.Laplace(tf.zeros_like(scales), scales).entropy(), axis=-1)
