"""Joint L-BFGS over the dictionary and all variational parameters (SPEC 10).

The bars protocol of the paper: W (through an unconstrained V, W = V/||V||_col)
and every data point's variational parameters are optimised jointly by L-BFGS
on -F_a, the whole data set as one batch, with repeated L-BFGS calls (each a
fresh history) until the ELBO stops changing. With `train_dictionary=False`
the same routine fits only the variational parameters for a frozen
dictionary (e.g. the ground-truth ELBO of the bars).

Held-out evaluation (SPEC 12): with the dictionary frozen and `scales`
lambda and `noise_variance` sigma^2 given (e.g. those learned on training
data), the variational parameters maximise the classical ELBO
L(lambda, sigma^2) (SPEC 4) instead of F, which would use the lambda*,
sigma^2* of the data at hand. Per data point,

  L = H[q] - CE_prior - CE_lik,
  CE_prior = -E_q log p(z | lambda)
           = sum_h [log(2 lambda_h) + (1/N) sum_n A(nu_nh, sqrt(T_n,hh)) / lambda_h]
  CE_lik   = -E_q log p(x | z, sigma^2)
           = (D/2) log(2 pi sigma^2) + (1/N) sum_n E_q||x_n - W z||^2 / (2 sigma^2),

the cross-entropies that become the entropies H[p(z | lambda*)],
H[p(x | z, sigma^2*)] of F at lambda = lambda*, sigma^2 = sigma^2*
(Theorem 1).

L-BFGS: each call is SciPy's L-BFGS-B (a fresh history of
`num_correction_pairs` pairs, at most `max_iterations` iterations, no
tolerance: it runs until then or until its line search makes no progress)
on -N F_a, whose value and gradient are one compiled TensorFlow function;
the call ends at its evaluated point of lowest loss, so it never lowers the
objective. It replaced TFP's `lbfgs_minimize` (session 30), whose whole
call was one XLA graph: its Hager-Zhang line search spent about 3
evaluations per iteration where SciPy's More-Thuente search spends 1.03
to 1.2, and the graph took 13 s to compile on the bars against about 1 s
for the value and gradient alone. Measured beside it in one process
(`benchmarks/joint_lbfgs.py`, seed 0; seconds include compilation): the
README's bars demo (N = 1000, full covariances, until converged) 306 s ->
144 s, 87 -> 57 calls, ELBO -8.7222 -> -8.7303, all ten bars recovered
by both; a rank-5 re-fit of 4,096 unseen 16 x 16 patches for a fixed
dictionary (H = 64, float32) 70 s -> 54 s, ELBO 64.8686 -> 64.8616
(`benchmarks/results/joint_lbfgs_2026-12-03_s30.md`). The gain
shrinks with the size: SciPy's bookkeeping over P parameters (setulb,
about 64 ms per call at P = 1.8 million in that re-fit, twice per
iteration) then costs as much as an evaluation. Each evaluation copies
the position and gradient between NumPy and TensorFlow (a device's memory
on a GPU), small against the evaluation at these sizes.

Annealing schedules are indexed by the L-BFGS call: call k optimises F_a with
the coefficients `schedule(k)`. Prior annealing (a_prior > 1) makes F_a
unbounded above under a common shrinkage c of all codes (it grows by
(a_prior - a_q) H log(1/c)), and L-BFGS run to convergence finds that
direction: every code collapsed (0 of 10 bars runs recovered the bars). So
an annealed call holds lambda at lambda* of the call's start: the prior
entropy of F_a becomes the cross-entropy
sum_h [log(2 lambda_h) + lambda*_h / lambda_h], bounded below as the codes
shrink, while sigma^2 stays sigma^2*. lambda follows the codes from call to
call; with a_prior <= 1 the objective is F_a itself.

Where the first call is annealed, the posterior means start at the
least-squares codes of the initial dictionary, not at 0. From nu = 0 the
lambda* the first call holds is the start's (sqrt(2/pi) * init_scale), far
below the data's, and under that prior no code grows: on the bars every
annealed call stayed at the all-zero ELBO (-53.6), and a run recovered the
bars only if L-BFGS escaped that saddle once a_prior reached 1 (8 of 10
seeds, which ones turning on rounding). From least-squares codes lambda is
the data's, the first annealed call already ends near the final ELBO (-9.5
against -8.7), and 9 of 10 seeds recover all bars (the tenth ends in a local
optimum with a double bar, as the paper's failures do). Without annealing
the means start at 0 (the bars protocol): least-squares starts left 2 of
the first 5 seeds without all bars.
"""

