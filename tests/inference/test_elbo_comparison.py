"""Analytic vs. sampled ELBO comparison: measurements, plot and script."""

import json
import subprocess
import sys

import numpy as np
import pytest

from tfp_esc.data.bars import make_bars
from tfp_esc.evaluation import plots
from tfp_esc.inference.elbo_comparison import compare_elbos

TINY = {'hidden_units': 16, 'batch_size': 50, 'num_repeats': 4,
        'num_checkpoints': 2, 'warmup_steps': 2}


@pytest.fixture(scope='module')
def x():
  return make_bars(200, seed=0).x.astype(np.float32)


def test_compare_elbos_measures_every_method(x):
  result = compare_elbos(x, 10, num_samples=[1, 4], seconds=0.5, **TINY)
  json.dumps(result)  # JSON-able as it is.
  assert result['config']['num_samples'] == [1, 4]
  methods = result['methods']
  assert [m['name'] for m in methods] == ['analytic', 'sampled (S=1)',
                                          'sampled (S=4)']
  assert methods[0]['gradient_initial']['mean_variance'] == 0.0
  assert methods[0]['gradient_final']['mean_variance'] == 0.0
  for m in methods[1:]:
    assert m['gradient_initial']['mean_variance'] > 0
    assert m['learned_noise_variance'] > 0 and len(m['learned_scales']) == 10
  for m in methods:
    trace = m['trace']
    # Same start for every method: the same weights, evaluated with F.
    assert trace['seconds'][0] == 0.0
    np.testing.assert_allclose(trace['elbo'][0], methods[0]['trace']['elbo'][0],
                               rtol=1e-6)
    assert np.all(np.diff(trace['seconds']) > 0)
    assert trace['seconds'][-1] >= 0.5 and not m['diverged']
    assert trace['elbo'][-1] == m['final_elbo']
    assert trace['step'][-1] == m['steps'] > 1
    assert 0 < m['seconds_per_step'] < m['first_step_seconds']
  # The start is the same, so S = 4 has a smaller gradient variance there.
  assert (methods[2]['gradient_initial']['mean_variance']
          < methods[1]['gradient_initial']['mean_variance'])


def test_compare_elbos_bad_arguments(x):
  with pytest.raises(ValueError, match='num_samples must hold integers >= 1'):
    compare_elbos(x, 10, num_samples=[1, 0], seconds=1.0)
  with pytest.raises(ValueError, match='num_samples must list at least one'):
    compare_elbos(x, 10, num_samples=[], seconds=1.0)
  with pytest.raises(ValueError, match='seconds must be positive'):
    compare_elbos(x, 10, seconds=0.0)
  with pytest.raises(ValueError, match='batch_size must be in'):
    compare_elbos(x, 10, batch_size=500)
  with pytest.raises(ValueError, match='posterior must be one of'):
    compare_elbos(x, 10, family='spherical', seconds=1.0, **TINY)


def test_plot_elbo_vs_seconds(tmp_path):
  traces = {'analytic': {'seconds': [0, 1, 2], 'elbo': [-60, -30, -20]},
            'sampled (S=1)': {'seconds': [0, 1.5], 'elbo': [-60, -50],
                              'step': [0, 9]}}
  path = tmp_path / 'sub' / 'elbo.png'
  fig = plots.plot_elbo_vs_seconds(traces, path=path, title='t')
  assert path.read_bytes().startswith(b'\x89PNG')
  (ax,) = fig.axes
  assert [line.get_label() for line in ax.get_lines()] == list(traces)
  with pytest.raises(ValueError, match="lacks the key"):
    plots.plot_elbo_vs_seconds({'a': {'seconds': [0, 1]}})
  with pytest.raises(ValueError, match='equal length'):
    plots.plot_elbo_vs_seconds({'a': {'seconds': [0, 1], 'elbo': [1]}})
  with pytest.raises(ValueError, match='at least one method'):
    plots.plot_elbo_vs_seconds({})
  with pytest.raises(TypeError, match='must be a mapping'):
    plots.plot_elbo_vs_seconds([1, 2])


def test_script_writes_json_and_plot(tmp_path):
  subprocess.run(
      [sys.executable, 'scripts/compare_elbos.py', '--data=bars',
       '--num_points=100', '--batch_size=50', '--seconds=0.3',
       '--samples=2', '--num_checkpoints=1', '--num_repeats=2',
       '--hidden_units=8', f'--output_dir={tmp_path}'], check=True,
      capture_output=True)
  result = json.loads((tmp_path / 'compare_elbos.json').read_text())
  assert [m['name'] for m in result['methods']] == ['analytic',
                                                    'sampled (S=2)']
  assert result['config']['data'] == 'bars'
  assert (tmp_path / 'elbo_vs_seconds.png').read_bytes().startswith(
      b'\x89PNG')
