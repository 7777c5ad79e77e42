"""EM-like training over minibatches (SPEC 10, variants A/B).

`fit_em` runs either engine: the default, incremental EM with refinement
(`tfp_esc.inference.incremental_em`), or the paper's protocol, `EMTrainer`
below (engine='paper').

For every minibatch:

  E-step: maximise the batch's F_a over its variational parameters with the
          dictionary fixed: `e_step='newton'` (diagonal posteriors) runs `e_step_iterations` damped Newton
          iterations per point (`tfp_esc.inference.newton`, no XLA: its
          batched Cholesky is many times slower under XLA on CPU);
          `e_step='lbfgs'` (every family, the default) runs TFP's
          `lbfgs_minimize` on all
          of the batch's parameters, up to `e_step_iterations` iterations,
          compiled with XLA;
  M-step: one gradient-ascent step on F_a with respect to the unconstrained
          dictionary V (W = V / ||V||_col), step size `m_step_size`.

Each data point's variational parameters are kept across epochs. With
`warm_start=True` an E-step starts from the point's previous parameters; with
`warm_start=False` from nu = 0, tau = 1, as the paper's reference code does.
Epoch ELBOs are the full-data, non-annealed F after re-fitting every batch's
variational parameters for the epoch's final dictionary (Newton for diagonal
posteriors whichever E-step trains, `eval_iterations` iterations), computed
from summed statistics (so lambda* and sigma^2* are full-data values).

Batches are drawn from a permutation that depends only on (seed, epoch), so a
run resumed from a checkpoint continues exactly as an uninterrupted one.

Keras. `fit_em` runs either engine's epochs by `keras.Model.fit` (`fit_epochs`)
on a `tf.data` pipeline of each epoch's batch indices: the model's
`train_step` is the trainer's `visit` (one E-step and M-step), and a first
callback begins and ends the trainer's epochs, so Keras' progress bar,
TensorBoard, early stopping and any user callback see each epoch's full-data
record. Both trainers keep their state in NumPy and compile their own steps,
so the step runs eagerly and Keras only drives the loop; `run_epoch` makes
the same calls in a plain loop, and the two give the same result bit for bit
(tests). Driving the loop costs Keras 2% per epoch against the plain loop
(`benchmarks/results/em_keras_driver_2026-12-01_s14.md`: 1.183 against
1.157 s per epoch, 8,192 patches, H = 64). The per-point posteriors stay
NumPy arrays (not Keras variables) because they are as large as the data
(the paper's size: 204,800 x 2 x H) and only a batch of them is ever on
the device; the compiled work is the trainer's, so a compiled Keras step
would only wrap it.

The refinement rounds (L-BFGS on the profile ELBO) run after the epochs by
a second `keras.Model.fit` (`_RefinementRounds`), one epoch of one step per
round, numbered on from the epochs: the same callbacks, TensorBoard logs,
checkpoints and progress bar see them. `early_stopping_patience` ends the
epochs only; the rounds stop at `refine_rounds`, after a round that found
no higher ELBO (the next would repeat it), or when a callback sets
`model.stop_training`.
"""

import dataclasses
import functools
import inspect
import time

import keras
import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp
from absl import logging

from tfp_esc import _checks
from tfp_esc.inference import _checkpoint
from tfp_esc.inference._training import (TERMS, ElboEarlyStopping, as_data,
                                         batches, check_callbacks,
                                         check_schedule, data_scale,
                                         elbo_has_stalled, elbo_record,
                                         epoch_index_batches, epoch_under_way,
                                         scale_posterior,
                                         tensorboard_callbacks, to_data_units)
from tfp_esc.inference.incremental_em import IncrementalEMTrainer
from tfp_esc.inference.newton import newton_e_step
from tfp_esc.model.sparse_coding import normalize_columns
from tfp_esc.objective import elbo as elbo_lib
from tfp_esc.objective.annealing import NoAnnealing
from tfp_esc.posterior.gaussian import (DEFAULT_SCALE_FLOOR, FAMILIES,
                                        get_family)

__all__ = ['DEFAULT_REFINE_ROUNDS', 'ENGINES', 'EMResult', 'EMTrainer',
           'fit_em', 'fit_epochs']

ENGINES = ('incremental', 'paper')
# Refinement rounds of the incremental engine after its epochs.
DEFAULT_REFINE_ROUNDS = 3

E_STEPS = ('newton', 'lbfgs')
# Largest accepted `m_step_size`: a gradient step on V, whose columns start
# at unit norm, of more than 100 times the gradient is no longer a step of
# gradient ascent (the default is 0.5).
MAX_M_STEP_SIZE = 100.0
# Iterations per E-step when `e_step_iterations` is not given: Newton reaches
# what 100 L-BFGS iterations reach in about 5 (benchmarks/throughput.py).
_DEFAULT_ITERATIONS = {'newton': 10, 'lbfgs': 100}
# Iterations of the evaluation re-fit (Newton for diagonal posteriors, else
# L-BFGS), keyed by "is diagonal".
_EVAL_ITERATIONS = {True: 12, False: 100}


@dataclasses.dataclass
class _EpochState:
  """What `EMTrainer` carries from `begin_epoch` to `end_epoch`."""
  schedule_value: object      # AnnealingCoefficients of the epoch
  start: float                # time.perf_counter() at its start
  v: tf.Tensor                # the dictionary's raw V, updated by each step
  objectives: list            # each step's annealed batch objective


