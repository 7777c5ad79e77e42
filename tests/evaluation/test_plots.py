"""Tests of tfp_esc.evaluation.plots: figures, files and input checks."""

import matplotlib.figure
import matplotlib.image
import numpy as np
import pytest

from tfp_esc.evaluation import plots

_PNG_SIGNATURE = b'\x89PNG\r\n\x1a\n'


def _bars():
  fields = np.zeros((10, 5, 5))
  for i in range(5):
    fields[i, :, i] = 1.0
    fields[5 + i, i, :] = 1.0
  return fields.reshape(10, 25).T


def _trace(length=6, **extra):
  trace = {
      'elbo': np.linspace(-40.0, -30.0, length),
      'q_entropy': np.linspace(-5.0, -8.0, length),
      'prior_entropy': np.linspace(20.0, 12.0, length),
      'likelihood_entropy': np.linspace(15.0, 10.0, length),
  }
  trace.update(extra)
  return trace


def _assert_png(path):
  assert path.read_bytes().startswith(_PNG_SIGNATURE)
  image = matplotlib.image.imread(path)
  assert image.shape[0] > 10 and image.shape[1] > 10
  assert image.std() > 0  # not a blank canvas


def _image(ax):
  (image,) = ax.get_images()
  return np.ma.filled(image.get_array(), np.nan)


def test_plot_dictionary_writes_png(tmp_path):
  path = tmp_path / 'sub' / 'dictionary.png'
  dictionary = np.random.default_rng(0).normal(size=(64, 12))
  fig = plots.plot_dictionary(dictionary, title='random', path=path)
  assert isinstance(fig, matplotlib.figure.Figure)
  assert len(fig.axes) == 1
  _assert_png(path)
  # 12 patches, ceil(sqrt(12)) = 4 per row: 3 rows of 8x8 patches, 1-px borders.
  assert _image(fig.axes[0]).shape == (3 * 9 + 1, 4 * 9 + 1)


def test_plot_dictionary_scales_each_column_and_follows_order():
  dictionary = np.zeros((4, 3))
  dictionary[:, 0] = [0.0, 0.5, -0.25, 0.0]
  dictionary[:, 2] = [-4.0, 0.0, 0.0, 2.0]
  fig = plots.plot_dictionary(dictionary, order=[2, 0], ncols=2)
  image = _image(fig.axes[0])
  assert image.shape == (4, 7)
  np.testing.assert_allclose(image[1:3, 1:3], [[-1.0, 0.0], [0.0, 0.5]])
  np.testing.assert_allclose(image[1:3, 4:6], [[0.0, 1.0], [-0.5, 0.0]])
  assert np.isnan(image[0]).all() and np.isnan(image[:, 3]).all()


def test_plot_dictionary_rectangular_patches(tmp_path):
  fig = plots.plot_dictionary(np.ones((6, 2)), patch_shape=(2, 3), ncols=1,
                              path=tmp_path / 'rect.png')
  assert _image(fig.axes[0]).shape == (2 * 3 + 1, 3 + 2)
  _assert_png(tmp_path / 'rect.png')


@pytest.mark.parametrize('kwargs, match', [
    ({'dictionary': np.ones(25)},
     r'dictionary must be a non-empty \[D, H\] array, got shape \(25,\)'),
    ({'dictionary': np.ones((25, 0))}, r'got shape \(25, 0\)'),
    ({'dictionary': np.ones((24, 3))}, 'D = 24 rows, not a square number'),
    ({'dictionary': np.ones((24, 3)), 'patch_shape': (5, 5)},
     r'patch_shape \(5, 5\) does not hold the D = 24 rows'),
    ({'dictionary': np.full((4, 2), np.nan)},
     r'dictionary holds 8 NaN or inf value\(s\)'),
    ({'dictionary': np.ones((4, 2)), 'order': [0, 2]},
     r'order must be .* in \[0, 2\)'),
    ({'dictionary': np.ones((4, 2)), 'order': [0.5]}, 'order must be'),
    ({'dictionary': np.ones((4, 2)), 'ncols': 0}, 'ncols must be an integer'),
])
def test_plot_dictionary_errors(kwargs, match):
  with pytest.raises(ValueError, match=match):
    plots.plot_dictionary(**kwargs)


def test_plot_dictionary_comparison_aligns_learned_to_truth(tmp_path):
  bars = _bars()
  rng = np.random.default_rng(1)
  permutation = rng.permutation(10)
  learned = np.concatenate([-2.0 * bars[:, permutation],
                            rng.normal(size=(25, 2))], axis=1)
  path = tmp_path / 'comparison.png'
  fig = plots.plot_dictionary_comparison(learned, bars, path=path,
                                         title='bars')
  assert len(fig.axes) == 2
  _assert_png(path)
  top, bottom = (_image(ax) for ax in fig.axes)
  # One row of 10 truth patches; the 12 learned ones wrap to a second row,
  # and the aligned first row repeats the truth exactly.
  assert bottom.shape == (7, 61)
  assert top.shape == (13, 61)
  np.testing.assert_array_equal(top[:7], bottom)
  assert '10/10' in fig.axes[0].get_title()


