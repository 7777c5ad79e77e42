"""The importance-weighted bound against log p(x) computed by quadrature.

With D = H = 1 the marginal likelihood p(x) = int Laplace(z; 0, lambda)
N(x; w z, sigma^2) dz is a one-dimensional integral, computed here by
quadrature. The importance-weighted bound with K samples,
log (1/K) sum_k p(x, z_k) / q(z_k), rises towards log p(x) as K grows
(Burda et al.), so with a good proposal and K = 20000 it must equal
log p(x) to within its Monte-Carlo error: a value, not a property. Each
ingredient can fail it: dropping the -log K (off by log K = 9.9), a wrong
log q or log p(x, z), or samples not drawn from q.
"""

import math

import numpy as np
import pytest
import scipy.integrate
import scipy.stats

from tfp_esc.model.sparse_coding import SparseCodingModel
from tfp_esc.objective.sampled import importance_weighted_bound, sampled_elbo
from tfp_esc.posterior.gaussian import DiagonalGaussian

LAMBDA, SIGMA, W = 1.3, 0.4, 1.0
X = np.array([[-2.0], [0.1], [0.9], [3.5]])


def _log_marginal(x):
  def integrand(z):
    return (scipy.stats.laplace.pdf(z, scale=LAMBDA)
            * scipy.stats.norm.pdf(x, loc=W * z, scale=SIGMA))
  # Split at the prior's kink; the tails beyond +-60 weigh < 1e-19.
  value = sum(scipy.integrate.quad(integrand, a, b, epsabs=1e-14,
                                   epsrel=1e-12)[0]
              for a, b in ((-60.0, 0.0), (0.0, 60.0)))
  return math.log(value)


def _setup():
  model = SparseCodingModel(np.array([[W]]), np.array([LAMBDA]), SIGMA**2)
  # A proposal near the posterior: the likelihood's mean shrunk a little,
  # slightly wider (heavier than the posterior, so the weights are bounded).
  posterior = DiagonalGaussian(0.9 * X, np.full_like(X, 1.3 * SIGMA))
  truth = np.array([_log_marginal(x) for x in X[:, 0]])
  return model, posterior, truth


def test_bound_with_many_samples_is_log_p_x():
  model, posterior, truth = _setup()
  bound = importance_weighted_bound(X, model, posterior, 20000, seed=0)
  per_point = bound.per_point.numpy()
  # Monte-Carlo error of log-mean-exp with K = 20000 good weights: ~1e-3.
  np.testing.assert_allclose(per_point, truth, rtol=0, atol=5e-3)
  # A lower bound in expectation: never far above the truth.
  assert np.all(per_point < truth + 5e-3)


def test_bound_rises_with_k_towards_log_p_x():
  model, posterior, truth = _setup()
  gaps = [float(np.mean(truth - importance_weighted_bound(
      X, model, posterior, k, seed=1).per_point.numpy())) for k in (1, 10)]
  # K = 1 is the ELBO (up to sampling); at K = 10 most of the gap is closed
  # (the rest is within Monte-Carlo error: K = 1000 measured -0.02).
  elbo = sampled_elbo(X, model, posterior, 20000, seed=2).mean.numpy()
  assert gaps[0] == pytest.approx(float(np.mean(truth)) - float(elbo),
                                  abs=0.15)
  assert gaps[0] > 0.1 and abs(gaps[1]) < 0.5 * gaps[0]
