"""Image patches for sparse coding: extraction and minibatch pipelines.

* :func:`extract_patches` -- random square patches of 2-D images, flattened
  row-major to ``[num_patches, patch_size**2]``;
* :func:`whitened_patches` -- load (see :func:`tfp_esc.data.images.load_images`)
  -> whiten -> extract, deterministic given ``seed`` (SPEC section 9);
* :func:`make_dataset` -- a ``tf.data.Dataset`` of ``(indices, x)``
  minibatches so trainers can keep per-data-point variational parameters.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
from absl import logging

from tfp_esc.data import images as images_lib

__all__ = [
    'NUM_PATCHES_PAPER',
    'extract_patches',
    'make_dataset',
    'whitened_patches',
]

#: Number of patches used in the paper's natural-image experiments.
NUM_PATCHES_PAPER = 204_800

ImagesLike = np.ndarray | Sequence[np.ndarray]


def _check_int(name: str, value, minimum: int = 1) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(
            value, (int, np.integer)):
        raise TypeError(f'{name} must be an integer, got {value!r}')
    if value < minimum:
        raise ValueError(f'{name} must be >= {minimum}, got {value}')
    return int(value)


def _check_float_dtype(dtype) -> np.dtype:
    dt = np.dtype(dtype)
    if not np.issubdtype(dt, np.floating):
        raise TypeError(f'dtype must be a floating dtype, got {dt}')
    return dt


def _as_image_list(images: ImagesLike) -> list[np.ndarray]:
    """Validates images; returns a list of 2-D numeric arrays."""
    if isinstance(images, np.ndarray) or hasattr(images, 'numpy'):
        arr = np.asarray(images)
        if arr.ndim != 3:
            raise ValueError(
                f'an images array must be 3-D [num_images, rows, cols], got '
                f'shape {arr.shape} (pass a single image as [image])')
        image_list = list(arr)
    else:
        image_list = [np.asarray(im) for im in images]
    if not image_list:
        raise ValueError('images is empty')
    for i, im in enumerate(image_list):
        if im.dtype == object or not (np.issubdtype(im.dtype, np.number)
                                      or im.dtype == bool):
            raise TypeError(f'image {i} is not numeric (dtype {im.dtype})')
        if np.iscomplexobj(im):
            raise TypeError(f'image {i} is complex (dtype {im.dtype})')
        if im.ndim != 2:
            raise ValueError(f'image {i} must be 2-D [rows, cols], got shape '
                             f'{im.shape}')
    return image_list


def extract_patches(images: ImagesLike,
                    num_patches: int,
                    patch_size: int = 16,
                    seed: int = 0,
                    dtype=np.float32) -> np.ndarray:
    """Draws square patches at uniform random positions.

    For each patch an image is chosen uniformly at random, then a top-left
    corner uniformly among the ``(rows - p + 1) * (cols - p + 1)`` valid
    positions of that image (``p = patch_size``); all draws come from
    ``np.random.default_rng(seed)`` (image indices first, then rows, then
    columns), so the result is a deterministic function of the arguments.

    Args:
      images: a ``[num_images, rows, cols]`` array or a sequence of 2-D arrays
        ``[rows_i, cols_i]`` (sizes may differ), real and finite.
      num_patches: number of patches ``N`` (> 0).
      patch_size: side length ``p`` of the square patches (> 0).
      seed: seed of ``np.random.default_rng``.
      dtype: floating output dtype.

    Returns:
      ``[num_patches, patch_size * patch_size]`` array of ``dtype``; row ``n``
      is a ``p x p`` patch flattened row-major (C order).

    Raises:
      ValueError: ``num_patches`` or ``patch_size`` not positive, images
        empty / not 2-D, an image smaller than the patch (message names its
        index and shape), NaN or inf in an image.
      TypeError: non-integer sizes, non-numeric images, non-floating dtype.
    """
    num_patches = _check_int('num_patches', num_patches)
    p = _check_int('patch_size', patch_size)
    dt = _check_float_dtype(dtype)
    image_list = _as_image_list(images)
    for i, im in enumerate(image_list):
        if im.shape[0] < p or im.shape[1] < p:
            raise ValueError(f'image {i} of shape {im.shape} is smaller than '
                             f'the patch size {p}x{p}')
        if not np.all(np.isfinite(im)):
            raise ValueError(f'image {i} contains NaN or infinite values')

    rng = np.random.default_rng(seed)
    num_images = len(image_list)
    row_range = np.array([im.shape[0] - p + 1 for im in image_list])
    col_range = np.array([im.shape[1] - p + 1 for im in image_list])
    which = rng.integers(0, num_images, size=num_patches)
    rows = rng.integers(0, row_range[which])
    cols = rng.integers(0, col_range[which])

    out = np.empty((num_patches, p * p), dtype=dt)
    for i, im in enumerate(image_list):
        sel = np.flatnonzero(which == i)
        if sel.size == 0:
            continue
        windows = np.lib.stride_tricks.sliding_window_view(
            np.asarray(im, dtype=dt), (p, p))
        out[sel] = windows[rows[sel], cols[sel]].reshape(sel.size, p * p)
    return out


def _central_square(img: np.ndarray) -> np.ndarray:
    n = min(img.shape)
    r0 = (img.shape[0] - n) // 2
    c0 = (img.shape[1] - n) // 2
    return img[r0:r0 + n, c0:c0 + n]


def _whiten_image_list(image_list: list[np.ndarray], f0_fraction: float,
                       variance: float, apply_filter: bool) -> list[np.ndarray]:
    """Crops to central squares, filters per size group, scales jointly."""
    squares = [np.asarray(_central_square(im), dtype=np.float64)
               for im in image_list]
    for i, sq in enumerate(squares):
        if not np.all(np.isfinite(sq)):
            raise ValueError(f'image {i} contains NaN or infinite values')
    if apply_filter:
        filtered: list[np.ndarray | None] = [None] * len(squares)
        sizes = sorted({sq.shape[0] for sq in squares})
        for n in sizes:
            idx = [i for i, sq in enumerate(squares) if sq.shape[0] == n]
            group = images_lib._filter_images(
                np.stack([squares[i] for i in idx]), f0_fraction)
            for j, i in enumerate(idx):
                filtered[i] = group[j]
        squares = filtered
    return images_lib._scale_jointly(squares, variance)


def whitened_patches(path: str | os.PathLike | None = None,
                     num_patches: int | None = None,
                     patch_size: int = 16,
                     seed: int = 0,
                     dtype=np.float32,
                     *,
                     key: str | None = None,
                     whiten_images: bool | None = None,
                     f0_fraction: float = 0.4,
                     variance: float = 0.1) -> np.ndarray:
    """Loads images, whitens them and draws patches (SPEC section 9).

    Pipeline: :func:`tfp_esc.data.images.load_images` ``(path, key)`` -> each
    image cropped to its largest central square -> Olshausen-Field filter
    (images of equal size filtered together; the filter is per-image anyway)
    -> global mean subtracted and ALL images scaled by one common factor to
    overall variance ``variance`` -> :func:`extract_patches` with ``seed``.
    Deterministic given the arguments.

    Olshausen's ``IMAGES.mat`` is already whitened, so by default
    (``whiten_images=None``) a ``.mat`` file read with the key ``'IMAGES'``
    is NOT filtered again, only rescaled jointly to ``variance``; every other
    source (default images, folders, ``IMAGES_RAW.mat`` with
    ``key='IMAGESr'``, 3-D ``.npy``/``.npz``) is filtered. ``True``/``False``
    force the choice.

    Ready patches: if ``path`` is a ``.npy``/``.npz`` file holding a 2-D array
    ``[N, D]``, it is returned as patches without whitening; ``D`` must equal
    ``patch_size**2``. With ``num_patches`` ``None`` (or ``N``) all rows are
    returned in stored order, with ``num_patches < N`` a random subset of rows
    (without replacement, kept in stored order, drawn with ``seed``).

    Args:
      path: file or folder, or ``None`` for the embedded skimage default.
      num_patches: number of patches; ``None`` -> :data:`NUM_PATCHES_PAPER`
        (204,800) for images, all rows for ready patches.
      patch_size: side length ``p``; ``D = p * p``.
      seed: seed for the patch positions (or the subset of ready patches).
      dtype: floating output dtype.
      key: variable name in a ``.mat`` / ``.npz`` file.
      whiten_images: apply the whitening filter (``None``: see above).
      f0_fraction: whitening cut-off relative to the image side.
      variance: overall variance of the whitened images.

    Returns:
      ``[num_patches, patch_size**2]`` array of ``dtype``.

    Raises:
      ValueError: ready patches with ``D != patch_size**2``, non-finite
        values, or ``num_patches`` larger than the number stored; plus the
        errors of the loaders and of :func:`extract_patches`.
    """
    if num_patches is not None:
        num_patches = _check_int('num_patches', num_patches)
    p = _check_int('patch_size', patch_size)
    dt = _check_float_dtype(dtype)
    loaded = images_lib.load_images(path, key=key)

    if isinstance(loaded, np.ndarray) and loaded.ndim == 2:
        n_stored, dim = loaded.shape
        if dim != p * p:
            raise ValueError(
                f'{path!s} holds a 2-D array of shape {loaded.shape}, read as '
                f'ready patches [N, D], but D={dim} != patch_size**2={p * p} '
                f'(save a single image as [1, rows, cols])')
        if not np.all(np.isfinite(loaded)):
            raise ValueError(f'ready patches in {path!s} contain NaN or '
                             f'infinite values')
        if num_patches is None or num_patches == n_stored:
            out = loaded
        elif num_patches > n_stored:
            raise ValueError(f'num_patches={num_patches} but {path!s} holds '
                             f'only {n_stored} patches')
        else:
            rng = np.random.default_rng(seed)
            rows = np.sort(rng.choice(n_stored, size=num_patches,
                                      replace=False))
            out = loaded[rows]
        logging.info('Using %d ready patches of dimension %d from %s.',
                     out.shape[0], dim, path)
        return np.array(out, dtype=dt, copy=True)

    image_list = _as_image_list(loaded)
    if whiten_images is None:
        is_mat = path is not None and os.fspath(path).lower().endswith('.mat')
        whiten_images = not (is_mat and (key is None or key == 'IMAGES'))
    images_lib._check_positive('f0_fraction', f0_fraction)
    images_lib._check_positive('variance', variance)
    logging.info('%s %d images (central squares), scaling to variance %g.',
                 'Whitening' if whiten_images else 'Not filtering (already '
                 'whitened)', len(image_list), variance)
    white = _whiten_image_list(image_list, f0_fraction, variance,
                               apply_filter=whiten_images)
    if num_patches is None:
        num_patches = NUM_PATCHES_PAPER
    return extract_patches(white, num_patches, patch_size=p, seed=seed,
                           dtype=dt)


def make_dataset(patches,
                 batch_size: int,
                 seed: int = 0,
                 shuffle: bool = True,
                 with_indices: bool = True,
                 drop_remainder: bool = False):
    """A ``tf.data.Dataset`` of minibatches of data points with their indices.

    Every epoch (every iteration over the dataset) visits each of the ``N``
    rows once; with ``shuffle`` the order is a permutation drawn with the op
    seed ``seed`` and ``reshuffle_each_iteration=True``, so successive epochs
    differ but the sequence of epochs is reproducible given ``seed`` (and the
    global TF seed, if one is set). Trainers that keep per-data-point
    variational parameters gather them with the indices.

    Args:
      patches: ``[N, D]`` floating array (NumPy or tensor), finite, ``N > 0``.
      batch_size: minibatch size ``B > 0``.
      seed: shuffle seed.
      shuffle: shuffle (else rows in order ``0..N-1``).
      with_indices: yield ``(indices, x)``; else only ``x``.
      drop_remainder: drop the last batch if it has fewer than ``B`` rows.

    Returns:
      ``tf.data.Dataset`` with elements ``(indices [B] int64, x [B, D])`` (or
      ``x`` only), ``x`` in the dtype of ``patches``; the last batch may be
      smaller unless ``drop_remainder``.

    Raises:
      ValueError: ``patches`` not 2-D, empty, or not finite; ``batch_size``
        not positive.
      TypeError: non-floating ``patches`` or non-integer ``batch_size``.
    """
    import tensorflow as tf  # Local: keeps numpy-only users TF-free.

    batch_size = _check_int('batch_size', batch_size)
    x = np.asarray(patches)
    if x.ndim != 2:
        raise ValueError(f'patches must be 2-D [N, D], got shape {x.shape}')
    if x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f'patches must be non-empty, got shape {x.shape}')
    if not np.issubdtype(x.dtype, np.floating):
        raise TypeError(f'patches must be floating, got dtype {x.dtype}')
    if not np.all(np.isfinite(x)):
        raise ValueError('patches contain NaN or infinite values')

    num = x.shape[0]
    data = tf.constant(x)
    ds = tf.data.Dataset.range(num)
    if shuffle:
        ds = ds.shuffle(num, seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size, drop_remainder=drop_remainder)
    if with_indices:
        ds = ds.map(lambda idx: (idx, tf.gather(data, idx)),
                    num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    else:
        ds = ds.map(lambda idx: tf.gather(data, idx),
                    num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return ds.prefetch(tf.data.AUTOTUNE)
