"""SparseCoding: scikit-learn's own checks, and the mathematics behind it."""

import os
import pickle
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf
from scipy.special import erf
from sklearn.exceptions import NotFittedError
from sklearn.model_selection import GridSearchCV
from sklearn.utils._param_validation import InvalidParameterError
from sklearn.utils.estimator_checks import (
    check_methods_sample_order_invariance, check_methods_subset_invariance,
    parametrize_with_checks)

from tfp_esc import SparseCoding
from tfp_esc.data.bars import make_bars
from tfp_esc import estimator as estimator_lib
from tfp_esc.estimator import METHODS
from tfp_esc.evaluation.evaluate import evaluate_heldout

# Small and quick: two epochs, no refinement rounds, graph mode without XLA
# (compiling costs more than it saves on the checks' tiny data sets).
QUICK = {'max_iter': 2, 'refine_rounds': 0, 'random_state': 0}


@pytest.fixture(scope='module')
def bars():
  return make_bars(400, seed=0).x, make_bars(200, seed=1).x  # float64


@pytest.fixture(scope='module')
def fitted(bars):
  return SparseCoding(10, max_iter=5, refine_rounds=0,
                      random_state=0).fit(bars[0])


@parametrize_with_checks([SparseCoding(**QUICK)])
def test_scikit_learn_checks(estimator, check, monkeypatch):
  # The array-API check skips unless SciPy's array-API switch is set; with
  # NumPy inputs it is harmless, so set it and let the check run.
  monkeypatch.setenv('SCIPY_ARRAY_API', '1')
  check(estimator)


def _laplace_expected_magnitude(mean, std):
  """E|u| for u ~ N(mean, std^2), written out independently of the library."""
  return (std * np.sqrt(2.0 / np.pi) * np.exp(-mean**2 / (2.0 * std**2))
          + mean * erf(mean / (np.sqrt(2.0) * std)))


def _classical_elbo_per_point(x, means, stds, components, scales, noise):
  """L_n(lambda, sigma^2) of diagonal posteriors, in NumPy (SPEC 4)."""
  num_observed = x.shape[1]
  reconstruction = (np.sum((x - means @ components)**2, 1)
                    + stds**2 @ np.sum(components**2, 1))
  log_likelihood = (-0.5 * num_observed * np.log(2 * np.pi * noise)
                    - reconstruction / (2 * noise))
  log_prior = -np.sum(np.log(2 * scales)
                      + _laplace_expected_magnitude(means, stds) / scales, 1)
  entropy = np.sum(np.log(stds), 1) + 0.5 * means.shape[1] * np.log(
      2 * np.pi * np.e)
  return log_likelihood + log_prior + entropy


def test_score_samples_is_the_classical_elbo_of_the_posterior(fitted, bars):
  x = bars[1]
  means, stds = fitted.transform(x, return_std=True)
  expected = _classical_elbo_per_point(
      x, means, stds, fitted.components_, fitted.scales_,
      fitted.noise_variance_)
  scores = fitted.score_samples(x)
  np.testing.assert_allclose(scores, expected, rtol=1e-12)
  assert fitted.score(x) == pytest.approx(np.mean(expected), rel=1e-12)


def test_posterior_maximises_the_heldout_elbo(fitted, bars):
  # L_n is concave in (means, log stds); no small move along any coordinate
  # may raise it, also for pruned latents (tiny lambda_h, tiny optimal std:
  # a scale floor that binds there shows up here).
  x = bars[1][:20]
  assert np.min(fitted.scales_) < 1e-3   # this fit has a pruned latent
  means, stds = fitted.transform(x, return_std=True)
  args = (fitted.components_, fitted.scales_, fitted.noise_variance_)
  best = _classical_elbo_per_point(x, means, stds, *args)
  for h in range(10):
    step = np.zeros(10)
    step[h] = 1e-3
    for moved in ((means + step * stds, stds), (means - step * stds, stds),
                  (means, stds * (1 + step)), (means, stds * (1 - step))):
      assert np.all(_classical_elbo_per_point(x, *moved, *args)
                    <= best + 1e-12), h


def test_score_is_the_heldout_elbo_of_the_library(bars):
  # A dictionary without pruned latents (evaluate_heldout's scale floor
  # would bind for those): the two optimisers of the same per-point
  # objective, majorise-minimise here and joint L-BFGS there, agree.
  x_train, x_test = bars[0], bars[1][:30]
  estimator = SparseCoding(5, max_iter=3, refine_rounds=0,
                           random_state=0).fit(x_train)
  assert np.min(estimator.scales_) > 0.1
  reference = evaluate_heldout(x_test, estimator.components_.T,
                               estimator.scales_, estimator.noise_variance_,
                               num_iw_samples=0, gini_samples=1,
                               jit_compile=False)
  assert estimator.score(x_test) == pytest.approx(reference['elbo'],
                                                  rel=1e-7)


