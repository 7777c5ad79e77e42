"""Held-out ELBO against seconds of training: our EM engines vs. MAP learning.

  python benchmarks/time_to_elbo.py [--max_seconds=600] \
      [--alphas=0.05,0.1,0.2] [--nopaper_protocol] [--tag=...] \
      [--output_dir=benchmarks/results]

Data: whitened 16x16 patches of photographs that are not in the embedded
default (`benchmarks/unseen_photographs.py`): --num_patches for training and
--heldout_patches drawn at other positions (another seed) for testing.

Methods, each trained on the same patches in this one run, in turn (the
machine has 2 cores; nothing runs beside them), each until its training
seconds pass --max_seconds:
  (a) 'EM (default)': `fit_em`'s default engine (incremental EM with prior
      annealing for --epochs epochs, then refinement rounds until one finds
      no higher ELBO: converged); a snapshot of the dictionary after every
      epoch/round.
  (b) 'EM (paper protocol)': engine 'paper' (fresh-start L-BFGS E-steps,
      one gradient M-step per batch, prior annealing); a snapshot per epoch.
      Its per-epoch re-fit of every posterior (which only reports the
      epoch's ELBO) is skipped here: the snapshots are scored below.
  (c) 'MAP, alpha=...': scikit-learn's MiniBatchDictionaryLearning
      (`learn_map_dictionary`, no early stopping) for each alpha, one long
      run with a snapshot after every epoch's steps (each equals what a user
      asking for that many epochs gets: `learn_map_dictionary`'s callback).

The last snapshot of every method within each budget (and its last) is
scored, all the same way: its columns normalised,
lambda* and sigma^2* fitted on --fit_patches training patches with the
dictionary frozen (`IncrementalEMTrainer(train_dictionary=False)`), then the
classical ELBO L on the held-out patches at those lambda and sigma^2, with
the held-out posteriors fitted by the Gram-form E-step (SPEC 12: held-out
data never re-estimates lambda or sigma^2). Training seconds exclude the
scoring.

Writes time_to_elbo_<tag>.json, .md (held-out ELBO of every method at each
budget: its best snapshot trained within the budget) and .png (--tag: the
date by default).
"""

import datetime
import json
import os
import time

import matplotlib
import matplotlib.figure
import numpy as np
import tensorflow as tf
from absl import app, flags, logging

from unseen_photographs import unseen_patches  # benchmarks/, beside this file
from tfp_esc import artifacts
from tfp_esc.evaluation.map_baseline import learn_map_dictionary
from tfp_esc.inference.em import EMTrainer
from tfp_esc.inference.incremental_em import IncrementalEMTrainer
from tfp_esc.inference.mm import mm_e_step
from tfp_esc.objective.annealing import get_schedule
from tfp_esc.objective.elbo import classical_elbo
from tfp_esc.posterior.gaussian import DiagonalGaussian

matplotlib.use('Agg')

FLAGS = flags.FLAGS
# scikit-learn's minibatch size in `learn_map_dictionary`'s default.
_MAP_BATCH_SIZE = 256
flags.DEFINE_integer('num_patches', 8192, 'Training patches.')
flags.DEFINE_integer('heldout_patches', 2048, 'Held-out patches.')
flags.DEFINE_integer('fit_patches', 4096,
                     'Training patches on which lambda*, sigma^2* of each '
                     'frozen dictionary are fitted.')
flags.DEFINE_integer('num_latents', 64, 'H.')
flags.DEFINE_integer('epochs', 6, 'EM epochs of the default engine before '
                     'its refinement rounds.')
flags.DEFINE_float('max_seconds', 600.0, 'Training budget of every method.')
flags.DEFINE_list('budgets', ['5', '10', '20', '40', '60', '120', '300',
                              '600'],
                  'Budgets (seconds) of the table; the last snapshot of '
                  'every method within each is scored.')
flags.DEFINE_list('alphas', ['0.05', '0.1', '0.2'], 'MAP l1 weights.')
flags.DEFINE_integer('seed', 0, 'Seed.')
flags.DEFINE_string('output_dir', 'benchmarks/results', 'Output folder.')
flags.DEFINE_string('tag', datetime.date.today().isoformat(),
                    'Results file tag: time_to_elbo_<tag>.{json,md}, '
                    'time_to_elbo_<tag>.png.')
flags.DEFINE_bool('paper_protocol', True,
                  "Train (b), the paper's protocol (the slowest curve; "
                  'its table rows stand in earlier results).')


