"""Amortized training (SPEC 10, variants C/D): encoder + dictionary by Adam.

`AmortizedSparseCoding` is a `keras.Model` whose `train_step` minimises -F_a
on each minibatch, jointly over the encoder's weights and the unconstrained
dictionary V (W = V / ||V||_col). Annealing coefficients are non-trainable
weights set by `AnnealingCallback` at the start of every epoch (so they never
retrace the step); `CheckpointCallback` saves weights, optimizer state and
history atomically after every epoch; `fit_amortized` wires these with the
usual Keras progress bar and optional TensorBoard.

Batches come from a permutation that depends only on (seed, epoch), so a
resumed run continues exactly as an uninterrupted one.
"""

import json
import os
import time

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from tfp_esc import _checks, artifacts
from tfp_esc.model.sparse_coding import normalize_columns
from tfp_esc.objective import elbo as elbo_lib
from tfp_esc.objective.annealing import NoAnnealing
from tfp_esc.posterior.encoders import make_encoder, posterior_from_outputs

__all__ = ['AmortizedSparseCoding', 'AnnealingCallback', 'CheckpointCallback',
           'evaluate_amortized', 'fit_amortized']

_TERMS = ('elbo', 'objective', 'q_entropy', 'prior_entropy',
          'likelihood_entropy', 'sigma2')


class AmortizedSparseCoding(keras.Model):
  """Encoder q(z | x) plus unit-norm dictionary, trained on the entropy ELBO.

  Args:
    encoder: a model from `make_encoder` for `family`.
    num_observed: D.
    num_latents: H.
    family: the encoder's posterior family.
    seed: seeds the initial dictionary.
  """

  def __init__(self, encoder, num_observed, num_latents, family, seed=0,
               **kwargs):
    super().__init__(**kwargs)
    self.encoder = encoder
    self.family = family
    dtype = encoder.inputs[0].dtype
    self.v = self.add_weight(
        shape=(num_observed, num_latents), name='dictionary', dtype=dtype,
        initializer=keras.initializers.RandomNormal(seed=seed))
    self.coefficients = self.add_weight(
        shape=(3,), name='annealing', dtype=dtype, trainable=False,
        initializer='ones')
    # Trackers in the model's dtype, so float64 runs report float64 values.
    self.trackers = {k: keras.metrics.Mean(name=k, dtype=dtype)
                     for k in _TERMS}

  @property
  def metrics(self):
    return list(self.trackers.values())

  @property
  def dictionary(self):
    """`[D, H]` unit-norm W."""
    return normalize_columns(tf.convert_to_tensor(self.v))

  def posterior(self, x):
    """q(z | x) for x `[B, D]`: a `GaussianPosterior`."""
    return posterior_from_outputs(self.encoder(x), self.family)

  def call(self, x):
    return self.encoder(x)

  def terms(self, x):
    """`EntropyElbo` of the batch x `[B, D]` at the current coefficients."""
    a = tf.convert_to_tensor(self.coefficients)
    return elbo_lib.entropy_elbo(x, self.dictionary, self.posterior(x),
                                 a[0], a[1], a[2])

  def _update(self, terms):
    values = dict(zip(_TERMS, (terms.elbo, terms.objective, terms.q_entropy,
                               terms.prior_entropy, terms.likelihood_entropy,
                               terms.noise_variance)))
    for k, v in values.items():
      self.trackers[k].update_state(v)
    return {k: t.result() for k, t in self.trackers.items()}

  def train_step(self, data):
    # Keras passes a dataset's single tensor x, possibly wrapped as (x,).
    x = data[0] if isinstance(data, tuple) else data
    with tf.GradientTape() as tape:
      terms = self.terms(x)
      loss = tf.debugging.assert_all_finite(
          -terms.objective, 'amortized train_step: the annealed objective F_a '
          'of this batch is NaN or inf (check the data and the learning rate)')
    gradients = tape.gradient(loss, self.trainable_variables)
    self.optimizer.apply_gradients(zip(gradients, self.trainable_variables))
    return self._update(terms)

  def test_step(self, data):
    x = data[0] if isinstance(data, tuple) else data
    return self._update(self.terms(x))


