"""Full-batch EM for data with missing entries (observation masks).

The model is that of `tfp_esc.objective.elbo` with a per-point mask m_n in
{0, 1}^D (1 = observed): the likelihood runs over the observed entries only,
and F is the masked F of that module's doc. Image restoration learns its
dictionary this way from a damaged image's own patches.

One iteration is an E-step and an M-step, and neither lowers the masked F:

- E-step: `tfp_esc.inference.mm.mm_e_step` with the mask, on the whole data
  set as one batch (lambda*, sigma^2* free), warm-started from the last
  posteriors.
- M-step (missing entries as latent variables). Treat x_n,mis as latent with
  q(x_n,mis | z) = p(x_n,mis | z, W_old). The expected complete-data
  log-likelihood E_q log p(x_n | z, W) differs from the masked
  E_q log p(x_n,obs | z, W) by a term that W_old maximises (Gibbs'
  inequality), so any W that raises the former raises the latter (the EM
  argument). The former is maximised in closed form by W = B A^-1 with

    A = sum_n (nu_n nu_n^T + diag s_n^2),
    B = sum_n xt_n nu_n^T + W_old * ((1 - m)^T s^2),
    xt_n = m_n * x_n + (1 - m_n) * (W_old nu_n)   (missing entries imputed),

  all from `[N, D] x [N, H]` products: no per-row H x H systems. Then the
  columns are normalised and the codes rescaled by the column norms, which
  leaves F unchanged (lambda* and the entropies move together). With no
  missing entries this is the exact closed-form M-step of
  `tfp_esc.inference.incremental_em`.

Missing-data EM converges more slowly than EM on complete data (at half the
entries missing, roughly twice the iterations); the number of iterations is
the caller's budget. The scale floor is relative (1e-4 of the observed
entries' rms), so training on c x learns the same W for any c > 0.

The compiled iteration (`_masked_em_iteration`) is built once per process
and noise mode, with the data, mask, dictionary, floor and a fixed sigma^2
as arguments: a second fit of data of the same shapes (another image of the
same size) reuses its XLA compilation instead of compiling again.
"""

import dataclasses
import functools

from absl import logging
import numpy as np
import tensorflow as tf

from tfp_esc import _checks
from tfp_esc.inference._training import DEAD_COLUMN, RELATIVE_SCALE_FLOOR
from tfp_esc.inference.incremental_em import principal_directions
from tfp_esc.inference.mm import mm_e_step
from tfp_esc.objective import elbo as elbo_lib
from tfp_esc.posterior.gaussian import DiagonalGaussian

__all__ = ['MaskedEMResult', 'fit_masked_em', 'imputation_m_step']



@dataclasses.dataclass
class MaskedEMResult:
  """What masked EM learned.

  Attributes:
    dictionary: `[D, H]` unit-norm W, the data's dtype.
    loc, scale: `[N, H]` the diagonal posteriors of the training points.
    scales: `[H]` lambda* of the final posteriors.
    noise_variance: float sigma^2* (per observed entry).
    history: dict of per-iteration lists 'elbo' (masked F per point),
      'noise_variance'.
  """
  dictionary: np.ndarray
  loc: np.ndarray
  scale: np.ndarray
  scales: np.ndarray
  noise_variance: float
  history: dict


def imputation_m_step(x, mask, dictionary, loc, scale):
  """The M-step of the module doc: W = B A^-1 (unnormalised).

  Args:
    x: `[N, D]` float data (missing entries ignored).
    mask: `[N, D]` float 0/1, 1 = observed.
    dictionary: `[D, H]` float W_old.
    loc, scale: `[N, H]` float diagonal posteriors.

  Returns:
    `[D, H]` float, the maximiser of the expected complete-data
    log-likelihood.
  """
  missing = 1.0 - mask
  imputed = mask * x + missing * tf.matmul(loc, dictionary, transpose_b=True)
  variance = tf.square(scale)
  second_moment = (tf.matmul(loc, loc, transpose_a=True)
                   + tf.linalg.diag(tf.reduce_sum(variance, 0)))     # [H, H]
  cross = (tf.matmul(imputed, loc, transpose_a=True)
           + dictionary * tf.matmul(missing, variance, transpose_a=True))
  # W A = B  <=>  A W^T = B^T (A symmetric).
  return tf.transpose(tf.linalg.solve(second_moment, tf.transpose(cross)))


def _terms(x, mask, dictionary, loc, scale, noise_variance):
  """`EntropyElbo` of the masked data; with sigma^2 fixed, 'elbo' is
  L(lambda*, sigma^2) and 'noise_variance' the fixed value."""
  posterior = DiagonalGaussian(loc, scale)
  terms = elbo_lib.entropy_elbo(x, dictionary, posterior, mask=mask)
  if noise_variance is None:
    return terms
  elbo = elbo_lib.classical_elbo(x, dictionary, posterior, terms.scales,
                                 noise_variance, mask=mask)
  return terms._replace(elbo=elbo, objective=elbo,
                        noise_variance=noise_variance)


