"""Bars recovery over seeds: recovery rate, final vs ground-truth ELBO, time.

  python benchmarks/bars_recovery.py --num_seeds=10 --annealing=none,prior_linear

For each annealing scheme and seed, generates bars (N = 1000), learns the
dictionary with joint L-BFGS (tfp_esc.experiment defaults), fits posteriors for
the true dictionary, and records whether all ten bars were recovered
(one-to-one |cosine| >= 0.9). Logs progress; the last line printed is one JSON
object: {scheme: {recovery_rate, runs: [...], median_seconds, ...}}.
"""

import json
import time

import numpy as np
from absl import app, flags, logging

from tfp_esc import artifacts, experiment
from tfp_esc.data.bars import make_bars
from tfp_esc.evaluation.metrics import bars_recovery
from tfp_esc.inference.joint import fit_joint
from tfp_esc.objective.annealing import get_schedule

FLAGS = flags.FLAGS
flags.DEFINE_integer('num_seeds', 10, 'Runs (seeds 0 .. num_seeds-1).')
flags.DEFINE_list('annealing', ['none', 'prior_linear'],
                  'Annealing schemes to compare.')
flags.DEFINE_enum('posterior', 'full', ['full', 'diagonal', 'lowrank'],
                  'Posterior family.')
flags.DEFINE_string('output', None, 'Optional path of a JSON copy.')


def run_one(config, schedule_name, seed):
  data = make_bars(config.num_points, config.side, config.noise_std, seed=seed)
  options = dict(config.fit_options(), seed=seed, log_every=0)
  start = time.perf_counter()
  result = fit_joint(data.x, 2 * config.side,
                     schedule=get_schedule(schedule_name), **options)
  seconds = time.perf_counter() - start
  truth = fit_joint(data.x, init_dictionary=data.dictionary,
                    train_dictionary=False, **options)
  match = bars_recovery(data.dictionary, result.dictionary)
  run = {'seed': seed, 'recovered': match.recovered,
         'num_recovered': match.num_recovered, 'elbo': result.elbo,
         'ground_truth_elbo': truth.elbo,
         'elbo_minus_ground_truth': result.elbo - truth.elbo,
         'calls': int(result.trace['call'][-1]), 'seconds': seconds,
         'min_bar_similarity': float(np.min(match.similarity))}
  logging.info('%s seed %d: %s', schedule_name, seed, run)
  return run


def main(argv):
  del argv
  config = experiment.BarsConfig(posterior=FLAGS.posterior)
  report = {}
  for name in FLAGS.annealing:
    runs = [run_one(config, name, seed) for seed in range(FLAGS.num_seeds)]
    seconds = [r['seconds'] for r in runs]
    report[name] = {
        'posterior': config.posterior,
        'recovery_rate': float(np.mean([r['recovered'] for r in runs])),
        'num_runs': len(runs),
        'median_seconds': float(np.median(seconds)),
        'max_seconds': float(np.max(seconds)),
        'runs': runs,
    }
  if FLAGS.output:
    artifacts.save_json(FLAGS.output, report)
  print(json.dumps(report))


if __name__ == '__main__':
  app.run(main)