class AnnealingCallback(keras.callbacks.Callback):
  """Sets the model's annealing coefficients to `schedule(epoch)` each epoch."""

  def __init__(self, schedule):
    super().__init__()
    self.schedule = schedule

  def on_epoch_begin(self, epoch, logs=None):
    c = self.schedule(epoch)
    self.model.coefficients.assign([c.q, c.prior, c.likelihood])

  def on_epoch_end(self, epoch, logs=None):
    if logs is not None:
      c = self.schedule(epoch)
      logs.update(a_q=c.q, a_prior=c.prior, a_lik=c.likelihood)


def evaluate_amortized(model, x, batch_size=512):
  """Full-data, non-annealed F of x `[N, D]` from summed batch statistics.

  Returns:
    dict: 'elbo', 'q_entropy', 'prior_entropy', 'likelihood_entropy',
    'sigma2' (floats), 'scales' (list).
  """
  x = _checks.as_float_tensor(x, 'x', model.v.dtype, rank=2)
  total = None
  for start in range(0, int(x.shape[0]), int(batch_size)):
    xb = x[start:start + batch_size]
    stats = elbo_lib.elbo_statistics(xb, model.dictionary, model.posterior(xb))
    total = stats if total is None else elbo_lib.add_statistics(total, stats)
  terms = elbo_lib.entropy_elbo_from_statistics(total, x.shape[1])
  values = {k: float(getattr(terms, k)) for k in (
      'elbo', 'q_entropy', 'prior_entropy', 'likelihood_entropy')}
  values['sigma2'] = float(terms.noise_variance)
  values['scales'] = terms.scales.numpy().tolist()
  return values


class CheckpointCallback(keras.callbacks.Callback):
  """After every epoch, evaluates on the full data and saves the state.

  The state (model weights, optimizer variables, epoch, history) goes to one
  .npz written atomically. `history` holds one record per epoch: the
  full-data terms of `evaluate_amortized`, the coefficients, cumulative
  seconds and whatever `on_epoch_end(model, epoch)` returns.
  """

  def __init__(self, x, path=None, history=None, on_epoch_end=None,
               batch_size=512, seconds=0.0):
    super().__init__()
    self.x, self.path, self.extra = x, path, on_epoch_end
    self.batch_size = batch_size
    self.history = history if history is not None else {}
    self.seconds = seconds

  def on_epoch_begin(self, epoch, logs=None):
    self._start = time.perf_counter()

  def on_epoch_end(self, epoch, logs=None):
    self.seconds += time.perf_counter() - self._start
    c = self.model.coefficients.numpy()
    record = dict(evaluate_amortized(self.model, self.x, self.batch_size),
                  epoch=epoch, a_q=float(c[0]), a_prior=float(c[1]),
                  a_lik=float(c[2]), seconds=self.seconds)
    if self.extra is not None:
      record.update(self.extra(self.model, epoch) or {})
    if not np.isfinite(record['elbo']):
      raise FloatingPointError(f'amortized epoch {epoch}: full-data ELBO is '
                               f'{record["elbo"]}.')
    for k, v in record.items():
      self.history.setdefault(k, []).append(v)
    logging.info('epoch %d: ELBO %.4f (full data), sigma2 %.4g, a_prior %.3g',
                 epoch, record['elbo'], record['sigma2'], record['a_prior'])
    if self.path:
      save_state(self.path, self.model, epoch + 1, self.history, self.seconds)


def save_state(path, model, epoch, history, seconds):
  """Writes weights, optimizer variables and progress to `path` atomically."""
  arrays = {f'w{i}': w for i, w in enumerate(model.get_weights())}
  arrays.update({f'o{i}': np.asarray(v)
                 for i, v in enumerate(model.optimizer.variables)})
  state = json.dumps({'epoch': epoch, 'history': history, 'seconds': seconds})
  with artifacts.atomic_path(path) as tmp, open(tmp, 'wb') as f:
    np.savez(f, state=np.array(state), **arrays)


