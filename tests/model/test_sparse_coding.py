"""Tests of tfp_esc.model.sparse_coding (SPEC 1)."""

import numpy as np
import pytest
import scipy.stats
import tensorflow as tf

from tfp_esc.model.sparse_coding import SparseCodingModel, normalize_columns


def _unit_columns(rng, d, h):
  w = rng.standard_normal((d, h))
  return w / np.linalg.norm(w, axis=0)


def _model(rng, d=5, h=3, dtype=np.float64):
  w = _unit_columns(rng, d, h)
  lam = rng.uniform(0.3, 3.0, h)
  return SparseCodingModel(w.astype(dtype), lam.astype(dtype),
                           dtype(0.37)), w, lam


@pytest.mark.parametrize('d, h', [(5, 3), (3, 6)])
def test_to_original_and_back(d, h):
  rng = np.random.default_rng(0)
  model, w, lam = _model(rng, d, h)
  free, noise = model.to_original()
  np.testing.assert_allclose(free.numpy(), w @ np.diag(lam), rtol=1e-14)
  np.testing.assert_allclose(noise.numpy(), 0.37, rtol=0)
  back = SparseCodingModel.from_original(free, noise)
  np.testing.assert_allclose(back.dictionary.numpy(), w, rtol=1e-12,
                             atol=1e-12)
  np.testing.assert_allclose(back.scales.numpy(), lam, rtol=1e-12)
  np.testing.assert_allclose(back.noise_variance.numpy(), 0.37, rtol=1e-12)
  assert back.dtype == tf.float64
  assert (back.num_observed, back.num_latents) == (d, h)


def test_from_original_then_to_original():
  rng = np.random.default_rng(1)
  free = rng.standard_normal((4, 6)) * rng.uniform(0.1, 5.0, 6)
  model = SparseCodingModel.from_original(free, 0.2)
  np.testing.assert_allclose(model.scales.numpy(),
                             np.linalg.norm(free, axis=0), rtol=1e-13)
  np.testing.assert_allclose(np.linalg.norm(model.dictionary.numpy(), axis=0),
                             1.0, rtol=1e-13)
  free_back, noise = model.to_original()
  np.testing.assert_allclose(free_back.numpy(), free, rtol=1e-12, atol=1e-12)
  assert float(noise.numpy()) == pytest.approx(0.2, rel=1e-15)


def test_codes_round_trip():
  rng = np.random.default_rng(2)
  model, _, lam = _model(rng)
  z = rng.standard_normal((7, 3))
  s = model.to_original_codes(z).numpy()
  np.testing.assert_allclose(s, z / lam, rtol=1e-14)
  np.testing.assert_allclose(model.from_original_codes(s).numpy(), z,
                             rtol=1e-12)
  np.testing.assert_allclose(model.from_original_codes(z).numpy(), z * lam,
                             rtol=1e-14)
  # W~ s = W z: both parameterizations generate the same means.
  free, _ = model.to_original()
  np.testing.assert_allclose(s @ free.numpy().T,
                             z @ model.dictionary.numpy().T, rtol=1e-12,
                             atol=1e-12)


@pytest.mark.parametrize('dtype', [np.float32, np.float64])
def test_normalize_columns(dtype):
  rng = np.random.default_rng(3)
  v = rng.standard_normal((6, 4)).astype(dtype)
  w = normalize_columns(v)
  assert w.dtype == dtype
  tol = 1e-6 if dtype == np.float32 else 1e-14
  np.testing.assert_allclose(np.linalg.norm(w.numpy(), axis=0), 1.0, rtol=tol)
  np.testing.assert_allclose(w.numpy(), v / np.linalg.norm(v, axis=0),
                             rtol=tol)
  # Scale-invariant per column (positive factors).
  factors = np.array([0.01, 3.0, 250.0, 1.0], dtype)
  np.testing.assert_allclose(normalize_columns(v * factors).numpy(), w.numpy(),
                             rtol=10 * tol, atol=10 * tol)
  # A zero column gives zeros, not NaN.
  v0 = v.copy()
  v0[:, 1] = 0
  w0 = normalize_columns(v0).numpy()
  assert np.all(np.isfinite(w0))
  np.testing.assert_array_equal(w0[:, 1], 0)


def test_normalize_columns_gradient_is_orthogonal_to_columns():
  # W = V / ||V||: dW/dV projects out the column direction, so the gradient
  # of any function of W is orthogonal to each column of V.
  rng = np.random.default_rng(4)
  v = tf.constant(rng.standard_normal((5, 3)))
  target = tf.constant(rng.standard_normal((5, 3)))
  with tf.GradientTape() as tape:
    tape.watch(v)
    loss = tf.reduce_sum(normalize_columns(v) * target)
  grad = tape.gradient(loss, v).numpy()
  np.testing.assert_allclose((grad * v.numpy()).sum(0), 0.0, atol=1e-12)
  assert np.abs(grad).max() > 1e-3


