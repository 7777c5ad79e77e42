"""Whitened patches of photographs that are NOT in the embedded default.

  python benchmarks/unseen_photographs.py --output=patches.npy [--num_patches=8192]

The embedded default (`tfp_esc.data.images.DEFAULT_IMAGE_NAMES`) uses seven
scikit-image photographs; scikit-image ships more. This writes the grey
versions of six others (coffee, chelsea, rocket, coins, hubble_deep_field,
retina) as PNGs to a folder and draws whitened 16x16 patches from that folder
with the library's own pipeline (`whitened_patches(folder)`), exactly as a
user with a folder of photographs would, and saves them as a ready `[N, 256]`
.npy for `scripts/train_patches.py --images=...`.
"""

import os
import tempfile

import numpy as np
from absl import app, flags

UNSEEN_IMAGE_NAMES = ('coffee', 'chelsea', 'rocket', 'coins',
                      'hubble_deep_field', 'retina')

FLAGS = flags.FLAGS


def unseen_patches(num_patches, seed=0, patch_size=16):
  """`[num_patches, patch_size^2]` float32 whitened patches (module doc)."""
  from skimage import color, data, io, util  # pylint: disable=import-outside-toplevel
  from tfp_esc.data.images import DEFAULT_IMAGE_NAMES
  from tfp_esc.data.patches import whitened_patches
  assert not set(UNSEEN_IMAGE_NAMES) & set(DEFAULT_IMAGE_NAMES)
  with tempfile.TemporaryDirectory() as folder:
    for name in UNSEEN_IMAGE_NAMES:
      image = getattr(data, name)()
      if image.ndim == 3:
        image = color.rgb2gray(image[..., :3])
      io.imsave(os.path.join(folder, f'{name}.png'),
                util.img_as_ubyte(image), check_contrast=False)
    return whitened_patches(folder, num_patches=num_patches,
                            patch_size=patch_size, seed=seed)


def main(argv):
  del argv
  x = unseen_patches(FLAGS.num_patches, FLAGS.seed)
  np.save(FLAGS.output, x)
  print(f'{FLAGS.output}: {x.shape} {x.dtype}, variance {x.var():.4f}')


if __name__ == '__main__':
  # Defined here, not at import: other benchmarks import unseen_patches.
  flags.DEFINE_string('output', 'patches.npy', 'Where the [N, 256] patches '
                      'go.')
  flags.DEFINE_integer('num_patches', 8192, 'Number of patches N.')
  flags.DEFINE_integer('seed', 0, 'Seed of the patch positions.')
  app.run(main)
