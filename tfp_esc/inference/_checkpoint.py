"""Training checkpoints: one atomic .npz that records the run it belongs to.

Every trainer (both EM engines, the amortized one) writes its whole state
with `save`: NumPy arrays plus one JSON record holding the trainer's `kind`,
the run's `config` (the trainer's settings, the data's shape, dtype and
fingerprint, and whatever the caller adds, e.g. an experiment's config) and
the trainer's progress (epoch, history, seconds, ...). `load` refuses, with
a `CheckpointError` that names the file and the remedy,

  * a file that is not a readable checkpoint (corrupt, truncated, foreign),
  * a checkpoint of another trainer (an EM checkpoint resumed as amortized),
  * a checkpoint of another run: the first config field that differs is
    named with both values (e.g. seed=3 in the file, seed=4 now).

`check_start` refuses to start afresh onto an existing checkpoint unless
told to overwrite it.

Why .npz and not `tf.train.Checkpoint`: the EM engines hold NumPy state,
and one file renamed into place (`artifacts.atomic_path`) is atomic for
every trainer alike, with the config record and history inside the same
file, so they cannot disagree. A `tf.train.Checkpoint` is an index, data
shards and a state file, and would need a JSON file beside them for the
config and history. The amortized model's weights and Adam's slots are
stored in Keras' (deterministic) variable order with their shapes recorded,
and a resumed run is bit-for-bit the uninterrupted one (tested).
"""

import hashlib
import json
import os
import zipfile

import numpy as np

from tfp_esc import artifacts

__all__ = ['CheckpointError', 'check_start', 'data_fingerprint', 'load',
           'save']

# The key of the JSON record within the .npz.
_RECORD = '__record__'
# Bump when the layout changes; older files are refused, not misread.
_FORMAT = 1
_REMEDY = ('delete it, or start afresh with overwrite=True (scripts: '
           '--overwrite)')


class CheckpointError(ValueError):
  """A checkpoint that cannot be resumed here; the message says why."""


def check_start(path, resume, overwrite):
  """Refuses to start a run afresh onto an existing checkpoint.

  Args:
    path: the checkpoint path, or None (no checkpoints: nothing to check).
    resume: the run continues `path` if it exists.
    overwrite: the run may replace an existing `path`.

  Returns:
    Whether the run restores `path` (resume and it exists).

  Raises:
    CheckpointError: `path` exists and neither resume nor overwrite is set.
  """
  if not path or not os.path.exists(path):
    return False
  if not resume and not overwrite:
    raise CheckpointError(
        f'checkpoint {path!r} exists from an earlier run; continue it with '
        'resume=True (scripts: --resume) or replace it with overwrite=True '
        '(scripts: --overwrite).')
  return bool(resume)


def data_fingerprint(x):
  """A short hash of an array's dtype, shape and bytes (identifies data)."""
  x = np.ascontiguousarray(x)
  digest = hashlib.sha1(f'{x.dtype.str}{x.shape}'.encode())
  digest.update(memoryview(x).cast('B'))
  return digest.hexdigest()[:16]


def _jsonable(value):
  """`value` as it reads back from JSON (tuples become lists, ...)."""
  return json.loads(json.dumps(artifacts.jsonable(value)))


def save(path, kind, config, arrays, state):
  """Writes a checkpoint atomically.

  Args:
    path: .npz path.
    kind: the trainer, e.g. 'em-incremental', 'em-paper', 'amortized'.
    config: JSON-able dict identifying the run.
    arrays: dict of name -> NumPy array.
    state: JSON-able dict of progress (epoch, history, ...).
  """
  record = {'format': _FORMAT, 'kind': kind, 'config': _jsonable(config),
            'state': artifacts.jsonable(state)}
  with artifacts.atomic_path(path) as tmp, open(tmp, 'wb') as f:
    np.savez(f, **{_RECORD: np.array(json.dumps(record))}, **arrays)


def load(path, kind, config):
  """Reads a checkpoint of `kind` written for `config`.

  Args:
    path: .npz path.
    kind: the trainer that reads it.
    config: the current run's config, compared field by field with the
      recorded one.

  Returns:
    (arrays, state): dict of name -> NumPy array (every array in the file),
    the progress dict given to `save`.

  Raises:
    CheckpointError: missing, unreadable (corrupt, truncated, not a
      checkpoint), of another kind, or of another run.
  """
  if not os.path.isfile(path):
    raise CheckpointError(f'checkpoint {path!r} does not exist.')
  try:
    with np.load(path, allow_pickle=False) as data:
      # Reading every member checks each one's CRC.
      arrays = {k: data[k] for k in data.files}
    record = json.loads(str(arrays.pop(_RECORD)))
    recorded_kind, recorded = record['kind'], record['config']
    state = record['state']
    if record.get('format') != _FORMAT:
      raise ValueError(f'format {record.get("format")!r}, expected {_FORMAT}')
  except (OSError, ValueError, KeyError, TypeError, EOFError,
          zipfile.BadZipFile) as e:
    raise CheckpointError(
        f'checkpoint {path!r} is corrupt, truncated or not a tfp_esc '
        f'checkpoint ({type(e).__name__}: {e}); {_REMEDY}.') from None
  if recorded_kind != kind:
    raise CheckpointError(
        f'checkpoint {path!r} was written by a {recorded_kind!r} run and '
        f'cannot be resumed as {kind!r}; {_REMEDY}.')
  current = _jsonable(config)
  for name in sorted(set(recorded) | set(current), key=_order(current)):
    if recorded.get(name, '<unset>') != current.get(name, '<unset>'):
      raise CheckpointError(
          f'checkpoint {path!r} belongs to another run: it has '
          f'{name}={recorded.get(name, "<unset>")!r}, this run has '
          f'{name}={current.get(name, "<unset>")!r}; resume with the '
          f'same settings, or {_REMEDY}.')
  return arrays, state


def _order(current):
  """Sort key: the current config's own field order, then the rest."""
  names = list(current)
  return lambda name: (names.index(name) if name in names else len(names),
                       name)
