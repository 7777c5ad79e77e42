"""`SparseCoding`: the library as a scikit-learn estimator.

Parameters in, NumPy state out. `fit` runs one of the library's trainers
(`method`), and the estimator keeps only what the model is: the unit-norm
dictionary W (as `components_ = W^T`, `[n_components, n_features]`, one atom
per row as in scikit-learn), lambda (`scales_`, `[n_components]`) and
sigma^2 (`noise_variance_`), plus the training record (`elbo_history_`,
`n_iter_`) and, for `partial_fit`, float64 sums of the points seen. No
TensorFlow object is kept, so a fitted estimator pickles and loads anywhere.

Design choices:

- `method` is one of `METHODS`: the EM engines of `fit_em`
  (`tfp_esc.inference.em.ENGINES`, 'incremental' first: the library's
  default and best engine), full-batch joint L-BFGS ('joint', `fit_joint`)
  and amortized Keras training ('amortized', `fit_amortized`). `max_iter`
  counts epochs (L-BFGS calls for 'joint').
- After `fit`, `scales_` and `noise_variance_` are lambda* and sigma^2* of
  the training data under the training posteriors (Theorem 2), and
  `elbo_history_[-1]` is F of those posteriors, per data point.
- New data (`transform`, `score`, `score_samples`, `infer_posterior`): the
  model p(x | W, lambda, sigma^2) is held fixed and each point's posterior
  maximises its classical ELBO L_n(lambda, sigma^2) (SPEC 4, 12), which
  separates over points, so a point's result does not depend on the others
  in the call. This runs in float64 whatever the dtype of the fit (outputs
  are cast to it): near its optimum L_n is flat to second order, so the
  optimiser fixes the means only to about the square root of the machine
  epsilon, 3e-4 in float32 (which also let them depend on the order of the
  rows), 1e-8 in float64. Diagonal posteriors use the majorise-minimise
  E-step (`tfp_esc.inference.mm.mm_e_step` with `scales` and
  `noise_variance` fixed, `transform_max_iter` iterations from nu = 0,
  s = sigma), compiled once per process; the other families use `fit_joint` with
  everything but the posteriors frozen, as `evaluate_heldout` does.
- So the estimator has no amortized inference, and no `posterior_steps` or
  `refine_in_training` (`fit_amortized`'s options to refine the encoder's
  posteriors): with method='amortized' the encoder only trains W, and new
  data get per-point optima, the limit those refinements approach. Use
  `fit_amortized` for an encoder's posteriors.
- `score_samples(X)` is L_n, a lower bound of log p(x_n | W, lambda,
  sigma^2) in nats; `score(X)` is its mean: the held-out ELBO per sample
  (what `evaluate_heldout(X, W, lambda, sigma^2)['elbo']` computes). It is
  not F of X, which would re-estimate lambda*, sigma^2* on X, so it
  compares models fairly and `GridSearchCV` can choose `n_components` by it.
- `partial_fit` is stepwise EM (Sato and Ishii 2000; Cappe and Moulines
  2009; Liang and Klein 2009) on the incremental engine's sums
  (posterior='diagonal'; `method` only chooses `fit`'s trainer). The
  estimator keeps float64 sums A = sum_n E[z z^T], B = sum_n x_n nu_n^T,
  sum_n E|z|, sum_n log s, sum_n ||x_n||^2 and the count, over the points
  seen (by `fit` too), each with the posterior it got when it was visited.
  A chunk is visited once, in minibatches of `batch_size`; before a
  minibatch of m points, all sums are weighted by
  rho = (1 - (t + 1)^-kappa)^(m / batch_size), kappa = 0.55, where t
  (`n_steps_`) counts the minibatches seen, a smaller one as the fraction
  m / batch_size and `fit` as epochs x N / batch_size; then the
  E-step raises F of the weighted points with lambda*, sigma^2* shared with
  the earlier ones (the sums are its context), and the closed-form M-step
  W = normalise(B A^-1) uses all of them. So the noise and the scales are
  never frozen: `scales_`, `noise_variance_` and `elbo_history_[-1]` after
  a call are lambda*, sigma^2* and F of the weighted points. The weights
  let the stale posteriors of early points (fitted under an early, poor
  dictionary) fade, as `MiniBatchDictionaryLearning` forgets old
  statistics; kappa in (0.5, 1] is stepwise EM's convergent range (1 is a
  plain average). Measured on 1,200 bars points in chunks of 200 (batch
  100), the held-out score after six chunks: -14.3 at kappa = 0.55, -18.5
  at 0.7, -24.8 at 1, -35.0 without weights; in chunks of 50: -12.0 at
  0.55 (`fit` on all 1,200 at once: -11.6). Streaming has no epochs, so
  annealing applies to `fit` only.
- `dtype=None` computes in float32 for float32 input and in float64 for
  anything else (scikit-learn's dtype preservation); 'float32' or 'float64'
  forces one. The state and every output have the dtype of the fit.
"""

