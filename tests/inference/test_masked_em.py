"""Masked EM: the imputation M-step and every iteration never lower the
masked F; a mask of ones is the closed-form complete-data M-step."""

import numpy as np
import pytest
import tensorflow as tf

from tfp_esc.inference.masked_em import fit_masked_em, imputation_m_step
from tfp_esc.objective.elbo import entropy_elbo
from tfp_esc.posterior.gaussian import DiagonalGaussian


def _data(seed=0, n=200, d=12, h=5, missing=0.4, dtype=np.float64):
  rng = np.random.default_rng(seed)
  w = rng.standard_normal((d, h))
  w /= np.linalg.norm(w, axis=0)
  codes = rng.laplace(size=(n, h)) * (rng.random((n, h)) < 0.4)
  x = codes @ w.T + 0.1 * rng.standard_normal((n, d))
  mask = rng.random((n, d)) >= missing
  return x.astype(dtype), mask, w


def _random_posteriors(seed, n, h):
  rng = np.random.default_rng(seed)
  return rng.standard_normal((n, h)), rng.uniform(0.05, 0.5, (n, h))


def test_mask_of_ones_is_the_complete_data_m_step():
  x, _, w = _data()
  loc, scale = _random_posteriors(1, *x.shape[:1], w.shape[1])
  got = imputation_m_step(x, np.ones_like(x), w, loc, scale).numpy()
  a = loc.T @ loc + np.diag(np.sum(scale**2, 0))
  want = np.linalg.solve(a, (x.T @ loc).T).T
  np.testing.assert_allclose(got, want, rtol=1e-10)


def test_m_step_against_per_row_expected_moments():
  """B_d = sum_n [m_nd x_nd nu_n + (1 - m_nd) E_q(z)[z z^T] w_old,d], the
  expected complete-data moments written out row by row."""
  x, mask, w = _data(2, n=30)
  loc, scale = _random_posteriors(3, len(x), w.shape[1])
  second = np.einsum('nh,nk->nhk', loc, loc) + np.einsum(
      'nh,hk->nhk', scale**2, np.eye(w.shape[1]))                 # [N, H, H]
  cross = np.zeros_like(w)
  for d in range(x.shape[1]):
    for n in range(len(x)):
      cross[d] += (x[n, d] * loc[n] if mask[n, d]
                   else second[n] @ w[d])
  want = np.linalg.solve(second.sum(0), cross.T).T
  got = imputation_m_step(x, mask.astype(float), w, loc, scale).numpy()
  np.testing.assert_allclose(got, want, rtol=1e-10)


@pytest.mark.parametrize('seed', range(4))
def test_m_step_never_lowers_the_masked_elbo(seed):
  x, mask, w = _data(seed)
  loc, scale = _random_posteriors(seed + 10, len(x), w.shape[1])
  before = float(entropy_elbo(x, w, DiagonalGaussian(loc, scale),
                              mask=mask).elbo)
  free = imputation_m_step(x, mask.astype(float), w, loc, scale).numpy()
  norms = np.linalg.norm(free, axis=0)
  after = float(entropy_elbo(x, free / norms,
                             DiagonalGaussian(loc * norms, scale * norms),
                             mask=mask).elbo)
  assert after >= before - 1e-10
  # Not by luck: W_old itself is not a maximiser here.
  assert after > before + 1e-3


@pytest.mark.parametrize('noise_variance', [None, 0.02])
def test_every_iteration_raises_the_objective(noise_variance):
  x, mask, _ = _data(3)
  result = fit_masked_em(x, 5, mask=mask, iterations=12,
                         noise_variance=noise_variance)
  elbo = np.array(result.history['elbo'])
  assert np.all(np.diff(elbo) >= -1e-9 * np.abs(elbo[1:]))
  assert elbo[-1] > elbo[0] + 0.1
  np.testing.assert_allclose(np.linalg.norm(result.dictionary, axis=0), 1.0,
                             rtol=1e-12)
  if noise_variance is not None:
    assert result.noise_variance == noise_variance


def test_learns_a_planted_dictionary_with_half_the_entries_missing():
  x, mask, w = _data(4, n=1500, d=10, h=4, missing=0.5)
  result = fit_masked_em(x, 4, mask=mask, iterations=300)
  # EM converges slowly with half the entries missing; random unit vectors
  # in 10 dimensions overlap a planted atom by about 0.5 at best.
  overlap = np.abs(result.dictionary.T @ w).max(0)
  assert overlap.min() > 0.85 and np.median(overlap) > 0.95, overlap
  # sigma^2* per observed entry estimates the noise (0.1^2) closely.
  assert 0.8 * 0.01 < result.noise_variance < 1.2 * 0.01


@pytest.mark.parametrize('c', [1e-5, 1e4])
def test_scaling_the_data_scales_the_results(c):
  x, mask, _ = _data(5)
  base = fit_masked_em(x, 5, mask=mask, iterations=6)
  scaled = fit_masked_em(c * x, 5, mask=mask, iterations=6)
  np.testing.assert_allclose(scaled.dictionary, base.dictionary, atol=1e-7)
  np.testing.assert_allclose(scaled.noise_variance, c**2 * base.noise_variance,
                             rtol=1e-7)
  d_bar = mask.sum() / len(x)
  np.testing.assert_allclose(scaled.history['elbo'][-1],
                             base.history['elbo'][-1] - d_bar * np.log(c),
                             rtol=1e-7, atol=1e-7)


def test_float32_runs_and_agrees():
  x, mask, _ = _data(6)
  a = fit_masked_em(x, 5, mask=mask, iterations=5)
  b = fit_masked_em(x.astype(np.float32), 5, mask=mask, iterations=5)
  assert b.dictionary.dtype == np.float32
  np.testing.assert_allclose(b.history['elbo'][-1], a.history['elbo'][-1],
                             rtol=1e-3)


@pytest.mark.parametrize('kwargs, error, message', [
    (dict(num_latents=0), ValueError, 'num_latents'),
    (dict(num_latents=2.0), TypeError, 'num_latents'),
    (dict(iterations=0), ValueError, 'iterations'),
    (dict(mask=np.ones((3, 3), bool)), ValueError, 'mask has shape'),
    (dict(mask=np.zeros((200, 12), bool)), ValueError, 'constant'),
    (dict(noise_variance=-1.0), ValueError, 'noise_variance'),
])
def test_bad_input_is_refused(kwargs, error, message):
  x, _, _ = _data()
  kwargs = {'num_latents': 3, **kwargs}
  with pytest.raises(error, match=message):
    fit_masked_em(x, **kwargs)
