"""The Newton E-step: monotone in F_a, converges to a stationary point."""

import numpy as np
import pytest
import tensorflow as tf
from hypothesis import given, settings
from hypothesis import strategies as st

from tfp_esc.data.bars import make_bars
from tfp_esc.inference.newton import _directions, newton_e_step
from tfp_esc.objective.elbo import entropy_elbo
from tfp_esc.objective.special import expected_magnitude
from tfp_esc.posterior.gaussian import DiagonalGaussian

FLOOR = 1e-3


def _problem(seed, num_points=40, num_latents=10, dtype=np.float64):
  x = make_bars(num_points, seed=seed).x.astype(dtype)
  rng = np.random.default_rng(seed)
  w = rng.standard_normal((x.shape[1], num_latents)).astype(dtype)
  return x, w / np.linalg.norm(w, axis=0)


def _objective(x, w, loc, scale, coefficients):
  return float(entropy_elbo(x, w, DiagonalGaussian(loc, scale),
                            *coefficients).objective)


def _run(x, w, coefficients, iterations, loc=None, scale=None):
  shape = (x.shape[0], w.shape[1])
  loc = np.zeros(shape, x.dtype) if loc is None else loc
  scale = np.ones(shape, x.dtype) if scale is None else scale
  return newton_e_step(tf.constant(x), tf.constant(w), tf.constant(loc),
                       tf.constant(scale), tf.constant(coefficients, x.dtype),
                       iterations=iterations, floor=FLOOR)


@settings(max_examples=12, deadline=None)
@given(seed=st.integers(0, 10_000),
       coefficients=st.sampled_from([(1.0, 1.0, 1.0), (1.0, 10.0, 1.0),
                                     (1.0, 1.0, 0.2), (0.5, 1.0, 1.0)]),
       num_latents=st.sampled_from([5, 10, 40]))
def test_every_iteration_raises_the_annealed_objective(seed, coefficients,
                                                       num_latents):
  # F_a = max over lambda, sigma^2 of L_a, and each iteration raises every
  # point's part of L_a at the current lambda*, sigma^2*: a monotone
  # sequence, also when H > D (40 > 25) makes W^T W singular.
  x, w = _problem(seed, num_latents=num_latents)
  loc, scale = _run(x, w, coefficients, 0)
  values = [_objective(x, w, loc, scale, coefficients)]
  for _ in range(6):
    loc, scale = _run(x, w, coefficients, 1, loc.numpy(), scale.numpy())
    assert np.all(scale.numpy() > FLOOR)
    values.append(_objective(x, w, loc, scale, coefficients))
  assert np.all(np.diff(values) >= -1e-12 * np.abs(values[:-1])), values
  assert values[-1] > values[0]


def test_converges_to_a_stationary_point_of_f():
  # With the true bars dictionary every latent is used and F has a strict
  # local maximum; the coupled Newton steps reach it (gradient of F, with
  # lambda*, sigma^2* differentiated through, ~1e-13 after 30 iterations).
  data = make_bars(40, seed=0)
  x, w = data.x, data.dictionary
  coefficients = (1.0, 1.0, 1.0)
  loc, scale = _run(x, w, coefficients, 30)
  loc = tf.Variable(loc)
  scale = tf.Variable(scale)
  with tf.GradientTape() as tape:
    objective = entropy_elbo(x, w, DiagonalGaussian(loc, scale),
                             *coefficients).objective * x.shape[0]
  for g in tape.gradient(objective, [loc, scale]):
    assert np.max(np.abs(g.numpy())) < 1e-8, np.max(np.abs(g.numpy()))
  # ... and L-BFGS to convergence from the same start finds no higher F.
  start = _run(x, w, coefficients, 0)
  lbfgs = _lbfgs(x, w, coefficients, *start)
  assert _objective(x, w, loc, scale, coefficients) >= lbfgs - 1e-9


