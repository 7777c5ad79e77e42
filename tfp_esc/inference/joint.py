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
"""

import dataclasses
import time

import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp
from absl import logging

from tfp_esc import _checks
from tfp_esc.model.sparse_coding import normalize_columns
from tfp_esc.objective.annealing import NoAnnealing
from tfp_esc.objective.elbo import EntropyElbo, elbo_statistics, entropy_elbo
from tfp_esc.posterior.gaussian import DEFAULT_SCALE_FLOOR, get_family

__all__ = ['JointFitResult', 'fit_joint']

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
    posterior_params: dict of unconstrained parameter arrays.
    trace: dict of `[num_calls + 1]` arrays (entry 0: the initial state),
      keys `TRACE_KEYS` plus 'call'.
    converged: whether the ELBO stopped changing before `max_calls`.
  """
  dictionary: np.ndarray
  scales: np.ndarray
  noise_variance: float
  elbo: float
  posterior: object
  posterior_params: dict
  trace: dict
  converged: bool


def fit_joint(x, num_latents=None, *, posterior='full', rank=None,
              schedule=None, init_dictionary=None, train_dictionary=True,
              max_calls=100, max_iterations=200, num_correction_pairs=10,
              tolerance=1e-7, init_scale=0.1, scale_floor=DEFAULT_SCALE_FLOOR,
              seed=0, jit_compile=True, log_every=1, scales=None,
              noise_variance=None):
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
      ELBO by less than tolerance * (1 + |ELBO|).
    init_scale: initial posterior standard deviation (means start at 0).
    scale_floor: floor on posterior scales (softplus + floor).
    seed: seeds the random initial dictionary and low-rank factors.
    jit_compile: compile each L-BFGS call with XLA.
    log_every: log progress every this many calls (0: never).
    scales: optional `[H]` positive, finite frozen lambda (for the unit-norm
      columns of the dictionary); give it together with `noise_variance`.
    noise_variance: optional positive, finite scalar frozen sigma^2.

  Returns:
    `JointFitResult`; its `elbo` is L(scales, noise_variance) when those are
    given, else F.

  Raises:
    ValueError: bad shapes, NaN/inf data, unknown family, missing H; only one
      of scales / noise_variance given, or either given together with
      `train_dictionary=True` or a `schedule`; scales not `[H]` or
      noise_variance not a scalar (shapes printed); either not positive
      and finite.
    FloatingPointError: the ELBO or parameters became NaN/inf (says where).
  """
  x = _checks.as_float_tensor(x, 'x', rank=2)
  _checks.check_finite(x, 'x')
  dtype = x.dtype
  num_points, num_observed = x.shape
  family = get_family(posterior)
  rng = np.random.default_rng(seed)
  if init_dictionary is None:
    if num_latents is None:
      raise ValueError('give num_latents or init_dictionary.')
    init_dictionary = rng.standard_normal((num_observed, int(num_latents)))
  init_dictionary = _checks.as_float_tensor(init_dictionary, 'init_dictionary',
                                            dtype, rank=2)
  _checks.check_finite(init_dictionary, 'init_dictionary')
  if init_dictionary.shape[0] != num_observed:
    raise ValueError(f'x has shape {x.shape.as_list()} but init_dictionary has '
                     f'shape {init_dictionary.shape.as_list()}: their D differ.')
  if num_latents is not None and init_dictionary.shape[1] != num_latents:
    raise ValueError(f'num_latents={num_latents} but init_dictionary has shape '
                     f'{init_dictionary.shape.as_list()}.')
  num_latents = init_dictionary.shape[1]
  if int(max_calls) < 1 or int(max_iterations) < 1:
    raise ValueError(f'max_calls and max_iterations must be >= 1, got '
                     f'{max_calls} and {max_iterations}.')
  frozen_parameters = _check_frozen_parameters(
      scales, noise_variance, num_latents, dtype, train_dictionary,
      schedule is not None)

  params = family.init_unconstrained(
      num_points, num_latents, dtype, scale=init_scale, rank=rank,
      seed=int(rng.integers(2**31)), floor=scale_floor)
  names = sorted(params)
  parts = ([init_dictionary] if train_dictionary else []) + [
      params[k] for k in names]
  shapes = [p.shape for p in parts]
  sizes = [int(np.prod(s)) for s in shapes]
  position = tf.concat([tf.reshape(p, [-1]) for p in parts], axis=0)
  frozen = normalize_columns(init_dictionary)
  schedule = NoAnnealing() if schedule is None else schedule

  def unpack(flat):
    pieces = [tf.reshape(p, s) for p, s in zip(tf.split(flat, sizes), shapes)]
    dictionary = normalize_columns(pieces.pop(0)) if train_dictionary else frozen
    q = family.from_unconstrained(dict(zip(names, pieces)), floor=scale_floor)
    return dictionary, q

  def terms_at(flat, coefficients, held_scales=None):
    dictionary, q = unpack(flat)
    if frozen_parameters is not None:
      return _classical_terms(x, dictionary, q, *frozen_parameters)
    terms = entropy_elbo(x, dictionary, q, coefficients[0], coefficients[1],
                         coefficients[2])
    if held_scales is None:
      return terms
    # Annealed calls (a_prior > 1) hold lambda at `held_scales`: the prior
    # entropy becomes the cross-entropy sum_h log(2 lambda_h) + lambda*_h /
    # lambda_h, which keeps F_a bounded (module doc). Where a_prior <= 1
    # `held_scales` is lambda* itself and the value is F_a's.
    held_objective = (
        coefficients[0] * terms.q_entropy
        - coefficients[1] * _prior_cross_entropy(terms.scales, held_scales)
        - coefficients[2] * terms.likelihood_entropy)
    return terms._replace(objective=tf.where(coefficients[1] > 1.0,
                                             held_objective, terms.objective))

  def loss_and_gradient(flat, coefficients, held_scales):
    # The sum over data points (N F_a) keeps per-point gradients O(1).
    with tf.GradientTape() as tape:
      tape.watch(flat)
      loss = -num_points * terms_at(flat, coefficients,
                                    held_scales).objective
    return loss, tape.gradient(loss, flat)

  @tf.function(jit_compile=jit_compile, reduce_retracing=True)
  def lbfgs_call(flat, coefficients, held_scales):
    result = tfp.optimizer.lbfgs_minimize(
        lambda p: loss_and_gradient(p, coefficients, held_scales),
        initial_position=flat,
        num_correction_pairs=num_correction_pairs,
        max_iterations=max_iterations, tolerance=0.0)
    return (result.position, result.num_iterations,
            result.num_objective_evaluations)

  evaluate = tf.function(terms_at, jit_compile=jit_compile)

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
      logging.info(
          'L-BFGS call %d/%d: ELBO %.6f (annealed %.6f, a_prior %.3g), '
          'sigma2 %.5g, %d iterations, %.1f s', call + 1, max_calls,
          values['elbo'], values['objective'], c.prior,
          values['noise_variance'], int(iterations),
          time.perf_counter() - start)
    annealed = schedule.is_annealed(call) or schedule.is_annealed(call + 1)
    change = abs(trace['elbo'][-1] - trace['elbo'][-2])
    if not annealed and change < tolerance * (1.0 + abs(values['elbo'])):
      converged = True
      break

  dictionary, q = unpack(position)
  terms = evaluate(position, tf.constant((1.0, 1.0, 1.0), dtype))
  pieces = [p.numpy().reshape(s) for p, s in zip(
      tf.split(position, sizes), shapes)]
  if train_dictionary:
    pieces.pop(0)
  return JointFitResult(
      dictionary=dictionary.numpy(), scales=terms.scales.numpy(),
      noise_variance=float(terms.noise_variance), elbo=float(terms.elbo),
      posterior=q, posterior_params=dict(zip(names, pieces)),
      trace={k: np.asarray(v) for k, v in trace.items()}, converged=converged)


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


def _prior_cross_entropy(optimal_scales, scales):
  """CE_prior = sum_h [log(2 lambda_h) + lambda*_h / lambda_h] (module doc).

  optimal_scales: `[H]` lambda* = (1/N) sum_n A(nu_nh, sqrt(T_n,hh)); at
  lambda = lambda* it is the prior entropy H[p(z | lambda*)].
  """
  return tf.reduce_sum(tf.math.log(2.0 * scales) + optimal_scales / scales)


def _classical_terms(x, dictionary, posterior, scales, noise_variance):
  """L(lambda, sigma^2) and its terms (module doc) as an `EntropyElbo`.

  From the same sums as F (`elbo_statistics`): at lambda*, sigma^2* it is F
  up to rounding, and at any values `classical_elbo` up to rounding.
  """
  statistics = elbo_statistics(x, dictionary, posterior)
  count = statistics.count
  num_observed = tf.cast(tf.shape(x)[-1], x.dtype)
  q_entropy = statistics.q_entropy / count
  prior_cross_entropy = _prior_cross_entropy(
      statistics.expected_magnitude / count, scales)
  likelihood_cross_entropy = (
      0.5 * num_observed * tf.math.log(2.0 * np.pi * noise_variance)
      + statistics.reconstruction / (2.0 * count * noise_variance))
  elbo = q_entropy - prior_cross_entropy - likelihood_cross_entropy
  return EntropyElbo(elbo=elbo, objective=elbo, q_entropy=q_entropy,
                     prior_entropy=prior_cross_entropy,
                     likelihood_entropy=likelihood_cross_entropy,
                     noise_variance=noise_variance, scales=scales)