@dataclasses.dataclass
class EMResult:
  """What EM training learned.

  Attributes:
    dictionary: `[D, H]` unit-norm W.
    params: dict of per-point variational parameters `[N, ...]`: the
      unconstrained ones of the family for x / data_scale (engine 'paper';
      see `EMTrainer`) or 'loc' and 'scale' in x's units (engine
      'incremental').
    history: dict of per-epoch lists: 'epoch', 'elbo', 'q_entropy',
      'prior_entropy', 'likelihood_entropy', 'noise_variance', 'scales',
      'a_q', 'a_prior', 'a_lik', 'seconds' (cumulative training time),
      'batch_objective' (mean annealed batch objective of the epoch).
  """
  dictionary: np.ndarray
  params: dict
  history: dict


class EMTrainer:
  """Holds the state of EM training and runs epochs; see the module doc.

  Args:
    x: `[N, D]` float32/float64 data (its dtype is the computation's).
    num_latents: H.
    posterior: 'diagonal', 'lowrank' or 'full'.
    rank: R for 'lowrank'.
    schedule: annealing schedule indexed by epoch, or its name (see
      `get_schedule`); default none.
    batch_size: minibatch size B (the last, smaller batch is dropped from
      training steps but included in evaluation).
    e_step: 'lbfgs' (default) or 'newton' (diagonal posteriors only). Newton
      reaches a batch's optimum in fewer, costlier iterations, but measured
      over whole EM runs (benchmarks/patches_variants.py, variant A vs
      A-lbfgs) L-BFGS reached a higher ELBO in less time; and with prior
      annealing Newton converges to the collapse that F_a's unbounded
      direction offers (every code collapsed while a_prior > 1), which 100
      truncated L-BFGS iterations from a fresh start do not reach.
    e_step_iterations: iterations per E-step (Newton: exactly that many;
      L-BFGS: at most that many); default 10 for Newton, 100 for L-BFGS.
    eval_iterations: iterations of the re-fit behind every epoch's ELBO,
      which uses Newton for diagonal posteriors whatever `e_step` is (one
      yardstick for both E-steps; default 12) and L-BFGS otherwise
      (default 100).
    num_correction_pairs: L-BFGS history size.
    m_step_size: gradient-ascent step on V, in (0, `MAX_M_STEP_SIZE`].
    warm_start: start each E-step (and the evaluation re-fit) from the
      point's previous parameters instead of nu = 0, tau = 1. Off by default,
      as in the paper: with prior annealing (a_prior > 1) the annealed
      objective grows without bound as all codes shrink together (by
      (a_prior - 1) H log(1/c) for a common factor c), so annealing works
      through truncated E-steps from a fresh start, and warm starts let the
      collapse accumulate across epochs.
    init_dictionary: optional `[D, H]` start; default Gaussian, seeded.
    seed: seeds the dictionary, initial factors and the batch order.
    jit_compile: compile the L-BFGS E-step and the M-step with XLA.
    scale_floor: floor on posterior scales, in [0, 1), in units of the data
      scale s (the root mean square of x: the trainer works on x / s, and
      the initial posterior scale 1 is relative to it too).

  Attributes:
    data_scale: s. `params` and `e_step`'s parameters are those of the
      posteriors of x / s; `posterior`, `dictionary` and the history are in
      x's units.

  Raises:
    TypeError: an argument of the wrong type (see `tfp_esc._checks`).
    ValueError: bad shapes, NaN/inf or empty data, data whose rows are all
      the same, counts or step sizes out of range, unknown family or E-step,
      a Newton E-step for a non-diagonal family.
  """

  def __init__(self, x, num_latents, *, posterior='diagonal', rank=None,
               schedule=None, batch_size=512, e_step='lbfgs',
               e_step_iterations=None, eval_iterations=None,
               num_correction_pairs=10, m_step_size=0.5, warm_start=False,
               init_dictionary=None, seed=0, jit_compile=True,
               scale_floor=DEFAULT_SCALE_FLOOR):
    x = as_data(x)
    num_points, num_observed = x.shape
    self.data_scale = data_scale(x)  # refuses data without variation
    num_latents = _checks.check_count(num_latents, 'num_latents')
    _checks.check_choice(posterior, 'posterior', FAMILIES)
    if posterior == 'lowrank':
      if rank is None:
        raise ValueError("rank: posterior='lowrank' needs a rank R.")
      _checks.check_count(rank, 'rank', 1, num_latents)
    self.schedule = check_schedule(schedule)
    self.batch_size = _checks.check_count(batch_size, 'batch_size', 1,
                                          num_points)
    e_step = _checks.check_choice(e_step, 'e_step', E_STEPS)
    if e_step == 'newton' and posterior != 'diagonal':
      raise ValueError(f"e_step='newton' needs posterior='diagonal', got "
                       f'posterior={posterior!r}; use e_step=\'lbfgs\'.')
    if e_step_iterations is None:
      e_step_iterations = _DEFAULT_ITERATIONS[e_step]
    e_step_iterations = _checks.check_count(e_step_iterations,
                                            'e_step_iterations')
    if eval_iterations is not None:
      _checks.check_count(eval_iterations, 'eval_iterations')
    _checks.check_count(num_correction_pairs, 'num_correction_pairs')
    self.m_step_size = _checks.check_real(m_step_size, 'm_step_size', 0.0,
                                          MAX_M_STEP_SIZE)
    self.warm_start = _checks.check_flag(warm_start, 'warm_start')
    _checks.check_flag(jit_compile, 'jit_compile')
    self.seed = _checks.check_count(seed, 'seed', 0)
    self.scale_floor = _checks.check_real(scale_floor, 'scale_floor', 0.0,
                                          1.0, low_open=False, high_open=True)
    if init_dictionary is not None:
      init_dictionary = _checks.check_data(init_dictionary, 'init_dictionary')
      if init_dictionary.shape != (num_observed, num_latents):
        raise ValueError(f'init_dictionary has shape {init_dictionary.shape},'
                         f' expected {(num_observed, num_latents)} for x of '
                         f'shape {x.shape}.')
      if np.any(np.linalg.norm(init_dictionary, axis=0) == 0):
        raise ValueError('init_dictionary has an all-zero column.')
    # Work on x / s, report in x's units (`_training`): the scale floor and
    # the initial scale 1 are relative to the data's root mean square.
    self.x = x / np.asarray(self.data_scale, x.dtype)
    self.dtype = tf.as_dtype(self.x.dtype)
    self.family = get_family(posterior)
    self.e_step_method = e_step
    self.rank = rank
    rng = np.random.default_rng(self.seed)
    if init_dictionary is None:
      init_dictionary = rng.standard_normal((num_observed, num_latents))
    init_dictionary = np.asarray(init_dictionary, self.x.dtype)
    # V starts with unit columns: the M-step's gradient on V scales as
    # 1 / ||v_h||, so `m_step_size` means the same for every start.
    self.v = init_dictionary / np.linalg.norm(init_dictionary, axis=0)
    init = self.family.init_unconstrained(
        num_points, int(num_latents), self.dtype, scale=1.0, rank=rank,
        seed=int(rng.integers(2**31)), floor=scale_floor)
    self.params = {k: v.numpy().copy() for k, v in init.items()}
    # Fresh-start values: one row where every point starts alike (means and
    # scales), the whole array only where they differ (low-rank factors).
    self._init_params = {
        k: v[:1].copy() if np.all(v == v[:1]) else v.copy()
        for k, v in self.params.items()}
    self.epoch = 0
    self._current = None       # the epoch under way (`begin_epoch`)
    self.history = {k: [] for k in (
        'epoch', 'noise_variance', 'scales', 'a_q', 'a_prior', 'a_lik', 'seconds',
        'batch_objective') + TERMS}
    self._seconds = 0.0
    self._names = sorted(self.params)
    if eval_iterations is None:
      eval_iterations = _EVAL_ITERATIONS[self.family.family == 'diagonal']
    self._build_steps(int(e_step_iterations), int(eval_iterations),
                      int(num_correction_pairs),
                      jit_compile)

  # -- compiled steps ---------------------------------------------------------

  def _build_steps(self, iterations, eval_iterations, pairs, jit_compile):
    """The trainer's compiled E-step, EM step and re-fit (`_PaperSteps`)."""
    # The key holds every static shape (D, each parameter's trailing
    # shape): retracing relaxes only the batch dimension.
    shapes = (self.x.shape[1],) + tuple(
        (k, self.params[k].shape[1:]) for k in self._names)
    steps = _paper_steps(self.family.family, tuple(self._names), shapes,
                         float(self.scale_floor), self.e_step_method,
                         iterations, eval_iterations, pairs, bool(jit_compile))
    self._e_step, self._em_step, self._refit = (steps.e_step, steps.em_step,
                                                steps.refit)

  # -- training ---------------------------------------------------------------

  def _batches(self, epoch, drop_remainder):
    return batches(len(self.x), self.batch_size, self.seed, epoch,
                   drop_remainder)

  def _gather(self, indices, fresh):
    if not fresh:
      return {k: tf.constant(self.params[k][indices]) for k in self._names}
    return {k: tf.constant(
        np.broadcast_to(v, (len(indices),) + v.shape[1:]) if len(v) == 1
        else v[indices])
            for k, v in self._init_params.items()}

  def epoch_batches(self, epoch):
    """`[B]` index arrays of the training steps of `epoch` (the last,
    smaller batch dropped); a function of (seed, epoch) only."""
    return self._batches(epoch, drop_remainder=True)

  def begin_epoch(self):
    """Starts epoch `self.epoch`: its coefficients and clock.

    `run_epoch` is `begin_epoch`, `visit` for each of
    `epoch_batches(self.epoch)`, then `end_epoch`; `fit_em` runs the same
    calls from `keras.Model.fit`.
    """
    c = self.schedule(self.epoch)
    self._current = _EpochState(
        schedule_value=c, start=time.perf_counter(), v=tf.constant(self.v),
        objectives=[])

  def visit(self, indices):
    """One EM step on the batch `indices` `[B]`.

    Returns:
      dict: 'batch_objective', the batch's annealed objective (x's units).
    """
    state = epoch_under_way(self._current)
    c = state.schedule_value
    v, params, objective, iterations = self._em_step(
        state.v, self._gather(indices, not self.warm_start),
        tf.constant(self.x[indices]),
        tf.constant((c.q, c.prior, c.likelihood), self.dtype),
        tf.constant(self.m_step_size, self.dtype))
    b = len(state.objectives)
    if not np.isfinite(float(objective)):
      raise FloatingPointError(
          f'EM epoch {self.epoch}, batch {b}: the annealed objective is '
          f'{float(objective)}; dictionary finite: '
          f'{bool(np.all(np.isfinite(v.numpy())))}.')
    for k in self._names:
      self.params[k][indices] = params[k].numpy()
    state.v = v
    state.objectives.append(float(objective))
    if b % 50 == 0:
      logging.info('epoch %d batch %d: annealed objective %.4f '
                   '(%d L-BFGS iterations)', self.epoch, b + 1,
                   float(objective), int(iterations))
    return {'batch_objective': self._to_data_units(dict(
        batch_objective=float(objective), a_q=c.q, a_prior=c.prior,
        a_lik=c.likelihood))['batch_objective']}

  def end_epoch(self):
    """Evaluates the epoch's dictionary; returns the epoch's record."""
    state, self._current = epoch_under_way(self._current), None
    c = state.schedule_value
    self.v = state.v.numpy()
    self._seconds += time.perf_counter() - state.start
    terms = self.evaluate()
    record = dict(terms, epoch=self.epoch, a_q=c.q, a_prior=c.prior,
                  a_lik=c.likelihood, seconds=self._seconds,
                  batch_objective=self._to_data_units(dict(
                      batch_objective=float(np.mean(state.objectives)),
                      a_q=c.q, a_prior=c.prior,
                      a_lik=c.likelihood))['batch_objective'])
    for k, value in record.items():
      self.history.setdefault(k, []).append(value)
    logging.info('epoch %d: ELBO %.4f (H[q] %.3f, H[prior] %.3f, H[lik] %.3f),'
                 ' noise_variance %.4g, a_prior %.3g, %.1f s', self.epoch,
                 record['elbo'], record['q_entropy'], record['prior_entropy'],
                 record['likelihood_entropy'], record['noise_variance'], c.prior,
                 self._seconds)
    self.epoch += 1
    return record

  def run_epoch(self):
    """Runs one epoch of EM steps, then evaluates; returns the epoch's record."""
    self.begin_epoch()
    for indices in self.epoch_batches(self.epoch):
      self.visit(indices)
    return self.end_epoch()

  def e_step(self, indices, coefficients=(1.0, 1.0, 1.0), fresh=None):
    """Fits the variational parameters of the points `indices` (not stored).

    Args:
      indices: `[B]` int indices of the batch.
      coefficients: (a_q, a_prior, a_lik) of the objective.
      fresh: start from nu = 0, tau = 1 (default: `not warm_start`).

    Returns:
      (start, fitted): dicts of the batch's unconstrained parameters before
      and after the E-step.
    """
    fresh = (not self.warm_start) if fresh is None else fresh
    start = self._gather(np.asarray(indices), fresh)
    fitted, _ = self._e_step(normalize_columns(tf.constant(self.v)), start,
                             tf.constant(self.x[indices]),
                             tf.constant(coefficients, self.dtype))
    return start, fitted

  def evaluate(self):
    """Full-data, non-annealed F after re-fitting every point's parameters.

    Re-fits (and stores) every point's variational parameters for the current
    dictionary, batch by batch, and sums the statistics F needs.

    Returns:
      dict with 'elbo', 'q_entropy', 'prior_entropy', 'likelihood_entropy',
      'noise_variance' (floats) and 'scales' (list).
    """
    v = tf.constant(self.v)
    total = None
    for indices in self._batches(self.epoch, drop_remainder=False):
      params, stats = self._refit(v, self._gather(indices, not self.warm_start),
                                  tf.constant(self.x[indices]))
      for k in self._names:
        self.params[k][indices] = params[k].numpy()
      total = stats if total is None else elbo_lib.add_statistics(total, stats)
    terms = elbo_lib.entropy_elbo_from_statistics(total, self.x.shape[1])
    return self._to_data_units(elbo_record(terms, f'epoch {self.epoch}'))

  def _to_data_units(self, values):
    return to_data_units(values, self.data_scale, *self.v.shape)

  @property
  def dictionary(self):
    """Current `[D, H]` unit-norm dictionary."""
    return normalize_columns(tf.constant(self.v)).numpy()

  def posterior(self, indices=None):
    """The fitted posterior of all points (or of `indices`)."""
    params = {k: tf.constant(v if indices is None else v[indices])
              for k, v in self.params.items()}
    return scale_posterior(
        self.family.from_unconstrained(params, floor=self.scale_floor),
        self.data_scale)

  # -- checkpoints ------------------------------------------------------------

  def save(self, path, config=None):
    """Writes the whole training state to the checkpoint `path` atomically.

    Args:
      path: checkpoint path.
      config: JSON-able dict identifying the run (see `_checkpoint.save`).
    """
    arrays = {f'param_{k}': v for k, v in self.params.items()}
    state = {'epoch': self.epoch, 'seconds': self._seconds,
             'history': self.history}
    _checkpoint.save(path, 'em-paper', config or {}, dict(arrays, v=self.v),
                     state)

  def restore(self, path, config=None):
    """Loads a state written by `save` for the same `config`.

    Raises:
      CheckpointError: missing, corrupt or foreign file, another run's
        config, or other shapes.
    """
    arrays, state = _checkpoint.load(path, 'em-paper', config or {})
    params = {k[len('param_'):]: arrays[k] for k in arrays
              if k.startswith('param_')}
    if 'v' not in arrays or arrays['v'].shape != self.v.shape:
      raise _checkpoint.CheckpointError(
          f'checkpoint {path!r} holds no dictionary of shape {self.v.shape}.')
    if sorted(params) != self._names or any(
        params[k].shape != self.params[k].shape for k in self._names):
      raise _checkpoint.CheckpointError(
          f'checkpoint {path!r} holds posterior parameters '
          f'{ {k: v.shape for k, v in params.items()} }, this run has '
          f'{ {k: v.shape for k, v in self.params.items()} }.')
    self.v = arrays['v'].astype(self.v.dtype)
    self.params = {k: v.astype(self.params[k].dtype)
                   for k, v in params.items()}
    self.epoch = int(state['epoch'])
    self._seconds = float(state['seconds'])
    self.history = state['history']


