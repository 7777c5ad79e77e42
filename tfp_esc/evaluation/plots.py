"""Plots of dictionaries, training curves and sparsity (arrays in, Figures out).

Every function takes NumPy arrays (or anything `np.asarray` accepts), never a
model, and returns a `matplotlib.figure.Figure`; with `path` it also writes
the figure (format from the file suffix, e.g. .png or .pdf), creating missing
parent directories. Figures are built with `matplotlib.figure.Figure`
directly, not with pyplot, so no GUI backend is selected or needed and the
module is safe to import in notebooks and on headless machines alike; in a
notebook with the inline backend (the default), `display(fig)` shows a figure.
"""

import collections.abc
import math
import operator
import os

import matplotlib
import matplotlib.figure
import numpy as np
from absl import logging

from tfp_esc import _checks
from tfp_esc.evaluation import metrics

__all__ = [
  'plot_dictionaries',
  'plot_dictionary',
  'plot_dictionary_comparison',
  'plot_elbo_vs_seconds',
  'plot_gini',
  'plot_restoration',
  'plot_training_curves',
]

_TRACE_KEYS = ('elbo', 'q_entropy', 'prior_entropy', 'likelihood_entropy')
_PATCH_INCHES = 0.6  # Size of one patch in a dictionary figure.
_BORDER_COLOR = '#4c72b0'  # Between patches, distinct from every grey level.


def _save(fig, path):
  if path is not None:
    path = os.fspath(path)
    directory = os.path.dirname(path)
    if directory:
      os.makedirs(directory, exist_ok=True)
    fig.savefig(path, dpi=100, bbox_inches='tight')
    logging.info('Wrote figure %s', path)
  return fig


def _as_dictionary(dictionary, name):
  """Returns a finite float64 `[D, H]` array; raises on other shapes."""
  array = np.asarray(dictionary)
  if array.dtype.kind not in 'fiu':
    raise TypeError(f'{name} must be numeric, got dtype {array.dtype}.')
  if array.ndim != 2 or 0 in array.shape:
    raise ValueError(f'{name} must be a non-empty [D, H] array, got shape '
                     f'{array.shape}.')
  _checks.check_finite(array, name)
  return array.astype(np.float64)


def _patch_shape(patch_shape, num_pixels, name):
  """Returns (rows, cols) of a patch with `num_pixels` pixels."""
  if patch_shape is None:
    side = math.isqrt(num_pixels)
    if side * side != num_pixels:
      raise ValueError(f'{name} has D = {num_pixels} rows, not a square '
                       'number; pass patch_shape=(rows, cols).')
    return side, side
  patch_shape = tuple(int(n) for n in patch_shape)
  if len(patch_shape) != 2 or math.prod(patch_shape) != num_pixels:
    raise ValueError(f'patch_shape {patch_shape} does not hold the D = '
                     f'{num_pixels} rows of {name}.')
  return patch_shape


def _check_ncols(ncols):
  if ncols is None:
    return None
  try:
    if isinstance(ncols, bool):
      raise TypeError
    ncols = operator.index(ncols)
  except TypeError:
    raise TypeError(f'ncols must be an integer, got {ncols!r}.') from None
  if ncols < 1:
    raise ValueError(f'ncols must be an integer >= 1, got {ncols}.')
  return ncols


