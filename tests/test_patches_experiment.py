"""train_patches end to end at tiny size: outputs, keys, resume, bad input."""

import json
import os

import numpy as np
import pytest

from tfp_esc import experiment


def _config(path, **kwargs):
  return experiment.PatchesConfig(**{**dict(
      images=path, num_patches=256, num_latents=12, patch_size=6, epochs=2,
      batch_size=64, e_step_iterations=15, gini_samples=2, gini_points=64,
      refine_rounds=1),
                                      **kwargs})


@pytest.fixture(scope='module')
def images(tmp_path_factory):
  # Two smooth random 48x48 images as a .npy stack (no download, fast).
  rng = np.random.default_rng(0)
  stack = rng.standard_normal((2, 48, 48)).cumsum(1).cumsum(2)
  path = tmp_path_factory.mktemp('img') / 'images.npy'
  np.save(path, stack)
  return str(path)


def test_em_run_writes_outputs_and_resumes(images, tmp_path):
  whole_dir = tmp_path / 'whole'
  whole = experiment.train_patches(_config(images), str(whole_dir))
  for name in ('dictionary.npy', 'metrics.json', 'dictionary.png',
               'training.png', 'gini.png', 'checkpoint.npz'):
    assert os.path.getsize(whole_dir / name) > 0, name
  with open(whole_dir / 'metrics.json') as f:
    metrics = json.load(f)
  for key in ('elbo', 'sigma2', 'scales', 'gini', 'seconds', 'entropies',
              'localized_fraction'):
    assert key in metrics, key
  # Two EM epochs (annealed), then one refinement round (never annealed).
  assert metrics['history']['phase'] == ['em', 'em', 'refine']
  assert metrics['history']['a_prior'] == [10.0, 8.0, 1.0]
  assert np.load(whole_dir / 'dictionary.npy').shape == (36, 12)
  # Interrupted after one epoch, then resumed: the same result.
  part_dir = str(tmp_path / 'part')
  experiment.train_patches(_config(images, epochs=1, refine_rounds=0),
                           part_dir)
  resumed = experiment.train_patches(_config(images), part_dir, resume=True)
  np.testing.assert_allclose(np.load(os.path.join(part_dir, 'dictionary.npy')),
                             np.load(whole_dir / 'dictionary.npy'), atol=1e-6)
  np.testing.assert_allclose(resumed['history']['elbo'],
                             whole['history']['elbo'], rtol=1e-6)


def test_bad_settings_raise_before_training(images, tmp_path):
  with pytest.raises(ValueError, match="method must be 'em' or 'amortized'"):
    experiment.train_patches(_config(images, method='map'), str(tmp_path))
  with pytest.raises(ValueError, match='must be one of none, prior'):
    experiment.train_patches(_config(images, annealing='cosine'), str(tmp_path))
  with pytest.raises(FileNotFoundError):
    experiment.train_patches(_config(str(tmp_path / 'none.mat')), str(tmp_path))
  assert not os.path.exists(tmp_path / 'metrics.json')


def test_amortized_run_writes_outputs_and_resumes(images, tmp_path):
  config = _config(images, method='amortized', posterior='lowrank', rank=2,
                   annealing='prior_linear', epochs=2, refine_rounds=0)
  whole = experiment.train_patches(config, str(tmp_path / 'whole'))
  assert whole['history']['a_prior'] == pytest.approx([2.0, 1.9])
  assert 0 < whole['gini']['mean'] < 1
  part = str(tmp_path / 'part')
  experiment.train_patches(_config(images, method='amortized',
                                   posterior='lowrank', rank=2,
                                   annealing='prior_linear', epochs=1,
                                   refine_rounds=0), part)
  resumed = experiment.train_patches(config, part, resume=True)
  np.testing.assert_allclose(resumed['history']['elbo'],
                             whole['history']['elbo'], rtol=1e-5)
