"""Atomic writes of run outputs: an interrupted run never leaves a torn file.

Each writer writes to a temporary file in the destination folder and then
renames it over the destination (`os.replace`, atomic on POSIX). Files get
the mode of any newly created file (0666 less the umask, usually 0644), not
the 0600 of a private temporary file, so arrays, JSON, checkpoints and
figures alike are readable by whoever may read the folder.
"""

import contextlib
import json
import os
import tempfile

import numpy as np

__all__ = ['atomic_path', 'jsonable', 'save_json', 'save_npy']


@contextlib.contextmanager
def atomic_path(path):
  """Yields a temporary path that replaces `path` when the block succeeds."""
  path = os.fspath(path)
  folder = os.path.dirname(os.path.abspath(path))
  os.makedirs(folder, exist_ok=True)
  suffix = os.path.splitext(path)[1]
  handle, tmp = tempfile.mkstemp(dir=folder, prefix='.tmp-', suffix=suffix)
  os.close(handle)
  os.chmod(tmp, 0o666 & ~_umask())
  try:
    yield tmp
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


def _umask():
  """The process's umask (read by setting it and setting it back)."""
  mask = os.umask(0o022)
  os.umask(mask)
  return mask


def jsonable(value):
  """`value` with NumPy values as Python ones and NaN/inf as None."""
  if isinstance(value, dict):
    return {str(k): jsonable(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [jsonable(v) for v in value]
  if isinstance(value, np.ndarray):
    return jsonable(value.tolist())
  if isinstance(value, (np.floating, float)):
    value = float(value)
    return value if np.isfinite(value) else None
  if isinstance(value, (np.integer,)):
    return int(value)
  if isinstance(value, np.bool_):
    return bool(value)
  return value


def save_json(path, obj):
  """Writes `obj` (dicts, lists, NumPy values; NaN -> null) as JSON atomically."""
  with atomic_path(path) as tmp, open(tmp, 'w') as f:
    json.dump(jsonable(obj), f, indent=2, sort_keys=True)
    f.write('\n')


def save_npy(path, array):
  """Writes `array` as .npy atomically."""
  with atomic_path(path) as tmp:
    np.save(tmp, np.asarray(array))