class _PaperSteps:
  """`EMTrainer`'s compiled steps for one set of static settings.

  The steps read only the static settings held here (the family and its
  parameter names, the scale floor, the E-step, iteration counts, L-BFGS
  history, XLA); the dictionary, parameters, batch and coefficients are
  arguments. So `_paper_steps` builds them once per settings and process,
  and every trainer with those settings reuses their traces: a second
  `fit_em(engine='paper')` of same-shaped batches traces nothing (the
  first traces the L-BFGS E-step for about 15 s on a small problem).
  """

  # Plain methods, each wrapped once by `__init__`: the E-steps take
  # their iteration count first (bound with functools.partial), and
  # `_em_step_with` / `_refit_with` take the E-step they run.

  def __init__(self, family, names, scale_floor, e_step_method, iterations,
               eval_iterations, pairs, jit_compile):
    self.family = get_family(family)
    self._names = names
    self.scale_floor = scale_floor
    self.e_step_method = e_step_method
    self._pairs = pairs

    def compiled(f, jit):
      # autograph=False: see `tfp_esc.inference.mm` ("Compiling it").
      return tf.function(f, jit_compile=jit, reduce_retracing=True,
                         autograph=False)

    lbfgs = functools.partial(self._lbfgs_e_step, iterations)
    if self.e_step_method == 'lbfgs':
      # One XLA program per step: measured faster than compiling the
      # objective alone.
      self.e_step = compiled(lbfgs, jit_compile)
      self.em_step = compiled(functools.partial(
          self._em_step_with, lbfgs, self._gradient_m_step), jit_compile)
    else:
      # Newton stays out of XLA; the M-step may use it.
      self.e_step = compiled(
          functools.partial(self._newton_e_step, iterations), False)
      self.em_step = functools.partial(
          self._em_step_with, self.e_step,
          compiled(self._gradient_m_step, jit_compile))
    # Evaluation re-fits with the most accurate E-step for the family,
    # whatever trains, so that methods are compared by one yardstick.
    if self.family.family == 'diagonal':
      self.refit = functools.partial(
          self._refit_with,
          compiled(functools.partial(self._newton_e_step, eval_iterations),
                   False),
          compiled(self._statistics, jit_compile))
    else:
      self.refit = compiled(functools.partial(
          self._refit_with,
          functools.partial(self._lbfgs_e_step, eval_iterations),
          self._statistics), jit_compile)

  def _unflatten(self, flat, params):
    """The dict of `params`' shapes from one flat vector.

    The batch dimension may be unknown (retracing relaxes it): split by
    dynamic sizes and keep the static trailing dimensions.
    """
    sizes = tf.stack([tf.size(params[k]) for k in self._names])
    pieces = tf.split(flat, sizes, num=len(self._names))
    return {k: tf.reshape(p, [-1] + params[k].shape[1:].as_list())
            for k, p in zip(self._names, pieces)}

  def _lbfgs_e_step(self, iterations, dictionary, params, x, coefficients):
    """TFP L-BFGS on -B F_a over the batch's unconstrained parameters."""
    flat = tf.concat([tf.reshape(params[k], [-1]) for k in self._names], 0)
    count = tf.cast(tf.shape(x)[0], x.dtype)

    def loss_and_gradient(position):
      with tf.GradientTape() as tape:
        tape.watch(position)
        q = self.family.from_unconstrained(self._unflatten(position, params),
                                           floor=self.scale_floor)
        terms = elbo_lib.entropy_elbo(x, dictionary, q, coefficients[0],
                                      coefficients[1], coefficients[2])
        loss = -count * terms.objective
      return loss, tape.gradient(loss, position)

    result = tfp.optimizer.lbfgs_minimize(
        loss_and_gradient, initial_position=flat,
        num_correction_pairs=self._pairs, max_iterations=iterations,
        tolerance=0.0)
    return self._unflatten(result.position, params), result.num_iterations

  def _newton_e_step(self, iterations, dictionary, params, x, coefficients):
    """`newton_e_step` on the batch (diagonal posteriors)."""
    q = self.family.from_unconstrained(params, floor=self.scale_floor)
    loc, scale = newton_e_step(x, dictionary, q.loc, q.scale, coefficients,
                               iterations=iterations, floor=self.scale_floor)
    return (self.family(loc, scale).to_unconstrained(self.scale_floor),
            tf.constant(iterations, tf.int32))

  def _gradient_m_step(self, v, params, x, coefficients, step_size):
    """One gradient-ascent step of F_a in V; returns (V, F_a)."""
    with tf.GradientTape() as tape:
      tape.watch(v)
      q = self.family.from_unconstrained(params, floor=self.scale_floor)
      terms = elbo_lib.entropy_elbo(x, normalize_columns(v), q,
                                    coefficients[0], coefficients[1],
                                    coefficients[2])
    gradient = tape.gradient(terms.objective, v)
    return v + step_size * gradient, terms.objective

  def _statistics(self, v, params, x):
    q = self.family.from_unconstrained(params, floor=self.scale_floor)
    return elbo_lib.elbo_statistics(x, normalize_columns(v), q)

  def _em_step_with(self, e_step, m_step, v, params, x, coefficients,
                    step_size):
    """E-step then M-step of one batch; returns (V, params, F_a, count)."""
    params, count = e_step(normalize_columns(v), params, x, coefficients)
    v, objective = m_step(v, params, x, coefficients, step_size)
    return v, params, objective, count

  def _refit_with(self, e_step, statistics, v, params, x):
    """Non-annealed E-step, then the batch's `ElboStatistics`."""
    params, _ = e_step(normalize_columns(v), params, x,
                       tf.ones([3], x.dtype))
    return params, statistics(v, params, x)


