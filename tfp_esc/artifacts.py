"""Atomic writes of run outputs: an interrupted run never leaves a torn file.

Each writer writes to a temporary file in the destination folder and then
renames it over the destination (`os.replace`, atomic on POSIX).
"""

import contextlib
import json
import os
import tempfile

import numpy as np

__all__ = ['atomic_path', 'save_json', 'save_npy']


@contextlib.contextmanager
def atomic_path(path):
  """Yields a temporary path that replaces `path` when the block succeeds."""
  path = os.fspath(path)
  folder = os.path.dirname(os.path.abspath(path))
  os.makedirs(folder, exist_ok=True)
  suffix = os.path.splitext(path)[1]
  handle, tmp = tempfile.mkstemp(dir=folder, prefix='.tmp-', suffix=suffix)
  os.close(handle)
  try:
    yield tmp
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


def _jsonable(value):
  if isinstance(value, dict):
    return {str(k): _jsonable(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_jsonable(v) for v in value]
  if isinstance(value, np.ndarray):
    return _jsonable(value.tolist())
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
    json.dump(_jsonable(obj), f, indent=2, sort_keys=True)
    f.write('\n')


def save_npy(path, array):
  """Writes `array` as .npy atomically."""
  with atomic_path(path) as tmp:
    np.save(tmp, np.asarray(array))
