"""Seconds per EM minibatch step and per amortized Adam step, and the batch
objective each E-step reaches.

  python benchmarks/throughput.py [--steps=5] [--peer_json=peer.json]

Sizes of the EM-engine issue: B = 512, D = 256, H = 100, diagonal
posteriors, whitened patches of the embedded images, a fresh random
dictionary, prior annealing scale 10.

* `em_step_seconds`: one step of the default engine (incremental EM: the
  Gram-form majorise-minimise E-step of a batch seen for the first time,
  `first_visit_iterations` iterations, then the closed-form M-step and the
  sums), median over --steps steps after warm-up. `em_revisit_step_seconds`:
  the same engine's step once every point has a posterior (warm E-steps).
* `paper_protocol_step_seconds`: the paper's protocol in this library
  (engine 'paper': 100 L-BFGS iterations from a fresh start, XLA, plus one
  gradient M-step), measured in the same run; `speedup_vs_paper_protocol`.
* `batch_objective`: F_a of one batch (its own lambda*, sigma^2*) after each
  E-step from the same fresh start, for a_prior = 10 and 1: the new E-step
  (the first-visit iterations) against 100 L-BFGS iterations, with seconds;
  and `mm_rescaled`, the same E-step with the latent rescaling
  (--rescaled_iterations), an option the default engine does not use.
* `em_newton_step_seconds`: the Newton E-step of engine 'paper'.
* `amortized_step_seconds`: one Adam step (XLA) of the ResNet-like encoder.
* With --peer_json (the JSON line of `../shared/peer/peer_timing.py`, run
  just before on the same machine), the speed-ups against the paper's code.

The last line printed is one JSON object; `device` names where it ran.
"""

import json
import resource
import time

import numpy as np
import tensorflow as tf
from absl import app, flags

from tfp_esc.data.patches import whitened_patches
from tfp_esc.inference._training import scale_posterior
from tfp_esc.inference.em import EMTrainer
from tfp_esc.inference.incremental_em import (INNER_ITERATIONS,
                                              IncrementalEMTrainer)
from tfp_esc.inference.mm import mm_e_step
from tfp_esc.objective.annealing import PriorAnnealing
from tfp_esc.objective.elbo import entropy_elbo
from tfp_esc.posterior.gaussian import DiagonalGaussian

FLAGS = flags.FLAGS
flags.DEFINE_integer('steps', 5, 'Timed steps after warm-up.')
flags.DEFINE_integer('batch_size', 512, 'B.')
flags.DEFINE_integer('num_latents', 100, 'H.')
flags.DEFINE_integer('newton_iterations', 5,
                     'Newton iterations of the timed Newton EM step.')
flags.DEFINE_string('peer_json', None,
                    "JSON printed by ../shared/peer/peer_timing.py (the "
                    "paper's code), for the speed-up against it.")
flags.DEFINE_bool('skip_amortized', False, 'Only time the EM steps.')
flags.DEFINE_integer('hidden_units', 256, 'Width of the amortized encoder.')
flags.DEFINE_integer('rescaled_iterations', 20,
                     'Iterations of the E-step with the latent rescaling '
                     '(`mm_e_step(rescale=True)`, not the default engine\'s).')


def _median_seconds(step, num_steps):
  step()  # warm-up and compilation
  times = []
  for _ in range(num_steps):
    start = time.perf_counter()
    step()
    times.append(time.perf_counter() - start)
  return float(np.median(times)), times


def _trainer(x, e_step, iterations, jit_compile=True):
  return EMTrainer(x, FLAGS.num_latents, batch_size=FLAGS.batch_size,
                   e_step=e_step, e_step_iterations=iterations, seed=0,
                   jit_compile=jit_compile)


def time_em_step(x, e_step, iterations):
  """Median seconds of one EM step, fresh start, a_prior = 10."""
  trainer = _trainer(x, e_step, iterations)
  batches = iter(trainer._batches(0, drop_remainder=True) * 100)  # pylint: disable=protected-access
  coefficients = tf.constant((1.0, 10.0, 1.0), trainer.dtype)
  step_size = tf.constant(trainer.m_step_size, trainer.dtype)
  state = {'v': tf.constant(trainer.v)}

  def step():
    indices = next(batches)
    v, _, objective, _ = trainer._em_step(  # pylint: disable=protected-access
        state['v'], trainer._gather(indices, True),  # pylint: disable=protected-access
        tf.constant(x[indices]), coefficients, step_size)
    state['v'] = v
    float(objective)

  return _median_seconds(step, FLAGS.steps)


def time_incremental_step(x, revisit):
  """Median seconds of one step of the default engine (module doc)."""
  trainer = IncrementalEMTrainer(x, FLAGS.num_latents,
                                 batch_size=FLAGS.batch_size, seed=0,
                                 schedule=PriorAnnealing(start=10.0,
                                                         rate=1e-9))
  if revisit:
    trainer.run_epoch()
  coefficients = tf.constant((1.0, 10.0, 1.0), trainer.dtype)
  batches = iter(trainer._batches(1) * 100)  # pylint: disable=protected-access
  return _median_seconds(
      lambda: trainer._visit(next(batches), coefficients),  # pylint: disable=protected-access
      FLAGS.steps)


