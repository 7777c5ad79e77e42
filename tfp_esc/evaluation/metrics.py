"""Metrics on codes and dictionaries: the Gini index and bars recovery.

Both work on NumPy arrays (anything `np.asarray` accepts, TF tensors
included) and never on models.

* `gini_index`: the Hurley & Rickard (2009) Gini index of code vectors (SPEC 8),
  the sparsity measure of the paper; `gini_summary` gives its mean and
  standard deviation over posterior samples.
* `match_dictionaries` / `bars_recovery`: a one-to-one matching of learned
  dictionary columns to ground-truth columns by |cosine similarity|.
* `spatial_spread` / `localized_fraction`: how concentrated in space the
  fields of a patch dictionary are (Gabor-like fields are; gratings, noise
  and unlearned random columns are not).
"""

import dataclasses

import numpy as np
import scipy.optimize

from tfp_esc import _checks

__all__ = [
  'DictionaryMatch',
  'bars_recovery',
  'gini_index',
  'gini_summary',
  'localized_fraction',
  'match_dictionaries',
  'posterior_gini',
]

# An atom is localized when its energy's spatial spread is at most this
# fraction of the patch side (16x16 patches: 4 pixels). Unit-norm Gaussian
# noise columns spread over about 0.39 of the side, a grating over the
# whole patch about 0.4; the Gabor-like fields of a trained dictionary over
# 0.13-0.22.
LOCALIZED_SPREAD = 0.25

# Rows per block in `gini_index`: bounds the temporary copies (abs, sort) for
# large sample arrays, e.g. [10, 204800, 100].
_GINI_BLOCK_ROWS = 1 << 16


def _as_numeric_array(value, name, min_rank):
  """np.asarray(value) as a float array of rank >= min_rank; finite."""
  array = np.asarray(value)
  if array.dtype.kind not in 'fiu':
    raise TypeError(f'{name} must be numeric, got dtype {array.dtype}.')
  if array.ndim < min_rank:
    raise ValueError(f'{name} must have rank >= {min_rank}, got shape '
                     f'{array.shape}.')
  if array.dtype.kind != 'f':
    array = array.astype(np.float64)
  _checks.check_finite(array, name)
  return array


def _gini_rows(rows):
  """Gini index of each row of a [M, H] float array (see `gini_index`)."""
  num_latents = rows.shape[-1]
  magnitudes = np.sort(np.abs(rows), axis=-1)
  k = np.arange(1, num_latents + 1, dtype=rows.dtype)
  weights = (num_latents - k + 0.5) / num_latents
  l1 = magnitudes.sum(axis=-1)
  weighted = magnitudes @ weights
  # All-zero rows get ratio 1/2, the value for equal magnitudes, hence G = 0.
  ratio = np.divide(weighted, l1, out=np.full_like(l1, 0.5), where=l1 > 0)
  # G >= 0 exactly; clipping removes rounding (-2e-16 for equal magnitudes).
  return np.maximum(1.0 - 2.0 * ratio, 0.0).astype(rows.dtype)


def gini_index(codes):
  """Hurley & Rickard Gini index of each code vector (SPEC 8).

  With |c| sorted ascending to c_(1) <= ... <= c_(H),

    G(c) = 1 - 2 sum_{k=1}^{H} (c_(k) / ||c||_1) (H - k + 1/2) / H.

  G = 0 when all magnitudes are equal and G = 1 - 1/H for exactly one
  non-zero entry; G is invariant to permutations, sign flips and scaling of c.
  A vector of zeros has no defined Gini index; it is given G = 0 (no NaN).

  Args:
    codes: `[..., H]` numeric array or tensor, H >= 1: code vectors along the
      last axis (e.g. means `[N, H]` or samples `[S, N, H]`).

  Returns:
    `[...]` NumPy array of the codes' float dtype (float64 for integer codes),
    values in [0, 1 - 1/H].

  Raises:
    TypeError: `codes` is not numeric.
    ValueError: `codes` has rank 0 or an empty last axis, or holds NaN or inf.
  """
  codes = _as_numeric_array(codes, 'codes', min_rank=1)
  if codes.shape[-1] == 0:
    raise ValueError(f'codes must have at least one latent (last axis), got '
                     f'shape {codes.shape}.')
  batch_shape = codes.shape[:-1]
  rows = codes.reshape(-1, codes.shape[-1])
  gini = np.empty(rows.shape[0], dtype=codes.dtype)
  for begin in range(0, rows.shape[0], _GINI_BLOCK_ROWS):
    end = begin + _GINI_BLOCK_ROWS
    gini[begin:end] = _gini_rows(rows[begin:end])
  return gini.reshape(batch_shape)


