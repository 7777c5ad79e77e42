"""Tests of the observation-masked ELBO (tfp_esc.objective.elbo, module doc).

The masked F is checked against the unmasked one (mask all true, exact in
float64) and against an independent per-point NumPy computation that drops
the missing rows of x_n and W (dense covariances, its own lambda*, sigma^2*).
"""

import math

import hypothesis
import hypothesis.extra.numpy as hnp
import hypothesis.strategies as st
import numpy as np
import pytest
import scipy.special
import tensorflow as tf

from tfp_esc.objective.elbo import (
  classical_elbo,
  elbo_statistics,
  entropy_elbo,
  optimal_noise_variance,
  reconstruction_error,
)
from tfp_esc.posterior.gaussian import (
  DiagonalGaussian,
  FullGaussian,
  LowRankGaussian,
)

FAMILIES = ['full', 'diagonal', 'lowrank']
LOG_2_PI = np.log(2 * np.pi)


def _posterior(family, rng, n, h, dtype=np.float64):
  loc = rng.normal(size=(n, h))
  if family == 'diagonal':
    return DiagonalGaussian(loc.astype(dtype),
                            rng.uniform(0.2, 1.5, (n, h)).astype(dtype))
  if family == 'lowrank':
    return LowRankGaussian(loc.astype(dtype),
                           rng.uniform(0.2, 1.5, (n, h)).astype(dtype),
                           (0.5 * rng.normal(size=(n, h, 2))).astype(dtype))
  tril = np.tril(0.3 * rng.normal(size=(n, h, h)))
  idx = np.arange(h)
  tril[:, idx, idx] = rng.uniform(0.3, 1.2, (n, h))
  return FullGaussian(loc.astype(dtype), tril.astype(dtype))


def _problem(family, seed=0, n=9, d=7, h=5, fraction=0.5):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(n, d))
  w = rng.normal(size=(d, h))
  w /= np.linalg.norm(w, axis=0)
  mask = rng.uniform(size=(n, d)) > fraction
  mask[0] = True              # one fully observed point
  mask[1, :] = False          # one point with nothing observed
  mask[1, 0] = True
  return x, w, mask, _posterior(family, rng, n, h)


def _abs_moment(m, s):
  return (s * np.sqrt(2 / np.pi) * np.exp(-m**2 / (2 * s**2))
          + m * scipy.special.erf(m / (np.sqrt(2) * s)))


def _reference_masked_elbo(x, w, mask, loc, cov):
  """F from per-point reduced problems: rows of x_n and W that are observed."""
  n = x.shape[0]
  rec = np.zeros(n)
  for i in range(n):
    rows = mask[i]
    w_i = w[rows]
    r = x[i, rows] - w_i @ loc[i]
    rec[i] = r @ r + np.trace(w_i @ cov[i] @ w_i.T)
  observed = mask.sum()
  sigma2 = rec.sum() / observed
  std = np.sqrt(np.diagonal(cov, axis1=-2, axis2=-1))
  lam = _abs_moment(loc, std).mean(0)
  h = loc.shape[1]
  logdet = np.linalg.slogdet(cov)[1]
  classical = (-0.5 * mask.sum(1) * (LOG_2_PI + np.log(sigma2))
               - rec / (2 * sigma2)
               - np.sum(np.log(2 * lam) + _abs_moment(loc, std) / lam, -1)
               + 0.5 * h * (1 + LOG_2_PI) + 0.5 * logdet)
  return classical.mean(), sigma2, lam, rec


@pytest.mark.parametrize('family', FAMILIES)
def test_mask_of_ones_equals_unmasked(family):
  x, w, _, q = _problem(family)
  ones = np.ones_like(x, dtype=bool)
  masked = entropy_elbo(x, w, q, mask=ones)
  plain = entropy_elbo(x, w, q)
  for a, b in zip(masked, plain):
    np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-14, atol=1e-13)
  np.testing.assert_allclose(
      classical_elbo(x, w, q, np.ones(5), 0.7, per_point=True,
                     mask=ones).numpy(),
      classical_elbo(x, w, q, np.ones(5), 0.7, per_point=True).numpy(),
      rtol=1e-14)


