"""What driving EM's epochs by `keras.Model.fit` costs (issue 11, goal 5).

  python benchmarks/em_keras_driver.py [--repeats=6] [--tag=...]

`fit_em` runs the epochs of either engine by `keras.Model.fit` (eager
`train_step` = the trainer's `visit`, a first callback ending each epoch).
`trainer.run_epoch` makes the same calls in a plain loop. This runs both on
the same data in one process, alternating (each goes first in every other
repeat), and reports the seconds per epoch of each (median over the epochs
of all repeats after the first epoch of each run, which compiles), their
ratio, and whether the two ELBO histories agree bit for bit. Data: whitened 16x16 patches of the unseen
photographs (`unseen_photographs.py`), H = 64, the default engine without
refinement.

Writes benchmarks/results/em_keras_driver_<tag>.{json,md}.
"""

import json
import os
import time

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')

import numpy as np  # pylint: disable=wrong-import-position
from absl import app, flags  # pylint: disable=wrong-import-position

FLAGS = flags.FLAGS
flags.DEFINE_integer('num_patches', 8192, 'Patches.')
flags.DEFINE_integer('num_latents', 64, 'H.')
flags.DEFINE_integer('epochs', 4, 'EM epochs per run.')
flags.DEFINE_integer('repeats', 6, 'Runs of each driver, alternating.')
flags.DEFINE_integer('seed', 0, 'Seed.')
flags.DEFINE_string('tag', time.strftime('%Y-%m-%d'), 'Results file tag.')

_RESULTS = os.path.join(os.path.dirname(__file__), 'results')


def _epoch_seconds(history):
  """Seconds of every epoch after the first (which compiles)."""
  return np.diff(np.asarray(history['seconds'])).tolist()


def main(argv):
  del argv
  from unseen_photographs import unseen_patches  # pylint: disable=import-outside-toplevel
  from tfp_esc.inference.em import fit_em  # pylint: disable=import-outside-toplevel
  from tfp_esc.inference.incremental_em import IncrementalEMTrainer  # pylint: disable=import-outside-toplevel
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  x = unseen_patches(FLAGS.num_patches, FLAGS.seed)
  runs = {'keras_fit': [], 'plain_loop': []}
  histories = {}

  def keras_fit():
    result = fit_em(x, FLAGS.num_latents, epochs=FLAGS.epochs,
                    refine_rounds=0, seed=FLAGS.seed, verbose=0)
    return result.history

  def plain_loop():
    trainer = IncrementalEMTrainer(x, FLAGS.num_latents, seed=FLAGS.seed)
    for _ in range(FLAGS.epochs):
      trainer.run_epoch()
    return trainer.history

  drivers = {'keras_fit': keras_fit, 'plain_loop': plain_loop}
  for repeat in range(FLAGS.repeats):
    # Each goes first in every other repeat, so a drift of the machine's
    # speed over the run favours neither.
    for name in sorted(drivers, reverse=bool(repeat % 2)):
      start = time.perf_counter()
      history = drivers[name]()
      runs[name].append(dict(wall=time.perf_counter() - start,
                             epochs=_epoch_seconds(history)))
      histories[name] = history['elbo']
  summary = {}
  for name, rows in runs.items():
    epochs = [s for row in rows for s in row['epochs']]
    summary[name] = {'median_epoch_seconds': float(np.median(epochs)),
                     'median_wall_seconds': float(np.median(
                         [row['wall'] for row in rows]))}
  ratio = (summary['keras_fit']['median_epoch_seconds']
           / summary['plain_loop']['median_epoch_seconds'])
  out = {'config': {k: FLAGS[k].value for k in (
             'num_patches', 'num_latents', 'epochs', 'repeats', 'seed')},
         'device': (tf.config.list_logical_devices('GPU') or
                    tf.config.list_logical_devices('CPU'))[0].name,
         'runs': runs, 'summary': summary,
         'keras_over_plain_epoch_seconds': ratio,
         'elbo_histories_identical': (histories['keras_fit']
                                      == histories['plain_loop']),
         'final_elbo': histories['keras_fit'][-1]}
  os.makedirs(_RESULTS, exist_ok=True)
  stem = os.path.join(_RESULTS, f'em_keras_driver_{FLAGS.tag}')
  with open(stem + '.json', 'w') as f:
    json.dump(out, f, indent=1)
  lines = [
      '# EM epochs: keras.Model.fit against a plain loop', '',
      f'{FLAGS.num_patches} unseen photograph patches, H = '
      f'{FLAGS.num_latents}, {FLAGS.epochs} epochs per run, '
      f'{FLAGS.repeats} runs each, alternating, one process '
      f'({out["device"]}).', '',
      '| driver | median s per epoch | median s per run |', '|---|---|---|']
  for name, row in summary.items():
    lines.append(f'| {name} | {row["median_epoch_seconds"]:.3f} | '
                 f'{row["median_wall_seconds"]:.1f} |')
  lines += ['', f'Keras / plain, seconds per epoch: **{ratio:.3f}**. ELBO '
            f'histories identical: {out["elbo_histories_identical"]} '
            f'(final ELBO {out["final_elbo"]:.4f}).']
  with open(stem + '.md', 'w') as f:
    f.write('\n'.join(lines) + '\n')
  print('\n'.join(lines))
  print(json.dumps(out))


if __name__ == '__main__':
  app.run(main)
