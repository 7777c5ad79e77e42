"""Held-out evaluation: the classical ELBO L with lambda, sigma^2 frozen."""

import json
import subprocess
import sys

import numpy as np
import pytest

from tfp_esc.data.bars import make_bars
from tfp_esc.evaluation.evaluate import evaluate_dictionary, evaluate_heldout
from tfp_esc.inference.joint import fit_joint
from tfp_esc.objective.annealing import NoAnnealing
from tfp_esc.objective.elbo import classical_elbo

# XLA compilation would dominate these small fits.
FAST = {'jit_compile': False}


@pytest.fixture(scope='module')
def train():
  return make_bars(200, seed=0)


@pytest.fixture(scope='module')
def test_data():
  return make_bars(200, seed=11)


@pytest.fixture(scope='module')
def trained(train):
  """F on the training data with the true W: lambda*, sigma^2* to freeze."""
  return evaluate_dictionary(train.x, train.dictionary, num_iw_samples=0,
                             **FAST)


@pytest.fixture(scope='module')
def heldout(train, test_data, trained):
  """The trained model (true W, lambda*, sigma^2*) on held-out bars."""
  return evaluate_heldout(test_data.x, train.dictionary, trained['scales'],
                          trained['noise_variance'], num_iw_samples=200, **FAST)


def test_at_optimal_parameters_l_equals_f(train, trained):
  # Theorem 1: F = L(lambda*, sigma^2*), and max over q of L(lambda*,
  # sigma^2*) is max over q of F, so both fits end at the same value.
  result = evaluate_heldout(train.x, train.dictionary, trained['scales'],
                            trained['noise_variance'], num_iw_samples=0, **FAST)
  assert result['converged'] and trained['converged']
  np.testing.assert_allclose(result['elbo'], trained['elbo'], rtol=0,
                             atol=1e-8)
  for key in ('q', 'prior', 'likelihood'):
    np.testing.assert_allclose(result['entropies'][key],
                               trained['entropies'][key], rtol=0, atol=1e-5)
  np.testing.assert_allclose(result['scales'], trained['scales'], rtol=1e-12)
  assert result['noise_variance'] == pytest.approx(trained['noise_variance'], rel=1e-12)
  assert set(result) == set(trained)


def test_other_parameters_score_strictly_lower(train, trained):
  # fit_joint's frozen mode, which evaluate_heldout runs: L(lambda, sigma^2)
  # maximised over q is below F = max over q, lambda, sigma^2 (Theorem 2).
  scales = 0.7 * np.asarray(trained['scales'])
  noise = 1.5 * trained['noise_variance']
  fit = fit_joint(train.x, init_dictionary=train.dictionary,
                  train_dictionary=False, posterior='diagonal', max_calls=20,
                  log_every=0, scales=scales, noise_variance=noise, **FAST)
  assert fit.converged
  assert fit.elbo < trained['elbo'] - 0.05, (fit.elbo, trained['elbo'])
  # The reported elbo is the classical ELBO at the frozen values, its terms
  # add up, and the frozen values are reported.
  expected = float(classical_elbo(train.x, fit.dictionary, fit.posterior,
                                  scales, noise))
  np.testing.assert_allclose(fit.elbo, expected, rtol=0, atol=1e-10)
  trace = {k: v[-1] for k, v in fit.trace.items()}
  assert trace['elbo'] == pytest.approx(
      trace['q_entropy'] - trace['prior_entropy']
      - trace['likelihood_entropy'], abs=1e-10)
  np.testing.assert_allclose(trace['elbo'], expected, rtol=0, atol=1e-10)
  np.testing.assert_array_equal(fit.scales, scales)
  assert fit.noise_variance == noise == trace['noise_variance']
  assert np.all(np.diff(fit.trace['elbo']) > -1e-8)


def test_heldout_bars_bound_exceeds_the_elbo(trained, heldout):
  assert heldout['converged'] and np.isfinite(heldout['elbo'])
  bound = heldout['log_likelihood_bound']
  assert bound['num_samples'] == 200
  # E[bound] >= ELBO for every point. The stated standard error is over data
  # points, far larger than the sampling noise of the bound's mean, so the
  # mean gap (about 0.7 nats here) is positive and within a few of them.
  assert bound['mean'] > heldout['elbo']
  assert bound['mean'] - heldout['elbo'] < 5 * bound['stderr']
  # The model generalises: held-out L is close to the training F.
  assert abs(heldout['elbo'] - trained['elbo']) < 1.5
  e = heldout['entropies']
  assert heldout['elbo'] == pytest.approx(
      e['q'] - e['prior'] - e['likelihood'], abs=1e-10)


