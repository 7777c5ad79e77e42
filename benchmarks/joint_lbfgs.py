"""Joint L-BFGS: SciPy's L-BFGS-B (ours) against TFP's lbfgs_minimize, same run.

  python benchmarks/joint_lbfgs.py [--problems=bars,lowrank_refit] [--tag=...]

`tfp_esc.inference.joint.fit_joint` runs every L-BFGS call as SciPy's
L-BFGS-B on one compiled value-and-gradient function. Its baseline is what
it replaced: TFP's `tfp.optimizer.lbfgs_minimize` over the same function,
the whole call one XLA graph (history, iteration limit and tolerance the
same). Both run through the same `fit_joint` code in one process, the
baseline first (it is put in place of the private `_lbfgs_call` for its
runs), on:

- bars: the README's bars demo (`tfp_esc.experiment.BarsConfig` defaults:
  N = 1000, full covariances, joint W and posteriors, calls until the ELBO
  stops changing), from a random start;
- lowrank_refit: a converged per-point re-fit of rank-5 posteriors for a
  fixed dictionary (what `evaluate_dictionary` and the amortization gap's
  low-rank row run): 4,096 whitened 16 x 16 patches of photographs outside
  the embedded default, H = 64, the dictionary from 3 epochs of the EM
  default.

Each row: seconds to the end of the fit (compilation included: a user's
first fit pays it), L-BFGS calls, iterations and evaluations, the final
ELBO, and for the bars whether every bar was recovered. Writes
benchmarks/results/joint_lbfgs_<tag>.{json,md,png}.
"""

import functools
import os
import time

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')

import numpy as np  # pylint: disable=wrong-import-position
from absl import app, flags, logging  # pylint: disable=wrong-import-position

from unseen_photographs import unseen_patches  # pylint: disable=wrong-import-position

FLAGS = flags.FLAGS
flags.DEFINE_list('problems', ['bars', 'lowrank_refit'], 'Problems to run.')
flags.DEFINE_integer('seed', 0, 'Seed of the data and the start.')
flags.DEFINE_string('tag', time.strftime('%Y-%m-%d'), 'Results file tag.')

_RESULTS = os.path.join(os.path.dirname(__file__), 'results')


@functools.cache
def _tfp_call(value_and_gradient, num_correction_pairs, max_iterations):
  """TFP's whole L-BFGS call as one XLA graph (the replaced driver)."""
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  import tensorflow_probability as tfp  # pylint: disable=import-outside-toplevel

  @tf.function(jit_compile=True, autograph=False)
  def call(flat, arguments):
    result = tfp.optimizer.lbfgs_minimize(
        lambda p: value_and_gradient(p, *arguments), initial_position=flat,
        num_correction_pairs=num_correction_pairs,
        max_iterations=max_iterations, tolerance=0.0)
    return (result.position, result.num_iterations,
            result.num_objective_evaluations)

  return call


def _tfp_lbfgs_call(value_and_gradient, arguments, flat, num_correction_pairs,
                    max_iterations):
  position, iterations, evaluations = _tfp_call(
      value_and_gradient, num_correction_pairs, max_iterations)(
          flat, arguments)
  return position, int(iterations), int(evaluations)


def _bars_problem(seed):
  from tfp_esc import experiment  # pylint: disable=import-outside-toplevel
  from tfp_esc.data.bars import make_bars  # pylint: disable=import-outside-toplevel
  config = experiment.BarsConfig(seed=seed)
  data = make_bars(config.num_points, config.side, config.noise_std,
                   seed=seed)
  options = dict(config.fit_options(), log_every=0)
  return data.x, 2 * config.side, options, data.dictionary


def _lowrank_refit_problem(seed):
  from tfp_esc.inference.em import fit_em  # pylint: disable=import-outside-toplevel
  x = unseen_patches(4096, seed)
  dictionary = fit_em(x, 64, epochs=3, refine_rounds=0, seed=seed,
                      verbose=0).dictionary
  options = {'init_dictionary': dictionary, 'train_dictionary': False,
             'posterior': 'lowrank', 'rank': 5, 'log_every': 0}
  return x, 64, options, None


_PROBLEMS = {'bars': _bars_problem, 'lowrank_refit': _lowrank_refit_problem}


