"""Evaluating any dictionary with the entropy ELBO (SPEC 10, last item).

Normalise the columns of a dictionary (e.g. one learned with MAP / l1 sparse
coding), fit the variational parameters with the dictionary frozen, and
report F, its entropies, sigma^2*, lambda*, the Gini index of posterior
samples and an importance-weighted bound of log p(x) (SPEC 12).
"""

import numpy as np

from tfp_esc import _checks
from tfp_esc.evaluation.metrics import posterior_gini
from tfp_esc.inference.joint import fit_joint
from tfp_esc.model.sparse_coding import SparseCodingModel
from tfp_esc.objective.sampled import importance_weighted_bound

__all__ = ['evaluate_dictionary']


def evaluate_dictionary(x, dictionary, *, posterior='diagonal', rank=2,
                        num_iw_samples=100, gini_samples=10, seed=0,
                        max_calls=20, max_iterations=200, log_every=0):
  """Scores a frozen dictionary on data x by the entropy ELBO.

  Args:
    x: `[N, D]` float data.
    dictionary: `[D, H]` float, any column norms (normalised here; the norms
      of a MAP dictionary are absorbed by lambda*).
    posterior: 'diagonal', 'full' or 'lowrank'.
    rank: R for 'lowrank'.
    num_iw_samples: K of the importance-weighted bound (0: skip it).
    gini_samples: posterior samples per point for the Gini index.
    seed: seeds the fit, the Gini samples and the bound.
    max_calls, max_iterations: L-BFGS budget for the variational fit.
    log_every: progress logging of the fit (0: none).

  Returns:
    dict: 'elbo' (F per data point), 'entropies' {'q', 'prior',
    'likelihood'}, 'sigma2', 'scales' (list), 'gini' {'mean', 'sd'},
    'log_likelihood_bound' {'mean', 'stderr', 'num_samples'} (or None).

  Raises:
    ValueError: mismatched D (both shapes printed), a zero column, NaN/inf.
  """
  x = np.asarray(x)
  dictionary = np.asarray(dictionary, dtype=x.dtype if x.dtype in (
      np.float32, np.float64) else np.float64)
  if x.ndim != 2 or dictionary.ndim != 2:
    raise ValueError(f'x must be [N, D] and dictionary [D, H]; got shapes '
                     f'{x.shape} and {dictionary.shape}.')
  if x.shape[1] != dictionary.shape[0]:
    raise ValueError(f'x has shape {x.shape} but dictionary has shape '
                     f'{dictionary.shape}: their D differ.')
  _checks.check_finite(dictionary, 'dictionary')
  norms = np.linalg.norm(dictionary, axis=0)
  if np.any(norms == 0):
    raise ValueError(f'dictionary has zero columns at '
                     f'{np.flatnonzero(norms == 0).tolist()}.')
  fit = fit_joint(x.astype(dictionary.dtype), init_dictionary=dictionary,
                  train_dictionary=False, posterior=posterior, rank=rank,
                  max_calls=max_calls, max_iterations=max_iterations,
                  seed=seed, log_every=log_every)
  gini_mean, gini_sd = posterior_gini(fit.posterior, gini_samples, seed=seed)
  bound = None
  if num_iw_samples:
    model = SparseCodingModel(fit.dictionary, fit.scales, fit.noise_variance)
    iw = importance_weighted_bound(x.astype(dictionary.dtype), model,
                                   fit.posterior, num_iw_samples, seed=seed)
    bound = {'mean': float(iw.mean), 'stderr': float(iw.stderr),
             'num_samples': int(num_iw_samples)}
  trace = fit.trace
  return {
      'elbo': fit.elbo,
      'entropies': {'q': float(trace['q_entropy'][-1]),
                    'prior': float(trace['prior_entropy'][-1]),
                    'likelihood': float(trace['likelihood_entropy'][-1])},
      'sigma2': fit.noise_variance,
      'scales': fit.scales.tolist(),
      'gini': {'mean': gini_mean, 'sd': gini_sd},
      'log_likelihood_bound': bound,
      'converged': fit.converged,
  }
