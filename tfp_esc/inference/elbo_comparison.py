"""Analytic vs. sampled ELBOs: the same amortized model trained on each.

`compare_elbos` trains one `AmortizedSparseCoding` (same encoder, same
initial weights, same batches) once on the analytic entropy ELBO F and once
per S on the reparameterised Monte-Carlo ELBO with S samples, and measures
in one run:

(a) the variance of the dictionary gradient d objective / d V across
    repeated evaluations on one fixed batch with different seeds
    (`dictionary_gradient_variance`; exactly 0 for the analytic objective),
    at the common initialisation and after training;
(b) seconds per training step (median after warm-up);
(c) the full-data analytic F (`evaluate_amortized`) reached after equal
    training-time budgets, recorded at regular checkpoints.

The training clock counts only the training steps after the first one (which
traces and compiles the step; its time is reported separately), not the
full-data evaluations at the checkpoints, so every method gets the same
number of seconds of optimisation.
"""

import time
import warnings

import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp
from absl import logging

from tfp_esc import _checks
from tfp_esc.inference.amortized import (
  batch_order,
  evaluate_amortized,
  make_amortized_model,
)

__all__ = ['compare_elbos', 'dictionary_gradient_variance', 'method_name']


def method_name(objective, num_samples=None):
  """'analytic' or 'sampled (S=<num_samples>)': a method's label."""
  return 'analytic' if objective == 'analytic' else (
      f'sampled (S={num_samples})')


def dictionary_gradient_variance(model, x, num_repeats=20, seed=0):
  """Spread of the dictionary gradient over seeds, on one batch.

  Evaluates `model.dictionary_gradient(x, seed_r)` for `num_repeats`
  different stateless seeds and summarises the per-entry sample variance
  (ddof = 1) of the `[D, H]` gradients.

  Args:
    model: an `AmortizedSparseCoding` (either objective).
    x: `[B, D]` float batch.
    num_repeats: R >= 2 evaluations.
    seed: int, base of the R seeds (split from it, so they differ from the
      training seeds [sample_seed, step]).

  Returns:
    dict of floats: 'mean_variance' (mean over the D H entries of the
    variance across repeats), 'mean_gradient_sq_norm' (||mean gradient||^2,
    the squared Frobenius norm), 'relative_variance' (sum of the variances
    / ||mean gradient||^2: the expected squared error of one evaluation
    relative to the squared signal), and 'num_repeats'.

  Raises:
    ValueError: num_repeats < 2.
  """
  if isinstance(num_repeats, bool) or int(num_repeats) < 2:
    raise ValueError(f'num_repeats must be an integer >= 2, got '
                     f'{num_repeats!r}.')
  num_repeats = int(num_repeats)
  seeds = tfp.random.split_seed(_checks.stateless_seed(int(seed)),
                                num_repeats, salt='gradient_variance')
  gradients = np.stack([
      model.dictionary_gradient(x, seeds[r]).numpy().astype(np.float64)
      for r in range(num_repeats)])  # [R, D, H]
  variance = gradients.var(axis=0, ddof=1)
  sq_norm = float(np.sum(np.square(gradients.mean(axis=0))))
  return {'mean_variance': float(variance.mean()),
          'mean_gradient_sq_norm': sq_norm,
          'relative_variance': (float(variance.sum() / sq_norm)
                                if sq_norm > 0 else float('inf')),
          'num_repeats': num_repeats}


def _median_step(step_seconds, warmup_steps):
  """Median step time after warm-up (fewer steps: after the first one)."""
  if len(step_seconds) > warmup_steps:
    return float(np.median(step_seconds[warmup_steps:]))
  if len(step_seconds) > 1:
    return float(np.median(step_seconds[1:]))
  return float(step_seconds[0]) if step_seconds else float('nan')