def gini_summary(samples):
  """Mean and standard deviation of the Gini index over code vectors.

  The paper's sparsity summary: the Gini index of every posterior sample of
  every data point (10 samples per point in the paper), averaged.

  Args:
    samples: `[S, N, H]` numeric array or tensor (posterior samples); any
      `[..., H]` of rank >= 2 is accepted and all leading axes are pooled.

  Returns:
    `(mean, sd)`: Python floats over all S * N code vectors; sd is the
    population standard deviation (ddof = 0). All-zero vectors count as 0.

  Raises:
    TypeError: `samples` is not numeric.
    ValueError: `samples` has rank < 2, no code vectors, an empty last axis,
      or holds NaN or inf.
  """
  samples = _as_numeric_array(samples, 'samples', min_rank=2)
  if samples.size == 0:
    raise ValueError(f'samples must hold at least one code vector with at '
                     f'least one latent, got shape {samples.shape}.')
  gini = gini_index(samples).astype(np.float64)
  return float(gini.mean()), float(gini.std())


@dataclasses.dataclass(frozen=True)
class DictionaryMatch:
  """A one-to-one matching of learned to true dictionary columns.

  Attributes:
    cosine: `[H_true, H]` float64, |cosine similarity| between every true
      column (row) and every learned column.
    assignment: `[H_true]` int64, the learned column matched to each true
      column (distinct; maximises the total |cosine|).
    similarity: `[H_true]` float64, |cosine| of each true column with its
      matched learned column.
    sign: `[H_true]` float64 in {-1, +1}, the sign of that cosine (multiply
      the matched learned column by it to align it with the true one).
    threshold: float, the |cosine| a true column needs to count as recovered.
    num_recovered: int, number of true columns with similarity >= threshold.
    recovered: bool, True when every true column is recovered.
  """
  cosine: np.ndarray
  assignment: np.ndarray
  similarity: np.ndarray
  sign: np.ndarray
  threshold: float
  num_recovered: int
  recovered: bool


def _unit_columns(dictionary, name):
  norms = np.linalg.norm(dictionary, axis=0)
  zero = np.flatnonzero(norms == 0)
  if zero.size:
    raise ValueError(f'{name} has {zero.size} all-zero column(s) (first at '
                     f'index {int(zero[0])}, shape {dictionary.shape}); their '
                     'direction is undefined.')
  return dictionary / norms


def match_dictionaries(true_dictionary, learned_dictionary, threshold=0.9):
  """Matches each true column to a distinct learned column by |cosine|.

  The assignment maximises the summed |cosine| over true columns
  (`scipy.optimize.linear_sum_assignment`); signs and the order of the learned
  columns do not matter, and extra learned columns (H > H_true) are left out.

  Args:
    true_dictionary: `[D, H_true]` numeric array or tensor, columns are the
      ground-truth fields (any non-zero norm).
    learned_dictionary: `[D, H]` numeric array or tensor with H >= H_true.
    threshold: float in (0, 1], the |cosine| from which a true column counts
      as recovered. At the ELBO optimum of a finite bars data set a bar may sit
      at |cos| ~ 0.93, while a merged double bar scores <= 0.78, so the default
      0.9 separates the two.

  Returns:
    `DictionaryMatch`.

  Raises:
    TypeError: a dictionary is not numeric.
    ValueError: a dictionary is not rank 2, the two have different D (both
      shapes are given), H < H_true, a dictionary has no columns, an all-zero
      column or NaN/inf, or `threshold` is not in (0, 1].
  """
  true_dictionary = _as_numeric_array(true_dictionary, 'true_dictionary', 2)
  learned_dictionary = _as_numeric_array(learned_dictionary,
                                         'learned_dictionary', 2)
  shapes = (f'true_dictionary has shape {true_dictionary.shape}, '
            f'learned_dictionary {learned_dictionary.shape}')
  if true_dictionary.ndim != 2 or learned_dictionary.ndim != 2:
    raise ValueError(f'Both dictionaries must be rank 2 ([D, H]); {shapes}.')
  if true_dictionary.shape[0] != learned_dictionary.shape[0]:
    raise ValueError('true_dictionary and learned_dictionary must have the '
                     f'same number of rows D; {shapes}.')
  if true_dictionary.shape[1] == 0:
    raise ValueError(f'true_dictionary has no columns; {shapes}.')
  if learned_dictionary.shape[1] < true_dictionary.shape[1]:
    raise ValueError('learned_dictionary must have at least as many columns '
                     f'as true_dictionary; {shapes}.')
  threshold = _checks.check_real(threshold, 'threshold', 0.0, 1.0)

  true_unit = _unit_columns(true_dictionary.astype(np.float64),
                            'true_dictionary')
  learned_unit = _unit_columns(learned_dictionary.astype(np.float64),
                               'learned_dictionary')
  signed = true_unit.T @ learned_unit
  cosine = np.minimum(np.abs(signed), 1.0)
  rows, assignment = scipy.optimize.linear_sum_assignment(cosine,
                                                          maximize=True)
  similarity = cosine[rows, assignment]
  sign = np.where(signed[rows, assignment] < 0, -1.0, 1.0)
  num_recovered = int(np.sum(similarity >= threshold))
  return DictionaryMatch(
      cosine=cosine,
      assignment=assignment.astype(np.int64),
      similarity=similarity,
      sign=sign,
      threshold=float(threshold),
      num_recovered=num_recovered,
      recovered=num_recovered == true_dictionary.shape[1])


