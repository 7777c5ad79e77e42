"""Tests of tfp_esc.evaluation.metrics: the Gini index and bars recovery."""

import math

import hypothesis
import numpy as np
import pytest
import tensorflow as tf
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from tfp_esc.evaluation import metrics

_SETTINGS = hypothesis.settings(max_examples=60, deadline=None)

_CODES = hnp.arrays(
    np.float64,
    hnp.array_shapes(min_dims=1, max_dims=2, min_side=1, max_side=12),
    elements=st.floats(-1e3, 1e3, allow_subnormal=False))


def _gini_loop(code):
  """The SPEC 8 formula, written out with a Python loop."""
  magnitudes = sorted(abs(float(value)) for value in code)
  num_latents = len(magnitudes)
  l1 = sum(magnitudes)
  if l1 == 0:
    return 0.0
  total = 0.0
  for k, magnitude in enumerate(magnitudes, start=1):
    total += magnitude / l1 * (num_latents - k + 0.5) / num_latents
  return 1.0 - 2.0 * total


def _gini_pairwise(code):
  """Mean absolute difference form: sum_ij |c_i - c_j| / (2 H ||c||_1)."""
  magnitudes = np.abs(np.asarray(code, dtype=np.float64))
  l1 = magnitudes.sum()
  if l1 == 0:
    return 0.0
  differences = np.abs(magnitudes[:, None] - magnitudes[None, :]).sum()
  return differences / (2.0 * len(magnitudes) * l1)


def _bars():
  """The 10 bars of SPEC 9 as unit-norm columns, [25, 10]."""
  fields = np.zeros((10, 5, 5))
  for i in range(5):
    fields[i, :, i] = 1.0
    fields[5 + i, i, :] = 1.0
  return fields.reshape(10, 25).T / math.sqrt(5.0)


# ----------------------------------------------------------------- Gini index


@pytest.mark.parametrize('num_latents', [1, 2, 7, 100])
def test_gini_equal_magnitudes_is_zero(num_latents):
  signs = np.where(np.arange(num_latents) % 2, -1.0, 1.0)
  assert metrics.gini_index(3.5 * signs) == pytest.approx(0.0, abs=1e-14)


