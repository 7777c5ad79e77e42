"""Tests of tfp_esc.objective.annealing: the paper's reference schedules."""

import dataclasses

import numpy as np
import pytest
import tensorflow as tf

from tfp_esc.objective import annealing


def _prior(schedule, steps):
  return [schedule(step).prior for step in range(steps)]


def test_no_annealing_is_all_ones():
  schedule = annealing.get_schedule('none')
  assert isinstance(schedule, annealing.NoAnnealing)
  for step in (0, 1, 100):
    assert schedule(step) == annealing.AnnealingCoefficients(1.0, 1.0, 1.0)
    assert not schedule.is_annealed(step)


def test_prior_em_reference_schedule():
  # SPEC 6: a_prior = max(1, 2 (5 - epoch)).
  schedule = annealing.get_schedule('prior')
  assert _prior(schedule, 8) == [10.0, 8.0, 6.0, 4.0, 2.0, 1.0, 1.0, 1.0]
  assert [schedule.is_annealed(step) for step in range(7)] == [
      True, True, True, True, True, False, False]
  for step in range(8):
    assert schedule(step).q == 1.0
    assert schedule(step).likelihood == 1.0
  assert schedule == annealing.PriorAnnealing.em() == annealing.PriorAnnealing()


def test_prior_em_custom_slope_and_offset():
  schedule = annealing.PriorAnnealing.em(slope=3.0, offset=2.0)
  assert _prior(schedule, 4) == [6.0, 3.0, 1.0, 1.0]


def test_prior_linear_reference_schedule():
  # SPEC 6: amortized a_prior = max(1, 2 - 0.1 epoch): 2, 1.9, ..., 1.0, 1.
  schedule = annealing.get_schedule('prior_linear')
  np.testing.assert_allclose(_prior(schedule, 14),
                             [2.0 - 0.1 * k for k in range(11)] + [1.0] * 3,
                             rtol=0, atol=1e-12)
  # Annealing ends exactly at step 10 despite 2 - 0.1 * 10 in floating point.
  assert schedule.is_annealed(9)
  assert schedule(10).prior == 1.0
  assert not schedule.is_annealed(10)
  assert schedule == annealing.PriorAnnealing.linear(start=2.0, rate=0.1)


def test_likelihood_reference_schedule():
  schedule = annealing.get_schedule('likelihood')
  coefficients = [schedule(step) for step in range(9)]
  np.testing.assert_allclose([c.likelihood for c in coefficients],
                             [1 / 7, 1 / 6, 1 / 5, 1 / 4, 1 / 3, 1 / 2,
                              1, 1, 1],
                             rtol=1e-15)
  assert all(c.q == 1.0 and c.prior == 1.0 for c in coefficients)
  assert schedule.is_annealed(5)
  assert not schedule.is_annealed(6)


def test_likelihood_custom_values():
  schedule = annealing.get_schedule('likelihood', values=[0.25, 0.5])
  assert [schedule(k).likelihood for k in range(3)] == [0.25, 0.5, 1.0]


def test_beta_default_is_linear_warm_up():
  schedule = annealing.get_schedule('beta')
  betas = [schedule(step).q for step in range(12)]
  np.testing.assert_allclose(
      betas, [0.1 + 0.09 * k for k in range(10)] + [1, 1], rtol=1e-12)
  for step in range(12):
    coefficients = schedule(step)
    assert coefficients.prior == coefficients.q
    assert coefficients.likelihood == 1.0
  assert schedule.is_annealed(9)
  assert not schedule.is_annealed(10)
  assert schedule == annealing.BetaAnnealing.linear()


def test_beta_values_and_decay_from_above():
  schedule = annealing.get_schedule('beta', values=(4.0, 2.0))
  assert [(schedule(k).q, schedule(k).prior) for k in range(3)] == [
      (4.0, 4.0), (2.0, 2.0), (1.0, 1.0)]
  decaying = annealing.BetaAnnealing.linear(start=3.0, num_steps=4)
  assert [decaying(k).q for k in range(5)] == [3.0, 2.5, 2.0, 1.5, 1.0]


def test_step_accepts_numpy_and_tf_integers():
  schedule = annealing.get_schedule('prior')
  assert schedule(np.int64(1)).prior == 8.0
  assert schedule(np.array(2)).prior == 6.0
  assert schedule(tf.constant(3)).prior == 4.0
  assert schedule(tf.Variable(4, dtype=tf.int64)).prior == 2.0


def test_name_is_case_insensitive():
  assert annealing.get_schedule('Prior') == annealing.get_schedule('prior')


def test_unknown_name_lists_valid_names():
  with pytest.raises(ValueError, match=r"name must be one of none, prior, "
                     r"prior_linear, likelihood, beta; got 'cosine'"):
    annealing.get_schedule('cosine')


def test_wrong_keyword_names_the_accepted_ones():
  with pytest.raises(ValueError, match=r"get_schedule\('prior'\).*\['start'\]"
                     r".*accepts: slope, offset"):
    annealing.get_schedule('prior', start=3.0)


@pytest.mark.parametrize('name', annealing.SCHEDULE_NAMES)
def test_negative_step_raises(name):
  schedule = annealing.get_schedule(name)
  with pytest.raises(ValueError, match='step must be an integer >= 0, got -1'):
    schedule(-1)
  with pytest.raises(ValueError, match='step must be an integer >= 0'):
    schedule.is_annealed(-3)


@pytest.mark.parametrize('step', [1.0, True, '2', np.array([1]),
                                  np.float32(2.0)])
def test_non_integer_step_raises(step):
  with pytest.raises(TypeError, match='step must be an integer'):
    annealing.get_schedule('prior')(step)


@pytest.mark.parametrize('make, match', [
    (lambda: annealing.LikelihoodAnnealing(values=(0.5, 0.0)),
     r'values\[1\] must be positive and finite, got 0.0'),
    (lambda: annealing.LikelihoodAnnealing(values=(-0.5,)),
     r'values\[0\] must be positive'),
    (lambda: annealing.BetaAnnealing(values=(float('nan'),)),
     r'values\[0\] must be positive and finite'),
    (lambda: annealing.BetaAnnealing(values=()),
     'values must hold at least one value'),
    (lambda: annealing.BetaAnnealing.linear(num_steps=0),
     'num_steps must be an integer >= 1, got 0'),
    (lambda: annealing.BetaAnnealing.linear(start=0.0),
     'start must be positive'),
    (lambda: annealing.PriorAnnealing(start=0.5),
     r'start must be >= 1 .*got 0.5'),
    (lambda: annealing.PriorAnnealing(rate=-0.1),
     'rate must be positive and finite, got -0.1'),
    (lambda: annealing.PriorAnnealing.em(slope=0.1, offset=5.0),
     'slope \\* offset must be >= 1'),
    (lambda: annealing.AnnealingCoefficients(q=0.0),
     'AnnealingCoefficients.q must be positive'),
    (lambda: annealing.AnnealingCoefficients(likelihood=float('inf')),
     'AnnealingCoefficients.likelihood must be positive and finite'),
])
def test_invalid_values_raise(make, match):
  with pytest.raises(ValueError, match=match):
    make()


def test_coefficients_are_frozen_floats():
  coefficients = annealing.AnnealingCoefficients(q=1, prior=np.float32(2.0),
                                                 likelihood=1)
  assert type(coefficients.prior) is float
  assert coefficients.is_annealed
  with pytest.raises(dataclasses.FrozenInstanceError):
    coefficients.prior = 1.0
