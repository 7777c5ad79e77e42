"""The paper's comparison of four training variants on natural image patches.

  python benchmarks/patches_variants.py --output_dir=runs/variants \
      [--num_patches=8192 --epochs=10]

A: EM, no annealing; B: EM, prior annealing; C: amortized, diagonal;
D: amortized, low-rank (R = 5) with prior annealing; plus an overcomplete
pair (H = 2D at patch size 8) by EM without and with prior annealing
(Appendix E.5). A, B and the pair run on the library's default EM engine
(incremental EM plus refinement); A-paper and B-paper are A and B by the
paper's protocol (engine 'paper': fresh-start L-BFGS E-steps, gradient
M-steps), so the paper's ordering can be checked for both. Each run is tfp_esc.experiment.train_patches with its own
folder. Writes variants.json, variants.md (ELBO, Gini, entropies, sigma2,
seconds) and variants.png (the four dictionaries ordered by lambda); the last
line printed is the JSON.
"""

import json
import os

import numpy as np
from absl import app, flags, logging

from tfp_esc import artifacts, experiment
from tfp_esc.evaluation import plots

FLAGS = flags.FLAGS
flags.DEFINE_string('output_dir', 'runs/variants', 'Output folder.')
flags.DEFINE_integer('num_patches', 8192, 'Patches per run.')
flags.DEFINE_integer('epochs', 10, 'Epochs per run.')
flags.DEFINE_integer('num_latents', 100, 'H of the four main variants.')
flags.DEFINE_string('images', None, 'Images (default: embedded photographs).')
flags.DEFINE_integer('amortized_epochs', None,
                     'Epochs of the amortized variants (default --epochs): '
                     'an Adam step costs ~1/40 of an EM step.')
flags.DEFINE_list('variants', ['A', 'B', 'A-paper', 'B-paper', 'C', 'D',
                                'O-none', 'O-prior'],
                  'Which runs (also: A-newton, variant A by the paper '
                  'protocol with the Newton E-step; C-prior, variant D with '
                  'the diagonal family).')

VARIANTS = {
    'A': {'method': 'em', 'annealing': 'none'},
    'A-newton': {'method': 'em', 'annealing': 'none', 'e_step': 'newton',
                 'engine': 'paper'},
    'B': {'method': 'em', 'annealing': 'prior'},
    'A-paper': {'method': 'em', 'annealing': 'none', 'engine': 'paper'},
    'B-paper': {'method': 'em', 'annealing': 'prior', 'engine': 'paper'},
    'C': {'method': 'amortized', 'posterior': 'diagonal', 'annealing': 'none'},
    'D': {'method': 'amortized', 'posterior': 'lowrank', 'rank': 5,
          'annealing': 'prior_linear'},
    'C-prior': {'method': 'amortized', 'posterior': 'diagonal',
                'annealing': 'prior_linear'},
    'O-none': {'method': 'em', 'annealing': 'none', 'patch_size': 8,
               'num_latents': 128},
    'O-prior': {'method': 'em', 'annealing': 'prior', 'patch_size': 8,
                'num_latents': 128},
}
LABELS = {'A': 'A: EM', 'A-newton': 'A (paper protocol), Newton E-step',
          'B': 'B: EM + prior annealing',
          'A-paper': 'A (paper protocol)',
          'B-paper': 'B (paper protocol) + prior annealing',
          'C': 'C: amortized diagonal', 'D': 'D: amortized low-rank + prior',
          'C-prior': 'C + prior annealing (diagonal, as D)',
          'O-none': 'overcomplete EM (H=2D)',
          'O-prior': 'overcomplete EM + prior'}


def main(argv):
  del argv
  rows, dictionaries, orders = {}, {}, {}
  for name in FLAGS.variants:
    options = {'num_patches': FLAGS.num_patches, 'epochs': FLAGS.epochs,
               'num_latents': FLAGS.num_latents, 'images': FLAGS.images,
               **VARIANTS[name]}
    if options['method'] == 'amortized' and FLAGS.amortized_epochs:
      options['epochs'] = FLAGS.amortized_epochs
    config = experiment.PatchesConfig(**options)
    workdir = os.path.join(FLAGS.output_dir, name)
    try:
      summary = experiment.train_patches(config, workdir, resume=True)
    except NotImplementedError as e:
      logging.warning('variant %s skipped: %s', name, e)
      rows[name] = {'label': LABELS[name], 'skipped': str(e)}
      continue
    rows[name] = {
        'label': LABELS[name], 'elbo': summary['elbo'],
        'gini_mean': summary['gini']['mean'], 'gini_sd': summary['gini']['sd'],
        'noise_variance': summary['noise_variance'], 'seconds': summary['seconds'],
        **summary['entropies'],
        'elbo_per_epoch': summary['history']['elbo'],
        'num_latents': config.num_latents, 'patch_size': config.patch_size,
        'epochs': config.epochs}
    if config.patch_size == 16:
      dictionaries[LABELS[name]] = np.load(os.path.join(workdir,
                                                        'dictionary.npy'))
      orders[LABELS[name]] = np.argsort(-np.asarray(summary['scales']))
  lines = [('| variant | ELBO | Gini (mean ± sd) | H[q] | H[prior] | H[lik] | '
            'σ² | seconds |'), '|---|---|---|---|---|---|---|---|']
  for row in rows.values():
    if 'skipped' in row:
      lines.append(f'| {row["label"]} | skipped: {row["skipped"]} |||||||')
      continue
    lines.append(
        f'| {row["label"]} | {row["elbo"]:.2f} | {row["gini_mean"]:.3f} ± '
        f'{row["gini_sd"]:.3f} | {row["q_entropy"]:.2f} | '
        f'{row["prior_entropy"]:.2f} | {row["likelihood_entropy"]:.2f} | '
        f'{row["noise_variance"]:.4f} | {row["seconds"]:.0f} |')
  table = '\n'.join(lines) + '\n'
  os.makedirs(FLAGS.output_dir, exist_ok=True)
  with artifacts.atomic_path(os.path.join(FLAGS.output_dir,
                                          'variants.md')) as tmp, open(tmp, 'w') as f:
    f.write(f'N = {FLAGS.num_patches} patches, {FLAGS.epochs} epochs '
            f'(amortized: {FLAGS.amortized_epochs or FLAGS.epochs}).\n\n')
    f.write(table)
  artifacts.save_json(os.path.join(FLAGS.output_dir, 'variants.json'), rows)
  if dictionaries:
    plots.plot_dictionaries(dictionaries, orders=orders,
                            path=os.path.join(FLAGS.output_dir,
                                              'variants.png'))
  logging.info('\n%s', table)
  print(json.dumps(rows))


if __name__ == '__main__':
  app.run(main)