import dataclasses
import functools
import math
import time
from typing import Callable, NamedTuple

import numpy as np
import scipy.optimize
import tensorflow as tf
from absl import logging

from tfp_esc import _checks
from tfp_esc.inference import _training
from tfp_esc.model.sparse_coding import normalize_columns
from tfp_esc.objective.elbo import (classical_elbo_from_statistics,
                                    elbo_statistics,
                                    entropy_elbo_from_statistics,
                                    held_prior_elbo_from_statistics)
from tfp_esc.posterior.gaussian import FAMILIES, get_family

__all__ = ['INIT_SCALE', 'JointFitResult', 'SCALE_FLOOR', 'fit_joint']

# Initial posterior standard deviation and scale floor, in units of the data
# scale s (the root mean square of x): on the bars (s = 2.02) they are the
# absolute 0.1 and 1e-3 with which the bars protocol was measured.
INIT_SCALE = 0.05
SCALE_FLOOR = 5e-4

TRACE_KEYS = ('elbo', 'objective', 'q_entropy', 'prior_entropy',
              'likelihood_entropy', 'noise_variance', 'a_q', 'a_prior',
              'a_lik', 'iterations', 'evaluations', 'seconds')


@dataclasses.dataclass
class JointFitResult:
  """What `fit_joint` learned.

  With frozen `scales` and `noise_variance` (held-out evaluation) `scales`,
  `noise_variance` are the frozen values, `elbo` is L(lambda, sigma^2) and the
  trace's 'prior_entropy' and 'likelihood_entropy' hold the cross-entropies
  CE_prior and CE_lik of the module doc (so elbo = q_entropy - prior_entropy
  - likelihood_entropy in both cases).

  Attributes:
    dictionary: `[D, H]` unit-norm W.
    scales: `[H]` lambda* at the end (or the frozen lambda).
    noise_variance: sigma^2* at the end (or the frozen sigma^2).
    elbo: final non-annealed F per data point (or L(lambda, sigma^2)).
    posterior: the fitted `GaussianPosterior` (N points).
    posterior_params: dict of unconstrained parameter arrays of the
      posterior of x / data_scale (the fit's own units; `posterior` is in
      x's units).
    trace: dict of `[num_calls + 1]` arrays (entry 0: the initial state),
      keys `TRACE_KEYS` plus 'call'.
    converged: whether the ELBO stopped changing before `max_calls`.
    data_scale: s, the power of two the fit divided x by (see
      `tfp_esc.inference._training`): means and scales of `posterior_params`
      are in units of s, `init_scale` and `scale_floor` were too.
  """
  dictionary: np.ndarray
  scales: np.ndarray
  noise_variance: float
  elbo: float
  posterior: object
  posterior_params: dict
  trace: dict
  converged: bool
  data_scale: float = 1.0


