"""Seconds per EM minibatch step and per amortized Adam step, time to an
E-step ELBO, and peak memory.

  python benchmarks/throughput.py [--steps=5] [--skip_amortized]

Sizes of the patches issue: B = 512, D = 256, H = 100, diagonal posteriors,
whitened patches of the embedded images, a fresh random dictionary.

* EM step (E-step from a fresh start plus the M-step), prior annealing
  scale 10 as in the issue: L-BFGS (100 iterations, history 10, XLA: the
  baseline, measured in the same run) and Newton (`--newton_iterations`, no
  XLA), medians over --steps steps after one warm-up step (which compiles).
* Time to an E-step value: the batch's F_a after k Newton iterations and
  after k L-BFGS iterations, each timed, for two objectives: prior scale 10
  (annealing) and F itself (a_prior = 1), with and without XLA. The report
  gives, per objective, the seconds each method needs to reach what 100
  L-BFGS iterations reach.
* Amortized: one Adam step (XLA) of the ResNet-like encoder (two residual
  blocks of width --hidden_units) and the dictionary.

The last line printed is one JSON object with em_step_seconds (L-BFGS, the
issue's definition), em_newton_step_seconds, amortized_step_seconds and
peak_memory_mb.
"""

import json
import resource
import time

import numpy as np
import tensorflow as tf
from absl import app, flags

from tfp_esc.data.patches import whitened_patches
from tfp_esc.inference.em import EMTrainer
from tfp_esc.model.sparse_coding import normalize_columns
from tfp_esc.objective.elbo import entropy_elbo
from tfp_esc.posterior.gaussian import DiagonalGaussian

FLAGS = flags.FLAGS
flags.DEFINE_integer('steps', 5, 'Timed steps after warm-up.')
flags.DEFINE_integer('batch_size', 512, 'B.')
flags.DEFINE_integer('num_latents', 100, 'H.')
flags.DEFINE_integer('newton_iterations', 5,
                     'Newton iterations of the timed Newton EM step.')
flags.DEFINE_list('newton_points', ['1', '2', '3', '4', '5', '6', '8', '12',
                                    '20', '30'],
                  'Newton iteration counts of the time-to-value curves.')
flags.DEFINE_list('lbfgs_points', ['10', '25', '50', '100', '200'],
                  'L-BFGS iteration counts of the time-to-value curves.')
flags.DEFINE_bool('xla_newton', False,
                  'Also time Newton under XLA. Off by default: on the 2-core '
                  'CPU the XLA build of the Newton loop did not finish '
                  'compiling within 10 minutes.')
flags.DEFINE_bool('skip_amortized', False, 'Only time the EM steps.')
flags.DEFINE_integer('hidden_units', 256, 'Width of the amortized encoder.')


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


def e_step_curve(x, e_step, points, coefficients, jit_compile=True):
  """[(iterations, seconds, F_a)] of E-steps from a fresh start on batch 0."""
  indices = np.arange(FLAGS.batch_size)
  curve = []
  for iterations in points:
    trainer = _trainer(x, e_step, iterations, jit_compile)
    trainer.e_step(indices, coefficients)  # compile
    start = time.perf_counter()
    _, fitted = trainer.e_step(indices, coefficients)
    fitted = {k: v.numpy() for k, v in fitted.items()}
    seconds = time.perf_counter() - start
    q = DiagonalGaussian.from_unconstrained(
        {k: tf.constant(v) for k, v in fitted.items()})
    value = float(entropy_elbo(
        x[indices], normalize_columns(tf.constant(trainer.v)), q,
        *coefficients).objective)
    curve.append({'iterations': iterations, 'seconds': seconds,
                  'objective': value})
  return curve


def seconds_to_reach(curve, target):
  """Interpolated seconds at which a curve first reaches target (or None)."""
  previous = {'seconds': 0.0, 'objective': -np.inf}
  for point in curve:
    if point['objective'] >= target:
      if not np.isfinite(previous['objective']):
        return point['seconds']
      frac = ((target - previous['objective'])
              / (point['objective'] - previous['objective']))
      return previous['seconds'] + frac * (point['seconds']
                                           - previous['seconds'])
    previous = point
  return None


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
            'num_latents': FLAGS.num_latents}
  lbfgs_seconds, lbfgs_times = time_em_step(x, 'lbfgs', 100)
  newton_seconds, newton_times = time_em_step(x, 'newton',
                                              FLAGS.newton_iterations)
  report.update(
      em_step_seconds=lbfgs_seconds, em_step_times=lbfgs_times,
      em_newton_step_seconds=newton_seconds,
      em_newton_step_times=newton_times,
      newton_iterations=FLAGS.newton_iterations,
      paper_em_step_seconds=[0.77, 1.0],
      em_speedup_vs_paper=[0.77 / lbfgs_seconds, 1.0 / lbfgs_seconds],
      em_newton_speedup_vs_paper=[0.77 / newton_seconds,
                                  1.0 / newton_seconds])
  newton_points = [int(k) for k in FLAGS.newton_points]
  lbfgs_points = [int(k) for k in FLAGS.lbfgs_points]
  report['time_to_value'] = {}
  for name, coefficients in (('prior_scale_10', (1.0, 10.0, 1.0)),
                             ('no_annealing', (1.0, 1.0, 1.0))):
    curves = {
        'lbfgs_xla': e_step_curve(x, 'lbfgs', lbfgs_points, coefficients),
        'lbfgs_no_xla': e_step_curve(x, 'lbfgs', lbfgs_points[:3],
                                     coefficients, jit_compile=False),
        'newton': e_step_curve(x, 'newton', newton_points, coefficients),
    }
    if FLAGS.xla_newton:
      # Under XLA Newton's batched Cholesky is slow on CPU: two points.
      curves['newton_xla'] = _xla_newton_curve(x, newton_points[:2],
                                               coefficients)
    target = next(p['objective'] for p in curves['lbfgs_xla']
                  if p['iterations'] == 100)
    reach = {k: seconds_to_reach(c, target) for k, c in curves.items()}
    report['time_to_value'][name] = {
        'target_lbfgs_100': target, 'seconds_to_target': reach,
        'speedup_newton_vs_lbfgs': (reach['lbfgs_xla'] / reach['newton']
                                    if reach['newton'] and reach['lbfgs_xla']
                                    else None),
        'curves': curves}
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


def _xla_newton_curve(x, points, coefficients):
  """Newton E-step curve with the Newton loop compiled by XLA."""
  from tfp_esc.inference.newton import newton_e_step  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  w = rng.standard_normal((x.shape[1], FLAGS.num_latents)).astype(x.dtype)
  w = tf.constant(w / np.linalg.norm(w, axis=0))
  batch = tf.constant(x[:FLAGS.batch_size])
  c = tf.constant(coefficients, batch.dtype)
  shape = [FLAGS.batch_size, FLAGS.num_latents]
  curve = []
  for iterations in points:
    step = tf.function(
        lambda n: newton_e_step(batch, w, tf.zeros(shape, batch.dtype),
                                tf.ones(shape, batch.dtype), c,
                                iterations=n, floor=1e-3),
        jit_compile=True)
    n = tf.constant(iterations)
    step(n)
    start = time.perf_counter()
    loc, scale = step(n)
    loc.numpy()
    seconds = time.perf_counter() - start
    value = float(entropy_elbo(batch, w, DiagonalGaussian(loc, scale),
                               *coefficients).objective)
    curve.append({'iterations': iterations, 'seconds': seconds,
                  'objective': value})
  return curve


if __name__ == '__main__':
  app.run(main)
