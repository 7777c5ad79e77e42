"""Learns a dictionary of whitened natural-image patches with the entropy ELBO.

  python scripts/train_patches.py --method=em --annealing=prior \
      --output_dir=runs/patches

Uses the embedded scikit-image photographs unless --images names
IMAGES.mat, an image folder or a .npy/.npz. Writes dictionary.npy,
metrics.json, dictionary.png, training.png, gini.png and checkpoint/ (a
tf.train.Checkpoint directory).
Every field of tfp_esc.experiment.PatchesConfig is a flag of the same name
(`--helpfull` lists them with their documentation).

The checkpoint records the run's settings: --resume continues an
interrupted run (and refuses a checkpoint of a run with other settings,
naming the first one that differs); a new run onto an existing checkpoint
needs --overwrite.
"""

import _cli  # pylint: disable=unused-import  (first: quiets TensorFlow)
from absl import flags

from tfp_esc import _flags, experiment

FLAGS = flags.FLAGS
_flags.define_config_flags(experiment.PatchesConfig)
flags.DEFINE_string('output_dir', 'runs/patches', 'Where outputs are written.')
flags.DEFINE_bool('resume', False, 'Continue from the checkpoint in '
                  '--output_dir (same settings; --epochs may grow).')
flags.DEFINE_bool('overwrite', False, 'Start afresh even if --output_dir '
                  'holds a checkpoint of an earlier run.')


def main(argv):
  del argv  # Checked by _cli.run.
  config = _flags.config_from_flags(experiment.PatchesConfig)
  experiment.train_patches(config, FLAGS.output_dir, resume=FLAGS.resume,
                           overwrite=FLAGS.overwrite)


if __name__ == '__main__':
  _cli.run(main)
