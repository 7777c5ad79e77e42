"""`classical_elbo_from_statistics`: L from the sums F is computed from.

Checked in float64 against `classical_elbo` (the per-point formula) at
arbitrary lambda, sigma^2, against F at lambda*, sigma^2* (Theorem 1), and
its annealed objective against the weighted terms.
"""

import numpy as np
import pytest
import tensorflow as tf

from tfp_esc.objective.elbo import (
  classical_elbo,
  classical_elbo_from_statistics,
  elbo_statistics,
  entropy_elbo,
  entropy_elbo_from_statistics,
  held_prior_elbo_from_statistics,
)
from tfp_esc.posterior.gaussian import DiagonalGaussian, FullGaussian

N, D, H = 6, 5, 3


def _inputs(family, seed=0):
  rng = np.random.default_rng(seed)
  x = rng.standard_normal((N, D))
  w = rng.standard_normal((D, H))
  w /= np.linalg.norm(w, axis=0)
  loc = rng.standard_normal((N, H))
  if family == 'diagonal':
    q = DiagonalGaussian(loc, rng.uniform(0.2, 1.5, (N, H)))
  else:
    tril = np.tril(rng.standard_normal((N, H, H)) * 0.3)
    tril[:, np.arange(H), np.arange(H)] = rng.uniform(0.2, 1.5, (N, H))
    q = FullGaussian(loc, tril)
  return x, w, q


@pytest.mark.parametrize('family', ['diagonal', 'full'])
def test_equals_classical_elbo_at_any_parameters(family):
  x, w, q = _inputs(family)
  scales = np.array([0.3, 1.7, 0.9])
  noise_variance = 0.42
  terms = classical_elbo_from_statistics(elbo_statistics(x, w, q), D, scales,
                                         noise_variance)
  expected = classical_elbo(x, w, q, scales, noise_variance).numpy()
  np.testing.assert_allclose(terms.elbo.numpy(), expected, rtol=1e-12)
  np.testing.assert_allclose(
      terms.elbo.numpy(), (terms.q_entropy - terms.prior_entropy
                           - terms.likelihood_entropy).numpy(), rtol=1e-12)
  np.testing.assert_allclose(terms.scales.numpy(), scales)
  # Per point: count 1 and each point's own sums give L_n.
  per_point = classical_elbo(x, w, q, scales, noise_variance,
                             per_point=True).numpy()
  rows = [elbo_statistics(x[n:n + 1], w, DiagonalGaussian(
      q.loc[n:n + 1], q.marginal_stddev()[n:n + 1])) for n in range(N)]
  if family == 'diagonal':
    stacked = type(rows[0])(*(tf.stack(v) for v in zip(*rows)))
    batched = classical_elbo_from_statistics(stacked, D, scales,
                                             noise_variance)
    np.testing.assert_allclose(batched.elbo.numpy(), per_point, rtol=1e-12)


@pytest.mark.parametrize('family', ['diagonal', 'full'])
def test_equals_entropy_elbo_at_optimal_parameters(family):
  x, w, q = _inputs(family, seed=1)
  statistics = elbo_statistics(x, w, q)
  f = entropy_elbo_from_statistics(statistics, D)
  terms = classical_elbo_from_statistics(statistics, D, f.scales,
                                         f.noise_variance)
  for k in ('elbo', 'q_entropy', 'prior_entropy', 'likelihood_entropy'):
    np.testing.assert_allclose(getattr(terms, k).numpy(),
                               getattr(f, k).numpy(), rtol=1e-12, err_msg=k)
  # Any other lambda, sigma^2 give a lower value (Theorem 2).
  lower = classical_elbo_from_statistics(statistics, D, f.scales * 1.1,
                                         f.noise_variance * 0.9)
  assert lower.elbo.numpy() < f.elbo.numpy() - 1e-6
  np.testing.assert_allclose(f.elbo.numpy(),
                             entropy_elbo(x, w, q).elbo.numpy(), rtol=1e-12)


def test_annealed_objective():
  x, w, q = _inputs('diagonal', seed=2)
  a = (0.7, 2.5, 0.4)
  terms = classical_elbo_from_statistics(elbo_statistics(x, w, q), D,
                                         np.ones(H), 0.8, *a)
  expected = (a[0] * terms.q_entropy - a[1] * terms.prior_entropy
              - a[2] * terms.likelihood_entropy)
  np.testing.assert_allclose(terms.objective.numpy(), expected.numpy(),
                             rtol=1e-12)


@pytest.mark.parametrize('a_prior', [1.0, 0.5, 2.0])
def test_held_prior_objective(a_prior):
  # a_prior > 1: L_a at the held lambda and sigma^2* (per-point formula);
  # a_prior <= 1: F_a itself. F, lambda*, sigma^2* are F's either way.
  x, w, q = _inputs('diagonal', seed=3)
  held = np.array([0.3, 1.7, 0.9])
  a = (0.8, a_prior, 1.3)
  statistics = elbo_statistics(x, w, q)
  terms = held_prior_elbo_from_statistics(statistics, D, held, *a)
  f = entropy_elbo_from_statistics(statistics, D, *a)
  for k in ('elbo', 'q_entropy', 'prior_entropy', 'likelihood_entropy',
            'noise_variance', 'scales'):
    np.testing.assert_allclose(getattr(terms, k).numpy(),
                               getattr(f, k).numpy(), rtol=1e-12, err_msg=k)
  if a_prior <= 1.0:
    expected = f.objective.numpy()
  else:
    # Per point L_n = H[q_n] - CE_prior,n - CE_lik,n at (held, sigma^2*);
    # the mean of CE_lik,n at sigma^2* is F's likelihood entropy (Theorem 1).
    per_point = classical_elbo(x, w, q, held, f.noise_variance,
                               per_point=True).numpy()
    entropies = q.entropy().numpy()
    likelihood = float(f.likelihood_entropy.numpy())
    prior = np.mean(entropies - per_point) - likelihood
    expected = (a[0] * np.mean(entropies) - a[1] * prior
                - a[2] * likelihood)
  np.testing.assert_allclose(terms.objective.numpy(), expected, rtol=1e-10)
