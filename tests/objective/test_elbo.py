"""Tests of tfp_esc.objective.elbo and the posterior families (SPEC 2, 4, 5).

The facts of SPEC 5 are checked for every covariance family in float64 on
random inputs; closed forms are held against a NumPy reference written here
(copied from the spec's reference script, which tests must not import) and
against dense matrices.
"""

import math

import numpy as np
import pytest
import scipy.special
import tensorflow as tf

from tfp_esc.model.sparse_coding import SparseCodingModel, normalize_columns
from tfp_esc.objective.elbo import (
  classical_elbo,
  entropy_elbo,
  optimal_noise_variance,
  optimal_scales,
  reconstruction_error,
)
from tfp_esc.objective.sampled import sampled_elbo
from tfp_esc.posterior.gaussian import (
  DiagonalGaussian,
  FullGaussian,
  LowRankGaussian,
  get_family,
)

FAMILIES = ['full', 'diagonal', 'lowrank']
# (N, D, H, R); the second has H > D (overcomplete).
SHAPES = [(7, 6, 4, 2), (5, 3, 6, 2), (1, 4, 3, 1)]
LOG2PIE = np.log(2 * np.pi * np.e)


# ---------------------------------------------------------------------------
# NumPy reference (SPEC 4 and 5), T always dense [N, H, H].

def np_abs_moment(m, s):
  return (s * np.sqrt(2 / np.pi) * np.exp(-m**2 / (2 * s**2))
          + m * scipy.special.erf(m / (np.sqrt(2) * s)))


def np_terms(x, w, nu, cov):
  """Per-point E||x - W z||^2, marginal stddevs and log det T."""
  rec = (((x - nu @ w.T)**2).sum(-1)
         + np.einsum('nij,ji->n', cov, w.T @ w))
  std = np.sqrt(np.diagonal(cov, axis1=-2, axis2=-1))
  logdet = np.linalg.slogdet(cov)[1]
  return rec, std, logdet


def np_optimal(x, w, nu, cov):
  rec, std, _ = np_terms(x, w, nu, cov)
  return np_abs_moment(nu, std).mean(0), rec.mean() / x.shape[1]


def np_classical(x, w, nu, cov, lam, sigma2):
  d, h = w.shape
  rec, std, logdet = np_terms(x, w, nu, cov)
  ll = -0.5 * d * np.log(2 * np.pi * sigma2) - rec / (2 * sigma2)
  lp = -(np.log(2 * lam) + np_abs_moment(nu, std) / lam).sum(-1)
  hq = 0.5 * h * LOG2PIE + 0.5 * logdet
  return float((ll + lp + hq).mean())


def np_entropy_elbo(x, w, nu, cov):
  d, h = w.shape
  lam, s2 = np_optimal(x, w, nu, cov)
  _, _, logdet = np_terms(x, w, nu, cov)
  hq = (0.5 * h * LOG2PIE + 0.5 * logdet).mean()
  return float(hq - (1 + np.log(2 * lam)).sum() - 0.5 * d * (LOG2PIE
                                                              + np.log(s2)))


# ---------------------------------------------------------------------------
# Random inputs.

def make_data(rng, n, d, h):
  x = rng.standard_normal((n, d))
  w = rng.standard_normal((d, h))
  w /= np.linalg.norm(w, axis=0)
  return x, w


def make_posterior(family, rng, n, h, r, dtype=np.float64):
  """A random posterior of `family` and its dense covariance (float64)."""
  loc = rng.standard_normal((n, h))
  if family == 'full':
    tril = np.tril(rng.standard_normal((n, h, h)) * 0.4)
    idx = np.arange(h)
    tril[:, idx, idx] = np.abs(tril[:, idx, idx]) + 0.3
    cov = tril @ tril.transpose(0, 2, 1)
    q = FullGaussian(loc.astype(dtype), tril.astype(dtype))
  elif family == 'diagonal':
    tau = np.abs(rng.standard_normal((n, h))) + 0.2
    cov = np.einsum('nh,hk->nhk', tau**2, np.eye(h))
    q = DiagonalGaussian(loc.astype(dtype), tau.astype(dtype))
  else:
    scale = np.abs(rng.standard_normal((n, h))) + 0.2
    factor = rng.standard_normal((n, h, r)) * 0.5
    cov = (np.einsum('nh,hk->nhk', scale**2, np.eye(h))
           + factor @ factor.transpose(0, 2, 1))
    q = LowRankGaussian(loc.astype(dtype), scale.astype(dtype),
                        factor.astype(dtype))
  return q, loc, cov


