"""Image restoration: patch bookkeeping exactly, learned noise, calibrated
error bars and kept pixels on a small synthetic image, and bad input."""

import numpy as np
import pytest

from tfp_esc import restoration
from tfp_esc.inference import masked_em


def _scene(size=40, seed=0):
  """A smooth image with edges in [0.1, 0.9]: sinusoids plus a square."""
  rows, cols = np.mgrid[0:size, 0:size] / size
  image = (0.5 + 0.2 * np.sin(6 * rows) * np.cos(4 * cols)
           + 0.2 * ((np.abs(rows - 0.5) < 0.2) & (np.abs(cols - 0.4) < 0.25)))
  return np.clip(image, 0.1, 0.9)


def test_patches_round_trip_exactly():
  image = np.random.default_rng(0).random((11, 9))
  patches = restoration.image_to_patches(image, 4)
  assert patches.shape == (8 * 6, 16)
  np.testing.assert_array_equal(patches[0].reshape(4, 4), image[:4, :4])
  np.testing.assert_array_equal(patches[7].reshape(4, 4), image[1:5, 1:5])
  np.testing.assert_allclose(
      restoration.combine_patches(patches, image.shape, 4), image,
      rtol=0, atol=1e-15)


def test_combining_averages_each_pixel_over_its_windows():
  # Window k carries the value k: pixel (0, 0) sees only window 0, pixel
  # (1, 1) the windows 0, 1, 3, 4 of a 4 x 4 image with 2 x 2 patches.
  values = np.repeat(np.arange(9.0)[:, None], 4, 1)
  combined = restoration.combine_patches(values, (4, 4), 2)
  assert combined[0, 0] == 0.0
  assert combined[1, 1] == np.mean([0, 1, 3, 4])
  assert combined[3, 3] == 8.0


def _windows_of_pixel_2_2(values):
  # Pixel (2, 2) of a 6 x 5 image lies in the 3 x 3 patches (r, c) with r
  # in 0..2, c in 0..2 of the 4 x 3 grid of windows, at offset (2 - r,
  # 2 - c) inside each.
  return np.array([values[r * 3 + c, (2 - r) * 3 + (2 - c)]
                   for r in range(3) for c in range(3)])


def _missing(shape):
  return np.zeros(shape, bool)


def test_missing_pixels_get_the_precision_weighted_mixture():
  rng = np.random.default_rng(5)
  means, variances = rng.normal(size=(12, 9)), rng.uniform(0.1, 1, (12, 9))
  mean, variance = restoration.combine_posteriors(means, variances, (6, 5), 3,
                                                  _missing((6, 5)))
  mu, v = _windows_of_pixel_2_2(means), _windows_of_pixel_2_2(variances)
  # Mean of the product of the Gaussians N(mu_k, v_k); variance of the
  # mixture with weights pi_k proportional to 1 / v_k.
  pi = (1 / v) / np.sum(1 / v)
  np.testing.assert_allclose(mean[2, 2], np.sum(mu / v) / np.sum(1 / v),
                             rtol=1e-13)
  np.testing.assert_allclose(
      variance[2, 2], np.sum(pi * v) + np.sum(pi * (mu - mean[2, 2])**2),
      rtol=1e-13)


def test_weights_from_other_variances():
  # Step 5b: weights pi_k from one set of variances u_k (the class
  # estimates' own), the error variances v_k from another: mean
  # sum_k pi_k mu_k, and about it a = sum_k pi_k v_k and the spread
  # s = sum_k pi_k (mu_k - mean)^2 (missing pixel: a + s).
  rng = np.random.default_rng(11)
  means = rng.normal(size=(12, 9))
  variances, weighting = rng.uniform(0.1, 1, (2, 12, 9))
  mean, variance = restoration.combine_posteriors(
      means, variances, (6, 5), 3, _missing((6, 5)),
      weight_variances=weighting)
  mu, v = _windows_of_pixel_2_2(means), _windows_of_pixel_2_2(variances)
  pi = 1 / _windows_of_pixel_2_2(weighting)
  pi /= np.sum(pi)
  np.testing.assert_allclose(mean[2, 2], np.sum(pi * mu), rtol=1e-13)
  np.testing.assert_allclose(
      variance[2, 2], np.sum(pi * v) + np.sum(pi * (mu - mean[2, 2])**2),
      rtol=1e-13)
  # Observed pixels: a max(1 - box(s / a), 1 / k) about the same mean;
  # weights from the variances themselves are the default.
  for observed in (None, _missing((6, 5))):
    np.testing.assert_array_equal(
        restoration.combine_posteriors(means, variances, (6, 5), 3, observed,
                                       weight_variances=variances),
        restoration.combine_posteriors(means, variances, (6, 5), 3,
                                       observed))
  _, of_mean = restoration.combine_posteriors(means, variances, (6, 5), 3,
                                              weight_variances=weighting)
  assert np.all(of_mean <= variance + 1e-15) and np.all(of_mean > 0)


