"""Incremental EM: the library's default EM engine (diagonal posteriors).

Every data point keeps its posterior q_n = N(nu_n, diag(s_n^2)) from visit to
visit, and the trainer keeps the exact full-data sums that F and the
dictionary update need (Neal and Hinton's incremental EM):

  A = sum_n (nu_n nu_n^T + diag(s_n^2))  [H, H]    B = sum_n x_n nu_n^T  [D, H]
  M = sum_n A(nu_n, s_n)                 [H]       S = sum_n sum_h log s_nh
  X = sum_n ||x_n||^2

over the points seen so far. For every minibatch:

  E-step: `tfp_esc.inference.mm.mm_e_step` raises the full-data F_a as a
          function of the batch's parameters, warm-started from the stored
          ones, with the other points' sums as context (lambda*, sigma^2*
          are those of the whole data set);
  sums:   the batch's old contribution is swapped for its new one;
  M-step: in closed form. With q fixed, F depends on W only through
          sigma^2* = (X - 2 tr(W^T B) + tr(W^T W A)) / (N D), minimised by
          W~ = B A^-1. Its columns have norms c_h; W = W~ / c with every
          code rescaled by c (nu_nh -> c_h nu_nh, s_nh -> c_h s_nh) leaves
          sum_n H[q_n] - N H[p(z | lambda*)] unchanged (both move by
          N sum_h log c_h) and the reconstruction error equal to W~'s, so F
          rises by (D/2) log(sigma^2_old / sigma^2_new).

Each step never lowers the full-data F_a of the stored posteriors; the
epoch's ELBO is the non-annealed F of the stored posteriors and the current
dictionary, an exact value of a lower bound, computed from sums re-computed
from scratch (in float64) at the end of every epoch. No re-fit pass is
needed for it (tests compare it with `entropy_elbo` of the stored
posteriors, and a converged re-fit agrees to 1e-3 nats).

After the epochs, `run_refinement_round` runs L-BFGS on the profile ELBO
max_q F(W, q): EM moves the dictionary slowly once codes and fields
co-adapt, and the profile L-BFGS follows the coupled direction.

The rescaling of the codes by c is kept as a running gain `[H]` and folded
into the stored parameters once per epoch, so an M-step costs O(D H^2 + H^3),
not O(N H).

Prior annealing (a_prior > 1): F_a is unbounded above under a common
shrinkage of all codes (by (a_prior - a_q) H log(1/c)), and an E-step that
optimises it (this one does, unlike 100 truncated L-BFGS iterations from a
fresh start) drives every code to zero for good: with lambda* re-estimated
after every batch the ELBO stayed at the all-zero value (-61.8 on 8,192
unseen photograph patches) through every epoch. So while a_prior > 1 the
E-steps hold lambda fixed at lambda* of the moment annealing met the first
seen points (the very first batch is fitted without annealing to have one):
then each point's objective is bounded, the codes shrink under the stronger
prior and recover as a_prior falls to 1, when lambda* returns.

Several devices (`strategy`, a `tf.distribute.Strategy`): the E-step above
couples a batch's points through lambda*, sigma^2*, re-estimated after every
iteration, and an all-reduce inside XLA's loop is not available
(`MirroredStrategy` refuses `merge_call` in a while loop). With a strategy
the E-step is the classical one instead: lambda and sigma^2 are held at the
optimal values of the current sums (every seen point, the batch's old share
included; lambda at the annealing value while a_prior > 1), where L_a
separates over points, so each replica fits its share of the batch alone
and only the sums are added up. It never lowers F either: the E-step
raises L_a at the held values, which equals F_a before it and is at most
F_a after it (F_a is the maximum of L_a over lambda, sigma^2). The very
first batch (no sums yet) is fitted by the coupled E-step on one device.
The result does not depend on the number of replicas (up to the order of
float sums); it differs from the coupled E-step's, by design.

Batches are drawn from a permutation that depends only on (seed, epoch), and
checkpoints are written at epoch ends, so a resumed run repeats an
uninterrupted one exactly.
"""

import dataclasses
import functools
import operator
import time

import numpy as np
import scipy.optimize
import tensorflow as tf
from absl import logging

from tfp_esc import _checks
from tfp_esc.inference import _checkpoint
from tfp_esc.inference._training import (DEAD_COLUMN, RELATIVE_SCALE_FLOOR,
                                         TERMS, as_data, batches,
                                         check_schedule, data_scale,
                                         elbo_record, epoch_under_way,
                                         to_data_units)
from tfp_esc.inference.mm import mm_e_step
from tfp_esc.objective import elbo as elbo_lib
from tfp_esc.objective.annealing import NoAnnealing
from tfp_esc.objective.special import expected_magnitude
from tfp_esc.posterior.gaussian import DiagonalGaussian

__all__ = ['IncrementalEMTrainer', 'dictionary_gradient',
           'principal_directions']