def make_unconstrained(family, rng, n, h, r):
  """Random unconstrained parameters (tf.Variables) of `family`."""
  cls = get_family(family)
  raw = cls.init_unconstrained(n, h, tf.float64, scale=0.7, rank=r,
                               seed=tf.constant([11, 0]))
  params = {}
  for key, value in raw.items():
    value = value.numpy()
    params[key] = tf.Variable(value + 0.4 * rng.standard_normal(value.shape))
  return cls, params


def _seed(*args):
  return np.random.default_rng(list(args))


def _family_seed(family):
  return FAMILIES.index(family)


# ---------------------------------------------------------------------------
# SPEC 5, fact 1: F = L(lambda*, sigma^2*).

@pytest.mark.parametrize('shape', SHAPES)
@pytest.mark.parametrize('family', FAMILIES)
def test_fact1_entropy_elbo_equals_classical_at_optimum(family, shape):
  n, d, h, r = shape
  rng = _seed(1, _family_seed(family), *shape)
  x, w = make_data(rng, n, d, h)
  q, nu, cov = make_posterior(family, rng, n, h, r)
  result = entropy_elbo(x, w, q)
  lam, s2 = np_optimal(x, w, nu, cov)
  # lambda*, sigma^2* against the NumPy reference.
  np.testing.assert_allclose(result.scales.numpy(), lam, rtol=1e-12)
  np.testing.assert_allclose(result.noise_variance.numpy(), s2, rtol=1e-12)
  np.testing.assert_allclose(optimal_scales(q).numpy(), lam, rtol=1e-12)
  np.testing.assert_allclose(optimal_noise_variance(x, w, q).numpy(), s2,
                             rtol=1e-12)
  # F against the reference and against the classical ELBO at the optimum.
  f = result.elbo.numpy()
  assert result.elbo.dtype == tf.float64 and result.elbo.shape == ()
  np.testing.assert_allclose(f, np_entropy_elbo(x, w, nu, cov), atol=1e-10)
  classical = classical_elbo(x, w, q, result.scales, result.noise_variance)
  np.testing.assert_allclose(classical.numpy(), f, atol=1e-10, rtol=0)
  np.testing.assert_allclose(classical.numpy(),
                             np_classical(x, w, nu, cov, lam, s2), atol=1e-10)
  # The three entropies.
  np.testing.assert_allclose(
      result.prior_entropy.numpy(), np.log(2 * np.e * lam).sum(), rtol=1e-12)
  np.testing.assert_allclose(
      result.likelihood_entropy.numpy(), 0.5 * d * (LOG2PIE + np.log(s2)),
      rtol=1e-12)
  np.testing.assert_allclose(
      result.q_entropy.numpy(),
      (0.5 * h * LOG2PIE + 0.5 * np.linalg.slogdet(cov)[1]).mean(),
      rtol=1e-12)


@pytest.mark.parametrize('family', FAMILIES)
def test_classical_elbo_any_parameters_and_per_point(family):
  n, d, h, r = 7, 6, 4, 2
  rng = _seed(2, _family_seed(family))
  x, w = make_data(rng, n, d, h)
  q, nu, cov = make_posterior(family, rng, n, h, r)
  lam = np.abs(rng.standard_normal(h)) + 0.3
  s2 = 0.37
  got = classical_elbo(x, w, q, lam, s2).numpy()
  np.testing.assert_allclose(got, np_classical(x, w, nu, cov, lam, s2),
                             atol=1e-10)
  per_point = classical_elbo(x, w, q, lam, s2, per_point=True).numpy()
  assert per_point.shape == (n,)
  for i in range(n):
    np.testing.assert_allclose(
        per_point[i],
        np_classical(x[i:i + 1], w, nu[i:i + 1], cov[i:i + 1], lam, s2),
        atol=1e-10)
  rec, _, _ = np_terms(x, w, nu, cov)
  np.testing.assert_allclose(reconstruction_error(x, w, q).numpy(), rec,
                             rtol=1e-12)


