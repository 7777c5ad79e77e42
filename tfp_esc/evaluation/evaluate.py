"""Evaluating any dictionary with the entropy ELBO (SPEC 10, last item; SPEC 12).

`evaluate_dictionary`: normalise the columns of a dictionary (e.g. one learned
with MAP / l1 sparse coding), fit the variational parameters with the
dictionary frozen, and report F, its entropies, sigma^2*, lambda*, the Gini
index of posterior samples and an importance-weighted bound of log p(x)
(SPEC 12).

`evaluate_heldout`: the same on data the model was not trained on, with the
trained lambda and sigma^2 frozen as well: the variational parameters
maximise the classical ELBO L(lambda, sigma^2), and L is reported (F would
use the lambda*, sigma^2* of the test data, i.e. refit part of the model).
"""

import functools
import math

import numpy as np

from tfp_esc import _checks
from tfp_esc.evaluation.metrics import posterior_gini
from tfp_esc.inference._training import RELATIVE_SCALE_FLOOR, data_scale
from tfp_esc.inference.joint import SCALE_FLOOR as JOINT_SCALE_FLOOR
from tfp_esc.inference.joint import fit_joint
from tfp_esc.model.sparse_coding import SparseCodingModel
from tfp_esc.objective.sampled import importance_weighted_bound
from tfp_esc.posterior.gaussian import FAMILIES

__all__ = ['amortization_gap', 'evaluate_dictionary', 'evaluate_heldout']


