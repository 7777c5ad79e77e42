"""Tests of tfp_esc.objective.special: the expected magnitude A and entropies.

SPEC 3: A(m, s) = E|u|, u ~ N(m, s^2), with A >= |m|, A(0, s) = s sqrt(2/pi),
A -> |m| for |m| >> s, dA/dm = erf(m / (sqrt(2) s)),
dA/ds = sqrt(2/pi) exp(-m^2 / (2 s^2)).
"""

import math

import numpy as np
import pytest
import scipy.integrate
import scipy.special
import scipy.stats
import tensorflow as tf
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from tfp_esc.objective.special import (
  LOG_2_PI_E,
  expected_magnitude,
  gaussian_entropy,
  laplace_entropy,
)

DTYPES = [np.float32, np.float64]
SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)


def _numpy_a(m, s):
  """Reference A(m, s) in float64 NumPy/SciPy."""
  m = np.asarray(m, np.float64)
  s = np.asarray(s, np.float64)
  return (s * SQRT_2_OVER_PI * np.exp(-m**2 / (2 * s**2))
          + m * scipy.special.erf(m / (np.sqrt(2) * s)))


# Pairs (m, s) as arrays: m of either sign spanning 1e-4..1e3, s 1e-3..1e3.
_SIZE = 16
_SIGNS = np.where(np.arange(_SIZE) % 2, 1.0, -1.0)
_M = hnp.arrays(np.float64, _SIZE, elements=st.floats(-4, 3)).map(
    lambda e: _SIGNS * 10.0**e)
_S = hnp.arrays(np.float64, _SIZE, elements=st.floats(-3, 3)).map(
    lambda e: 10.0**e)

_SETTINGS = settings(max_examples=60, deadline=None)


@pytest.mark.parametrize('dtype', DTYPES)
@_SETTINGS
@given(m=_M, s=_S)
def test_at_least_abs_mean(dtype, m, s):
  a = expected_magnitude(m.astype(dtype), s.astype(dtype)).numpy()
  assert a.dtype == dtype
  m_cast = np.abs(m.astype(dtype)).astype(np.float64)
  # Exact in real arithmetic; allow a few ulps of rounding in the dtype.
  eps = np.finfo(dtype).eps
  assert np.all(a.astype(np.float64) >= m_cast * (1 - 4 * eps)), (m, s, a)


@pytest.mark.parametrize('dtype', DTYPES)
@_SETTINGS
@given(m=_M, s=_S)
def test_matches_reference_formula(dtype, m, s):
  m, s = m.astype(dtype), s.astype(dtype)
  a = expected_magnitude(m, s).numpy()
  expected = _numpy_a(m, s)
  rtol = 1e-5 if dtype == np.float32 else 1e-12
  np.testing.assert_allclose(a, expected, rtol=rtol)


@pytest.mark.parametrize('dtype', DTYPES)
@_SETTINGS
@given(s=_S)
def test_zero_mean_is_s_sqrt_2_over_pi(dtype, s):
  s = s.astype(dtype)
  a = expected_magnitude(np.zeros_like(s), s).numpy()
  rtol = 1e-6 if dtype == np.float32 else 1e-14
  np.testing.assert_allclose(a, s.astype(np.float64) * SQRT_2_OVER_PI,
                             rtol=rtol)


@pytest.mark.parametrize('dtype', DTYPES)
@_SETTINGS
@given(m=_M, s=_S)
def test_gap_largest_at_zero_mean(dtype, m, s):
  # A(m, s) - |m| <= A(0, s) = s sqrt(2/pi) (Appendix B: largest gap at m=0).
  m, s = m.astype(dtype), s.astype(dtype)
  a = expected_magnitude(m, s).numpy().astype(np.float64)
  gap = a - np.abs(m).astype(np.float64)
  eps = np.finfo(dtype).eps
  bound = s.astype(np.float64) * SQRT_2_OVER_PI
  assert np.all(gap <= bound + 4 * eps * (np.abs(m) + bound)), (m, s, gap)


@pytest.mark.parametrize('dtype', DTYPES)
@pytest.mark.parametrize('ratio', [10.0, 30.0, 1e3, 1e6])
def test_tends_to_abs_mean_for_large_mean(dtype, ratio):
  s = np.array([1e-3, 0.1, 1.0, 7.0, 100.0], dtype)
  for sign in (1.0, -1.0):
    m = (sign * ratio * s).astype(dtype)
    a = expected_magnitude(m, s).numpy()
    rel = np.abs(a - np.abs(m)) / np.abs(m)
    # The true relative gap is below exp(-ratio^2/2) / ratio^3 (tiny here).
    assert np.all(rel <= 4 * np.finfo(dtype).eps), (ratio, rel)


