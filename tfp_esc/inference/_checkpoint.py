"""Training checkpoints on `tf.train.Checkpoint` that record their run.

Every trainer (both EM engines, the amortized one) writes its whole state
with `save` into a checkpoint directory managed by
`tf.train.CheckpointManager` (one checkpoint kept): named arrays (the EM
engines' NumPy state, in row blocks `arrays/<name>/<i>`), trackable
objects (the amortized Keras model and its optimizer, slots included) and
one JSON record, a string variable in the same checkpoint, holding the
trainer's `kind`, the run's `config` (the trainer's settings, the data's
shape, dtype and fingerprint, and whatever the caller adds, e.g. an
experiment's config) and the trainer's progress (epoch, history,
seconds, ...). So config, progress and weights are one
checkpoint and cannot disagree.

Atomicity is TensorFlow's: a new checkpoint's files are written under a
new prefix, then the directory's `checkpoint` state file is replaced
atomically to point at it, then the older one is deleted. A run killed at
any moment leaves the last complete checkpoint in force; the next save
removes what a killed one left behind.

`load` refuses, with a `CheckpointError` that names the path and the
remedy,

  * a path that holds no readable checkpoint (corrupt, truncated, foreign,
    a file where a directory is expected, e.g. an .npz of an older
    version),
  * a checkpoint of another trainer (an EM checkpoint resumed as amortized),
  * a checkpoint of another run: the first config field that differs is
    named with both values (e.g. seed=3 in the file, seed=4 now).

`check_start` refuses to start afresh onto an existing checkpoint unless
told to overwrite it.

The checkpoints are ordinary TensorFlow ones: `tf.train.load_checkpoint`
reads them, and `tf.train.Checkpoint(model=..., optimizer=...).read(...)`
restores an amortized model outside this library.
"""

import ctypes
import hashlib
import json
import os
import shutil

import numpy as np
import tensorflow as tf

from tfp_esc import artifacts

__all__ = ['CheckpointError', 'check_start', 'data_fingerprint', 'load',
           'restore_objects', 'save']

# The checkpoint keys of the JSON record and of the named arrays.
_RECORD = 'record'
_ARRAYS = 'arrays'
_SUFFIX = '/.ATTRIBUTES/VARIABLE_VALUE'
# The prefix of the checkpoint files inside the directory: ckpt-<n>.*, and
# TensorFlow's state file naming the latest.
_NAME = 'ckpt'
_STATE = 'checkpoint'
# Bump when the layout changes; older checkpoints are refused, not misread.
_FORMAT = 2
# Arrays are saved in row blocks of at most this many bytes. TensorFlow's
# CPU allocator (oneDNN's) keeps the memory of large tensors pooled for the
# life of the process, where NumPy cannot reuse it: whole per-point
# posteriors at the paper's size (2 x 82 MB) raised the peak resident
# memory of the paper-size run from 1.95 to 2.04 GB. Blocks this small are
# allocated by malloc, and `_return_freed_memory` gives them back.
_BLOCK_BYTES = 2**17
_REMEDY = ('delete it, or start afresh with overwrite=True (scripts: '
           '--overwrite)')


class CheckpointError(ValueError):
  """A checkpoint that cannot be resumed here; the message says why."""


def _exists(path):
  """Whether `path` holds a checkpoint (or something that is not a folder).

  Raises:
    CheckpointError: `path` is a file, not a checkpoint directory.
  """
  if os.path.exists(path) and not os.path.isdir(path):
    raise CheckpointError(
        f'checkpoint {path!r} is a file, not a checkpoint directory (an .npz '
        'of an earlier tfp_esc version cannot be resumed); delete it or '
        'choose another path.')
  return os.path.isdir(path) and any(
      name == _STATE or name.startswith(_NAME + '-')
      for name in os.listdir(path))


def check_start(path, resume, overwrite):
  """Refuses to start a run afresh onto an existing checkpoint.

  Args:
    path: the checkpoint path, or None (no checkpoints: nothing to check).
    resume: the run continues `path` if it exists.
    overwrite: the run may replace an existing `path`.

  Returns:
    Whether the run restores `path` (resume and it exists).

  Raises:
    CheckpointError: `path` holds a checkpoint and neither resume nor
      overwrite is set, or `path` is a file.
  """
  if not path or not _exists(path):
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