def batch_objectives(x, coefficients):
  """F_a of batch 0 after each E-step from the same fresh start.

  Both trainers work on x / s (s the data's rms, `inference._training`), so
  both E-steps start at nu = 0, s_nh = s in x's units and run on x / s
  with their relative scale floors; both results are scored in x's units.
  """
  rng = np.random.default_rng(0)
  w = rng.standard_normal((x.shape[1], FLAGS.num_latents))
  w = tf.constant(w / np.linalg.norm(w, axis=0), x.dtype)
  batch = tf.constant(x[:FLAGS.batch_size])
  c = tf.constant(coefficients, x.dtype)
  shape = [FLAGS.batch_size, FLAGS.num_latents]
  incremental = IncrementalEMTrainer(x, 1)
  iterations = incremental.first_visit_iterations
  rms = incremental.data_scale
  def mm_function(iterations, rescale):
    return tf.function(lambda: mm_e_step(
        batch / rms, w, tf.zeros(shape, x.dtype), tf.ones(shape, x.dtype), c,
        iterations=iterations, floor=incremental.floor,
        inner_iterations=INNER_ITERATIONS, rescale=rescale), jit_compile=True)

  mm = mm_function(iterations, False)
  mm_rescaled = mm_function(FLAGS.rescaled_iterations, True)
  trainer = _trainer(x, 'lbfgs', 100)
  trainer.v = w.numpy()
  indices = np.arange(FLAGS.batch_size)
  out = {}
  for name, run in (
      ('mm', lambda: DiagonalGaussian(*mm())),
      ('mm_rescaled', lambda: DiagonalGaussian(*mm_rescaled())),
      ('lbfgs_100', lambda: DiagonalGaussian.from_unconstrained(
          trainer.e_step(indices, coefficients, fresh=True)[1]))):
    run()  # compile
    start = time.perf_counter()
    q = run()
    float(tf.reduce_sum(q.loc))
    seconds = time.perf_counter() - start
    q = scale_posterior(q, rms)
    out[name] = {'objective': float(entropy_elbo(batch, w, q,
                                                 *coefficients).objective),
                 'seconds': seconds}
  out['mm']['iterations'] = iterations
  out['mm_rescaled']['iterations'] = FLAGS.rescaled_iterations
  return out


def time_amortized_step(x):
  import keras  # pylint: disable=g-import-not-at-top

  from tfp_esc.inference.amortized import AmortizedSparseCoding  # pylint: disable=g-import-not-at-top
  from tfp_esc.posterior.encoders import make_encoder  # pylint: disable=g-import-not-at-top
  encoder = make_encoder(x.shape[1], FLAGS.num_latents, 'diagonal',
                         hidden_units=FLAGS.hidden_units, seed=0)
  model = AmortizedSparseCoding(encoder, x.shape[1], FLAGS.num_latents,
                                'diagonal')
  model.compile(optimizer=keras.optimizers.Adam(1e-3), jit_compile=True)
  batches = iter([x[i:i + FLAGS.batch_size]
                  for i in range(0, len(x), FLAGS.batch_size)] * 100)
  return _median_seconds(lambda: model.train_on_batch(next(batches)),
                         FLAGS.steps)


def main(argv):
  del argv
  x = whitened_patches(num_patches=8 * FLAGS.batch_size, patch_size=16, seed=0)
  devices = [d.device_type for d in tf.config.list_physical_devices()]
  report = {'device': 'GPU' if 'GPU' in devices else 'CPU',
            'batch_size': FLAGS.batch_size, 'num_observed': x.shape[1],
            'hidden_units': FLAGS.hidden_units,
            'num_latents': FLAGS.num_latents}
  print(f'device: {report["device"]} ({tf.config.list_physical_devices()})')
  first, first_times = time_incremental_step(x, revisit=False)
  revisit, revisit_times = time_incremental_step(x, revisit=True)
  paper, paper_times = time_em_step(x, 'lbfgs', 100)
  newton, newton_times = time_em_step(x, 'newton', FLAGS.newton_iterations)
  report.update(
      em_step_seconds=first, em_step_times=first_times,
      em_revisit_step_seconds=revisit, em_revisit_step_times=revisit_times,
      paper_protocol_step_seconds=paper, paper_protocol_step_times=paper_times,
      speedup_vs_paper_protocol=paper / first,
      em_newton_step_seconds=newton, em_newton_step_times=newton_times,
      newton_iterations=FLAGS.newton_iterations,
      batch_objective={
          'prior_scale_10': batch_objectives(x, (1.0, 10.0, 1.0)),
          'no_annealing': batch_objectives(x, (1.0, 1.0, 1.0))})
  if not FLAGS.skip_amortized:
    am_seconds, am_times = time_amortized_step(x)
    report.update(amortized_step_seconds=am_seconds,
                  amortized_step_times=am_times)
  else:
    report['amortized_step_seconds'] = None
  if FLAGS.peer_json:
    with open(FLAGS.peer_json) as f:
      peer = json.loads(f.read().strip().splitlines()[-1])
    report['peer'] = peer
    report['speedup_vs_peer'] = {
        'em_step': peer['em_step_seconds_prior10'] / first,
        'amortized_step': (peer['amortized_step_seconds']
                           / report['amortized_step_seconds']
                           if report['amortized_step_seconds'] else None)}
  report['peak_memory_mb'] = resource.getrusage(
      resource.RUSAGE_SELF).ru_maxrss / 1024
  print(json.dumps(report))


if __name__ == '__main__':
  app.run(main)
