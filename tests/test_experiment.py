"""train_bars end to end on tiny settings: outputs, keys, bad --data."""

import json
import os

import numpy as np
import pytest

from tfp_esc import experiment
from tfp_esc.data.bars import make_bars


def test_train_bars_writes_outputs(tmp_path):
  config = experiment.BarsConfig(num_points=60, max_calls=2, max_iterations=10,
                                 posterior='diagonal', gini_samples=2,
                                 jit_compile=False)
  summary = experiment.train_bars(config, str(tmp_path))
  for name in ('dictionary.npy', 'metrics.json', 'dictionary.png',
               'training.png'):
    assert os.path.getsize(tmp_path / name) > 0, name
  assert not [p for p in os.listdir(tmp_path) if p.startswith('.tmp-')]
  dictionary = np.load(tmp_path / 'dictionary.npy')
  assert dictionary.shape == (25, 10)
  np.testing.assert_allclose(np.linalg.norm(dictionary, axis=0), 1, atol=1e-10)
  with open(tmp_path / 'metrics.json') as f:
    metrics = json.load(f)
  for key in ('elbo', 'ground_truth_elbo', 'noise_variance', 'scales', 'recovered',
              'gini', 'seconds', 'trace'):
    assert key in metrics, key
  assert len(metrics['scales']) == 10
  assert metrics['elbo'] == pytest.approx(summary['elbo'])
  assert metrics['trace']['elbo'][-1] == pytest.approx(metrics['elbo'])
  assert 0 < metrics['gini']['mean'] < 1


def test_train_bars_on_user_data(tmp_path):
  path = tmp_path / 'x.npy'
  np.save(path, make_bars(40, seed=1).x)
  config = experiment.BarsConfig(data_path=str(path), max_calls=1,
                                 max_iterations=5, posterior='diagonal',
                                 gini_samples=1, jit_compile=False)
  summary = experiment.train_bars(config, str(tmp_path / 'out'))
  assert 'ground_truth_elbo' not in summary and 'recovered' not in summary
  assert (tmp_path / 'out' / 'dictionary.png').exists()


def test_bad_data_file_raises(tmp_path):
  with pytest.raises(FileNotFoundError, match='does not exist'):
    experiment.load_bars_data(str(tmp_path / 'missing.npy'))
  np.save(tmp_path / 'wide.npy', np.zeros((10, 24)))
  with pytest.raises(ValueError, match=r'\[N, 25\] array, got shape \(10, 24\)'):
    experiment.load_bars_data(str(tmp_path / 'wide.npy'))
  bad = np.zeros((10, 25))
  bad[2, 2] = np.inf
  np.save(tmp_path / 'inf.npy', bad)
  with pytest.raises(ValueError, match='NaN or inf'):
    experiment.load_bars_data(str(tmp_path / 'inf.npy'))