# ---------------------------------------------------------------------------
# SPEC 5, fact 2: lambda*, sigma^2* maximise L.

@pytest.mark.parametrize('shape', SHAPES[:2])
@pytest.mark.parametrize('family', FAMILIES)
def test_fact2_optimum_is_a_maximum(family, shape):
  n, d, h, r = shape
  rng = _seed(3, _family_seed(family), *shape)
  x, w = make_data(rng, n, d, h)
  q, _, _ = make_posterior(family, rng, n, h, r)
  result = entropy_elbo(x, w, q)
  lam = result.scales.numpy()
  s2 = result.noise_variance.numpy()
  best = classical_elbo(x, w, q, lam, s2).numpy()

  def value(lam_, s2_):
    return classical_elbo(x, w, q, lam_, s2_).numpy()

  for factor in (0.9, 1.1, 0.99, 1.01):
    assert value(lam * factor, s2) < best
    assert value(lam, s2 * factor) < best
    assert value(lam * factor, s2 * factor) < best
  for _ in range(8):
    k = rng.integers(h)
    perturbed = lam.copy()
    perturbed[k] *= math.exp(rng.uniform(-0.3, 0.3))
    assert value(perturbed, s2) < best
  # Random joint perturbations of all scales and the noise variance.
  for _ in range(8):
    perturbed = lam * np.exp(0.05 * rng.standard_normal(h))
    assert value(perturbed, s2 * math.exp(0.05 * rng.standard_normal())) < best


# ---------------------------------------------------------------------------
# SPEC 5, fact 3: gradients of F = gradients of L with lambda, sigma^2 fixed.

def _gradients(fn, variables):
  with tf.GradientTape() as tape:
    value = fn()
  return value, tape.gradient(value, variables)


@pytest.mark.parametrize('shape', SHAPES[:2])
@pytest.mark.parametrize('family', FAMILIES)
def test_fact3_envelope_gradients(family, shape):
  n, d, h, r = shape
  rng = _seed(4, _family_seed(family), *shape)
  x = rng.standard_normal((n, d))
  v = tf.Variable(rng.standard_normal((d, h)))
  cls, params = make_unconstrained(family, rng, n, h, r)
  variables = [v] + [params[key] for key in sorted(params)]

  def entropy_objective():
    return entropy_elbo(x, normalize_columns(v), cls.from_unconstrained(
        params)).elbo

  q0 = cls.from_unconstrained(params)
  w0 = normalize_columns(v)
  lam = optimal_scales(q0).numpy()  # Constants: outside any tape.
  s2 = optimal_noise_variance(x, w0, q0).numpy()

  def classical_objective(lam_=lam, s2_=s2):
    return classical_elbo(x, normalize_columns(v),
                          cls.from_unconstrained(params), lam_, s2_)

  f, grad_f = _gradients(entropy_objective, variables)
  value, grad_l = _gradients(classical_objective, variables)
  np.testing.assert_allclose(value.numpy(), f.numpy(), atol=1e-10)
  for variable, gf, gl in zip(variables, grad_f, grad_l):
    assert gf is not None and gl is not None, variable.name
    assert np.all(np.isfinite(gf.numpy()))
    assert np.abs(gl.numpy()).max() > 1e-6  # Not a trivial zero gradient.
    np.testing.assert_allclose(gf.numpy(), gl.numpy(), rtol=1e-8,
                               atol=1e-11 * np.abs(gl.numpy()).max())
  # Away from the optimum the gradients differ (so the check has teeth).
  _, grad_off = _gradients(lambda: classical_objective(lam * 1.3, s2 * 0.7),
                           variables)
  assert max(np.abs(a.numpy() - b.numpy()).max()
             for a, b in zip(grad_f, grad_off)) > 1e-4


