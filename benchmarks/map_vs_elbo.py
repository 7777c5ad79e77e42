"""MAP (l1) dictionaries vs an ELBO-trained one, all scored by the ELBO.

  python benchmarks/map_vs_elbo.py [--num_patches=4096 --num_latents=100 \
      --epochs=10 --alphas=0.05,0.1,0.2,0.5 --output_dir=benchmarks/results]

The defaults are sized for about 10 minutes on 2 CPU cores (estimated from
parts: 4 MAP fits of ~35 s, two EM runs of ~1 min, 12 evaluations of
15-40 s each).

On whitened patches of the embedded images (SPEC 9), learns MAP dictionaries
with scikit-learn's MiniBatchDictionaryLearning for each l1 weight alpha
(`tfp_esc.evaluation.map_baseline`, needs `pip install tfp_esc[baselines]`)
and an ELBO dictionary by EM (diagonal posteriors, --annealing), then scores
every dictionary the same way (SPEC 10, last item): `evaluate_dictionary` on
the training patches (F, Gini, sigma^2*, importance-weighted bound of
log p(x)), and, with --heldout_patches > 0, `evaluate_heldout` on patches
drawn with another seed, lambda* and sigma^2* of the training evaluation
frozen (the classical ELBO L and its bound). The held-out patches come from
the same images (other positions, possibly overlapping), so they test
overfitting to the patch sample, not to the images.

Writes map_vs_elbo_N{num_patches}_H{num_latents}.md (a table) and .json to
--output_dir; the last line printed is the JSON object.
"""

import json
import os
import time

import numpy as np
from absl import app, flags, logging

from tfp_esc import artifacts
from tfp_esc.data.patches import whitened_patches
from tfp_esc.evaluation.evaluate import evaluate_dictionary, evaluate_heldout
from tfp_esc.evaluation.map_baseline import learn_map_dictionary
from tfp_esc.inference.em import fit_em
from tfp_esc.objective.annealing import get_schedule

FLAGS = flags.FLAGS
flags.DEFINE_string('output_dir', 'benchmarks/results', 'Output folder.')
flags.DEFINE_integer('num_patches', 4096, 'Training patches N.')
flags.DEFINE_integer('heldout_patches', 1024,
                     'Held-out patches (0: no held-out evaluation).')
flags.DEFINE_integer('patch_size', 16, 'Patch side (D = patch_size^2).')
flags.DEFINE_integer('num_latents', 100, 'H of every dictionary.')
flags.DEFINE_list('alphas', ['0.05', '0.1', '0.2', '0.5'],
                  'l1 weights of the MAP dictionaries (data variance 0.1).')
flags.DEFINE_integer('map_epochs', 5, 'Most epochs of MAP learning.')
flags.DEFINE_integer('epochs', 10, 'EM epochs of the ELBO dictionary.')
flags.DEFINE_list('annealing', ['none', 'prior'],
                  'One EM run (ELBO dictionary) per annealing scheme '
                  '(variants A and B).')
flags.DEFINE_integer('batch_size', 512, 'EM minibatch size.')
flags.DEFINE_integer('num_iw_samples', 100, 'K of the importance-weighted '
                     'bound (0: skip).')
flags.DEFINE_integer('eval_max_calls', 10, 'Most L-BFGS calls (of up to 200 '
                     'iterations) of each evaluation.')
flags.DEFINE_integer('seed', 0, 'Seed of patches, dictionaries and fits.')


def learn_dictionaries(x):
  """{label: (dictionary, info)}: the MAP ones and the EM one."""
  dictionaries = {}
  for alpha in (float(a) for a in FLAGS.alphas):
    start = time.perf_counter()
    dictionary = learn_map_dictionary(x, FLAGS.num_latents, alpha,
                                      seed=FLAGS.seed,
                                      max_iter=FLAGS.map_epochs)
    dictionaries[f'MAP alpha={alpha:g}'] = (dictionary, {
        'method': 'map', 'alpha': alpha,
        'train_seconds': time.perf_counter() - start})
  for annealing in FLAGS.annealing:
    start = time.perf_counter()
    em = fit_em(x, FLAGS.num_latents, epochs=FLAGS.epochs,
                posterior='diagonal', schedule=get_schedule(annealing),
                batch_size=min(FLAGS.batch_size, len(x)), seed=FLAGS.seed)
    dictionaries[f'ELBO (EM, {annealing} annealing)'] = (em.dictionary, {
        'method': 'em', 'annealing': annealing,
        'train_seconds': time.perf_counter() - start,
        'training_elbo': em.history['elbo'][-1]})
  return dictionaries


