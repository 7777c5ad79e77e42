"""The majorise-minimise E-step: monotone, reaches L-BFGS's optimum, dtypes."""

import hypothesis
import hypothesis.strategies as st
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_probability as tfp

from tfp_esc.inference.mm import empty_context, mm_e_step
from tfp_esc.objective import elbo as elbo_lib
from tfp_esc.posterior.gaussian import DiagonalGaussian

FLOOR = 1e-3


def _problem(seed, num_points, num_observed, num_latents, dtype=np.float64):
  rng = np.random.default_rng(seed)
  w = rng.standard_normal((num_observed, num_latents))
  w /= np.linalg.norm(w, axis=0)
  codes = rng.laplace(size=(num_points, num_latents)) * (
      rng.random((num_points, num_latents)) < 0.3)
  x = codes @ w.T + 0.1 * rng.standard_normal((num_points, num_observed))
  loc = 0.5 * rng.standard_normal((num_points, num_latents))
  scale = rng.uniform(0.05, 1.0, (num_points, num_latents))
  return tuple(np.asarray(a, dtype) for a in (x, w, loc, scale))


def _context(seed, num_observed, w):
  """ElboStatistics of 20 other points with random posteriors."""
  x, _, loc, scale = _problem(seed + 1000, 20, num_observed, w.shape[1])
  return elbo_lib.elbo_statistics(x, w, DiagonalGaussian(loc, scale))


def _objective(x, w, loc, scale, coefficients, context):
  stats = elbo_lib.add_statistics(
      elbo_lib.elbo_statistics(x, w, DiagonalGaussian(loc, scale)), context)
  return float(elbo_lib.entropy_elbo_from_statistics(
      stats, x.shape[1], *coefficients).objective)


@hypothesis.settings(deadline=None, max_examples=12)
@hypothesis.given(seed=st.integers(0, 10_000),
                  num_points=st.integers(1, 12),
                  num_latents=st.integers(1, 8),
                  a_prior=st.sampled_from([1.0, 4.0]),
                  a_lik=st.sampled_from([1.0, 0.25]),
                  with_context=st.booleans(),
                  rescale=st.booleans())
def test_every_iteration_raises_the_objective(seed, num_points, num_latents,
                                              a_prior, a_lik, with_context,
                                              rescale):
  x, w, loc, scale = _problem(seed, num_points, 6, num_latents)
  coefficients = (1.0, a_prior, a_lik)
  context = (_context(seed, 6, w) if with_context
             else empty_context(num_latents, tf.float64))
  value = _objective(x, w, loc, scale, coefficients, context)
  # Iterations 1, 2, ..., 12 from the same start: the momentum of the later
  # ones overshoots, and only the acceptance test keeps them monotone.
  start = loc, scale
  for iterations in range(1, 13):
    # Traced (`_compiled_mm_e_step`, below): eager, the 12 examples x 78
    # iterations took 80 s of CI.
    loc, scale = (t.numpy() for t in _compiled_mm_e_step(
        x, w, *start, tf.constant(coefficients, tf.float64),
        iterations=tf.constant(iterations), floor=FLOOR,
        context=context, rescale=rescale))
    assert np.all(scale > FLOOR)
    new = _objective(x, w, loc, scale, coefficients, context)
    assert new >= value - 1e-10 * (1 + abs(value)), (value, new)
    value = new


def _lbfgs_optimum(x, w, coefficients, context, iterations=3000):
  """The batch objective's optimum by a long TFP L-BFGS run (float64)."""
  num_points, num_latents = x.shape[0], w.shape[1]
  shape = (num_points, num_latents)

  def loss(flat):
    with tf.GradientTape() as tape:
      tape.watch(flat)
      loc = tf.reshape(flat[:num_points * num_latents], shape)
      scale = tf.exp(tf.reshape(flat[num_points * num_latents:], shape))
      stats = elbo_lib.add_statistics(
          elbo_lib.elbo_statistics(x, w, DiagonalGaussian(loc, scale)),
          context)
      value = -num_points * elbo_lib.entropy_elbo_from_statistics(
          stats, x.shape[1], *coefficients).objective
    return value, tape.gradient(value, flat)

  start = tf.concat([tf.zeros([num_points * num_latents], tf.float64),
                     tf.fill([num_points * num_latents],
                             tf.constant(np.log(0.3), tf.float64))], 0)
  return -float(_minimum(loss, start, iterations)) / num_points


