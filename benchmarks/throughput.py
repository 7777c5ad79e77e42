"""Seconds per EM minibatch step and per amortized Adam step, and peak memory.

  python benchmarks/throughput.py [--steps=5] [--skip_amortized]

Sizes of the patches issue: B = 512, D = 256, H = 100, diagonal posteriors;
EM: an E-step of up to 100 L-BFGS iterations (history 10) from a fresh start
plus the M-step, from a fresh random dictionary, prior annealing scale 10;
amortized: one Adam step (XLA) of the ResNet-like encoder (two residual
blocks of width --hidden_units) and the dictionary.
Medians over --steps steps after one warm-up step (which compiles), on
whitened patches of the embedded images. The last line printed is one JSON
object with em_step_seconds, amortized_step_seconds and peak_memory_mb.
"""

import json
import resource
import time

import numpy as np
import tensorflow as tf
from absl import app, flags

from tfp_esc.data.patches import whitened_patches
from tfp_esc.inference.em import EMTrainer
from tfp_esc.objective.annealing import PriorAnnealing

FLAGS = flags.FLAGS
flags.DEFINE_integer('steps', 5, 'Timed steps after warm-up.')
flags.DEFINE_integer('batch_size', 512, 'B.')
flags.DEFINE_integer('num_latents', 100, 'H.')
flags.DEFINE_integer('e_step_iterations', 100, 'L-BFGS iterations per E-step.')
flags.DEFINE_bool('skip_amortized', False, 'Only time the EM step.')
flags.DEFINE_bool('jit_compile', True, 'XLA for the EM step.')
flags.DEFINE_integer('hidden_units', 256, 'Width of the amortized encoder.')


def _median_seconds(step, num_steps):
  step()  # warm-up and compilation
  times = []
  for _ in range(num_steps):
    start = time.perf_counter()
    step()
    times.append(time.perf_counter() - start)
  return float(np.median(times)), times


def time_em_step(x):
  trainer = EMTrainer(x, FLAGS.num_latents, batch_size=FLAGS.batch_size,
                      e_step_iterations=FLAGS.e_step_iterations,
                      schedule=PriorAnnealing.em(), seed=0,
                      jit_compile=FLAGS.jit_compile)
  batches = iter(trainer._batches(0, drop_remainder=True) * 100)  # pylint: disable=protected-access
  coefficients = tf.constant((1.0, 10.0, 1.0), trainer.dtype)
  step_size = tf.constant(trainer.m_step_size, trainer.dtype)
  state = {'v': tf.constant(trainer.v)}

  def step():
    indices = next(batches)
    v, _, objective, iterations = trainer._em_step(  # pylint: disable=protected-access
        state['v'], trainer._gather(indices, True),  # pylint: disable=protected-access
        tf.constant(x[indices]), coefficients, step_size)
    state['v'] = v
    state['iterations'] = int(iterations)
    float(objective)

  seconds, times = _median_seconds(step, FLAGS.steps)
  return seconds, times, state['iterations']


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
  report = {'batch_size': FLAGS.batch_size, 'num_observed': x.shape[1],
            'hidden_units': FLAGS.hidden_units,
            'num_latents': FLAGS.num_latents,
            'e_step_iterations': FLAGS.e_step_iterations,
            'jit_compile': FLAGS.jit_compile}
  em_seconds, em_times, iterations = time_em_step(x)
  report.update(em_step_seconds=em_seconds, em_step_times=em_times,
                em_last_iterations=iterations,
                paper_em_step_seconds=[0.77, 1.0],
                em_speedup_vs_paper=[0.77 / em_seconds, 1.0 / em_seconds])
  if not FLAGS.skip_amortized:
    am_seconds, am_times = time_amortized_step(x)
    report.update(amortized_step_seconds=am_seconds,
                  amortized_step_times=am_times,
                  paper_amortized_step_seconds=0.063)
  else:
    report['amortized_step_seconds'] = None
  report['peak_memory_mb'] = resource.getrusage(
      resource.RUSAGE_SELF).ru_maxrss / 1024
  print(json.dumps(report))


if __name__ == '__main__':
  app.run(main)