def _run(problem, driver, data):
  """One fit of `problem` by `driver`; data = what `_PROBLEMS` built."""
  from tfp_esc.evaluation.metrics import bars_recovery  # pylint: disable=import-outside-toplevel
  from tfp_esc.inference import joint  # pylint: disable=import-outside-toplevel
  x, num_latents, options, truth = data
  ours = joint._lbfgs_call  # pylint: disable=protected-access
  if driver == 'tfp':
    joint._lbfgs_call = _tfp_lbfgs_call  # pylint: disable=protected-access
  try:
    start = time.perf_counter()
    fit = joint.fit_joint(x, num_latents, **options)
    seconds = time.perf_counter() - start
  finally:
    joint._lbfgs_call = ours  # pylint: disable=protected-access
  trace = fit.trace
  row = {'problem': problem, 'driver': driver, 'seconds': seconds,
         'elbo': fit.elbo, 'converged': bool(fit.converged),
         'calls': int(trace['call'][-1]),
         'iterations': int(np.sum(trace['iterations'])),
         'evaluations': int(np.sum(trace['evaluations'])),
         'first_call_seconds': float(trace['seconds'][1]),
         'trace_seconds': [float(v) for v in trace['seconds']],
         'trace_elbo': [float(v) for v in trace['elbo']]}
  if truth is not None:
    row['bars_recovered'] = int(bars_recovery(truth,
                                              fit.dictionary).num_recovered)
  logging.info('%s, %s: %.1f s, %d calls, %d iterations, %d evaluations, '
               'ELBO %.6f', problem, driver, seconds, row['calls'],
               row['iterations'], row['evaluations'], fit.elbo)
  return row


def _markdown(rows):
  lines = [
      '# Joint L-BFGS: SciPy L-BFGS-B (ours) against TFP lbfgs_minimize',
      '', 'One process, the TFP baseline first on each problem; seconds '
      'include compilation.', '',
      '| problem | driver | seconds | calls | iterations | evaluations | '
      'evaluations per iteration | first call s | ELBO | bars recovered |',
      '|---|---|---|---|---|---|---|---|---|---|']
  for r in rows:
    lines.append(
        f"| {r['problem']} | {r['driver']} | {r['seconds']:.1f} | "
        f"{r['calls']} | {r['iterations']} | {r['evaluations']} | "
        f"{r['evaluations'] / max(r['iterations'], 1):.2f} | "
        f"{r['first_call_seconds']:.1f} | {r['elbo']:.5f} | "
        f"{r.get('bars_recovered', '')} |")
  lines.append('')
  for problem in dict.fromkeys(r['problem'] for r in rows):
    pair = {r['driver']: r for r in rows if r['problem'] == problem}
    if {'tfp', 'scipy'} <= set(pair):
      lines.append(f"- {problem}: ours takes "
                   f"{pair['scipy']['seconds'] / pair['tfp']['seconds']:.2f}"
                   f" of the baseline's time ("
                   f"{pair['tfp']['seconds'] / pair['scipy']['seconds']:.2f}x"
                   f" faster), ELBO {pair['scipy']['elbo'] - pair['tfp']['elbo']:+.5f}"
                   ' against it.')
  return '\n'.join(lines) + '\n'


def _figure(rows, path):
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  problems = list(dict.fromkeys(r['problem'] for r in rows))
  fig, axes = plt.subplots(1, len(problems), figsize=(5.5 * len(problems), 4),
                           squeeze=False)
  for ax, problem in zip(axes[0], problems):
    finals = []
    for r in rows:
      if r['problem'] == problem:
        ax.plot(r['trace_seconds'][1:], r['trace_elbo'][1:], marker='.',
                label=f"{r['driver']} ({r['seconds']:.0f} s)")
        finals.append(r['elbo'])
    top = max(finals)
    ax.set_ylim(top - 4 * max(abs(top - min(finals)), 0.05), top + 0.1)
    ax.set_xlabel('seconds (compilation included)')
    ax.set_ylabel('ELBO per data point (nats)')
    ax.set_title(problem)
    ax.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def main(argv):
  del argv
  from tfp_esc import artifacts  # pylint: disable=import-outside-toplevel
  rows = []
  for problem in FLAGS.problems:
    if problem not in _PROBLEMS:
      raise app.UsageError(f'--problems: unknown {problem!r}; known: '
                           f'{sorted(_PROBLEMS)}.')
  for problem in FLAGS.problems:
    # Built once: both drivers fit the same data from the same start (the
    # low-rank problem's dictionary costs 3 EM epochs).
    data = _PROBLEMS[problem](FLAGS.seed)
    for driver in ('tfp', 'scipy'):
      rows.append(_run(problem, driver, data))
  stem = os.path.join(_RESULTS, f'joint_lbfgs_{FLAGS.tag}')
  artifacts.save_json(stem + '.json', {'rows': rows, 'seed': FLAGS.seed})
  with open(stem + '.md', 'w', encoding='utf-8') as f:
    f.write(_markdown(rows))
  _figure(rows, stem + '.png')
  print(_markdown(rows))


if __name__ == '__main__':
  app.run(main)
