"""Per-data-point Gaussian posteriors q_n(z) = N(nu_n, T_n) (SPEC 2).

Three covariance families, each giving its TFP distribution and, in closed
form, what the analytic objectives need: means, marginal variances T_hh,
log det T and the trace term tr(W T W^T). No family materialises H x H
matrices that it does not already hold.

| family    | T_n                       | parameters per point |
|-----------|---------------------------|----------------------|
| full      | L L^T, L lower-triangular | H + H(H+1)/2         |
| diagonal  | diag(tau^2)               | 2H                   |
| lowrank   | diag(d^2) + U U^T, U [H,R]| 2H + HR              |

Each family also has an unconstrained parameterization for optimisers
(`init_unconstrained`, `from_unconstrained`): positivity by softplus plus a
floor (default 1e-3, as in the paper's reference code), through TFP bijectors.
"""

import abc

import tensorflow as tf
import tensorflow_probability as tfp

from tfp_esc import _checks
from tfp_esc.objective.special import gaussian_entropy

tfb = tfp.bijectors
tfd = tfp.distributions

__all__ = [
  'FAMILIES',
  'DiagonalGaussian',
  'FullGaussian',
  'GaussianPosterior',
  'LowRankGaussian',
  'get_family',
]

DEFAULT_SCALE_FLOOR = 1e-3


def _observed_column_norms2(dictionary, mask):
  """sum_d m_nd W_dh^2: `[H]` without a mask, `[..., H]` with one."""
  squares = tf.square(dictionary)
  if mask is None:
    return tf.reduce_sum(squares, axis=0)
  return tf.einsum('...d,dh->...h', mask, squares)


def _dictionary_times(dictionary, matrices):
  """(W M_n)^T `[..., K, D]` for W `[D, H]` and M `[..., H, K]`.

  The same values as `tf.einsum('dh,...hk->...kd', W, M)`, formed as one
  2-D matmul of the stacked M_n^T `[N K, H]` with W^T. The einsum's
  gradient in W is far slower on CPU: the low-rank trace term of 512
  points (D = 256, H = 100, R = 5) took 15.7 ms forward and backward with
  the einsum, which made an amortized low-rank step cost 4x a diagonal one.
  """
  return _transposed_times(matrices, tf.transpose(dictionary))


def _transposed_times(matrices, right):
  """M_n^T A `[..., K, C]` for M `[..., H, K]` and A `[H, C]`, as one 2-D
  matmul of the stacked M_n^T `[N K, H]` (see `_dictionary_times`)."""
  shape = tf.shape(matrices)
  stacked = tf.reshape(tf.linalg.matrix_transpose(matrices), [-1, shape[-2]])
  return tf.reshape(tf.matmul(stacked, right), tf.concat(
      [shape[:-2], [shape[-1], tf.shape(right)[1]]], axis=0))


def _softplus(floor, dtype):
  return tfb.Softplus(low=tf.constant(floor, dtype))


