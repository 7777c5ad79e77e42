"""Tests of tfp_esc.data.images: whitening and the image loaders."""

import numpy as np
import pytest
import scipy.io
from skimage import color, io

from tfp_esc.data import images


def _radial_power(img):
    """Radially averaged power spectrum; returns (rho, power) for rho >= 1."""
    n = img.shape[0]
    f = np.fft.fftfreq(n) * n
    rho = np.sqrt(f[:, None] ** 2 + f[None, :] ** 2)
    power = np.abs(np.fft.fft2(img)) ** 2
    bins = np.rint(rho).astype(int).ravel()
    sums = np.bincount(bins, weights=power.ravel())
    counts = np.bincount(bins)
    radii = np.arange(sums.size)
    keep = (radii >= 1) & (counts > 0)
    return radii[keep], sums[keep] / counts[keep]


def _log_slope(img, lo, hi):
    rho, power = _radial_power(img)
    sel = (rho > lo) & (rho < hi)
    return np.polyfit(np.log(rho[sel]), np.log(power[sel]), 1)[0]


def _one_over_f_image(n, seed):
    """White noise with its spectrum multiplied by 1/rho (random phases)."""
    rng = np.random.default_rng(seed)
    f = np.fft.fftfreq(n) * n
    rho = np.sqrt(f[:, None] ** 2 + f[None, :] ** 2)
    amp = np.divide(1.0, rho, out=np.zeros_like(rho), where=rho > 0)
    return np.real(np.fft.ifft2(np.fft.fft2(rng.normal(size=(n, n))) * amp))