def fit_joint(x, num_latents=None, *, posterior='full', rank=None,
              schedule=None, init_dictionary=None, train_dictionary=True,
              max_calls=100, max_iterations=200, num_correction_pairs=10,
              tolerance=1e-7, init_scale=INIT_SCALE, scale_floor=SCALE_FLOOR,
              seed=0, jit_compile=True, log_every=1, scales=None,
              noise_variance=None, init_posterior=None):
  """Maximises the entropy ELBO by repeated joint L-BFGS calls.

  With `scales` and `noise_variance` given (and `train_dictionary=False`),
  maximises instead the classical ELBO L at those frozen values over the
  variational parameters: held-out evaluation, see the module doc.

  Args:
    x: `[N, D]` float32/float64 data (its dtype is the computation's).
    num_latents: H; default: init_dictionary's number of columns.
    posterior: 'full', 'diagonal' or 'lowrank'.
    rank: R for 'lowrank'.
    schedule: annealing schedule `schedule(call) -> AnnealingCoefficients`;
      default no annealing.
    init_dictionary: `[D, H]` starting (or, if not trained, frozen)
      dictionary; columns are normalised. Default: Gaussian random, seeded.
    train_dictionary: optimise the dictionary too (else only the posteriors).
    max_calls: most L-BFGS calls.
    max_iterations: L-BFGS iterations per call.
    num_correction_pairs: L-BFGS history size.
    tolerance: stop when, after annealing has ended, one call changes the
      ELBO of x / s by less than tolerance * (1 + |ELBO|); in [0, 1).
    init_scale: initial posterior standard deviation (means start at 0, or
      at least-squares codes when call 0 anneals the prior), in
      units of the data scale s (the root mean square of x rounded to a power
      of two; of sqrt(noise_variance) with frozen parameters), in
      (scale_floor, 1000].
    scale_floor: floor on posterior scales (softplus + floor), in units of
      s, in [0, init_scale).
    seed: seeds the random initial dictionary and low-rank factors.
    jit_compile: compile the objective's value and gradient with XLA.
      Traced (and compiled) functions are shared by every call in the
      process with the same data shape and static settings, so scoring
      several dictionaries on one data set traces once.
    log_every: log progress every this many calls (0: never).
    scales: optional `[H]` positive, finite frozen lambda (for the unit-norm
      columns of the dictionary); give it together with `noise_variance`.
    noise_variance: optional positive, finite scalar frozen sigma^2.
    init_posterior: optional `GaussianPosterior` of the `posterior` family
      (and rank) with N points, in x's units and dtype: the posteriors
      start there (a warm start, e.g. at an encoder's posteriors) instead
      of at `init_scale`. L-BFGS never lowers its objective, so without
      annealing the fitted ELBO is at least that of the start. Its scales
      must exceed `scale_floor` times the data scale.

  Returns:
    `JointFitResult`; its `elbo` is L(scales, noise_variance) when those are
    given, else F.

  Raises:
    TypeError: an argument of the wrong type (counts must be integers,
      flags bools; see `tfp_esc._checks`).
    ValueError: bad shapes, NaN/inf or empty data, data without variation
      (all rows the same: F is unbounded) when training or computing F,
      unknown family, missing H, counts or reals out of range; only one
      of scales / noise_variance given, or either given together with
      `train_dictionary=True` or a `schedule`; scales not `[H]` or
      noise_variance not a scalar (shapes printed); either not positive
      and finite.
      `init_posterior` of another family, rank, shape or dtype, or with a
      scale at or below the floor.
    FloatingPointError: the ELBO or parameters became NaN/inf (says where).
  """
  x, num_latents, init_dictionary, schedule, frozen_parameters = _check_args(
      x, num_latents, posterior, rank, schedule, init_dictionary,
      train_dictionary, max_calls, max_iterations, num_correction_pairs,
      tolerance, init_scale, scale_floor, seed, jit_compile, log_every,
      scales, noise_variance)
  # Work on x / s (see `_training`): held-out evaluation takes its scale from
  # the frozen sigma^2 (its data may be anything), training from the data.
  data_scale = (_training.data_scale(x) if frozen_parameters is None else
                math.sqrt(float(frozen_parameters[1])))
  if frozen_parameters is not None:
    frozen_parameters = (frozen_parameters[0] / data_scale,
                         frozen_parameters[1] / data_scale**2)
  _check_init_posterior(init_posterior, posterior, rank, x,
                        num_latents, scale_floor * data_scale)
  x = tf.constant(x / np.asarray(data_scale, x.dtype))
  dtype = x.dtype
  num_points, num_observed = x.shape
  family = get_family(posterior)
  rng = np.random.default_rng(seed)
  if init_dictionary is None:
    init_dictionary = rng.standard_normal((num_observed, num_latents))
  init_dictionary = tf.constant(init_dictionary, dtype)

  # An annealed start (a_prior > 1 at call 0) takes the least-squares codes
  # of the initial dictionary as means (module doc); otherwise means are 0.
  init_loc = (_least_squares_codes(x, init_dictionary)
              if train_dictionary and schedule(0).prior > 1.0 else None)
  if init_posterior is None:
    params = family.init_unconstrained(
        num_points, num_latents, dtype, loc=init_loc, scale=init_scale,
        rank=rank, seed=int(rng.integers(2**31)), floor=scale_floor)
  else:
    params = _training.scale_posterior(
        init_posterior, 1.0 / data_scale).to_unconstrained(scale_floor)
  names = tuple(sorted(params))
  parts = ([init_dictionary] if train_dictionary else []) + [
      params[k] for k in names]
  shapes = tuple(tuple(p.shape.as_list()) for p in parts)
  position = tf.concat([tf.reshape(p, [-1]) for p in parts], axis=0)
  frozen = normalize_columns(init_dictionary)
  steps = _joint_steps(posterior, names, shapes, num_observed,
                       bool(train_dictionary), frozen_parameters is not None,
                       float(scale_floor), int(num_correction_pairs),
                       int(max_iterations), bool(jit_compile))
  # The data enter the traced functions as arguments (never captured), so a
  # later call with the same shapes and settings reuses their traces.
  frozen_parameters = frozen_parameters or ()

  def evaluate(flat, coefficients):
    return steps.evaluate(flat, x, frozen, coefficients, frozen_parameters)

  def lbfgs_call(flat, coefficients, held_scales):
    return steps.lbfgs_call(flat, x, frozen, coefficients, held_scales,
                            frozen_parameters)

  trace = {k: [] for k in ('call',) + TRACE_KEYS}

  def record(call, flat, coefficients, iterations, evaluations, seconds):
    terms = evaluate(flat, tf.constant(coefficients, dtype))
    values = {k: float(getattr(terms, k)) for k in (
        'elbo', 'objective', 'q_entropy', 'prior_entropy',
        'likelihood_entropy', 'noise_variance')}
    if not all(np.isfinite(v) for v in values.values()):
      raise FloatingPointError(
          f'non-finite ELBO terms after L-BFGS call {call}: {values}; the '
          f'parameters hold {int(np.sum(~np.isfinite(flat.numpy())))} '
          'non-finite values.')
    for k, v in values.items():
      trace[k].append(v)
    for k, v in zip(('a_q', 'a_prior', 'a_lik'), coefficients):
      trace[k].append(float(v))
    trace['call'].append(call)
    trace['iterations'].append(int(iterations))
    trace['evaluations'].append(int(evaluations))
    trace['seconds'].append(seconds)
    return values

  start = time.perf_counter()
  first = schedule(0)
  record(0, position, (first.q, first.prior, first.likelihood), 0, 0, 0.0)
  converged = False
  for call in range(int(max_calls)):
    c = schedule(call)
    coefficients = (c.q, c.prior, c.likelihood)
    # lambda held during an annealed call: lambda* where the call starts
    # (unused, so not computed, when a_prior <= 1).
    held_scales = (evaluate(position, tf.constant(coefficients, dtype)).scales
                   if c.prior > 1.0 else tf.ones([num_latents], dtype))
    position, iterations, evaluations = lbfgs_call(
        position, tf.constant(coefficients, dtype), held_scales)
    values = record(call + 1, position, coefficients, iterations, evaluations,
                    time.perf_counter() - start)
    if log_every and (call + 1) % log_every == 0:
      logged = _training.to_data_units(
          dict(values, a_q=c.q, a_prior=c.prior, a_lik=c.likelihood),
          data_scale, num_observed, num_latents)
      logging.info(
          'L-BFGS call %d/%d: ELBO %.6f (annealed %.6f, a_prior %.3g), '
          'noise_variance %.5g, %d iterations, %.1f s', call + 1, max_calls,
          logged['elbo'], logged['objective'], c.prior,
          logged['noise_variance'], int(iterations),
          time.perf_counter() - start)
    annealed = schedule.is_annealed(call) or schedule.is_annealed(call + 1)
    change = abs(trace['elbo'][-1] - trace['elbo'][-2])
    if not annealed and change < tolerance * (1.0 + abs(values['elbo'])):
      converged = True
      break

  dictionary, q = steps.unpack(position, frozen)
  terms = evaluate(position, tf.constant((1.0, 1.0, 1.0), dtype))
  pieces = [p.numpy() for p in steps.split(position)]
  if train_dictionary:
    pieces.pop(0)
  # Back to x's units (see `_training`).
  terms = _training.to_data_units(
      {k: getattr(terms, k).numpy() for k in ('elbo', 'scales',
                                              'noise_variance')},
      data_scale, num_observed, num_latents)
  trace = _training.to_data_units(
      {k: np.asarray(v) for k, v in trace.items()}, data_scale, num_observed,
      num_latents)
  return JointFitResult(
      dictionary=dictionary.numpy(), scales=terms['scales'],
      noise_variance=float(terms['noise_variance']),
      elbo=float(terms['elbo']),
      posterior=_training.scale_posterior(q, data_scale),
      posterior_params=dict(zip(names, pieces)), trace=trace,
      converged=converged, data_scale=data_scale)