class GaussianPosterior(abc.ABC):
  """A batch of Gaussians q_n(z) = N(loc_n, T_n), n = 1..N, event size H."""

  family = None

  def __init__(self, loc):
    self.loc = _checks.as_float_tensor(loc, 'loc')
    if self.loc.shape.rank is not None and self.loc.shape.rank < 1:
      raise ValueError(f'loc must have shape [..., H], got '
                       f'{self.loc.shape.as_list()}.')
    _checks.check_finite(self.loc, 'loc')

  @property
  def dtype(self):
    return self.loc.dtype

  @property
  def num_latents(self):
    return self.loc.shape[-1]

  def _check_shape(self, tensor, name, trailing=()):
    """Raises unless `tensor` has shape loc.shape + trailing."""
    expected = self.loc.shape.concatenate(trailing)
    if not tensor.shape.is_compatible_with(expected):
      raise ValueError(f'{name} has shape {tensor.shape.as_list()}, expected '
                       f'{expected.as_list()} to match loc '
                       f'{self.loc.shape.as_list()}.')

  @abc.abstractmethod
  def marginal_variance(self):
    """Diagonal of T: `[..., H]`."""

  def marginal_stddev(self):
    """sqrt of the diagonal of T: `[..., H]`."""
    return tf.sqrt(self.marginal_variance())

  @abc.abstractmethod
  def log_det_covariance(self):
    """log det T: `[...]`."""

  @abc.abstractmethod
  def trace_term(self, dictionary, mask=None):
    """tr(M W T W^T) for `dictionary` W `[D, H]`: `[...]`.

    `mask`: optional `[..., D]` float of 0/1 (1 = observed), M = diag(mask_n);
    default all observed, tr(W T W^T).
    """

  @abc.abstractmethod
  def covariance(self):
    """T as dense matrices `[..., H, H]` (for tests and small H)."""

  @abc.abstractmethod
  def distribution(self):
    """The TFP distribution, batch shape `[...]`, event shape `[H]`."""

  def entropy(self):
    """H[q_n] = (H/2) log(2 pi e) + (1/2) log det T_n: `[...]`."""
    return gaussian_entropy(self.log_det_covariance(), self.num_latents)

  @staticmethod
  @abc.abstractmethod
  def init_unconstrained(num_points, num_latents, dtype=tf.float32, *,
                         loc=None, scale=1.0, rank=None, seed=None,
                         floor=DEFAULT_SCALE_FLOOR):
    """Unconstrained parameters (dict of tensors) of N posteriors.

    Args:
      num_points: N.
      num_latents: H.
      dtype: float32 or float64.
      loc: optional initial means `[N, H]`; default zeros.
      scale: initial marginal standard deviation (> floor).
      rank: R, for the low-rank family only.
      seed: stateless seed, for families with random initial factors.
      floor: the softplus floor on scales.
    """

  @classmethod
  @abc.abstractmethod
  def from_unconstrained(cls, params, floor=DEFAULT_SCALE_FLOOR):
    """Posterior from a dict of unconstrained parameters."""

  @abc.abstractmethod
  def floored_scale(self):
    """The scales the unconstrained parameterisation floors: `[..., H]`.

    `scale` (diagonal, low-rank d) or the diagonal of `scale_tril` (full).
    """

  @abc.abstractmethod
  def to_unconstrained(self, floor=DEFAULT_SCALE_FLOOR):
    """The unconstrained parameters (dict) that `from_unconstrained` maps
    to self; every scale must exceed `floor`."""


class DiagonalGaussian(GaussianPosterior):
  """q_n = N(loc_n, diag(scale_n^2)); `scale` `[..., H]` > 0."""

  family = 'diagonal'

  def __init__(self, loc, scale):
    super().__init__(loc)
    self.scale = _checks.as_float_tensor(scale, 'scale', self.dtype)
    self._check_shape(self.scale, 'scale')
    _checks.check_positive(self.scale, 'scale')

  def marginal_variance(self):
    return tf.square(self.scale)

  def marginal_stddev(self):
    return self.scale

  def log_det_covariance(self):
    return 2.0 * tf.reduce_sum(tf.math.log(self.scale), axis=-1)

  def trace_term(self, dictionary, mask=None):
    return tf.reduce_sum(
        tf.square(self.scale) * _observed_column_norms2(dictionary, mask), -1)

  def covariance(self):
    return tf.linalg.diag(tf.square(self.scale))

  def distribution(self):
    return tfd.MultivariateNormalDiag(self.loc, scale_diag=self.scale)

  @staticmethod
  def init_unconstrained(num_points, num_latents, dtype=tf.float32, *,
                         loc=None, scale=1.0, rank=None, seed=None,
                         floor=DEFAULT_SCALE_FLOOR):
    del rank, seed
    dtype = _checks.float_dtype(dtype)
    shape = [num_points, num_latents]
    loc = tf.zeros(shape, dtype) if loc is None else tf.cast(loc, dtype)
    raw = _softplus(floor, dtype).inverse(tf.fill(shape, tf.cast(scale, dtype)))
    return {'loc': loc, 'scale': raw}

  @classmethod
  def from_unconstrained(cls, params, floor=DEFAULT_SCALE_FLOOR):
    dtype = params['loc'].dtype
    return cls(params['loc'], _softplus(floor, dtype).forward(params['scale']))

  def floored_scale(self):
    return self.scale

  def to_unconstrained(self, floor=DEFAULT_SCALE_FLOOR):
    """The unconstrained parameters that `from_unconstrained` maps to self.

    Args:
      floor: the parameterisation's scale floor; every scale must exceed it.

    Returns:
      dict 'loc' `[..., H]`, 'scale' `[..., H]` (inverse softplus of
      scale - floor).
    """
    return {'loc': self.loc,
            'scale': _softplus(floor, self.dtype).inverse(self.scale)}