# Two-variable Newton steps per majorise-minimise iteration. One halves the
# iteration's cost (the erf/exp evaluations dominate it) and reaches nearly
# the same batch objective per iteration as two (fresh batch, B = 512,
# H = 100, a_prior = 1: -60.437 vs -60.434 after 30 iterations, 20.7 vs
# 44.0 ms); 60 single-step iterations (36 ms) pass 100 L-BFGS iterations
# (-60.354 vs -60.358). On the unseen photographs (H = 64, 6 epochs) the
# whole train_patches command took 22 s instead of 43 s (ELBO 71.38 vs
# 71.54), mostly from the refinement's E-steps. Revisits run 16 single-step
# iterations (the cost of the former 8 double-step ones): on bars (500
# points, 8 seeds) 8 of them left more seeds in a poor local optimum.
INNER_ITERATIONS = 1



@dataclasses.dataclass
class _Sums:
  """Full-data sums over the points seen so far, in float64 (module doc)."""
  count: float
  data_norms2: float
  second_moment: np.ndarray    # A [H, H]
  cross: np.ndarray            # B [D, H]
  magnitude: np.ndarray        # M [H]
  log_scale: float             # S

  def __add__(self, other):
    return _Sums(*(a + b for a, b in zip(dataclasses.astuple(self),
                                          dataclasses.astuple(other))))

  def __sub__(self, other):
    return _Sums(*(a - b for a, b in zip(dataclasses.astuple(self),
                                          dataclasses.astuple(other))))

  def context(self, dictionary, dtype):
    """These sums as the `ElboStatistics` context of `mm_e_step`."""
    return elbo_lib.ElboStatistics(
        count=tf.constant(self.count, dtype),
        reconstruction=tf.constant(
            max(0.0, self.reconstruction(dictionary)) if self.count else 0.0,
            dtype),
        expected_magnitude=tf.constant(self.magnitude, dtype),
        q_entropy=tf.constant(0.0, dtype))

  def reconstruction(self, dictionary):
    """sum_n E||x_n - W z||^2 for the stored posteriors: a float."""
    w = dictionary.astype(np.float64)
    return float(self.data_norms2 - 2.0 * np.sum(w * self.cross)
                 + np.sum((w.T @ w) * self.second_moment))

  def optimal(self, dictionary, num_observed):
    """(lambda* `[H]`, sigma^2*) of the stored posteriors (count > 0)."""
    return (self.magnitude / self.count,
            self.reconstruction(dictionary) / (self.count * num_observed))


def principal_directions(x, num_latents, seed, max_points=8192):
  """A start for W: the data's top principal directions (as scikit-learn's
  dictionary learners start from an SVD).

  Args:
    x: `[N, D]` float data.
    num_latents: H.
    seed: seeds the subset of at most `max_points` rows and, for H > D, the
      Gaussian columns beyond the D principal ones.
    max_points: rows used for the SVD.

  Returns:
    `[D, H]` float64 with unit-norm columns.
  """
  rng = np.random.default_rng([seed, 1])
  rows = x if len(x) <= max_points else x[np.sort(
      rng.choice(len(x), max_points, replace=False))]
  _, _, vt = np.linalg.svd(np.asarray(rows, np.float64), full_matrices=False)
  columns = vt[:num_latents].T
  extra = num_latents - columns.shape[1]
  if extra > 0:
    columns = np.concatenate(
        [columns, rng.standard_normal((x.shape[1], extra))], 1)
  return columns / np.linalg.norm(columns, axis=0)


def _contribution(x, loc, scale):
  """A batch's share of the sums (X, A, B, M, S), in the inputs' dtype.

  The one home of these formulas: the compiled step uses it in the data's
  dtype, `_float64_contribution` in float64.
  """
  return (tf.reduce_sum(tf.square(x)),
          tf.matmul(loc, loc, transpose_a=True)
          + tf.linalg.diag(tf.reduce_sum(tf.square(scale), 0)),
          tf.matmul(x, loc, transpose_a=True),
          tf.reduce_sum(expected_magnitude(loc, scale), 0),
          tf.reduce_sum(tf.math.log(scale)))


def _float64_contribution(x, loc, scale):
  """`_Sums` of points x `[n, D]` with posteriors loc, scale `[n, H]`."""
  parts = _contribution(*(tf.constant(v, tf.float64) for v in (x, loc, scale)))
  return _Sums(float(len(x)), *(np.asarray(v) for v in parts))


def dictionary_gradient(v, sums, num_observed):
  """dF/dV of F(W = V / ||V||_col, q) with q fixed, from the sums.

  F depends on W only through sigma^2* = (X - 2 tr(W^T B) + tr(W^T W A))
  / (N D), so dF/dW = -(W A - B) / (N sigma^2*); through the normalisation
  dF/dv_h = (I - w_h w_h^T) dF/dw_h / ||v_h||.

  Args:
    v: `[D, H]` float64 unnormalised dictionary.
    sums: `_Sums` of the posteriors (count N > 0).
    num_observed: D.

  Returns:
    `[D, H]` float64.
  """
  norms = np.linalg.norm(v, axis=0)
  w = v / norms
  _, noise_variance = sums.optimal(w, num_observed)
  grad_w = -(w @ sums.second_moment - sums.cross) / (
      sums.count * noise_variance)
  return (grad_w - w * np.sum(w * grad_w, 0)) / norms