class _JointSteps(NamedTuple):
  """The traced functions of `fit_joint` for one set of static settings."""
  split: Callable
  unpack: Callable
  evaluate: Callable
  lbfgs_call: Callable


@functools.lru_cache(maxsize=16)
def _joint_steps(posterior, names, shapes, num_observed, train_dictionary,
                 frozen, scale_floor, num_correction_pairs, max_iterations,
                 jit_compile):
  """`fit_joint`'s unpacking, ELBO terms and L-BFGS call, built once per key.

  Every argument is static (hashable), and everything that differs between
  calls with the same key (the data x `[N, D]`, the frozen dictionary
  `[D, H]`, the frozen (lambda, sigma^2) or (), the coefficients `[3]`, the
  held lambda `[H]`, the flat position) is an argument of the returned
  functions, so a repeated evaluation of same-shaped data (several
  dictionaries scored on one data set, a held-out evaluation per model)
  traces and compiles once per process. `shapes` are those of the flat
  position's pieces (the trained dictionary first, then `names`' parameters),
  which fix N; with `num_observed` they fix every shape the traces see.

  Returns:
    `_JointSteps`: split(flat) -> the pieces, shaped `shapes`;
    unpack(flat, frozen_dictionary) -> (W, q);
    evaluate(flat, x, frozen_dictionary, coefficients, frozen_parameters)
    -> ELBO terms; lbfgs_call(flat, x, frozen_dictionary, coefficients,
    held_scales, frozen_parameters) -> (position, iterations, evaluations).
  """
  family = get_family(posterior)
  sizes = [int(np.prod(s)) for s in shapes]
  num_points = shapes[-1][0]

  def split(flat):
    return [tf.reshape(p, s) for p, s in zip(tf.split(flat, sizes), shapes)]

  def unpack(flat, frozen_dictionary):
    pieces = split(flat)
    dictionary = (normalize_columns(pieces.pop(0)) if train_dictionary
                  else frozen_dictionary)
    q = family.from_unconstrained(dict(zip(names, pieces)), floor=scale_floor)
    return dictionary, q

  def terms_at(flat, x, frozen_dictionary, coefficients, frozen_parameters,
               held_scales=None):
    dictionary, q = unpack(flat, frozen_dictionary)
    statistics = elbo_statistics(x, dictionary, q)
    if frozen:
      return classical_elbo_from_statistics(statistics, num_observed,
                                            *frozen_parameters)
    if held_scales is None:
      return entropy_elbo_from_statistics(statistics, num_observed,
                                          *tf.unstack(coefficients))
    # Annealed calls (a_prior > 1) hold lambda at `held_scales` (module doc).
    return held_prior_elbo_from_statistics(statistics, num_observed,
                                           held_scales,
                                           *tf.unstack(coefficients))

  def loss_and_gradient(flat, x, frozen_dictionary, coefficients,
                        held_scales, frozen_parameters):
    # The sum over data points (N F_a) keeps per-point gradients O(1).
    with tf.GradientTape() as tape:
      tape.watch(flat)
      loss = -num_points * terms_at(flat, x, frozen_dictionary, coefficients,
                                    frozen_parameters, held_scales).objective
    return loss, tape.gradient(loss, flat)

  # autograph=False: these functions have no tensor-dependent Python
  # control flow (autograph's conversion only cost tracing time).
  value_and_gradient = tf.function(loss_and_gradient, jit_compile=jit_compile,
                                   autograph=False)

  def lbfgs_call(flat, x, frozen_dictionary, coefficients, held_scales,
                 frozen_parameters):
    return _lbfgs_call(
        value_and_gradient, (x, frozen_dictionary, coefficients, held_scales,
                             frozen_parameters),
        flat, num_correction_pairs, max_iterations)

  evaluate = tf.function(terms_at, jit_compile=jit_compile, autograph=False)
  return _JointSteps(split, unpack, evaluate, lbfgs_call)


