"""Runs one script's main over many command lines in one process (for tests).

  python tests/script_driver.py scripts/train_bars.py '[["--num_points=0"]]'

Prints a JSON list with, per command line, the exit code and what the
script wrote to sys.stderr. One TensorFlow import serves every case, so a
sweep of bad inputs costs one process start, not one per case.
"""

import contextlib
import io
import json
import runpy
import sys


def main():
  script, cases = sys.argv[1], json.loads(sys.argv[2])
  sys.argv = [script]
  sys.path.insert(0, 'scripts')
  namespace = runpy.run_path(script)  # Defines the flags; main not run.
  cli, script_main = namespace['_cli'], namespace['main']
  from absl import flags  # pylint: disable=g-import-not-at-top
  results = []
  for case in cases:
    flags.FLAGS.unparse_flags()
    sys.argv = [script] + case
    stderr = io.StringIO()
    code = None
    with contextlib.redirect_stderr(stderr):
      try:
        cli.run(script_main)
      except SystemExit as e:
        code = e.code
    results.append({'argv': case, 'code': code, 'stderr': stderr.getvalue()})
  print(json.dumps(results))


if __name__ == '__main__':
  main()