@pytest.mark.parametrize('coefficients', [(1.0, 1.0, 1.0), (1.0, 2.0, 0.5)])
def test_directions_are_exact_newton_steps(coefficients):
  # Against autodiff Hessians in float64 (N = 6, H = 3): the per-point step
  # solves A step = -g with A the Hessian at fixed lambda, sigma^2 (the
  # Hessian of the classical L at lambda*, sigma^2*); the coupled step
  # solves the Hessian of F itself, A - U P^-1 U^T (Woodbury).
  data = make_bars(6, seed=0)
  x, w = data.x, data.dictionary[:, :3]
  num_points, num_latents = x.shape[0], w.shape[1]
  rng = np.random.default_rng(1)
  loc0 = rng.standard_normal((num_points, num_latents))
  scale0 = rng.uniform(0.3, 1.0, (num_points, num_latents))
  theta = tf.constant(np.concatenate([loc0.ravel(), scale0.ravel()]))
  size = num_points * num_latents

  def split(t):
    return (tf.reshape(t[:size], (num_points, num_latents)),
            tf.reshape(t[size:], (num_points, num_latents)))

  terms = entropy_elbo(x, w, DiagonalGaussian(loc0, scale0), *coefficients)
  scales, noise = terms.scales, terms.noise_variance

  def minus_f(t):
    return -num_points * entropy_elbo(
        x, w, DiagonalGaussian(*split(t)), *coefficients).objective

  def minus_l(t):  # annealed classical ELBO at fixed lambda, sigma^2
    loc, scale = split(t)
    a_q, a_prior, a_lik = coefficients
    q = DiagonalGaussian(loc, scale)
    error = (tf.reduce_sum(tf.square(x - tf.matmul(loc, w, transpose_b=True)))
             + tf.reduce_sum(q.trace_term(w)))
    return -(a_q * tf.reduce_sum(tf.math.log(scale))
             - a_prior * tf.reduce_sum(
                 expected_magnitude(loc, scale) / scales)
             - a_lik * error / (2.0 * noise))

  def newton(f):
    with tf.GradientTape() as outer:
      outer.watch(theta)
      with tf.GradientTape() as inner:
        inner.watch(theta)
        value = f(theta)
      gradient = inner.gradient(value, theta)
    hessian = outer.jacobian(gradient, theta).numpy()
    return -np.linalg.solve(hessian, gradient.numpy()), hessian

  per_point, _ = newton(minus_l)
  coupled, hessian = newton(minus_f)
  d = _directions(tf.constant(x), tf.constant(w), tf.constant(w.T @ w),
                  tf.constant(x @ w), tf.constant(loc0), tf.constant(scale0),
                  tf.constant(coefficients, tf.float64), 0.0, True)
  np.testing.assert_allclose(
      np.concatenate([d.step_loc.numpy().ravel(),
                      d.step_scale.numpy().ravel()]), per_point,
      rtol=1e-8, atol=1e-10)
  positive = bool(np.linalg.eigvalsh(hessian).min() > 0)
  assert bool(d.coupled_valid) == positive
  if positive:
    np.testing.assert_allclose(
        np.concatenate([d.coupled_loc.numpy().ravel(),
                        d.coupled_scale.numpy().ravel()]), coupled,
        rtol=1e-8, atol=1e-10)


def _lbfgs(x, w, coefficients, loc, scale):
  import tensorflow_probability as tfp  # pylint: disable=g-import-not-at-top
  params = DiagonalGaussian(loc, scale).to_unconstrained(FLOOR)
  size = int(np.prod(loc.shape))

  def loss(flat):
    q = DiagonalGaussian.from_unconstrained(
        {'loc': tf.reshape(flat[:size], loc.shape),
         'scale': tf.reshape(flat[size:], loc.shape)}, floor=FLOOR)
    return -entropy_elbo(x, w, q, *coefficients).objective * x.shape[0]

  # One graph (an eager run of the optimizer's loop took a minute).
  @tf.function
  def minimum(start):
    return tfp.optimizer.lbfgs_minimize(
        lambda p: tfp.math.value_and_gradient(loss, p), start,
        max_iterations=2000, tolerance=1e-12).objective_value

  return -float(minimum(tf.concat([tf.reshape(params['loc'], [-1]),
                                   tf.reshape(params['scale'], [-1])],
                                  0))) / x.shape[0]


@pytest.mark.parametrize('dtype', [np.float32, np.float64])
def test_works_in_both_dtypes(dtype):
  # A well-posed problem (the true bars dictionary): float32 lands on the
  # float64 optimum to float32 accuracy, which for the argument of an
  # optimum is about sqrt(eps) relative (3e-4 of |loc| <= 10); measured
  # 1.1e-4 (8.6e-5 before candidates were scored by L with its constants).
  data = make_bars(40, seed=3)
  x, w = data.x.astype(dtype), data.dictionary.astype(dtype)
  loc, scale = _run(x, w, (1.0, 1.0, 1.0), 20)
  assert loc.dtype == dtype and scale.dtype == dtype
  reference = _run(data.x, data.dictionary, (1.0, 1.0, 1.0), 20)
  np.testing.assert_allclose(loc.numpy(), reference[0].numpy(), atol=3e-4)
  np.testing.assert_allclose(scale.numpy(), reference[1].numpy(), atol=1e-4)


def test_round_trip_of_the_unconstrained_parameters():
  rng = np.random.default_rng(0)
  q = DiagonalGaussian(rng.standard_normal((4, 3)),
                       FLOOR + rng.uniform(1e-4, 3.0, (4, 3)))
  back = DiagonalGaussian.from_unconstrained(q.to_unconstrained(FLOOR),
                                             floor=FLOOR)
  np.testing.assert_allclose(back.scale.numpy(), q.scale.numpy(), rtol=1e-10)
  np.testing.assert_array_equal(back.loc.numpy(), q.loc.numpy())
