"""Joint L-BFGS over the dictionary and all variational parameters (SPEC 10).

The bars protocol of the paper: W (through an unconstrained V, W = V/||V||_col)
and every data point's variational parameters are optimised jointly by L-BFGS
on -F_a, the whole data set as one batch, with repeated L-BFGS calls (each a
fresh history) until the ELBO stops changing. With `train_dictionary=False`
the same routine fits only the variational parameters for a frozen
dictionary (e.g. the ground-truth ELBO of the bars).

Annealing schedules are indexed by the L-BFGS call: call k optimises F_a with
the coefficients `schedule(k)`.
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
from tfp_esc.objective.elbo import entropy_elbo
from tfp_esc.posterior.gaussian import DEFAULT_SCALE_FLOOR, get_family

__all__ = ['JointFitResult', 'fit_joint']

TRACE_KEYS = ('elbo', 'objective', 'q_entropy', 'prior_entropy',
              'likelihood_entropy', 'noise_variance', 'a_q', 'a_prior',
              'a_lik', 'iterations', 'evaluations', 'seconds')


@dataclasses.dataclass
class JointFitResult:
  """What `fit_joint` learned.

  Attributes:
    dictionary: `[D, H]` unit-norm W.
    scales: `[H]` lambda* at the end.
    noise_variance: sigma^2* at the end.
    elbo: final non-annealed F per data point.
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
              seed=0, jit_compile=True, log_every=1):
  """Maximises the entropy ELBO by repeated joint L-BFGS calls.

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

  Returns:
    `JointFitResult`.

  Raises:
    ValueError: bad shapes, NaN/inf data, unknown family, missing H.
    FloatingPointError: the ELBO or parameters became NaN/inf (says where).
  """
  x = _checks.as_float_tensor(x, 'x', rank=2)
  _checks.check_finite(x, 'x')
  dtype = x.dtype
  num_points, num_observed = x.shape
  family = get_family(posterior)
  schedule = NoAnnealing() if schedule is None else schedule
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

  def unpack(flat):
    pieces = [tf.reshape(p, s) for p, s in zip(tf.split(flat, sizes), shapes)]
    dictionary = normalize_columns(pieces.pop(0)) if train_dictionary else frozen
    q = family.from_unconstrained(dict(zip(names, pieces)), floor=scale_floor)
    return dictionary, q

  def terms_at(flat, coefficients):
    dictionary, q = unpack(flat)
    return entropy_elbo(x, dictionary, q, coefficients[0], coefficients[1],
                        coefficients[2])

  def loss_and_gradient(flat, coefficients):
    # The sum over data points (N F_a) keeps per-point gradients O(1).
    with tf.GradientTape() as tape:
      tape.watch(flat)
      loss = -num_points * terms_at(flat, coefficients).objective
    return loss, tape.gradient(loss, flat)

  @tf.function(jit_compile=jit_compile, reduce_retracing=True)
  def lbfgs_call(flat, coefficients):
    result = tfp.optimizer.lbfgs_minimize(
        lambda p: loss_and_gradient(p, coefficients), initial_position=flat,
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
    position, iterations, evaluations = lbfgs_call(
        position, tf.constant(coefficients, dtype))
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