import dataclasses
import functools
from numbers import Integral

import numpy as np
import tensorflow as tf
from absl import logging
from sklearn.base import (BaseEstimator, ClassNamePrefixFeaturesOutMixin,
                          TransformerMixin, _fit_context)
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import (check_array, check_is_fitted,
                                      validate_data)

from tfp_esc.inference.amortized import fit_amortized
from tfp_esc.inference.em import ENGINES, fit_em
from tfp_esc.inference.incremental_em import (IncrementalEMTrainer, _Sums,
                                              _float64_contribution)
from tfp_esc.inference.joint import fit_joint
from tfp_esc.inference.mm import mm_e_step
from tfp_esc.objective.annealing import SCHEDULE_NAMES, get_schedule
from tfp_esc.objective.elbo import classical_elbo
from tfp_esc.posterior.gaussian import FAMILIES, DiagonalGaussian

__all__ = ['METHODS', 'SparseCoding']

METHODS = tuple(ENGINES) + ('joint', 'amortized')
_DTYPES = ('float32', 'float64')
# The parameters of each posterior family's constructor.
_PARAMETERS = {'diagonal': ('loc', 'scale'), 'full': ('loc', 'scale_tril'),
               'lowrank': ('loc', 'scale', 'factor')}
# kappa of partial_fit's stepwise EM (module doc).
_STEPWISE_POWER = 0.55
# The scale floor of the E-step for new data, relative to the smallest of
# lambda_h and sigma: a posterior standard deviation at its optimum is at
# least about min(lambda_h sqrt(pi / 2), sigma) / 2, so the floor never
# binds (a floor that binds lowers L_n, most for pruned latents whose
# lambda_h is tiny).
_HELDOUT_RELATIVE_FLOOR = 1e-3


def _scaled_sums(sums, factor):
  """The incremental engine's sums of the data c x, from those of x.

  The model is equivariant under scaling the data by c > 0: codes c nu,
  standard deviations c s. So X, A and B scale by c^2, sum_n E|z| by c, and
  sum_n sum_h log s moves by count H log c.

  Args:
    sums: `_Sums` of x (count N, possibly weighted).
    factor: c > 0.

  Returns:
    `_Sums` of c x.
  """
  return _Sums(
      count=sums.count, data_norms2=sums.data_norms2 * factor**2,
      second_moment=sums.second_moment * factor**2,
      cross=sums.cross * factor**2, magnitude=sums.magnitude * factor,
      log_scale=sums.log_scale
      + sums.count * len(sums.magnitude) * np.log(factor))


