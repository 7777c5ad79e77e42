"""What every script shares: quiet TensorFlow and one-line errors.

Import this module before anything that imports TensorFlow: it sets
TF_CPP_MIN_LOG_LEVEL=3 and imports TensorFlow with file descriptor 2
silenced, so TensorFlow's C++ log lines (oneDNN, CUDA probing, XLA service,
grappler's `remapper failed`, ...) stay out of the output. To bring them
back, pass --verbosity=1 (or higher; absl's flag, which also shows debug
Python logs) or set TF_CPP_MIN_LOG_LEVEL yourself, e.g.
TF_CPP_MIN_LOG_LEVEL=0. It also turns on the cache of compiled steps
(`tfp_esc._xla.use_compilation_cache`; TFP_ESC_COMPILATION_CACHE=off turns
it off).

`run(main)` replaces `absl.app.run(main)`: a bad flag or a bad input (the
ValueError/TypeError/OSError the library raises before any work) ends the
script with one line `error: ...` on stderr and exit status 2, no
traceback; --verbosity=1 shows the traceback.
"""

import logging
import os
import re
import sys

__all__ = ['run']

# Exceptions that carry a message meant for the user.
_USER_ERRORS = (ValueError, TypeError, OSError, FloatingPointError)


def _verbosity(argv):
  """The --verbosity / -v value on the command line (0 if absent)."""
  for i, arg in enumerate(argv):
    match = re.fullmatch(r'--?(?:verbosity|v)(?:=(.*))?', arg)
    if match:
      value = match.group(1)
      if value is None and i + 1 < len(argv):
        value = argv[i + 1]
      try:
        return int(value)
      except (TypeError, ValueError):
        return 0
  return 0


def _import_tensorflow_quietly():
  """Imports TensorFlow with its C++ logs at the level the user chose.

  TF_CPP_MIN_LOG_LEVEL silences what TensorFlow logs once running, but not
  the lines its libraries print while loading (before absl::InitializeLog,
  e.g. oneDNN and CUDA-driver notes); those go to file descriptor 2, which
  is pointed at /dev/null for the import only, unless logs are wanted.
  """
  if 'TF_CPP_MIN_LOG_LEVEL' not in os.environ:
    os.environ['TF_CPP_MIN_LOG_LEVEL'] = (
        '0' if _verbosity(sys.argv) >= 1 else '3')
  if os.environ['TF_CPP_MIN_LOG_LEVEL'] in ('', '0'):
    import tensorflow  # pylint: disable=g-import-not-at-top,unused-import
    return
  sys.stderr.flush()
  saved = os.dup(2)
  null = os.open(os.devnull, os.O_WRONLY)
  try:
    os.dup2(null, 2)
    import tensorflow  # pylint: disable=g-import-not-at-top,unused-import,redefined-outer-name
  finally:
    os.dup2(saved, 2)
    os.close(saved)
    os.close(null)


_import_tensorflow_quietly()
# Compiled steps kept on disk for the next run (tfp_esc._xla's module doc).
from tfp_esc import _xla  # pylint: disable=g-import-not-at-top,wrong-import-position
_xla.use_compilation_cache()
# Matplotlib's font notes and TensorFlow's Python notes (a line per
# checkpoint written) would otherwise reach absl's INFO log.
logging.getLogger('matplotlib').setLevel(logging.WARNING)
logging.getLogger('tensorflow').setLevel(
    logging.INFO if _verbosity(sys.argv) >= 1 else logging.WARNING)


def _fail(message):
  print(f'error: {message}', file=sys.stderr)
  sys.exit(2)


def _parse_flags(argv):
  from absl import flags  # pylint: disable=g-import-not-at-top
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    _fail(f'{e} (--helpfull lists the flags)')


def run(main):
  """Runs `main(argv)` under absl with one-line errors (see module doc)."""
  from absl import app  # pylint: disable=g-import-not-at-top

  def checked_main(argv):
    if len(argv) > 1:
      _fail(f'unexpected arguments {argv[1:]}; every setting is a --flag.')
    try:
      return main(argv)
    except _USER_ERRORS as e:
      if _verbosity(sys.argv) >= 1:
        raise
      # A config field's error names the field, i.e. the flag.
      _fail(('--' if hasattr(e, 'field') else '') + (str(e) or
                                                     type(e).__name__))

  app.run(checked_main, flags_parser=_parse_flags)