def _lbfgs_call(value_and_gradient, arguments, flat, num_correction_pairs,
                max_iterations):
  """One L-BFGS call (a fresh history): SciPy's L-BFGS-B on a compiled -F.

  See the module doc ("L-BFGS") for why SciPy's and not TFP's.

  Args:
    value_and_gradient: (flat `[P]` tensor, *arguments) -> (scalar loss,
      `[P]` gradient), in flat's dtype; a `tf.function`.
    arguments: tuple of its other arguments (tensors).
    flat: `[P]` float32/float64 start, with a finite loss.
    num_correction_pairs: L-BFGS history size.
    max_iterations: most iterations.

  Returns:
    (position `[P]` tensor of flat's dtype, iterations, evaluations): the
    position is the evaluated point of lowest loss (the start if none was
    lower, so a call never raises the loss). A point whose loss or gradient
    is not finite (a step too long: an overflow) is shown to the line
    search as a loss far above the best one, with a zero gradient, so the
    search shortens the step and goes on.
  """
  dtype = flat.dtype
  best = {'loss': math.inf, 'position': flat}

  def loss_and_gradient(position):
    position = tf.constant(position, dtype)
    loss, gradient = value_and_gradient(position, *arguments)
    loss, gradient = float(loss), gradient.numpy().astype(np.float64)
    if not (math.isfinite(loss) and np.all(np.isfinite(gradient))):
      return best['loss'] + 1e3 * (1.0 + abs(best['loss'])), np.zeros_like(
          gradient)
    if loss < best['loss']:
      best.update(loss=loss, position=position)
    return loss, gradient

  result = scipy.optimize.minimize(
      loss_and_gradient, flat.numpy().astype(np.float64), jac=True,
      method='L-BFGS-B',
      options={'maxiter': max_iterations, 'maxfun': 4 * max_iterations,
               'maxcor': num_correction_pairs, 'ftol': 0.0, 'gtol': 0.0})
  return best['position'], int(result.nit), int(result.nfev)