def score(w, x_fit, x_test):
  """Held-out L per point of dictionary w (module doc), and lambda, sigma^2."""
  w = np.asarray(w, np.float64)
  w = (w / np.linalg.norm(w, axis=0)).astype(x_test.dtype)
  fitter = IncrementalEMTrainer(x_fit, w.shape[1], init_dictionary=w,
                                train_dictionary=False, batch_size=512,
                                seed=FLAGS.seed)
  for _ in range(4):
    record = fitter.run_epoch()
  scales = np.asarray(record['scales'], x_test.dtype)
  noise_variance = np.asarray(record['noise_variance'], x_test.dtype)
  shape = (len(x_test), w.shape[1])
  rms = float(np.sqrt(np.mean(np.square(x_test))))
  loc, scale = mm_e_step(x_test, w, np.zeros(shape, x_test.dtype),
                         np.full(shape, rms, x_test.dtype),
                         np.ones(3, x_test.dtype), iterations=200,
                         floor=1e-4 * rms, scales=scales,
                         noise_variance=noise_variance)
  heldout = float(classical_elbo(x_test, w, DiagonalGaussian(loc, scale),
                                 scales, noise_variance))
  return heldout, float(noise_variance)


def _snapshots_until_budget(trainer, step):
  """(seconds, dictionary, training ELBO) after every `step()` of a trainer,
  until its training seconds pass --max_seconds or its refinement has
  converged (the default engine is then done: a further round would repeat
  the last one; later budgets hold its final dictionary)."""
  snapshots = []
  while (not snapshots or snapshots[-1][0] < FLAGS.max_seconds) and not (
      getattr(trainer, 'refine_converged', False)):
    record = step()
    snapshots.append((record['seconds'], trainer.dictionary.copy(),
                      record['elbo']))
  return snapshots


def run_default(x):
  trainer = IncrementalEMTrainer(x, FLAGS.num_latents,
                                 schedule=get_schedule('prior'),
                                 batch_size=512, seed=FLAGS.seed)
  return _snapshots_until_budget(
      trainer, lambda: (trainer.run_epoch() if trainer.epoch < FLAGS.epochs
                        else trainer.run_refinement_round()))


class _UnreportedEMTrainer(EMTrainer):
  """Engine 'paper' without its per-epoch re-fit of every posterior.

  That re-fit only reports the epoch's ELBO (its training seconds exclude
  it anyway); here it took about three times the training time.
  """

  def evaluate(self):
    nan = float('nan')
    return {'elbo': nan, 'q_entropy': nan, 'prior_entropy': nan,
            'likelihood_entropy': nan, 'noise_variance': nan, 'scales': []}


def run_paper(x):
  trainer = _UnreportedEMTrainer(x, FLAGS.num_latents,
                                 schedule=get_schedule('prior'),
                                 batch_size=512, seed=FLAGS.seed)
  return [(seconds, w, None) for seconds, w, _ in
          _snapshots_until_budget(trainer, trainer.run_epoch)]


