"""A Newton-type E-step for diagonal Gaussian posteriors (SPEC 10, E-step).

For fixed lambda and sigma^2 the annealed classical ELBO L_a separates over
data points, and each point's part is a smooth concave function of its
posterior mean nu [H] and standard deviations s [H]:

  g(nu, s) = a_q sum_h log s_h - a_prior sum_h A(nu_h, s_h) / lambda_h
             - a_lik (||x - W nu||^2 + sum_h ||w_h||^2 s_h^2) / (2 sigma^2)

(A(m, s) = E|u|, u ~ N(m, s^2), is convex in (m, s) jointly). F_a is the
maximum of L_a over lambda and sigma^2, attained at lambda*, sigma^2*
(Theorem 2), so raising every g with lambda, sigma^2 held and then
re-computing lambda*, sigma^2* never lowers F_a. Each iteration here does
exactly that with one damped Newton step per point:

  * gradient and Hessian of g in closed form. The Hessian is
    [[a_lik G / sigma^2 + diag(d1), diag(d2)], [diag(d2), diag(d3)]] with the
    Gram matrix G = W^T W shared by all points, so eliminating s leaves one
    H x H system per point, solved by a batched Cholesky factorisation;
  * a step length per point chosen from {1, 1/2, 1/4, 1/8, 0} times the
    largest step that keeps s above the floor, by evaluating g (cheap: the
    residual's squared norm is quadratic in the step length), so g never
    decreases;
  * lambda*, sigma^2* of the batch re-computed from the new moments.

Only the diagonal family has this structure; the full and low-rank families
use the L-BFGS E-step.
"""

import collections
import math

import tensorflow as tf

from tfp_esc.objective.elbo import (ElboStatistics,
                                    classical_elbo_from_statistics,
                                    entropy_elbo_from_statistics)
from tfp_esc.objective.special import (expected_magnitude,
                                        expected_magnitude_partials,
                                        gaussian_entropy)

__all__ = ['newton_e_step']

_STEP_FRACTIONS = (1.0, 0.5, 0.25, 0.125, 0.0)


def _point_statistics(residual2, column_norms2, loc, scale):
  """`ElboStatistics` of each point `[..., B]` alone (count 1), in float64.

  residual2: ||x - W nu||^2 `[..., B]`; loc, scale: `[..., B, H]`.
  Candidates are compared by the values of L and F, constants included;
  float32 would round away the differences between candidates near the
  optimum, so the values are computed in float64 (small tensors, no XLA).
  """
  residual2, column_norms2, loc, scale = (
      tf.cast(v, tf.float64) for v in (residual2, column_norms2, loc, scale))
  num_latents = tf.shape(loc)[-1]
  return ElboStatistics(
      count=tf.ones_like(residual2),
      reconstruction=residual2 + tf.reduce_sum(
          column_norms2 * tf.square(scale), -1),
      expected_magnitude=expected_magnitude(loc, scale),
      q_entropy=gaussian_entropy(
          2.0 * tf.reduce_sum(tf.math.log(scale), -1),
          tf.cast(num_latents, loc.dtype)))


def _per_point_objective(residual2, column_norms2, loc, scale, scales,
                         noise_variance, num_observed, coefficients):
  """-g of every point `[..., B]`: -L_a of the point at fixed lambda, sigma^2."""
  scales, noise_variance, num_observed, coefficients = (
      tf.cast(v, tf.float64)
      for v in (scales, noise_variance, num_observed, coefficients))
  return -classical_elbo_from_statistics(
      _point_statistics(residual2, column_norms2, loc, scale), num_observed,
      scales, noise_variance, coefficients[0], coefficients[1],
      coefficients[2]).objective


def _batch_objective(residual2, column_norms2, loc, scale, num_observed,
                     coefficients):
  """-F_a * B of candidate moments: residual2 `[K, B]`, loc, scale `[K, B, H]`.

  Returns `[K]`; F_a recomputes lambda*, sigma^2* of every candidate.
  """
  points = _point_statistics(residual2, column_norms2, loc, scale)
  num_observed, coefficients = (tf.cast(v, tf.float64)
                                for v in (num_observed, coefficients))
  statistics = ElboStatistics(
      count=tf.cast(tf.shape(residual2)[-1], tf.float64),  # B, for all K
      reconstruction=tf.reduce_sum(points.reconstruction, -1),
      expected_magnitude=tf.reduce_sum(points.expected_magnitude, -2),
      q_entropy=tf.reduce_sum(points.q_entropy, -1))
  return -statistics.count * entropy_elbo_from_statistics(
      statistics, num_observed, coefficients[0], coefficients[1],
      coefficients[2]).objective