# ---------------------------------------------------------------------------
# SPEC 5, fact 4: L agrees with a Monte-Carlo ELBO from TFP distributions.

NUM_MC_SAMPLES = 20000
MAX_STANDARD_ERRORS = 4.0


@pytest.mark.parametrize('family', FAMILIES)
def test_fact4_monte_carlo_agreement(family):
  n, d, h, r = 7, 6, 4, 2
  rng = _seed(5, _family_seed(family))
  x, w = make_data(rng, n, d, h)
  q, _, _ = make_posterior(family, rng, n, h, r)
  result = entropy_elbo(x, w, q)
  lam, s2 = result.scales, result.noise_variance
  analytic = classical_elbo(x, w, q, lam, s2).numpy()
  model = SparseCodingModel(w, lam, s2)
  mc = sampled_elbo(x, model, q, NUM_MC_SAMPLES, seed=tf.constant([1234, 0]))
  assert mc.per_sample.shape == (NUM_MC_SAMPLES,)
  stderr = mc.stderr.numpy()
  assert 0 < stderr < 0.05
  np.testing.assert_allclose(
      stderr, np.std(mc.per_sample.numpy()) / np.sqrt(NUM_MC_SAMPLES),
      rtol=1e-10)
  # Within MAX_STANDARD_ERRORS (= 4) standard errors of the analytic value.
  assert abs(mc.mean.numpy() - analytic) < MAX_STANDARD_ERRORS * stderr, (
      mc.mean.numpy(), analytic, stderr)
  # And a model with other scales/noise: the analytic L still matches.
  lam2 = lam.numpy() * np.array([0.7, 1.5, 1.0, 2.0])
  s22 = s2.numpy() * 1.8
  analytic2 = classical_elbo(x, w, q, lam2, s22).numpy()
  mc2 = sampled_elbo(x, SparseCodingModel(w, lam2, s22), q, NUM_MC_SAMPLES,
                     seed=tf.constant([99, 0]))
  assert abs(mc2.mean.numpy() - analytic2) < MAX_STANDARD_ERRORS * (
      mc2.stderr.numpy())
  assert analytic2 < analytic  # Fact 2 again, seen through another model.


# ---------------------------------------------------------------------------
# Reference values of SPEC 5 (inputs as in the spec's reference script).

def _spec_inputs():
  rng = np.random.default_rng(0)
  n, d, h = 7, 6, 4
  x = rng.standard_normal((n, d))
  w = rng.standard_normal((d, h))
  w /= np.linalg.norm(w, axis=0)
  nu = rng.standard_normal((n, h))
  a = rng.standard_normal((n, h, h)) * 0.3
  cov = a @ a.transpose(0, 2, 1) + 0.2 * np.eye(h)
  tau2 = np.abs(rng.standard_normal((n, h))) + 0.1
  return x, w, nu, cov, tau2


@pytest.mark.parametrize('family, expected', [
    ('full', -13.216421865287),
    ('diagonal', -12.921863752404),
])
def test_spec_reference_values(family, expected):
  x, w, nu, cov, tau2 = _spec_inputs()
  if family == 'full':
    q = FullGaussian(nu, np.linalg.cholesky(cov))
  else:
    q = DiagonalGaussian(nu, np.sqrt(tau2))
  result = entropy_elbo(x, w, q)
  assert abs(result.elbo.numpy() - expected) < 1e-9
  classical = classical_elbo(x, w, q, result.scales, result.noise_variance)
  assert abs(classical.numpy() - expected) < 1e-9
  if family == 'diagonal':
    # The same posterior as a full Gaussian with diagonal L, and as a
    # low-rank one with a zero factor, give the same value.
    full = FullGaussian(nu, np.einsum('nh,hk->nhk', np.sqrt(tau2), np.eye(4)))
    lowrank = LowRankGaussian(nu, np.sqrt(tau2), np.zeros((7, 4, 1)))
    for other in (full, lowrank):
      assert abs(entropy_elbo(x, w, other).elbo.numpy() - expected) < 1e-9


