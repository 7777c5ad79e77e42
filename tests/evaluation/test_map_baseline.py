"""MAP (l1) dictionary learning with scikit-learn."""

import sys

import numpy as np
import pytest

from tfp_esc.data.bars import make_bars
from tfp_esc.evaluation.evaluate import evaluate_dictionary
from tfp_esc.evaluation.map_baseline import learn_map_dictionary

sparse_encode = pytest.importorskip('sklearn.decomposition').sparse_encode

ALPHA = 1.0
OPTIONS = {'seed': 0, 'batch_size': 64, 'max_iter': 5, 'early_stopping': False}


@pytest.fixture(scope='module')
def bars():
  return make_bars(300, seed=4)


@pytest.fixture(scope='module')
def learned(bars):
  return learn_map_dictionary(bars.x, 10, ALPHA, **OPTIONS)


def test_callback_snapshots_equal_shorter_runs_and_can_stop(bars, learned):
  # 300 points in batches of 64: 5 steps per epoch. The dictionary after
  # 2 epochs' steps of a long run is what max_iter=2 returns; stopping after
  # 5 epochs' steps returns `learned` (max_iter=5) exactly.
  snapshots = {}

  def callback(step, dictionary):
    assert dictionary.shape == (25, 10)
    if step % 5 == 0:
      snapshots[step // 5] = dictionary.copy()
    return step == 25

  stopped = learn_map_dictionary(bars.x, 10, ALPHA, **dict(
      OPTIONS, max_iter=1000), callback=callback)
  np.testing.assert_array_equal(stopped, learned)
  np.testing.assert_array_equal(snapshots[5], learned)
  np.testing.assert_array_equal(
      snapshots[2], learn_map_dictionary(bars.x, 10, ALPHA, **dict(
          OPTIONS, max_iter=2)))
  with pytest.raises(TypeError, match='callback'):
    learn_map_dictionary(bars.x, 10, ALPHA, callback=3)


def _l1_objective(x, dictionary, alpha):
  """Mean over points of min_s (1/2)||x - W s||^2 + alpha ||s||_1, and codes."""
  codes = sparse_encode(x, dictionary.T, algorithm='lasso_cd', alpha=alpha,
                        max_iter=5000)
  residual = x - codes @ dictionary.T
  return np.mean(0.5 * np.sum(residual**2, -1)
                 + alpha * np.sum(np.abs(codes), -1)), codes


def test_shape_dtype_norms_and_determinism(bars, learned):
  assert learned.shape == (25, 10) and learned.dtype == np.float64
  assert np.all(np.isfinite(learned))
  # scikit-learn constrains ||u_h|| <= 1 (unit norm is not promised).
  assert np.all(np.linalg.norm(learned, axis=0) <= 1 + 1e-6)
  np.testing.assert_array_equal(
      learned, learn_map_dictionary(bars.x, 10, ALPHA, **OPTIONS))
  small = learn_map_dictionary(bars.x[:50].astype(np.float32), 4, ALPHA,
                               max_iter=1)
  assert small.shape == (25, 4) and small.dtype == np.float32


def test_lasso_objective_beats_zero_codes_and_a_random_dictionary(
    bars, learned):
  # s = 0 is feasible, so the l1 objective is at most (1/2)||x||^2; it is
  # strictly lower because max |W^T x_n| > alpha for most points. A learned
  # dictionary also fits far better than a random unit-norm one.
  objective, codes = _l1_objective(bars.x, learned, ALPHA)
  zero = np.mean(0.5 * np.sum(bars.x**2, -1))
  assert objective < 0.5 * zero
  error = np.sum((bars.x - codes @ learned.T)**2, -1)
  assert np.all(error <= np.sum(bars.x**2, -1) + 1e-9)
  random = np.random.default_rng(0).standard_normal(learned.shape)
  random /= np.linalg.norm(random, axis=0)
  assert objective < _l1_objective(bars.x, random, ALPHA)[0]


def test_map_dictionary_can_be_evaluated(bars, learned):
  result = evaluate_dictionary(bars.x, learned, num_iw_samples=0,
                               max_calls=2, jit_compile=False)
  assert np.isfinite(result['elbo']) and len(result['scales']) == 10


@pytest.mark.parametrize('x, num_latents, alpha, error', [
    (np.ones((10, 4)), 3, 0.0, ValueError),
    (np.ones((10, 4)), 3, -1.0, ValueError),
    (np.ones((10, 4)), 3, np.nan, ValueError),
    (np.ones((10, 4)), 3, 'big', TypeError),
    (np.ones(10), 3, 0.1, ValueError),
    (np.ones((2, 3, 4)), 3, 0.1, ValueError),
    (np.ones((0, 4)), 3, 0.1, ValueError),
    (np.full((10, 4), np.nan), 3, 0.1, ValueError),
    (np.ones((10, 4)), 0, 0.1, ValueError),
    (np.ones((10, 4)), 2.5, 0.1, TypeError),
])
def test_bad_inputs_raise(x, num_latents, alpha, error):
  with pytest.raises(error) as info:
    learn_map_dictionary(x, num_latents, alpha)
  message = str(info.value)
  assert any(name in message for name in ('x ', 'alpha', 'num_latents')), (
      message)


def test_bad_options_raise():
  x = np.ones((10, 4))
  with pytest.raises(ValueError, match=r'got shape \(10,\)'):
    learn_map_dictionary(x[:, 0], 3, 0.1)
  with pytest.raises(ValueError, match='batch_size must be >= 1'):
    learn_map_dictionary(x, 3, 0.1, batch_size=0)
  with pytest.raises(ValueError, match='max_iter must be >= 1'):
    learn_map_dictionary(x, 3, 0.1, max_iter=0)
  with pytest.raises(ValueError, match="fit_algorithm must be 'lars' or 'cd'"):
    learn_map_dictionary(x, 3, 0.1, fit_algorithm='omp')


def test_missing_sklearn_says_how_to_install(monkeypatch):
  monkeypatch.setitem(sys.modules, 'sklearn.decomposition', None)
  with pytest.raises(ImportError, match=r'pip install tfp_esc\[baselines\]'):
    learn_map_dictionary(np.ones((10, 4)), 3, 0.1)