def test_joint_log_prob_matches_scipy():
  rng = np.random.default_rng(5)
  model, w, lam = _model(rng, d=5, h=3)
  z = rng.standard_normal((8, 3)) * 2
  x = rng.standard_normal((8, 5))
  got = model.joint_log_prob(x, z).numpy()
  expected = (scipy.stats.laplace.logpdf(z, scale=lam).sum(-1)
              + scipy.stats.norm.logpdf(x, loc=z @ w.T,
                                        scale=np.sqrt(0.37)).sum(-1))
  assert got.shape == (8,)
  np.testing.assert_allclose(got, expected, rtol=1e-12)
  np.testing.assert_allclose(
      model.prior().log_prob(z).numpy(),
      scipy.stats.laplace.logpdf(z, scale=lam).sum(-1), rtol=1e-12)
  np.testing.assert_allclose(
      model.likelihood(z).log_prob(x).numpy(),
      scipy.stats.norm.logpdf(x, loc=z @ w.T, scale=np.sqrt(0.37)).sum(-1),
      rtol=1e-12)
  # Broadcasting: samples [S, N, H] against data [N, D].
  zs = rng.standard_normal((2, 8, 3))
  got = model.joint_log_prob(x, zs).numpy()
  assert got.shape == (2, 8)
  np.testing.assert_allclose(got[1], model.joint_log_prob(x, zs[1]).numpy(),
                             rtol=1e-14)
  assert model.prior().event_shape == (3,)
  assert model.likelihood(z).event_shape == (5,)
  assert model.likelihood(z).batch_shape == (8,)


@pytest.mark.parametrize('seed_type', ['tensor', 'int'])
@pytest.mark.parametrize('dtype', [np.float32, np.float64])
def test_sample_shapes_and_reproducibility(dtype, seed_type):
  # The docstring promises a stateless seed, int or shape-[2] tensor: the
  # same seed must give the same draws.
  def seed(value):
    return value if seed_type == 'int' else tf.constant([value, 0])

  model, _, _ = _model(np.random.default_rng(6), d=5, h=3, dtype=dtype)
  z, x = model.sample(11, seed=seed(42))
  assert z.shape == (11, 3) and x.shape == (11, 5)
  assert z.dtype == dtype and x.dtype == dtype
  z2, x2 = model.sample(11, seed=seed(42))
  np.testing.assert_array_equal(z.numpy(), z2.numpy())
  np.testing.assert_array_equal(x.numpy(), x2.numpy())
  z3, x3 = model.sample(11, seed=seed(43))
  assert not np.allclose(z.numpy(), z3.numpy())
  assert not np.allclose(x.numpy(), x3.numpy())


NUM_SAMPLES = 200_000
MAX_STANDARD_ERRORS = 5.0


def test_sample_moments():
  rng = np.random.default_rng(7)
  model, w, lam = _model(rng, d=4, h=3)
  z, x = model.sample(NUM_SAMPLES, seed=tf.constant([7, 0]))
  z, x = z.numpy(), x.numpy()
  # Codes: Laplace(0, lambda), E|z_h| = lambda_h, Var = 2 lambda_h^2.
  se_abs = np.abs(z).std(0) / np.sqrt(NUM_SAMPLES)
  assert np.all(np.abs(np.abs(z).mean(0) - lam) < MAX_STANDARD_ERRORS * se_abs)
  # Data: Cov x = W diag(2 lambda^2) W^T + sigma^2 I, each entry within
  # MAX_STANDARD_ERRORS (= 5) standard errors of the sample covariance.
  expected = w @ np.diag(2 * lam**2) @ w.T + 0.37 * np.eye(4)
  centred = x - x.mean(0)
  products = centred[:, :, None] * centred[:, None, :]
  sample_cov = products.mean(0)
  se = products.std(0) / np.sqrt(NUM_SAMPLES)
  assert np.all(np.abs(sample_cov - expected) < MAX_STANDARD_ERRORS * se), (
      sample_cov, expected, se)
  assert np.all(np.abs(x.mean(0)) < MAX_STANDARD_ERRORS * x.std(0)
                / np.sqrt(NUM_SAMPLES))
  # The residual x - W z is N(0, sigma^2 I).
  residual = x - z @ w.T
  np.testing.assert_allclose(residual.var(0), 0.37, rtol=0.02)