# ---------------------------------------------------------------------------
# Closed-form moments against dense matrices.

def _dense_dictionary(rng, d, h):
  # Not unit norm: trace_term must hold for any W (e.g. a free W~).
  return rng.standard_normal((d, h)) * rng.uniform(0.5, 2.0, h)


@pytest.mark.parametrize('shape', SHAPES)
@pytest.mark.parametrize('family', FAMILIES)
def test_closed_forms_match_dense_float64(family, shape):
  n, d, h, r = shape
  rng = _seed(6, _family_seed(family), *shape)
  q, nu, cov = make_posterior(family, rng, n, h, r)
  w = _dense_dictionary(rng, d, h)
  assert q.family == family
  assert isinstance(q, get_family(family))
  np.testing.assert_allclose(q.covariance().numpy(), cov, rtol=1e-13,
                             atol=1e-14)
  np.testing.assert_allclose(q.marginal_variance().numpy(),
                             np.diagonal(cov, axis1=-2, axis2=-1), rtol=1e-13)
  np.testing.assert_allclose(q.marginal_stddev().numpy(),
                             np.sqrt(np.diagonal(cov, axis1=-2, axis2=-1)),
                             rtol=1e-13)
  sign, logdet = np.linalg.slogdet(cov)
  assert np.all(sign > 0)
  np.testing.assert_allclose(q.log_det_covariance().numpy(), logdet,
                             rtol=1e-12, atol=1e-12)
  trace = np.trace(w @ cov @ w.T, axis1=-2, axis2=-1)
  np.testing.assert_allclose(q.trace_term(w).numpy(), trace, rtol=1e-12)
  entropy = q.entropy().numpy()
  np.testing.assert_allclose(entropy, q.distribution().entropy().numpy(),
                             rtol=1e-12, atol=1e-12)
  np.testing.assert_allclose(entropy, 0.5 * h * LOG2PIE + 0.5 * logdet,
                             rtol=1e-12, atol=1e-12)
  dist = q.distribution()
  assert dist.event_shape == (h,) and dist.batch_shape == (n,)
  np.testing.assert_allclose(dist.mean().numpy(), nu, rtol=1e-14)
  np.testing.assert_allclose(dist.covariance().numpy(), cov, rtol=1e-10,
                             atol=1e-12)


@pytest.mark.parametrize('family', FAMILIES)
def test_closed_forms_float32(family):
  n, d, h, r = 7, 6, 4, 2
  q64, _, _ = make_posterior(family, _seed(7, _family_seed(family)), n, h, r)
  q32, _, _ = make_posterior(family, _seed(7, _family_seed(family)), n, h, r,
                             dtype=np.float32)
  rng = _seed(8)
  w = _dense_dictionary(rng, d, h)
  x = rng.standard_normal((n, d))
  w_unit = w / np.linalg.norm(w, axis=0)
  assert q32.dtype == tf.float32
  for name in ('marginal_variance', 'log_det_covariance', 'entropy',
               'covariance'):
    got = getattr(q32, name)()
    assert got.dtype == tf.float32, name
    np.testing.assert_allclose(got.numpy(), getattr(q64, name)().numpy(),
                               rtol=1e-4, atol=1e-5, err_msg=name)
  got = q32.trace_term(w.astype(np.float32))
  assert got.dtype == tf.float32
  np.testing.assert_allclose(got.numpy(), q64.trace_term(w).numpy(),
                             rtol=1e-4)
  r32 = entropy_elbo(x.astype(np.float32), w_unit.astype(np.float32), q32)
  r64 = entropy_elbo(x, w_unit, q64)
  for field in r32._fields:
    value = getattr(r32, field)
    assert value.dtype == tf.float32, field
    np.testing.assert_allclose(value.numpy(), getattr(r64, field).numpy(),
                               rtol=1e-4, atol=1e-5, err_msg=field)
  c32 = classical_elbo(x.astype(np.float32), w_unit.astype(np.float32), q32,
                       r32.scales, r32.noise_variance)
  assert c32.dtype == tf.float32
  np.testing.assert_allclose(c32.numpy(), r64.elbo.numpy(), rtol=1e-5)


