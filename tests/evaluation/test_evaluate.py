"""Importance-weighted bound and dictionary evaluation."""

import json
import subprocess
import sys

import numpy as np
import pytest

from tfp_esc.data.bars import make_bars
from tfp_esc.evaluation.evaluate import evaluate_dictionary
from tfp_esc.inference.joint import fit_joint
from tfp_esc.model.sparse_coding import SparseCodingModel
from tfp_esc.objective.elbo import classical_elbo
from tfp_esc.objective.sampled import importance_weighted_bound


@pytest.fixture(scope='module')
def fitted():
  data = make_bars(200, seed=0)
  fit = fit_joint(data.x, init_dictionary=data.dictionary,
                  train_dictionary=False, posterior='diagonal', max_calls=5,
                  log_every=0)
  model = SparseCodingModel(fit.dictionary, fit.scales, fit.noise_variance)
  per_point_elbo = classical_elbo(data.x, fit.dictionary, fit.posterior,
                                  fit.scales, fit.noise_variance,
                                  per_point=True).numpy()
  return data, fit, model, per_point_elbo


def _paired(bound, per_point_elbo):
  diff = bound.per_point.numpy() - per_point_elbo
  return diff.mean(), diff.std() / np.sqrt(len(diff))


def test_k1_bound_equals_the_elbo_in_expectation(fitted):
  data, fit, model, elbo = fitted
  bound = importance_weighted_bound(data.x, model, fit.posterior, 1, seed=3)
  mean, stderr = _paired(bound, elbo)
  assert abs(mean) < 4 * stderr, (mean, stderr)  # within 4 standard errors


def test_bound_exceeds_the_elbo_and_rises_with_k(fitted):
  data, fit, model, elbo = fitted
  small = importance_weighted_bound(data.x, model, fit.posterior, 10, seed=1)
  large = importance_weighted_bound(data.x, model, fit.posterior, 1000, seed=2)
  mean, stderr = _paired(small, elbo)
  assert mean > 4 * stderr > 0
  gain = large.per_point.numpy() - small.per_point.numpy()
  assert gain.mean() > 4 * gain.std() / np.sqrt(len(gain))


def test_chunked_bound_estimates_the_same_and_validates(fitted):
  data, fit, model, _ = fitted
  a = importance_weighted_bound(data.x, model, fit.posterior, 50, seed=4,
                                chunk_size=64)
  b = importance_weighted_bound(data.x, model, fit.posterior, 50, seed=5)
  assert a.per_point.shape == (200,)
  # Chunks draw other samples; both estimate the same bound per point.
  diff = a.per_point.numpy() - b.per_point.numpy()
  assert abs(diff.mean()) < 4 * diff.std() / np.sqrt(len(diff)) + 1e-12
  with pytest.raises(ValueError, match='num_samples must be an integer >= 1'):
    importance_weighted_bound(data.x, model, fit.posterior, 0, seed=0)


def test_true_dictionary_scores_higher_than_a_corrupted_one():
  data = make_bars(300, seed=5)
  truth = evaluate_dictionary(data.x, data.free_dictionary, num_iw_samples=20)
  rng = np.random.default_rng(0)
  corrupted = data.dictionary + 0.3 * rng.standard_normal(
      data.dictionary.shape)
  worse = evaluate_dictionary(data.x, corrupted, num_iw_samples=20)
  assert truth['elbo'] > worse['elbo'] + 1.0
  # The column norms of the free dictionary are absorbed into lambda*.
  np.testing.assert_allclose(truth['scales'], np.sqrt(5), rtol=0.15)
  assert truth['log_likelihood_bound']['mean'] > truth['elbo']
  assert truth['noise_variance'] == pytest.approx(0.01, rel=0.2)
  for key in ('elbo', 'entropies', 'noise_variance', 'scales', 'gini',
              'log_likelihood_bound'):
    assert key in truth


def test_bad_inputs():
  x = make_bars(20, seed=1).x
  with pytest.raises(ValueError, match=r'their D differ'):
    evaluate_dictionary(x, np.ones((24, 10)))
  w = np.ones((25, 10))
  w[:, 3] = 0
  with pytest.raises(ValueError, match=r'zero columns at \[3\]'):
    evaluate_dictionary(x, w)


def test_script_writes_json(tmp_path):
  data = make_bars(40, seed=2)
  np.save(tmp_path / 'x.npy', data.x)
  np.save(tmp_path / 'w.npy', data.free_dictionary)
  out = tmp_path / 'result.json'
  subprocess.run(
      [sys.executable, 'scripts/evaluate_dictionary.py',
       f'--data={tmp_path / "x.npy"}', f'--dictionary={tmp_path / "w.npy"}',
       '--num_iw_samples=5', '--nojit_compile', f'--output={out}'],
      check=True, capture_output=True)
  result = json.loads(out.read_text())
  # The script is the library function: the same values.
  expected = evaluate_dictionary(data.x, data.free_dictionary,
                                 num_iw_samples=5, jit_compile=False)
  assert result['elbo'] == pytest.approx(expected['elbo'], abs=1e-9)
  np.testing.assert_allclose(result['scales'], expected['scales'],
                             rtol=1e-9)
  assert result['log_likelihood_bound']['mean'] == pytest.approx(
      expected['log_likelihood_bound']['mean'], abs=1e-9)
