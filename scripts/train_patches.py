"""Learns a dictionary of whitened natural-image patches with the entropy ELBO.

  python scripts/train_patches.py --method=em --annealing=prior \
      --output_dir=runs/patches

Uses the embedded scikit-image photographs unless --images names
IMAGES.mat, an image folder or a .npy/.npz. Writes dictionary.npy,
metrics.json, dictionary.png, training.png, gini.png and a checkpoint;
--resume continues an interrupted run. See tfp_esc.experiment.PatchesConfig.
"""

from absl import app, flags

from tfp_esc import experiment
from tfp_esc.inference.em import ENGINES

_D = experiment.PatchesConfig()
FLAGS = flags.FLAGS
flags.DEFINE_enum('method', _D.method, ['em', 'amortized'], 'Training method.')
flags.DEFINE_enum('engine', _D.engine, list(ENGINES),
                  'EM engine: incremental (default; incremental EM plus '
                  'L-BFGS refinement of the dictionary) or paper (the '
                  "paper's protocol).")
flags.DEFINE_integer('refine_rounds', _D.refine_rounds,
                     'Incremental engine: refinement rounds after the '
                     'epochs (0: none).')
flags.DEFINE_enum('posterior', _D.posterior, ['diagonal', 'lowrank', 'full'],
                  'Posterior family.')
flags.DEFINE_integer('rank', _D.rank, 'Rank R of the low-rank family.')
flags.DEFINE_enum('annealing', _D.annealing,
                  ['none', 'prior', 'prior_linear', 'likelihood', 'beta'],
                  'Entropy annealing scheme (indexed by epoch).')
flags.DEFINE_integer('num_patches', _D.num_patches,
                     'Number of patches N; default: every row of a file of '
                     'ready patches, else 20,480 drawn from the images.')
flags.DEFINE_integer('num_latents', _D.num_latents, 'Number of latents H.')
flags.DEFINE_integer('patch_size', _D.patch_size, 'Patch side length.')
flags.DEFINE_integer('epochs', _D.epochs, 'Training epochs.')
flags.DEFINE_integer('batch_size', _D.batch_size, 'Minibatch size.')
flags.DEFINE_string('images', None, 'IMAGES.mat, image folder or .npy/.npz; '
                    'default: embedded scikit-image photographs.')
flags.DEFINE_integer('seed', _D.seed, 'Seed.')
flags.DEFINE_bool('warm_start', _D.warm_start,
                  'Paper engine: start E-steps from the previous parameters.')
flags.DEFINE_enum('e_step', None, ['newton', 'lbfgs'],
                  'Paper engine: E-step (newton: diagonal posteriors only); '
                  'default lbfgs.')
flags.DEFINE_integer('e_step_iterations', None,
                     'EM E-step iterations; default 8 per revisit '
                     '(incremental), 10 (paper, newton), 100 (paper, lbfgs).')
flags.DEFINE_string('output_dir', 'runs/patches', 'Where outputs are written.')
flags.DEFINE_bool('resume', False, 'Continue from the checkpoint in '
                  '--output_dir.')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  config = experiment.PatchesConfig(
      method=FLAGS.method, engine=FLAGS.engine,
      refine_rounds=FLAGS.refine_rounds, posterior=FLAGS.posterior, rank=FLAGS.rank,
      annealing=FLAGS.annealing, num_patches=FLAGS.num_patches,
      num_latents=FLAGS.num_latents, patch_size=FLAGS.patch_size,
      epochs=FLAGS.epochs, batch_size=FLAGS.batch_size, images=FLAGS.images,
      seed=FLAGS.seed, warm_start=FLAGS.warm_start, e_step=FLAGS.e_step,
      e_step_iterations=FLAGS.e_step_iterations)
  experiment.train_patches(config, FLAGS.output_dir, resume=FLAGS.resume)


if __name__ == '__main__':
  app.run(main)