def test_column_norms_are_folded_into_the_scales(train, test_data, trained):
  # Dictionary W diag(c) with scales lambda / c is the same model as W with
  # lambda: same L, and lambda is reported. Both fits run to convergence
  # (1000 iterations per call): with 200, each stops where one call gains
  # less than the tolerance, and those stopping points differ by about
  # 2e-6 nats between the two (rounding-equal) problems.
  c = np.linspace(0.5, 3.0, 10)
  converged = dict(FAST, max_iterations=1000, num_iw_samples=0)
  plain = evaluate_heldout(test_data.x, train.dictionary, trained['scales'],
                           trained['noise_variance'], **converged)
  scaled = evaluate_heldout(test_data.x, train.dictionary * c,
                            np.asarray(trained['scales']) / c,
                            trained['noise_variance'], **converged)
  # Measured 1.4e-12 apart.
  np.testing.assert_allclose(scaled['elbo'], plain['elbo'], rtol=0,
                             atol=1e-9)
  np.testing.assert_allclose(scaled['scales'], trained['scales'], rtol=1e-12)


@pytest.mark.parametrize('scales, noise, error', [
    (np.ones(9), 0.01, r'scales must have shape \[H\] = \[10\].*\(9,\)'),
    (1.0, 0.01, r'scales must have shape \[H\] = \[10\].*shape \(\)'),
    (-np.ones(10), 0.01, r'scales must be positive'),
    (np.r_[np.nan, np.ones(9)], 0.01, r'scales holds 1 NaN or inf'),
    (np.ones(10), 0.0, r'noise_variance must be positive'),
    (np.ones(10), np.inf, r'noise_variance holds 1 NaN or inf'),
    (np.ones(10), [0.01, 0.02],
     r'noise_variance must be a scalar, got shape \[2\]'),
])
def test_bad_scales_and_noise_raise(train, scales, noise, error):
  with pytest.raises(ValueError, match=error):
    evaluate_heldout(train.x, train.dictionary, scales, noise)


def test_fit_joint_rejects_inconsistent_frozen_options(train):
  def fit(**options):
    kwargs = {'init_dictionary': train.dictionary, 'train_dictionary': False,
              'log_every': 0}
    kwargs.update(options)
    fit_joint(train.x, **kwargs)

  with pytest.raises(ValueError, match='give both scales and noise_variance'):
    fit(scales=np.ones(10))
  with pytest.raises(ValueError, match='give both scales and noise_variance'):
    fit(noise_variance=0.01)
  with pytest.raises(ValueError, match='need train_dictionary=False'):
    fit(scales=np.ones(10), noise_variance=0.01, train_dictionary=True)
  with pytest.raises(ValueError, match='do not give a schedule'):
    fit(scales=np.ones(10), noise_variance=0.01, schedule=NoAnnealing())
  with pytest.raises(ValueError, match=r'shape \[H\] = \[10\].*\[3\]'):
    fit(scales=np.ones(3), noise_variance=0.01)


def test_script_evaluates_heldout_with_model_json(tmp_path, train, test_data,
                                                  trained):
  np.save(tmp_path / 'x.npy', test_data.x[:40])
  np.save(tmp_path / 'w.npy', train.dictionary)
  (tmp_path / 'model.json').write_text(json.dumps(
      {'scales': trained['scales'], 'noise_variance': trained['noise_variance']}))
  out = tmp_path / 'result.json'
  subprocess.run(
      [sys.executable, 'scripts/evaluate_dictionary.py',
       f'--data={tmp_path / "x.npy"}', f'--dictionary={tmp_path / "w.npy"}',
       f'--model={tmp_path / "model.json"}', '--num_iw_samples=5',
       '--nojit_compile', f'--output={out}'], check=True,
      capture_output=True)
  result = json.loads(out.read_text())
  # The script is the library function: the same value.
  expected = evaluate_heldout(test_data.x[:40], train.dictionary,
                              trained['scales'], trained['noise_variance'],
                              num_iw_samples=5, **FAST)
  assert result['elbo'] == pytest.approx(expected['elbo'], abs=1e-9)
  np.testing.assert_allclose(result['scales'], trained['scales'], rtol=1e-12)
  assert result['noise_variance'] == pytest.approx(trained['noise_variance'], rel=1e-12)
  assert result['log_likelihood_bound']['num_samples'] == 5