@dataclasses.dataclass
class _EpochState:
  """What `IncrementalEMTrainer` carries from `begin_epoch` to `end_epoch`."""
  schedule_value: object      # AnnealingCoefficients of the epoch
  start: float                # time.perf_counter() at its start
  coefficients: tf.Tensor     # [3] (a_q, a_prior, a_lik)
  points: int = 0             # points visited so far


class IncrementalEMTrainer:
  """Incremental EM with closed-form M-steps; see the module doc.

  Args:
    x: `[N, D]` float32/float64 data (its dtype is the computation's).
    num_latents: H.
    schedule: annealing schedule indexed by epoch, or its name (see
      `get_schedule`); default none.
    batch_size: minibatch size B (the last batch of an epoch may be smaller).
    e_step_iterations: majorise-minimise iterations per revisit.
    first_visit_iterations: iterations at a point's first visit (its
      posterior starts from nu = 0, s = the data's root mean square).
    refine_iterations: L-BFGS iterations per refinement round
      (`run_refinement_round`).
    refine_e_step_iterations: majorise-minimise iterations per point in
      every evaluation of the profile ELBO.
    chunk_size: points per E-step call during refinement.
    train_dictionary: False keeps `init_dictionary` (normalised) fixed and
      only fits the posteriors: F of a frozen dictionary, and its lambda*,
      sigma^2* (e.g. to evaluate a MAP dictionary).
    init_dictionary: optional `[D, H]` start; default Gaussian, seeded.
      `principal_directions` is another start: on whitened patches it
      speeds up the first epochs, but on bars it starts EM at a symmetric
      point it does not leave (measured: 0 of 10 bars, ELBO -22.7 against
      about -9.3 from a Gaussian start).
    seed: seeds the dictionary and the batch order.
    jit_compile: compile the E-step with XLA.
    strategy: optional `tf.distribute.Strategy`: every E-step after the
      first batch is the classical, data-parallel one, each replica fitting
      its share of the batch (module doc; any strategy, one replica too,
      selects it).

  Attributes:
    data_scale: s, the root mean square of x; the trainer works on
      x / s (its `x`, `loc`, `scale`, `sums`), and reports in x's units
      (`params`, `posterior`, `elbo_terms`, `evaluate`, the history).

  Raises:
    TypeError: an argument of the wrong type (see `tfp_esc._checks`).
    ValueError: bad shapes, NaN/inf or empty data, data whose rows are all
      the same (all zeros, constant), batch_size outside [1, N],
      non-positive counts.
  """

  def __init__(self, x, num_latents, *, schedule=None, batch_size=256,
               e_step_iterations=16, first_visit_iterations=60,
               refine_iterations=50, refine_e_step_iterations=5,
               chunk_size=8192, init_dictionary=None, train_dictionary=True,
               seed=0, jit_compile=True, strategy=None):
    if strategy is not None and not isinstance(strategy,
                                               tf.distribute.Strategy):
      raise TypeError('strategy must be a tf.distribute.Strategy or None, got '
                      f'{type(strategy).__name__}.')
    self.strategy = strategy
    x = as_data(x)
    num_points, num_observed = x.shape
    self.data_scale = data_scale(x)  # refuses data without variation
    self.num_latents = _checks.check_count(num_latents, 'num_latents')
    self.batch_size = _checks.check_count(batch_size, 'batch_size', 1,
                                          num_points)
    self.e_step_iterations = _checks.check_count(e_step_iterations,
                                                 'e_step_iterations')
    self.first_visit_iterations = _checks.check_count(
        first_visit_iterations, 'first_visit_iterations')
    self.refine_iterations = _checks.check_count(refine_iterations,
                                                 'refine_iterations')
    self.refine_e_step_iterations = _checks.check_count(
        refine_e_step_iterations, 'refine_e_step_iterations')
    self.chunk_size = _checks.check_count(chunk_size, 'chunk_size')
    self.schedule = check_schedule(schedule)
    self.seed = _checks.check_count(seed, 'seed', 0)
    self.train_dictionary = _checks.check_flag(train_dictionary,
                                               'train_dictionary')
    _checks.check_flag(jit_compile, 'jit_compile')
    if init_dictionary is None:
      init_dictionary = np.random.default_rng(self.seed).standard_normal(
          (num_observed, self.num_latents))
    init_dictionary = _checks.check_data(init_dictionary, 'init_dictionary')
    if init_dictionary.shape != (num_observed, self.num_latents):
      raise ValueError(f'init_dictionary has shape {init_dictionary.shape}, '
                       f'expected {(num_observed, self.num_latents)} for x of '
                       f'shape {x.shape}.')
    init_dictionary = init_dictionary.astype(np.float64)
    norms = np.linalg.norm(init_dictionary, axis=0)
    if np.any(norms == 0):
      raise ValueError('init_dictionary has an all-zero column.')
    # Work on x / s, s the data's root mean square (`_training`): the floor
    # and the initial posterior scale are relative to it.
    self.x = x / np.asarray(self.data_scale, x.dtype)
    self.dtype = tf.as_dtype(self.x.dtype)
    self.floor = RELATIVE_SCALE_FLOOR
    self._init_scale = 1.0
    self.w = init_dictionary / norms                       # float64 [D, H]
    shape = (num_points, self.num_latents)
    self.loc = np.zeros(shape, self.x.dtype)
    self.scale = np.full(shape, self._init_scale, self.x.dtype)
    self.seen = np.zeros(num_points, bool)
    self._gain = np.ones(self.num_latents)
    # A lower bound of each latent's smallest stored scale (times the gain)
    # over the seen points: exact after `_recompute_sums`, lowered by every
    # E-step and moved by every M-step in between.
    self._scale_low = np.full(self.num_latents, np.inf)
    # lambda held fixed while a_prior > 1 (see the class doc).
    self._annealing_scales = None
    self.sums = self._empty_sums()
    self.epoch = 0
    self._current = None       # the epoch under way (`begin_epoch`)
    self.refine_round = 0
    # True after a round that found no higher ELBO (see run_refinement_round).
    self.refine_converged = False
    self._passes = 0
    self._seconds = 0.0
    self.history = {k: [] for k in (
        'epoch', 'phase', 'passes', 'noise_variance', 'scales', 'a_q', 'a_prior',
        'a_lik', 'seconds') + TERMS}
    # One trace for every batch size (a resumed run must run the same
    # graphs as an uninterrupted one); one function per lambda mode.
    dtype, d, h = self.dtype, num_observed, self.num_latents
    signature = [tf.TensorSpec([None, d], dtype), tf.TensorSpec([d, h], dtype),
                 tf.TensorSpec([None, h], dtype), tf.TensorSpec([None, h], dtype),
                 tf.TensorSpec([3], dtype),
                 elbo_lib.ElboStatistics(
                     tf.TensorSpec([], dtype), tf.TensorSpec([], dtype),
                     tf.TensorSpec([h], dtype), tf.TensorSpec([], dtype)),
                 tf.TensorSpec([], tf.int32)]
    # autograph=False: see `tfp_esc.inference.mm` ("Compiling it"). One
    # function for lambda free and lambda held (`mm_e_step`'s hold_scales):
    # one XLA compilation instead of two in the first epoch.
    self._step = tf.function(
        self._batch_step, jit_compile=jit_compile, autograph=False,
        input_signature=signature + [tf.TensorSpec([h], dtype),
                                     tf.TensorSpec([], tf.bool)])
    self._held_step = tf.function(
        self._held_batch_step, jit_compile=jit_compile, autograph=False,
        input_signature=signature[:5] + [tf.TensorSpec([h], dtype),
                                         tf.TensorSpec([], dtype),
                                         tf.TensorSpec([], tf.int32)])
    # strategy.run inside one tf.function with a fixed signature (run
    # eagerly, MirroredStrategy warns of its overhead at every call; traced
    # per shape, a resumed run's graphs could differ from an uninterrupted
    # run's). Every replica takes its share of the whole batch itself.
    self._distributed_held_step = tf.function(
        lambda *args: self.strategy.run(self._replica_share, args=args),
        input_signature=self._held_step.input_signature)

  # -- the compiled batch step ------------------------------------------------

  def _batch_step(self, x, dictionary, loc, scale, coefficients, context,
                  iterations, scales=None, hold_scales=None,
                  noise_variance=None):
    loc, scale = mm_e_step(x, dictionary, loc, scale, coefficients,
                           iterations=iterations, floor=self.floor,
                           context=context, scales=scales,
                           hold_scales=hold_scales,
                           noise_variance=noise_variance,
                           inner_iterations=INNER_ITERATIONS)
    return loc, scale, _contribution(x, loc, scale)

  def _e_step(self, arguments, scales=None):
    """`_step` on `arguments` (x, dictionary, loc, scale, coefficients,
    context, iterations) with lambda held at `scales` `[H]`, or free."""
    held = scales is not None
    if not held:
      scales = tf.ones([self.num_latents], self.dtype)   # Not used.
    return self._step(*arguments, scales, tf.constant(held))

  def _held_batch_step(self, x, dictionary, loc, scale, coefficients, scales,
                       noise_variance, iterations):
    """`_batch_step` with lambda and sigma^2 held (no context needed)."""
    return self._batch_step(x, dictionary, loc, scale, coefficients, None,
                            iterations, scales, noise_variance=noise_variance)

  def _replica_share(self, x, dictionary, loc, scale, *held):
    """`_held_step` on this replica's contiguous share of the points (the
    shares of `np.array_split`, in replica order)."""
    context = tf.distribute.get_replica_context()
    replicas = context.num_replicas_in_sync
    replica = tf.cast(context.replica_id_in_sync_group, tf.int32)
    count = tf.shape(x)[0]
    start = replica * (count // replicas) + tf.minimum(replica,
                                                       count % replicas)
    size = count // replicas + tf.cast(replica < count % replicas, tf.int32)
    return self._held_step(x[start:start + size], dictionary,
                           loc[start:start + size], scale[start:start + size],
                           *held)

  def _data_parallel_e_step(self, sums, x, dictionary, loc, scale,
                            coefficients, scales, iterations):
    """The classical E-step of points x under `self.strategy` (module doc).

    lambda = `scales` (or lambda* of `sums`), sigma^2 = sigma^2* of `sums`
    at `dictionary`; each replica fits a contiguous share of the points.

    Returns:
      (loc, scale) NumPy `[n, H]` and the points' sums (tuple of float64).
    """
    optimal_scales, noise_variance = sums.optimal(dictionary,
                                                  self.x.shape[1])
    scales = optimal_scales if scales is None else scales
    noise_variance = max(noise_variance, 0.0)
    out = self._distributed_held_step(
        tf.constant(x), tf.constant(dictionary, self.dtype), tf.constant(loc),
        tf.constant(scale), coefficients, tf.constant(scales, self.dtype),
        tf.constant(noise_variance, self.dtype), tf.constant(iterations))
    results = [self.strategy.experimental_local_results(t)
               for t in tf.nest.flatten(out)]
    per_replica = list(zip(*results))    # replica -> flat outputs
    new_loc = np.concatenate([r[0].numpy() for r in per_replica])
    new_scale = np.concatenate([r[1].numpy() for r in per_replica])
    new = tuple(functools.reduce(operator.add, (
        np.asarray(r[2 + k], np.float64) for r in per_replica))
                for k in range(5))
    return new_loc, new_scale, new

  # -- training ---------------------------------------------------------------

  def _empty_sums(self):
    h, d = self.num_latents, self.x.shape[1]
    return _Sums(0.0, 0.0, np.zeros((h, h)), np.zeros((d, h)), np.zeros(h),
                 0.0)

  def _batches(self, epoch):
    return batches(len(self.x), self.batch_size, self.seed, epoch)

  def _visit(self, indices, coefficients):
    """E-step on a batch, the sums updated, then the M-step."""
    seen = self.seen[indices]
    x = self.x[indices]
    loc = self.loc[indices] * self._gain.astype(self.x.dtype)
    scale = self.scale[indices] * self._gain.astype(self.x.dtype)
    # The batch's current share of the sums, in float64 (unseen points
    # have none yet; they start from nu = 0, s = rms), from the parameters
    # the sums hold: an M-step can shrink a latent's scales below the floor.
    old = (_float64_contribution(x[seen], loc[seen], scale[seen])
           if np.any(seen) else self._empty_sums())
    # The E-step starts above the floor.
    scale = np.maximum(scale, 2.0 * self.floor).astype(self.x.dtype)
    loc[~seen] = 0.0
    scale[~seen] = self._init_scale
    context = (self.sums - old).context(self.w, self.dtype)
    iterations = (self.e_step_iterations if np.all(seen)
                  else self.first_visit_iterations)
    scales = None
    if float(coefficients[1]) > 1.0:
      if self._annealing_scales is None and self.sums.count == 0:
        # No lambda yet: the very first batch is fitted without annealing.
        coefficients = tf.tensor_scatter_nd_update(coefficients, [[1]],
                                                   tf.ones([1], self.dtype))
      else:
        if self._annealing_scales is None:
          self._annealing_scales, _ = self.sums.optimal(self.w,
                                                        self.x.shape[1])
        scales = tf.constant(self._annealing_scales, self.dtype)
    arguments = (tf.constant(x), tf.constant(self.w, self.dtype),
                 tf.constant(loc), tf.constant(scale), coefficients, context,
                 tf.constant(iterations))
    if self.strategy is not None and self.sums.count > 0:
      new_loc, new_scale, new = self._data_parallel_e_step(
          self.sums, x, self.w, loc, scale, coefficients,
          None if scales is None else self._annealing_scales, iterations)
    else:
      new_loc, new_scale, new = self._e_step(arguments, scales)
    new_loc, new_scale = np.asarray(new_loc), np.asarray(new_scale)
    if not (np.all(np.isfinite(new_loc)) and np.all(np.isfinite(new_scale))):
      raise FloatingPointError(
          f'incremental EM epoch {self.epoch}: the E-step gave non-finite '
          'posterior parameters.')
    self.sums = self.sums - old + _Sums(
        float(len(indices)), *(np.asarray(v, np.float64) for v in new))
    self.loc[indices] = new_loc / self._gain
    self.scale[indices] = new_scale / self._gain
    self.seen[indices] = True
    self._scale_low = np.minimum(self._scale_low, new_scale.min(0))
    if self.train_dictionary:
      self._m_step()

  def _m_step(self):
    """W = normalised B A^-1, codes rescaled by the column norms (exact).

    Some columns are held at their current unit vectors instead, the
    others solved given them (block least squares: the current W is
    feasible, so sigma^2* does not rise and F does not fall):
    - a latent whose means are all zero (pruned, e.g. under prior
      annealing): B_h = 0, its norm is zero;
    - a latent whose rescaling would take a stored scale below twice the
      scale floor. The E-step starts above the floor, and raising such
      scales there would lower F (bars and unseen photographs, at the end
      of prior annealing: a near-dead latent's codes shrank by 1e-9 per
      M-step and F fell by 170 nats over 7 batches).
    """
    sums = self.sums
    held = np.zeros(self.num_latents, bool)
    for _ in range(self.num_latents):
      free = self.w.copy()
      live = ~held
      rhs = sums.cross[:, live] - self.w[:, held] @ sums.second_moment[
          np.ix_(held, live)]
      free[:, live] = np.linalg.solve(
          sums.second_moment[np.ix_(live, live)], rhs.T).T
      norms = np.linalg.norm(free, axis=0)
      if not np.all(np.isfinite(norms)):
        raise FloatingPointError(
            f'incremental EM epoch {self.epoch}: the M-step gave a '
            'non-finite dictionary.')
      norms[held] = 1.0
      hold = live & ((norms <= DEAD_COLUMN * max(float(norms.max()), 1e-300))
                     | (norms * self._scale_low < 2.0 * self.floor))
      if not np.any(hold):
        break
      held |= hold
    self.w = free / norms
    sums.second_moment *= np.outer(norms, norms)
    sums.cross *= norms
    sums.magnitude *= norms
    if self._annealing_scales is not None:
      self._annealing_scales = self._annealing_scales * norms
    sums.log_scale += sums.count * float(np.sum(np.log(norms)))
    self._gain *= norms
    self._scale_low *= norms

  def _fold_gain(self):
    self.loc *= self._gain.astype(self.loc.dtype)
    self.scale *= self._gain.astype(self.scale.dtype)
    self._gain = np.ones(self.num_latents)

  def _recompute_sums(self):
    """The sums from scratch over the seen points (float64, in chunks)."""
    self._fold_gain()
    sums = self._empty_sums()
    low = np.full(self.num_latents, np.inf)
    for indices in self._chunks():
      seen = indices[self.seen[indices]]
      sums = sums + _float64_contribution(self.x[seen], self.loc[seen],
                                          self.scale[seen])
      if len(seen):
        low = np.minimum(low, self.scale[seen].min(0))
    self.sums = sums
    self._scale_low = low

  def elbo_terms(self, a_q=1.0, a_prior=1.0, a_lik=1.0):
    """F (and F_a) of the stored posteriors of the seen points, from the sums.

    Returns:
      `EntropyElbo` of float64 tensors, in x's units (`_training`).
    """
    terms = self._normalised_terms(a_q, a_prior, a_lik)
    values = to_data_units(
        dict(terms._asdict(), a_q=a_q, a_prior=a_prior, a_lik=a_lik),
        self.data_scale, self.x.shape[1], self.num_latents)
    return elbo_lib.EntropyElbo(*(values[k] for k in terms._fields))

  def _normalised_terms(self, a_q=1.0, a_prior=1.0, a_lik=1.0):
    """`elbo_terms` of x / data_scale, the data the trainer works on."""
    sums = self.sums
    entropy = (0.5 * np.log(2.0 * np.pi * np.e) * self.num_latents * sums.count
               + sums.log_scale)
    statistics = elbo_lib.ElboStatistics(
        count=tf.constant(sums.count, tf.float64),
        reconstruction=tf.constant(sums.reconstruction(self.w), tf.float64),
        expected_magnitude=tf.constant(sums.magnitude, tf.float64),
        q_entropy=tf.constant(entropy, tf.float64))
    return elbo_lib.entropy_elbo_from_statistics(
        statistics, self.x.shape[1], a_q, a_prior, a_lik)

  def _record(self, phase, coefficients, passes):
    record = dict(self.evaluate(), epoch=self.epoch + self.refine_round,
                  phase=phase, passes=passes, a_q=coefficients.q,
                  a_prior=coefficients.prior, a_lik=coefficients.likelihood,
                  seconds=self._seconds)
    for k, value in record.items():
      self.history.setdefault(k, []).append(value)
    logging.info('%s %d: ELBO %.4f (H[q] %.3f, H[prior] %.3f, H[lik] %.3f), '
                 'noise_variance %.4g, a_prior %.3g, %.1f s', phase, record['epoch'],
                 record['elbo'], record['q_entropy'], record['prior_entropy'],
                 record['likelihood_entropy'], record['noise_variance'],
                 coefficients.prior, self._seconds)
    return record

  def epoch_batches(self, epoch):
    """`[B]` index arrays of the batches of `epoch` (the last may be
    smaller); a function of (seed, epoch) only."""
    return self._batches(epoch)

  def begin_epoch(self):
    """Starts epoch `self.epoch`: its coefficients and clock.

    `run_epoch` is `begin_epoch`, `visit` for each of
    `epoch_batches(self.epoch)`, then `end_epoch`; `fit_em` runs the same
    calls from `keras.Model.fit`.
    """
    if self.refine_round:
      raise ValueError('run_epoch after refinement rounds: EM epochs come '
                       'first (this state has '
                       f'{self.refine_round} refinement rounds).')
    c = self.schedule(self.epoch)
    self._current = _EpochState(
        schedule_value=c, start=time.perf_counter(),
        coefficients=tf.constant((c.q, c.prior, c.likelihood), self.dtype))

  def visit(self, indices):
    """E-step, sums and M-step on the batch `indices` `[B]`.

    Returns:
      dict: 'points', the number of points visited so far this epoch.
    """
    state = epoch_under_way(self._current)
    self._visit(indices, state.coefficients)
    if state.points // self.batch_size % 100 == 0:
      logging.info('epoch %d: %d of %d points visited', self.epoch,
                   state.points + len(indices), len(self.x))
    state.points += len(indices)
    return {'points': state.points}

  def end_epoch(self):
    """Sums from scratch, the epoch's record; returns the record."""
    state, self._current = epoch_under_way(self._current), None
    self._recompute_sums()
    self._seconds += time.perf_counter() - state.start
    self._passes += 1
    record = self._record('em', state.schedule_value, self._passes)
    self.epoch += 1
    return record

  def run_epoch(self):
    """One pass of E-steps and M-steps over the data; returns its record."""
    self.begin_epoch()
    for indices in self.epoch_batches(self.epoch):
      self.visit(indices)
    return self.end_epoch()

  # -- refinement: quasi-Newton on the profile ELBO ---------------------------

  def _chunks(self):
    return [np.arange(i, min(i + self.chunk_size, len(self.x)))
            for i in range(0, len(self.x), self.chunk_size)]

  def _profile_pass(self, dictionary, parts):
    """E-steps of every chunk at a fixed dictionary; updates `parts`.

    Args:
      dictionary: `[D, H]` float64 unit-norm W.
      parts: list of every chunk's `_Sums`, replaced by the new ones.

    Returns:
      `_Sums` of all points.
    """
    coefficients = tf.ones([3], self.dtype)
    w = tf.constant(dictionary, self.dtype)
    total = functools.reduce(operator.add, parts)
    for k, indices in enumerate(self._chunks()):
      scale = np.maximum(self.scale[indices], 2.0 * self.floor)
      if self.strategy is not None:
        loc, scale, new = self._data_parallel_e_step(
            total, self.x[indices], dictionary, self.loc[indices], scale,
            coefficients, None, self.refine_e_step_iterations)
      else:
        context = (total - parts[k]).context(dictionary, self.dtype)
        loc, scale, new = self._e_step(
            (tf.constant(self.x[indices]), w, tf.constant(self.loc[indices]),
             tf.constant(scale), coefficients, context,
             tf.constant(self.refine_e_step_iterations)))
      self.loc[indices] = np.asarray(loc)
      self.scale[indices] = np.asarray(scale)
      new = _Sums(float(len(indices)), *(np.asarray(v, np.float64)
                                         for v in new))
      total = total - parts[k] + new
      parts[k] = new
    self._passes += 1
    return functools.reduce(operator.add, parts)

  def run_refinement_round(self):
    """`refine_iterations` L-BFGS iterations on the profile ELBO.

    Refinement maximises the non-annealed F, whatever the schedule says at
    the current epoch: annealing belongs to the EM epochs.

    The profile ELBO F(W) = max_q F(W, q) is evaluated by warm-started
    E-steps of every point at W (`refine_e_step_iterations` each); by the
    envelope theorem its gradient is dF/dW at the fitted q,
    -(W A - B) / (N sigma^2*), taken through W = V / ||V||_col. SciPy's
    L-BFGS-B minimises -F over V in float64; every round is a fresh call (its
    memory starts empty), so a run resumed at a round boundary repeats an
    uninterrupted one. The round ends at the best evaluation it made (the
    dictionary, and the posteriors that evaluation left, whose F is an
    exact ELBO), or at its start if none was higher: it never lowers F.
    In that last case `refine_converged` becomes True: a round is a
    deterministic function of the state, so the next one would repeat this
    one exactly (`fit_em` stops its rounds there).

    Returns:
      The round's history record.

    Raises:
      ValueError: no EM epoch has run (every point needs a posterior).
    """
    if not np.all(self.seen):
      raise ValueError('refinement needs every point fitted once: run at '
                       'least one EM epoch first.')
    if not self.train_dictionary:
      raise ValueError('refinement trains the dictionary, but this trainer '
                       'has train_dictionary=False.')
    start = time.perf_counter()
    self._fold_gain()
    parts = [_float64_contribution(self.x[i], self.loc[i], self.scale[i])
             for i in self._chunks()]
    shape = self.w.shape
    # The profile is evaluated by warm E-steps, so its value at a given W
    # depends on the posteriors left by earlier evaluations: L-BFGS sees a
    # slightly history-dependent function, and a final fit at its best W
    # could end below where the round started (seen on bars: -11.42 ->
    # -12.54 over 3 rounds, when every such round was then undone). Every
    # evaluation, though, leaves stored posteriors whose F at that W is an
    # exact ELBO; the round keeps the best of them (its start included), so
    # refinement never lowers the ELBO and keeps any progress L-BFGS made.
    # W and the sums are replaced (not changed in place) by every
    # evaluation, so references keep them; the posteriors are written in
    # place, so the best ones are copied into one buffer (a fresh copy per
    # improvement raised the paper size's peak memory from 1.80 to 2.10 GB).
    start_elbo = float(self._normalised_terms().elbo)
    best = {'elbo': start_elbo, 'w': self.w, 'sums': self.sums}
    best_loc, best_scale = self.loc.copy(), self.scale.copy()

    def negative_profile(flat):
      v = flat.reshape(shape)
      self.w = v / np.linalg.norm(v, axis=0)
      self.sums = self._profile_pass(self.w, parts)
      terms = self._normalised_terms()
      if float(terms.elbo) > best['elbo']:
        best.update(elbo=float(terms.elbo), w=self.w, sums=self.sums)
        np.copyto(best_loc, self.loc)
        np.copyto(best_scale, self.scale)
      return (-float(terms.elbo),
              -dictionary_gradient(v, self.sums, self.x.shape[1]).ravel())

    scipy.optimize.minimize(
        negative_profile, self.w.ravel(), jac=True, method='L-BFGS-B',
        options={'maxiter': self.refine_iterations,
                 'maxfun': 2 * self.refine_iterations, 'maxcor': 10,
                 'ftol': 0.0, 'gtol': 0.0})
    self.w, self.sums = best['w'], best['sums']
    np.copyto(self.loc, best_loc)
    np.copyto(self.scale, best_scale)
    if best['elbo'] == start_elbo:
      self.refine_converged = True
      logging.info('refinement round %d found no higher ELBO than its start;'
                   ' kept its dictionary and posteriors. Refinement has '
                   'converged: a further round would repeat this one.',
                   self.refine_round + 1)
    self._seconds += time.perf_counter() - start
    record = self._record('refine', NoAnnealing()(0), self._passes)
    self.refine_round += 1
    return record

  def evaluate(self):
    """Non-annealed F of the stored posteriors and the current dictionary.

    Returns:
      dict with 'elbo', 'q_entropy', 'prior_entropy', 'likelihood_entropy',
      'noise_variance' (floats) and 'scales' (list).

    Raises:
      FloatingPointError: a non-finite term.
    """
    terms = self.elbo_terms()
    return elbo_record(terms, f'epoch {self.epoch}')

  @property
  def dictionary(self):
    """Current `[D, H]` unit-norm dictionary, in the data's dtype."""
    return self.w.astype(self.x.dtype)

  @property
  def params(self):
    """Stored posterior parameters: {'loc': [N, H], 'scale': [N, H]}.

    In x's units (the stored values, of x / data_scale, times data_scale).
    """
    gain = self._gain * self.data_scale
    return {'loc': self.loc * gain.astype(self.loc.dtype),
            'scale': self.scale * gain.astype(self.scale.dtype)}

  def posterior(self, indices=None):
    """`DiagonalGaussian` of the stored posteriors (all points or `indices`)."""
    params = self.params
    if indices is not None:
      params = {k: v[indices] for k, v in params.items()}
    return DiagonalGaussian(tf.constant(params['loc']),
                            tf.constant(params['scale']))

  # -- checkpoints ------------------------------------------------------------

  def save(self, path, config=None):
    """Writes the state (at an epoch end) to `path` (.npz) atomically.

    Args:
      path: checkpoint path.
      config: JSON-able dict identifying the run (see `_checkpoint.save`).
    """
    self._fold_gain()
    state = {'epoch': self.epoch, 'refine_round': self.refine_round,
             'refine_converged': self.refine_converged,
             'passes': self._passes, 'seed': self.seed,
             'seconds': self._seconds, 'history': self.history}
    annealing_scales = (np.zeros(0) if self._annealing_scales is None
                        else self._annealing_scales)
    _checkpoint.save(path, 'em-incremental', config or {}, dict(
        w=self.w, loc=self.loc, scale=self.scale, seen=self.seen,
        annealing_scales=annealing_scales), state)

  def restore(self, path, config=None):
    """Loads a state written by `save` for the same `config`.

    Raises:
      CheckpointError: no file at `path`, a file that is not a readable
        checkpoint of this engine, or one of a run with another config,
        other data shapes or another seed.
    """
    arrays, state = _checkpoint.load(path, 'em-incremental', config or {})
    names = ('w', 'loc', 'scale', 'seen', 'annealing_scales')
    if any(k not in arrays for k in names) or (
        arrays['w'].shape != self.w.shape
        or arrays['loc'].shape != self.loc.shape):
      raise _checkpoint.CheckpointError(
          f'checkpoint {path!r} holds {sorted(arrays)} of shapes '
          f'{[v.shape for v in arrays.values()]}; this run has a dictionary '
          f'of shape {self.w.shape} and {self.loc.shape[0]} posteriors.')
    if int(state['seed']) != self.seed:
      raise _checkpoint.CheckpointError(
          f'checkpoint {path!r} belongs to a run with seed {state["seed"]}, '
          f'this run has seed {self.seed}.')
    self.w = arrays['w'].astype(np.float64)
    self.loc = arrays['loc'].astype(self.x.dtype)
    self.scale = arrays['scale'].astype(self.x.dtype)
    self.seen = arrays['seen'].astype(bool)
    self._gain = np.ones(self.num_latents)
    self._annealing_scales = (arrays['annealing_scales'].astype(np.float64)
                              if arrays['annealing_scales'].size else None)
    self.epoch = int(state['epoch'])
    self.refine_round = int(state['refine_round'])
    self.refine_converged = bool(state.get('refine_converged', False))
    self._passes = int(state['passes'])
    self._seconds = float(state['seconds'])
    self.history = state['history']
    self._recompute_sums()
