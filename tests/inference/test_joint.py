"""Joint L-BFGS training on bars: recovery, ELBO vs ground truth, monotonicity."""

import numpy as np
import pytest

from tfp_esc.data.bars import make_bars
from tfp_esc.evaluation.metrics import bars_recovery
from tfp_esc.inference import joint
from tfp_esc.inference.joint import fit_joint
from tfp_esc.objective.annealing import get_schedule
from tfp_esc.objective.elbo import (classical_elbo_from_statistics,
                                    elbo_statistics, entropy_elbo)


@pytest.fixture(scope='module')
def bars():
  return make_bars(num_points=500, seed=3)


@pytest.fixture(scope='module')
def ground_truth(bars):
  return fit_joint(bars.x, init_dictionary=bars.dictionary,
                   train_dictionary=False, max_calls=10, log_every=0)


@pytest.fixture(scope='module')
def learned(bars):
  return fit_joint(bars.x, 10, posterior='full', max_calls=40, seed=3,
                   log_every=0)


def test_short_run_recovers_all_bars(bars, learned):
  match = bars_recovery(bars.dictionary, learned.dictionary)
  assert match.recovered, match.similarity
  assert learned.converged


def test_elbo_ends_near_ground_truth(bars, learned, ground_truth):
  # On a finite sample the learned dictionary fits slightly better than the
  # truth (about 0.15 nats per point at N = 1000), never much worse.
  assert learned.elbo > ground_truth.elbo - 0.02
  assert learned.elbo < ground_truth.elbo + 0.5
  # The learned noise and scales are close to the generating ones.
  assert abs(learned.noise_variance - 0.01) < 0.002
  np.testing.assert_allclose(np.sort(learned.scales), np.sqrt(5), rtol=0.15)


def test_reported_elbo_is_the_entropy_elbo(bars, learned):
  terms = entropy_elbo(bars.x, learned.dictionary, learned.posterior)
  np.testing.assert_allclose(float(terms.elbo), learned.elbo, rtol=0,
                             atol=1e-10)
  np.testing.assert_allclose(learned.trace['elbo'][-1], learned.elbo,
                             atol=1e-10)


def test_non_annealed_calls_never_lower_the_elbo(learned, ground_truth):
  for fit in (learned, ground_truth):
    steps = np.diff(fit.trace['elbo'])
    assert np.all(steps > -1e-8), steps


def test_annealed_trace_records_coefficients(bars):
  fit = fit_joint(bars.x[:100], 10, posterior='diagonal', max_calls=3,
                  schedule=get_schedule('prior_linear'), max_iterations=20,
                  jit_compile=False, log_every=0)
  np.testing.assert_allclose(fit.trace['a_prior'][1:], [2.0, 1.9, 1.8])
  # F_a - F = -(a_prior - 1) H[prior] with a_q = a_lik = 1.
  np.testing.assert_allclose(
      fit.trace['objective'] - fit.trace['elbo'],
      -(fit.trace['a_prior'] - 1) * fit.trace['prior_entropy'], atol=1e-9)
  assert np.all(fit.trace['objective'][1:] != fit.trace['elbo'][1:])
  assert not fit.converged


def test_annealed_calls_learn_instead_of_collapsing():
  # With lambda* inside F_a, prior annealing collapsed every code on bars;
  # with lambda held at lambda* of the call's start, but means starting at
  # 0, the first call held the start's tiny lambda* and every annealed call
  # stayed at the all-zero ELBO (about -53 nats; the bars were recovered
  # only if L-BFGS escaped once a_prior reached 1). From least-squares codes
  # the first annealed call (a_prior = 2) already ends within a nat of the
  # ground truth's ELBO (9 of 10 seeds recover all bars,
  # benchmarks/bars_recovery.py).
  data = make_bars(num_points=200, seed=0)
  truth = fit_joint(data.x, init_dictionary=data.dictionary,
                    train_dictionary=False, max_calls=10, jit_compile=False,
                    log_every=0)
  fit = fit_joint(data.x, 10, posterior='full', seed=0, log_every=0,
                  max_calls=2, schedule=get_schedule('prior_linear'),
                  jit_compile=False)
  np.testing.assert_allclose(fit.trace['a_prior'][1:], [2.0, 1.9])
  assert np.all(fit.trace['elbo'][1:] > truth.elbo - 1.0), (
      fit.trace['elbo'], truth.elbo)


