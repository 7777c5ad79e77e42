"""Atomic writers: whole files, no leftovers, the permissions of any new file."""

import os
import stat

import numpy as np
import pytest

from tfp_esc import artifacts


@pytest.mark.parametrize('umask', [0o022, 0o077, 0o002])
def test_files_get_the_mode_of_a_new_file(tmp_path, umask):
  old = os.umask(umask)
  try:
    artifacts.save_npy(tmp_path / 'a.npy', np.arange(3))
    artifacts.save_json(tmp_path / 'm.json', {'x': np.float32(1.5)})
    with open(tmp_path / 'plain', 'w') as f:  # As matplotlib writes figures.
      f.write('')
  finally:
    os.umask(old)
  for name in ('a.npy', 'm.json', 'plain'):
    assert stat.S_IMODE(os.stat(tmp_path / name).st_mode) == 0o666 & ~umask
  assert sorted(os.listdir(tmp_path)) == ['a.npy', 'm.json', 'plain']


def test_failed_write_leaves_the_old_file(tmp_path):
  path = tmp_path / 'm.json'
  artifacts.save_json(path, {'a': 1})
  with pytest.raises(TypeError):
    artifacts.save_json(path, {'a': object()})
  assert path.read_text() == '{\n  "a": 1\n}\n'
  assert os.listdir(tmp_path) == ['m.json']