def _train_for(model, x, seconds, num_checkpoints, batch_size, seed,
               eval_batch_size):
  """Trains `model` for `seconds` of step time; returns the trace and times.

  The first step (trace + compile) is timed but not counted. Checkpoints
  (full-data F) at every seconds / num_checkpoints of counted time, and at 0.
  """
  num_points = int(x.shape[0])
  interval = seconds / num_checkpoints
  trace = {'seconds': [0.0], 'elbo': [evaluate_amortized(
      model, x, eval_batch_size)['elbo']], 'step': [0]}
  step_seconds, clock, step, epoch = [], 0.0, 0, 0
  next_checkpoint, diverged = interval, False
  while clock < seconds and not diverged:
    for indices in batch_order(num_points, batch_size, seed, epoch,
                               epoch + 1)[0]:
      xb = tf.gather(x, indices)
      start = time.perf_counter()
      try:
        # train_on_batch returns NumPy values, so the step has finished.
        model.train_on_batch(xb, return_dict=True)
      except tf.errors.InvalidArgumentError as error:
        logging.warning('Step %d of %s failed (stopping this method): %s',
                        step, model.objective, error.message.splitlines()[0])
        diverged = True
        break
      elapsed = time.perf_counter() - start
      step_seconds.append(elapsed)
      step += 1
      if step > 1:
        clock += elapsed
      if clock >= next_checkpoint or clock >= seconds:
        trace['seconds'].append(clock)
        trace['elbo'].append(evaluate_amortized(model, x,
                                                eval_batch_size)['elbo'])
        trace['step'].append(step)
        next_checkpoint = (np.floor(clock / interval) + 1) * interval
      if clock >= seconds:
        break
    epoch += 1
  if trace['step'][-1] != step:  # Diverged between checkpoints.
    trace['seconds'].append(clock)
    trace['elbo'].append(evaluate_amortized(model, x, eval_batch_size)['elbo'])
    trace['step'].append(step)
  return trace, step_seconds, diverged


