"""Checkpoints on tf.train.Checkpoint: exact round trips, one kept, refusals."""

import os

import hypothesis
import hypothesis.extra.numpy as hnp
import numpy as np
import pytest
import tensorflow as tf
from hypothesis import strategies as st

from tfp_esc.inference import _checkpoint

_DTYPES = st.sampled_from([np.float32, np.float64, np.int64, np.bool_])


@hypothesis.settings(max_examples=30, deadline=None)
@hypothesis.given(arrays=st.dictionaries(
    st.sampled_from(['w', 'loc', 'scale', 'seen', 'extra']),
    _DTYPES.flatmap(lambda dtype: hnp.arrays(
        dtype, hnp.array_shapes(min_dims=1, max_dims=3, min_side=0,
                                max_side=40))),
    max_size=4))
def test_arrays_and_record_round_trip_exactly(arrays, tmp_path_factory):
  # Tiny row blocks, so that arrays span many (more than ten) blocks: their
  # order must be numeric, not that of the names ('10' < '2').
  path = str(tmp_path_factory.mktemp('ck') / 'run')
  state = {'epoch': 3, 'history': {'elbo': [1.5, 2.25]}}
  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(_checkpoint, '_BLOCK_BYTES', 24)
    _checkpoint.save(path, 'em-incremental', {'seed': 1}, arrays, state)
    _checkpoint.save(path, 'em-incremental', {'seed': 1}, arrays, state)
  loaded, loaded_state = _checkpoint.load(path, 'em-incremental',
                                          {'seed': 1})
  assert loaded_state == state
  assert sorted(loaded) == sorted(arrays)
  for name, array in arrays.items():
    assert loaded[name].dtype == array.dtype, name
    assert loaded[name].shape == array.shape, name
    np.testing.assert_array_equal(loaded[name], array)
  # One checkpoint kept: the second save replaced the first.
  assert sorted(os.listdir(path)) == [
      'checkpoint', 'ckpt-2.data-00000-of-00001', 'ckpt-2.index']


def test_a_save_clears_what_a_killed_save_left(tmp_path):
  path = tmp_path / 'run'
  _checkpoint.save(str(path), 'em-paper', {}, {'v': np.ones(3)}, {})
  # A save of ckpt-2 killed midway: TensorFlow's temporary folder remains.
  (path / 'ckpt-2_temp').mkdir()
  (path / 'ckpt-2_temp' / 'part-00000-of-00001.tempstate123').write_bytes(b'')
  _checkpoint.save(str(path), 'em-paper', {}, {'v': np.zeros(3)}, {})
  assert sorted(os.listdir(path)) == [
      'checkpoint', 'ckpt-2.data-00000-of-00001', 'ckpt-2.index']
  np.testing.assert_array_equal(
      _checkpoint.load(str(path), 'em-paper', {})[0]['v'], np.zeros(3))


def test_large_arrays_are_saved_in_small_blocks(tmp_path):
  path = str(tmp_path / 'run')
  loc = np.arange(4000 * 100, dtype=np.float32).reshape(4000, 100)
  _checkpoint.save(path, 'em-incremental', {}, {'loc': loc}, {})
  shapes = tf.train.load_checkpoint(path).get_variable_to_shape_map()
  blocks = [shape for key, shape in shapes.items()
            if key.startswith('arrays/loc/')]
  rows = _checkpoint._BLOCK_BYTES // 400  # pylint: disable=protected-access
  assert len(blocks) == -(-4000 // rows) and max(b[0] for b in blocks) == rows
  np.testing.assert_array_equal(
      _checkpoint.load(path, 'em-incremental', {})[0]['loc'], loc)


def test_refusals_name_the_checkpoint_and_the_field(tmp_path):
  path = str(tmp_path / 'run')
  _checkpoint.save(path, 'em-paper', {'seed': 3, 'epochs': 2},
                   {'v': np.ones(3)}, {})
  with pytest.raises(_checkpoint.CheckpointError,
                     match="'.*run' was written by a 'em-paper' run"):
    _checkpoint.load(path, 'amortized', {'seed': 3, 'epochs': 2})
  with pytest.raises(_checkpoint.CheckpointError,
                     match='it has seed=3, this run has seed=4'):
    _checkpoint.load(path, 'em-paper', {'seed': 4, 'epochs': 2})
  with pytest.raises(_checkpoint.CheckpointError, match='exists from an '
                     'earlier run.*resume=True.*overwrite=True'):
    _checkpoint.check_start(path, resume=False, overwrite=False)
  assert _checkpoint.check_start(path, resume=True, overwrite=False)
  assert not _checkpoint.check_start(str(tmp_path / 'none'), True, False)
  with pytest.raises(_checkpoint.CheckpointError, match='does not exist'):
    _checkpoint.load(str(tmp_path / 'none'), 'em-paper', {})