# ---------------------------------------------------------------------------
# Annealing coefficients (SPEC 6).

@pytest.mark.parametrize('coefficients', [
    (1.0, 1.0, 1.0), (1.0, 10.0, 1.0), (1.0, 1.5, 1.0), (1.0, 1.0, 1 / 7),
    (3.0, 3.0, 1.0), (0.5, 2.0, 0.25)])
@pytest.mark.parametrize('family', FAMILIES)
def test_annealing_coefficients(family, coefficients):
  a_q, a_prior, a_lik = coefficients
  n, d, h, r = 7, 6, 4, 2
  rng = _seed(9, _family_seed(family))
  x, w = make_data(rng, n, d, h)
  q, nu, cov = make_posterior(family, rng, n, h, r)
  plain = entropy_elbo(x, w, q)
  annealed = entropy_elbo(x, w, q, a_q=a_q, a_prior=a_prior, a_lik=a_lik)
  expected = (a_q * plain.q_entropy.numpy()
              - a_prior * plain.prior_entropy.numpy()
              - a_lik * plain.likelihood_entropy.numpy())
  np.testing.assert_allclose(annealed.objective.numpy(), expected, rtol=1e-13)
  for field in ('elbo', 'q_entropy', 'prior_entropy', 'likelihood_entropy',
                'noise_variance', 'scales'):
    np.testing.assert_allclose(getattr(annealed, field).numpy(),
                               getattr(plain, field).numpy(), rtol=1e-14,
                               err_msg=field)
  np.testing.assert_allclose(annealed.elbo.numpy(),
                             np_entropy_elbo(x, w, nu, cov), atol=1e-10)
  np.testing.assert_allclose(plain.objective.numpy(), plain.elbo.numpy(),
                             rtol=1e-14)
  # Tensor coefficients give the same value.
  tensor = entropy_elbo(x, w, q, a_q=tf.constant(a_q, tf.float64),
                        a_prior=tf.constant(a_prior),
                        a_lik=tf.constant(a_lik, tf.float32))
  np.testing.assert_allclose(tensor.objective.numpy(), expected, rtol=1e-6)


# ---------------------------------------------------------------------------
# tf.function and XLA.

@pytest.mark.parametrize('jit_compile', [False, True])
@pytest.mark.parametrize('family', FAMILIES)
def test_inside_tf_function(family, jit_compile):
  n, d, h, r = 7, 6, 4, 2
  rng = _seed(10, _family_seed(family))
  x = tf.constant(rng.standard_normal((n, d)))
  v = tf.constant(rng.standard_normal((d, h)))
  cls, params = make_unconstrained(family, rng, n, h, r)
  params = {k: tf.constant(p.numpy()) for k, p in params.items()}
  a_prior = tf.constant(2.0, tf.float64)

  def compute(x, v, params, a_prior):
    w = normalize_columns(v)
    q = cls.from_unconstrained(params)
    result = entropy_elbo(x, w, q, a_prior=a_prior)
    classical = classical_elbo(x, w, q, result.scales * 1.1,
                               result.noise_variance * 0.9)
    with tf.GradientTape() as tape:
      tape.watch(v)
      grad_value = entropy_elbo(x, normalize_columns(v), q).elbo
    return result.elbo, result.objective, classical, tape.gradient(grad_value,
                                                                   v)

  eager = compute(x, v, params, a_prior)
  graph = tf.function(compute, jit_compile=jit_compile)(x, v, params, a_prior)
  for e, g in zip(eager, graph):
    assert g.dtype == tf.float64
    np.testing.assert_allclose(g.numpy(), e.numpy(), rtol=1e-12, atol=1e-12)
  # The eager values themselves are right.
  w = normalize_columns(v).numpy()
  q = cls.from_unconstrained(params)
  np.testing.assert_allclose(
      eager[0].numpy(),
      np_entropy_elbo(x.numpy(), w, q.loc.numpy(), q.covariance().numpy()),
      atol=1e-10)