@pytest.mark.parametrize('family', FAMILIES)
def test_masked_elbo_matches_reduced_problems(family):
  x, w, mask, q = _problem(family, seed=1)
  elbo, sigma2, lam, rec = _reference_masked_elbo(
      x, w, mask, q.loc.numpy(), q.covariance().numpy())
  terms = entropy_elbo(x, w, q, mask=mask)
  np.testing.assert_allclose(terms.elbo.numpy(), elbo, rtol=1e-12)
  np.testing.assert_allclose(terms.noise_variance.numpy(), sigma2,
                             rtol=1e-12)
  np.testing.assert_allclose(terms.scales.numpy(), lam, rtol=1e-12)
  np.testing.assert_allclose(
      reconstruction_error(x, w, q, mask=mask).numpy(), rec, rtol=1e-12)
  np.testing.assert_allclose(
      optimal_noise_variance(x, w, q, mask=mask).numpy(), sigma2,
      rtol=1e-12)
  # Theorem 2 with a mask: F = L(lambda*, sigma^2*) ...
  np.testing.assert_allclose(
      classical_elbo(x, w, q, lam, sigma2, mask=mask).numpy(), elbo,
      rtol=1e-12)
  # ... and sigma^2* maximises L: moving sigma^2 either way lowers it.
  for factor in (0.9, 1.1):
    assert classical_elbo(x, w, q, lam, factor * sigma2,
                          mask=mask).numpy() < elbo


@pytest.mark.parametrize('family', FAMILIES)
def test_masked_trace_term_against_dense_covariance(family):
  x, w, mask, q = _problem(family, seed=2)
  cov = q.covariance().numpy()
  dense = np.einsum('nd,dh,nhk,dk->n', mask.astype(float), w, cov, w)
  np.testing.assert_allclose(
      q.trace_term(tf.constant(w), tf.constant(mask, tf.float64)).numpy(),
      dense, rtol=1e-12)


@hypothesis.settings(max_examples=25, deadline=None)
@hypothesis.given(seed=st.integers(0, 2**31 - 1),
                  fraction=st.floats(0.0, 0.9),
                  noise=hnp.arrays(np.float64, (6, 5),
                                   elements=st.floats(-1e3, 1e3)))
def test_missing_values_do_not_matter(seed, fraction, noise):
  """Whatever sits in the missing entries of x, the masked F is unchanged."""
  x, w, mask, q = _problem('diagonal', seed=seed % 1000, n=6, d=5, h=3,
                           fraction=fraction)
  changed = np.where(mask, x, noise)
  a = entropy_elbo(x, w, q, mask=mask)
  b = entropy_elbo(changed, w, q, mask=mask)
  np.testing.assert_allclose(a.elbo.numpy(), b.elbo.numpy(), rtol=1e-12)


def test_masked_elbo_in_float32_agrees_with_float64():
  x, w, mask, q = _problem('diagonal', seed=3)
  q32 = DiagonalGaussian(tf.cast(q.loc, tf.float32),
                         tf.cast(q.scale, tf.float32))
  f32 = entropy_elbo(x.astype(np.float32), w.astype(np.float32), q32,
                     mask=mask).elbo
  f64 = entropy_elbo(x, w, q, mask=mask).elbo
  assert f32.dtype == tf.float32
  np.testing.assert_allclose(f32.numpy(), f64.numpy(), rtol=1e-5)


def test_statistics_of_masked_batches_add_up():
  x, w, mask, q = _problem('diagonal', seed=4)
  whole = elbo_statistics(x, w, q, mask=mask)
  halves = [elbo_statistics(x[s], w, DiagonalGaussian(q.loc[s], q.scale[s]),
                            mask=mask[s]) for s in (slice(0, 4), slice(4, 9))]
  np.testing.assert_allclose(
      whole.reconstruction.numpy(),
      sum(h.reconstruction.numpy() for h in halves), rtol=1e-13)


@pytest.mark.parametrize('bad, message', [
    (np.full((9, 7), 0.5), 'mask must be boolean'),
    (np.ones((9, 6), bool), 'mask has shape'),
])
def test_bad_masks_are_refused(bad, message):
  x, w, _, q = _problem('diagonal')
  with pytest.raises(ValueError, match=message):
    entropy_elbo(x, w, q, mask=bad)
