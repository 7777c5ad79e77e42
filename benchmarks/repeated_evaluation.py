"""What sharing traced steps between calls saves (sessions 15, 16).

  cd benchmarks && python repeated_evaluation.py [--dictionaries=4]
      [--tasks=score,paper_fit,restore] [--tag=...]

A user scoring several dictionaries on one data set (the MAP-vs-ELBO
notebook, a sweep over H or alpha, the amortization gap of each run) calls
`evaluate_dictionary` and `evaluate_heldout` once per dictionary; one
comparing engines calls `fit_em(engine='paper')` more than once. Before
9ea0ca3 / 59cd1ab every such call traced (and, under XLA, compiled) TFP's
L-BFGS again. This times each call twice in one process, alternating:

- 'cold': the shared caches (`joint._joint_steps`, `em._paper_steps`)
  cleared before the call, which is what every call cost before;
- 'warm': the caches kept, what a repeated call costs now.

It checks that both give the same numbers. Data: whitened 8 x 8 patches of
the unseen photographs (`unseen_photographs.py`), random unit-norm
dictionaries with H = 32 (the library's defaults otherwise: XLA on).

Task 'restore' (session 16): blind denoising (`restore_image`, defaults) of
a `--restore_size` square crop of scikit-image's chelsea with noise std 0.1,
as in `restoration.py`; its cold calls also clear the masked-EM iteration
and the posterior step, each compiled once per process since then. A user
restoring several images of one size, or denoising and then inpainting
one image, gains.

Writes benchmarks/results/repeated_evaluation_<tag>.{json,md}.
"""

import json
import os
import time

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')

import numpy as np  # pylint: disable=wrong-import-position
from absl import app, flags  # pylint: disable=wrong-import-position

FLAGS = flags.FLAGS
flags.DEFINE_integer('num_patches', 1024, 'Training patches.')
flags.DEFINE_integer('heldout_patches', 512, 'Held-out patches.')
flags.DEFINE_integer('num_latents', 32, 'H.')
flags.DEFINE_integer('dictionaries', 4, 'Dictionaries scored (calls timed).')
flags.DEFINE_list('tasks', ['score', 'paper_fit', 'restore'],
                  'Calls timed: score, paper_fit, restore.')
flags.DEFINE_integer('restore_size', 256, 'Side of the restored crop.')
flags.DEFINE_integer('seed', 0, 'Seed.')
flags.DEFINE_string('tag', time.strftime('%Y-%m-%d'), 'Results file tag.')

_RESULTS = os.path.join(os.path.dirname(__file__), 'results')