# ---------------------------------------------------------------------------
# Original parameterization (SPEC 1 and 4): lambda = 1, free W~.

def _posterior_over_original_codes(q, lam):
  """q over s = z / lambda: mean nu / lambda, covariance D^-1 T D^-1."""
  inv = 1.0 / lam
  if isinstance(q, FullGaussian):
    return FullGaussian(q.loc * inv, q.scale_tril * inv[:, None])
  if isinstance(q, DiagonalGaussian):
    return DiagonalGaussian(q.loc * inv, q.scale * inv)
  return LowRankGaussian(q.loc * inv, q.scale * inv,
                         q.factor * inv[:, None])


@pytest.mark.parametrize('shape', SHAPES[:2])
@pytest.mark.parametrize('family', FAMILIES)
def test_original_parameterization_has_the_same_elbo(family, shape):
  n, d, h, r = shape
  rng = _seed(11, _family_seed(family), *shape)
  x, w = make_data(rng, n, d, h)
  q, nu, cov = make_posterior(family, rng, n, h, r)
  lam = rng.uniform(0.3, 3.0, h)
  s2 = 0.4
  model = SparseCodingModel(w, lam, s2)
  free, noise = model.to_original()
  q_s = _posterior_over_original_codes(q, lam)
  np.testing.assert_allclose(q_s.loc.numpy(),
                             model.to_original_codes(q.loc).numpy(),
                             rtol=1e-14)
  np.testing.assert_allclose(
      q_s.covariance().numpy(), cov / np.outer(lam, lam), rtol=1e-12)
  original = classical_elbo(x, free, q_s, np.ones(h), noise).numpy()
  reparam = classical_elbo(x, w, q, lam, s2).numpy()
  # The ELBO is invariant under the change of variables s = z / lambda: the
  # Jacobian term -sum_h log lambda_h of H[q_s] is cancelled by the prior,
  # E log p(s) = E log p(z | lambda) + sum_h log lambda_h.
  np.testing.assert_allclose(original, reparam, rtol=0, atol=1e-10)
  assert abs(np.log(lam).sum()) > 1e-3  # An offset would have been seen.
  # Term by term: entropy and expected log-likelihood.
  np.testing.assert_allclose(
      q_s.entropy().numpy(), q.entropy().numpy() - np.log(lam).sum(),
      rtol=1e-12)
  np.testing.assert_allclose(reconstruction_error(x, free, q_s).numpy(),
                             reconstruction_error(x, w, q).numpy(),
                             rtol=1e-12)
  # And both equal the NumPy reference of the reparameterized model.
  np.testing.assert_allclose(reparam, np_classical(x, w, nu, cov, lam, s2),
                             atol=1e-10)


# ---------------------------------------------------------------------------
# Stateless seeds: the same seed gives the same numbers (docstrings promise
# "stateless seed (int or shape-[2] int tensor)").

@pytest.mark.parametrize('seed', [1, 'tensor'])
@pytest.mark.parametrize('family', FAMILIES)
def test_sampled_elbo_is_reproducible(family, seed):
  if seed == 'tensor':
    seed = tf.constant([3, 1])
  rng = _seed(12, _family_seed(family))
  x, w = make_data(rng, 3, 4, 2)
  q, _, _ = make_posterior(family, rng, 3, 2, 1)
  model = SparseCodingModel(w, np.ones(2), 0.5)
  first = sampled_elbo(x, model, q, 10, seed=seed).per_sample.numpy()
  second = sampled_elbo(x, model, q, 10, seed=seed).per_sample.numpy()
  np.testing.assert_array_equal(first, second)


@pytest.mark.parametrize('seed', [5, 'tensor'])
def test_lowrank_init_is_reproducible(seed):
  if seed == 'tensor':
    seed = tf.constant([5, 0])
  first = LowRankGaussian.init_unconstrained(3, 4, tf.float64, rank=2,
                                             seed=seed)
  second = LowRankGaussian.init_unconstrained(3, 4, tf.float64, rank=2,
                                              seed=seed)
  assert first['factor'].shape == (3, 4, 2)
  assert np.abs(first['factor'].numpy()).max() > 0
  np.testing.assert_array_equal(first['factor'].numpy(),
                                second['factor'].numpy())


