"""Learns the bars dictionary with the entropy ELBO and writes plots + metrics.

  python scripts/train_bars.py --output_dir=runs/bars

Writes dictionary.npy, metrics.json, dictionary.png and training.png to
--output_dir. Every field of tfp_esc.experiment.BarsConfig is a flag of the
same name (`--helpfull` lists them with their documentation); --data is
short for --data_path.
"""

import _cli  # pylint: disable=unused-import  (first: quiets TensorFlow)
from absl import flags

from tfp_esc import _flags, experiment

FLAGS = flags.FLAGS
_flags.define_config_flags(experiment.BarsConfig)
flags.DEFINE_alias('data', 'data_path')
flags.DEFINE_string('output_dir', 'runs/bars', 'Where outputs are written.')


def main(argv):
  del argv  # Checked by _cli.run.
  config = _flags.config_from_flags(experiment.BarsConfig)
  experiment.train_bars(config, FLAGS.output_dir)


if __name__ == '__main__':
  _cli.run(main)
