"""Tests of tfp_esc.data.patches: extraction, whitened patches, tf.data."""

import numpy as np
import pytest
import scipy.io
from hypothesis import given, settings
from hypothesis import strategies as st
from skimage import io

from tfp_esc.data import images as images_lib
from tfp_esc.data import patches


def _small_images(seed=0):
    rng = np.random.default_rng(seed)
    return [rng.normal(size=(9, 11)), rng.normal(size=(6, 6)),
            rng.normal(size=(12, 7))]


def _positions(img, patch, p):
    """All top-left corners at which ``patch`` (flattened) occurs in img."""
    win = np.lib.stride_tricks.sliding_window_view(img, (p, p))
    win = win.reshape(win.shape[0], win.shape[1], p * p)
    return np.argwhere(np.all(win == patch, axis=-1))


# --------------------------------------------------------------------------
# extract_patches
# --------------------------------------------------------------------------


def test_extract_patches_shape_dtype_and_determinism():
    imgs = _small_images()
    a = patches.extract_patches(imgs, 50, patch_size=4, seed=7)
    b = patches.extract_patches(imgs, 50, patch_size=4, seed=7)
    c = patches.extract_patches(imgs, 50, patch_size=4, seed=8)
    assert a.shape == (50, 16) and a.dtype == np.float32
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    d = patches.extract_patches(imgs, 50, patch_size=4, seed=7,
                                dtype=np.float64)
    assert d.dtype == np.float64
    np.testing.assert_array_equal(d.astype(np.float32), a)


def test_each_patch_occurs_in_some_image():
    imgs = _small_images(1)
    p = 4
    out = patches.extract_patches(imgs, 60, patch_size=p, seed=3,
                                  dtype=np.float64)
    found_in = set()
    for patch in out:
        hits = [i for i, im in enumerate(imgs)
                if len(_positions(im, patch, p))]
        assert len(hits) == 1          # continuous values: unique match
        found_in.add(hits[0])
    assert found_in == {0, 1, 2}


def test_patches_of_3d_array_are_row_major():
    img = np.arange(5 * 6, dtype=np.float64).reshape(1, 5, 6)
    out = patches.extract_patches(img, 30, patch_size=3, seed=0,
                                  dtype=np.float64)
    for patch in out:
        r, c = divmod(int(patch[0]), 6)
        np.testing.assert_array_equal(patch, img[0, r:r + 3, c:c + 3].ravel())


def test_positions_and_images_are_uniform():
    # Two 5x5 images, 4x4 patches: 2 images x 4 corners, each 1/8.
    imgs = np.arange(2 * 25, dtype=np.float64).reshape(2, 5, 5)
    n = 8000
    out = patches.extract_patches(imgs, n, patch_size=4, seed=11,
                                  dtype=np.float64)
    _, counts = np.unique(out[:, 0], return_counts=True)
    assert counts.size == 8
    expected = n / 8
    # ~5 standard deviations (sd = sqrt(n p (1-p)) ~ 29.6).
    assert np.all(np.abs(counts - expected) < 150), counts


@settings(max_examples=25, deadline=None)
@given(rows=st.integers(1, 9), cols=st.integers(1, 9),
       p=st.integers(1, 9), n=st.integers(1, 20), seed=st.integers(0, 99))
def test_extract_patches_property(rows, cols, p, n, seed):
    img = np.random.default_rng(seed).normal(size=(rows, cols))
    if p > min(rows, cols):
        with pytest.raises(ValueError, match='smaller than the patch'):
            patches.extract_patches([img], n, patch_size=p, seed=seed)
        return
    out = patches.extract_patches([img], n, patch_size=p, seed=seed,
                                  dtype=np.float64)
    assert out.shape == (n, p * p)
    for patch in out:
        assert len(_positions(img, patch, p)) >= 1