def compare_elbos(x, num_latents, *, posterior='diagonal', rank=5,
                  num_samples=(1, 10, 100), seconds=30.0, num_checkpoints=10,
                  batch_size=100, learning_rate=1e-3, hidden_units=256,
                  num_blocks=2, num_repeats=20, warmup_steps=5, seed=0,
                  eval_batch_size=1024, jit_compile='auto', family=None):
  """Trains on the analytic F and on the sampled ELBO; measures (a)-(c).

  Every method starts from the same weights (the same `seed`) and sees the
  same batches; the sampled ones start at lambda = 1, sigma^2 = the data
  variance (see `make_amortized_model`).

  Args:
    x: `[N, D]` float32/float64 data.
    num_latents: H.
    posterior: the posterior family, 'diagonal', 'lowrank' or 'full'.
    rank: R of the low-rank family.
    num_samples: sequence of S >= 1, one sampled method each.
    seconds: training-time budget per method (> 0).
    num_checkpoints: full-data F evaluations within the budget (>= 1).
    batch_size: minibatch size B <= N; also the batch of (a).
    learning_rate: Adam learning rate (the same for every method).
    hidden_units, num_blocks: encoder size.
    num_repeats: seeds per gradient-variance measurement (>= 2).
    warmup_steps: steps left out of the median step time.
    seed: seeds weights, batch order and samples.
    eval_batch_size: batch size of the full-data evaluations.
    jit_compile: passed to Keras' `compile` (True, False or 'auto').
    family: deprecated name of `posterior`.

  Returns:
    JSON-able dict: 'config' (the arguments, N and D) and 'methods', a list
    (analytic first, then S in the given order) of dicts with 'name',
    'objective', 'num_samples' (None for analytic), 'gradient_initial' and
    'gradient_final' (`dictionary_gradient_variance` at the common start and
    after training, on the first B points), 'seconds_per_step' (median after
    warm-up), 'first_step_seconds', 'steps', 'epochs' (steps B / N),
    'diverged' (a step hit NaN/inf and the method stopped early),
    'trace' ({'seconds', 'elbo', 'step'} lists at the checkpoints),
    'final_elbo', 'final_noise_variance' (sigma^2* of the full data) and, for
    sampled methods, 'learned_noise_variance' and 'learned_scales'.

  Raises:
    ValueError: bad data, num_samples empty or with an S < 1, a
      non-positive budget, batch_size not in [1, N], num_checkpoints < 1,
      num_repeats < 2, an unknown family.
  """
  if family is not None:
    warnings.warn('family= is deprecated; pass posterior= (the same family '
                  'name).', DeprecationWarning, stacklevel=2)
    posterior = family
  x = _checks.as_float_tensor(x, 'x', rank=2)
  _checks.check_finite(x, 'x')
  num_points, num_observed = (int(s) for s in x.shape)
  if isinstance(num_samples, (int, np.integer)):
    num_samples = [num_samples]
  num_samples = list(num_samples)
  if not num_samples:
    raise ValueError('num_samples must list at least one S >= 1, got [].')
  for s in num_samples:
    if (isinstance(s, bool) or not float(s).is_integer() or int(s) < 1):
      raise ValueError(f'num_samples must hold integers >= 1, got {s!r}.')
  num_samples = [int(s) for s in num_samples]
  if not (np.isfinite(seconds) and seconds > 0):
    raise ValueError(f'seconds must be positive, got {seconds!r}.')
  if not 0 < int(batch_size) <= num_points:
    raise ValueError(f'batch_size must be in [1, N={num_points}], got '
                     f'{batch_size}.')
  if int(num_checkpoints) < 1:
    raise ValueError(f'num_checkpoints must be >= 1, got {num_checkpoints}.')
  if int(num_repeats) < 2:
    raise ValueError(f'num_repeats must be >= 2, got {num_repeats}.')
  batch_size, num_checkpoints = int(batch_size), int(num_checkpoints)
  gradient_batch = x[:batch_size]
  config = {'num_points': num_points, 'num_observed': num_observed,
            'num_latents': int(num_latents), 'posterior': posterior,
            'rank': int(rank), 'num_samples': num_samples,
            'seconds': float(seconds), 'num_checkpoints': num_checkpoints,
            'batch_size': batch_size, 'learning_rate': float(learning_rate),
            'hidden_units': int(hidden_units), 'num_blocks': int(num_blocks),
            'num_repeats': int(num_repeats),
            'warmup_steps': int(warmup_steps), 'seed': int(seed),
            'jit_compile': jit_compile, 'dtype': x.dtype.name}
  methods = []
  for objective, s in [('analytic', 1)] + [('sampled', s)
                                             for s in num_samples]:
    name = method_name(objective, s)
    logging.info('%s: training for %.1f s.', name, seconds)
    model = make_amortized_model(
        x, num_latents, posterior=posterior, rank=rank,
        learning_rate=learning_rate, seed=seed, hidden_units=hidden_units,
        num_blocks=num_blocks, objective=objective, num_samples=s,
        jit_compile=jit_compile)
    initial = dictionary_gradient_variance(model, gradient_batch,
                                           num_repeats, seed)
    trace, step_seconds, diverged = _train_for(
        model, x, seconds, num_checkpoints, batch_size, seed,
        eval_batch_size)
    final = evaluate_amortized(model, x, eval_batch_size)
    result = {
        'name': name, 'objective': objective,
        'num_samples': None if objective == 'analytic' else s,
        'gradient_initial': initial,
        'gradient_final': dictionary_gradient_variance(
            model, gradient_batch, num_repeats, seed),
        'seconds_per_step': _median_step(step_seconds, int(warmup_steps)),
        'first_step_seconds': (float(step_seconds[0]) if step_seconds
                               else float('nan')),
        'steps': len(step_seconds),
        'epochs': len(step_seconds) * batch_size / num_points,
        'diverged': diverged, 'trace': trace, 'final_elbo': final['elbo'],
        'final_noise_variance': final['noise_variance']}
    if objective == 'sampled':
      result.update(learned_noise_variance=float(model.noise_variance),
                    learned_scales=model.scales.numpy().tolist())
    logging.info('%s: F %.4f after %d steps (%.4g s/step); dictionary '
                 'gradient variance %.3g (relative %.3g) at the start.',
                 name, result['final_elbo'], result['steps'],
                 result['seconds_per_step'], initial['mean_variance'],
                 initial['relative_variance'])
    methods.append(result)
  return {'config': config, 'methods': methods}
