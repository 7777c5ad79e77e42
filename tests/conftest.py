"""Fixtures shared by the experiment and script tests."""

import atexit
import os
import shutil
import tempfile

import numpy as np
import pytest

# The scripts the tests run keep their compiled steps (tfp_esc._xla) in one
# folder per test session, shared by its processes, not in ~/.cache.
if 'TFP_ESC_COMPILATION_CACHE' not in os.environ:
  _CACHE = tempfile.mkdtemp(prefix='tfp_esc_xla_')
  atexit.register(shutil.rmtree, _CACHE, ignore_errors=True)
  os.environ['TFP_ESC_COMPILATION_CACHE'] = _CACHE


@pytest.fixture(scope='session')
def images(tmp_path_factory):
  """Two smooth random 48x48 images as a .npy stack (no download, fast)."""
  rng = np.random.default_rng(0)
  stack = rng.standard_normal((2, 48, 48)).cumsum(1).cumsum(2)
  path = tmp_path_factory.mktemp('img') / 'images.npy'
  np.save(path, stack)
  return str(path)
