"""The amortization gap: a re-fit of the posteriors never lowers F."""

import numpy as np
import pytest

from tfp_esc.data.bars import make_bars
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