@functools.cache
def _masked_em_iteration(learn_noise):
  """One compiled masked-EM iteration (E-step, then M-step); module doc.

  Args:
    learn_noise: True: sigma^2* is learned (the `noise_variance` argument of
      the returned function is ignored); False: sigma^2 is held at it.

  Returns:
    A `tf.function` (XLA), traced per dtype and shape:
    (x `[N, D]`, mask `[N, D]` 0/1, w `[D, H]`, loc, scale `[N, H]`,
    e_iterations int32 scalar, floor, noise_variance scalars) ->
    (w `[D, H]` unit columns, loc, scale `[N, H]`, terms: `EntropyElbo` of
    the posteriors after the E-step with the incoming w).
  """

  # autograph=False: see `tfp_esc.inference.mm` ("Compiling it").
  @tf.function(jit_compile=True, autograph=False)
  def iterate(x, mask, w, loc, scale, e_iterations, floor, noise_variance):
    fixed_noise = None if learn_noise else noise_variance
    loc, scale = mm_e_step(x, w, loc, scale, tf.ones([3], x.dtype),
                           iterations=e_iterations, floor=floor, mask=mask,
                           noise_variance=fixed_noise)
    terms = _terms(x, mask, w, loc, scale, fixed_noise)
    free = imputation_m_step(x, mask, w, loc, scale)
    norms = tf.norm(free, axis=0)
    dead = norms <= DEAD_COLUMN * tf.reduce_max(norms)
    free = tf.where(dead[None, :], w, free)
    norms = tf.where(dead, tf.ones_like(norms), norms)
    return free / norms, loc * norms, scale * norms, terms

  return iterate


def _check(x, mask, num_latents, iterations, e_step_iterations):
  x = np.asarray(x)
  if x.dtype not in (np.float32, np.float64):
    raise TypeError(f'x must be float32 or float64, got {x.dtype}.')
  if x.ndim != 2 or 0 in x.shape:
    raise ValueError(f'x must be a non-empty [N, D] array, got shape '
                     f'{x.shape}.')
  mask = _checks.check_mask(mask, x.shape)
  if not np.all(np.isfinite(x[mask])):
    raise ValueError('x has NaN or inf values at observed entries.')
  _checks.check_count(num_latents, 'num_latents')
  _checks.check_count(iterations, 'iterations')
  _checks.check_count(e_step_iterations, 'e_step_iterations')
  observed = x[mask]
  if observed.size == 0 or np.all(observed == observed[0]):
    raise ValueError('x is constant (or has no observed entries) at the '
                     'observed entries: there is nothing to learn.')
  return np.where(mask, x, 0).astype(x.dtype), mask


def fit_masked_em(x, num_latents, *, mask=None, iterations=30,
                  e_step_iterations=5, first_e_step_iterations=30,
                  noise_variance=None, init_dictionary=None, seed=0):
  """Learns W, lambda, sigma^2 and diagonal posteriors from masked data.

  Args:
    x: `[N, D]` float32/float64 data; values at missing entries are ignored
      (may be NaN).
    num_latents: H, a positive integer.
    mask: optional `[N, D]` bool (or 0/1), true where x is observed; default
      all observed.
    iterations: EM iterations (E-step then M-step), a positive integer.
    e_step_iterations: majorise-minimise iterations per E-step.
    first_e_step_iterations: iterations of the first E-step (from zero
      means).
    noise_variance: optional positive float sigma^2 held fixed (a known
      noise level); default None: sigma^2* is learned. With it fixed the
      history's 'elbo' is the classical L(lambda*, sigma^2), which every
      iteration raises.
    init_dictionary: optional `[D, H]` start for W (normalised here);
      default the top principal directions of the observed data.
    seed: seeds the default start.

  Returns:
    `MaskedEMResult`.

  Raises:
    TypeError, ValueError: bad input (named), before any work.
    FloatingPointError: a non-finite F, naming the iteration.
  """
  x, mask = _check(x, mask, num_latents, iterations, e_step_iterations)
  if noise_variance is not None:
    _checks.check_real(noise_variance, 'noise_variance', low=0.0)
  dtype = tf.as_dtype(x.dtype)
  num_points, num_observed = x.shape
  rms = float(np.sqrt(np.mean(np.square(x[mask], dtype=np.float64))))
  floor = RELATIVE_SCALE_FLOOR * rms
  if init_dictionary is None:
    init_dictionary = principal_directions(x, num_latents, seed)
  w = np.asarray(init_dictionary, np.float64)
  if w.shape != (num_observed, num_latents):
    raise ValueError(f'init_dictionary must have shape '
                     f'{(num_observed, num_latents)}, got {w.shape}.')
  w = tf.constant(w / np.linalg.norm(w, axis=0), dtype)
  x_t = tf.constant(x)
  mask_t = tf.constant(mask, dtype)
  fixed_noise = tf.constant(0.0 if noise_variance is None
                            else noise_variance, dtype)
  iterate = _masked_em_iteration(noise_variance is None)
  floor = tf.constant(floor, dtype)
  loc = tf.zeros([num_points, num_latents], dtype)
  scale = tf.fill([num_points, num_latents], tf.constant(rms, dtype))

  history = {'elbo': [], 'noise_variance': []}
  for i in range(iterations):
    e_iterations = tf.constant(first_e_step_iterations if i == 0
                               else e_step_iterations)
    w_new, loc, scale, terms = iterate(x_t, mask_t, w, loc, scale,
                                       e_iterations, floor, fixed_noise)
    elbo = float(terms.elbo)
    if not np.isfinite(elbo):
      raise FloatingPointError(f'masked EM iteration {i}: F is {elbo}.')
    history['elbo'].append(elbo)
    history['noise_variance'].append(float(terms.noise_variance))
    logging.info('masked EM %d/%d: F = %.4f, noise_variance = %.4g', i + 1,
                 iterations, elbo, float(terms.noise_variance))
    w = w_new
  terms = _terms(x_t, mask_t, w, loc, scale,
                 None if noise_variance is None else fixed_noise)
  return MaskedEMResult(dictionary=w.numpy(), loc=loc.numpy(),
                        scale=scale.numpy(), scales=terms.scales.numpy(),
                        noise_variance=float(terms.noise_variance),
                        history=history)