@pytest.mark.parametrize('posterior,rank', [('diagonal', None),
                                            ('lowrank', 2)])
def test_other_families_train_in_float32(bars, posterior, rank):
  x = bars.x[:200].astype(np.float32)
  fit = fit_joint(x, 10, posterior=posterior, rank=rank, max_calls=2,
                  max_iterations=50, jit_compile=False, log_every=0)
  assert fit.dictionary.dtype == np.float32
  np.testing.assert_allclose(np.linalg.norm(fit.dictionary, axis=0), 1,
                             atol=1e-5)
  assert fit.trace['elbo'][-1] > fit.trace['elbo'][0]


def test_reused_traces_see_the_new_data():
  # fit_joint's traced functions are cached by their static settings; the
  # data, the frozen dictionary and the frozen lambda, sigma^2 are arguments.
  # A held-out fit (all three frozen) of other data of the same shapes after
  # a first one must reuse the traces (a cache hit) and give, bit for bit,
  # what a fresh trace gives; its reported L(lambda, sigma^2) must be that of
  # its posterior on the new data at the new frozen values.
  def fit(seed):
    data = make_bars(24, seed=seed)
    scales = data.scales * (1.0 + 0.1 * seed)
    noise_variance = data.noise_variance * (1.0 + 0.2 * seed)
    result = fit_joint(data.x, init_dictionary=data.dictionary,
                       train_dictionary=False, scales=scales,
                       noise_variance=noise_variance, max_calls=1,
                       max_iterations=15, jit_compile=False, log_every=0)
    statistics = elbo_statistics(data.x, result.dictionary, result.posterior)
    recomputed = classical_elbo_from_statistics(
        statistics, data.x.shape[1], scales, noise_variance).elbo
    np.testing.assert_allclose(result.elbo, float(recomputed), rtol=1e-12)
    return result

  joint._joint_steps.cache_clear()
  fresh = fit(2)
  joint._joint_steps.cache_clear()
  first = fit(1)
  reused = fit(2)
  assert joint._joint_steps.cache_info().hits == 1
  assert first.elbo != reused.elbo
  assert reused.elbo == fresh.elbo
  for name, value in fresh.posterior_params.items():
    np.testing.assert_array_equal(reused.posterior_params[name], value)


def test_bad_inputs_raise_before_work(bars):
  x = bars.x.copy()
  x[3, 4] = np.nan
  with pytest.raises(ValueError, match='x holds 1 NaN'):
    fit_joint(x, 10)
  with pytest.raises(ValueError, match='their D differ'):
    fit_joint(bars.x, init_dictionary=np.ones((24, 10)))
  with pytest.raises(ValueError, match='num_latents or init_dictionary'):
    fit_joint(bars.x)
  with pytest.raises(ValueError, match='posterior must be one of'):
    fit_joint(bars.x, 10, posterior='spherical')
  with pytest.raises(ValueError, match="rank: posterior='lowrank' needs a rank"):
    fit_joint(bars.x, 10, posterior='lowrank')
  with pytest.raises(ValueError, match='x must have rank 2'):
    fit_joint(bars.x[0], 10)


@pytest.mark.parametrize('posterior, rank', [('diagonal', None),
                                             ('lowrank', 2), ('full', None)])
def test_warm_start_begins_at_the_given_posteriors(bars, posterior, rank):
  # fit_joint(init_posterior=q) starts at q: its first trace entry is F at
  # q, and L-BFGS only raises it from there.
  from tfp_esc.objective.elbo import entropy_elbo as f_at  # the reference F
  from tfp_esc.posterior.gaussian import get_family
  rng = np.random.default_rng(8)
  n, h = bars.x.shape[0], bars.dictionary.shape[1]
  loc = rng.standard_normal((n, h)) * 0.3
  scale = rng.uniform(0.05, 0.3, (n, h))
  if posterior == 'diagonal':
    q = get_family(posterior)(loc, scale)
  elif posterior == 'lowrank':
    q = get_family(posterior)(loc, scale, rng.standard_normal((n, h, 2)) * 0.05)
  else:
    q = get_family(posterior)(loc, np.tril(
        rng.standard_normal((n, h, h)) * 0.02, -1) + np.eye(h) * scale[
            :, None, :])
  fit = fit_joint(bars.x, init_dictionary=bars.dictionary,
                  train_dictionary=False, posterior=posterior, rank=rank,
                  init_posterior=q, max_calls=2, max_iterations=20,
                  log_every=0)
  start = float(f_at(bars.x, bars.dictionary, q).elbo)
  np.testing.assert_allclose(fit.trace['elbo'][0], start, rtol=1e-10)
  assert fit.elbo >= start
  assert fit.elbo > start + 0.1   # it does move