def _restore_state(path, model):
  with np.load(path) as data:
    weights = [data[f'w{i}'] for i in range(len(model.get_weights()))]
    model.set_weights(weights)
    model.optimizer.build(model.trainable_variables)
    for i, v in enumerate(model.optimizer.variables):
      v.assign(data[f'o{i}'])
    state = json.loads(str(data['state']))
  return state


def fit_amortized(x, num_latents, *, family='diagonal', rank=5, schedule=None,
                  epochs=10, batch_size=512, learning_rate=1e-3, seed=0,
                  hidden_units=256, num_blocks=2, checkpoint_path=None,
                  resume=False, tensorboard_dir=None, on_epoch_end=None,
                  verbose=1):
  """Trains encoder and dictionary by Adam on F_a (the Keras way).

  Args:
    x: `[N, D]` float32/float64 data.
    num_latents: H.
    family: 'diagonal', 'lowrank' or 'full'.
    rank: R of the low-rank family.
    schedule: annealing schedule by epoch (default none).
    epochs: total epochs (a resumed run counts those done).
    batch_size: minibatch size (the last partial batch is dropped).
    learning_rate: Adam learning rate.
    seed: seeds weights and the batch order.
    hidden_units, num_blocks: encoder size.
    checkpoint_path: optional .npz saved atomically after every epoch.
    resume: continue from `checkpoint_path` if it exists.
    tensorboard_dir: optional TensorBoard log folder.
    on_epoch_end: optional `f(model, epoch) -> dict` of extra metrics.
    verbose: Keras progress-bar verbosity.

  Returns:
    (model, history): the trained `AmortizedSparseCoding` and per-epoch lists
    of full-data terms, coefficients and seconds.

  Raises:
    ValueError: bad shapes, NaN/inf data, batch_size > N.
  """
  x = _checks.as_float_tensor(x, 'x', rank=2)
  _checks.check_finite(x, 'x')
  num_points, num_observed = (int(s) for s in x.shape)
  if not 0 < int(batch_size) <= num_points:
    raise ValueError(f'batch_size must be in [1, N={num_points}], got '
                     f'{batch_size}.')
  keras.utils.set_random_seed(seed)
  encoder = make_encoder(num_observed, num_latents, family, rank,
                         hidden_units, num_blocks, seed=seed,
                         dtype=x.dtype.name)
  model = AmortizedSparseCoding(encoder, num_observed, num_latents, family,
                                seed=seed)
  # A new optimizer per model: Keras 3 optimizers cannot move to new variables.
  model.compile(optimizer=keras.optimizers.Adam(learning_rate))
  history, seconds, initial_epoch = {}, 0.0, 0
  if resume and checkpoint_path and os.path.exists(checkpoint_path):
    state = _restore_state(checkpoint_path, model)
    history, seconds = state['history'], state['seconds']
    initial_epoch = int(state['epoch'])
    logging.info('Resumed from %s at epoch %d.', checkpoint_path,
                 initial_epoch)
  steps = num_points // int(batch_size)
  order = np.stack([
      np.random.default_rng([seed, e]).permutation(num_points)[
          :steps * batch_size].reshape(steps, batch_size)
      for e in range(initial_epoch, int(epochs))]) if epochs > initial_epoch \
      else np.zeros((0, steps, batch_size), np.int64)
  dataset = tf.data.Dataset.from_tensor_slices(
      order.reshape(-1, batch_size)).map(lambda i: tf.gather(x, i))
  callbacks = [
      AnnealingCallback(NoAnnealing() if schedule is None else schedule),
      CheckpointCallback(x, checkpoint_path, history, on_epoch_end,
                         batch_size, seconds)]
  if tensorboard_dir:
    try:
      import tensorboard  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
      callbacks.append(keras.callbacks.TensorBoard(tensorboard_dir))
    except ImportError:
      logging.warning('TensorBoard is not installed (pip install '
                      '"tfp_esc[tensorboard]"); no logs in %s.',
                      tensorboard_dir)
  if epochs > initial_epoch:
    model.fit(dataset, epochs=int(epochs), initial_epoch=initial_epoch,
              steps_per_epoch=steps, callbacks=callbacks, verbose=verbose,
              shuffle=False)
  return model, callbacks[1].history