def test_posterior_of_new_data(fitted, bars):
  x = bars[1][:7]
  q = fitted.infer_posterior(x)
  means, stds = fitted.transform(x, return_std=True)
  distribution = q.distribution()
  assert distribution.batch_shape == [7]
  assert distribution.event_shape == [10]
  np.testing.assert_allclose(distribution.mean().numpy(), means, rtol=1e-12)
  np.testing.assert_allclose(distribution.stddev().numpy(), stds, rtol=1e-12)
  assert np.all(stds > 0)
  # A row's posterior does not depend on the other rows of the call (to
  # the precision that the optimum of L_n fixes the means: about the square
  # root of the machine epsilon times the data's scale, since L_n is flat
  # to second order there).
  np.testing.assert_allclose(fitted.transform(x[3:4]), means[3:4],
                             rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(fitted.score_samples(x[3:4]),
                             fitted.score_samples(x)[3:4], rtol=1e-13)


def test_components_are_unit_rows_and_inverse_transform_reconstructs(
    fitted, bars):
  x = bars[1]
  assert fitted.components_.shape == (10, 25)
  np.testing.assert_allclose(np.linalg.norm(fitted.components_, axis=1), 1.0,
                             rtol=1e-12)
  codes = fitted.transform(x)
  np.testing.assert_allclose(fitted.inverse_transform(codes),
                             codes @ fitted.components_, rtol=1e-12)
  # Reconstructions explain the data down to about the learned noise.
  residual = np.mean((x - fitted.inverse_transform(codes))**2)
  assert residual < 2.0 * fitted.noise_variance_


def test_grid_search_by_score_finds_the_number_of_bars(bars):
  search = GridSearchCV(SparseCoding(max_iter=5, refine_rounds=0,
                                     random_state=0),
                        {'n_components': [5, 10, 20]}, cv=2)
  search.fit(bars[0])
  assert search.best_params_ == {'n_components': 10}


def test_partial_fit_keeps_learning_from_chunks():
  x = make_bars(1200, seed=3).x
  x_test = make_bars(300, seed=4).x
  estimator = SparseCoding(10, batch_size=100, random_state=0)
  scores = []
  for chunk in np.split(x, 6):
    estimator.partial_fit(chunk)
    scores.append(estimator.score(x_test))
  assert estimator.n_samples_seen_ == 1200 and estimator.n_steps_ == 12
  assert estimator.n_iter_ == 6 and len(estimator.elbo_history_) == 6
  # Measured: -39.9, -29.9, -23.8, -19.5, -16.4, -14.3 (one epoch of fit
  # on all 1,200 points: -36.5).
  assert np.all(np.diff(scores) > 1.0), scores
  assert scores[-1] > scores[0] + 15.0, scores
  # The sums remember what came before: two more points nudge the
  # dictionary, they do not replace it (measured: the score moves by 0.03).
  before = estimator.components_.copy()
  estimator.partial_fit(x_test[:2])
  assert not np.array_equal(estimator.components_, before)
  assert abs(estimator.score(x_test) - scores[-1]) < 0.5


def test_sums_follow_a_scaling_of_the_data(bars):
  # The state keeps partial_fit's sums in the data's units, the trainer
  # works on x / rms: the sums of c x (codes c nu, deviations c s) are those
  # of x, scaled.
  x = bars[1][:50]
  rng = np.random.default_rng(0)
  loc, scale = rng.standard_normal((50, 10)), rng.uniform(0.1, 1, (50, 10))
  sums = estimator_lib._float64_contribution(x, loc, scale)
  scaled = estimator_lib._float64_contribution(3 * x, 3 * loc, 3 * scale)
  for name, value in vars(estimator_lib._scaled_sums(sums, 3.0)).items():
    np.testing.assert_allclose(value, getattr(scaled, name), rtol=1e-12,
                               err_msg=name)


def test_partial_fit_continues_a_fit(bars):
  estimator = SparseCoding(10, **QUICK).fit(bars[0])
  before = estimator.components_.copy()
  estimator.partial_fit(bars[1])
  assert estimator.n_samples_seen_ == 600
  assert estimator.n_iter_ == 3
  assert not np.allclose(estimator.components_, before)
  with pytest.raises(ValueError, match='X has 3 features, but SparseCoding '
                     'is expecting 25 features'):
    estimator.partial_fit(bars[1][:, :3])


@pytest.mark.parametrize('dtype', [np.float32, np.float64])
def test_float32_follows_float64(bars, dtype):
  x_train, x_test = bars[0].astype(dtype), bars[1].astype(dtype)
  reference = SparseCoding(10, **QUICK).fit(bars[0])
  estimator = SparseCoding(10, **QUICK).fit(x_train)
  assert estimator.components_.dtype == dtype
  assert estimator.transform(x_test).dtype == dtype
  assert estimator.score_samples(x_test).dtype == dtype
  np.testing.assert_allclose(estimator.elbo_history_,
                             reference.elbo_history_, rtol=1e-3)
  np.testing.assert_allclose(estimator.score(x_test),
                             reference.score(bars[1]), rtol=1e-3)
  forced = SparseCoding(10, dtype='float64', **QUICK).fit(x_train)
  assert forced.components_.dtype == np.float64


@pytest.mark.parametrize('check', [check_methods_sample_order_invariance,
                                   check_methods_subset_invariance])
def test_float32_posteriors_do_not_depend_on_the_other_rows(check):
  # Computed in float32 the means were fixed only to about 3e-4 (the
  # square root of float32's epsilon) and moved with the rows' order.
  check('SparseCoding', SparseCoding(dtype='float32', **QUICK))


def test_state_is_numpy_and_loads_in_a_fresh_process(fitted, bars, tmp_path):
  for name, value in vars(fitted).items():
    values = value.values() if isinstance(value, dict) else [value]
    assert all(isinstance(v, (np.ndarray, np.generic, int, float, str,
                              type(None))) for v in values), name
  path = tmp_path / 'model.pkl'
  path.write_bytes(pickle.dumps(fitted))
  np.save(tmp_path / 'x.npy', bars[1])
  script = textwrap.dedent(f"""
      import pickle, numpy as np
      estimator = pickle.loads(open({str(path)!r}, 'rb').read())
      x = np.load({str(tmp_path / 'x.npy')!r})
      np.save({str(tmp_path / 'codes.npy')!r}, estimator.transform(x))
      np.save({str(tmp_path / 'scores.npy')!r}, estimator.score_samples(x))
      """)
  subprocess.run([sys.executable, '-c', script], check=True,
                 env=dict(os.environ, CUDA_VISIBLE_DEVICES='',
                          TF_CPP_MIN_LOG_LEVEL='3'))
  # Another process traces the E-step for other static shapes, so rounding
  # may differ; the means agree to the precision their optimum fixes them
  # (test_posterior_of_new_data), the ELBO to rounding.
  np.testing.assert_allclose(np.load(tmp_path / 'codes.npy'),
                             fitted.transform(bars[1]), rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(np.load(tmp_path / 'scores.npy'),
                             fitted.score_samples(bars[1]), rtol=1e-12)


@pytest.mark.parametrize('method,posterior', [
    ('paper', 'diagonal'), ('joint', 'full'), ('amortized', 'diagonal')])
def test_every_method_learns(bars, method, posterior):
  x_train, x_test = bars[0][:100], bars[1][:40]
  estimator = SparseCoding(6, method=method, posterior=posterior,
                           batch_size=50, **dict(QUICK, refine_rounds=None))
  estimator.fit(x_train)
  assert estimator.n_iter_ == 2
  np.testing.assert_allclose(np.linalg.norm(estimator.components_, axis=1),
                             1.0, rtol=1e-12)
  assert np.isfinite(estimator.score(x_test))
  q = estimator.infer_posterior(x_test)
  assert q.family == posterior
  assert q.loc.shape == (40, 6)
  assert set(METHODS) >= {'incremental', method}


def test_errors_name_the_problem(bars):
  with pytest.raises(NotFittedError):
    SparseCoding().transform(bars[1])
  with pytest.raises(NotFittedError):
    SparseCoding().score(bars[1])
  with pytest.raises(InvalidParameterError, match="'method' parameter"):
    SparseCoding(method='sgd').fit(bars[0])
  with pytest.raises(InvalidParameterError, match="'n_components' parameter"):
    SparseCoding(n_components=0).fit(bars[0])
  with pytest.raises(ValueError, match="needs posterior='diagonal'"):
    SparseCoding(posterior='full').fit(bars[0])
  with pytest.raises(ValueError, match="partial_fit needs posterior"):
    SparseCoding(method='joint', posterior='full').partial_fit(bars[0])
  with pytest.raises(ValueError, match='refine_rounds=2 is an option'):
    SparseCoding(method='joint', refine_rounds=2).fit(bars[0])
  fitted = SparseCoding(4, **QUICK).fit(bars[0])
  with pytest.raises(ValueError, match='X has 3 features, but SparseCoding '
                     'is expecting 25 features'):
    fitted.transform(bars[1][:, :3])
  with pytest.raises(ValueError, match='expecting 4 .n_components.'):
    fitted.inverse_transform(np.ones((2, 5)))
  with pytest.raises(ValueError, match='minimum of 2 is required'):
    SparseCoding(**QUICK).fit(bars[0][:1])
  with pytest.raises(ValueError, match='NaN'):
    SparseCoding(**QUICK).fit(np.full((5, 3), np.nan))