@functools.lru_cache(maxsize=16)
def _paper_steps(family, names, shapes, scale_floor, e_step_method,
                 iterations, eval_iterations, pairs, jit_compile):
  """The shared `_PaperSteps` of these (hashable) static settings; `shapes`
  (D and the parameters' trailing shapes) only keys the cache."""
  del shapes
  return _PaperSteps(family, names, scale_floor, e_step_method, iterations,
                     eval_iterations, pairs, jit_compile)


def fit_em(x, num_latents, *, engine='incremental', epochs=10,
           refine_rounds=None, checkpoint_path=None, resume=False,
           overwrite=False, checkpoint_config=None, on_epoch_end=None,
           callbacks=None, verbose=1, tensorboard_dir=None,
           early_stopping_patience=None, early_stopping_min_delta=0.0,
           **options):
  """Trains by EM; the default engine is incremental EM with refinement.

  Engines:
    'incremental' (default, diagonal posteriors):
      `tfp_esc.inference.incremental_em.IncrementalEMTrainer`: `epochs`
      passes of incremental EM (warm per-point posteriors, Gram-form
      majorise-minimise E-steps, closed-form M-steps from full-data sums),
      then `refine_rounds` rounds of L-BFGS on the profile ELBO
      max_q F(W, q).
    'paper': `EMTrainer`, the paper's protocol (SPEC 10: L-BFGS E-steps from
      a fresh start, one gradient M-step per batch), every family.

  Args:
    x: `[N, D]` float data.
    num_latents: H.
    engine: 'incremental' or 'paper'.
    epochs: total number of EM epochs (a resumed run counts the ones done);
      a positive integer.
    refine_rounds: refinement rounds after the epochs ('incremental' only;
      default `DEFAULT_REFINE_ROUNDS`, 0 for none); at most that many:
      they stop after a round that found no higher ELBO, since the next
      would repeat it (`IncrementalEMTrainer.refine_converged`).
    checkpoint_path: optional checkpoint directory (`tf.train.Checkpoint`)
      replaced atomically after every epoch and round; it records the
      run's config (engine, options, data shape and fingerprint,
      `checkpoint_config`).
    resume: continue from `checkpoint_path` if it exists; a checkpoint of
      another run (a differing config field), of the other engine, with
      more epochs or rounds done than asked for, or a corrupt one raises
      `CheckpointError`.
    overwrite: without `resume`, replace an existing `checkpoint_path`
      (else it is an error).
    checkpoint_config: optional JSON-able dict recorded in the checkpoint
      and compared on resume (e.g. an experiment's config).
    on_epoch_end: optional `f(trainer, record) -> dict or None` called after
      each epoch's (and round's) evaluation, before the checkpoint; the
      metrics it returns are appended to the history under their keys (e.g.
      a Gini index).
    callbacks: optional list of `keras.callbacks.Callback`, called by the
      `keras.Model.fit` that runs the EM epochs and by the one that runs
      the refinement rounds after them (module doc, "Keras"; round r is
      epoch `epochs_done + r`). Their epoch logs hold the epoch's or
      round's record (its numbers: 'elbo', the entropies, 'noise_variance',
      the coefficients, 'seconds', and what `on_epoch_end` returned), after
      the checkpoint is written; a callback that sets `model.stop_training`
      ends the epochs (the refinement rounds still run), or, in a round,
      the rounds. Their own state (e.g. Keras' `EarlyStopping` counter) is
      not in the checkpoint, and each of the two fits begins it afresh;
      `early_stopping_patience` is in the checkpoint.
    verbose: Keras' progress bar over each epoch's batches (and the
      rounds): 0 none, 1 a bar, 2 a line per epoch.
    tensorboard_dir: optional TensorBoard log folder (the epoch and round
      logs; needs the extra "tfp_esc[tensorboard]", else a warning and no
      logs).
    early_stopping_patience: optional P >= 1: end the epochs early once the
      full-data ELBO has not risen by more than `early_stopping_min_delta`
      (>= 0) for P non-annealed epochs (`elbo_has_stalled`, which reads the
      checkpointed history: a resumed run stops where an uninterrupted one
      does). The refinement rounds still run. Default None: all epochs.
    early_stopping_min_delta: see `early_stopping_patience`.
    **options: keyword arguments of the engine's trainer.

  Returns:
    `EMResult`.

  Raises:
    TypeError: an argument of the wrong type (counts must be integers;
      see `tfp_esc._checks`).
    ValueError: an unknown engine, epochs or refine_rounds out of range, a
      non-diagonal posterior for 'incremental', options the engine does not
      take, a call inside a `tf.distribute` strategy's scope, and the
      trainer's own errors; all before any compilation.
  """
  _checks.check_choice(engine, 'engine', ENGINES)
  epochs = _checks.check_count(epochs, 'epochs')
  _checks.check_flag(resume, 'resume')
  if on_epoch_end is not None and not callable(on_epoch_end):
    raise TypeError(f'on_epoch_end must be callable or None, got '
                    f'{type(on_epoch_end).__name__}.')
  callbacks = check_callbacks(callbacks)
  _checks.check_count(verbose, 'verbose', 0, 2)
  if tf.distribute.has_strategy():
    # Keras would run the step once per replica of that strategy.
    raise ValueError(
        'fit_em was called inside a tf.distribute strategy scope; call it '
        'outside, and pass the strategy as strategy= (engine '
        "'incremental'): the trainer distributes its own E-steps.")
  if early_stopping_patience is not None:
    _checks.check_count(early_stopping_patience, 'early_stopping_patience')
  _checks.check_real(early_stopping_min_delta, 'early_stopping_min_delta',
                     low=0.0, low_open=False)
  if engine == 'incremental':
    posterior = _checks.check_choice(options.pop('posterior', 'diagonal'),
                                     'posterior', FAMILIES)
    options.pop('rank', None)
    if posterior != 'diagonal':
      raise ValueError(f"engine='incremental' needs posterior='diagonal', got "
                       f"{posterior!r}; use engine='paper' for it.")
    unknown = sorted(set(options) - set(inspect.signature(
        IncrementalEMTrainer).parameters))
    if unknown:
      raise ValueError(f"engine='incremental' does not take {unknown}; they "
                       "are options of engine='paper'.")
    refine_rounds = _checks.check_count(
        DEFAULT_REFINE_ROUNDS if refine_rounds is None else refine_rounds,
        'refine_rounds', 0)
    trainer = IncrementalEMTrainer(x, num_latents, **options)
  else:
    if refine_rounds:
      raise ValueError("refine_rounds is an option of engine='incremental'.")
    if options.pop('strategy', None) is not None:
      raise ValueError("strategy is an option of engine='incremental'.")
    refine_rounds = 0
    trainer = EMTrainer(x, num_latents, **options)
  config = _run_config(x, num_latents, engine, options, checkpoint_config)
  stalled = False
  if _checkpoint.check_start(checkpoint_path, resume, overwrite):
    trainer.restore(checkpoint_path, config)
    stalled = (early_stopping_patience is not None and elbo_has_stalled(
        trainer.history, early_stopping_patience, early_stopping_min_delta))
    _check_extent(checkpoint_path, trainer, int(epochs), int(refine_rounds),
                  stalled)
    logging.info('Resumed from %s at epoch %d.', checkpoint_path,
                 trainer.epoch)

  def finish(record):
    extra = on_epoch_end(trainer, record) if on_epoch_end else None
    for k, v in (extra or {}).items():
      trainer.history.setdefault(k, []).append(v)
      record[k] = v
    if checkpoint_path:
      trainer.save(checkpoint_path, config)
    return record

  if trainer.epoch < int(epochs) and not stalled:
    extra = []
    if early_stopping_patience is not None:
      extra.append(ElboEarlyStopping(trainer.history, early_stopping_patience,
                                     early_stopping_min_delta))
    extra += tensorboard_callbacks(tensorboard_dir)
    fit_epochs(trainer, int(epochs), [_EpochCallback(trainer, finish)]
               + extra + callbacks, verbose)
  if (getattr(trainer, 'refine_round', 0) < int(refine_rounds)
      and not getattr(trainer, 'refine_converged', False)):
    rounds = _RefinementRounds(trainer)
    fit_epochs(rounds, trainer.epoch + int(refine_rounds),
               [_EpochCallback(rounds, finish)]
               + tensorboard_callbacks(tensorboard_dir) + callbacks, verbose)
  return EMResult(dictionary=trainer.dictionary, params=trainer.params,
                  history=trainer.history)