@pytest.mark.parametrize('family', FAMILIES)
@pytest.mark.parametrize('dtype', [np.float32, np.float64])
def test_to_unconstrained_inverts_from_unconstrained(family, dtype):
  rng = _seed(28, _family_seed(family))
  q, _, _ = make_posterior(family, rng, 5, 4, 2, dtype)
  cls = get_family(family)
  for floor in (1e-3, 0.1):
    back = cls.from_unconstrained(q.to_unconstrained(floor), floor)
    rtol = 1e-12 if dtype == np.float64 else 2e-5
    np.testing.assert_allclose(back.loc.numpy(), q.loc.numpy(), rtol=rtol)
    np.testing.assert_allclose(back.covariance().numpy(),
                               q.covariance().numpy(), rtol=rtol,
                               atol=rtol * 1e-3)


def test_full_data_elbo_from_minibatch_statistics():
  """F from summed per-batch statistics equals F of the whole data set."""
  from tfp_esc.objective.elbo import (
    add_statistics,
    elbo_statistics,
    entropy_elbo_from_statistics,
  )
  from tfp_esc.posterior.gaussian import DiagonalGaussian
  rng = np.random.default_rng(5)
  n, d, h = 11, 6, 4
  x = rng.standard_normal((n, d))
  w = rng.standard_normal((d, h))
  w /= np.linalg.norm(w, axis=0)
  loc = rng.standard_normal((n, h))
  scale = rng.uniform(0.2, 1.5, (n, h))
  whole = entropy_elbo(x, w, DiagonalGaussian(loc, scale), 1.0, 3.0, 0.5)
  parts = [elbo_statistics(x[i:j], w, DiagonalGaussian(loc[i:j], scale[i:j]))
           for i, j in ((0, 4), (4, 9), (9, 11))]
  summed = add_statistics(add_statistics(parts[0], parts[1]), parts[2])
  batched = entropy_elbo_from_statistics(summed, d, 1.0, 3.0, 0.5)
  for field in whole._fields:
    np.testing.assert_allclose(getattr(batched, field), getattr(whole, field),
                               rtol=1e-13, atol=1e-13, err_msg=field)
  # A single batch's F differs from the full-data F.
  single = entropy_elbo(x[:4], w, DiagonalGaussian(loc[:4], scale[:4]))
  assert abs(float(single.elbo) - float(whole.elbo)) > 1e-3


@pytest.mark.parametrize('masked', [False, True])
def test_classical_elbo_per_point_parameters_equal_one_point_at_a_time(
    masked):
  # L_n with point n's own lambda_n and sigma_n^2 is the ELBO of that point
  # alone under those parameters (float64, exact up to rounding).
  rng = np.random.default_rng(3)
  n, d, h = 6, 5, 3
  x = rng.standard_normal((n, d))
  w = normalize_columns(rng.standard_normal((d, h))).numpy()
  q = DiagonalGaussian(rng.standard_normal((n, h)),
                       rng.uniform(0.2, 1.0, (n, h)))
  mask = rng.random((n, d)) < 0.6 if masked else np.ones((n, d), bool)
  mask[:, 0] = True
  scales = rng.uniform(0.3, 2.0, (n, h))
  noise = rng.uniform(0.1, 1.5, n)
  per_point = classical_elbo(x, w, q, scales, noise, per_point=True,
                             mask=mask).numpy()
  for i in range(n):
    alone = DiagonalGaussian(q.loc[i:i + 1], q.scale[i:i + 1])
    expected = classical_elbo(x[i:i + 1], w, alone, scales[i], noise[i],
                              mask=mask[i:i + 1]).numpy()
    np.testing.assert_allclose(per_point[i], expected, rtol=1e-12)
  np.testing.assert_allclose(
      classical_elbo(x, w, q, scales, noise, mask=mask).numpy(),
      per_point.mean(), rtol=1e-12)