@_SETTINGS
@given(m=_M, s=_S)
def test_agrees_with_scipy_foldnorm(m, s):
  a = expected_magnitude(m, s).numpy()
  expected = scipy.stats.foldnorm(c=np.abs(m) / s, scale=s).mean()
  np.testing.assert_allclose(a, expected, rtol=1e-10)


@pytest.mark.parametrize('m, s', [(0.0, 1.0), (0.3, 0.7), (-2.0, 0.5),
                                  (5.0, 3.0), (-0.01, 2.0), (40.0, 25.0)])
def test_agrees_with_numerical_integration(m, s):
  a = expected_magnitude(np.float64(m), np.float64(s)).numpy()

  def integrand(u):
    return abs(u) * scipy.stats.norm.pdf(u, loc=m, scale=s)

  # Split at 0 where |u| has its kink.
  left, _ = scipy.integrate.quad(integrand, -np.inf, 0.0, epsabs=1e-14,
                                 epsrel=1e-13)
  right, _ = scipy.integrate.quad(integrand, 0.0, np.inf, epsabs=1e-14,
                                  epsrel=1e-13)
  np.testing.assert_allclose(a, left + right, rtol=1e-10, atol=1e-12)


def test_broadcasting_and_dtype():
  m = np.linspace(-2, 2, 12).reshape(3, 4)
  s = np.array([0.5, 1.0, 2.0, 3.0])
  a = expected_magnitude(m, s)
  assert a.shape == (3, 4)
  assert a.dtype == tf.float64
  np.testing.assert_allclose(a.numpy(), _numpy_a(m, s), rtol=1e-13)
  a32 = expected_magnitude(tf.constant(m, tf.float32), tf.constant(s,
                                                                    tf.float32))
  assert a32.dtype == tf.float32


def _grads(m, s):
  m = tf.constant(m, tf.float64)
  s = tf.constant(s, tf.float64)
  with tf.GradientTape() as tape:
    tape.watch([m, s])
    a = expected_magnitude(m, s)
  dm, ds = tape.gradient(a, [m, s])
  return a.numpy(), dm.numpy(), ds.numpy()


def _central_differences(m, s, rel_step=1e-4):
  m = np.asarray(m, np.float64)
  s = np.asarray(s, np.float64)
  h = rel_step * s
  f = lambda mm, ss: expected_magnitude(mm, ss).numpy()
  dm = (f(m + h, s) - f(m - h, s)) / (2 * h)
  ds = (f(m, s + h) - f(m, s - h)) / (2 * h)
  return dm, ds