class FullGaussian(GaussianPosterior):
  """q_n = N(loc_n, L_n L_n^T); `scale_tril` `[..., H, H]` with diagonal > 0."""

  family = 'full'

  def __init__(self, loc, scale_tril):
    super().__init__(loc)
    self.scale_tril = _checks.as_float_tensor(scale_tril, 'scale_tril',
                                              self.dtype)
    self._check_shape(self.scale_tril, 'scale_tril', [self.loc.shape[-1]])
    _checks.check_finite(self.scale_tril, 'scale_tril')
    _checks.check_positive(tf.linalg.diag_part(self.scale_tril),
                           'diagonal of scale_tril')
    # Only the lower triangle counts.
    self.scale_tril = tf.linalg.band_part(self.scale_tril, -1, 0)

  def marginal_variance(self):
    return tf.reduce_sum(tf.square(self.scale_tril), axis=-1)

  def log_det_covariance(self):
    return 2.0 * tf.reduce_sum(
        tf.math.log(tf.linalg.diag_part(self.scale_tril)), axis=-1)

  def trace_term(self, dictionary, mask=None):
    if mask is not None:
      # sum_d m_d ||(W L)_d||^2: O(D H^2) per point.
      wl = _dictionary_times(dictionary, self.scale_tril)
      return tf.reduce_sum(mask * tf.reduce_sum(tf.square(wl), -2), -1)
    # tr(W L L^T W^T) = tr(L^T G L), G = W^T W: O(H^3) per point, not O(D H^2).
    gram = tf.matmul(dictionary, dictionary, transpose_a=True)
    return tf.reduce_sum(
        self.scale_tril * tf.linalg.matmul(gram, self.scale_tril),
        axis=[-2, -1])

  def covariance(self):
    return tf.matmul(self.scale_tril, self.scale_tril, transpose_b=True)

  def distribution(self):
    return tfd.MultivariateNormalTriL(self.loc, scale_tril=self.scale_tril)

  @staticmethod
  def _bijector(floor, dtype):
    return tfb.FillScaleTriL(diag_bijector=_softplus(floor, dtype),
                             diag_shift=None)

  @staticmethod
  def init_unconstrained(num_points, num_latents, dtype=tf.float32, *,
                         loc=None, scale=1.0, rank=None, seed=None,
                         floor=DEFAULT_SCALE_FLOOR):
    del rank, seed
    dtype = _checks.float_dtype(dtype)
    loc = (tf.zeros([num_points, num_latents], dtype) if loc is None
           else tf.cast(loc, dtype))
    tril = tf.eye(num_latents, batch_shape=[num_points], dtype=dtype) * scale
    raw = FullGaussian._bijector(floor, dtype).inverse(tril)
    return {'loc': loc, 'scale_tril': raw}

  @classmethod
  def from_unconstrained(cls, params, floor=DEFAULT_SCALE_FLOOR):
    dtype = params['loc'].dtype
    return cls(params['loc'],
               cls._bijector(floor, dtype).forward(params['scale_tril']))

  def floored_scale(self):
    return tf.linalg.diag_part(self.scale_tril)

  def to_unconstrained(self, floor=DEFAULT_SCALE_FLOOR):
    """The unconstrained parameters that `from_unconstrained` maps to self.

    Args:
      floor: the parameterisation's scale floor; every diagonal entry of
        `scale_tril` must exceed it.

    Returns:
      dict 'loc' `[..., H]`, 'scale_tril' `[..., H(H+1)/2]` (the inverse of
      `tfb.FillScaleTriL` with the softplus-plus-floor diagonal).
    """
    return {'loc': self.loc,
            'scale_tril': self._bijector(floor, self.dtype).inverse(
                self.scale_tril)}