def _run_config(x, num_latents, engine, options, extra):
  """What identifies an EM run in its checkpoint: `extra`'s fields first."""
  x = np.asarray(x)
  settings = {k: (repr(v) if k == 'schedule' else
                  _checkpoint.data_fingerprint(np.asarray(v))
                  if hasattr(v, 'shape') else v)
              for k, v in options.items() if k != 'strategy'}
  # A strategy is recorded as data_parallel=True: the E-step is then the
  # data-parallel one, whose result does not depend on the replicas.
  if options.get('strategy') is not None:
    settings['data_parallel'] = True
  return {**(extra or {}),
          **{k: v for k, v in dict(
              engine=engine, num_latents=int(num_latents),
              data_shape=list(x.shape), data_dtype=x.dtype.name,
              data=_checkpoint.data_fingerprint(x), **settings).items()
             if k not in (extra or {})}}


def _check_extent(path, trainer, epochs, refine_rounds, stalled=False):
  """Refuses a checkpoint that has trained further than this run asks (or
  moved on to refinement before `epochs`, unless early stopping ended its
  epochs: `stalled`)."""
  done_rounds = getattr(trainer, 'refine_round', 0)
  if trainer.epoch > epochs or done_rounds > refine_rounds:
    raise _checkpoint.CheckpointError(
        f'checkpoint {path!r} has done {trainer.epoch} epochs and '
        f'{done_rounds} refinement rounds, more than this run asks for '
        f'(epochs={epochs}, refine_rounds={refine_rounds}); ask for at '
        'least as many, or start afresh with overwrite=True (scripts: '
        '--overwrite).')
  if done_rounds and trainer.epoch < epochs and not stalled:
    raise _checkpoint.CheckpointError(
        f'checkpoint {path!r} has moved on to refinement after '
        f'{trainer.epoch} epochs; it cannot add epochs (epochs={epochs}). '
        'Start afresh with overwrite=True (scripts: --overwrite).')