def run_map(x, alpha):
  """One run, a snapshot after every epoch's steps, until --max_seconds."""
  steps_per_epoch = -(-len(x) // _MAP_BATCH_SIZE)
  snapshots = []
  clock = {'start': time.perf_counter(), 'excluded': 0.0}

  def callback(step, dictionary):
    if step % steps_per_epoch:
      return False
    start = time.perf_counter()
    seconds = start - clock['start'] - clock['excluded']
    snapshots.append((seconds, np.array(dictionary), None))
    clock['excluded'] += time.perf_counter() - start
    return seconds >= FLAGS.max_seconds

  learn_map_dictionary(x, FLAGS.num_latents, alpha, seed=FLAGS.seed,
                       batch_size=_MAP_BATCH_SIZE, max_iter=10**6,
                       early_stopping=False, callback=callback)
  return snapshots


def _last_before_each_budget(snapshots, budgets):
  """The snapshots worth scoring: the last one within each budget, the end.

  Scoring costs seconds per dictionary; the training ELBO of every method
  here rises over its snapshots, so the last one within a budget stands for
  it.
  """
  keep = {len(snapshots) - 1}
  for budget in budgets:
    within = [i for i, s in enumerate(snapshots) if s[0] <= budget]
    if within:
      keep.add(within[-1])
  return [snapshots[i] for i in sorted(keep)]


def at_budget(curve, budget):
  """Best held-out ELBO among snapshots trained within `budget` seconds."""
  values = [p['heldout_elbo'] for p in curve if p['seconds'] <= budget]
  return max(values) if values else None


def plot_curves(curves, max_seconds, path):
  """Held-out ELBO against training seconds (log axis), one line a method.

  A method that stopped before `max_seconds` (the default engine, once its
  refinement has converged) continues as a dotted line at its final value:
  that is what it holds at every later budget.
  """
  fig = matplotlib.figure.Figure(figsize=(7.0, 4.5), layout='constrained')
  ax = fig.add_subplot()
  for name, curve in curves.items():
    seconds = [p['seconds'] for p in curve]
    values = [p['heldout_elbo'] for p in curve]
    line, = ax.plot(seconds, values,
                    marker='o' if name.startswith('EM') else '.',
                    linestyle='-' if name.startswith('EM') else '--',
                    label=name)
    if seconds[-1] < 0.95 * max_seconds:
      ax.plot([seconds[-1], max_seconds], [values[-1]] * 2, linestyle=':',
              color=line.get_color(),
              label=f'{name}: converged at {seconds[-1]:.0f} s')
  ax.set_xscale('log')
  ax.set_xlabel('training seconds (2-core CPU)')
  ax.set_ylabel('held-out ELBO (nats per patch)')
  ax.set_title('Time to ELBO on unseen photographs')
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  fig.savefig(path, dpi=120)


def main(argv):
  del argv
  tf.config.threading.set_inter_op_parallelism_threads(2)
  x_all = unseen_patches(FLAGS.num_patches + FLAGS.heldout_patches,
                         seed=FLAGS.seed)
  rng = np.random.default_rng([FLAGS.seed, 5])
  order = rng.permutation(len(x_all))
  x = x_all[order[:FLAGS.num_patches]]
  x_test = x_all[order[FLAGS.num_patches:]]
  x_fit = x[:FLAGS.fit_patches]
  runs = {'EM (default)': lambda: run_default(x)}
  if FLAGS.paper_protocol:
    runs['EM (paper protocol)'] = lambda: run_paper(x)
  for alpha in FLAGS.alphas:
    runs[f'MAP, alpha={alpha}'] = (
        lambda alpha=float(alpha): run_map(x, alpha))
  budgets = [float(b) for b in FLAGS.budgets]
  curves = {}
  for name, run in runs.items():
    logging.info('Training %s', name)
    snapshots = _last_before_each_budget(run(), budgets)
    curves[name] = []
    for seconds, w, training_elbo in snapshots:
      heldout, noise_variance = score(w, x_fit, x_test)
      curves[name].append({'seconds': seconds, 'heldout_elbo': heldout,
                           'training_elbo': training_elbo,
                           'noise_variance': noise_variance})
      logging.info('%s: %.1f s, held-out ELBO %.3f', name, seconds, heldout)
  table = {name: [at_budget(c, b) for b in budgets]
           for name, c in curves.items()}
  stem = os.path.join(FLAGS.output_dir, f'time_to_elbo_{FLAGS.tag}')
  artifacts.save_json(stem + '.json', {
      'flags': {k: FLAGS[k].value for k in (
          'num_patches', 'heldout_patches', 'fit_patches', 'num_latents',
          'epochs', 'max_seconds', 'alphas', 'seed', 'paper_protocol')},
      'curves': curves, 'budgets': budgets, 'table': table})
  lines = ['| method | ' + ' | '.join(f'{b:g} s' for b in budgets) + ' |',
           '|---|' + '---|' * len(budgets)]
  for name, row in table.items():
    lines.append(f'| {name} | ' + ' | '.join(
        '—' if v is None else f'{v:.2f}' for v in row) + ' |')
  text = ('Held-out ELBO (nats per patch; L at the lambda, sigma^2 fitted on '
          'training patches) of the best dictionary each method had trained '
          'within each budget. Command: `python benchmarks/time_to_elbo.py` '
          f'(N={FLAGS.num_patches}, held-out {FLAGS.heldout_patches}, '
          f'H={FLAGS.num_latents}).\n\n' + '\n'.join(lines) + '\n')
  with artifacts.atomic_path(stem + '.md') as tmp, open(tmp, 'w') as f:
    f.write(text)
  plot_curves(curves, FLAGS.max_seconds, stem + '.png')
  print(text)


if __name__ == '__main__':
  app.run(main)
