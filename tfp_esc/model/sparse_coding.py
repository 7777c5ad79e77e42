"""The sparse coding model as TFP distributions (SPEC 1).

Reparameterized model (the one tfp_esc learns):

  p(z | lambda)  = prod_h Laplace(z_h; 0, lambda_h)
  p(x | z, W)    = N(x; W z, sigma^2 I_D),   ||w_h||_2 = 1 for every column h.

It is one-to-one with the original model (unit Laplace prior on s, free
dictionary W~): W~ = W diag(lambda), s = z / lambda, and back
lambda_h = ||w~_h||, w_h = w~_h / lambda_h.

Shapes: data `x [N, D]`, dictionary `W [D, H]`, scales `[H]`, codes `[N, H]`.
"""

import tensorflow as tf
import tensorflow_probability as tfp

from tfp_esc import _checks

tfd = tfp.distributions

__all__ = [
    'SparseCodingModel',
    'normalize_columns',
]


def normalize_columns(unconstrained, floor=1e-12):
  """Unit-norm columns W = V / ||V||_col, differentiable through the norm.

  Args:
    unconstrained: float tensor `[D, H]`, the free parameter V.
    floor: lower bound on a column norm, so a zero column gives a zero column
      instead of NaN.

  Returns:
    Tensor `[D, H]`, same dtype, columns of unit Euclidean norm.
  """
  unconstrained = tf.convert_to_tensor(unconstrained)
  norms = tf.norm(unconstrained, axis=0, keepdims=True)
  return unconstrained / tf.maximum(norms, floor)


class SparseCodingModel:
  """Laplace prior and linear-Gaussian likelihood with a unit-norm dictionary.

  Holds tensors, not variables: trainers build a model from their current
  parameters each step. Use `from_original` for a free dictionary with a unit
  Laplace prior (e.g. a MAP / l1 dictionary).

  Attributes:
    dictionary: `[D, H]` float, unit-norm columns W.
    scales: `[H]` float, Laplace scales lambda > 0.
    noise_variance: `[]` float, sigma^2 > 0.
  """

  def __init__(self, dictionary, scales, noise_variance, validate=True):
    """Builds the model.

    Args:
      dictionary: `[D, H]` float32/float64, unit-norm columns.
      scales: `[H]` positive, Laplace scales lambda.
      noise_variance: positive scalar sigma^2.
      validate: check values (finite, positive, unit norms) when eager.

    Raises:
      ValueError: wrong shapes, NaN/inf, non-positive scales or noise variance,
        or (validate) columns that are not unit-norm.
    """
    self.dictionary = _checks.as_float_tensor(dictionary, 'dictionary', rank=2)
    dtype = self.dictionary.dtype
    self.scales = _checks.as_float_tensor(scales, 'scales', dtype, rank=1)
    self.noise_variance = _checks.as_float_tensor(
        noise_variance, 'noise_variance', dtype, rank=0)
    num_latents = self.dictionary.shape[1]
    if (num_latents is not None and self.scales.shape[0] is not None
        and self.scales.shape[0] != num_latents):
      raise ValueError(
          f'scales has shape {self.scales.shape.as_list()} but dictionary '
          f'{self.dictionary.shape.as_list()} has {num_latents} columns.')
    if validate:
      _checks.check_finite(self.dictionary, 'dictionary')
      _checks.check_positive(self.scales, 'scales')
      _checks.check_positive(self.noise_variance, 'noise_variance')
      if tf.executing_eagerly():
        norms = tf.norm(self.dictionary, axis=0).numpy()
        tol = 1e-4 if dtype == tf.float32 else 1e-8
        if abs(norms - 1).max() > tol:
          raise ValueError(
              'dictionary columns must have unit norm (use normalize_columns '
              f'or SparseCodingModel.from_original); norms range '
              f'[{norms.min():.6g}, {norms.max():.6g}].')

  @property
  def dtype(self):
    return self.dictionary.dtype

  @property
  def num_observed(self):
    """D, the data dimension."""
    return self.dictionary.shape[0]

  @property
  def num_latents(self):
    """H, the number of latents."""
    return self.dictionary.shape[1]

  @classmethod
  def from_original(cls, free_dictionary, noise_variance, validate=True):
    """Model equivalent to the original one with free dictionary W~.

    Args:
      free_dictionary: `[D, H]` float W~ of the original model (unit Laplace
        prior on s), no zero columns.
      noise_variance: positive scalar sigma^2.
      validate: as in the constructor.

    Returns:
      `SparseCodingModel` with W = W~ / ||W~||_col and lambda = ||W~||_col.

    Raises:
      ValueError: a zero column, or the constructor's errors.
    """
    free = _checks.as_float_tensor(free_dictionary, 'free_dictionary', rank=2)
    _checks.check_finite(free, 'free_dictionary')
    scales = tf.norm(free, axis=0)
    if validate:
      _checks.check_positive(scales, 'column norms of free_dictionary')
    return cls(free / scales, scales, noise_variance, validate=validate)

  def to_original(self):
    """The original parameterization: (W~ [D, H], sigma^2), W~ = W diag(lambda)."""
    return self.dictionary * self.scales, self.noise_variance

  def to_original_codes(self, z):
    """s = z / lambda: codes `[..., H]` of the reparameterized model -> original."""
    return tf.convert_to_tensor(z, self.dtype) / self.scales

  def from_original_codes(self, s):
    """z = s * lambda: codes `[..., H]` of the original model -> reparameterized."""
    return tf.convert_to_tensor(s, self.dtype) * self.scales

  def prior(self):
    """p(z | lambda): `tfd.Independent(tfd.Laplace)`, event shape [H]."""
    return tfd.Independent(
        tfd.Laplace(tf.zeros_like(self.scales), self.scales),
        reinterpreted_batch_ndims=1)

  def likelihood(self, z):
    """p(x | z): Normal(W z, sigma^2 I), event shape [D], batch shape z's.

    Args:
      z: codes `[..., H]`.

    Returns:
      `tfd.Independent(tfd.Normal)` with batch shape `[...]`.
    """
    z = tf.convert_to_tensor(z, self.dtype)
    mean = tf.linalg.matvec(self.dictionary, z)
    return tfd.Independent(
        tfd.Normal(mean, tf.sqrt(self.noise_variance)),
        reinterpreted_batch_ndims=1)

  def joint_log_prob(self, x, z):
    """log p(x, z) = log p(x | z) + log p(z).

    Args:
      x: data `[..., D]`, broadcastable against z's batch shape.
      z: codes `[..., H]`.

    Returns:
      `[...]` float.
    """
    return self.likelihood(z).log_prob(x) + self.prior().log_prob(z)

  def sample(self, num_points, seed):
    """Draws (z [N, H], x [N, D]) from the model with a stateless seed.

    Args:
      num_points: int N.
      seed: stateless seed (int or shape-[2] int tensor).

    Returns:
      Tuple (z, x).
    """
    seed_z, seed_x = tfp.random.split_seed(_checks.stateless_seed(seed), 2)
    z = self.prior().sample(num_points, seed=seed_z)
    x = self.likelihood(z).sample(seed=seed_x)
    return z, x
