"""Amortized Gaussian posteriors: Keras 3 encoders x -> q(z | x) (SPEC 2, 10).

An encoder is a plain `keras.Model` mapping data x `[B, D]` to a dict of
tensors: the means 'loc' `[B, H]` and the family's *unconstrained* covariance
parameters, the same ones `GaussianPosterior.from_unconstrained` takes for
non-amortized posteriors:

| family    | outputs besides 'loc'                                   |
|-----------|---------------------------------------------------------|
| diagonal  | 'scale' `[B, H]`                                        |
| lowrank   | 'scale' `[B, H]`, 'factor' `[B, H, R]`                  |
| full      | 'scale_tril' `[B, H(H+1)/2]` (a `tfb.FillScaleTriL` vector) |

The TFP distributions are built outside Keras by `posterior_from_outputs`
(softplus plus a floor on scales), so amortized and non-amortized posteriors
share one parameterization.

Architecture (the paper's "two ResNet-like blocks, then linear read-outs"):

  h_0     = Dense(hidden_units)(x)                               (linear)
  h_{k+1} = h_k + Dense(hidden_units)(act(Dense(hidden_units)(act(h_k))))
  outputs = linear read-outs of act(h_K)

i.e. `num_blocks` pre-activation residual blocks (He et al. 2016, "Identity
mappings in deep residual networks", without normalisation layers) and a final
activation before the read-outs, as in a pre-activation ResNet. Every kernel
initializer has its own seed derived from `seed`, so two encoders built with
the same arguments have identical weights. Biases start at zero, so the
initial scales are about softplus(0) + floor ~ 0.69; the low-rank factor's
read-out starts with a small kernel (U ~ 1e-2, not 0: U = 0 is a stationary
point of every objective in U).

`factor_rate` = c makes the factor's read-out learn at c times the
optimiser's rate: U = c Dense(h), its kernel started 1 / c times as large
(Adam moves every weight by about its learning rate whatever the
gradient's size, so a constant on the output is a constant on the
read-out's rate). Measured (session 27; 60 s, 8,192 unseen patches, Adam
5e-3 on batches of 1,024, full-data ELBO; the diagonal family in the same
runs): c = 1 gives H = 64 65.96 (diagonal 66.83; the ELBO dropped by 6 to
13 nats at three evaluations and recovered), H = 100 84.78 (diagonal
116.55), H = 256 -14.3 (diagonal 70.99); c = 0.1 gives 66.35, 113.35 and
21.0. At the paper's protocol c = 0.1 costs D its lead: 8,192 default
patches, H = 100, Adam 1e-3 on 512, 50 epochs, D 83.69 with c = 1 and
82.47 with c = 0.1, against C 82.56. So the default stays 1; use 0.1 with
faster learning rates.
"""

import numpy as np

from tfp_esc import _checks
from tfp_esc.posterior.gaussian import DEFAULT_SCALE_FLOOR, get_family

__all__ = [
  'MAX_FULL_LATENTS',
  'make_encoder',
  'output_names',
  'posterior_from_outputs',
]

# The full family's read-out has H(H+1)/2 outputs and its objective costs
# O(H^3) per point; beyond this the model is impractical.
MAX_FULL_LATENTS = 64

# Variance scale of the low-rank factor's read-out kernel relative to
# Glorot's, times factor_rate^2: U entries start ~ 1e-2 whatever the rate.
_FACTOR_INIT_SCALE = 1e-4


def output_names(family):
  """The keys of an encoder's output dict for `family`.

  Args:
    family: 'diagonal', 'lowrank' or 'full'.

  Returns:
    Tuple of str, 'loc' first.

  Raises:
    ValueError: unknown family.
  """
  name = get_family(family).family
  return {'diagonal': ('loc', 'scale'),
          'lowrank': ('loc', 'scale', 'factor'),
          'full': ('loc', 'scale_tril')}[name]


def _check_int(value, name, minimum):
  if isinstance(value, bool) or not float(value).is_integer():
    raise ValueError(f'{name} must be an integer >= {minimum}, got '
                     f'{value!r}.')
  value = int(value)
  if value < minimum:
    raise ValueError(f'{name} must be an integer >= {minimum}, got {value}.')
  return value