def save(path, kind, config, arrays, state, objects=None):
  """Writes a checkpoint atomically into the directory `path`.

  Args:
    path: checkpoint directory (created if missing); it keeps only this
      checkpoint once the write has completed.
    kind: the trainer, e.g. 'em-incremental', 'em-paper', 'amortized'.
    config: JSON-able dict identifying the run.
    arrays: dict of name -> NumPy array of at least one dimension (names:
      letters, digits, '_'), saved in row blocks (`_BLOCK_BYTES`).
    state: JSON-able dict of progress (epoch, history, ...).
    objects: optional dict of name -> trackable (a Keras model, its
      optimizer) saved with everything they track.
  """
  record = {'format': _FORMAT, 'kind': kind, 'config': _jsonable(config),
            'state': artifacts.jsonable(state)}
  checkpoint = tf.train.Checkpoint(
      **{_RECORD: tf.Variable(json.dumps(record), trainable=False),
         _ARRAYS: {k: _blocks(v) for k, v in arrays.items()}},
      **(objects or {}))
  try:
    manager = tf.train.CheckpointManager(checkpoint, path, max_to_keep=1,
                                         checkpoint_name=_NAME)
  except Exception:  # pylint: disable=broad-except
    # A damaged state file of a run being overwritten (`check_start` has
    # refused it unless overwrite was asked for): start the state afresh.
    os.remove(os.path.join(path, _STATE))
    manager = tf.train.CheckpointManager(checkpoint, path, max_to_keep=1,
                                         checkpoint_name=_NAME)
  latest = manager.latest_checkpoint
  number = int(latest.rsplit('-', 1)[1]) + 1 if latest else 1
  manager.save(checkpoint_number=number)
  del checkpoint, manager
  _return_freed_memory()
  # A save killed midway leaves TensorFlow's temporary folder (ckpt-<n>_temp
  # holding a partial file); the state file never pointed at it.
  for name in os.listdir(path):
    if name.startswith(_NAME + '-') and name.endswith('_temp'):
      shutil.rmtree(os.path.join(path, name), ignore_errors=True)


def _blocks(array):
  """`array` (at least 1-D) as variables of consecutive row blocks."""
  array = np.asarray(array)
  if array.ndim == 0:
    raise ValueError('checkpoint arrays must have at least one dimension.')
  rows = max(1, _BLOCK_BYTES // max(1, array[:1].nbytes))
  return [tf.Variable(array[i:i + rows], trainable=False)
          for i in range(0, max(len(array), 1), rows)]


def _return_freed_memory():
  """Returns memory freed by malloc to the system (glibc; else a no-op)."""
  try:
    ctypes.CDLL('libc.so.6').malloc_trim(0)
  except (OSError, AttributeError):
    pass


def load(path, kind, config):
  """Reads a checkpoint of `kind` written for `config`.

  Args:
    path: checkpoint directory written by `save`.
    kind: the trainer that reads it.
    config: the current run's config, compared field by field with the
      recorded one.

  Returns:
    (arrays, state): dict of name -> NumPy array (every array saved), the
    progress dict given to `save`.

  Raises:
    CheckpointError: missing, unreadable (corrupt, truncated, not a
      checkpoint), of another kind, or of another run.
  """
  if not _exists(path):
    raise CheckpointError(f'checkpoint {path!r} does not exist.')
  try:
    prefix = tf.train.latest_checkpoint(path)
    if prefix is None:
      raise ValueError('no checkpoint state in the directory')
    reader = tf.train.load_checkpoint(prefix)
    keys = reader.get_variable_to_shape_map()
    # Reading every tensor checks each one's checksum.
    blocks = {}
    for k in keys:
      if k.startswith(_ARRAYS + '/') and k.endswith(_SUFFIX):
        name, index = k[len(_ARRAYS) + 1:-len(_SUFFIX)].rsplit('/', 1)
        blocks.setdefault(name, {})[int(index)] = reader.get_tensor(k)
    arrays = {name: np.concatenate([parts[i] for i in range(len(parts))])
              for name, parts in blocks.items()}
    _return_freed_memory()
    for k in keys:
      if not k.startswith((_ARRAYS + '/', _RECORD + '/')):
        reader.get_tensor(k)
    record = json.loads(reader.get_tensor(_RECORD + _SUFFIX).decode())
    recorded_kind, recorded = record['kind'], record['config']
    state = record['state']
    if record.get('format') != _FORMAT:
      raise ValueError(f'format {record.get("format")!r}, expected {_FORMAT}')
  except Exception as e:  # pylint: disable=broad-except
    # TensorFlow's errors (DataLossError, NotFoundError, ...), protobuf's
    # ParseError of a damaged state file, JSON's and our own.
    raise CheckpointError(
        f'checkpoint {path!r} is corrupt, truncated or not a tfp_esc '
        f'checkpoint ({type(e).__name__}: {_first_line(e)}); {_REMEDY}.'
    ) from None
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


def restore_objects(path, objects):
  """Restores trackables saved by `save(..., objects=...)` in place.

  Call it after `load` has accepted the checkpoint.

  Args:
    path: checkpoint directory.
    objects: dict of name -> trackable, as given to `save`; every variable
      they have created must be in the checkpoint, with the same shape.

  Raises:
    CheckpointError: the objects do not match the saved ones.
  """
  try:
    tf.train.Checkpoint(**objects).read(tf.train.latest_checkpoint(
        path)).assert_existing_objects_matched().expect_partial()
  except (AssertionError, ValueError, tf.errors.OpError) as e:
    raise CheckpointError(
        f'checkpoint {path!r} does not match this model '
        f'({type(e).__name__}: {_first_line(e)}); {_REMEDY}.') from None


def _first_line(error):
  """The first line of an error's message (TensorFlow's run long)."""
  return str(error).strip().split('\n', 1)[0]


def _order(current):
  """Sort key: the current config's own field order, then the rest."""
  names = list(current)
  return lambda name: (names.index(name) if name in names else len(names),
                       name)
