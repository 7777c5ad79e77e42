"""Denoises and/or inpaints a grey image, with learned noise and error bars.

  python scripts/restore_image.py --image=noisy.png --output_dir=runs/restore
  python scripts/restore_image.py --image=damaged.npy --mask=missing.npy \
      --noise_std=0 --clean=clean.npy --output_dir=runs/inpaint

Learns the model on the image's own patches (blind: without --noise_std the
noise level is learned too), restores every patch by its posterior and
combines the overlaps. Writes restored.npy/.png, uncertainty.npy/.png (the
posterior std of every clean pixel), restoration.png and metrics.json to
--output_dir. Every field of tfp_esc.experiment.RestorationConfig is a flag
of the same name (`--helpfull` lists them).
"""

import _cli  # pylint: disable=unused-import  (first: quiets TensorFlow)
from absl import flags

from tfp_esc import _flags, experiment

FLAGS = flags.FLAGS
_flags.define_config_flags(experiment.RestorationConfig)
flags.DEFINE_string('output_dir', 'runs/restore', 'Where outputs are written.')


def main(argv):
  del argv  # Checked by _cli.run.
  config = _flags.config_from_flags(experiment.RestorationConfig)
  experiment.restore(config, FLAGS.output_dir)


if __name__ == '__main__':
  _cli.run(main)