def bars_recovery(true_dictionary, learned_dictionary, threshold=0.9):
  """Checks which bars a learned dictionary recovers (SPEC 9, 11).

  The same as `match_dictionaries`, under the name the bars experiment uses:
  a run recovers all bars when `result.recovered` is True.

  Args:
    true_dictionary: `[D, H_true]` array, e.g. the bars `[25, 10]`.
    learned_dictionary: `[D, H]` array with H >= H_true, e.g. W `[25, 10]`.
    threshold: float in (0, 1], |cosine| needed to count a bar as recovered.

  Returns:
    `DictionaryMatch`.

  Raises:
    TypeError, ValueError: as `match_dictionaries`.
  """
  return match_dictionaries(true_dictionary, learned_dictionary, threshold)


def posterior_gini(posterior, num_samples=10, seed=0):
  """Gini index (mean, sd) of posterior samples, as the paper reports it.

  Draws `num_samples` codes z ~ q_n per data point and summarises the Gini
  index of every sampled code vector over all samples and points.

  Args:
    posterior: a `GaussianPosterior` with N points (anything with
      `.distribution()` giving a TFP distribution of event shape [H]).
    num_samples: samples per data point (the paper uses 10).
    seed: stateless seed (int or shape-[2] int tensor).

  Returns:
    (mean, sd) as Python floats.
  """
  samples = posterior.distribution().sample(
      int(num_samples), seed=_checks.stateless_seed(seed))
  return gini_summary(np.asarray(samples))


def spatial_spread(dictionary, patch_shape):
  """Spatial spread of each patch-shaped column's energy.

  The energy e_ij = w_ij^2 / ||w||^2 of column w (a patch of `patch_shape`,
  row-major) has a centroid c; the spread is
  sqrt(sum_ij e_ij ||(i, j) - c||^2), in pixels.

  Args:
    dictionary: `[D, H]` array, D = rows * cols.
    patch_shape: (rows, cols).

  Returns:
    `[H]` float64, in pixels.

  Raises:
    ValueError: D != rows * cols, a zero column, or NaN/inf.
  """
  w = _as_numeric_array(dictionary, 'dictionary', 2)
  rows, cols = (int(v) for v in patch_shape)
  if w.shape[0] != rows * cols:
    raise ValueError(f'dictionary has {w.shape[0]} rows but patch_shape '
                     f'{tuple(patch_shape)} needs {rows * cols}.')
  energy = np.square(w.astype(np.float64))
  total = energy.sum(0)
  if np.any(total == 0):
    raise ValueError(f'dictionary has zero columns at '
                     f'{np.flatnonzero(total == 0).tolist()}.')
  energy = (energy / total).reshape(rows, cols, -1)
  i, j = np.meshgrid(np.arange(rows), np.arange(cols), indexing='ij')
  ci = np.einsum('ijh,ij->h', energy, i)
  cj = np.einsum('ijh,ij->h', energy, j)
  return np.sqrt(np.einsum('ijh,ijh->h', energy,
                           np.square(i[..., None] - ci)
                           + np.square(j[..., None] - cj)))


def localized_fraction(dictionary, patch_shape, threshold=LOCALIZED_SPREAD):
  """Fraction of columns whose `spatial_spread` is <= threshold * side.

  Args:
    dictionary: `[D, H]` array of patch-shaped columns.
    patch_shape: (rows, cols); side = max(rows, cols).
    threshold: spread limit as a fraction of the side.

  Returns:
    float in [0, 1].
  """
  spread = spatial_spread(dictionary, patch_shape)
  return float(np.mean(spread <= threshold * max(patch_shape)))