def _mosaic(columns, patch_shape, ncols):
  """Tiles the columns of `[D, K]` into one image with NaN borders.

  Each column is scaled by its largest magnitude to [-1, 1] (all-zero columns
  stay 0), so 0 is mid-grey in every patch.
  """
  num_patches = columns.shape[1]
  nrows = math.ceil(num_patches / ncols)
  rows, cols = patch_shape
  scale = np.max(np.abs(columns), axis=0)
  columns = columns / np.where(scale > 0, scale, 1.0)
  image = np.full((nrows * (rows + 1) + 1, ncols * (cols + 1) + 1), np.nan)
  for index in range(num_patches):
    top = 1 + (index // ncols) * (rows + 1)
    left = 1 + (index % ncols) * (cols + 1)
    image[top:top + rows, left:left + cols] = columns[:, index].reshape(rows,
                                                                        cols)
  return image


def _draw_mosaic(ax, columns, patch_shape, ncols, title):
  cmap = matplotlib.colormaps['gray'].with_extremes(bad=_BORDER_COLOR)
  ax.imshow(_mosaic(columns, patch_shape, ncols), cmap=cmap, vmin=-1.0,
            vmax=1.0, interpolation='nearest')
  ax.set_axis_off()
  if title:
    ax.set_title(title)


def _mosaic_size(num_patches, patch_shape, ncols):
  nrows = math.ceil(num_patches / ncols)
  aspect = patch_shape[0] / patch_shape[1]
  return ncols * _PATCH_INCHES, max(nrows * _PATCH_INCHES * aspect, 0.5)


def plot_dictionary(dictionary, patch_shape=None, order=None, title=None,
                    path=None, ncols=None):
  """Shows the columns of a dictionary as a grid of image patches.

  Each column is scaled symmetrically around 0 by its largest magnitude and
  drawn in grey (0 mid-grey, positive light, negative dark); patches are
  separated by blue borders. All patches share one Axes.

  Args:
    dictionary: `[D, H]` numeric array, one field per column (W, or W~ of the
      original parameterization).
    patch_shape: (rows, cols) with rows * cols = D; default square sqrt(D).
    order: optional 1-D integer sequence of column indices in [0, H) giving
      the order of the patches, e.g. `np.argsort(-lam)` (by decreasing
      lambda); it may select a subset. Default: 0, ..., H - 1.
    title: optional str, the figure title.
    path: optional str or path-like; the figure is written there.
    ncols: patches per row, default ceil(sqrt(number of patches)).

  Returns:
    `matplotlib.figure.Figure` with one Axes.

  Raises:
    TypeError: `dictionary` is not numeric or `ncols` not an integer.
    ValueError: `dictionary` is not a non-empty finite `[D, H]` array,
      `patch_shape` does not hold D pixels (or D is not square and no
      `patch_shape` is given), `order` is not a non-empty 1-D integer
      sequence in [0, H), or `ncols` < 1.
  """
  dictionary = _as_dictionary(dictionary, 'dictionary')
  num_pixels, num_columns = dictionary.shape
  patch_shape = _patch_shape(patch_shape, num_pixels, 'dictionary')
  if order is not None:
    order = np.asarray(order)
    if (order.ndim != 1 or order.size == 0 or order.dtype.kind not in 'iu'
        or order.min() < 0 or order.max() >= num_columns):
      raise ValueError('order must be a non-empty 1-D sequence of integer '
                       f'column indices in [0, {num_columns}), got '
                       f'{order!r}.')
    dictionary = dictionary[:, order]
  num_patches = dictionary.shape[1]
  ncols = _check_ncols(ncols) or math.ceil(math.sqrt(num_patches))
  fig = matplotlib.figure.Figure(
      figsize=_mosaic_size(num_patches, patch_shape, ncols),
      layout='constrained')
  _draw_mosaic(fig.add_subplot(), dictionary, patch_shape, ncols, None)
  if title:
    fig.suptitle(title)
  return _save(fig, path)


def plot_dictionaries(dictionaries, patch_shape=None, orders=None, path=None,
                      title=None):
  """Several dictionaries side by side, one panel each (e.g. four variants).

  Args:
    dictionaries: mapping of panel title -> `[D, H]` array (same D; H may
      differ).
    patch_shape: (rows, cols) with rows * cols = D; default square.
    orders: optional mapping of panel title -> column order (e.g. by
      decreasing lambda).
    path: optional path; the figure is written there.
    title: optional figure title.

  Returns:
    `matplotlib.figure.Figure` with one Axes per dictionary.

  Raises:
    ValueError: no dictionaries, or one of bad shape.
  """
  if not dictionaries:
    raise ValueError('dictionaries must hold at least one dictionary.')
  arrays = {name: _as_dictionary(d, f'dictionaries[{name!r}]')
            for name, d in dictionaries.items()}
  num_pixels = next(iter(arrays.values())).shape[0]
  patch_shape = _patch_shape(patch_shape, num_pixels, 'dictionaries')
  orders = orders or {}
  fig = matplotlib.figure.Figure(
      figsize=(4.5 * len(arrays), 4.8), layout='constrained')
  for index, (name, array) in enumerate(arrays.items()):
    if array.shape[0] != num_pixels:
      raise ValueError(f'dictionaries[{name!r}] has shape {array.shape}, '
                       f'expected {num_pixels} rows like the first.')
    if name in orders:
      array = array[:, np.asarray(orders[name])]
    ncols = math.ceil(math.sqrt(array.shape[1]))
    _draw_mosaic(fig.add_subplot(1, len(arrays), index + 1), array,
                 patch_shape, ncols, name)
  if title:
    fig.suptitle(title)
  return _save(fig, path)


def plot_dictionary_comparison(learned, truth, path=None, patch_shape=None,
                               align=True, threshold=0.9, title=None,
                               ncols=None):
  """Shows a learned dictionary above the ground truth (e.g. the bars).

  With `align`, learned columns are matched one-to-one to the true ones
  (`metrics.match_dictionaries`) and each is drawn above its match, sign
  flipped to agree with it; unmatched learned columns (H > H_true) follow.

  Args:
    learned: `[D, H]` numeric array, the learned dictionary.
    truth: `[D, H_true]` numeric array, the ground truth (bars: `[25, 10]`,
      5x5 fields).
    path: optional str or path-like; the figure is written there.
    patch_shape: (rows, cols) with rows * cols = D; default square sqrt(D).
    align: bool, reorder and sign-flip `learned` to match `truth` (needs
      H >= H_true).
    threshold: float in (0, 1], the |cosine| counted as recovered in the
      learned panel's title when `align` is True.
    title: optional str, the figure title.
    ncols: patches per row in both panels; default H_true when H_true <= 16,
      else ceil(sqrt(H_true)).

  Returns:
    `matplotlib.figure.Figure` with two Axes: learned (top), truth (bottom).

  Raises:
    TypeError: a dictionary is not numeric.
    ValueError: a dictionary is not a non-empty finite `[D, H]` array, the
      two have different D (both shapes are given), `patch_shape` does not
      fit D, or, with `align`, H < H_true or a column is all zero.
  """
  learned = _as_dictionary(learned, 'learned')
  truth = _as_dictionary(truth, 'truth')
  if learned.shape[0] != truth.shape[0]:
    raise ValueError('learned and truth must have the same number of rows D; '
                     f'learned has shape {learned.shape}, truth '
                     f'{truth.shape}.')
  patch_shape = _patch_shape(patch_shape, truth.shape[0], 'truth')
  num_true = truth.shape[1]
  ncols = _check_ncols(ncols) or (
      num_true if num_true <= 16 else math.ceil(math.sqrt(num_true)))
  learned_title = 'learned'
  if align:
    match = metrics.match_dictionaries(truth, learned, threshold=threshold)
    rest = np.setdiff1d(np.arange(learned.shape[1]), match.assignment)
    learned = np.concatenate(
        [learned[:, match.assignment] * match.sign, learned[:, rest]], axis=1)
    learned_title = (f'learned, matched ({match.num_recovered}/{num_true} '
                     f'with |cos| >= {match.threshold:g})')
  learned_size = _mosaic_size(learned.shape[1], patch_shape, ncols)
  truth_size = _mosaic_size(num_true, patch_shape, ncols)
  fig = matplotlib.figure.Figure(
      figsize=(max(learned_size[0], 3.0),
               learned_size[1] + truth_size[1] + 0.8),
      layout='constrained')
  top, bottom = fig.subplots(
      2, 1, height_ratios=[learned_size[1], truth_size[1]])
  _draw_mosaic(top, learned, patch_shape, ncols, learned_title)
  _draw_mosaic(bottom, truth, patch_shape, ncols, 'ground truth')
  if title:
    fig.suptitle(title)
  return _save(fig, path)


def _curves(trace, keys, optional_keys, name):
  """Returns {key: 1-D float array} for `keys` (+ present optional ones)."""
  if not isinstance(trace, collections.abc.Mapping):
    raise TypeError(f'{name} must be a mapping of 1-D arrays, got '
                    f'{type(trace).__name__}.')
  missing = [key for key in keys if key not in trace]
  if missing:
    raise ValueError(f'{name} lacks the key(s) {missing}; it has '
                     f'{sorted(trace)}.')
  curves = {key: np.asarray(trace[key], dtype=np.float64)
            for key in keys + tuple(k for k in optional_keys if k in trace)}
  shapes = {key: value.shape for key, value in curves.items()}
  lengths = {value.shape[0] if value.ndim == 1 else None
             for value in curves.values()}
  if len(lengths) != 1 or None in lengths or 0 in lengths:
    raise ValueError(f'{name} must hold non-empty 1-D arrays of equal '
                     f'length, got shapes {shapes}.')
  return curves


def _steps(curves, length):
  """Returns the x values ('step', else 0, ..., length - 1) and their label."""
  if 'step' in curves:
    return curves['step'], 'step'
  return np.arange(length), 'step (index)'


def plot_training_curves(trace, path=None, title=None):
  """Plots the ELBO and its three entropies over training.

  Left: the (non-annealed) ELBO F, and the annealed objective if given
  (dashed; it is not an ELBO). Right: the three signed terms of
  F = H[q] - H[prior] - H[lik], i.e. H[q], -H[p(z | lambda*)] and
  -H[p(x | z, sigma2*)], which add up to F.

  Args:
    trace: mapping with keys 'elbo', 'q_entropy', 'prior_entropy',
      'likelihood_entropy', each a 1-D array `[T]` (per-data-point values, as
      the trainers log them), and optionally 'step' `[T]` (x values; default
      0, ..., T - 1) and 'annealed_objective' `[T]`. Other keys are ignored.
    path: optional str or path-like; the figure is written there.
    title: optional str, the figure title.

  Returns:
    `matplotlib.figure.Figure` with two Axes.

  Raises:
    TypeError: `trace` is not a mapping.
    ValueError: a required key is missing, or the arrays are not non-empty,
      1-D and of equal length (the shapes are given).
  """
  curves = _curves(trace, _TRACE_KEYS, ('step', 'annealed_objective'),
                   'trace')
  steps, xlabel = _steps(curves, len(curves['elbo']))
  fig = matplotlib.figure.Figure(figsize=(10.0, 4.0), layout='constrained')
  elbo_ax, entropy_ax = fig.subplots(1, 2)
  elbo_ax.plot(steps, curves['elbo'], marker='.', label='ELBO $\\mathcal{F}$')
  if 'annealed_objective' in curves:
    elbo_ax.plot(steps, curves['annealed_objective'], linestyle='--',
                 label='annealed objective (not an ELBO)')
  elbo_ax.set_xlabel(xlabel)
  elbo_ax.set_ylabel('nats per data point')
  elbo_ax.set_title('ELBO')
  elbo_ax.legend()
  elbo_ax.grid(alpha=0.3)
  entropy_ax.plot(steps, curves['q_entropy'], marker='.',
                  label='$H[q]$ (mean over data)')
  entropy_ax.plot(steps, -curves['prior_entropy'], marker='.',
                  label='$-H[p(z \\mid \\lambda^*)]$')
  entropy_ax.plot(steps, -curves['likelihood_entropy'], marker='.',
                  label='$-H[p(x \\mid z, \\sigma^{2*})]$')
  entropy_ax.set_xlabel(xlabel)
  entropy_ax.set_ylabel('nats per data point')
  entropy_ax.set_title('$\\mathcal{F} = H[q] - H[\\mathrm{prior}] - '
                       'H[\\mathrm{lik}]$, term by term')
  entropy_ax.legend()
  entropy_ax.grid(alpha=0.3)
  if title:
    fig.suptitle(title)
  return _save(fig, path)


def plot_gini(trace_or_values, path=None, title=None):
  """Plots the Gini index of the codes (mean +- sd) over training.

  Args:
    trace_or_values: either a mapping with key 'gini_mean' `[T]` and
      optionally 'gini_sd' `[T]` and 'step' `[T]`; or an array `[T]` of means
      or `[T, 2]` of (mean, sd) rows, e.g. the stacked results of
      `metrics.gini_summary`.
    path: optional str or path-like; the figure is written there.
    title: optional str, the figure title.

  Returns:
    `matplotlib.figure.Figure` with one Axes.

  Raises:
    ValueError: a mapping lacks 'gini_mean' or holds arrays that are not
      non-empty, 1-D and of equal length; an array is not `[T]` or `[T, 2]`
      with T >= 1 (the shape is given).
  """
  if isinstance(trace_or_values, collections.abc.Mapping):
    curves = _curves(trace_or_values, ('gini_mean',), ('gini_sd', 'step'),
                     'trace_or_values')
  else:
    values = np.asarray(trace_or_values, dtype=np.float64)
    if (values.ndim not in (1, 2) or values.shape[0] == 0
        or (values.ndim == 2 and values.shape[1] != 2)):
      raise ValueError('trace_or_values must be a mapping or an array [T] '
                       f'or [T, 2] with T >= 1, got shape {values.shape}.')
    curves = {'gini_mean': values if values.ndim == 1 else values[:, 0]}
    if values.ndim == 2:
      curves['gini_sd'] = values[:, 1]
  steps, xlabel = _steps(curves, len(curves['gini_mean']))
  fig = matplotlib.figure.Figure(figsize=(5.0, 3.5), layout='constrained')
  ax = fig.add_subplot()
  mean = curves['gini_mean']
  ax.plot(steps, mean, marker='.', label='mean')
  if 'gini_sd' in curves:
    sd = curves['gini_sd']
    ax.fill_between(steps, mean - sd, mean + sd, alpha=0.3, label='$\\pm$ sd')
  ax.set_xlabel(xlabel)
  ax.set_ylabel('Gini index')
  ax.set_title('Sparsity of the codes')
  ax.legend()
  ax.grid(alpha=0.3)
  if title:
    fig.suptitle(title)
  return _save(fig, path)


def plot_elbo_vs_seconds(traces, path=None, title=None):
  """Plots the ELBO F against training seconds, one line per method.

  E.g. the analytic F vs. the sampled ELBO with several S
  (`tfp_esc.inference.elbo_comparison.compare_elbos`): every method is
  evaluated with the same full-data analytic F, so the lines are comparable.

  Args:
    traces: mapping from a method's label (str) to a mapping with keys
      'seconds' `[T]` and 'elbo' `[T]` (1-D arrays of equal length, T >= 1;
      other keys are ignored).
    path: optional str or path-like; the figure is written there.
    title: optional str, the figure title.

  Returns:
    `matplotlib.figure.Figure` with one Axes.

  Raises:
    TypeError: `traces` or one of its values is not a mapping.
    ValueError: `traces` is empty, or a trace lacks a key or holds arrays
      that are not non-empty, 1-D and of equal length (the shapes are given).
  """
  if not isinstance(traces, collections.abc.Mapping):
    raise TypeError(f'traces must be a mapping from labels to traces, got '
                    f'{type(traces).__name__}.')
  if not traces:
    raise ValueError('traces must hold at least one method, got none.')
  curves = {str(label): _curves(trace, ('seconds', 'elbo'), (),
                                f'traces[{label!r}]')
            for label, trace in traces.items()}
  fig = matplotlib.figure.Figure(figsize=(6.0, 4.0), layout='constrained')
  ax = fig.add_subplot()
  for label, curve in curves.items():
    ax.plot(curve['seconds'], curve['elbo'], marker='.', label=label)
  ax.set_xlabel('training seconds')
  ax.set_ylabel('ELBO $\\mathcal{F}$ (nats per data point)')
  ax.set_title('ELBO $\\mathcal{F}$ (full data) vs. training time')
  ax.legend()
  ax.grid(alpha=0.3)
  if title:
    fig.suptitle(title)
  return _save(fig, path)


def plot_restoration(panels, path=None, title=None):
  """Images side by side, e.g. input | restored | uncertainty | error.

  Args:
    panels: dict of title -> `[rows, cols]` array. Titles containing
      'uncertainty' or 'error' are drawn with a colour bar on their own
      scale (absolute values for errors); the others as grey images in
      [0, 1].
    path: optional PNG path.
    title: optional figure title.

  Returns:
    The matplotlib Figure.
  """
  fig = matplotlib.figure.Figure(figsize=(3.2 * len(panels), 3.4))
  axes = fig.subplots(1, len(panels), squeeze=False)[0]
  for ax, (name, image) in zip(axes, panels.items()):
    image = np.asarray(image, np.float64)
    if 'uncertainty' in name or 'error' in name:
      shown = np.abs(image)
      top = float(np.quantile(shown, 0.99)) or 1.0
      im = ax.imshow(shown, cmap='magma', vmin=0.0, vmax=top)
      fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    else:
      ax.imshow(image, cmap='gray', vmin=0.0, vmax=1.0)
    ax.set_title(name)
    ax.set_axis_off()
  if title:
    fig.suptitle(title)
  return _save(fig, path)