_Directions = collections.namedtuple('_Directions', [
    'residual', 'residual2', 'scales', 'noise_variance', 'step_loc',
    'step_scale', 'coupled_loc', 'coupled_scale', 'coupled_valid'])


def _directions(x, dictionary, gram, projected, loc, scale, coefficients,
                damping, coupled):
  """Newton directions at (loc, scale) `[B, H]`; see the module doc.

  Returns `_Directions`: the per-point step (fixed lambda, sigma^2) and, if
  `coupled` (a bool or a scalar bool tensor), the Newton step of -F_a B
  itself (else zeros) and whether its Hessian was positive definite.
  """
  dtype = x.dtype
  a_q, a_prior, a_lik = coefficients[0], coefficients[1], coefficients[2]
  num_points = tf.cast(tf.shape(x)[0], dtype)
  num_observed = tf.cast(tf.shape(x)[1], dtype)
  column_norms2 = tf.linalg.diag_part(gram)
  residual = x - tf.matmul(loc, dictionary, transpose_b=True)      # [B, D]
  residual2 = tf.reduce_sum(tf.square(residual), -1)               # [B]
  # A = E|u| and its partials dA/dnu = erf, dA/ds = density: [B, H] each.
  magnitude, erf, density = expected_magnitude_partials(loc, scale)
  scales = tf.reduce_mean(magnitude, 0)                            # [H]
  noise_variance = tf.reduce_mean(
      residual2 + tf.linalg.matvec(tf.square(scale), column_norms2)
  ) / num_observed
  precision = a_lik / noise_variance
  prior_weight = a_prior / scales
  back_projected = projected - tf.matmul(loc, gram)                # W^T r
  # Gradient of -g (= of -F_a B, by the envelope theorem).
  grad_loc = prior_weight * erf - precision * back_projected
  grad_scale = (-a_q / scale + prior_weight * density
                + precision * column_norms2 * scale)
  # Hessian of -g: the s-block and the (nu, s) block are diagonal.
  d1 = prior_weight * density / scale
  d2 = -prior_weight * density * loc / tf.square(scale)
  d3 = (a_q / tf.square(scale)
        + prior_weight * density * tf.square(loc) / scale**3
        + precision * column_norms2)
  ratio = d2 / d3
  system = precision * gram + tf.linalg.diag(
      d1 - d2 * ratio + damping * (precision * column_norms2 + 1.0))
  chol = tf.linalg.cholesky(system)                                # [B, H, H]
  step_loc = tf.linalg.cholesky_solve(
      chol, (-grad_loc + ratio * grad_scale)[..., None])[..., 0]
  step_scale = (-grad_scale - d2 * step_loc) / d3
  def coupled_step():
    # Coupled step: Newton on -F_a B itself, whose Hessian is
    # A - U P^-1 U^T with A the per-point Hessians above, U [.., H + 1] the
    # cross derivatives with (lambda, sigma^2) and P their (diagonal)
    # curvature; Woodbury gives the step from A's factors and one
    # (H + 1) x (H + 1) system C = P - U^T A^-1 U.
    u_loc = tf.concat([tf.linalg.diag(-prior_weight / scales * erf),
                       (precision / noise_variance * back_projected)[..., None]],
                      -1)                                            # [B, H, H+1]
    u_scale = tf.concat([-prior_weight / scales * density,
                         (-precision / noise_variance * column_norms2
                          * scale)], -1)                             # [B, 2H]
    num_latents = tf.shape(scales)[0]
    u_scale_lambda, u_scale_noise = u_scale[:, :num_latents], u_scale[:, num_latents:]
    reduced = u_loc - tf.concat([tf.linalg.diag(ratio * u_scale_lambda),
                                 (ratio * u_scale_noise)[..., None]], -1)
    # U^T A^-1 U needs only the forward half of the solve: with
    # S = L L^T, reduced^T S^-1 reduced = Y^T Y for Y = L^-1 reduced.
    half = tf.linalg.triangular_solve(chol, reduced, lower=True)     # [B, H, H+1]
    inner = tf.einsum('bhi,bhj->ij', half, half)
    inv_d3 = 1.0 / d3
    lam_lam = tf.reduce_sum(tf.square(u_scale_lambda) * inv_d3, 0)
    lam_noise = tf.reduce_sum(u_scale_lambda * u_scale_noise * inv_d3, 0)
    noise_noise = tf.reduce_sum(tf.square(u_scale_noise) * inv_d3)
    scale_part = tf.linalg.diag(tf.concat([lam_lam, noise_noise[None]], 0))
    border = tf.concat([lam_noise, tf.zeros([1], dtype)], 0)
    scale_part += (border[:, None] * tf.one_hot(num_latents, num_latents + 1,
                                                dtype=dtype)[None, :]
                   + border[None, :] * tf.one_hot(num_latents, num_latents + 1,
                                                  dtype=dtype)[:, None])
    curvature = tf.concat(
        [num_points * a_prior / tf.square(scales),
         (num_points * a_lik * num_observed
          / (2.0 * tf.square(noise_variance)))[None]], 0)
    capacitance = tf.linalg.diag(curvature) - inner - scale_part
    # U^T step0, summed over points.
    projected_step = tf.concat(
        [tf.reduce_sum(-prior_weight / scales * (erf * step_loc
                                                 + density * step_scale), 0),
         tf.reduce_sum(precision / noise_variance
                       * (back_projected * step_loc
                          - column_norms2 * scale * step_scale))[None]], 0)
    eigenvalues, eigenvectors = tf.linalg.eigh(capacitance)
    positive = eigenvalues[0] > 1e-10 * tf.reduce_max(tf.abs(eigenvalues))
    safe = tf.where(positive, eigenvalues, tf.ones_like(eigenvalues))
    w = tf.linalg.matvec(eigenvectors, tf.linalg.matvec(
        eigenvectors, projected_step, transpose_a=True) / safe)
    correction = tf.linalg.cholesky_solve(
        chol, tf.linalg.matvec(reduced, w)[..., None])[..., 0]      # S^-1 U~ w
    coupled_loc = step_loc + correction
    u_scale_w = (u_scale_lambda * w[:num_latents]
                 + u_scale_noise * w[num_latents])
    coupled_scale = step_scale + (u_scale_w - d2 * correction) * inv_d3
    return coupled_loc, coupled_scale, positive

  def skipped():
    return tf.zeros_like(loc), tf.zeros_like(scale), tf.constant(False)

  coupled_loc, coupled_scale, positive = tf.cond(
      tf.convert_to_tensor(coupled), coupled_step, skipped)
  return _Directions(residual, residual2, scales, noise_variance, step_loc,
                     step_scale, coupled_loc, coupled_scale, positive)


