"""Fixtures shared by the experiment and script tests."""

import numpy as np
import pytest


@pytest.fixture(scope='session')
def images(tmp_path_factory):
  """Two smooth random 48x48 images as a .npy stack (no download, fast)."""
  rng = np.random.default_rng(0)
  stack = rng.standard_normal((2, 48, 48)).cumsum(1).cumsum(2)
  path = tmp_path_factory.mktemp('img') / 'images.npy'
  np.save(path, stack)
  return str(path)
