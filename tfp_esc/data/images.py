"""Loading and whitening of grey-scale natural images (SPEC section 9).

Images are handled as NumPy arrays of shape ``[rows, cols]``; a stack of
equally sized images is an array ``[num_images, rows, cols]``, images of
different sizes are a Python list of 2-D arrays.

Sources:

* :func:`default_images` -- photographs shipped with scikit-image
  (no download), see :data:`DEFAULT_IMAGE_NAMES`;
* :func:`load_images_mat` -- Olshausen's ``IMAGES.mat`` (MATLAB file, images
  along the last axis);
* :func:`load_image_folder` -- a folder of PNG/JPEG/TIFF/BMP files;
* :func:`load_array_file` -- ``.npy`` / ``.npz`` arrays;
* :func:`load_images` -- dispatches on the path.

Whitening (:func:`whiten`) follows Olshausen & Field (1996).
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import Sequence

import numpy as np
from absl import logging

__all__ = [
    'DEFAULT_IMAGE_NAMES',
    'IMAGE_SUFFIXES',
    'default_images',
    'load_array_file',
    'load_image_file',
    'load_image_folder',
    'load_images',
    'load_images_mat',
    'whiten',
]

PathLike = str | os.PathLike

#: ``skimage.data`` photographs used by :func:`default_images`. All of them are
#: 512x512 and ship inside the scikit-image package (no download): the
#: cameraman, the astronaut (RGB -> grey), an immunohistochemistry micrograph
#: (RGB -> grey), the lunar surface and the grass, gravel and brick textures.
DEFAULT_IMAGE_NAMES = (
    'camera',
    'astronaut',
    'immunohistochemistry',
    'moon',
    'grass',
    'gravel',
    'brick',
)

_DEFAULT_SIZE = 512

#: File suffixes (lower case) read by :func:`load_image_folder`.
IMAGE_SUFFIXES = ('.png', '.jpg', '.jpeg', '.tif', '.tiff', '.bmp')

_ARRAY_SUFFIXES = ('.npy', '.npz')
_MAT_SUFFIXES = ('.mat',)


# ---------------------------------------------------------------------------
# Whitening
# ---------------------------------------------------------------------------


def _whitening_filter(n: int, f0_fraction: float) -> np.ndarray:
    """Olshausen-Field filter on the ``rfft2`` grid of an n x n image.

    Returns:
      ``[n, n // 2 + 1]`` float64: ``rho * exp(-(rho / f0)**4)`` with ``rho``
      the radial frequency in cycles per image and ``f0 = f0_fraction * n``.
    """
    fy = np.fft.fftfreq(n) * n          # -n/2 .. n/2 (cycles per image)
    fx = np.fft.rfftfreq(n) * n         # 0 .. n/2
    rho = np.sqrt(fy[:, None] ** 2 + fx[None, :] ** 2)
    f0 = f0_fraction * n
    return rho * np.exp(-((rho / f0) ** 4))


def _filter_images(images: np.ndarray, f0_fraction: float) -> np.ndarray:
    """Applies the whitening filter to ``[k, n, n]`` float64 images.

    The filter is real and point-symmetric in frequency, so the filtered
    spectrum is Hermitian and ``irfft2(rfft2(x) * filt)`` equals the real part
    of ``ifft2(fft2(x) * filt)`` (the MATLAB recipe of Olshausen & Field).
    Images are processed one at a time to bound memory.
    """
    n = images.shape[-1]
    filt = _whitening_filter(n, f0_fraction)
    out = np.empty(images.shape, dtype=np.float64)
    for i in range(images.shape[0]):
        spectrum = np.fft.rfft2(images[i])
        out[i] = np.fft.irfft2(spectrum * filt, s=(n, n))
    return out


def _scale_jointly(arrays: Sequence[np.ndarray],
                   variance: float) -> list[np.ndarray]:
    """Subtracts the pooled mean and scales all arrays by ONE common factor.

    After scaling, the variance over all pixels of all arrays together equals
    ``variance``.

    Raises:
      ValueError: if the pooled variance is zero (e.g. constant images).
    """
    count = sum(a.size for a in arrays)
    mean = sum(float(np.sum(a)) for a in arrays) / count
    var = sum(float(np.sum((a - mean) ** 2)) for a in arrays) / count
    if not np.isfinite(var) or var <= 0.0:
        raise ValueError(
            f'cannot scale images to variance {variance}: their variance '
            f'after filtering is {var} (constant or degenerate images?)')
    scale = np.sqrt(variance / var)
    return [(a - mean) * scale for a in arrays]


def _check_positive(name: str, value: float) -> None:
    if not np.isfinite(value) or value <= 0:
        raise ValueError(f'{name} must be a positive finite number, got '
                         f'{value!r}')


def whiten(images: np.ndarray,
           f0_fraction: float = 0.4,
           variance: float = 0.1) -> np.ndarray:
    """Whitens square grey-scale images as Olshausen & Field (1996).

    Each image's 2-D spectrum is multiplied by ``rho * exp(-(rho / f0)**4)``,
    ``rho`` the radial frequency in cycles per image (``fftfreq(n) * n``, so
    ``|rho|`` runs over 0..n/2 per axis) and ``f0 = f0_fraction * n``; the real
    part of the inverse FFT is kept. The filter zeroes the DC component. Then
    the global mean is subtracted and all images are scaled JOINTLY (one
    common factor) so that the variance over all pixels of all images is
    ``variance``.

    Only square images are accepted; for rectangular images crop first (as
    :func:`tfp_esc.data.patches.whitened_patches` does: largest central
    square).

    Args:
      images: ``[num_images, n, n]`` real array (any numeric dtype).
      f0_fraction: cut-off of the low-pass part relative to ``n``.
      variance: overall variance of the result.

    Returns:
      ``[num_images, n, n]`` array; computed in float64 and returned in the
      input dtype if that is a floating dtype, float64 otherwise.

    Raises:
      ValueError: images not 3-D, not square, empty, non-finite, or
        ``f0_fraction`` / ``variance`` not positive, or constant images.
      TypeError: non-numeric images.
    """
    arr = np.asarray(images)
    if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number)
                                   or arr.dtype == bool):
        raise TypeError(f'images must be numeric, got dtype {arr.dtype}')
    if np.iscomplexobj(arr):
        raise TypeError('images must be real, got a complex array')
    if arr.ndim != 3:
        raise ValueError(
            f'images must be a 3-D array [num_images, n, n], got shape '
            f'{arr.shape}')
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f'images must be non-empty, got shape {arr.shape}')
    if arr.shape[1] != arr.shape[2]:
        raise ValueError(
            f'whiten needs square images [num_images, n, n], got shape '
            f'{arr.shape}; crop them to a central square first')
    _check_positive('f0_fraction', f0_fraction)
    _check_positive('variance', variance)
    out_dtype = (arr.dtype if np.issubdtype(arr.dtype, np.floating)
                 else np.dtype(np.float64))
    arr = arr.astype(np.float64, copy=False)
    if not np.all(np.isfinite(arr)):
        raise ValueError('images contain NaN or infinite values')
    filtered = _filter_images(arr, f0_fraction)
    (scaled,) = _scale_jointly([filtered], variance)
    return scaled.astype(out_dtype, copy=False)


# ---------------------------------------------------------------------------
# Loaders
# ---------------------------------------------------------------------------


def _as_path(path: PathLike) -> pathlib.Path:
    return pathlib.Path(os.fspath(path)).expanduser()


def _require_file(path: pathlib.Path) -> None:
    if not path.exists():
        raise FileNotFoundError(f'no such file: {str(path)!r}')
    if not path.is_file():
        raise FileNotFoundError(f'not a regular file: {str(path)!r}')


def _check_numeric(arr: np.ndarray, what: str) -> None:
    if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number)
                                   or arr.dtype == bool):
        raise TypeError(f'{what} must hold a numeric array, got dtype '
                        f'{arr.dtype}')
    if np.iscomplexobj(arr):
        raise TypeError(f'{what} must hold a real array, got dtype '
                        f'{arr.dtype}')


def load_images_mat(path: PathLike, key: str = 'IMAGES') -> np.ndarray:
    """Loads images from a MATLAB file such as Olshausen's ``IMAGES.mat``.

    ``IMAGES.mat`` stores ten 512x512 (already whitened) images as one array
    of shape ``[rows, cols, num_images]`` (images along the LAST axis) under
    the key ``'IMAGES'``; ``IMAGES_RAW.mat`` uses the key ``'IMAGESr'``. A
    2-D variable is read as a single image.

    Args:
      path: the ``.mat`` file (MATLAB v4-v7.2, as read by scipy.io.loadmat).
      key: the variable name inside the file.

    Returns:
      ``[num_images, rows, cols]`` float64 (C-contiguous).

    Raises:
      FileNotFoundError: ``path`` does not exist (the message names it).
      KeyError: ``key`` is not in the file (the message lists the keys).
      ValueError: the variable is not 2-D/3-D, the file cannot be read.
      TypeError: the variable is not a numeric array.
    """
    import scipy.io  # Local: keeps module import light.

    p = _as_path(path)
    _require_file(p)
    try:
        contents = scipy.io.loadmat(str(p))
    except NotImplementedError as e:  # MATLAB v7.3 = HDF5.
        raise ValueError(
            f'cannot read {str(p)!r} with scipy.io.loadmat (MATLAB v7.3/HDF5 '
            f'files are not supported; re-save with -v7): {e}') from e
    except Exception as e:
        raise ValueError(f'cannot read MATLAB file {str(p)!r}: {e}') from e
    keys = sorted(k for k in contents if not k.startswith('__'))
    if key not in contents or key.startswith('__'):
        raise KeyError(f'key {key!r} not found in {str(p)!r}; keys present: '
                       f'{keys}')
    arr = np.asarray(contents[key])
    _check_numeric(arr, f'{str(p)!r}[{key!r}]')
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim != 3:
        raise ValueError(
            f'{str(p)!r}[{key!r}] must have shape [rows, cols, num_images] '
            f'(or [rows, cols]), got shape {arr.shape}')
    images = np.ascontiguousarray(np.moveaxis(arr, -1, 0), dtype=np.float64)
    logging.info('Loaded %d images of %dx%d from %s[%r].', images.shape[0],
                 images.shape[1], images.shape[2], p, key)
    return images


def _to_grey(img: np.ndarray, name: str) -> np.ndarray:
    """Converts a decoded image to a 2-D float64 grey image.

    Integer images are scaled to [0, 1] (``img_as_float64``); float images are
    kept as stored. RGB goes through ``rgb2gray``; alpha channels are dropped.
    """
    from skimage import color, util

    img = np.asarray(img)
    _check_numeric(img, f'image file {name!r}')
    img = util.img_as_float64(img)
    if img.ndim == 2:
        grey = img
    elif img.ndim == 3 and img.shape[-1] in (3, 4):
        grey = color.rgb2gray(img[..., :3])
    elif img.ndim == 3 and img.shape[-1] in (1, 2):  # grey (+ alpha)
        grey = img[..., 0]
    else:
        raise ValueError(
            f'image file {name!r} has unsupported shape {img.shape} (expected '
            f'grey [rows, cols] or RGB/RGBA [rows, cols, 3|4]; multi-page '
            f'files are not supported)')
    return np.ascontiguousarray(grey, dtype=np.float64)


def load_image_file(path: PathLike, name: str = 'image') -> np.ndarray:
    """Loads one grey image: a ``.npy`` 2-D array or a PNG/JPEG/TIFF/BMP file.

    Image files are converted as by :func:`load_image_folder` (colour to grey,
    integers scaled to [0, 1]); a ``.npy`` array is kept as stored.

    Args:
      path: the file.
      name: what the file is, for error messages (e.g. ``'--mask'``).

    Returns:
      2-D array ``[rows, cols]`` (float64 for image files).

    Raises:
      FileNotFoundError: no file at ``path``.
      ValueError: an unknown suffix, an undecodable file or a ``.npy`` that is
        not 2-D (the message names the file).
    """
    from skimage import io

    file = _as_path(path)
    if not file.is_file():
        raise FileNotFoundError(f'{name} file {str(file)!r} does not exist')
    suffix = file.suffix.lower()
    if suffix == '.npy':
        try:
            array = np.load(file, allow_pickle=False)
        except Exception as e:
            raise ValueError(f'{name} file {str(file)!r} is not a readable '
                             f'.npy array ({e})') from None
        if array.ndim != 2:
            raise ValueError(f'{name} file {str(file)!r} must hold a 2-D '
                             f'array [rows, cols], got shape {array.shape}')
        return array
    if suffix not in IMAGE_SUFFIXES:
        raise ValueError(f'{name} file {str(file)!r} must be .npy or one of '
                         f'{", ".join(IMAGE_SUFFIXES)}')
    try:
        raw = io.imread(str(file))
    except Exception as e:
        raise ValueError(f'{name} file {str(file)!r} cannot be read as an '
                         f'image ({e})') from None
    return _to_grey(raw, str(file))


def load_image_folder(path: PathLike) -> list[np.ndarray]:
    """Loads every PNG/JPEG/TIFF/BMP file of a folder as a grey image.

    Files are taken in sorted name order (suffix matched case-insensitively,
    see :data:`IMAGE_SUFFIXES`); other files and sub-folders are ignored.
    Colour images are converted with ``skimage.color.rgb2gray`` (alpha
    dropped); integer images are scaled to [0, 1].

    Args:
      path: the folder.

    Returns:
      list of 2-D float64 arrays ``[rows_i, cols_i]`` (sizes may differ).

    Raises:
      FileNotFoundError: the folder does not exist (or is not a folder).
      ValueError: no image files in the folder; a file cannot be decoded or
        has an unsupported shape (the message names the file).
    """
    from skimage import io

    folder = _as_path(path)
    if not folder.is_dir():
        raise FileNotFoundError(f'no such folder: {str(folder)!r}')
    files = sorted(f for f in folder.iterdir()
                   if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ValueError(f'no image files ({", ".join(IMAGE_SUFFIXES)}) in '
                         f'folder {str(folder)!r}')
    images = []
    for f in files:
        try:
            raw = io.imread(str(f))
        except Exception as e:
            raise ValueError(f'cannot read image file {str(f)!r}: {e}') from e
        images.append(_to_grey(raw, str(f)))
    logging.info('Loaded %d images from folder %s.', len(images), folder)
    return images


def load_array_file(path: PathLike, key: str | None = None) -> np.ndarray:
    """Loads an array of images or of ready patches from ``.npy`` / ``.npz``.

    Args:
      path: a ``.npy`` or ``.npz`` file (read with ``allow_pickle=False``).
      key: for ``.npz``: the array's name; ``None`` takes the only array in
        the archive. Ignored for ``.npy``.

    Returns:
      the stored array unchanged (dtype as stored): either images
      ``[num_images, rows, cols]`` (3-D) or ready patches ``[N, D]`` (2-D);
      the caller decides by ``ndim``.

    Raises:
      FileNotFoundError: ``path`` does not exist.
      KeyError: ``key`` not in the ``.npz`` (the message lists the keys).
      ValueError: wrong suffix, ``key=None`` with several arrays in the
        ``.npz``, unreadable file, or an array that is not 2-D or 3-D.
      TypeError: non-numeric array.
    """
    p = _as_path(path)
    suffix = p.suffix.lower()
    if suffix not in _ARRAY_SUFFIXES:
        raise ValueError(f'unsupported suffix {suffix!r} for an array file; '
                         f'supported: {list(_ARRAY_SUFFIXES)}')
    _require_file(p)
    name = str(p)
    try:
        if suffix == '.npy':
            arr = np.load(p, allow_pickle=False)
        else:
            with np.load(p, allow_pickle=False) as archive:
                keys = list(archive.files)
                if key is None and len(keys) == 1:
                    key = keys[0]
                if key is not None and key in keys:
                    arr = archive[key]
    except Exception as e:  # OSError, ValueError, EOFError, BadZipFile...
        raise ValueError(f'cannot read array file {name!r}: {e}') from e
    if suffix == '.npz':
        if key is None:
            raise ValueError(f'{name!r} holds {len(keys)} arrays {keys}; pass '
                             f'key= to choose one')
        if key not in keys:
            raise KeyError(f'key {key!r} not found in {name!r}; keys present: '
                           f'{keys}')
        name = f'{name}[{key!r}]'
    arr = np.asarray(arr)
    _check_numeric(arr, name)
    if arr.ndim not in (2, 3):
        raise ValueError(
            f'{name!r} must hold images [num_images, rows, cols] or patches '
            f'[N, D], got shape {arr.shape}')
    logging.info('Loaded array of shape %s from %s.', arr.shape, name)
    return arr


def _center_crop(img: np.ndarray, rows: int, cols: int) -> np.ndarray:
    r0 = (img.shape[0] - rows) // 2
    c0 = (img.shape[1] - cols) // 2
    return img[r0:r0 + rows, c0:c0 + cols]


def default_images() -> np.ndarray:
    """The embedded default images: scikit-image's bundled photographs.

    Loads :data:`DEFAULT_IMAGE_NAMES` from ``skimage.data`` (all ship with the
    package, no download), converts colour ones with ``rgb2gray``, scales to
    [0, 1] and centre-crops to 512x512. Images that fail to load (e.g. an old
    scikit-image that would need to download them) or are smaller than 512 in
    either dimension are skipped with a warning.

    Returns:
      ``[num_images, 512, 512]`` float64 in [0, 1] (7 images with a current
      scikit-image).

    Raises:
      RuntimeError: none of the images could be loaded.
    """
    from skimage import data

    images = []
    for name in DEFAULT_IMAGE_NAMES:
        try:
            raw = getattr(data, name)()
        except (OSError, ImportError, ValueError, RuntimeError) as e:
            # Missing data file, or an old skimage that needs a download.
            logging.warning('Skipping skimage.data.%s: %s', name, e)
            continue
        grey = _to_grey(raw, f'skimage.data.{name}')
        if min(grey.shape) < _DEFAULT_SIZE:
            logging.warning('Skipping skimage.data.%s: shape %s smaller than '
                            '%d.', name, grey.shape, _DEFAULT_SIZE)
            continue
        images.append(_center_crop(grey, _DEFAULT_SIZE, _DEFAULT_SIZE))
    if not images:
        raise RuntimeError('none of the default skimage.data images '
                           f'{DEFAULT_IMAGE_NAMES} could be loaded')
    out = np.clip(np.stack(images), 0.0, 1.0)
    logging.info('Loaded %d default images from skimage.data.', len(images))
    return out


def load_images(path: PathLike | None = None,
                key: str | None = None) -> np.ndarray | list[np.ndarray]:
    """Loads images from ``path``, dispatching on what it is.

    * ``None`` -> :func:`default_images` (``[7, 512, 512]`` array);
    * a folder -> :func:`load_image_folder` (list of 2-D arrays);
    * ``.mat`` -> :func:`load_images_mat` with ``key`` (default ``'IMAGES'``),
      ``[num_images, rows, cols]`` float64;
    * ``.npy`` / ``.npz`` -> :func:`load_array_file` with ``key``: the stored
      array unchanged, 3-D images or 2-D ready patches ``[N, D]`` (the caller
      decides by ``ndim``).

    Args:
      path: file or folder, or ``None`` for the embedded default.
      key: variable name for ``.mat`` / ``.npz`` files.

    Returns:
      an array ``[num_images, rows, cols]`` or a list of 2-D arrays (folders),
      or for ``.npy``/``.npz`` possibly a 2-D patch array.

    Raises:
      FileNotFoundError: ``path`` does not exist.
      ValueError: unsupported suffix (message names it and the supported
        ones), plus the errors of the individual loaders.
    """
    if path is None:
        return default_images()
    p = _as_path(path)
    if not p.exists():
        raise FileNotFoundError(f'no such file or folder: {str(p)!r}')
    if p.is_dir():
        return load_image_folder(p)
    suffix = p.suffix.lower()
    if suffix in _MAT_SUFFIXES:
        return load_images_mat(p, key='IMAGES' if key is None else key)
    if suffix in _ARRAY_SUFFIXES:
        return load_array_file(p, key=key)
    supported = list(_MAT_SUFFIXES + _ARRAY_SUFFIXES) + ['<folder>']
    raise ValueError(f'unsupported file suffix {suffix!r} of {str(p)!r}; '
                     f'supported: {supported}')