def test_extract_patches_errors():
    imgs = _small_images()
    with pytest.raises(ValueError, match='num_patches must be >= 1'):
        patches.extract_patches(imgs, 0)
    with pytest.raises(ValueError, match='patch_size must be >= 1'):
        patches.extract_patches(imgs, 5, patch_size=-2)
    with pytest.raises(TypeError, match='num_patches must be an integer'):
        patches.extract_patches(imgs, 2.5)
    with pytest.raises(ValueError,
                       match=r'image 1 of shape \(6, 6\) is smaller than '
                             r'the patch size 7x7'):
        patches.extract_patches(imgs, 5, patch_size=7)
    bad = [im.copy() for im in imgs]
    bad[2][3, 3] = np.nan
    with pytest.raises(ValueError, match='image 2 contains NaN'):
        patches.extract_patches(bad, 5, patch_size=3)
    bad[2][3, 3] = np.inf
    with pytest.raises(ValueError, match='image 2 contains NaN or infinite'):
        patches.extract_patches(bad, 5, patch_size=3)
    with pytest.raises(ValueError, match=r'image 1 must be 2-D'):
        patches.extract_patches([imgs[0], np.zeros((4, 4, 3))], 5,
                                patch_size=2)
    with pytest.raises(ValueError, match='3-D'):
        patches.extract_patches(np.zeros((8, 8)), 5, patch_size=2)
    with pytest.raises(ValueError, match='empty'):
        patches.extract_patches([], 5, patch_size=2)
    with pytest.raises(TypeError, match='floating dtype'):
        patches.extract_patches(imgs, 5, patch_size=2, dtype=np.int32)


# --------------------------------------------------------------------------
# whitened_patches
# --------------------------------------------------------------------------


def test_whitened_patches_from_mat(tmp_path):
    rng = np.random.default_rng(6)
    stack = rng.normal(size=(32, 32, 3))
    path = tmp_path / 'IMAGES.mat'
    scipy.io.savemat(path, {'IMAGES': stack})
    # IMAGES.mat is pre-whitened: by default only rescaled jointly.
    out = patches.whitened_patches(path, num_patches=40, patch_size=8,
                                   seed=1, dtype=np.float64)
    assert out.shape == (40, 64) and out.dtype == np.float64
    imgs = np.moveaxis(stack, -1, 0)
    scaled = (imgs - imgs.mean()) * np.sqrt(0.1 / imgs.var())
    np.testing.assert_allclose(
        out, patches.extract_patches(scaled, 40, patch_size=8, seed=1,
                                     dtype=np.float64), atol=1e-12)
    forced = patches.whitened_patches(path, num_patches=40, patch_size=8,
                                      seed=1, dtype=np.float64,
                                      whiten_images=True)
    np.testing.assert_allclose(
        forced, patches.extract_patches(images_lib.whiten(imgs), 40,
                                        patch_size=8, seed=1,
                                        dtype=np.float64), atol=1e-12)
    again = patches.whitened_patches(path, num_patches=40, patch_size=8,
                                     seed=1, dtype=np.float64,
                                     whiten_images=True)
    np.testing.assert_array_equal(forced, again)


def test_whitened_patches_folder_crops_and_scales_jointly(tmp_path):
    rng = np.random.default_rng(7)
    a = rng.integers(0, 256, size=(20, 26), dtype=np.uint8)
    b = rng.integers(0, 256, size=(16, 16), dtype=np.uint8)
    io.imsave(tmp_path / 'a.png', a, check_contrast=False)
    io.imsave(tmp_path / 'b.png', b, check_contrast=False)
    out = patches.whitened_patches(tmp_path, num_patches=30, patch_size=4,
                                   seed=2)
    assert out.shape == (30, 16) and out.dtype == np.float32

    a_sq = images_lib.whiten((a[:, 3:23] / 255.0)[None], variance=1.0)[0]
    b_sq = images_lib.whiten((b / 255.0)[None], variance=1.0)[0]
    # Undo the per-call scaling: filter only, then one joint factor.
    fa = images_lib._filter_images((a[:, 3:23] / 255.0)[None], 0.4)[0]
    fb = images_lib._filter_images((b / 255.0)[None], 0.4)[0]
    np.testing.assert_allclose(a_sq, (fa - fa.mean()) / fa.std(), atol=1e-10)
    np.testing.assert_allclose(b_sq, (fb - fb.mean()) / fb.std(), atol=1e-10)
    pooled = np.concatenate([fa.ravel(), fb.ravel()])
    s = np.sqrt(0.1 / pooled.var())
    ref = patches.extract_patches([(fa - pooled.mean()) * s,
                                   (fb - pooled.mean()) * s], 30,
                                  patch_size=4, seed=2)
    np.testing.assert_allclose(out, ref, atol=1e-6)