# -- Keras ---------------------------------------------------------------------


class _EpochDriver(keras.Model):
  """A `keras.Model` whose `train_step` is an EM trainer's `visit`.

  It holds no weights: the trainer keeps its state (NumPy arrays) and
  compiles its own steps, so `fit` runs the step eagerly (`run_eagerly`)
  and the model only hands Keras' loop, callbacks and progress bar each
  batch's indices.
  """

  def __init__(self, trainer):
    super().__init__()
    self.trainer = trainer
    self.built = True

  def train_step(self, data):
    return self.trainer.visit(data.numpy())


class _EpochCallback(keras.callbacks.Callback):
  """Begins and ends the trainer's epochs around Keras' (it must come first
  in the list): at an epoch's end, `finish(trainer.end_epoch())` (history,
  checkpoint), and the record's numbers go into the epoch's logs, which
  the later callbacks see."""

  def __init__(self, trainer, finish):
    super().__init__()
    self.trainer, self.finish = trainer, finish

  def on_epoch_begin(self, epoch, logs=None):
    if epoch != self.trainer.epoch:
      raise RuntimeError(f'keras epoch {epoch} is not the trainer\'s '
                         f'epoch {self.trainer.epoch}.')
    self.trainer.begin_epoch()

  def on_epoch_end(self, epoch, logs=None):
    record = self.finish(self.trainer.end_epoch())
    if logs is not None:
      logs.clear()
      logs.update({k: float(v) for k, v in record.items()
                   if k != 'epoch' and isinstance(v, (int, float, np.number))
                   and not isinstance(v, bool)})
    if getattr(self.trainer, 'finished', False):
      self.model.stop_training = True