def newton_e_step(x, dictionary, loc, scale, coefficients, *, iterations,
                  floor, damping=1e-8, coupled=True, coupled_after=3):
  """Maximises a batch's annealed F_a over diagonal posteriors by Newton steps.

  Args:
    x: `[B, D]` float batch.
    dictionary: `[D, H]` float W (unit-norm columns for F; any W works).
    loc: `[B, H]` float start of the means nu.
    scale: `[B, H]` float start of the standard deviations s, all > floor.
    coefficients: `[3]` float (a_q, a_prior, a_lik).
    iterations: int, number of Newton iterations (a Python int or a scalar
      int tensor).
    floor: float, the scale floor of the family's parameterisation; steps
      keep s above it.
    damping: relative Levenberg damping added to the reduced Hessian's
      diagonal (keeps the Cholesky factorisation defined when H > D).
    coupled: also try the coupled Newton step of F_a itself. It costs about
      four per-point iterations (H + 1 right-hand sides per point) and is
      only computed from iteration `coupled_after` on (F_a's Hessian is
      rarely positive definite far from the optimum) and when
      a_prior <= 1 (above, F_a is unbounded and its Hessian indefinite).
    coupled_after: first iteration (from 0) that tries the coupled step.

  Returns:
    (loc, scale): `[B, H]` float each, the fitted means and standard
    deviations (scale > floor).
  """
  dtype = x.dtype
  num_observed = tf.cast(tf.shape(x)[1], dtype)
  gram = tf.matmul(dictionary, dictionary, transpose_a=True)        # [H, H]
  column_norms2 = tf.linalg.diag_part(gram)                          # [H]
  projected = tf.matmul(x, dictionary)                               # [B, H]
  floor = tf.cast(floor, dtype)
  fractions = tf.constant(_STEP_FRACTIONS, dtype)[:, None]           # [K, 1]
  tiny = tf.constant(1e-30, dtype)

  def longest_step(scale, step_scale):
    # Largest step keeping s above the floor (0.9 of the way to it at most).
    to_floor = tf.where(step_scale < 0,
                        0.9 * (scale - floor) / tf.maximum(-step_scale, tiny),
                        tf.ones_like(scale))
    return tf.minimum(tf.reduce_min(to_floor, -1), 1.0)             # [B]

  def candidates(loc, scale, residual, residual2, step_loc, step_scale, t):
    # Moments and squared residuals at loc + t step: [K, B, H], [K, B].
    moved = tf.matmul(step_loc, dictionary, transpose_b=True)        # [B, D]
    cross = tf.reduce_sum(residual * moved, -1)
    moved2 = tf.reduce_sum(tf.square(moved), -1)
    return (loc + t[..., None] * step_loc, scale + t[..., None] * step_scale,
            residual2 - 2.0 * t * cross + tf.square(t) * moved2)

  def body(i, loc, scale):
    use_coupled = tf.logical_and(i >= coupled_after,
                                 coefficients[1] <= 1.0)
    d = _directions(x, dictionary, gram, projected, loc, scale, coefficients,
                    damping, use_coupled if coupled else False)
    residual, residual2 = d.residual, d.residual2
    step_loc, step_scale = d.step_loc, d.step_scale
    coupled_loc, coupled_scale = d.coupled_loc, d.coupled_scale
    positive = d.coupled_valid
    # Per-point step lengths at fixed lambda, sigma^2: g never decreases.
    t = fractions * longest_step(scale, step_scale)                  # [K, B]
    cand_loc, cand_scale, cand_residual2 = candidates(
        loc, scale, residual, residual2, step_loc, step_scale, t)
    values = _per_point_objective(cand_residual2, column_norms2, cand_loc,
                                  cand_scale, d.scales, d.noise_variance,
                                  num_observed, coefficients)    # [K, B]
    values = tf.where(tf.math.is_finite(values), values,
                      tf.constant(math.inf, values.dtype))
    best = tf.argmin(values, axis=0, output_type=tf.int32)           # [B]
    pick = tf.stack([best, tf.range(tf.shape(best)[0])], -1)
    new_loc = tf.gather_nd(cand_loc, pick)
    new_scale = tf.gather_nd(cand_scale, pick)
    if not coupled:
      return i + 1, new_loc, new_scale
    # Points whose scales would cross the floor take shorter steps (the
    # exact F_a of each candidate decides).
    t = fractions[:3] * longest_step(scale, coupled_scale)
    c_loc, c_scale, c_residual2 = candidates(
        loc, scale, residual, residual2, coupled_loc, coupled_scale, t)
    mm_residual2 = tf.gather_nd(cand_residual2, pick)
    all_loc = tf.concat([new_loc[None], c_loc], 0)
    all_scale = tf.concat([new_scale[None], c_scale], 0)
    all_values = _batch_objective(
        tf.concat([mm_residual2[None], c_residual2], 0), column_norms2,
        all_loc, all_scale, num_observed, coefficients)              # [4]
    valid = tf.logical_and(tf.math.is_finite(all_values),
                           tf.concat([[True], tf.fill([3], positive)], 0))
    choice = tf.argmin(tf.where(valid, all_values,
                                tf.constant(math.inf, all_values.dtype)),
                       output_type=tf.int32)
    return i + 1, all_loc[choice], all_scale[choice]

  _, loc, scale = tf.while_loop(
      lambda i, *_: i < iterations, body,
      (tf.constant(0), tf.convert_to_tensor(loc, dtype),
       tf.convert_to_tensor(scale, dtype)))
  return loc, scale