def _least_squares_codes(x, dictionary):
  """`[N, H]` minimum-norm argmin_nu ||x_n - W nu||, W normalised.

  Args:
    x: `[N, D]` float tensor.
    dictionary: `[D, H]` float tensor (columns normalised here).

  Returns:
    `[N, H]` NumPy array in x's dtype (solved in float64).
  """
  w = normalize_columns(dictionary).numpy().astype(np.float64)
  codes = np.linalg.lstsq(w, x.numpy().astype(np.float64).T, rcond=None)[0]
  return codes.T.astype(x.dtype.as_numpy_dtype)


def _check_frozen_parameters(scales, noise_variance, num_latents, dtype,
                             train_dictionary, has_schedule):
  """Checks frozen lambda `[H]` and sigma^2 `[]`; None when neither is given."""
  if scales is None and noise_variance is None:
    return None
  if scales is None or noise_variance is None:
    raise ValueError('give both scales and noise_variance (the frozen lambda '
                     'and sigma^2) or neither; got '
                     f'scales={"None" if scales is None else "given"}, '
                     f'noise_variance='
                     f'{"None" if noise_variance is None else "given"}.')
  if train_dictionary:
    raise ValueError('frozen scales and noise_variance need '
                     'train_dictionary=False (held-out evaluation of a '
                     'trained model).')
  if has_schedule:
    raise ValueError('frozen scales and noise_variance maximise the '
                     'non-annealed classical ELBO L; do not give a schedule.')
  scales = _checks.as_float_tensor(np.asarray(scales), 'scales', dtype)
  noise_variance = _checks.as_float_tensor(np.asarray(noise_variance),
                                           'noise_variance', dtype)
  if scales.shape != (num_latents,):
    raise ValueError(f'scales must have shape [H] = [{num_latents}] (the '
                     'dictionary\'s number of columns), got shape '
                     f'{scales.shape.as_list()}.')
  if noise_variance.shape.rank != 0:
    raise ValueError(f'noise_variance must be a scalar, got shape '
                     f'{noise_variance.shape.as_list()}.')
  _checks.check_positive(scales, 'scales')
  _checks.check_positive(noise_variance, 'noise_variance')
  return scales, noise_variance