def evaluate_dictionary(x, dictionary, *, posterior='diagonal', rank=2,
                        num_iw_samples=100, gini_samples=10, seed=0,
                        max_calls=20, max_iterations=200, log_every=0,
                        jit_compile=True):
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
    jit_compile: compile the variational fit with XLA (faster iterations;
      compiling costs seconds, which dominates on small data; it is paid
      once per process for each data shape and setting, see `fit_joint`).

  Returns:
    dict: 'elbo' (F per data point), 'entropies' {'q', 'prior',
    'likelihood'}, 'noise_variance', 'scales' (list), 'gini' {'mean', 'sd'},
    'log_likelihood_bound' {'mean', 'stderr', 'num_samples'} (or None),
    'converged'.

  Raises:
    TypeError: an argument of the wrong type (see `tfp_esc._checks`).
    ValueError: mismatched D (both shapes printed), a zero column, NaN/inf
      or empty data, data whose rows are all the same (F is unbounded
      there), counts out of range; all before any work.
  """
  return _evaluate(x, dictionary, None, None, posterior=posterior, rank=rank,
                   num_iw_samples=num_iw_samples, gini_samples=gini_samples,
                   seed=seed, max_calls=max_calls,
                   max_iterations=max_iterations, log_every=log_every,
                   jit_compile=jit_compile)


def evaluate_heldout(x, dictionary, scales, noise_variance, *,
                     posterior='diagonal', rank=2, num_iw_samples=100,
                     gini_samples=10, seed=0, max_calls=20,
                     max_iterations=200, log_every=0, jit_compile=True):
  """Scores a trained model (W, lambda, sigma^2) on held-out data x (SPEC 12).

  The variational parameters are fitted with W, lambda and sigma^2 frozen,
  maximising the classical ELBO

    L = (1/N) sum_n H[q_n] - CE_prior - CE_lik,
    CE_prior = -(1/N) sum_n E_q log p(z | lambda),
    CE_lik   = -(1/N) sum_n E_q log p(x_n | z, sigma^2),

  a lower bound of (1/N) log p(x | W, lambda, sigma^2). At lambda = lambda*,
  sigma^2 = sigma^2* of x the cross-entropies are the entropies of F and
  L = F (Theorem 1); at any other values L < F of the same data.

  The model is p(x | z) = N(x; dictionary z, sigma^2 I), z ~ Laplace(scales):
  a dictionary with column norms c_h is the unit-norm model W = dictionary / c
  with lambda_h = c_h scales_h, which is the one evaluated and reported (so
  scales = 1 with a free MAP dictionary is the original model of Eq. 1; for
  a unit-norm dictionary the scales are unchanged).

  Args:
    x: `[N, D]` float data, not used in training.
    dictionary: `[D, H]` float, trained dictionary (any column norms).
    scales: `[H]` positive float, trained lambda (for `dictionary`'s columns).
    noise_variance: positive scalar, trained sigma^2.
    Other arguments: as in `evaluate_dictionary`.

  Returns:
    dict with the keys of `evaluate_dictionary`: 'elbo' (L(lambda, sigma^2)
    per data point), 'entropies' {'q': (1/N) sum_n H[q_n], 'prior': CE_prior,
    'likelihood': CE_lik} (elbo = q - prior - likelihood), 'noise_variance' and
    'scales' (the frozen values of the unit-norm model), 'gini',
    'log_likelihood_bound' (the importance-weighted bound of
    log p(x | W, lambda, sigma^2) with the fitted q as proposal, or None),
    'converged'.

  Any finite data can be scored (also a single point or all zeros: with
  lambda and sigma^2 frozen L is bounded). Scaling x by c, with scales by c
  and noise_variance by c^2, moves 'elbo' by -D log c and leaves the fit
  otherwise the same (the fit works in units of sqrt(noise_variance)).

  Raises:
    TypeError: an argument of the wrong type (see `tfp_esc._checks`).
    ValueError: mismatched D (both shapes printed), a zero column, NaN/inf
      or empty data; scales not `[H]` or noise_variance not a scalar (shapes
      printed); scales or noise_variance not positive and finite.
  """
  return _evaluate(x, dictionary, scales, noise_variance,
                   posterior=posterior, rank=rank,
                   num_iw_samples=num_iw_samples, gini_samples=gini_samples,
                   seed=seed, max_calls=max_calls,
                   max_iterations=max_iterations, log_every=log_every,
                   jit_compile=jit_compile)


def _evaluate(x, dictionary, scales, noise_variance, *, posterior, rank,
              num_iw_samples, gini_samples, seed, max_calls, max_iterations,
              log_every, jit_compile):
  """Both evaluations: F (scales, noise_variance None) or L at them."""
  # Every argument checked before any work (`tfp_esc._checks`); fit_joint
  # checks the rest of its own.
  x = _checks.check_data(x, 'x')
  dictionary = _checks.check_data(dictionary, 'dictionary').astype(x.dtype)
  if x.shape[1] != dictionary.shape[0]:
    raise ValueError(f'x has shape {x.shape} but dictionary has shape '
                     f'{dictionary.shape}: their D differ.')
  norms = np.linalg.norm(dictionary, axis=0)
  if np.any(norms == 0):
    raise ValueError(f'dictionary has zero columns at '
                     f'{np.flatnonzero(norms == 0).tolist()}.')
  _checks.check_choice(posterior, 'posterior', FAMILIES)
  _checks.check_count(num_iw_samples, 'num_iw_samples', 0)
  _checks.check_count(gini_samples, 'gini_samples')
  _checks.check_count(seed, 'seed', 0)
  if scales is None and noise_variance is None:
    data_scale(x)  # F needs data with variation (refused here, not later)
  elif scales is not None:
    scales = np.asarray(scales)
    if scales.dtype.kind not in 'fiu':
      raise TypeError(f'scales must be a real array, got dtype '
                      f'{scales.dtype}.')
    scales = scales.astype(dictionary.dtype)
    if scales.shape != norms.shape:
      raise ValueError(f'scales must have shape [H] = {list(norms.shape)} '
                       f'for dictionary of shape {dictionary.shape}, got '
                       f'shape {scales.shape}.')
    _checks.check_positive(scales, 'scales')
    scales = scales * norms  # lambda of the unit-norm model
  fit = fit_joint(x, init_dictionary=dictionary,
                  train_dictionary=False, posterior=posterior, rank=rank,
                  max_calls=max_calls, max_iterations=max_iterations,
                  seed=seed, log_every=log_every, jit_compile=jit_compile,
                  scales=scales, noise_variance=noise_variance)
  gini_mean, gini_sd = posterior_gini(fit.posterior, gini_samples, seed=seed)
  bound = None
  if num_iw_samples:
    model = SparseCodingModel(fit.dictionary, fit.scales, fit.noise_variance)
    iw = importance_weighted_bound(x, model,
                                   fit.posterior, num_iw_samples, seed=seed)
    bound = {'mean': float(iw.mean), 'stderr': float(iw.stderr),
             'num_samples': int(num_iw_samples)}
  trace = fit.trace
  return {
      'elbo': fit.elbo,
      'entropies': {'q': float(trace['q_entropy'][-1]),
                    'prior': float(trace['prior_entropy'][-1]),
                    'likelihood': float(trace['likelihood_entropy'][-1])},
      'noise_variance': fit.noise_variance,
      'scales': fit.scales.tolist(),
      'gini': {'mean': gini_mean, 'sd': gini_sd},
      'log_likelihood_bound': bound,
      'converged': fit.converged,
  }


def amortization_gap(model, x, *, iterations=300, batch_size=512,
                     max_calls=20):
  """What the encoder costs: F of a converged per-point re-fit minus the
  encoder's F, for the same dictionary and data (issue 11).

  The encoder's F is `evaluate_amortized` (full-data lambda*, sigma^2*),
  of the model's posteriors: refined ones where the model has
  `posterior_steps` > 0. The re-fit keeps the dictionary and fits every
  point's posterior:

  - diagonal: `mm_e_step` on the whole data set as one batch, warm-started
    at the model's posteriors (`amortized_posterior`), lambda*, sigma^2*
    free. Every iteration
    raises the full-data F, so the gap is >= 0 exactly.
  - lowrank, full: joint L-BFGS (`fit_joint`, the dictionary frozen)
    warm-started at the model's posteriors, lambda*, sigma^2* free.
    L-BFGS never lowers F, so here too the gap is >= 0 (up to rounding).
    From its own start (`evaluate_dictionary`, as before session 28) the
    fit took 90-100 s on 8,192 points at H = 64 and did not finish in
    15 minutes at H = 100, and the gap was >= 0 only up to convergence.

  Args:
    model: a trained `AmortizedSparseCoding`.
    x: `[N, D]` float data (usually the training data).
    iterations: majorise-minimise iterations of the diagonal re-fit.
    max_calls: L-BFGS calls (of 200 iterations) of the correlated
      families' re-fit; it stops early once F changes by less than 1e-7
      relative in a call.
    batch_size: rows per encoder evaluation.

  Returns:
    dict: 'encoder_elbo', 'refit_elbo' and 'gap' (nats per data point,
    refit - encoder), 'refit_noise_variance', and 'model': the whole
    `evaluate_amortized` dict of the model's posteriors, so a caller that
    reports it need not evaluate them again.

  Raises:
    TypeError, ValueError: bad arguments (named), before any work.
  """
  # Imported here: evaluation sits right of inference, and only this
  # function needs the amortized model and the E-step.
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from tfp_esc.inference.amortized import (  # pylint: disable=g-import-not-at-top
      amortized_posterior, evaluate_amortized)
  from tfp_esc.objective.elbo import entropy_elbo  # pylint: disable=g-import-not-at-top
  from tfp_esc.posterior.gaussian import DiagonalGaussian  # pylint: disable=g-import-not-at-top
  x = _checks.check_data(x)
  iterations = _checks.check_count(iterations, 'iterations')
  batch_size = _checks.check_count(batch_size, 'batch_size')
  max_calls = _checks.check_count(max_calls, 'max_calls')
  encoder = evaluate_amortized(model, x, batch_size=batch_size)
  dictionary = model.dictionary.numpy().astype(x.dtype)
  q = amortized_posterior(model, x, batch_size=batch_size)
  # Every re-fit keeps its scales above a floor below the start's.
  smallest = float(tf.reduce_min(q.floored_scale()))
  if model.family != 'diagonal':
    # fit_joint compiles once per floor (a static setting): a power of ten
    # lets the re-fits of other models on such data reuse the compilation.
    floor = min(JOINT_SCALE_FLOOR, 10.0**math.floor(
        math.log10(0.5 * smallest / data_scale(x))))
    refit = fit_joint(
        x, init_dictionary=dictionary, train_dictionary=False,
        posterior=model.family,
        rank=q.rank if model.family == 'lowrank' else None,
        init_posterior=q, max_calls=max_calls, max_iterations=200,
        scale_floor=floor, log_every=0)
    refit_elbo, refit_noise_variance = refit.elbo, refit.noise_variance
  else:
    loc, scale = q.loc.numpy(), q.scale.numpy()
    floor = min(RELATIVE_SCALE_FLOOR * data_scale(x), 0.5 * smallest)
    loc, scale = _refit_e_step()(
        tf.constant(x), tf.constant(dictionary), tf.constant(loc),
        tf.constant(scale), tf.constant(iterations),
        tf.constant(floor, x.dtype))
    terms = entropy_elbo(x, dictionary, DiagonalGaussian(loc, scale))
    refit_elbo = float(terms.elbo)
    refit_noise_variance = float(terms.noise_variance)
  return {'encoder_elbo': encoder['elbo'], 'refit_elbo': refit_elbo,
          'gap': refit_elbo - encoder['elbo'],
          'refit_noise_variance': refit_noise_variance, 'model': encoder}


@functools.cache
def _refit_e_step():
  """`amortization_gap`'s diagonal re-fit, compiled (XLA) once per process.

  Traced per dtype and shape; every value is an argument, so the gap of
  another model on data of the same shape (each run of a sweep, a resumed
  run) reuses the compilation.

  Returns:
    A `tf.function`: (x `[N, D]`, dictionary `[D, H]`, loc, scale `[N, H]`,
    iterations int32 scalar, floor scalar) -> (loc, scale) `[N, H]`, the
    `mm_e_step` with lambda*, sigma^2* free and no annealing.
  """
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from tfp_esc.inference.mm import mm_e_step  # pylint: disable=g-import-not-at-top

  def refit(x, dictionary, loc, scale, iterations, floor):
    return mm_e_step(x, dictionary, loc, scale, tf.ones([3], x.dtype),
                     iterations=iterations, floor=floor)

  # autograph=False: see `tfp_esc.inference.mm` ("Compiling it").
  return tf.function(refit, jit_compile=True, autograph=False)