# mm_e_step as one graph per argument signature, shared by the tests that
# run it for hundreds of iterations (its tf.while_loop runs op by op when
# called eagerly).
_compiled_mm_e_step = tf.function(mm_e_step)


def _minimum(loss, start, iterations):
  """min of loss (a (value, gradient) function) by L-BFGS from start, as
  one graph (the optimizer's loop run eagerly took most of a minute)."""
  return tf.function(lambda: tfp.optimizer.lbfgs_minimize(
      loss, start, max_iterations=iterations,
      tolerance=1e-14).objective_value)()


@pytest.mark.parametrize('inner_iterations', [1, 2])
@pytest.mark.parametrize('coefficients,with_context', [
    ((1.0, 1.0, 1.0), False), ((1.0, 1.0, 1.0), True),
    ((1.0, 3.0, 1.0), True)])
def test_reaches_the_optimum_of_a_long_lbfgs_run(coefficients, with_context,
                                                 inner_iterations):
  # inner_iterations=1 is the incremental engine's setting, 2 the default.
  x, w, _, _ = _problem(3, 16, 10, 5)
  context = (_context(3, 10, w) if with_context
             else empty_context(5, tf.float64))
  loc = np.zeros((16, 5))
  scale = np.full((16, 5), 0.3)
  loc, scale = _compiled_mm_e_step(
      x, w, loc, scale, coefficients, iterations=300, floor=FLOOR,
      context=context, inner_iterations=inner_iterations)
  ours = _objective(x, w, loc.numpy(), scale.numpy(), coefficients, context)
  optimum = _lbfgs_optimum(x, w, coefficients, context)
  # Never worse than L-BFGS's optimum, and not better than it by more than
  # L-BFGS's own last digits.
  np.testing.assert_allclose(ours, optimum, rtol=0, atol=1e-8)


def test_fixed_scales_keep_annealing_bounded():
  # With lambda held fixed, a_prior = 10 shrinks the codes but cannot
  # collapse them: the fitted scales stay far above the floor, while the
  # coupled objective (lambda = lambda*) drives them to it.
  x, w, loc, scale = _problem(5, 32, 10, 6)
  coefficients = (1.0, 10.0, 1.0)
  fixed = np.mean(np.abs(x @ w), 0)
  _, bounded = _compiled_mm_e_step(x, w, loc, scale, coefficients,
                                   iterations=200, floor=FLOOR, scales=fixed)
  _, coupled = _compiled_mm_e_step(x, w, loc, scale, coefficients,
                                   iterations=200, floor=FLOOR)
  assert np.min(bounded.numpy()) > 20 * FLOOR
  assert np.min(coupled.numpy()) < 2 * FLOOR


def test_float32_agrees_with_float64():
  x, w, loc, scale = _problem(7, 32, 12, 6)
  results = {}
  for dtype in (np.float32, np.float64):
    out = mm_e_step(*(a.astype(dtype) for a in (x, w, loc, scale)),
                    np.ones(3, dtype), iterations=60, floor=FLOOR)
    results[dtype] = _objective(x, w, *(t.numpy().astype(np.float64)
                                        for t in out), (1.0, 1.0, 1.0),
                                empty_context(6, tf.float64))
  np.testing.assert_allclose(results[np.float32], results[np.float64],
                             rtol=1e-4)


def test_runs_inside_xla():
  x, w, loc, scale = _problem(9, 8, 6, 3)
  step = tf.function(lambda *a: mm_e_step(*a, np.ones(3), iterations=20,
                                          floor=FLOOR), jit_compile=True)
  eager = mm_e_step(x, w, loc, scale, np.ones(3), iterations=20, floor=FLOOR)
  compiled = step(x, w, loc, scale)
  for a, b in zip(eager, compiled):
    np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-8, atol=1e-10)