@pytest.mark.parametrize('num_latents', [1, 2, 5, 10, 100])
def test_gini_one_nonzero_is_one_minus_one_over_h(num_latents):
  code = np.zeros(num_latents)
  code[num_latents // 2] = -2.0
  # Only k = H contributes: 1 - 2 (1/2) / H = 1 - 1/H.
  assert metrics.gini_index(code) == pytest.approx(1.0 - 1.0 / num_latents,
                                                   abs=1e-15)


def test_gini_hand_computed_value():
  # Sorted 1, 2, 3 with weights 2.5/3, 1.5/3, 0.5/3: 1 - 2 (7/3) / 6 = 2/9.
  assert metrics.gini_index([3.0, -1.0, 2.0]) == pytest.approx(2.0 / 9.0,
                                                                abs=1e-15)


@_SETTINGS
@hypothesis.given(_CODES)
def test_gini_matches_loop_and_pairwise_forms(codes):
  gini = metrics.gini_index(codes)
  rows = codes.reshape(-1, codes.shape[-1])
  assert gini.shape == codes.shape[:-1]
  np.testing.assert_allclose(gini.reshape(-1), [_gini_loop(r) for r in rows],
                             rtol=0, atol=1e-12)
  np.testing.assert_allclose(gini.reshape(-1),
                             [_gini_pairwise(r) for r in rows],
                             rtol=0, atol=1e-12)
  assert np.all(gini >= 0.0)
  assert np.all(gini <= 1.0 - 1.0 / codes.shape[-1] + 1e-12)


@_SETTINGS
@hypothesis.given(_CODES, st.floats(0.01, 100.0),
                  st.randoms(use_true_random=False))
def test_gini_permutation_sign_and_scale_invariance(codes, scale, random):
  permutation = list(range(codes.shape[-1]))
  random.shuffle(permutation)
  signs = np.array([random.choice([-1.0, 1.0]) for _ in permutation])
  transformed = scale * signs * codes[..., permutation]
  np.testing.assert_allclose(metrics.gini_index(transformed),
                             metrics.gini_index(codes), rtol=0, atol=1e-12)


def test_gini_laplace_codes_match_exponential_expectation():
  # For iid Laplace entries |c| is exponential, and x / ||x||_1 is independent
  # of ||x||_1, which gives E[G] = (H - 1) / (2H) exactly: 0.495 for H = 100.
  codes = np.random.default_rng(0).laplace(size=(4000, 100))
  gini = metrics.gini_index(codes)
  assert gini.mean() == pytest.approx(0.495, abs=0.003)


def test_gini_zero_rows_are_zero_not_nan():
  codes = np.zeros((3, 4))
  codes[1, 0] = 1.0
  np.testing.assert_array_equal(metrics.gini_index(codes), [0.0, 0.75, 0.0])


def test_gini_keeps_float32_and_accepts_tensors_and_integers():
  codes = np.array([[0.0, 0.0, 1.0], [1.0, 1.0, 1.0]], np.float32)
  assert metrics.gini_index(codes).dtype == np.float32
  from_tensor = metrics.gini_index(tf.constant(codes))
  np.testing.assert_allclose(from_tensor, [2.0 / 3.0, 0.0], atol=1e-6)
  assert metrics.gini_index(np.array([0, 0, 4])).dtype == np.float64


def test_gini_batch_shape():
  codes = np.random.default_rng(1).normal(size=(3, 5, 8))
  gini = metrics.gini_index(codes)
  assert gini.shape == (3, 5)
  assert gini[2, 4] == pytest.approx(_gini_loop(codes[2, 4]), abs=1e-12)


def test_gini_summary_pools_all_samples():
  samples = np.random.default_rng(2).laplace(size=(4, 6, 10))
  mean, sd = metrics.gini_summary(samples)
  assert type(mean) is float and type(sd) is float
  pooled = [_gini_loop(code) for code in samples.reshape(-1, 10)]
  assert mean == pytest.approx(np.mean(pooled), abs=1e-12)
  assert sd == pytest.approx(np.std(pooled), abs=1e-12)


def test_gini_summary_of_identical_codes_has_zero_sd():
  samples = np.tile([0.0, 0.0, 0.0, 5.0], (2, 3, 1))
  assert metrics.gini_summary(samples) == (0.75, 0.0)


@pytest.mark.parametrize('codes, error, match', [
    (np.float64(1.0), ValueError, r'codes must have rank >= 1, got shape \(\)'),
    (np.zeros((3, 0)), ValueError,
     r'codes must have at least one latent .*shape \(3, 0\)'),
    (np.array([[1.0, np.nan]]), ValueError,
     r'codes holds 1 NaN or inf value\(s\) \(first at index \(0, 1\)\)'),
    (np.array(['a', 'b']), TypeError, 'codes must be numeric'),
])
def test_gini_errors(codes, error, match):
  with pytest.raises(error, match=match):
    metrics.gini_index(codes)


def test_gini_summary_errors():
  with pytest.raises(ValueError, match=r'samples must have rank >= 2, got '
                     r'shape \(5,\)'):
    metrics.gini_summary(np.ones(5))
  with pytest.raises(ValueError, match=r'samples must hold at least one code '
                     r'vector .*shape \(2, 0, 3\)'):
    metrics.gini_summary(np.ones((2, 0, 3)))


# -------------------------------------------------------------- bars recovery


def test_identity_dictionary_is_recovered():
  result = metrics.bars_recovery(np.eye(6), np.eye(6))
  np.testing.assert_allclose(result.similarity, 1.0)
  np.testing.assert_array_equal(result.assignment, np.arange(6))
  np.testing.assert_array_equal(result.sign, 1.0)
  np.testing.assert_allclose(result.cosine, np.eye(6))
  assert result.num_recovered == 6
  assert result.recovered


def test_sign_flips_permutation_scaling_and_extra_columns():
  bars = _bars()
  rng = np.random.default_rng(3)
  permutation = rng.permutation(10)
  signs = np.where(rng.random(10) < 0.5, -1.0, 1.0)
  extra = rng.normal(size=(25, 3))
  learned = np.concatenate([3.0 * bars[:, permutation] * signs, extra], 1)
  learned = learned[:, rng.permutation(13)]
  result = metrics.bars_recovery(bars, learned)
  assert result.recovered and result.num_recovered == 10
  np.testing.assert_allclose(result.similarity, 1.0, atol=1e-12)
  # The assigned learned columns are the bars, up to sign and scale.
  aligned = learned[:, result.assignment] * result.sign
  np.testing.assert_allclose(aligned / 3.0, bars, atol=1e-12)
  assert result.cosine.shape == (10, 13)


@pytest.mark.parametrize('other, expected', [
    (1, 1.0 / math.sqrt(2.0)),  # two parallel (disjoint) vertical bars
    (5, 6.0 / math.sqrt(60.0)),  # a vertical and a crossing horizontal bar
])
def test_double_bar_fails_threshold(other, expected):
  bars = _bars()
  learned = bars.copy()
  learned[:, 0] = bars[:, 0] + bars[:, other]
  learned[:, other] = np.random.default_rng(4).normal(size=25)
  result = metrics.bars_recovery(bars, learned)
  assert not result.recovered
  assert result.num_recovered == 8
  best = max(result.similarity[0], result.similarity[other])
  assert best == pytest.approx(expected, abs=1e-12)
  assert best < 0.8


@pytest.mark.parametrize('cosine, recovered', [(0.93, True), (0.89, False)])
def test_noise_near_threshold(cosine, recovered):
  bars = _bars()
  rng = np.random.default_rng(5)
  # Noise orthogonal to the span of the bars sets |cos| exactly.
  basis, _ = np.linalg.qr(np.concatenate([bars, rng.normal(size=(25, 25))], 1))
  noise = basis[:, 9:19]  # the bars span 9 dimensions
  np.testing.assert_allclose(bars.T @ noise, 0.0, atol=1e-12)
  learned = cosine * bars + math.sqrt(1 - cosine**2) * noise
  result = metrics.bars_recovery(bars, learned, threshold=0.9)
  np.testing.assert_allclose(result.similarity, cosine, atol=1e-12)
  assert result.recovered is recovered
  assert result.num_recovered == (10 if recovered else 0)


def test_accepts_tensors():
  bars = _bars()
  result = metrics.match_dictionaries(tf.constant(bars, tf.float32),
                                      tf.constant(-bars[:, ::-1]))
  assert result.recovered
  np.testing.assert_array_equal(result.assignment, np.arange(9, -1, -1))
  np.testing.assert_array_equal(result.sign, -1.0)


@pytest.mark.parametrize('true, learned, match', [
    (np.eye(25, 10), np.eye(16, 10),
     (r'same number of rows D; true_dictionary has shape \(25, 10\), '
      r'learned_dictionary \(16, 10\)')),
    (np.eye(25, 10), np.eye(25, 9),
     (r'learned_dictionary must have at least as many columns as '
      r'true_dictionary; .*\(25, 10\).*\(25, 9\)')),
    (np.eye(4, 3), np.eye(4, 3) * [1.0, 0.0, 1.0],
     r'learned_dictionary has 1 all-zero column\(s\) \(first at index 1'),
    (np.zeros((4, 2)), np.eye(4, 3),
     r'true_dictionary has 2 all-zero column\(s\)'),
    (np.ones(4), np.eye(4, 3), r'true_dictionary must have rank >= 2'),
    (np.ones((4, 2, 1)), np.eye(4, 3), 'Both dictionaries must be rank 2'),
    (np.ones((4, 0)), np.eye(4, 3), 'true_dictionary has no columns'),
    (np.eye(4, 3), np.full((4, 3), np.inf),
     'learned_dictionary holds 12 NaN or inf'),
])
def test_bars_recovery_errors(true, learned, match):
  with pytest.raises(ValueError, match=match):
    metrics.bars_recovery(true, learned)


@pytest.mark.parametrize('threshold', [0.0, 1.5, -0.1])
def test_bad_threshold(threshold):
  with pytest.raises(ValueError,
                     match=r'threshold must be a finite number in \(0, 1\]'):
    metrics.bars_recovery(np.eye(3), np.eye(3), threshold=threshold)


def test_spatial_spread_of_known_fields():
  side = 16
  i, j = np.meshgrid(np.arange(side), np.arange(side), indexing='ij')
  # A Gaussian blob of standard deviation 1.5 px centred at (5, 9): its
  # energy (the square) has standard deviation 1.5 / sqrt(2) per axis, so
  # the spread is 1.5 px (up to the grid's truncation, negligible here).
  blob = np.exp(-((i - 5.0)**2 + (j - 9.0)**2) / (2 * 1.5**2))
  # A grating fills the patch: its energy is uniform across rows, so its
  # spread is at least the rows' standard deviation sqrt((16^2 - 1) / 12).
  grating = np.cos(2 * np.pi * j / 4.0)
  single = np.zeros((side, side))
  single[3, 4] = -2.0
  fields = np.stack([blob, grating, single], -1).reshape(side * side, 3)
  spread = metrics.spatial_spread(fields, (side, side))
  np.testing.assert_allclose(spread[0], 1.5, rtol=1e-3)
  assert spread[1] > np.sqrt((side**2 - 1) / 12)
  assert spread[2] == 0.0
  np.testing.assert_allclose(
      metrics.localized_fraction(fields, (side, side)), 2 / 3)
  # Scale of a column does not matter.
  np.testing.assert_allclose(
      metrics.spatial_spread(fields * [3.0, 0.1, 7.0], (side, side)), spread)


def test_spatial_spread_rejects_bad_input():
  with pytest.raises(ValueError, match='patch_shape'):
    metrics.spatial_spread(np.ones((10, 2)), (4, 4))
  with pytest.raises(ValueError, match='zero columns'):
    metrics.spatial_spread(np.zeros((16, 2)), (4, 4))