def test_warm_start_is_checked_before_work(bars):
  from tfp_esc.posterior.gaussian import DiagonalGaussian, LowRankGaussian
  n, h = bars.x.shape[0], bars.dictionary.shape[1]
  q = DiagonalGaussian(np.zeros((n, h)), np.full((n, h), 0.1))
  options = dict(init_dictionary=bars.dictionary, train_dictionary=False,
                 max_calls=1, log_every=0)
  with pytest.raises(TypeError, match='init_posterior must be a LowRank'):
    fit_joint(bars.x, posterior='lowrank', rank=2, init_posterior=q,
              **options)
  options = dict(options, posterior='diagonal')
  with pytest.raises(ValueError, match='init_posterior has means of shape'):
    fit_joint(bars.x, init_posterior=DiagonalGaussian(
        np.zeros((n - 1, h)), np.full((n - 1, h), 0.1)), **options)
  with pytest.raises(ValueError, match='init_posterior has dtype'):
    fit_joint(bars.x, init_posterior=DiagonalGaussian(
        np.zeros((n, h), np.float32), np.full((n, h), 0.1, np.float32)),
              **options)
  with pytest.raises(ValueError, match='init_posterior has rank 3'):
    fit_joint(bars.x, rank=2, init_posterior=LowRankGaussian(
        np.zeros((n, h)), np.full((n, h), 0.1), np.zeros((n, h, 3))),
              **dict(options, posterior='lowrank'))
  with pytest.raises(ValueError, match='not above the floor'):
    fit_joint(bars.x, init_posterior=DiagonalGaussian(
        np.zeros((n, h)), np.full((n, h), 1e-6)), **options)


def _quadratic(centre):
  """value_and_gradient(p, c) of 0.5 (p - c)^T D (p - c), D = diag(1..P)."""
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  weights = tf.range(1, len(centre) + 1, dtype=tf.float64)

  @tf.function(autograph=False)
  def value_and_gradient(flat, centre):
    residual = flat - centre
    return (0.5 * tf.reduce_sum(weights * residual**2), weights * residual)

  return value_and_gradient


@pytest.mark.parametrize('dtype', [np.float32, np.float64])
def test_lbfgs_call_reaches_a_quadratics_minimum(dtype):
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  centre = np.linspace(-2.0, 3.0, 12)
  value_and_gradient = _quadratic(centre)
  start = tf.zeros([12], dtype)
  position, iterations, evaluations = joint._lbfgs_call(  # pylint: disable=protected-access
      lambda p, c: value_and_gradient(tf.cast(p, tf.float64), c),
      (tf.constant(centre),), start, 5, 200)
  assert position.dtype == dtype
  assert 0 < iterations <= evaluations
  np.testing.assert_allclose(position.numpy(), centre,
                             atol=1e-10 if dtype == np.float64 else 1e-5)


def test_lbfgs_call_steps_back_from_nan_and_goes_on():
  # The loss is NaN beyond p_0 = 1 (the minimum lies at p_0 = 3): the line
  # search shortens such steps and the call goes on (lower values come
  # after the first NaN), ending at its lowest finite evaluation.
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  centre = np.full(4, 3.0)
  quadratic = _quadratic(centre)
  seen = []

  def value_and_gradient(flat, c):
    value, gradient = quadratic(flat, c)
    seen.append(float(value) if flat[0] <= 1.0 else np.nan)
    nan = tf.constant(np.nan, tf.float64)
    return (tf.where(flat[0] > 1.0, nan, value),
            tf.where(flat[0] > 1.0, nan * gradient, gradient))

  start = tf.zeros([4], tf.float64)
  position, _, evaluations = joint._lbfgs_call(  # pylint: disable=protected-access
      value_and_gradient, (tf.constant(centre),), start, 5, 100)
  assert evaluations == len(seen) and np.isnan(seen).any()
  value = float(quadratic(position, tf.constant(centre))[0])
  assert position.numpy()[0] <= 1.0
  assert value == min(v for v in seen if np.isfinite(v))
  first_nan = int(np.flatnonzero(np.isnan(seen))[0])
  assert value < min(seen[:first_nan])