def test_whitened_patches_ready_patches(tmp_path):
    rng = np.random.default_rng(8)
    ready = rng.normal(size=(50, 16))
    np.save(tmp_path / 'p.npy', ready)
    out = patches.whitened_patches(tmp_path / 'p.npy', patch_size=4)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, ready.astype(np.float32))
    sub = patches.whitened_patches(tmp_path / 'p.npy', num_patches=10,
                                   patch_size=4, seed=3, dtype=np.float64)
    assert sub.shape == (10, 16)
    rows = [int(np.flatnonzero(np.all(ready == r, axis=1))[0]) for r in sub]
    assert rows == sorted(set(rows))          # distinct, in stored order
    np.testing.assert_array_equal(
        sub, patches.whitened_patches(tmp_path / 'p.npy', num_patches=10,
                                      patch_size=4, seed=3, dtype=np.float64))
    with pytest.raises(ValueError, match='D=16 != patch_size\\*\\*2=25'):
        patches.whitened_patches(tmp_path / 'p.npy', patch_size=5)
    with pytest.raises(ValueError, match='holds only 50 patches'):
        patches.whitened_patches(tmp_path / 'p.npy', num_patches=51,
                                 patch_size=4)
    ready[3, 3] = np.nan
    np.save(tmp_path / 'nan.npy', ready)
    with pytest.raises(ValueError, match='NaN'):
        patches.whitened_patches(tmp_path / 'nan.npy', patch_size=4)


def test_whitened_patches_default_images_deterministic():
    a = patches.whitened_patches(None, num_patches=200, seed=4)
    b = patches.whitened_patches(None, num_patches=200, seed=4)
    assert a.shape == (200, 256) and a.dtype == np.float32
    np.testing.assert_array_equal(a, b)
    assert 0.01 < a.var() < 1.0       # whitened images have variance 0.1


# --------------------------------------------------------------------------
# make_dataset
# --------------------------------------------------------------------------


def _epoch(ds):
    idx, xs = [], []
    for i, x in ds:
        idx.append(i.numpy())
        xs.append(x.numpy())
    return idx, xs


def test_make_dataset_visits_every_index_once():
    data = np.random.default_rng(9).normal(size=(23, 5)).astype(np.float32)
    ds = patches.make_dataset(data, batch_size=5, seed=1)
    orders = []
    for _ in range(2):
        idx, xs = _epoch(ds)
        assert [len(i) for i in idx] == [5, 5, 5, 5, 3]
        flat = np.concatenate(idx)
        assert flat.dtype == np.int64
        np.testing.assert_array_equal(np.sort(flat), np.arange(23))
        np.testing.assert_array_equal(np.concatenate(xs), data[flat])
        assert xs[0].dtype == np.float32
        orders.append(flat)
    assert not np.array_equal(orders[0], orders[1])   # reshuffled

    # Same seed -> same sequence of epochs; another seed -> another order.
    ds2 = patches.make_dataset(data, batch_size=5, seed=1)
    for k in range(2):
        np.testing.assert_array_equal(np.concatenate(_epoch(ds2)[0]),
                                      orders[k])
    other = np.concatenate(_epoch(patches.make_dataset(data, 5, seed=2))[0])
    assert not np.array_equal(other, orders[0])


def test_make_dataset_options():
    data = np.arange(14, dtype=np.float64).reshape(7, 2)
    ds = patches.make_dataset(data, batch_size=3, shuffle=False)
    idx, xs = _epoch(ds)
    np.testing.assert_array_equal(np.concatenate(idx), np.arange(7))
    assert xs[0].dtype == np.float64
    dropped = patches.make_dataset(data, batch_size=3, drop_remainder=True)
    assert [len(i) for i, _ in dropped] == [3, 3]
    only_x = patches.make_dataset(data, batch_size=4, shuffle=False,
                                  with_indices=False)
    batches = [x.numpy() for x in only_x]
    np.testing.assert_array_equal(np.concatenate(batches), data)


def test_make_dataset_errors():
    data = np.zeros((4, 3), dtype=np.float32)
    with pytest.raises(ValueError, match='batch_size must be >= 1'):
        patches.make_dataset(data, batch_size=0)
    with pytest.raises(ValueError, match='2-D'):
        patches.make_dataset(np.zeros(4, dtype=np.float32), batch_size=2)
    bad = data.copy()
    bad[1, 1] = np.nan
    with pytest.raises(ValueError, match='NaN'):
        patches.make_dataset(bad, batch_size=2)
    with pytest.raises(TypeError, match='floating'):
        patches.make_dataset(np.zeros((4, 3), dtype=np.int32), batch_size=2)