class LowRankGaussian(GaussianPosterior):
  """q_n = N(loc_n, diag(scale_n^2) + U_n U_n^T).

  `scale` `[..., H]` > 0 is d, `factor` `[..., H, R]` is U.
  """

  family = 'lowrank'

  def __init__(self, loc, scale, factor):
    super().__init__(loc)
    self.scale = _checks.as_float_tensor(scale, 'scale', self.dtype)
    self.factor = _checks.as_float_tensor(factor, 'factor', self.dtype)
    self._check_shape(self.scale, 'scale')
    self._check_shape(self.factor, 'factor', [self.factor.shape[-1]])
    _checks.check_positive(self.scale, 'scale')
    _checks.check_finite(self.factor, 'factor')

  @property
  def rank(self):
    return self.factor.shape[-1]

  def marginal_variance(self):
    return tf.square(self.scale) + tf.reduce_sum(tf.square(self.factor), -1)

  def _capacitance_chol(self):
    # Cholesky of I_R + U^T diag(d^-2) U (matrix determinant lemma).
    scaled = self.factor / self.scale[..., tf.newaxis]
    capacitance = tf.matmul(scaled, scaled, transpose_a=True)
    eye = tf.eye(self.rank, dtype=self.dtype)
    return tf.linalg.cholesky(capacitance + eye)

  def log_det_covariance(self):
    chol = self._capacitance_chol()
    return (2.0 * tf.reduce_sum(tf.math.log(self.scale), axis=-1)
            + 2.0 * tf.reduce_sum(
                tf.math.log(tf.linalg.diag_part(chol)), axis=-1))

  def trace_term(self, dictionary, mask=None):
    # tr(W U U^T W^T) = sum_r u_r^T (W^T W) u_r: through the Gram matrix
    # [H, H] the cost per point is H^2 R, not D H R (forward and backward
    # 2.4 ms against 4.8 ms for 1,024 points, D = 256, H = 64, R = 5). A
    # mask makes the Gram matrix differ per point, so then W U itself.
    if mask is None:
      gram = tf.matmul(dictionary, dictionary, transpose_a=True)
      wu2 = tf.reduce_sum(
          tf.linalg.matrix_transpose(self.factor)
          * _transposed_times(self.factor, gram), [-2, -1])
    else:
      wu2 = tf.reduce_sum(mask * tf.reduce_sum(
          tf.square(_dictionary_times(dictionary, self.factor)), -2), -1)
    return (tf.reduce_sum(tf.square(self.scale)
                          * _observed_column_norms2(dictionary, mask), -1)
            + wu2)

  def covariance(self):
    return (tf.linalg.diag(tf.square(self.scale))
            + tf.matmul(self.factor, self.factor, transpose_b=True))

  def distribution(self):
    return tfd.MultivariateNormalDiagPlusLowRankCovariance(
        self.loc, cov_diag_factor=tf.square(self.scale),
        cov_perturb_factor=self.factor)

  @staticmethod
  def init_unconstrained(num_points, num_latents, dtype=tf.float32, *,
                         loc=None, scale=1.0, rank=None, seed=None,
                         floor=DEFAULT_SCALE_FLOOR, factor_scale=1e-2):
    """See `GaussianPosterior.init_unconstrained`.

    U starts small and random (scale `factor_scale`): U = 0 is a stationary
    point of every objective in U, so a zero start would never move.
    """
    dtype = _checks.float_dtype(dtype)
    if rank is None or rank < 1:
      raise ValueError(f'rank must be a positive int for the low-rank '
                       f'family, got {rank!r}.')
    shape = [num_points, num_latents]
    loc = tf.zeros(shape, dtype) if loc is None else tf.cast(loc, dtype)
    raw = _softplus(floor, dtype).inverse(tf.fill(shape, tf.cast(scale, dtype)))
    seed = _checks.stateless_seed(0 if seed is None else seed)
    factor = factor_scale * tf.random.stateless_normal(
        shape + [rank], seed=seed, dtype=dtype)
    return {'loc': loc, 'scale': raw, 'factor': factor}

  @classmethod
  def from_unconstrained(cls, params, floor=DEFAULT_SCALE_FLOOR):
    dtype = params['loc'].dtype
    return cls(params['loc'], _softplus(floor, dtype).forward(params['scale']),
               params['factor'])

  def floored_scale(self):
    return self.scale

  def to_unconstrained(self, floor=DEFAULT_SCALE_FLOOR):
    """`DiagonalGaussian.to_unconstrained` of (loc, d), plus 'factor'
    `[..., H, R]` (U itself)."""
    return dict(DiagonalGaussian(self.loc, self.scale).to_unconstrained(floor),
                factor=self.factor)


FAMILIES = {
    'full': FullGaussian,
    'diagonal': DiagonalGaussian,
    'lowrank': LowRankGaussian,
}


def get_family(name):
  """The posterior class for `name` in {'full', 'diagonal', 'lowrank'}."""
  try:
    return FAMILIES[name]
  except KeyError:
    raise ValueError(f'posterior family must be one of {sorted(FAMILIES)}, '
                     f'got {name!r}.') from None