def test_plot_dictionary_comparison_without_alignment():
  bars = _bars()
  fig = plots.plot_dictionary_comparison(-bars[:, ::-1], bars, align=False)
  top, bottom = (_image(ax) for ax in fig.axes)
  assert not np.array_equal(top, bottom)
  assert fig.axes[0].get_title() == 'learned'


@pytest.mark.parametrize('learned, truth, match', [
    (np.ones((16, 10)), _bars(),
     r'same number of rows D; learned has shape \(16, 10\), truth \(25, 10\)'),
    (np.ones(25), _bars(), r'learned must be a non-empty \[D, H\] array'),
    (_bars()[:, :9], _bars(), 'learned_dictionary must have at least as many'),
])
def test_plot_dictionary_comparison_errors(learned, truth, match):
  with pytest.raises(ValueError, match=match):
    plots.plot_dictionary_comparison(learned, truth)


def test_plot_training_curves(tmp_path):
  path = tmp_path / 'curves.png'
  trace = _trace(step=np.arange(0, 12, 2),
                 annealed_objective=np.linspace(-60.0, -30.0, 6),
                 gini_mean=np.zeros(3))  # other keys are ignored
  fig = plots.plot_training_curves(trace, path=path, title='run')
  assert len(fig.axes) == 2
  _assert_png(path)
  elbo_ax, entropy_ax = fig.axes
  assert len(elbo_ax.get_lines()) == 2
  np.testing.assert_array_equal(elbo_ax.get_lines()[0].get_xdata(),
                                np.arange(0, 12, 2))
  # The three plotted terms add up to the ELBO's formula H[q] - H[p] - H[l].
  terms = [line.get_ydata() for line in entropy_ax.get_lines()]
  np.testing.assert_allclose(
      sum(terms), trace['q_entropy'] - trace['prior_entropy']
      - trace['likelihood_entropy'])


def test_plot_training_curves_defaults_to_index_steps():
  fig = plots.plot_training_curves(_trace(length=1))
  assert len(fig.axes[0].get_lines()) == 1
  np.testing.assert_array_equal(fig.axes[0].get_lines()[0].get_xdata(), [0])


@pytest.mark.parametrize('trace, error, match', [
    ({'elbo': np.ones(3)}, ValueError,
     (r"trace lacks the key\(s\) \['q_entropy', 'prior_entropy', "
      r"'likelihood_entropy'\]")),
    (_trace(step=np.arange(5)), ValueError,
     r"equal length, got shapes .*'step': \(5,\)"),
    (_trace(elbo=np.ones((6, 1))), ValueError, r"'elbo': \(6, 1\)"),
    (_trace(length=0), ValueError, 'non-empty 1-D arrays'),
    (np.ones((4, 3)), TypeError, 'trace must be a mapping'),
])
def test_plot_training_curves_errors(trace, error, match):
  with pytest.raises(error, match=match):
    plots.plot_training_curves(trace)


@pytest.mark.parametrize('values, num_collections', [
    (np.linspace(0.3, 0.6, 5), 0),
    (np.stack([np.linspace(0.3, 0.6, 5), np.full(5, 0.05)], axis=1), 1),
    ({'gini_mean': np.linspace(0.3, 0.6, 5), 'gini_sd': np.full(5, 0.05),
      'step': np.arange(5) * 10}, 1),
])
def test_plot_gini(tmp_path, values, num_collections):
  path = tmp_path / 'gini.png'
  fig = plots.plot_gini(values, path=path)
  assert len(fig.axes) == 1
  _assert_png(path)
  assert len(fig.axes[0].collections) == num_collections  # the +- sd band
  np.testing.assert_allclose(fig.axes[0].get_lines()[0].get_ydata(),
                             np.linspace(0.3, 0.6, 5))


@pytest.mark.parametrize('values, match', [
    (np.ones((5, 3)),
     r'array \[T\] or \[T, 2\] with T >= 1, got shape \(5, 3\)'),
    (np.ones(0), r'got shape \(0,\)'),
    ({'gini_sd': np.ones(3)}, r"lacks the key\(s\) \['gini_mean'\]"),
])
def test_plot_gini_errors(values, match):
  with pytest.raises(ValueError, match=match):
    plots.plot_gini(values)


def test_plot_dictionaries_one_panel_each_in_order(tmp_path):
  rng = np.random.default_rng(0)
  first = rng.standard_normal((16, 6))
  dictionaries = {'a': first, 'b': rng.standard_normal((16, 9))}
  fig = plots.plot_dictionaries(dictionaries, orders={'a': [5, 4, 3, 2, 1, 0]},
                                path=tmp_path / 'all.png', title='four')
  assert [ax.get_title() for ax in fig.axes] == ['a', 'b']
  assert (tmp_path / 'all.png').stat().st_size > 0
  # Panel 'a' shows column 5 first (top-left patch, 4x4 pixels after a border).
  image = fig.axes[0].get_images()[0].get_array()
  expected = first[:, 5] / np.abs(first[:, 5]).max()
  np.testing.assert_allclose(image[1:5, 1:5], expected.reshape(4, 4))
  with pytest.raises(ValueError, match='at least one'):
    plots.plot_dictionaries({})
  with pytest.raises(ValueError, match=r"dictionaries\['c'\] has shape"):
    plots.plot_dictionaries({'a': first, 'c': np.ones((9, 2))})