def test_fixed_scales_and_noise_maximise_the_classical_elbo():
  # Held-out evaluation (SPEC 12): with lambda and sigma^2 both fixed the
  # E-step maximises the classical L at them; compare with a long L-BFGS run
  # of L itself.
  x, w, _, _ = _problem(11, 16, 10, 5)
  scales = np.array([0.5, 1.0, 0.3, 0.8, 1.2])
  noise_variance = 0.02
  loc, scale = _compiled_mm_e_step(
      x, w, np.zeros((16, 5)), np.full((16, 5), 0.3), np.ones(3),
      iterations=300, floor=FLOOR, scales=scales,
      noise_variance=noise_variance)
  ours = float(elbo_lib.classical_elbo(x, w, DiagonalGaussian(loc, scale),
                                       scales, noise_variance))

  def loss(flat):
    with tf.GradientTape() as tape:
      tape.watch(flat)
      q = DiagonalGaussian(tf.reshape(flat[:80], (16, 5)),
                           tf.exp(tf.reshape(flat[80:], (16, 5))))
      value = -elbo_lib.classical_elbo(x, w, q, scales, noise_variance)
    return value, tape.gradient(value, flat)

  minimum = _minimum(
      loss, tf.concat([tf.zeros([80], tf.float64),
                       tf.fill([80], tf.constant(np.log(0.3), tf.float64))],
                      0), 3000)
  np.testing.assert_allclose(ours, -float(minimum), rtol=0, atol=1e-8)


# --- Observation masks ------------------------------------------------------

def _masked_objective(x, w, loc, scale, mask):
  return float(elbo_lib.entropy_elbo(x, w, DiagonalGaussian(loc, scale),
                                     mask=mask).elbo)


@hypothesis.settings(deadline=None, max_examples=10)
@hypothesis.given(seed=st.integers(0, 10_000),
                  num_points=st.integers(2, 10),
                  num_latents=st.integers(1, 8),
                  fraction=st.floats(0.1, 0.8))
def test_masked_iterations_raise_the_masked_elbo(seed, num_points, num_latents,
                                                 fraction):
  x, w, loc, scale = _problem(seed, num_points, 7, num_latents)
  mask = np.random.default_rng(seed).random(x.shape) > fraction
  mask[:, 0] = True
  value = _masked_objective(x, w, loc, scale, mask)
  for _ in range(4):
    loc, scale = (t.numpy() for t in mm_e_step(
        x, w, loc, scale, (1.0, 1.0, 1.0), iterations=3, floor=FLOOR,
        mask=mask.astype(np.float64)))
    new_value = _masked_objective(x, w, loc, scale, mask)
    assert new_value >= value - 1e-10
    value = new_value


def test_mask_of_ones_is_the_unmasked_e_step():
  x, w, loc, scale = _problem(5, 9, 6, 4)
  plain = mm_e_step(x, w, loc, scale, (1.0, 1.0, 1.0), iterations=20,
                    floor=FLOOR)
  masked = mm_e_step(x, w, loc, scale, (1.0, 1.0, 1.0), iterations=20,
                     floor=FLOOR, mask=np.ones_like(x))
  for a, b in zip(plain, masked):
    np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-9, atol=1e-12)


def test_masked_point_equals_the_reduced_problem():
  """With lambda and sigma^2 fixed the points separate: a masked point's
  optimum is the unmasked optimum of its observed rows of x and W."""
  x, w, loc, scale = _problem(6, 3, 8, 5)
  rng = np.random.default_rng(0)
  mask = rng.random(x.shape) > 0.4
  mask[:, :2] = True
  scales, noise = np.full(5, 0.6), 0.05
  kwargs = dict(iterations=tf.constant(1500), floor=FLOOR, scales=scales,
                noise_variance=noise)
  step = tf.function(mm_e_step)
  got_loc, got_scale = step(x, w, loc, scale, (1.0, 1.0, 1.0),
                            mask=mask.astype(np.float64), **kwargs)
  for n in range(3):
    rows = mask[n]
    want_loc, want_scale = step(x[n:n + 1, rows], w[rows], loc[n:n + 1],
                                scale[n:n + 1], (1.0, 1.0, 1.0), **kwargs)
    np.testing.assert_allclose(got_loc[n].numpy(), want_loc[0].numpy(),
                               atol=1e-6)
    np.testing.assert_allclose(got_scale[n].numpy(), want_scale[0].numpy(),
                               atol=1e-6)


def test_per_point_scales_equal_separate_runs():
  """scales `[B, H]`: every point has its own prior, as if run alone."""
  x, w, loc, scale = _problem(8, 3, 6, 4)
  per_point = np.random.default_rng(1).uniform(0.2, 2.0, (3, 4))
  step = tf.function(mm_e_step)
  kwargs = dict(iterations=tf.constant(40), floor=FLOOR, noise_variance=0.05)
  got = step(x, w, loc, scale, (1.0, 1.0, 1.0), scales=per_point, **kwargs)
  for n in range(3):
    want = step(x[n:n + 1], w, loc[n:n + 1], scale[n:n + 1], (1.0, 1.0, 1.0),
                scales=per_point[n], **kwargs)
    for a, b in zip(got, want):
      np.testing.assert_allclose(a[n].numpy(), b[0].numpy(), rtol=1e-10)