@pytest.mark.parametrize('s', [1e-6, 1.0, 1e3])
def test_gradients_closed_form_and_finite_differences(s):
  # m from well inside to well outside +-s, both signs.
  m = s * np.array([0.0, 1.0, -1.0, 3.0, -5.0, 10.0, -30.0, 0.1])
  s = np.full_like(m, s)
  a, dm, ds = _grads(m, s)
  assert np.all(np.isfinite(a)) and np.all(np.isfinite(dm))
  assert np.all(np.isfinite(ds))
  np.testing.assert_allclose(
      dm, scipy.special.erf(m / (np.sqrt(2) * s)), rtol=1e-13, atol=1e-15)
  np.testing.assert_allclose(
      ds, SQRT_2_OVER_PI * np.exp(-m**2 / (2 * s**2)), rtol=1e-13, atol=1e-15)
  fd_m, fd_s = _central_differences(m, s)
  np.testing.assert_allclose(dm, fd_m, rtol=1e-6, atol=1e-8)
  np.testing.assert_allclose(ds, fd_s, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize('m', [1e-6, 1e-5, -3e-6, 1e-4])
def test_gradients_tiny_scale(m):
  # s = 1e-6: the two halves of A nearly cancel in a naive gradient.
  s = 1e-6
  a, dm, ds = _grads(np.array([m]), np.array([s]))
  fd_m, fd_s = _central_differences(np.array([m]), np.array([s]))
  np.testing.assert_allclose(a, _numpy_a(m, s), rtol=1e-13)
  np.testing.assert_allclose(dm, scipy.special.erf(m / (np.sqrt(2) * s)),
                             rtol=1e-13)
  np.testing.assert_allclose(ds, SQRT_2_OVER_PI * np.exp(-m**2 / (2 * s**2)),
                             rtol=1e-12, atol=1e-300)
  np.testing.assert_allclose(dm, fd_m, rtol=1e-6, atol=1e-8)
  np.testing.assert_allclose(ds, fd_s, rtol=1e-6, atol=1e-8)


def test_gradient_through_broadcast_scale():
  # A scale [H] broadcast against means [N, H]: gradient summed over N.
  m = tf.constant(np.linspace(-1, 1, 6).reshape(2, 3))
  s = tf.constant([0.5, 1.0, 2.0], tf.float64)
  with tf.GradientTape() as tape:
    tape.watch(s)
    total = tf.reduce_sum(expected_magnitude(m, s))
  ds = tape.gradient(total, s).numpy()
  expected = (SQRT_2_OVER_PI * np.exp(-m.numpy()**2 / (2 * s.numpy()**2))).sum(0)
  np.testing.assert_allclose(ds, expected, rtol=1e-13)


@pytest.mark.parametrize('dtype', DTYPES)
def test_zero_scale_gives_abs_mean_without_nan(dtype):
  m = np.array([1.0, -2.0, 1e-3, 0.0, 5e3], dtype)
  s = np.zeros_like(m)
  a = expected_magnitude(m, s).numpy()
  assert a.dtype == dtype
  np.testing.assert_allclose(a, np.abs(m), rtol=4 * np.finfo(dtype).eps,
                             atol=1e-30)
  mt = tf.constant(m)
  st_ = tf.constant(s)
  with tf.GradientTape() as tape:
    tape.watch([mt, st_])
    value = expected_magnitude(mt, st_)
  dm, ds = tape.gradient(value, [mt, st_])
  assert np.all(np.isfinite(dm.numpy())), dm
  assert np.all(np.isfinite(ds.numpy())), ds
  np.testing.assert_array_equal(dm.numpy()[m != 0], np.sign(m[m != 0]))


@pytest.mark.parametrize('dtype', DTYPES)
def test_scale_far_below_mean_gives_abs_mean(dtype):
  # s a few hundred orders of magnitude below |m| (float64) / tens (float32).
  ratios = [1e-20, 1e-30] if dtype == np.float32 else [1e-20, 1e-100, 1e-200]
  m = np.array([1.0, -3.0], dtype)
  for ratio in ratios:
    a = expected_magnitude(m, (np.abs(m) * ratio).astype(dtype)).numpy()
    np.testing.assert_allclose(a, np.abs(m), rtol=4 * np.finfo(dtype).eps)


@pytest.mark.parametrize('dtype', DTYPES)
def test_gaussian_entropy(dtype):
  rng = np.random.default_rng(3)
  h = 5
  a = rng.standard_normal((3, h, h))
  cov = a @ a.transpose(0, 2, 1) + 0.1 * np.eye(h)
  log_det = np.linalg.slogdet(cov)[1]
  got = gaussian_entropy(log_det.astype(dtype), h).numpy()
  assert got.dtype == dtype
  expected = [scipy.stats.multivariate_normal(np.zeros(h), c).entropy()
              for c in cov]
  rtol = 1e-5 if dtype == np.float32 else 1e-12
  np.testing.assert_allclose(got, expected, rtol=rtol)
  np.testing.assert_allclose(LOG_2_PI_E, np.log(2 * np.pi * np.e), rtol=1e-15)


@pytest.mark.parametrize('dtype', DTYPES)
def test_laplace_entropy(dtype):
  scales = np.array([0.1, 1.0, 2.5, 40.0], dtype)
  got = laplace_entropy(scales).numpy()
  assert got.dtype == dtype and got.shape == ()
  expected = scipy.stats.laplace(scale=scales.astype(np.float64)).entropy().sum()
  rtol = 1e-6 if dtype == np.float32 else 1e-13
  np.testing.assert_allclose(got, expected, rtol=rtol)
  np.testing.assert_allclose(got, np.log(2 * np.e * scales.astype(np.float64)).sum(),
                             rtol=rtol)
  batched = laplace_entropy(np.stack([scales, 2 * scales])).numpy()
  np.testing.assert_allclose(
      batched, [expected, expected + 4 * np.log(2)], rtol=rtol)
