"""The amortization gap: a re-fit of the posteriors never lowers F."""

import numpy as np
import pytest

from tfp_esc.data.bars import make_bars
from tfp_esc.evaluation import evaluate
from tfp_esc.evaluation.evaluate import amortization_gap
from tfp_esc.inference.amortized import evaluate_amortized, fit_amortized


@pytest.fixture(scope='module')
def trained():
  x = make_bars(num_points=300, seed=1).x
  model, _ = fit_amortized(x, 10, epochs=40, batch_size=100, seed=0,
                           hidden_units=32, verbose=0)
  return x, model


@pytest.mark.parametrize('iterations', [1, 300])
def test_refit_never_lowers_the_encoders_elbo(trained, iterations):
  x, model = trained
  gap = amortization_gap(model, x, iterations=iterations)
  np.testing.assert_allclose(gap['encoder_elbo'],
                             evaluate_amortized(model, x)['elbo'], rtol=1e-6)
  # Warm start plus a monotone E-step: >= 0 after a single iteration too.
  assert gap['refit_elbo'] >= gap['encoder_elbo'] - 1e-6 * abs(
      gap['encoder_elbo'])
  assert gap['gap'] == pytest.approx(gap['refit_elbo'] - gap['encoder_elbo'])
  if iterations > 1:
    # A briefly trained encoder is far from the per-point optimum.
    assert gap['gap'] > 0.5


def test_bad_arguments(trained):
  x, model = trained
  with pytest.raises(ValueError, match='iterations'):
    amortization_gap(model, x, iterations=0)
  with pytest.raises(ValueError, match='x'):
    amortization_gap(model, x[:0])


def test_a_second_gap_reuses_the_compiled_refit_and_not_the_data(trained):
  # The diagonal re-fit is compiled once per process; data, dictionary,
  # start, floor and iterations are arguments. The gap on other data of the
  # same shape must not trace again and must equal, bit for bit, the gap
  # with a fresh trace.
  x, model = trained
  other = make_bars(num_points=300, seed=7).x
  evaluate._refit_e_step.cache_clear()
  fresh = amortization_gap(model, other, iterations=20)
  evaluate._refit_e_step.cache_clear()
  first = amortization_gap(model, x, iterations=10)
  reused = amortization_gap(model, other, iterations=20)
  assert evaluate._refit_e_step().experimental_get_tracing_count() == 1
  assert first['refit_elbo'] != reused['refit_elbo']
  for key in ('encoder_elbo', 'refit_elbo', 'refit_noise_variance'):
    assert reused[key] == fresh[key], key


def test_lowrank_refit_starts_at_the_encoder_and_never_lowers_it():
  # The correlated families' re-fit (joint L-BFGS) is warm-started at the
  # model's posteriors, so one short call already cannot end below the
  # encoder's F (from a fresh start it would, far below).
  x = make_bars(num_points=300, seed=1).x
  model, _ = fit_amortized(x, 10, posterior='lowrank', rank=2, epochs=40,
                           batch_size=100, seed=0, hidden_units=32,
                           verbose=0)
  gap = amortization_gap(model, x, max_calls=1)
  assert gap['refit_elbo'] >= gap['encoder_elbo'] - 1e-5 * abs(
      gap['encoder_elbo'])
  assert gap['gap'] > 0.5
  with pytest.raises(ValueError, match='max_calls'):
    amortization_gap(model, x, max_calls=0)

