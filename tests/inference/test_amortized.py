"""Amortized training: encoders, F rises, annealing, evaluation, resume."""

import numpy as np
import pytest

from tfp_esc.data.bars import make_bars
from tfp_esc.inference.amortized import evaluate_amortized, fit_amortized
from tfp_esc.objective.annealing import get_schedule
from tfp_esc.objective.elbo import entropy_elbo
from tfp_esc.posterior.encoders import make_encoder, posterior_from_outputs

SMALL = {'hidden_units': 32, 'batch_size': 64, 'verbose': 0}


@pytest.fixture(scope='module')
def x():
  return make_bars(256, seed=0).x.astype(np.float32)


@pytest.mark.parametrize('family,rank,shapes', [
    ('diagonal', None, {'loc': (5, 10), 'scale': (5, 10)}),
    ('lowrank', 3, {'loc': (5, 10), 'scale': (5, 10), 'factor': (5, 10, 3)}),
    ('full', None, {'loc': (5, 10), 'scale_tril': (5, 55)}),
])
def test_encoder_outputs_and_posterior(family, rank, shapes):
  encoder = make_encoder(25, 10, family, rank, hidden_units=16, seed=3)
  outputs = encoder(np.zeros((5, 25), np.float32))
  assert {k: tuple(v.shape) for k, v in outputs.items()} == shapes
  q = posterior_from_outputs(outputs, family)
  assert np.all(q.marginal_stddev().numpy() >= 1e-3 - 1e-7)
  again = make_encoder(25, 10, family, rank, hidden_units=16, seed=3)
  for a, b in zip(encoder.get_weights(), again.get_weights()):
    np.testing.assert_array_equal(a, b)
  with pytest.raises(ValueError, match='too large'):
    make_encoder(256, 100, 'full')


@pytest.mark.parametrize('family', ['diagonal', 'lowrank'])
def test_training_raises_the_full_data_elbo(x, family):
  model, history = fit_amortized(x, 10, family=family, rank=2, epochs=4,
                                 learning_rate=1e-2, **SMALL)
  # Untrained start (same seed, zero epochs) for comparison.
  start, _ = fit_amortized(x, 10, family=family, rank=2, epochs=0,
                           learning_rate=1e-2, **SMALL)
  before = evaluate_amortized(start, x)['elbo']
  assert history['elbo'][-1] > before + 2.0, (before, history['elbo'])
  np.testing.assert_allclose(np.linalg.norm(model.dictionary, axis=0), 1,
                             atol=1e-5)


def test_step_reports_the_entropy_elbo_of_its_batch(x):
  model, _ = fit_amortized(x, 10, epochs=1, **SMALL)
  batch = x[:64]
  logs = model.test_on_batch(batch, return_dict=True)
  direct = entropy_elbo(batch, model.dictionary, model.posterior(batch))
  np.testing.assert_allclose(logs['elbo'], float(direct.elbo), rtol=1e-5)
  np.testing.assert_allclose(logs['sigma2'], float(direct.noise_variance),
                             rtol=1e-5)


def test_annealing_callback_and_annealed_objective(x):
  model, history = fit_amortized(x, 10, epochs=3,
                                 schedule=get_schedule('prior_linear'), **SMALL)
  np.testing.assert_allclose(history['a_prior'], [2.0, 1.9, 1.8], atol=1e-6)
  batch = x[:64]
  logs = model.test_on_batch(batch, return_dict=True)  # a_prior = 1.8 now
  expected = (logs['q_entropy'] - 1.8 * logs['prior_entropy']
              - logs['likelihood_entropy'])
  np.testing.assert_allclose(logs['objective'], expected, rtol=1e-5)
  assert abs(logs['objective'] - logs['elbo']) > 1e-3


def test_full_data_evaluation_independent_of_batch_size(x):
  model, _ = fit_amortized(x, 10, epochs=1, **SMALL)
  whole = entropy_elbo(x, model.dictionary, model.posterior(x))
  for batch_size in (256, 100, 64):
    values = evaluate_amortized(model, x, batch_size)
    np.testing.assert_allclose(values['elbo'], float(whole.elbo), rtol=1e-5)


def test_resume_equals_uninterrupted_run(x, tmp_path):
  options = dict(SMALL, schedule=get_schedule('prior_linear'))
  whole, whole_history = fit_amortized(x, 10, epochs=3, **options)
  path = str(tmp_path / 'state.npz')
  fit_amortized(x, 10, epochs=2, checkpoint_path=path, **options)
  resumed, history = fit_amortized(x, 10, epochs=3, checkpoint_path=path,
                                   resume=True, **options)
  np.testing.assert_allclose(resumed.dictionary, whole.dictionary, atol=1e-5)
  np.testing.assert_allclose(history['elbo'], whole_history['elbo'],
                             rtol=1e-5)
  assert history['epoch'] == [0, 1, 2]


def test_bad_input_raises(x):
  bad = x.copy()
  bad[1, 1] = np.inf
  with pytest.raises(ValueError, match='x holds 1 NaN or inf'):
    fit_amortized(bad, 10, **SMALL)
  with pytest.raises(ValueError, match='batch_size must be in'):
    fit_amortized(x, 10, epochs=1, hidden_units=8, batch_size=1000)
  with pytest.raises(ValueError, match='posterior family must be one of'):
    fit_amortized(x, 10, family='spherical', **SMALL)
  model, _ = fit_amortized(x, 10, epochs=0, **SMALL)
  with pytest.raises(ValueError, match='their D differ'):
    entropy_elbo(x[:, :24], model.dictionary, model.posterior(x))



def test_float64_training_reports_float64_terms():
  x64 = make_bars(128, seed=4).x
  model, history = fit_amortized(x64, 10, epochs=1, **SMALL)
  assert model.v.dtype == 'float64'
  batch = x64[:64]
  logs = model.test_on_batch(batch, return_dict=True)
  direct = entropy_elbo(batch, model.dictionary, model.posterior(batch))
  np.testing.assert_allclose(logs['elbo'], float(direct.elbo), rtol=1e-12)
  assert len(history['elbo']) == 1