def test_per_point_noise_equals_separate_runs():
  """noise_variance `[B]`: every point has its own likelihood, as if run
  alone; with shared scales, and with per-point scales and a mask (the
  restoration's per-patch rounds)."""
  x, w, loc, scale = _problem(9, 3, 6, 4)
  rng = np.random.default_rng(2)
  noise = rng.uniform(0.01, 0.5, 3)
  shared = rng.uniform(0.2, 2.0, 4)
  per_point = rng.uniform(0.2, 2.0, (3, 4))
  mask = (rng.random((3, 6)) < 0.7).astype(np.float64)
  step = tf.function(mm_e_step)
  kwargs = dict(iterations=tf.constant(40), floor=FLOOR)
  for scales, masks in ((np.tile(shared, (3, 1)), None), (per_point, mask)):
    got = step(x, w, loc, scale, (1.0, 1.0, 1.0), scales=scales,
               noise_variance=noise, mask=masks, **kwargs)
    for n in range(3):
      want = step(x[n:n + 1], w, loc[n:n + 1], scale[n:n + 1],
                  (1.0, 1.0, 1.0), scales=scales[n], noise_variance=noise[n],
                  mask=None if masks is None else masks[n:n + 1], **kwargs)
      for a, b in zip(got, want):
        np.testing.assert_allclose(a[n].numpy(), b[0].numpy(), rtol=1e-9,
                                   atol=1e-12)


@pytest.mark.parametrize('with_context', [False, True])
def test_hold_scales_switches_between_free_and_held_lambda(with_context):
  """One compiled function with hold_scales equals the two calls it
  replaces: lambda held at `scales` where true, lambda* free where false."""
  x, w, loc, scale = _problem(11, 5, 6, 4)
  held = np.random.default_rng(3).uniform(0.2, 2.0, 4)
  context = (_context(11, 6, w) if with_context
             else empty_context(4, tf.float64))
  # Few iterations: with lambda* free the objective is flat along a common
  # rescaling of the codes (module doc), and over 30 iterations rounding
  # differences of 1e-16 (another XLA fusion, or eager) grow to 1e-7 in
  # the parameters while F agrees to 1e-15.
  kwargs = dict(iterations=tf.constant(5), floor=FLOOR, context=context)
  coefficients = np.array([1.0, 1.0, 1.0])

  def run(**mode):
    step = tf.function(lambda *args: mm_e_step(*args, **kwargs, **mode),
                       jit_compile=True, autograph=False)
    return [t.numpy() for t in step(x, w, loc, scale, coefficients)]

  got_free = run(scales=held, hold_scales=tf.constant(False))
  got_held = run(scales=held, hold_scales=tf.constant(True))
  want_free = run()
  want_held = run(scales=held)
  for got, want in ((got_free, want_free), (got_held, want_held)):
    for a, b in zip(got, want):
      np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-13)
  # The two modes differ here, so the check above can tell them apart.
  assert np.max(np.abs(want_free[0] - want_held[0])) > 1e-3


def test_hold_scales_refuses_what_it_cannot_do():
  x, w, loc, scale = _problem(9, 3, 6, 4)
  kwargs = dict(iterations=2, floor=FLOOR, hold_scales=True)
  with pytest.raises(ValueError, match='hold_scales needs scales'):
    mm_e_step(x, w, loc, scale, (1.0, 1.0, 1.0), **kwargs)
  with pytest.raises(ValueError, match='rescale'):
    mm_e_step(x, w, loc, scale, (1.0, 1.0, 1.0), scales=np.ones(4),
              rescale=True, **kwargs)


def test_per_point_noise_refuses_the_rescaling():
  x, w, loc, scale = _problem(9, 3, 6, 4)
  with pytest.raises(ValueError, match='scalar noise_variance'):
    mm_e_step(x, w, loc, scale, (1.0, 1.0, 1.0), iterations=2, floor=FLOOR,
              noise_variance=np.full(3, 0.1), rescale=True)


