"""Amortized training: encoders, F rises, annealing, evaluation, resume;
the sampled (Monte-Carlo) ELBO objective and its dictionary gradients."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfp_esc.data.bars import make_bars
from tfp_esc.inference.amortized import (
  DICTIONARY_INIT_NORM,
  _training_batches,
  amortized_posterior,
  batch_order,
  evaluate_amortized,
  fit_amortized,
  make_amortized_model,
)
from tfp_esc.evaluation.evaluate import amortization_gap
from tfp_esc.inference._checkpoint import CheckpointError
from tfp_esc.inference._training import elbo_has_stalled
from tfp_esc.inference.elbo_comparison import dictionary_gradient_variance
from tfp_esc.model.sparse_coding import normalize_columns
from tfp_esc.objective.annealing import get_schedule
from tfp_esc.objective.elbo import classical_elbo, entropy_elbo
from tfp_esc.posterior.encoders import make_encoder, posterior_from_outputs
from tfp_esc.posterior.gaussian import DiagonalGaussian

SMALL = {'hidden_units': 32, 'batch_size': 64, 'verbose': 0}


@pytest.fixture(scope='module')
def x():
  return make_bars(256, seed=0).x.astype(np.float32)


@pytest.mark.parametrize('family,rank,shapes', [
    ('diagonal', None, {'loc': (5, 10), 'scale': (5, 10)}),
    ('lowrank', 3, {'loc': (5, 10), 'scale': (5, 10), 'factor': (5, 10, 3)}),
    ('full', None, {'loc': (5, 10), 'scale_tril': (5, 55)}),
])
def test_encoder_outputs_and_posterior(family, rank, shapes):
  encoder = make_encoder(25, 10, family, rank, hidden_units=16, seed=3)
  outputs = encoder(np.zeros((5, 25), np.float32))
  assert {k: tuple(v.shape) for k, v in outputs.items()} == shapes
  q = posterior_from_outputs(outputs, family)
  assert np.all(q.marginal_stddev().numpy() >= 1e-3 - 1e-7)
  again = make_encoder(25, 10, family, rank, hidden_units=16, seed=3)
  for a, b in zip(encoder.get_weights(), again.get_weights()):
    np.testing.assert_array_equal(a, b)
  with pytest.raises(ValueError, match='too large'):
    make_encoder(256, 100, 'full')


@pytest.mark.parametrize('factor_rate', [1.0, 0.1])
@pytest.mark.parametrize('dtype', ['float32', 'float64'])
def test_low_rank_factor_learns_at_factor_rate(dtype, factor_rate):
  # U = c (h K + b), h the features the read-outs share: Adam moves K and b
  # by about its rate, so U moves c times as fast.
  encoder = make_encoder(25, 10, 'lowrank', 3, hidden_units=16, seed=3,
                         dtype=dtype, factor_rate=factor_rate)
  x = np.random.default_rng(0).standard_normal((6, 25)).astype(dtype)
  features = keras.Model(encoder.inputs[0],
                         encoder.get_layer('final_act').output)(x)
  kernel, bias = encoder.get_layer('factor_flat').get_weights()
  expected = factor_rate * (features.numpy() @ kernel + bias)
  factor = encoder(x)['factor'].numpy()
  tol = 1e-12 if dtype == 'float64' else 1e-6
  np.testing.assert_allclose(factor, expected.reshape(6, 10, 3), rtol=tol,
                             atol=tol)
  # The kernel starts 1 / c times as large, so U starts small, but not at
  # U = 0 (a stationary point), whatever c: entries ~ 1e-2.
  assert 2e-3 < np.std(factor) < 5e-2
  with pytest.raises(ValueError, match='factor_rate'):
    make_encoder(25, 10, 'lowrank', 3, factor_rate=0.0)


@pytest.mark.parametrize('family', ['diagonal', 'lowrank'])
def test_training_raises_the_full_data_elbo(x, family):
  model, history = fit_amortized(x, 10, family=family, rank=2, epochs=4,
                                 learning_rate=1e-2, **SMALL)
  # Untrained start (same seed, zero epochs) for comparison.
  start = make_amortized_model(x, 10, posterior=family, rank=2,
                               learning_rate=1e-2, hidden_units=32)
  before = evaluate_amortized(start, x)['elbo']
  assert history['elbo'][-1] > before + 2.0, (before, history['elbo'])
  np.testing.assert_allclose(np.linalg.norm(model.dictionary, axis=0), 1,
                             atol=1e-5)


def test_step_reports_the_entropy_elbo_of_its_batch(x):
  model, _ = fit_amortized(x, 10, epochs=1, **SMALL)
  batch = x[:64]
  logs = model.test_on_batch(batch, return_dict=True)
  direct = entropy_elbo(batch, model.dictionary, model.posterior(batch))
  np.testing.assert_allclose(logs['elbo'], float(direct.elbo), rtol=1e-5)
  np.testing.assert_allclose(logs['noise_variance'], float(direct.noise_variance),
                             rtol=1e-5)


def test_annealing_callback_and_annealed_objective(x):
  model, history = fit_amortized(x, 10, epochs=3,
                                 schedule=get_schedule('prior_linear'), **SMALL)
  np.testing.assert_allclose(history['a_prior'], [2.0, 1.9, 1.8], atol=1e-6)
  # lambda is held through the annealed phase at lambda* of the data under
  # the initial encoder (in units of s), not re-estimated every epoch.
  start = make_amortized_model(x, 10, hidden_units=32)
  initial = np.asarray(evaluate_amortized(start, x)['scales'])
  np.testing.assert_allclose(model.held_scales.numpy() * model.data_scale,
                             initial, rtol=1e-5)
  assert np.max(np.abs(np.asarray(history['scales'][-1]) / initial - 1)) > 0.05
  batch = x[:64]
  logs = model.test_on_batch(batch, return_dict=True)  # a_prior = 1.8 now
  # The objective is L_a at the held lambda and the batch's sigma^2*:
  # CE_prior = sum_h [log(2 lambda_h) + lambda*_h / lambda_h].
  held = model.held_scales.numpy() * model.data_scale
  q = model.posterior(batch)
  terms = entropy_elbo(batch, model.dictionary, q)
  prior_cross_entropy = np.sum(np.log(2 * held)
                               + terms.scales.numpy() / held)
  expected = (logs['q_entropy'] - 1.8 * prior_cross_entropy
              - logs['likelihood_entropy'])
  np.testing.assert_allclose(logs['objective'], expected, rtol=1e-5)
  assert abs(logs['objective'] - logs['elbo']) > 1e-3


def test_full_data_evaluation_independent_of_batch_size(x):
  model, _ = fit_amortized(x, 10, epochs=1, **SMALL)
  whole = entropy_elbo(x, model.dictionary, model.posterior(x))
  for batch_size in (256, 100, 64):
    values = evaluate_amortized(model, x, batch_size)
    np.testing.assert_allclose(values['elbo'], float(whole.elbo), rtol=1e-5)


def test_training_batches_are_batch_order_drawn_epoch_by_epoch(x):
  # The pipeline must feed exactly batch_order's batches, in order, from
  # any first epoch (resume), without materialising every epoch up front.
  x64 = tf.constant(x.astype(np.float64))
  batches = list(_training_batches(x64, 48, 7, 2, 5).as_numpy_iterator())
  order = batch_order(256, 48, 7, 2, 5).reshape(-1, 48)
  assert len(batches) == len(order) == 3 * (256 // 48)
  for batch, indices in zip(batches, order):
    np.testing.assert_array_equal(batch, x64.numpy()[indices])
  # A huge epoch count costs nothing until the pipeline gets there.
  first = next(iter(_training_batches(x64, 48, 7, 0, 10**9)))
  np.testing.assert_array_equal(first,
                                x64.numpy()[batch_order(256, 48, 7, 0, 1)[0, 0]])
  # tf.data's autotuning stays off through map and prefetch: with it on,
  # deleting the iterator after Keras' fit waited seconds for its thread
  # (`epoch_index_batches`; the EM engines' pipeline is that function's).
  assert _training_batches(x64, 48, 7, 0, 5).options().autotune.enabled is False


@pytest.mark.parametrize('objective', ['analytic', 'sampled'])
def test_resume_equals_uninterrupted_run(x, tmp_path, objective):
  # The sampled objective also resumes its stateless sample seeds.
  options = dict(SMALL, schedule=get_schedule('prior_linear')) if (
      objective == 'analytic') else dict(SMALL, objective='sampled',
                                         num_samples=2)
  whole, whole_history = fit_amortized(x, 10, epochs=3, **options)
  path = str(tmp_path / 'state')
  fit_amortized(x, 10, epochs=2, checkpoint_path=path, **options)
  resumed, history = fit_amortized(x, 10, epochs=3, checkpoint_path=path,
                                   resume=True, **options)
  np.testing.assert_allclose(resumed.dictionary, whole.dictionary, atol=1e-5)
  np.testing.assert_allclose(history['elbo'], whole_history['elbo'],
                             rtol=1e-5)
  assert history['epoch'] == [0, 1, 2]


def test_factor_rate_is_part_of_the_run(x, tmp_path):
  # A low-rank checkpoint trained with another factor_rate is another
  # model: resuming it is refused, naming the setting.
  path = str(tmp_path / 'state')
  options = dict(SMALL, posterior='lowrank', rank=2, checkpoint_path=path)
  fit_amortized(x, 10, epochs=1, factor_rate=0.1, **options)
  with pytest.raises(CheckpointError, match='factor_rate'):
    fit_amortized(x, 10, epochs=2, resume=True, **options)
  fit_amortized(x, 10, epochs=2, resume=True, factor_rate=0.1, **options)


def test_checkpoint_is_a_plain_tf_train_checkpoint(x, tmp_path):
  # Model and optimizer (Adam's slots and step count) restore outside the
  # library with TensorFlow's own API; the run's record travels inside.
  path = str(tmp_path / 'run')
  trained, _ = fit_amortized(x, 10, epochs=1, checkpoint_path=path, **SMALL)
  fresh = make_amortized_model(x, 10, hidden_units=32, seed=5)
  fresh.optimizer.build(fresh.trainable_variables)
  tf.train.Checkpoint(model=fresh, optimizer=fresh.optimizer).read(
      tf.train.latest_checkpoint(path)).assert_existing_objects_matched(
          ).expect_partial()
  for a, b in zip(fresh.get_weights(), trained.get_weights()):
    np.testing.assert_array_equal(a, b)
  for a, b in zip(fresh.optimizer.variables, trained.optimizer.variables):
    np.testing.assert_array_equal(a.numpy(), b.numpy())
  assert int(fresh.optimizer.iterations) == 256 // 64
  record = tf.train.load_checkpoint(path).get_tensor(
      'record/.ATTRIBUTES/VARIABLE_VALUE')
  assert b'"kind": "amortized"' in record


def test_bad_input_raises(x):
  bad = x.copy()
  bad[1, 1] = np.inf
  with pytest.raises(ValueError, match='x holds 1 NaN or inf'):
    fit_amortized(bad, 10, **SMALL)
  with pytest.raises(ValueError, match='batch_size must be an integer in'):
    fit_amortized(x, 10, epochs=1, hidden_units=8, batch_size=1000)
  with pytest.raises(ValueError, match='posterior must be one of'):
    fit_amortized(x, 10, family='spherical', **SMALL)
  with pytest.raises(ValueError, match='epochs must be an integer >= 1'):
    fit_amortized(x, 10, epochs=0, **SMALL)
  model = make_amortized_model(x, 10, hidden_units=32)
  with pytest.raises(ValueError, match='their D differ'):
    entropy_elbo(x[:, :24], model.dictionary, model.posterior(x))



def test_elbo_has_stalled_on_hand_made_histories():
  rising = {'elbo': [1.0, 2.0, 3.0, 4.0]}
  assert not elbo_has_stalled(rising, 1)
  # Best at epoch 1; two later epochs without a rise: stalled for patience
  # 2, not yet for 3.
  peaked = {'elbo': [1.0, 5.0, 4.0, 4.5]}
  assert elbo_has_stalled(peaked, 2)
  assert not elbo_has_stalled(peaked, 3)
  # A rise smaller than min_delta does not count as progress.
  creeping = {'elbo': [1.0, 1.05, 1.1]}
  assert not elbo_has_stalled(creeping, 2)
  assert elbo_has_stalled(creeping, 2, min_delta=0.2)
  # Annealed epochs do not count: the two annealed epochs' fall and their
  # high start are ignored, so the plain epochs [3, 4] still rise.
  annealed = {'elbo': [9.0, 1.0, 3.0, 4.0], 'a_prior': [2.0, 1.5, 1.0, 1.0],
              'a_q': [1.0] * 4, 'a_lik': [1.0] * 4}
  assert not elbo_has_stalled(annealed, 1)
  assert elbo_has_stalled(dict(annealed, a_prior=[1.0] * 4), 1)
  # Incremental EM's refinement rounds come after the epochs and do not
  # count: the epochs [1, 5, 4] have stalled for 1, whatever refinement
  # reached.
  refined = {'elbo': [1.0, 5.0, 4.0, 6.0], 'phase': ['em'] * 3 + ['refine']}
  assert elbo_has_stalled(refined, 1)
  assert not elbo_has_stalled(dict(refined, phase=['em'] * 4), 1)


def test_early_stopping_stops_and_a_resume_stops_at_the_same_epoch(
    x, tmp_path):
  # min_delta far above any change: the ELBO never counts as rising, so a
  # patience of 2 stops after epoch 0 plus 2 epochs, of 10 asked for.
  options = dict(SMALL, epochs=10, early_stopping_patience=2,
                 early_stopping_min_delta=1e9)
  whole, whole_history = fit_amortized(x, 10, **options)
  assert whole_history['epoch'] == [0, 1, 2]
  path = str(tmp_path / 'state')
  fit_amortized(x, 10, **dict(options, epochs=2), checkpoint_path=path)
  resumed, history = fit_amortized(x, 10, **options, checkpoint_path=path,
                                   resume=True)
  assert history['epoch'] == [0, 1, 2]
  np.testing.assert_allclose(resumed.dictionary, whole.dictionary, atol=1e-5)
  # A resume of a run that has already stalled trains no further.
  again, history = fit_amortized(x, 10, **options, checkpoint_path=path,
                                 resume=True)
  assert history['epoch'] == [0, 1, 2]
  np.testing.assert_array_equal(again.dictionary, resumed.dictionary)
  with pytest.raises(ValueError, match='early_stopping_patience must be'):
    fit_amortized(x, 10, **dict(options, early_stopping_patience=0))
  with pytest.raises(ValueError, match='early_stopping_min_delta must be'):
    fit_amortized(x, 10, **dict(options, early_stopping_min_delta=-1.0))


def test_evaluate_every_records_every_kth_epoch_and_leaves_training_alone(x):
  # The evaluation is a read-only pass: the model trained with a record
  # every 3 epochs is the every-epoch model, bit for bit, and so are the
  # records they share.
  every, every_history = fit_amortized(x, 10, **SMALL, epochs=7)
  sparse, history = fit_amortized(x, 10, **SMALL, epochs=7, evaluate_every=3)
  assert history['epoch'] == [2, 5, 6]            # every third, and the last
  np.testing.assert_array_equal(sparse.dictionary.numpy(),
                                every.dictionary.numpy())
  for i, epoch in enumerate(history['epoch']):
    assert history['elbo'][i] == every_history['elbo'][epoch]
  assert history['seconds'][-1] > 0


def test_an_epoch_where_a_callback_stops_training_is_evaluated(x, tmp_path):
  import keras  # pylint: disable=import-outside-toplevel

  class StopAfter(keras.callbacks.Callback):
    def on_epoch_end(self, epoch, logs=None):
      if epoch == 3:
        self.model.stop_training = True

  path = str(tmp_path / 'state')
  model, history = fit_amortized(x, 10, **SMALL, epochs=10, evaluate_every=3,
                                 callbacks=[StopAfter()],
                                 checkpoint_path=path)
  assert history['epoch'] == [2, 3]
  # ... and checkpointed there: a resume continues from epoch 4 and records
  # epoch 5 (the sixth, and the last asked for).
  _, resumed = fit_amortized(x, 10, **SMALL, epochs=6, evaluate_every=3,
                             checkpoint_path=path, resume=True)
  assert resumed['epoch'] == [2, 3, 5]
  with pytest.raises(ValueError, match='evaluate_every must be'):
    fit_amortized(x, 10, **SMALL, evaluate_every=0)
  with pytest.raises(TypeError, match=r'callbacks\[0\] must be'):
    fit_amortized(x, 10, **SMALL, callbacks=[print])


def test_resume_with_sparse_evaluations_equals_an_uninterrupted_run(
    x, tmp_path):
  options = dict(SMALL, evaluate_every=3)
  whole, whole_history = fit_amortized(x, 10, **options, epochs=8)
  path = str(tmp_path / 'state')
  fit_amortized(x, 10, **options, epochs=5, checkpoint_path=path)
  resumed, history = fit_amortized(x, 10, **options, epochs=8,
                                   checkpoint_path=path, resume=True)
  # Interrupted at 5 (recorded at 2 and 4, its last), then 5 and 7.
  assert history['epoch'] == [2, 4, 5, 7]
  assert whole_history['epoch'] == [2, 5, 7]
  np.testing.assert_allclose(resumed.dictionary, whole.dictionary, atol=1e-5)
  np.testing.assert_allclose(history['elbo'][-1], whole_history['elbo'][-1],
                             rtol=1e-5)


@pytest.mark.parametrize('num_observed', [16, 256])
def test_raw_dictionary_starts_at_its_column_norm(num_observed):
  # The column norm of V sets the dictionary's Adam step relative to the
  # encoder's (module doc); it must not grow with D.
  data = np.random.default_rng(0).standard_normal((64, num_observed))
  model = make_amortized_model(data.astype(np.float32), 100, hidden_units=8)
  norms = np.linalg.norm(model.v.numpy(), axis=0)
  # Each squared norm is DICTIONARY_INIT_NORM^2 chi^2_D / D; its mean over
  # 100 columns has relative sd sqrt(2 / (100 D)) <= 0.036.
  np.testing.assert_allclose(np.mean(norms**2), DICTIONARY_INIT_NORM**2,
                             rtol=4 * np.sqrt(2 / (100 * num_observed)))


def test_float64_training_reports_float64_terms():
  x64 = make_bars(128, seed=4).x
  model, history = fit_amortized(x64, 10, epochs=1, **SMALL)
  assert model.v.dtype == 'float64'
  batch = x64[:64]
  logs = model.test_on_batch(batch, return_dict=True)
  direct = entropy_elbo(batch, model.dictionary, model.posterior(batch))
  np.testing.assert_allclose(logs['elbo'], float(direct.elbo), rtol=1e-12)
  assert len(history['elbo']) == 1


# Sampled (Monte-Carlo) ELBO training: the same model and step, other objective.

TINY = {'hidden_units': 16, 'rank': 2}


def _dictionary_gradients(model, x, num_seeds, base=7):
  return np.stack([model.dictionary_gradient(x, [base, k]).numpy()
                   for k in range(num_seeds)])


def test_analytic_dictionary_gradient_is_the_same_for_every_seed(x):
  model = make_amortized_model(x, 10, **TINY)
  gradients = _dictionary_gradients(model, x[:64], 5)
  assert np.all(np.isfinite(gradients)) and np.abs(gradients).max() > 0
  for other in gradients[1:]:  # Bitwise the same, whatever the seed.
    np.testing.assert_array_equal(other, gradients[0])
  assert dictionary_gradient_variance(model, x[:64])['mean_variance'] == 0.0


@pytest.mark.parametrize('family', ['diagonal', 'lowrank'])
def test_sampled_gradient_variance_falls_as_one_over_s(x, family):
  variance = {}
  for s in (1, 100):  # Same seed: the same weights, lambda and sigma^2.
    model = make_amortized_model(x, 10, family=family, objective='sampled',
                                 num_samples=s, **TINY)
    variance[s] = dictionary_gradient_variance(model, x[:64], 20, seed=3)
  assert variance[1]['mean_variance'] > 0
  # Expected ratio 100; 20 repeats estimate each variance to about +-30%.
  assert (variance[100]['mean_variance']
          < variance[1]['mean_variance'] / 20), variance
  assert (variance[100]['mean_variance']
          > variance[1]['mean_variance'] / 500), variance


@pytest.mark.parametrize('family', ['diagonal', 'lowrank'])
def test_sampled_gradient_is_unbiased_for_the_classical_elbo(family):
  # The MC ELBO is an unbiased estimate of L(lambda, sigma^2), so the mean of
  # its reparameterised gradients over seeds converges to grad L (float64).
  x64 = make_bars(64, seed=1).x
  model = make_amortized_model(x64, 10, family=family, objective='sampled',
                               num_samples=10, **TINY)
  num_seeds = 200
  gradients = _dictionary_gradients(model, x64, num_seeds)
  mean = gradients.mean(axis=0)
  stderr = gradients.std(axis=0, ddof=1) / np.sqrt(num_seeds)
  with tf.GradientTape(persistent=True) as tape:
    q = model.posterior(x64)
    dictionary = normalize_columns(model.v)
    classical = classical_elbo(x64, dictionary, q, model.scales,
                               model.noise_variance)
    entropy = entropy_elbo(x64, dictionary, q).elbo
  z = (mean - tape.gradient(classical, model.v).numpy()) / stderr
  # 250 entries, correlated: |z| < 5 everywhere and mean z^2 near 1.
  assert np.abs(z).max() < 5.0, np.abs(z).max()
  assert 0.3 < np.mean(z ** 2) < 3.0, np.mean(z ** 2)
  # Power: at lambda = 1, sigma^2 = var(x) (not lambda*, sigma^2*) grad L
  # differs from grad F, and the test tells them apart.
  z_entropy = (mean - tape.gradient(entropy, model.v).numpy()) / stderr
  assert np.mean(z_entropy ** 2) > 100.0, np.mean(z_entropy ** 2)


def test_sampled_training_raises_the_analytic_elbo(x):
  options = dict(SMALL, family='diagonal', objective='sampled',
                 num_samples=2, learning_rate=1e-2)
  model, history = fit_amortized(x, 10, epochs=4, **options)
  start = make_amortized_model(x, 10, posterior='diagonal',
                               objective='sampled', num_samples=2,
                               learning_rate=1e-2, hidden_units=32)
  before = evaluate_amortized(start, x)['elbo']
  assert history['elbo'][-1] > before + 2.0, (before, history['elbo'])
  np.testing.assert_allclose(float(start.noise_variance),
                             np.var(x, axis=0).mean(), rtol=1e-5)
  # lambda starts at 1 in units of the data scale (its root mean square
  # over the working root mean square sqrt(0.1)).
  np.testing.assert_allclose(start.scales, start.data_scale, rtol=1e-5)
  np.testing.assert_allclose(start.data_scale,
                             np.sqrt(np.mean(x**2) / 0.1), rtol=1e-6)
  logs = model.test_on_batch(x[:64], return_dict=True)
  assert set(logs) == {'elbo', 'objective', 'q_entropy', 'prior_entropy',
                       'likelihood_entropy', 'noise_variance', 'learned_noise_variance'}
  q = model.posterior(x[:64])
  direct = entropy_elbo(x[:64], model.dictionary, q)
  np.testing.assert_allclose(logs['elbo'], float(direct.elbo), rtol=1e-5)
  assert np.isfinite(logs['objective'])
  # What the MC ELBO estimates, L at the learned lambda, sigma^2, is below
  # F = max over lambda, sigma^2 of L.
  classical = classical_elbo(x[:64], model.dictionary, q, model.scales,
                             model.noise_variance)
  assert float(classical) < float(direct.elbo)


def test_sampled_step_compiles_with_xla_and_draws_new_samples(x):
  model = make_amortized_model(x, 10, objective='sampled', num_samples=3,
                               jit_compile=True, **TINY)
  seeds = []
  for _ in range(2):
    seeds.append(model._step_seed().numpy())  # pylint: disable=protected-access
    logs = model.train_on_batch(x[:64], return_dict=True)
    assert np.isfinite(logs['objective']) and np.isfinite(logs['elbo'])
  assert model.jit_compile is True
  assert not np.array_equal(seeds[0], seeds[1]), seeds




def test_bad_objective_arguments_raise(x):
  with pytest.raises(ValueError, match='objective must be one of'):
    fit_amortized(x, 10, objective='monte_carlo', **SMALL)
  for bad, error in ((0, ValueError), (-1, ValueError), (2.5, TypeError),
                     (True, TypeError)):  # counts are integers, not bools
    with pytest.raises(error, match='num_samples must be an integer'):
      make_amortized_model(x, 10, objective='sampled', num_samples=bad,
                           **TINY)
  with pytest.raises(ValueError, match='annealing applies to the analytic'):
    fit_amortized(x, 10, objective='sampled',
                  schedule=get_schedule('prior_linear'), **SMALL)
  with pytest.raises(ValueError, match='x has no variation'):
    make_amortized_model(np.ones((8, 25), np.float32), 10,
                         objective='sampled', **TINY)
  # Rows that differ by 1e-5 of their size: a variance of 1e-10 times the
  # mean square, below the learned noise variance's floor.
  nearly_constant = 1.0 + 1e-5 * np.random.default_rng(0).standard_normal(
      (8, 25))
  with pytest.raises(ValueError, match='too small to start'):
    make_amortized_model(nearly_constant, 10, objective='sampled', **TINY)
  model = make_amortized_model(x, 10, **TINY)
  with pytest.raises(ValueError, match="learned only with objective='sampled'"):
    _ = model.scales


# Refined posteriors (posterior_steps > 0): module doc, "Refined posteriors".


@pytest.fixture(scope='module')
def x64():
  return make_bars(256, seed=1).x.astype(np.float64)


def _pair(x, iterations=3, **kwargs):
  """Models with the same weights, without and with refinement."""
  return [make_amortized_model(x, 10, hidden_units=32, seed=2,
                               posterior_steps=k, **kwargs)
          for k in (0, iterations)]


def test_refinement_never_lowers_the_elbo(x64):
  # lambda, sigma^2 held at the encoder's lambda*, sigma^2*: every point's
  # -L falls, so F(refined) >= L(refined; held) >= F(encoder), exactly.
  plain, _ = fit_amortized(x64, 10, epochs=2, seed=2, **SMALL)
  refined = make_amortized_model(x64, 10, hidden_units=32, seed=2,
                                 posterior_steps=3)
  refined.set_weights(plain.get_weights())
  before = evaluate_amortized(plain, x64)['elbo']
  after = evaluate_amortized(refined, x64)['elbo']
  assert after >= before - 1e-10, (before, after)
  assert after > before + 0.1, (before, after)  # and it does something
  # Refinement changes the means, not just the scales.
  q0 = amortized_posterior(plain, x64)
  q1 = amortized_posterior(refined, x64)
  assert np.max(np.abs(q1.loc.numpy() - q0.loc.numpy())) > 1e-3


def test_refined_posteriors_do_not_depend_on_the_batches(x64):
  _, refined = _pair(x64)
  # Up to the order of the float sums behind lambda*, sigma^2*: an
  # accept test of a point at a near-tie may then go the other way, which
  # moves that point by ~1e-8 (lambda* of each batch instead moves every
  # point by ~1e-2).
  a = amortized_posterior(refined, x64, batch_size=256)
  b = amortized_posterior(refined, x64, batch_size=37)
  np.testing.assert_allclose(b.loc.numpy(), a.loc.numpy(), rtol=1e-6,
                             atol=1e-8)
  np.testing.assert_allclose(b.scale.numpy(), a.scale.numpy(), rtol=1e-6)
  np.testing.assert_allclose(evaluate_amortized(refined, x64, 37)['elbo'],
                             evaluate_amortized(refined, x64, 256)['elbo'],
                             rtol=1e-9)
  # The data set's posterior is the model's posterior of all of x at once.
  np.testing.assert_allclose(refined.posterior(x64).loc.numpy(),
                             a.loc.numpy(), rtol=1e-6, atol=1e-8)


def test_refinement_trains_the_encoder_on_its_own_elbo(x64):
  # The encoder's gradient is that of F at its own posteriors (W held),
  # with or without refinement; the dictionary's is that of F at the
  # refined posteriors, which are constants.
  plain, refined = _pair(x64)
  batch = tf.constant(x64[:64])
  seed = tf.constant([0, 0])

  def gradients(model):
    with tf.GradientTape() as tape:
      objective, _ = model.objective_values(batch, seed)
    return tape.gradient(objective, model.encoder.trainable_variables)

  for a, b in zip(gradients(plain), gradients(refined)):
    np.testing.assert_allclose(b.numpy(), a.numpy(), rtol=1e-9, atol=1e-12)

  xn = batch / refined.data_scale
  encoder_q = refined._posterior(xn)  # pylint: disable=protected-access
  held = entropy_elbo(xn, refined.dictionary, encoder_q)
  q = refined.refined_posterior(xn, encoder_q, held.scales,
                                held.noise_variance)
  with tf.GradientTape() as tape:
    elbo = entropy_elbo(xn, normalize_columns(refined.v), q).elbo
  expected = tape.gradient(elbo, refined.v)
  np.testing.assert_allclose(refined.dictionary_gradient(batch).numpy(),
                             expected.numpy(), rtol=1e-8, atol=1e-12)


def test_refined_training_narrows_the_gap(x):
  refined, history = fit_amortized(x, 10, epochs=3, learning_rate=1e-2,
                                   posterior_steps=3, **SMALL)
  assert history['elbo'][-1] > history['elbo'][0] + 2.0, history['elbo']
  plain = make_amortized_model(x, 10, hidden_units=32)
  plain.set_weights(refined.get_weights())
  narrow = amortization_gap(refined, x, iterations=100)['gap']
  wide = amortization_gap(plain, x, iterations=100)['gap']
  assert -1e-3 <= narrow < wide - 1.0, (narrow, wide)


def test_refinement_at_inference_only_trains_the_plain_weights(x64):
  # refine_in_training=False: every weight (encoder, dictionary, the held
  # lambda of the annealed phase) and the recorded history are bit for bit
  # those of posterior_steps = 0; only the model's posteriors are refined.
  options = dict(epochs=3, seed=2, learning_rate=1e-2,
                 schedule=get_schedule('prior_linear'), **SMALL)
  plain, plain_history = fit_amortized(x64, 10, **options)
  refined, history = fit_amortized(x64, 10, posterior_steps=2,
                                   refine_in_training=False, **options)
  for a, b in zip(plain.get_weights(), refined.get_weights()):
    np.testing.assert_array_equal(b, a)
  for a, b in zip(plain.optimizer.variables, refined.optimizer.variables):
    np.testing.assert_array_equal(b.numpy(), a.numpy())
  for k in ('elbo', 'q_entropy', 'noise_variance', 'scales'):
    np.testing.assert_array_equal(history[k], plain_history[k])
  # The model's posteriors are refined: F never lower, here higher.
  before = evaluate_amortized(plain, x64)['elbo']
  after = evaluate_amortized(refined, x64)['elbo']
  assert after > before + 0.1, (before, after)
  q0 = amortized_posterior(plain, x64)
  q1 = amortized_posterior(refined, x64)
  assert np.max(np.abs(q1.loc.numpy() - q0.loc.numpy())) > 1e-3


def test_refinement_at_inference_only_narrows_the_gap(x):
  plain, _ = fit_amortized(x, 10, epochs=2, learning_rate=1e-2, **SMALL)
  refined = make_amortized_model(x, 10, hidden_units=32, posterior_steps=3,
                                 refine_in_training=False)
  refined.set_weights(plain.get_weights())
  narrow = amortization_gap(refined, x, iterations=100)['gap']
  wide = amortization_gap(plain, x, iterations=100)['gap']
  assert -1e-3 <= narrow < wide - 1.0, (narrow, wide)


@pytest.mark.parametrize('kwargs,error,message', [
    ({'refine_in_training': False}, ValueError,
     '^refine_in_training=False keeps the refinement of posterior_steps out '
     'of training, but posterior_steps is 0'),
    ({'posterior_steps': 1, 'refine_in_training': 'no'}, TypeError,
     "^refine_in_training must be True or False, got 'no'"),
])
def test_bad_refine_in_training_raises(x, kwargs, error, message):
  with pytest.raises(error, match=message):
    fit_amortized(x, 10, epochs=1, **SMALL, **kwargs)
  with pytest.raises(error, match=message):
    make_amortized_model(x, 10, **kwargs)


@pytest.mark.parametrize('kwargs,message', [
    ({'posterior_steps': -1}, 'posterior_steps'),
    ({'posterior_steps': 1.5}, 'posterior_steps'),
    ({'posterior_steps': 2, 'posterior': 'lowrank'}, 'posterior_steps'),
    ({'posterior_steps': 2, 'objective': 'sampled'}, 'posterior_steps'),
])
def test_bad_posterior_steps_raise(x, kwargs, message):
  with pytest.raises((ValueError, TypeError), match=message):
    fit_amortized(x, 10, epochs=1, **SMALL, **kwargs)
  with pytest.raises((ValueError, TypeError), match=message):
    make_amortized_model(x, 10, **kwargs)


@pytest.mark.parametrize('family', ['lowrank', 'full'])
def test_correlated_families_train_the_dictionary_at_the_marginals(
    x64, family):
  # Correlated posteriors: the encoder's gradient is that of F at its
  # posteriors with W held, the dictionary's that of F at their diagonal
  # marginals (module doc, "Low-rank family"). float64, exact up to
  # rounding; the joint gradient (F at the correlated posteriors in W)
  # differs, so the test can tell them apart.
  model = make_amortized_model(x64, 10, posterior=family, rank=3,
                               hidden_units=32, seed=4)
  batch = tf.constant(x64[:64])
  xn = batch / model.data_scale
  q = model._posterior(xn)  # pylint: disable=protected-access
  marginals = DiagonalGaussian(q.loc, q.marginal_stddev())
  with tf.GradientTape(persistent=True) as tape:
    w = normalize_columns(model.v)
    at_marginals = entropy_elbo(xn, w, marginals).elbo
    joint = entropy_elbo(xn, w, q).elbo
  expected = tape.gradient(at_marginals, model.v).numpy()
  joint_gradient = tape.gradient(joint, model.v).numpy()
  got = model.dictionary_gradient(batch).numpy()
  np.testing.assert_allclose(got, expected, rtol=1e-8, atol=1e-12)
  # (by 7e-5 of the largest entry at this start: 1000 times the tolerance)
  assert np.abs(joint_gradient - expected).max() > 1e-5 * np.abs(
      expected).max()

  with tf.GradientTape() as tape:
    objective, values = model.objective_values(batch, tf.constant([0, 0]))
  encoder = tape.gradient(objective, model.encoder.trainable_variables)
  with tf.GradientTape() as tape:
    q = model._posterior(xn)  # pylint: disable=protected-access
    elbo = entropy_elbo(xn, tf.stop_gradient(model.dictionary), q).elbo
  for got, want in zip(encoder, tape.gradient(
      elbo, model.encoder.trainable_variables)):
    np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-8,
                               atol=1e-12)
  # The reported ELBO is that of the encoder's (correlated) posteriors.
  np.testing.assert_allclose(
      values['elbo'].numpy(),
      entropy_elbo(batch, model.dictionary,
                   model.posterior(batch)).elbo.numpy(), rtol=1e-9)