def test_calibrated_missing_pixels_pool_the_spread_over_every_missing_pixel():
  # Step 5c: with calibrated windows a missing pixel gets the variance of
  # the mean, a max(1 - sum s / sum a, 1 / k), the sums over every missing
  # pixel; observed pixels are as without calibration.
  rng = np.random.default_rng(12)
  shape, p = (6, 5), 3
  # Means that vary less than the variances, so the floor 1 / k does not
  # bind everywhere.
  means = 0.2 * rng.normal(size=(12, 9))
  variances = rng.uniform(0.1, 1, (12, 9))
  observed = rng.random(shape) < 0.5
  mean, variance = restoration.combine_posteriors(
      means, variances, shape, p, observed, calibrated=True)
  a, s, k = np.zeros(shape), np.zeros(shape), np.zeros(shape)
  for i in range(shape[0]):
    for j in range(shape[1]):
      mu, v = [], []
      for r in range(max(0, i - p + 1), min(i, shape[0] - p) + 1):
        for c in range(max(0, j - p + 1), min(j, shape[1] - p) + 1):
          window, offset = r * (shape[1] - p + 1) + c, (i - r) * p + (j - c)
          mu.append(means[window, offset])
          v.append(variances[window, offset])
      mu, v = np.array(mu), np.array(v)
      pi = (1 / v) / np.sum(1 / v)
      np.testing.assert_allclose(mean[i, j], np.sum(pi * mu), rtol=1e-13)
      a[i, j], k[i, j] = np.sum(pi * v), len(v)
      s[i, j] = np.sum(pi * (mu - np.sum(pi * mu))**2)
  missing = ~observed
  pooled = 1 - np.sum(s[missing]) / np.sum(a[missing])
  assert np.all(pooled > 1 / k[k > 1])
  np.testing.assert_allclose(variance[missing],
                             (a * np.maximum(pooled, 1 / k))[missing],
                             rtol=1e-12)
  _, uncalibrated = restoration.combine_posteriors(means, variances, shape, p,
                                                   observed)
  np.testing.assert_array_equal(variance[observed], uncalibrated[observed])
  # Nothing missing: nothing to calibrate.
  everything = np.ones(shape, bool)
  np.testing.assert_array_equal(
      restoration.combine_posteriors(means, variances, shape, p, everything,
                                     calibrated=True),
      restoration.combine_posteriors(means, variances, shape, p, everything))


def test_window_error_factors_are_pooled_ratios_of_sums():
  rng = np.random.default_rng(13)
  # p = 2: the 8 symmetries of the square map every position onto every
  # other, so each factor is sum e^2 / sum v over all held-out entries.
  squared, variances = rng.uniform(0, 3, (2, 50, 4))
  held_out = rng.random((50, 4)) < 0.3
  np.testing.assert_allclose(
      restoration.window_error_factors(squared, variances, held_out, 2),
      np.sum(squared[held_out]) / np.sum(variances[held_out]), rtol=1e-13)
  np.testing.assert_array_equal(
      restoration.window_error_factors(squared, variances,
                                       np.zeros((50, 4), bool), 2), 1.0)
  # p = 4: the same for the squares of a corner, of an edge and of the
  # centre (their orbits), and the factors have the square's symmetries.
  squared, variances = rng.uniform(0, 3, (2, 300, 16))
  held_out = rng.random((300, 16)) < 0.3
  factors = restoration.window_error_factors(squared, variances, held_out,
                                             4).reshape(4, 4)
  square = np.zeros((4, 4), int)
  square[1:3, 1:3] = 2
  square[[0, 0, 3, 3], [0, 3, 0, 3]] = 1
  orbit = square.ravel()
  for kind, position in ((0, (0, 1)), (1, (0, 0)), (2, (1, 1))):
    entries = held_out & (orbit == kind)
    np.testing.assert_allclose(
        factors[position], np.sum(squared[entries]) /
        np.sum(variances[entries]), rtol=1e-13)
  for turned in (factors.T, np.rot90(factors), np.rot90(factors, 2)):
    np.testing.assert_allclose(turned, factors, rtol=1e-13)


def test_window_error_factors_recover_the_error_scale():
  # Errors drawn with variance f_d v (f_d: 3 at the corners of the 4 x 4
  # window, 2 on its edges, 1 in its centre): each estimate within 4 of
  # its standard errors, f_d sqrt(2 sum v^2) / sum v over its orbit's
  # held-out entries.
  rng = np.random.default_rng(14)
  truth = np.full((4, 4), 2.0)
  truth[1:3, 1:3] = 1.0
  truth[[0, 0, 3, 3], [0, 3, 0, 3]] = 3.0
  truth = truth.ravel()
  variances = rng.uniform(0.5, 2.0, (20000, 16))
  squared = truth * variances * rng.standard_normal(variances.shape)**2
  held_out = rng.random(variances.shape) < 0.125
  factors = restoration.window_error_factors(squared, variances, held_out, 4)
  for d in range(16):
    entries = held_out & (truth == truth[d])
    error = truth[d] * np.sqrt(2 * np.sum(variances[entries]**2)) / np.sum(
        variances[entries])
    assert abs(factors[d] - truth[d]) < 4 * error, (d, factors[d], error)