@pytest.mark.parametrize('mode', ['free', 'context', 'fixed_scales',
                                  'fixed_noise', 'point_scales'])
def test_rescaling_gain_is_the_exact_change_of_the_objective(mode):
  # Delta F(u) of the latent rescaling, from H-vectors and Q alone, equals
  # F_a after rescaling every latent's codes by c = exp(u) minus F_a before
  # (float64, computed from the ELBO statistics of the module elbo).
  from tfp_esc.inference.mm import _latent_rescaling  # pylint: disable=g-import-not-at-top
  from tfp_esc.objective.special import expected_magnitude  # pylint: disable=g-import-not-at-top
  x, w, loc, scale = _problem(13, 12, 7, 5)
  coefficients = (1.0, 2.5, 0.5)
  context = (_context(13, 7, w) if mode == 'context'
             else empty_context(5, tf.float64))
  scales = {'fixed_scales': np.linspace(0.3, 1.1, 5),
            'point_scales': np.random.default_rng(2).uniform(0.3, 1.5, (12, 5))
            }.get(mode)
  noise = 0.07 if mode == 'fixed_noise' else None
  magnitude = expected_magnitude(loc, scale)
  rec = elbo_lib.elbo_statistics(x, w, DiagonalGaussian(loc, scale))
  totals = (context.count + 12.0, (context.count + 12.0) * 7.0,
            context.reconstruction + rec.reconstruction,
            context.expected_magnitude)
  u, gain = _latent_rescaling(
      tf.constant(loc), tf.constant(scale), magnitude, tf.constant(w.T @ w),
      tf.constant(x @ w), tf.constant(12.0, tf.float64), coefficients,
      totals, tf.constant(FLOOR, tf.float64),
      None if scales is None else tf.constant(scales), noise)
  u = u.numpy()
  assert float(gain) > 0.0 and np.all(u != 0.0)

  def objective(loc, scale):
    stats = elbo_lib.add_statistics(
        elbo_lib.elbo_statistics(x, w, DiagonalGaussian(loc, scale)), context)
    n, d = float(stats.count), 7.0
    lam = (stats.expected_magnitude / n if scales is None
           else np.broadcast_to(scales, (12, 5)))
    sigma2 = stats.reconstruction / (n * d) if noise is None else noise
    a_q, a_prior, a_lik = coefficients
    # L_a of batch + context at lambda, sigma^2 (its maximum where free).
    if scales is None:
      prior = n * np.sum(np.log(2.0 * lam)) + np.sum(stats.expected_magnitude
                                                     / lam)
    else:
      both = np.sum(expected_magnitude(loc, scale) / lam)
      # (The context's prior terms do not change.)
      prior = np.sum(np.log(2.0 * lam)) + both
    likelihood = 0.5 * n * d * np.log(2 * np.pi * sigma2) + (
        stats.reconstruction / (2.0 * sigma2))
    return float(a_q * np.sum(np.log(scale)) - a_prior * prior
                 - a_lik * likelihood)

  c = np.exp(u)
  np.testing.assert_allclose(
      objective(loc * c, scale * c) - objective(loc, scale), float(gain),
      rtol=1e-9, atol=1e-9)


def test_rescaling_speeds_up_the_coupled_e_step():
  # A fresh batch with lambda*, sigma^2* free, data not made from W: the
  # rescaled iterations reach the long run's optimum in 30 iterations; the
  # plain ones creep along the rescaling direction and are still 0.04
  # nats/point short (the ablation that shows this test can fail).
  rng = np.random.default_rng(1)
  w = rng.standard_normal((16, 10))
  w /= np.linalg.norm(w, axis=0)
  x = (rng.laplace(size=(128, 20)) * (rng.random((128, 20)) < 0.3)
       ) @ rng.standard_normal((20, 16)) / np.sqrt(10.0)
  loc, scale = np.zeros((128, 10)), np.ones((128, 10))
  coefficients, context = (1.0, 1.0, 1.0), empty_context(10, tf.float64)

  def value(iterations, rescale):
    out = _compiled_mm_e_step(x, w, loc, scale, coefficients,
                              iterations=iterations, floor=FLOOR,
                              rescale=rescale)
    return _objective(x, w, *(t.numpy() for t in out), coefficients, context)

  optimum = value(500, True)
  assert optimum >= value(500, False)
  assert value(30, True) > optimum - 1e-3
  assert value(30, False) < optimum - 1e-2