def make_encoder(num_observed, num_latents, family='diagonal', rank=5,
                 hidden_units=256, num_blocks=2, activation='relu', seed=0,
                 dtype='float32', factor_rate=1.0):
  """Builds an encoder x `[B, D]` -> dict of posterior parameters.

  Args:
    num_observed: D >= 1, the data dimension.
    num_latents: H >= 1 (at most `MAX_FULL_LATENTS` = 64 for 'full').
    family: 'diagonal', 'lowrank' or 'full'.
    rank: R >= 1, the low-rank factor's rank (ignored by other families).
    hidden_units: width of the hidden layers (>= 1).
    num_blocks: number of residual blocks (>= 0).
    activation: a Keras activation name or callable.
    seed: int; the kernel initializers use seeds seed, seed + 1, ...
    dtype: 'float32' or 'float64', the dtype of weights, inputs and outputs.
    factor_rate: c > 0, the low-rank factor's read-out learns at c times
      the optimiser's rate (module doc); ignored by other families.

  Returns:
    A functional `keras.Model` named 'encoder'; called on x `[B, D]` it
    returns a dict (keys `output_names(family)`): 'loc' `[B, H]` and
    unconstrained 'scale' `[B, H]`, 'factor' `[B, H, R]` or 'scale_tril'
    `[B, H(H+1)/2]`, all of `dtype`.

  Raises:
    ValueError: a non-positive size, an unknown family, a missing rank for
      'lowrank', or 'full' with H > 64.
    TypeError: dtype not float32/float64.
  """
  import keras  # Local: keeps the posterior package importable without Keras.

  num_observed = _check_int(num_observed, 'num_observed', 1)
  num_latents = _check_int(num_latents, 'num_latents', 1)
  name = get_family(family).family
  if name == 'lowrank':
    if rank is None:
      raise ValueError('rank must be a positive int for the low-rank family, '
                       'got None.')
    rank = _check_int(rank, 'rank', 1)
  if name == 'full' and num_latents > MAX_FULL_LATENTS:
    raise ValueError(
        f'num_latents={num_latents} is too large for the full-covariance '
        f'encoder (at most {MAX_FULL_LATENTS}): its read-out would have '
        f'H(H+1)/2 = {num_latents * (num_latents + 1) // 2} outputs per '
        "point. Use family='lowrank' or 'diagonal' instead.")
  factor_rate = _checks.check_real(factor_rate, 'factor_rate', 0.0)
  hidden_units = _check_int(hidden_units, 'hidden_units', 1)
  num_blocks = _check_int(num_blocks, 'num_blocks', 0)
  seed = int(seed)
  dtype = _checks.float_dtype(dtype).name
  act = keras.activations.get(activation)

  seeds = iter(range(seed, seed + 2 * num_blocks + 8))

  def dense(units, layer_name, scale=1.0):
    initializer = keras.initializers.VarianceScaling(
        scale=scale, mode='fan_avg', distribution='uniform', seed=next(seeds))
    return keras.layers.Dense(units, kernel_initializer=initializer,
                              bias_initializer='zeros', dtype=dtype,
                              name=layer_name)

  def activate(tensor, layer_name):
    return keras.layers.Activation(act, dtype=dtype, name=layer_name)(tensor)

  x = keras.Input(shape=(num_observed,), dtype=dtype, name='x')
  h = dense(hidden_units, 'input_dense')(x)
  for block in range(num_blocks):
    y = activate(h, f'block{block}_act0')
    y = dense(hidden_units, f'block{block}_dense0')(y)
    y = activate(y, f'block{block}_act1')
    y = dense(hidden_units, f'block{block}_dense1')(y)
    h = keras.layers.Add(dtype=dtype, name=f'block{block}_add')([h, y])
  h = activate(h, 'final_act')

  outputs = {'loc': dense(num_latents, 'loc')(h)}
  if name in ('diagonal', 'lowrank'):
    outputs['scale'] = dense(num_latents, 'scale')(h)
  if name == 'lowrank':
    factor = dense(num_latents * rank, 'factor_flat',
                   scale=_FACTOR_INIT_SCALE / factor_rate**2)(h)
    # A NumPy float64 scale: Keras casts a Python float through float32.
    factor = keras.layers.Rescaling(np.float64(factor_rate), dtype=dtype,
                                    name='factor_rate')(factor)
    outputs['factor'] = keras.layers.Reshape(
        (num_latents, rank), dtype=dtype, name='factor')(factor)
  if name == 'full':
    outputs['scale_tril'] = dense(num_latents * (num_latents + 1) // 2,
                                  'scale_tril')(h)
  return keras.Model(inputs=x, outputs=outputs, name='encoder')


def posterior_from_outputs(outputs, family, floor=DEFAULT_SCALE_FLOOR):
  """The `GaussianPosterior` of an encoder's outputs.

  Uses the family's `from_unconstrained` (scales = softplus(raw) + floor,
  through TFP bijectors), the same map as for non-amortized posteriors.

  Args:
    outputs: dict with 'loc' `[B, H]` and the family's raw parameters
      ('scale' `[B, H]`; 'factor' `[B, H, R]`; 'scale_tril' `[B, H(H+1)/2]`),
      one float dtype.
    family: 'diagonal', 'lowrank' or 'full' (or a `GaussianPosterior` class).
    floor: lower bound on the scales (> 0).

  Returns:
    `DiagonalGaussian`, `LowRankGaussian` or `FullGaussian` with B points.

  Raises:
    ValueError: unknown family, missing keys in `outputs`, or (via the
      posterior) mismatched shapes / NaN values.
  """
  cls = family if isinstance(family, type) else get_family(family)
  names = output_names(cls.family)
  if not hasattr(outputs, 'keys'):
    raise ValueError(f'outputs must be a dict with keys {list(names)}, got '
                     f'{type(outputs).__name__}.')
  missing = [k for k in names if k not in outputs]
  if missing:
    raise ValueError(f'outputs lacks {missing} for the {cls.family!r} family '
                     f'(it has keys {sorted(outputs)}).')
  if not floor > 0:
    raise ValueError(f'floor must be positive, got {floor!r}.')
  return cls.from_unconstrained({k: outputs[k] for k in names}, floor=floor)