class _RefinementRounds:
  """An incremental trainer's refinement rounds as epochs for `fit_epochs`.

  Round r is Keras epoch `trainer.epoch + r` (the number its record
  carries), of one step: that step (`visit`) runs
  `trainer.run_refinement_round()`, and `end_epoch` returns its record. So
  the rounds reach the same callbacks, TensorBoard logs and progress bar as
  the epochs, numbered on from them. `finished` turns true once a round has
  found no higher ELBO (`refine_converged`): the next round would repeat it,
  so `_EpochCallback` stops the fit there.
  """

  batch_size = 1

  def __init__(self, trainer):
    self.trainer, self._record = trainer, None

  @property
  def epoch(self):
    return self.trainer.epoch + self.trainer.refine_round

  @property
  def finished(self):
    return self.trainer.refine_converged

  def epoch_batches(self, epoch):
    del epoch
    return [np.zeros([1], np.int64)]

  def begin_epoch(self):
    self._record = None

  def visit(self, indices):
    del indices
    self._record = self.trainer.run_refinement_round()
    return {'round': self.trainer.refine_round}

  def end_epoch(self):
    record, self._record = epoch_under_way(self._record), None
    return record


def fit_epochs(trainer, epochs, callbacks, verbose=0):
  """Runs an EM trainer's epochs up to `epochs` by `keras.Model.fit`.

  The data are a `tf.data` pipeline of each epoch's batch indices
  (`trainer.epoch_batches(epoch)`, a function of (seed, epoch): consecutive
  slices of `trainer.batch_size` of one order), from the trainer's current
  epoch on, so a restored trainer continues as an uninterrupted one; it is
  `epoch_index_batches`, whose doc says why not `from_generator`.

  Args:
    trainer: `IncrementalEMTrainer` or `EMTrainer` (anything with `epoch`,
      `epoch_batches`, `begin_epoch`, `visit`, `end_epoch`).
    epochs: the epoch to stop at (exclusive), > trainer.epoch.
    callbacks: Keras callbacks; the first must begin and end the trainer's
      epochs (`fit_em` puts its `_EpochCallback` there).
    verbose: Keras' progress bar (0, 1, 2).

  Returns:
    The `keras.callbacks.History` of the fit.
  """
  first = trainer.epoch

  def epoch_order(epoch):
    return np.concatenate(trainer.epoch_batches(epoch))

  dataset = epoch_index_batches(epoch_order, trainer.batch_size, first,
                                epochs, drop_remainder=False)
  driver = _EpochDriver(trainer)
  driver.compile(run_eagerly=True)
  return driver.fit(dataset, epochs=epochs, initial_epoch=first,
                    steps_per_epoch=len(trainer.epoch_batches(first)),
                    callbacks=callbacks, verbose=verbose, shuffle=False)