def test_held_out_pixels_are_hidden_from_the_windows():
  # Step 5c holds out observed pixels of the image (1/8 of them): a pixel
  # hidden from one window is hidden from every window that covers it.
  # The windows' masks, patch means and centred values exclude them, and
  # the errors are against the exact values.
  rng = np.random.default_rng(15)
  image = rng.uniform(0, 1, (24, 24))
  observed = rng.random(image.shape) < 0.6
  patches = restoration.image_to_patches(image, 4)
  masks = restoration.image_to_patches(observed, 4)
  chosen = restoration._held_out_pixels(observed, seed=3)
  assert chosen.shape == image.shape and chosen.dtype == bool
  assert not (chosen & ~observed).any()
  assert 0.08 < chosen.sum() / observed.sum() < 0.17
  held_out = restoration.image_to_patches(chosen, 4) > 0
  seen = {}

  def window(centred, kept, num_kept):
    seen.update(centred=centred, kept=kept, num_kept=num_kept)
    # Predicts every pixel exactly but for 0.1 (variance 0.01).
    means = np.where(kept, patches, 0).sum(1, keepdims=True) / np.maximum(
        num_kept, 1)
    return patches - means + 0.1, np.full(patches.shape, 0.01)

  factors, by_variance = restoration._held_out_error_factors(
      image, observed, chosen, window, 4, 'float64')
  kept = seen['kept']
  np.testing.assert_array_equal(kept, masks & ~held_out)
  np.testing.assert_array_equal(seen['num_kept'][:, 0], kept.sum(1))
  assert np.all(seen['centred'][~kept] == 0)
  means = np.where(kept, patches, 0).sum(1, keepdims=True) / np.maximum(
      kept.sum(1, keepdims=True), 1)
  np.testing.assert_allclose(seen['centred'][kept],
                             (patches - means)[kept], rtol=1e-12)
  np.testing.assert_allclose(factors, 1.0, rtol=1e-12)
  # Every window errs by 0.1 with variance 0.01, so every held-out pixel,
  # restored as a missing one (step 5), does too.
  np.testing.assert_allclose(by_variance[:, 1], 1.0, rtol=1e-12)
  assert len(by_variance) == min(restoration._VARIANCE_BINS,
                                 chosen.sum() // restoration._MIN_BIN_PIXELS)


def test_held_out_pixels_restored_as_missing_ones(monkeypatch):
  # Step 5c by pixel: the held-out pixels are restored as the missing ones
  # (step 5 with them counted as missing, the windows' variances scaled by
  # the position factors) and their squared errors over those variances
  # binned; the windows here err by their own amount.
  rng = np.random.default_rng(16)
  image = rng.uniform(0, 1, (20, 20))
  observed = rng.random(image.shape) < 0.7
  chosen = restoration._held_out_pixels(observed, seed=1)
  patches = restoration.image_to_patches(image, 3)
  offsets = rng.normal(0, 0.1, (len(patches), 1))
  spreads = rng.uniform(0.001, 0.02, (len(patches), 1))

  def window(centred, kept, num_kept):
    means = np.where(kept, patches, 0).sum(1, keepdims=True) / np.maximum(
        num_kept, 1)
    return (patches - means + offsets, np.broadcast_to(spreads,
                                                       patches.shape))

  calls = []
  original = restoration.variance_error_factors
  monkeypatch.setattr(
      restoration, 'variance_error_factors',
      lambda *args: calls.append(args) or original(*args))
  factors, by_variance = restoration._held_out_error_factors(
      image, observed, chosen, window, 3, 'float64')
  held_out = restoration.image_to_patches(chosen, 3) > 0
  restored, variance = restoration.combine_posteriors(
      patches + offsets, spreads * factors, image.shape, 3,
      observed & ~chosen, calibrated=True)
  squared, variances, bins = calls[0]
  np.testing.assert_allclose(squared, np.square(restored - image)[chosen],
                             rtol=1e-12)
  np.testing.assert_allclose(variances, variance[chosen], rtol=1e-12)
  assert bins == max(1, min(8, chosen.sum() // 32))
  np.testing.assert_array_equal(by_variance, original(squared, variances,
                                                      bins))
  assert held_out.any()


def test_variance_error_factors_are_ratios_of_sums_by_variance():
  rng = np.random.default_rng(17)
  variances = rng.lognormal(-5, 1, 400)
  squared = rng.gamma(0.5, 2, 400) * variances
  one = restoration.variance_error_factors(squared, variances, 1)
  np.testing.assert_allclose(one, [[np.exp(np.mean(np.log(variances))),
                                    np.sum(squared) / np.sum(variances)]],
                             rtol=1e-13)
  rows = restoration.variance_error_factors(squared, variances, 4)
  order = np.argsort(variances)
  for row, part in zip(rows, np.array_split(order, 4)):
    np.testing.assert_allclose(
        row, [np.exp(np.mean(np.log(variances[part]))),
              np.sum(squared[part]) / np.sum(variances[part])], rtol=1e-13)
  assert np.all(np.diff(rows[:, 0]) > 0)
  # Errors exactly k times their variances: factor k in every bin.
  np.testing.assert_allclose(
      restoration.variance_error_factors(2.5 * variances, variances, 8)[:, 1],
      2.5, rtol=1e-13)


def test_variance_error_factors_recover_a_variance_dependent_scale():
  # Monte Carlo: errors with variance g(v) v, g = 0.1 below v = 1e-3 and 2
  # above (the smooth and the textured pixels of a photograph); each bin's
  # factor within 4 standard errors of its truth (a ratio of sums of
  # squared normals: relative error sqrt(2 sum v^2) / sum v).
  rng = np.random.default_rng(18)
  variances = np.exp(rng.uniform(np.log(1e-5), np.log(1e-1), 4000))
  truth = np.where(variances < 1e-3, 0.1, 2.0)
  squared = truth * variances * rng.standard_normal(4000)**2
  rows = restoration.variance_error_factors(squared, variances, 4)
  order = np.argsort(variances)
  for row, part in zip(rows, np.array_split(order, 4)):
    expected = np.sum(truth[part] * variances[part]) / np.sum(
        variances[part])
    error = expected * np.sqrt(2 * np.sum(variances[part]**2)) / np.sum(
        variances[part])
    assert abs(row[1] - expected) < 4 * error, (row, expected, error)
  assert rows[0, 1] < 0.2 and rows[-1, 1] > 1.5


def test_scale_by_variance_interpolates_the_factors_in_log_variance():
  rows = np.array([[1e-4, 0.5], [1e-2, 2.0]])
  v = np.array([1e-6, 1e-4, 1e-3, 1e-2, 1.0])
  scaled = restoration.scale_by_variance(v, rows)
  # Constant beyond the ends, exact at the rows, geometric in between.
  np.testing.assert_allclose(scaled / v, [0.5, 0.5, 1.0, 2.0, 2.0],
                             rtol=1e-13)
  assert restoration.scale_by_variance(v.reshape(5, 1), rows).shape == (5, 1)


def test_variance_error_factors_refuse_bad_input():
  with pytest.raises(ValueError, match='same size'):
    restoration.variance_error_factors(np.ones(3), np.ones(4), 1)
  with pytest.raises(ValueError, match='variances must be positive'):
    restoration.variance_error_factors(np.ones(3), np.array([1.0, 0, 1]), 1)
  with pytest.raises(ValueError, match='num_bins'):
    restoration.variance_error_factors(np.ones(3), np.ones(3), 4)


def test_held_out_pixels_are_hidden_from_the_dictionaries(monkeypatch):
  # Step 5c: every dictionary (the whole image's and the classes') learns
  # without the held-out pixels, their values nowhere in its training
  # patches; the windows that restore the image see them.
  clean = _scene(24, seed=2)
  observed = np.random.default_rng(3).random(clean.shape) >= 0.5
  masks = restoration.image_to_patches(observed, 4)
  held_out = restoration.image_to_patches(
      restoration._held_out_pixels(observed, seed=0), 4) > 0
  fitted = []
  original = restoration.fit_masked_em

  def recording(x, num_latents, *, mask, **kwargs):
    fitted.append((np.asarray(x), np.asarray(mask)))
    return original(x, num_latents, mask=mask, **kwargs)

  chosen = []
  choose = restoration._best_classes

  def choosing(x, masks, *args, **kwargs):
    chosen.append(np.asarray(masks).astype(bool))
    return choose(x, masks, *args, **kwargs)

  monkeypatch.setattr(restoration, 'fit_masked_em', recording)
  monkeypatch.setattr(restoration, '_best_classes', choosing)
  restoration.restore_image(clean, observed=observed, noise_std=0,
                            patch_size=4, num_latents=4, iterations=2,
                            num_train_patches=300, num_classes=2,
                            class_rounds=2, scale_rounds=1, dtype='float64')
  # The whole image's dictionary, then two classes' in every round of step
  # 2c and after it.
  rounds = 2
  assert len(chosen) == rounds
  assert len(fitted) == 1 + 2 * (rounds + 1)
  # Step 2c's ELBOs, too, are of the windows without their held-out pixels.
  for masks_seen in chosen:
    np.testing.assert_array_equal(masks_seen, masks & ~held_out)
  # Each training row must be a window centred on its observed pixels
  # less the held-out ones, with those pixels masked (and zero).
  patches = restoration.image_to_patches(clean, 4)
  learning = masks & ~held_out
  for x, mask in fitted:
    mask = mask.astype(bool)
    for row, values in zip(mask, x):
      assert np.all(values[~row] == 0)
      matches = [n for n in np.flatnonzero((learning == row).all(1))
                 if np.allclose(values[row], (patches[n]
                                              - patches[n][row].mean())[row],
                                atol=1e-12)]
      assert matches, 'a training row is no window less its held-out pixels'


def test_equal_variances_combine_to_the_plain_mixture():
  rng = np.random.default_rng(6)
  means = rng.normal(size=(12, 9))
  mean, variance = restoration.combine_posteriors(
      means, np.full((12, 9), 0.3), (6, 5), 3, _missing((6, 5)))
  mu = _windows_of_pixel_2_2(means)
  np.testing.assert_allclose(mean[2, 2], np.mean(mu), rtol=1e-13)
  np.testing.assert_allclose(variance[2, 2], 0.3 + np.var(mu), rtol=1e-13)
  np.testing.assert_allclose(
      mean, restoration.combine_patches(means, (6, 5), 3), rtol=1e-13)


def test_window_counts():
  # 3 x 3 windows of a 6 x 5 image: 4 x 3 of them.
  np.testing.assert_array_equal(
      restoration.window_counts((6, 5), 3),
      np.outer([1, 2, 3, 3, 2, 1], [1, 2, 3, 2, 1]))
  # Windows as wide as the image: every pixel in all of them.
  np.testing.assert_array_equal(restoration.window_counts((4, 4), 4), 1)


def test_observed_pixels_get_the_variance_of_the_mean():
  """a max(1 - box(s / a), 1 / k), with a = sum pi v and s the windows'
  weighted spread at each pixel (step 5); for 3 x 3 windows the box at
  (2, 2) of a 6 x 5 image is the 5 x 5 block of pixels (0..4, 0..4), all
  inside the image."""
  rng = np.random.default_rng(8)
  means, variances = rng.normal(size=(12, 9)), rng.uniform(0.1, 1, (12, 9))
  # Nearly equal means: the spread is small and the floor 1 / k idle.
  means = 0.1 * means
  _, variance = restoration.combine_posteriors(means, variances, (6, 5), 3)
  ratios, averages = np.zeros((6, 5)), np.zeros((6, 5))
  for r in range(6):
    for c in range(5):
      mu, v = [], []
      for wr in range(max(0, r - 2), min(3, r) + 1):
        for wc in range(max(0, c - 2), min(2, c) + 1):
          k = (r - wr) * 3 + (c - wc)
          mu.append(means[wr * 3 + wc, k])
          v.append(variances[wr * 3 + wc, k])
      mu, v = np.array(mu), np.array(v)
      pi = (1 / v) / np.sum(1 / v)
      averages[r, c] = np.sum(pi * v)
      ratios[r, c] = np.sum(pi * (mu - np.sum(pi * mu))**2) / averages[r, c]
  want = averages[2, 2] * (1 - np.mean(ratios[0:5, 0:5]))
  assert want > averages[2, 2] / 9
  np.testing.assert_allclose(variance[2, 2], want, rtol=1e-12)
  # Windows that disagree wildly: the floor, k independent windows.
  _, variance = restoration.combine_posteriors(100 * means, variances,
                                               (6, 5), 3)
  np.testing.assert_allclose(variance[2, 2], averages[2, 2] / 9, rtol=1e-12)


@pytest.mark.parametrize('shared', [0.0, 0.3, 0.8])
def test_the_variance_of_the_mean_is_its_error_variance(shared):
  """Monte Carlo: window errors with variance v = 1 and correlation
  `shared` between the windows of a pixel (a pixel-wide error u plus each
  window's own e: sqrt(shared) u + sqrt(1 - shared) e). The mean of
  k = 16 windows errs with variance shared + (1 - shared) / 16; the
  returned variance, averaged over the interior pixels, must match it
  within Monte Carlo error (4 standard errors). The mixture, 1 + spread,
  must not. With independent windows (shared = 0) the truth is the floor
  1 / k itself, so the box-averaged estimate's own noise only lifts it:
  there the variance is conservative, between the truth and twice it
  (here 1.3 times: 4 x 4 windows, 7 x 7 boxes; at p = 8 the box holds 4.6
  times as many pixels)."""
  rng = np.random.default_rng(9)
  size, p = 120, 4
  clean = rng.random((size, size))
  windows = restoration.image_to_patches(clean, p)
  shared_error = restoration.image_to_patches(
      rng.standard_normal((size, size)), p)
  errors = (np.sqrt(shared) * shared_error
            + np.sqrt(1 - shared) * rng.standard_normal(windows.shape))
  mean, variance = restoration.combine_posteriors(
      windows + errors, np.ones(windows.shape), clean.shape, p)
  inner = (slice(p, -p),) * 2
  squared = np.square(mean - clean)[inner]
  truth = shared + (1 - shared) / p**2
  standard_error = np.std(squared) / np.sqrt(squared.size)
  assert abs(np.mean(squared) - truth) < 4 * standard_error
  if shared:
    assert abs(np.mean(variance[inner]) - truth) < 4 * standard_error
  else:
    assert truth <= np.mean(variance[inner]) < 2 * truth
  _, mixture = restoration.combine_posteriors(
      windows + errors, np.ones(windows.shape), clean.shape, p,
      _missing(clean.shape))
  assert np.mean(mixture[inner]) > truth + 0.15


def test_patch_scale_maximises_the_patch_prior_terms():
  """c_n* = (1/H) sum_h E|z_nh| / lambda_h maximises
  -sum_h [log(2 c lambda_h) + E|z_nh| / (c lambda_h)]."""
  from tfp_esc.objective.special import expected_magnitude
  rng = np.random.default_rng(6)
  loc, scale = rng.normal(size=(5, 4)), rng.uniform(0.1, 1.0, (5, 4))
  lam = rng.uniform(0.3, 2.0, 4)
  best = restoration._optimal_patch_scales(loc, scale, lam).numpy()[:, 0]
  magnitude = expected_magnitude(loc, scale).numpy()

  def terms(c):
    return -np.sum(np.log(2 * c[:, None] * lam)
                   + magnitude / (c[:, None] * lam), -1)

  for factor in (0.9, 0.99, 1.01, 1.1):
    assert np.all(terms(factor * best) < terms(best))
  np.testing.assert_allclose(best, np.mean(magnitude / lam, -1), rtol=1e-12)


def test_patch_noise_is_the_patch_misfit_within_its_bounds():
  """sigma_n^2* = E_q ||m_n * (x_n - W z)||^2 / |m_n| (the sigma^2* of the
  patch alone), kept in [_MIN_PATCH_NOISE sigma^2, sigma^2] (step 4b)."""
  rng = np.random.default_rng(7)
  x, w = rng.normal(size=(40, 6)), rng.normal(size=(6, 3))
  loc, scale = rng.normal(size=(40, 3)), rng.uniform(0.1, 1.0, (40, 3))
  mask = (rng.random((40, 6)) < 0.6).astype(np.float64)
  mask[0] = 0.0                      # a patch with nothing observed
  noise = 2.0
  got = restoration._optimal_patch_noise(x, mask, w, loc, scale,
                                         noise).numpy()
  error = (np.sum(np.square(mask * (x - loc @ w.T)), -1)
           + np.sum(np.square(scale) * (mask @ np.square(w)), -1))
  want = error / np.maximum(mask.sum(-1), 1)
  floor = restoration._MIN_PATCH_NOISE * noise
  # The draw puts patches on both sides of the bounds and between them.
  assert np.any(want > noise) and np.any((want < noise) & (want > floor))
  np.testing.assert_allclose(got, np.clip(want, floor, noise), rtol=1e-12)
  assert got[0] == floor
  np.testing.assert_allclose(
      restoration._patch_misfit(x, mask, w, loc, scale).numpy(), want,
      rtol=1e-12)


def test_psnr_and_coverage():
  clean = np.zeros((10, 10))
  assert restoration.psnr(clean + 0.1, clean) == pytest.approx(20.0)
  error = np.linspace(-3, 3, 100).reshape(10, 10)
  coverage = restoration.interval_coverage(error, np.ones((10, 10)), clean)
  assert coverage['overall'] == pytest.approx(np.mean(np.abs(error) <= 1.959964))


@pytest.fixture(scope='module')
def denoised():
  clean = _scene()
  noisy = clean + 0.1 * np.random.default_rng(1).standard_normal(clean.shape)
  result = restoration.restore_image(noisy, patch_size=6, num_latents=6,
                                     num_train_patches=1225, iterations=15)
  return clean, noisy, result


def test_blind_denoising_learns_the_noise_and_restores(denoised):
  clean, noisy, result = denoised
  assert result.noise_learned
  assert abs(result.noise_std - 0.1) < 0.015, result.noise_std
  assert result.error_factors is None  # step 5c: exact observations only
  # Noise is the same for every pixel: no per-patch misfit (step 4b); to
  # float32's rounding (the default dtype).
  np.testing.assert_allclose(result.patch_noise_std, result.noise_std,
                             rtol=1e-6)
  gain = restoration.psnr(result.restored, clean) - restoration.psnr(noisy,
                                                                     clean)
  assert gain > 5.0, gain


def test_a_given_noise_level_is_held():
  clean = _scene(24)
  noisy = clean + 0.05 * np.random.default_rng(4).standard_normal(clean.shape)
  result = restoration.restore_image(noisy, noise_std=0.05, patch_size=4,
                                     num_latents=4, iterations=3,
                                     dtype='float64')
  assert not result.noise_learned and result.noise_std == 0.05
  # The centred patches carry (1 - 1/p^2) of each pixel's noise variance.
  np.testing.assert_allclose(result.history['noise_variance'],
                             0.05**2 * (1 - 1 / 16), rtol=1e-12)


def test_denoising_error_bars_are_calibrated(denoised):
  clean, _, result = denoised
  coverage = restoration.interval_coverage(result.restored,
                                           result.uncertainty, clean)
  # The mixture of the windows' posteriors (before step 5's variance of
  # the mean) covered 0.984 here, with an error / std ratio of 0.86.
  assert 0.85 <= coverage['overall'] <= 0.97, coverage
  # Not calibrated by being vague: the typical error bar is the size of the
  # typical error.
  error = result.restored - clean
  ratio = np.sqrt(np.mean(error**2) / np.mean(result.uncertainty**2))
  assert 0.9 < ratio < 1.3, ratio
  # Treating the overlapping estimates as independent (std / sqrt(k)) is
  # what a naive combination does; it must not be calibrated.
  naive = restoration.interval_coverage(result.restored,
                                        result.uncertainty / 6, clean)
  assert naive['overall'] < 0.6


def test_inpainting_keeps_exact_pixels_and_fills_the_rest():
  clean = _scene(seed=2)
  observed = np.random.default_rng(3).random(clean.shape) >= 0.5
  damaged = np.where(observed, clean, np.nan)
  # One dictionary: the per-patch misfits of step 4b are what is tested
  # (patch classes give the square's edges a dictionary of their own).
  result = restoration.restore_image(damaged, observed=observed, noise_std=0,
                                     patch_size=6, num_latents=9,
                                     num_train_patches=1225, iterations=15,
                                     num_classes=1, dtype='float64')
  np.testing.assert_array_equal(result.restored[observed], clean[observed])
  assert np.all(result.uncertainty[observed] == 0)
  missing = ~observed
  mean_fill = np.mean(clean[observed])
  error = np.sqrt(np.mean((result.restored - clean)[missing]**2))
  assert error < 0.2 * np.sqrt(np.mean((mean_fill - clean)[missing]**2))
  # Calibrated missing pixels (step 5c; measured 0.921, surer half 0.908,
  # less sure half 0.935; 0.64 without the held-out error factors, and
  # without the factors by variance 0.918 / 0.988 / 0.848). Each half
  # holds about 200 pixels: a standard error of about 0.02 at 0.9.
  coverage = restoration.interval_coverage(result.restored,
                                           result.uncertainty, clean, missing)
  assert 0.9 <= coverage['overall'] <= 0.995, coverage
  assert min(coverage['low_half'], coverage['high_half']) >= 0.85, coverage
  # Each patch its own misfit (step 4b), within its bounds ...
  model = result.model_noise_std
  noise = result.patch_noise_std
  assert np.all(noise <= model * (1 + 1e-12))
  assert np.all(noise >= np.sqrt(restoration._MIN_PATCH_NOISE) * model
                * (1 - 1e-12))
  # ... smaller where the image is smooth than on the square's edges.
  windows = restoration.image_to_patches(clean, 6)
  edges = np.ptp(windows, -1) > 0.1
  assert np.median(noise[~edges]) < 0.5 * np.median(noise[edges])
  # Step 5c: the windows err more at pixels they did not see than their
  # variances say, most at the window's corners; factors with the
  # square's symmetries.
  factors = result.error_factors
  assert factors.shape == (6, 6)
  np.testing.assert_allclose(factors, factors.T, rtol=1e-12)
  np.testing.assert_allclose(factors, np.rot90(factors), rtol=1e-12)
  assert factors[0, 0] > factors[2, 2] > 1


def test_noisy_inpainting_learns_the_noise_and_fills_the_holes():
  # Noise and missing pixels at once, noise learned: sigma from the
  # observed pixels alone, the values at missing pixels ignored, the holes
  # filled far better than by the mean, and the missing pixels' error bars
  # (the mixture of their windows, step 5) wide enough and wider than the
  # observed pixels' (measured: sigma 0.1013, error 0.27 of the mean
  # fill's, coverage 0.996, median std 0.070 against 0.031).
  clean = _scene(seed=2)
  rng = np.random.default_rng(5)
  noisy = clean + 0.1 * rng.standard_normal(clean.shape)
  observed = rng.random(clean.shape) >= 0.5
  missing = ~observed
  results = [restoration.restore_image(
      np.where(observed, noisy, fill), observed=observed, patch_size=6,
      num_latents=6, num_train_patches=1225, iterations=15)
             for fill in (0.0, 1.7)]
  np.testing.assert_array_equal(results[0].restored, results[1].restored)
  np.testing.assert_array_equal(results[0].uncertainty,
                                results[1].uncertainty)
  result = results[0]
  assert result.noise_learned and result.error_factors is None
  assert abs(result.noise_std - 0.1) < 0.015, result.noise_std
  error = np.sqrt(np.mean((result.restored - clean)[missing]**2))
  mean_fill = np.sqrt(np.mean((np.mean(noisy[observed]) - clean)[missing]**2))
  assert error < 0.4 * mean_fill, (error, mean_fill)
  coverage = restoration.interval_coverage(result.restored,
                                           result.uncertainty, clean, missing)
  assert coverage['overall'] >= 0.9, coverage
  assert (np.median(result.uncertainty[missing])
          > 1.5 * np.median(result.uncertainty[observed]))


def test_inpainting_with_small_classes_stays_calibrated():
  # Eight classes on 1,225 windows: each class's dictionary learns from
  # about 150 windows and fits their pixels closely. Step 5c must measure
  # the errors at pixels no dictionary saw (its held-out pixels hidden from
  # the learning too); with the dictionaries trained on them the missing
  # pixels were covered 0.75 here (0.19-0.50 on 64 x 64 photographs).
  clean = _scene(seed=2)
  observed = np.random.default_rng(3).random(clean.shape) >= 0.5
  result = restoration.restore_image(np.where(observed, clean, 0.0),
                                     observed=observed, noise_std=0,
                                     patch_size=6, num_latents=9,
                                     num_train_patches=1225, iterations=15,
                                     num_classes=8, class_rounds=0,
                                     dtype='float64')
  missing = ~observed
  coverage = restoration.interval_coverage(result.restored,
                                           result.uncertainty, clean, missing)
  # Measured 0.968 (surer half 0.985, less sure half 0.950; without step
  # 5c's factors by variance 0.974 / 1.0 / 0.948: the surer half's
  # variances held the misfit of the less sure).
  assert 0.9 <= coverage['overall'] <= 0.995, coverage
  assert coverage['high_half'] >= 0.85, coverage
  assert coverage['low_half'] <= 0.99, coverage
  # With step 2c (class_rounds=2) this scene's surer half covered 1.0
  # (0.986 overall; module doc, step 2c): not the default.


@pytest.mark.parametrize('exact', [False, True])
def test_float32_restores_as_float64(exact):
  # The default dtype: the same restoration to float32's rounding, carried
  # through the iterations (denoising, and inpainting with exact pixels).
  clean = _scene(32, seed=5)
  rng = np.random.default_rng(8)
  noisy = clean + (0 if exact else 0.08) * rng.standard_normal(clean.shape)
  observed = rng.random(clean.shape) >= (0.5 if exact else 0.0)
  kwargs = dict(observed=observed, noise_std=0 if exact else None,
                patch_size=4, num_latents=4, iterations=5, num_classes=2,
                class_rounds=0)
  # Not with step 2c (class_rounds > 0): its choice of class is discrete,
  # and float32 chose otherwise than float64 for patches whose two ELBOs
  # nearly tie (restored pixels apart by up to 0.03).
  single = restoration.restore_image(noisy, dtype='float32', **kwargs)
  double = restoration.restore_image(noisy, dtype='float64', **kwargs)
  assert single.restored.dtype == np.float64
  # Measured: 5e-5, 0.2%, 3e-5 and 0.001 dB at most.
  np.testing.assert_allclose(single.restored, double.restored, rtol=0,
                             atol=3e-4)
  np.testing.assert_allclose(single.uncertainty, double.uncertainty,
                             rtol=0.01, atol=1e-5)
  np.testing.assert_allclose(single.model_noise_std, double.model_noise_std,
                             rtol=2e-4)
  assert abs(restoration.psnr(single.restored, clean)
             - restoration.psnr(double.restored, clean)) < 0.005


def test_a_second_image_reuses_the_compiled_steps_and_not_the_data():
  # The masked-EM iteration and the posterior step are compiled once per
  # process; data, mask, dictionary, lambda, sigma^2 and the iteration
  # counts are arguments. Restoring an image after another of the same size
  # must not trace again and must equal, bit for bit, a fresh restoration.
  def restore(seed):
    clean = _scene(20, seed)
    rng = np.random.default_rng(seed)
    noisy = clean + (0.05 + 0.05 * seed) * rng.standard_normal(clean.shape)
    observed = rng.random(clean.shape) >= 0.3
    return restoration.restore_image(
        noisy, observed=observed, patch_size=4, num_latents=4, iterations=3,
        e_step_iterations=4 + seed, scale_rounds=1 + seed, num_classes=1,
        seed=seed)

  def traces():
    return (masked_em._masked_em_iteration(True)
            .experimental_get_tracing_count(),
            restoration._posterior_step(False)
            .experimental_get_tracing_count())

  masked_em._masked_em_iteration.cache_clear()
  restoration._posterior_step.cache_clear()
  fresh = restore(2)
  masked_em._masked_em_iteration.cache_clear()
  restoration._posterior_step.cache_clear()
  first = restore(1)
  after_first = traces()
  reused = restore(2)
  assert traces() == after_first == (1, 1)
  assert not np.array_equal(first.restored, reused.restored)
  for name in ('restored', 'uncertainty', 'dictionary', 'patch_scales',
               'patch_noise_std'):
    np.testing.assert_array_equal(getattr(reused, name), getattr(fresh, name),
                                  err_msg=name)
  assert reused.history == fresh.history


def test_error_variance_of_either_agrees_with_monte_carlo():
  rng = np.random.default_rng(7)
  mean, other = rng.normal(size=5), rng.normal(size=5)
  variance, other_variance = rng.uniform(0.1, 2, 5), rng.uniform(0.1, 2, 5)
  num = 400_000
  first = rng.random((num, 5)) < 0.5
  draws = np.where(first, mean + np.sqrt(variance) * rng.normal(size=(num, 5)),
                   other + np.sqrt(other_variance)
                   * rng.normal(size=(num, 5)))
  squared = np.square(mean - draws)
  standard_error = squared.std(0) / np.sqrt(num)
  got = restoration.error_variance_of_either(mean, variance, other,
                                             other_variance)
  np.testing.assert_array_less(np.abs(got - squared.mean(0)),
                               4 * standard_error)
  # Two equal models: the model's own variance.
  np.testing.assert_allclose(
      restoration.error_variance_of_either(mean, variance, mean, variance),
      variance, rtol=1e-15)


@pytest.mark.parametrize('exact', [False, True])
def test_window_posteriors_by_class_equal_one_dictionary(exact):
  # K copies of one dictionary, patches in shuffled classes spanning several
  # chunks: every window's posterior must equal the one-dictionary result
  # (the classes' chunks are scattered back to the patches' order).
  image = _scene(60, seed=3)
  rng = np.random.default_rng(5)
  observed = rng.random(image.shape) >= (0.4 if exact else 0.0)
  patches = restoration.image_to_patches(np.where(observed, image, 0), 4)
  masks = restoration.image_to_patches(observed, 4).astype(np.float64)
  seen = masks.sum(1, keepdims=True)
  centred = masks * (patches - patches.sum(1, keepdims=True)
                     / np.maximum(seen, 1))
  w = np.linalg.qr(rng.normal(size=(16, 4)))[0]
  lam = rng.uniform(0.05, 0.2, 4)
  kwargs = dict(noise_variance=0.01, pixel_variance=0.011, exact=exact,
                iterations=5, scale_rounds=2, bar=None)
  one = restoration._window_posteriors(
      centred, masks, seen, w[None], lam[None],
      np.zeros(len(centred), np.int64), **kwargs)
  labels = rng.integers(0, 3, len(centred))
  assert len(centred) > restoration._CHUNK
  three = restoration._window_posteriors(
      centred, masks, seen, np.stack([w] * 3), np.stack([lam] * 3), labels,
      **kwargs)
  for got, want in zip(three, one):
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-15)


class _Bar:
  """Stands in for keras.utils.Progbar: records its target and progress."""
  made = []

  def __init__(self, target):
    self.target, self.done = target, 0
    _Bar.made.append(self)

  def add(self, count):
    self.done += count


def test_patch_classes(monkeypatch):
  clean = _scene(40, seed=4)
  noisy = clean + 0.05 * np.random.default_rng(6).standard_normal(clean.shape)
  kwargs = dict(patch_size=4, num_latents=4, iterations=3, scale_rounds=1,
                dtype='float64', progress=True)
  monkeypatch.setattr(restoration.keras.utils, 'Progbar', _Bar)
  _Bar.made.clear()
  patches = 37 * 37
  single = restoration.restore_image(noisy, num_classes=1, **kwargs)
  np.testing.assert_array_equal(single.class_dictionaries,
                                single.dictionary[None])
  assert not single.patch_classes.any()
  result = restoration.restore_image(noisy, num_classes=3, **kwargs)
  # One progress bar per restoration, over every pass of step 4 (two with
  # classes), and it ends full.
  assert [(bar.target, bar.done) for bar in _Bar.made] == [
      (patches, patches), (2 * patches, 2 * patches)]
  assert result.class_dictionaries.shape == (3, 16, 4)
  assert set(np.unique(result.patch_classes)) == {0, 1, 2}
  np.testing.assert_allclose(
      np.linalg.norm(result.class_dictionaries, axis=1), 1.0, rtol=1e-12)
  # The classes learn different atoms, and sigma^2 is step 2's.
  assert not np.allclose(result.class_dictionaries[0],
                         result.class_dictionaries[1])
  assert result.noise_std == single.noise_std


def test_classes_follow_the_filled_patches():
  # Step 2b: k-means classes `filled` (the patches with their holes filled
  # in), not x (zeros at the missing pixels). Here the filled patches are
  # two shapes, +v and -v up to contrast, and x is unrelated noise: the
  # classes must be the two shapes.
  rng = np.random.default_rng(12)
  num, dim = 600, 16
  v = rng.normal(size=dim)
  sign = np.where(rng.random(num) < 0.5, 1.0, -1.0)
  filled = (sign * rng.uniform(0.5, 2.0, num))[:, None] * v
  filled += 0.05 * rng.normal(size=filled.shape)
  masks = rng.random((num, dim)) < 0.5
  x = np.where(masks, rng.normal(size=(num, dim)), 0.0)
  w = np.linalg.qr(rng.normal(size=(dim, 2)))[0]
  labels, candidates = restoration._patch_classes(filled, np.arange(num), 2,
                                                 2, 0)
  # Candidates: every class, the patch's own (nearest) first.
  np.testing.assert_array_equal(candidates[:, 0], labels)
  np.testing.assert_array_equal(np.sort(candidates, 1),
                                np.tile([0, 1], (num, 1)))
  dictionaries, _ = restoration._class_dictionaries(
      x, masks, labels, np.arange(num), 2, 0.01, 2, 0, (w, np.ones(2)))
  assert dictionaries.shape == (2, dim, 2)
  assert np.array_equal(labels == labels[0], sign == sign[0])


@pytest.mark.parametrize('exact', [False, True])
def test_best_classes_find_the_dictionary_that_made_each_patch(exact):
  # Step 2c: two classes whose dictionaries span unrelated subspaces; each
  # patch is drawn from one of them (sparse codes, small noise, half its
  # pixels missing) and offered both classes, its wrong one first. The
  # highest ELBO must pick the class that made it (measured: every patch
  # but a few with tiny codes).
  rng = np.random.default_rng(21)
  num, dim, atoms = 400, 16, 3
  basis = np.linalg.qr(rng.normal(size=(dim, 2 * atoms)))[0]
  dictionaries = np.stack([basis[:, :atoms], basis[:, atoms:]])
  scales = np.full((2, atoms), 0.5)
  truth = rng.integers(0, 2, num)
  codes = rng.laplace(0.0, 0.5, (num, atoms))
  x = np.einsum('ndh,nh->nd', dictionaries[truth], codes)
  x += 0.02 * rng.normal(size=x.shape)
  masks = (rng.random((num, dim)) < 0.5).astype(np.float64)
  x *= masks
  candidates = np.stack([1 - truth, truth], axis=1)
  labels = restoration._best_classes(
      x, masks, dictionaries, scales, candidates, noise_variance=4e-4,
      iterations=30, scale_rounds=3, patch_noise=exact, bar=None)
  assert labels.dtype == np.int64
  assert set(np.unique(labels)) <= {0, 1}
  tiny = np.abs(codes).max(1) < 0.05
  assert np.mean(labels[~tiny] == truth[~tiny]) >= 0.98, np.mean(
      labels == truth)


@pytest.mark.parametrize('kwargs, error, message', [
    (dict(image=np.zeros((4, 5, 3))), ValueError, 'grey 2-D'),
    (dict(observed=np.ones((5, 5), bool)), ValueError, 'mask has shape'),
    (dict(observed=np.zeros((20, 20), bool)), ValueError, 'every pixel'),
    (dict(image=np.full((20, 20), 200.0)), ValueError, r'\[0, 1\]'),
    (dict(image=np.full((20, 20), 0.5)), ValueError, 'constant'),
    (dict(noise_std=-0.1), ValueError, 'noise_std'),
    (dict(noise_std='0.1'), TypeError, 'noise_std'),
    (dict(patch_size=30), ValueError, 'patch_size'),
    (dict(num_latents=0), ValueError, 'num_latents'),
    (dict(patch_size=4.0), TypeError, 'patch_size'),
    (dict(scale_rounds=-1), ValueError, 'scale_rounds'),
    (dict(num_classes=0), ValueError, 'num_classes'),
    (dict(num_classes=5000), ValueError, 'num_classes'),
    (dict(class_rounds=-1), ValueError, 'class_rounds'),
    (dict(class_rounds=1.5), TypeError, 'class_rounds'),
    (dict(image='photo.png'), TypeError, 'image'),
])
def test_bad_input_is_refused_before_work(kwargs, error, message):
  kwargs = {'image': _scene(20), **kwargs}
  with pytest.raises(error, match=message):
    restoration.restore_image(**kwargs)