def _olshausen_reference(imgs, f0_fraction=0.4, variance=0.1):
    """The MATLAB recipe of Olshausen & Field (make-your-own-images)."""
    n = imgs.shape[-1]
    fx, fy = np.meshgrid(np.arange(-n // 2, n // 2), np.arange(-n // 2, n // 2))
    rho = np.sqrt(fx * fx + fy * fy)
    f0 = f0_fraction * n
    filt = np.fft.fftshift(rho * np.exp(-((rho / f0) ** 4)))
    out = np.real(np.fft.ifft2(np.fft.fft2(imgs) * filt))
    out = out - out.mean()
    return out * np.sqrt(variance / out.var())


# --------------------------------------------------------------------------
# whiten
# --------------------------------------------------------------------------


def test_whiten_flattens_one_over_f_spectrum():
    n = 256
    img = _one_over_f_image(n, seed=1)
    lo, hi = 0.05 * n, 0.25 * n
    raw_slope = _log_slope(img, lo, hi)
    assert -2.2 < raw_slope < -1.8, raw_slope   # 1/f amplitude: power ~ rho^-2

    white = images.whiten(img[None])
    assert white.shape == (1, n, n)
    assert white.dtype == np.float64
    white_slope = _log_slope(white[0], lo, hi)
    assert abs(white_slope) < 0.3, white_slope  # flat spectrum
    assert abs(white.var() - 0.1) < 1e-10
    assert abs(white.mean()) < 1e-12


def test_whiten_matches_olshausen_matlab_recipe():
    rng = np.random.default_rng(0)
    imgs = rng.uniform(size=(3, 32, 32))
    np.testing.assert_allclose(images.whiten(imgs),
                               _olshausen_reference(imgs), atol=1e-12)
    odd = rng.uniform(size=(2, 15, 15))
    # For odd n, -n//2..n//2 is the fftshift-ed fftfreq grid too.
    fx = np.fft.fftshift(np.fft.fftfreq(15) * 15)
    assert fx[0] == -7 and fx[-1] == 7
    ref_f = np.fft.fftfreq(15) * 15
    rho = np.sqrt(ref_f[:, None] ** 2 + ref_f[None, :] ** 2)
    filt = rho * np.exp(-((rho / 6.0) ** 4))
    ref = np.real(np.fft.ifft2(np.fft.fft2(odd) * filt))
    ref = (ref - ref.mean()) * np.sqrt(0.1 / ref.var())
    np.testing.assert_allclose(images.whiten(odd), ref, atol=1e-12)


def test_whiten_scales_jointly_and_keeps_dtype():
    rng = np.random.default_rng(2)
    imgs = rng.uniform(size=(2, 16, 16))
    imgs[1] *= 10.0        # second image has 100x the power
    white = images.whiten(imgs, variance=0.5)
    assert abs(white.var() - 0.5) < 1e-10
    # One common factor: the ratio of the variances is preserved.
    single = [images.whiten(imgs[i:i + 1]) for i in range(2)]
    ratio = white[1].var() / white[0].var()
    assert ratio > 50
    np.testing.assert_allclose(
        white[0] / np.sqrt(white[0].var()), single[0][0] /
        np.sqrt(single[0][0].var()), atol=1e-10)

    w32 = images.whiten(imgs.astype(np.float32))
    assert w32.dtype == np.float32
    wint = images.whiten((imgs * 100).astype(np.uint8))
    assert wint.dtype == np.float64


@pytest.mark.parametrize('shape, match', [
    ((2, 8, 9), 'square'),
    ((8, 8), '3-D'),
    ((0, 8, 8), 'non-empty'),
])
def test_whiten_rejects_bad_shapes(shape, match):
    with pytest.raises(ValueError, match=match):
        images.whiten(np.ones(shape))


def test_whiten_rejects_bad_values():
    x = np.random.default_rng(0).uniform(size=(1, 8, 8))
    x[0, 1, 1] = np.nan
    with pytest.raises(ValueError, match='NaN'):
        images.whiten(x)
    with pytest.raises(ValueError, match='variance'):
        images.whiten(np.ones((1, 8, 8)))        # constant -> all zero
    with pytest.raises(ValueError, match='f0_fraction'):
        images.whiten(np.zeros((1, 8, 8)) + 1, f0_fraction=0.0)


# --------------------------------------------------------------------------
# .mat
# --------------------------------------------------------------------------


def test_load_images_mat_round_trip(tmp_path):
    rng = np.random.default_rng(3)
    stack = rng.normal(size=(32, 24, 3))          # images on the LAST axis
    path = tmp_path / 'IMAGES.mat'
    scipy.io.savemat(path, {'IMAGES': stack})
    loaded = images.load_images_mat(path)
    assert loaded.shape == (3, 32, 24)
    assert loaded.dtype == np.float64
    for i in range(3):
        np.testing.assert_array_equal(loaded[i], stack[:, :, i])
    np.testing.assert_array_equal(images.load_images(path), loaded)
    np.testing.assert_array_equal(images.load_images(str(path)), loaded)


def test_load_images_mat_errors(tmp_path):
    missing = tmp_path / 'nope.mat'
    with pytest.raises(FileNotFoundError, match='nope.mat'):
        images.load_images_mat(missing)
    path = tmp_path / 'raw.mat'
    scipy.io.savemat(path, {'IMAGESr': np.zeros((4, 4, 2)),
                            'other': np.zeros(3)})
    with pytest.raises(KeyError, match=r"'IMAGES' not found.*IMAGESr.*other"):
        images.load_images_mat(path)
    assert images.load_images_mat(path, key='IMAGESr').shape == (2, 4, 4)
    # loadmat returns vectors as [1, 3]: a 2-D variable is one image.
    assert images.load_images_mat(path, key='other').shape == (1, 1, 3)
    path4 = tmp_path / 'four.mat'
    scipy.io.savemat(path4, {'IMAGES': np.zeros((2, 2, 2, 2))})
    with pytest.raises(ValueError, match=r'got shape \(2, 2, 2, 2\)'):
        images.load_images_mat(path4)
    bad = tmp_path / 'garbage.mat'
    bad.write_bytes(b'not a matlab file at all')
    with pytest.raises(ValueError, match='garbage.mat'):
        images.load_images_mat(bad)


# --------------------------------------------------------------------------
# folders
# --------------------------------------------------------------------------


def test_load_image_folder_grey_rgb_rgba(tmp_path):
    rng = np.random.default_rng(4)
    grey = rng.integers(0, 256, size=(12, 10), dtype=np.uint8)
    rgb = rng.integers(0, 256, size=(8, 9, 3), dtype=np.uint8)
    rgba = rng.integers(0, 256, size=(7, 6, 4), dtype=np.uint8)
    io.imsave(tmp_path / 'a_grey.png', grey, check_contrast=False)
    io.imsave(tmp_path / 'b_rgb.png', rgb, check_contrast=False)
    io.imsave(tmp_path / 'c_rgba.png', rgba, check_contrast=False)
    io.imsave(tmp_path / 'd_grey.bmp', grey[:5, :5], check_contrast=False)
    (tmp_path / 'notes.txt').write_text('ignored')
    (tmp_path / 'sub').mkdir()

    loaded = images.load_image_folder(tmp_path)
    assert isinstance(loaded, list) and len(loaded) == 4
    assert [im.shape for im in loaded] == [(12, 10), (8, 9), (7, 6), (5, 5)]
    assert all(im.dtype == np.float64 for im in loaded)
    np.testing.assert_allclose(loaded[0], grey / 255.0, atol=1e-12)
    np.testing.assert_allclose(loaded[1], color.rgb2gray(rgb), atol=1e-12)
    np.testing.assert_allclose(loaded[2], color.rgb2gray(rgba[..., :3]),
                               atol=1e-12)
    np.testing.assert_allclose(loaded[3], grey[:5, :5] / 255.0, atol=1e-12)
    assert all(0.0 <= im.min() and im.max() <= 1.0 for im in loaded)

    via_dispatch = images.load_images(tmp_path)
    assert len(via_dispatch) == 4
    np.testing.assert_array_equal(via_dispatch[1], loaded[1])


# imageio tries every plugin on the broken file; one of them warns.
@pytest.mark.filterwarnings('ignore::DeprecationWarning')
def test_load_image_folder_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match='no such folder'):
        images.load_image_folder(tmp_path / 'missing')
    (tmp_path / 'readme.txt').write_text('no images here')
    with pytest.raises(ValueError, match='no image files'):
        images.load_image_folder(tmp_path)
    (tmp_path / 'broken.png').write_bytes(b'\x89PNG not really')
    with pytest.raises(ValueError, match='broken.png'):
        images.load_image_folder(tmp_path)


# --------------------------------------------------------------------------
# .npy / .npz and dispatch
# --------------------------------------------------------------------------


def test_load_array_file_round_trip(tmp_path):
    rng = np.random.default_rng(5)
    imgs = rng.normal(size=(2, 6, 5)).astype(np.float32)
    patches = rng.normal(size=(7, 16))
    np.save(tmp_path / 'imgs.npy', imgs)
    np.savez(tmp_path / 'one.npz', patches=patches)
    np.savez(tmp_path / 'two.npz', a=imgs, b=patches)

    out = images.load_array_file(tmp_path / 'imgs.npy')
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, imgs)
    np.testing.assert_array_equal(images.load_array_file(tmp_path / 'one.npz'),
                                  patches)
    np.testing.assert_array_equal(
        images.load_array_file(tmp_path / 'two.npz', key='b'), patches)
    np.testing.assert_array_equal(images.load_images(tmp_path / 'two.npz',
                                                     key='a'), imgs)
    with pytest.raises(ValueError, match=r"2 arrays \['a', 'b'\].*key="):
        images.load_array_file(tmp_path / 'two.npz')
    with pytest.raises(KeyError, match=r"'c' not found.*\['a', 'b'\]"):
        images.load_array_file(tmp_path / 'two.npz', key='c')
    with pytest.raises(FileNotFoundError, match='absent.npy'):
        images.load_array_file(tmp_path / 'absent.npy')
    np.save(tmp_path / 'vec.npy', np.zeros(5))
    with pytest.raises(ValueError, match=r'got shape \(5,\)'):
        images.load_array_file(tmp_path / 'vec.npy')


def test_load_images_dispatch_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match='missing.mat'):
        images.load_images(tmp_path / 'missing.mat')
    odd = tmp_path / 'images.h5'
    odd.write_bytes(b'')
    with pytest.raises(ValueError, match=r"unsupported file suffix '\.h5'.*"
                                         r"\.mat.*\.npy.*\.npz"):
        images.load_images(odd)


# --------------------------------------------------------------------------
# default images
# --------------------------------------------------------------------------


def test_default_images():
    imgs = images.default_images()
    assert imgs.ndim == 3 and imgs.shape[1:] == (512, 512)
    assert 6 <= imgs.shape[0] <= len(images.DEFAULT_IMAGE_NAMES)
    assert imgs.dtype == np.float64
    assert imgs.min() >= 0.0 and imgs.max() <= 1.0
    # Real photographs, not constant images.
    assert np.all(imgs.reshape(imgs.shape[0], -1).std(axis=1) > 0.02)
    white = images.whiten(imgs)
    assert abs(white.var() - 0.1) < 1e-10