def evaluate(label, dictionary, info, x, x_heldout):
  """One table row: the training-data and held-out scores of a dictionary."""
  options = {'num_iw_samples': FLAGS.num_iw_samples, 'seed': FLAGS.seed,
             'max_calls': FLAGS.eval_max_calls}
  start = time.perf_counter()
  train = evaluate_dictionary(x, dictionary, **options)
  row = dict(info, label=label, elbo=train['elbo'],
             gini_mean=train['gini']['mean'], gini_sd=train['gini']['sd'],
             noise_variance=train['noise_variance'], entropies=train['entropies'],
             bound=train['log_likelihood_bound'],
             converged=train['converged'])
  if x_heldout is not None:
    # evaluate_dictionary's lambda* belongs to the unit-norm columns, and
    # evaluate_heldout reads scales relative to the columns it is given.
    unit = dictionary / np.linalg.norm(dictionary, axis=0)
    heldout = evaluate_heldout(x_heldout, unit, train['scales'],
                               train['noise_variance'], **options)
    row.update(heldout_elbo=heldout['elbo'],
               heldout_bound=heldout['log_likelihood_bound'],
               heldout_converged=heldout['converged'])
  row['eval_seconds'] = time.perf_counter() - start
  logging.info('%s: %s', label, row)
  return row


def _bound(bound):
  return '–' if bound is None else f'{bound["mean"]:.2f} ± {bound["stderr"]:.2f}'


def table(rows):
  """Markdown table of the rows."""
  heldout = any('heldout_elbo' in r for r in rows)
  head = ['dictionary', 'ELBO F', 'Gini (mean ± sd)', 'σ²*',
          'log p(x) bound (IW)']
  head += ['held-out ELBO L', 'held-out bound (IW)'] if heldout else []
  head += ['train s', 'eval s']
  lines = ['| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
  for r in rows:
    cells = [r['label'], f'{r["elbo"]:.2f}',
             f'{r["gini_mean"]:.3f} ± {r["gini_sd"]:.3f}',
             f'{r["noise_variance"]:.4f}', _bound(r['bound'])]
    if heldout:
      cells += [f'{r["heldout_elbo"]:.2f}', _bound(r['heldout_bound'])]
    cells += [f'{r["train_seconds"]:.0f}', f'{r["eval_seconds"]:.0f}']
    lines.append('| ' + ' | '.join(cells) + ' |')
  return '\n'.join(lines) + '\n'


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  unknown = set(FLAGS.annealing) - {'none', 'prior'}
  if unknown:
    raise app.UsageError(f'--annealing takes none and/or prior, got '
                         f'{sorted(unknown)}.')
  x = whitened_patches(num_patches=FLAGS.num_patches,
                       patch_size=FLAGS.patch_size, seed=FLAGS.seed)
  x_heldout = whitened_patches(
      num_patches=FLAGS.heldout_patches, patch_size=FLAGS.patch_size,
      seed=FLAGS.seed + 1) if FLAGS.heldout_patches else None
  rows = [evaluate(label, dictionary, info, x, x_heldout)
          for label, (dictionary, info) in learn_dictionaries(x).items()]
  settings = {k: FLAGS[k].value for k in (
      'num_patches', 'heldout_patches', 'patch_size', 'num_latents',
      'alphas', 'map_epochs', 'epochs', 'annealing', 'batch_size',
      'num_iw_samples', 'eval_max_calls', 'seed')}
  report = {'settings': settings, 'rows': rows}
  stem = os.path.join(FLAGS.output_dir, f'map_vs_elbo_N{FLAGS.num_patches}'
                      f'_H{FLAGS.num_latents}')
  text = (f'N = {FLAGS.num_patches} whitened {FLAGS.patch_size}x'
          f'{FLAGS.patch_size} patches, H = {FLAGS.num_latents}; ELBO, Gini, '
          'σ²* and bound per patch on the training patches, held-out '
          'columns with λ*, σ²* of the training patches frozen.\n\n'
          + table(rows))
  with artifacts.atomic_path(stem + '.md') as tmp, open(tmp, 'w') as f:
    f.write(text)
  artifacts.save_json(stem + '.json', report)
  logging.info('\n%s', text)
  print(json.dumps(report, default=float))


if __name__ == '__main__':
  app.run(main)