def main(argv):
  del argv
  from unseen_photographs import unseen_patches  # pylint: disable=import-outside-toplevel
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  from tfp_esc.evaluation.evaluate import (  # pylint: disable=import-outside-toplevel
      evaluate_dictionary, evaluate_heldout)
  from skimage import color, data, util  # pylint: disable=import-outside-toplevel
  from tfp_esc import restoration  # pylint: disable=import-outside-toplevel
  from tfp_esc.inference import em, joint, masked_em  # pylint: disable=import-outside-toplevel
  x = unseen_patches(FLAGS.num_patches, FLAGS.seed, patch_size=8)
  x_heldout = unseen_patches(FLAGS.heldout_patches, FLAGS.seed + 1,
                             patch_size=8)
  rng = np.random.default_rng(FLAGS.seed)

  def score(dictionary):
    train = evaluate_dictionary(x, dictionary, max_calls=2,
                                num_iw_samples=20, seed=FLAGS.seed)
    heldout = evaluate_heldout(x_heldout, dictionary, train['scales'],
                               train['noise_variance'], max_calls=2,
                               num_iw_samples=20, seed=FLAGS.seed)
    return (train['elbo'], heldout['elbo'])

  def paper_fit(dictionary):
    result = em.fit_em(x, FLAGS.num_latents, engine='paper', epochs=1,
                       init_dictionary=dictionary, seed=FLAGS.seed, verbose=0)
    return (result.history['elbo'][-1],)

  photo = util.img_as_float64(color.rgb2gray(data.chelsea()))
  size = FLAGS.restore_size
  top, left = ((s - size) // 2 for s in photo.shape)
  noisy = photo[top:top + size, left:left + size] + 0.1 * np.random.default_rng(
      FLAGS.seed).standard_normal((size, size))

  def restore(dictionary):
    del dictionary  # The learned one is the task's.
    result = restoration.restore_image(noisy, seed=FLAGS.seed)
    return (float(np.sum(result.restored)), float(np.sum(result.uncertainty)),
            result.noise_std)

  names = {'score': 'evaluate_dictionary + evaluate_heldout',
           'paper_fit': "fit_em(engine='paper'), 1 epoch",
           'restore': f'restore_image, {size}x{size} blind denoising'}
  unknown = set(FLAGS.tasks) - set(names)
  if unknown:
    raise app.UsageError(f'--tasks: unknown {sorted(unknown)}; choose from '
                         f'{sorted(names)}.')
  tasks = {names[t]: {'score': score, 'paper_fit': paper_fit,
                      'restore': restore}[t] for t in FLAGS.tasks}
  runs = {name: {'cold': [], 'warm': []} for name in tasks}
  same = {name: True for name in tasks}
  for i in range(FLAGS.dictionaries):
    dictionary = rng.standard_normal((x.shape[1], FLAGS.num_latents))
    dictionary = (dictionary / np.linalg.norm(dictionary, axis=0)).astype(
        x.dtype)
    for name, task in tasks.items():
      values = {}
      # Each goes first in every other round, so drift favours neither.
      for mode in (('cold', 'warm') if i % 2 else ('warm', 'cold')):
        if mode == 'cold':
          joint._joint_steps.cache_clear()  # pylint: disable=protected-access
          em._paper_steps.cache_clear()  # pylint: disable=protected-access
          masked_em._masked_em_iteration.cache_clear()  # pylint: disable=protected-access
          restoration._posterior_step.cache_clear()  # pylint: disable=protected-access
        start = time.perf_counter()
        values[mode] = task(dictionary)
        runs[name][mode].append(time.perf_counter() - start)
      same[name] = same[name] and values['cold'] == values['warm']
      print(name, i, {m: round(runs[name][m][-1], 2) for m in runs[name]},
            values, flush=True)
  # The first warm call of each task (round 0 goes warm first, on empty
  # caches) traces too; the medians use rounds 1 on.
  summary = {name: {mode: float(np.median(seconds[1:]))
                    for mode, seconds in modes.items()}
             for name, modes in runs.items()}
  out = {'config': {k: FLAGS[k].value for k in (
             'num_patches', 'heldout_patches', 'num_latents', 'dictionaries',
             'tasks', 'restore_size', 'seed')},
         'device': (tf.config.list_logical_devices('GPU') or
                    tf.config.list_logical_devices('CPU'))[0].name,
         'runs': runs, 'median_seconds': summary,
         'identical_results': same}
  os.makedirs(_RESULTS, exist_ok=True)
  stem = os.path.join(_RESULTS, f'repeated_evaluation_{FLAGS.tag}')
  with open(stem + '.json', 'w') as f:
    json.dump(out, f, indent=1)
  lines = [
      '# Repeated calls: traces shared (warm) against traced per call (cold)',
      '', f'Tasks {", ".join(FLAGS.tasks)}: {FLAGS.num_patches} training and '
      f'{FLAGS.heldout_patches} held-out 8x8 unseen patches, H = '
      f'{FLAGS.num_latents} (score, paper_fit); a {FLAGS.restore_size}x'
      f'{FLAGS.restore_size} crop of chelsea, noise std 0.1 (restore). '
      f'{FLAGS.dictionaries} rounds, one process ({out["device"]}); medians '
      'over rounds 1 on.', '',
      '| call | cold s (as before) | warm s (now) | cold / warm | same numbers |',
      '|---|---|---|---|---|']
  for name, row in summary.items():
    lines.append(f'| {name} | {row["cold"]:.2f} | {row["warm"]:.2f} | '
                 f'{row["cold"] / row["warm"]:.1f}x | {same[name]} |')
  with open(stem + '.md', 'w') as f:
    f.write('\n'.join(lines) + '\n')
  print('\n'.join(lines))


if __name__ == '__main__':
  app.run(main)