def _check_init_posterior(init_posterior, posterior, rank, x, num_latents,
                          minimum_scale):
  """Checks `fit_joint`'s init_posterior (None passes) against the fit.

  `minimum_scale` is the scale floor in x's units; every scale of the
  start must exceed it.
  """
  if init_posterior is None:
    return
  family = get_family(posterior)
  if not isinstance(init_posterior, family):
    raise TypeError(f'init_posterior must be a {family.__name__} for '
                    f'posterior={posterior!r}, got '
                    f'{type(init_posterior).__name__}.')
  expected = [x.shape[0], num_latents]
  if init_posterior.loc.shape.as_list() != expected:
    raise ValueError(f'init_posterior has means of shape '
                     f'{init_posterior.loc.shape.as_list()}, expected [N, H] '
                     f'= {expected}.')
  if init_posterior.dtype.name != x.dtype.name:
    raise ValueError(f'init_posterior has dtype {init_posterior.dtype.name}, '
                     f'x has {x.dtype.name}.')
  if posterior == 'lowrank' and init_posterior.rank != rank:
    raise ValueError(f'init_posterior has rank {init_posterior.rank}, this '
                     f'fit has rank={rank}.')
  smallest = float(tf.reduce_min(init_posterior.floored_scale()))
  if not smallest > minimum_scale:
    raise ValueError(f'init_posterior has a scale of {smallest:.3g}, not above '
                     f'the floor scale_floor * data scale = '
                     f'{minimum_scale:.3g}; pass a smaller scale_floor.')


def _check_args(x, num_latents, posterior, rank, schedule, init_dictionary,
                train_dictionary, max_calls, max_iterations,
                num_correction_pairs, tolerance, init_scale, scale_floor,
                seed, jit_compile, log_every, scales, noise_variance):
  """Checks every argument of `fit_joint` (rules: `tfp_esc._checks`).

  Returns:
    (x, num_latents, init_dictionary, schedule, frozen_parameters): x a
    NumPy `[N, D]` float array, num_latents an int, init_dictionary None or
    a `[D, H]` NumPy array of x's dtype, an `AnnealingSchedule`, and the
    frozen (scales, noise_variance) tensors or None.
  """
  x = _checks.check_data(x, 'x')
  num_observed = x.shape[1]
  _checks.check_choice(posterior, 'posterior', FAMILIES)
  if num_latents is not None:
    num_latents = _checks.check_count(num_latents, 'num_latents')
  if init_dictionary is None:
    if num_latents is None:
      raise ValueError('num_latents: give num_latents or init_dictionary.')
  else:
    init_dictionary = _checks.check_data(init_dictionary, 'init_dictionary')
    init_dictionary = init_dictionary.astype(x.dtype)
    if init_dictionary.shape[0] != num_observed:
      raise ValueError(f'x has shape {list(x.shape)} but init_dictionary has '
                       f'shape {list(init_dictionary.shape)}: their D differ.')
    if num_latents is not None and init_dictionary.shape[1] != num_latents:
      raise ValueError(f'num_latents={num_latents} but init_dictionary has '
                       f'shape {list(init_dictionary.shape)}.')
    if np.any(np.linalg.norm(init_dictionary, axis=0) == 0):
      raise ValueError('init_dictionary has an all-zero column.')
    num_latents = init_dictionary.shape[1]
  if posterior == 'lowrank':
    if rank is None:
      raise ValueError("rank: posterior='lowrank' needs a rank R.")
    _checks.check_count(rank, 'rank', 1, num_latents)
  schedule_given = schedule is not None
  schedule = _training.check_schedule(schedule)
  _checks.check_flag(train_dictionary, 'train_dictionary')
  _checks.check_flag(jit_compile, 'jit_compile')
  _checks.check_count(max_calls, 'max_calls')
  _checks.check_count(max_iterations, 'max_iterations')
  _checks.check_count(num_correction_pairs, 'num_correction_pairs')
  _checks.check_real(tolerance, 'tolerance', 0.0, 1.0, low_open=False,
                     high_open=True)
  scale_floor = _checks.check_real(scale_floor, 'scale_floor', 0.0, 1.0,
                                   low_open=False, high_open=True)
  _checks.check_real(init_scale, 'init_scale', scale_floor, 1000.0)
  _checks.check_count(seed, 'seed', 0)
  _checks.check_count(log_every, 'log_every', 0)
  frozen_parameters = _check_frozen_parameters(
      scales, noise_variance, num_latents, tf.as_dtype(x.dtype),
      train_dictionary, schedule_given)
  return x, num_latents, init_dictionary, schedule, frozen_parameters