@functools.cache
def _heldout_e_step(jit_compile):
  """The compiled E-step for new data at fixed W, lambda, sigma^2.

  One function per process (and `jit_compile`), shared by every estimator,
  with shape-relaxed traces: fitting and scoring many small estimators
  (cross-validation, scikit-learn's checks) does not retrace.
  """

  def step(x, dictionary, scales, noise_variance, iterations, floor):
    dtype = x.dtype
    shape = [tf.shape(x)[0], tf.shape(dictionary)[1]]
    return mm_e_step(x, dictionary, tf.zeros(shape, dtype),
                     tf.fill(shape, tf.sqrt(noise_variance)),
                     tf.ones([3], dtype), iterations=iterations, floor=floor,
                     scales=scales, noise_variance=noise_variance)

  # autograph=False: see `tfp_esc.inference.mm` ("Compiling it").
  return tf.function(step, jit_compile=jit_compile, reduce_retracing=True,
                     autograph=False)


class SparseCoding(ClassNamePrefixFeaturesOutMixin, TransformerMixin,
                   BaseEstimator):
  """Sparse coding with Gaussian posteriors, trained on the entropy ELBO.

  The model: z ~ Laplace(0, lambda) with H = `n_components` latents,
  x = W z + Normal(0, sigma^2 I), W `[n_features, H]` with unit columns;
  lambda and sigma^2 are learned (their optimal values, Theorem 2). See the
  module doc for what each method computes.

  Args:
    n_components: H; default n_features.
    method: the trainer of `fit`, one of `METHODS`: 'incremental'
      (incremental EM with profile L-BFGS refinement, diagonal posteriors),
      'paper' (the paper's EM protocol), 'joint' (full-batch joint L-BFGS),
      'amortized' (an encoder network trained by Adam).
    posterior: the posterior family, 'diagonal', 'full' or 'lowrank'
      ('incremental' and `partial_fit` need 'diagonal').
    rank: R of the 'lowrank' family.
    annealing: an entropy-annealing schedule name of
      `tfp_esc.objective.annealing.SCHEDULE_NAMES` ('none': the ELBO itself).
    max_iter: epochs of `fit` (L-BFGS calls for 'joint').
    batch_size: minibatch size (capped at the number of samples).
    refine_rounds: profile L-BFGS rounds after the epochs of 'incremental';
      default the engine's (`tfp_esc.inference.em.DEFAULT_REFINE_ROUNDS`).
    transform_max_iter: majorise-minimise iterations per point for new
      data (diagonal posteriors).
    dtype: 'float32', 'float64' or None (the input's: float32 stays float32,
      anything else becomes float64).
    jit_compile: compile the training steps with XLA. Off by default: on
      small data compiling costs more than it saves.
    random_state: int, `np.random.RandomState` or None; seeds the initial
      dictionary, the batch order and the network weights.

  Attributes:
    components_: `[n_components, n_features]` float, the dictionary W^T;
      every row has unit norm.
    scales_: `[n_components]` positive float, lambda.
    noise_variance_: float, sigma^2.
    elbo_history_: `[n_iter_]` float64, the ELBO (F per data point, nats)
      after every epoch, refinement round or `partial_fit` call.
    n_iter_: int, the number of entries in `elbo_history_`.
    n_samples_seen_: int, the points behind the state (those of `fit` and
      of every `partial_fit` since).
    n_steps_: float, minibatch steps behind the state, in full minibatches
      (`fit`: epochs x n_samples / batch_size), which set `partial_fit`'s
      weights.
    n_features_in_: int.
    feature_names_in_: `[n_features_in_]` names, when X had string column
      names.
  """

  _parameter_constraints = {
      'n_components': [Interval(Integral, 1, None, closed='left'), None],
      'method': [StrOptions(set(METHODS))],
      'posterior': [StrOptions(set(FAMILIES))],
      'rank': [Interval(Integral, 1, None, closed='left')],
      'annealing': [StrOptions(set(SCHEDULE_NAMES))],
      'max_iter': [Interval(Integral, 1, None, closed='left')],
      'batch_size': [Interval(Integral, 1, None, closed='left')],
      'refine_rounds': [Interval(Integral, 0, None, closed='left'), None],
      'transform_max_iter': [Interval(Integral, 1, None, closed='left')],
      'dtype': [StrOptions(set(_DTYPES)), None],
      'jit_compile': ['boolean'],
      'random_state': ['random_state'],
  }

  def __init__(self, n_components=None, *, method='incremental',
               posterior='diagonal', rank=2, annealing='none', max_iter=10,
               batch_size=256, refine_rounds=None, transform_max_iter=100,
               dtype=None, jit_compile=False, random_state=None):
    self.n_components = n_components
    self.method = method
    self.posterior = posterior
    self.rank = rank
    self.annealing = annealing
    self.max_iter = max_iter
    self.batch_size = batch_size
    self.refine_rounds = refine_rounds
    self.transform_max_iter = transform_max_iter
    self.dtype = dtype
    self.jit_compile = jit_compile
    self.random_state = random_state

  # -- validation -------------------------------------------------------------

  def _check_combination(self, partial):
    """Raises ValueError for parameters that are valid alone, not together."""
    if (self.method == 'incremental' or partial) and (
        self.posterior != 'diagonal'):
      what = 'partial_fit' if partial else "method='incremental'"
      raise ValueError(f"{what} needs posterior='diagonal', got "
                       f'posterior={self.posterior!r}.')
    if self.refine_rounds and self.method != 'incremental':
      raise ValueError(f'refine_rounds={self.refine_rounds} is an option of '
                       f"method='incremental', not method={self.method!r}.")

  def _validate(self, X, reset, min_samples=1):
    """X as a C-ordered float array of the estimator's dtype, checked.

    Learning needs `min_samples=2`: with one sample (or rows all the same,
    which the trainers refuse) sigma^2* can shrink to zero and F is
    unbounded.
    """
    dtype = ([np.float64, np.float32] if self.dtype is None
             else np.dtype(self.dtype))
    if not reset:
      dtype = self.components_.dtype
    return validate_data(self, X, reset=reset, dtype=dtype, order='C',
                         ensure_min_samples=min_samples)

  def __sklearn_tags__(self):
    tags = super().__sklearn_tags__()
    tags.transformer_tags.preserves_dtype = (
        list(_DTYPES[::-1]) if self.dtype is None else [self.dtype])
    return tags

  @property
  def _n_features_out(self):
    return self.components_.shape[0]

  # -- training ---------------------------------------------------------------

  def _seed(self):
    return int(check_random_state(self.random_state).randint(2**31 - 1))

  @_fit_context(prefer_skip_nested_validation=True)
  def fit(self, X, y=None):
    """Learns W, lambda and sigma^2 from X.

    Args:
      X: `[n_samples, n_features]` array-like of numbers.
      y: ignored.

    Returns:
      self.

    Raises:
      ValueError: invalid parameters or combinations, X not 2-D, empty,
        holding NaN/inf or all zeros.
    """
    del y
    self._check_combination(partial=False)
    x = self._validate(X, reset=True, min_samples=2)
    num_latents = self.n_components or x.shape[1]
    batch_size = min(self.batch_size, len(x))
    schedule = get_schedule(self.annealing)
    seed = self._seed()
    logging.info('SparseCoding.fit: method %s, %d x %d data, %d components.',
                 self.method, *x.shape, num_latents)
    # Every trainer reports lambda*, sigma^2* and F in x's units (its
    # history); the training posteriors are kept only for partial_fit.
    train_posterior = None
    if self.method in ENGINES:
      options = {}
      if self.method == 'paper':
        options = {'posterior': self.posterior, 'rank': self.rank}
      result = fit_em(x, num_latents, engine=self.method,
                      epochs=self.max_iter, refine_rounds=self.refine_rounds,
                      schedule=schedule, batch_size=batch_size, seed=seed,
                      jit_compile=self.jit_compile, verbose=0, **options)
      dictionary, record = result.dictionary, result.history
      if self.method == 'incremental':   # posteriors in x's units
        train_posterior = (result.params['loc'], result.params['scale'])
    elif self.method == 'joint':
      result = fit_joint(x, num_latents, posterior=self.posterior,
                         rank=self.rank, schedule=schedule,
                         max_calls=self.max_iter, seed=seed,
                         jit_compile=self.jit_compile, log_every=0)
      dictionary = result.dictionary
      record = {'elbo': result.trace['elbo'][1:], 'scales': [result.scales],
                'noise_variance': [result.noise_variance]}
    else:
      model, record = fit_amortized(
          x, num_latents, posterior=self.posterior, rank=self.rank,
          schedule=schedule, epochs=self.max_iter, batch_size=batch_size,
          seed=seed, verbose=0)
      dictionary = model.dictionary.numpy()
    self._store(dictionary, record['scales'][-1], record['noise_variance'][-1],
                record['elbo'], x.dtype)
    self.n_samples_seen_ = len(x)
    self.n_steps_ = self.n_iter_ * len(x) / self.batch_size
    self._sums = None
    if self.posterior == 'diagonal':
      # partial_fit continues from the sums of these points; without the
      # trainer's posteriors, from those of the fitted model.
      if train_posterior is None:
        q = self._posterior(x)
        train_posterior = (q.loc.numpy(), q.scale.numpy())
      self._sums = dataclasses.asdict(_float64_contribution(
          x, *train_posterior))
    return self

  def _store(self, dictionary, scales, noise_variance, history, dtype):
    """The learned state: W `[D, H]`, lambda `[H]`, sigma^2, F's history."""
    self.components_ = np.ascontiguousarray(np.asarray(dictionary).T, dtype)
    self.scales_ = np.asarray(scales, dtype)
    self.noise_variance_ = float(noise_variance)
    self.elbo_history_ = np.asarray(history, np.float64)
    self.n_iter_ = len(self.elbo_history_)

  @_fit_context(prefer_skip_nested_validation=True)
  def partial_fit(self, X, y=None):
    """Continues learning from one more chunk X (stepwise EM; module doc).

    The first call on an unfitted estimator starts from a random
    dictionary; later calls (and calls after `fit`) continue from the state.
    Arguments and return value as `fit`'s.

    Raises:
      ValueError: as `fit`, and also for a posterior other than 'diagonal',
        or another number of features than before.
    """
    del y
    self._check_combination(partial=True)
    first = not hasattr(self, 'components_')
    x = self._validate(X, reset=first, min_samples=2)
    num_latents = (self.n_components or x.shape[1] if first
                   else self.components_.shape[0])
    seed = self._seed() + (0 if first else self.n_iter_)
    trainer = IncrementalEMTrainer(
        x, num_latents, batch_size=min(self.batch_size, len(x)), seed=seed,
        init_dictionary=None if first else self.components_.T,
        jit_compile=self.jit_compile)
    # The trainer may work on x / data_scale (`tfp_esc.inference._training`);
    # the state is in x's units.
    unit = getattr(trainer, 'data_scale', 1.0)
    steps = 0
    if not first:
      trainer.sums = _scaled_sums(_Sums(**self._sums), 1.0 / unit)
      steps = self.n_steps_
    coefficients = tf.ones([3], trainer.dtype)
    # The trainer's minibatch visit (E-step, sums, M-step), with the sums
    # weighted before each: stepwise EM (module doc).
    for indices in trainer._batches(0):  # pylint: disable=protected-access
      fraction = len(indices) / self.batch_size
      if steps:
        weight = (1.0 - (steps + 1.0)**-_STEPWISE_POWER)**fraction
        trainer.sums = _Sums(*(weight * value for value in
                               dataclasses.astuple(trainer.sums)))
      trainer._visit(indices, coefficients)  # pylint: disable=protected-access
      steps += fraction
    terms = trainer.elbo_terms()
    history = [] if first else list(self.elbo_history_)
    self._store(trainer.w, terms.scales.numpy(), terms.noise_variance,
                history + [float(terms.elbo)], x.dtype)
    self.n_samples_seen_ = len(x) + (0 if first else self.n_samples_seen_)
    self.n_steps_ = steps
    self._sums = dataclasses.asdict(_scaled_sums(trainer.sums, unit))
    return self

  # -- new data ---------------------------------------------------------------

  def infer_posterior(self, X):
    """The posterior q(z | x_n) of every row of X under the fitted model.

    Args:
      X: `[n_samples, n_features]` array-like.

    Returns:
      A `tfp_esc.posterior.gaussian.GaussianPosterior` of the `posterior`
      family with n_samples points, in the dtype of the fit: `.loc` the
      means `[n_samples, n_components]`, `.marginal_stddev()` the standard
      deviations (same shape), `.distribution()` the TFP distribution
      (batch shape `[n_samples]`, event shape `[n_components]`).

    Raises:
      NotFittedError: before `fit`.
      ValueError: X not 2-D, with another number of features, NaN/inf.
    """
    check_is_fitted(self)
    x = self._validate(X, reset=False)
    q = self._posterior(x)
    if x.dtype == np.float64:
      return q
    return type(q)(*(tf.cast(getattr(q, name), x.dtype)
                     for name in _PARAMETERS[self.posterior]))

  def _posterior(self, x):
    """The posterior of x `[N, D]`, computed in float64 (module doc)."""
    dtype = tf.float64
    x = tf.constant(x, dtype)
    dictionary = tf.constant(self.components_.T, dtype)
    scales = tf.constant(self.scales_, dtype)
    noise_variance = tf.constant(self.noise_variance_, dtype)
    if self.posterior == 'diagonal':
      loc, scale = _heldout_e_step(self.jit_compile)(
          x, dictionary, scales, noise_variance,
          tf.constant(self.transform_max_iter), tf.constant(
              _HELDOUT_RELATIVE_FLOOR * min(float(np.min(self.scales_)),
                                            np.sqrt(self.noise_variance_)),
              dtype))
      return DiagonalGaussian(loc, scale)
    return fit_joint(x, init_dictionary=dictionary, train_dictionary=False,
                     posterior=self.posterior, rank=self.rank, scales=scales,
                     noise_variance=noise_variance, log_every=0,
                     jit_compile=self.jit_compile).posterior

  def transform(self, X, return_std=False):
    """Posterior means of the codes of X.

    Args:
      X: `[n_samples, n_features]` array-like.
      return_std: also return the posterior standard deviations.

    Returns:
      `[n_samples, n_components]` means, and with `return_std` a tuple
      (means, standard deviations) of such arrays, in the dtype of the fit.
    """
    q = self.infer_posterior(X)
    if return_std:
      return q.loc.numpy(), q.marginal_stddev().numpy()
    return q.loc.numpy()

  def inverse_transform(self, X):
    """Reconstructions codes @ components_: `[n_samples, n_features]`.

    For posterior means this is the posterior mean of the noise-free data
    W z.

    Args:
      X: `[n_samples, n_components]` array-like of codes.
    """
    check_is_fitted(self)
    codes = check_array(X, dtype=self.components_.dtype)
    if codes.shape[1] != self.components_.shape[0]:
      raise ValueError(f'X has {codes.shape[1]} features, but '
                       f'{type(self).__name__}.inverse_transform is expecting '
                       f'{self.components_.shape[0]} (n_components) features '
                       'as input.')
    return codes @ self.components_

  def score_samples(self, X):
    """Each row's held-out ELBO L_n(lambda, sigma^2), in nats: `[n_samples]`.

    A lower bound of log p(x_n | W, lambda, sigma^2) (module doc).
    """
    check_is_fitted(self)
    x = self._validate(X, reset=False)
    q = self._posterior(x)
    return classical_elbo(x.astype(np.float64),
                          self.components_.T.astype(np.float64), q,
                          self.scales_.astype(np.float64),
                          np.float64(self.noise_variance_),
                          per_point=True).numpy().astype(x.dtype)

  def score(self, X, y=None):
    """The mean held-out ELBO per sample of X (higher is better): a float."""
    del y
    return float(np.mean(self.score_samples(X), dtype=np.float64))
