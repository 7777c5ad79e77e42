"""scripts/restore_image.py as a user meets it: outputs, metrics, errors."""

import json
import re
import stat
import subprocess
import sys

import numpy as np
import pytest
from skimage import io

from test_scripts import _CPP_LOG, _check_errors, _sweep


def _scene(size=32):
  rows, cols = np.mgrid[0:size, 0:size] / size
  return np.clip(0.5 + 0.25 * np.sin(7 * rows) * np.cos(5 * cols)
                 + 0.2 * (rows > 0.5), 0.05, 0.95)


@pytest.fixture(scope='module')
def files(tmp_path_factory):
  folder = tmp_path_factory.mktemp('restore')
  clean = _scene()
  rng = np.random.default_rng(0)
  np.save(folder / 'clean.npy', clean)
  np.save(folder / 'noisy.npy', clean + 0.1 * rng.standard_normal(clean.shape))
  missing = rng.random(clean.shape) < 0.5
  np.save(folder / 'missing.npy', missing)
  np.save(folder / 'damaged.npy', np.where(missing, 0.0, clean))
  io.imsave(folder / 'clean.png', (255 * clean).astype(np.uint8),
            check_contrast=False)
  (folder / 'notes.txt').write_text('not an image')
  np.save(folder / 'small_mask.npy', np.zeros((8, 8), bool))
  np.save(folder / 'all_missing.npy', np.ones_like(missing))
  np.save(folder / 'bright.npy', 255 * clean)
  return folder


def _run(*args):
  return subprocess.run([sys.executable, 'scripts/restore_image.py', *args],
                        capture_output=True, text=True, check=False)


def test_blind_denoising_writes_every_output(files, tmp_path):
  out = tmp_path / 'out'
  run = _run(f'--image={files / "noisy.npy"}', f'--clean={files / "clean.npy"}',
             '--patch_size=5', '--iterations=5', '--num_classes=4',
             f'--output_dir={out}')
  assert run.returncode == 0, run.stderr
  assert not _CPP_LOG.search(run.stderr)
  names = {'restored.npy', 'restored.png', 'uncertainty.npy',
           'uncertainty.png', 'restoration.png', 'metrics.json'}
  assert names <= {p.name for p in out.iterdir()}
  assert len({stat.S_IMODE((out / n).stat().st_mode) for n in names}) == 1
  metrics = json.loads((out / 'metrics.json').read_text())
  restored = np.load(out / 'restored.npy')
  uncertainty = np.load(out / 'uncertainty.npy')
  clean = np.load(files / 'clean.npy')
  assert restored.shape == uncertainty.shape == clean.shape
  assert np.all(uncertainty > 0)
  # The metrics are those of the written arrays.
  want = 10 * np.log10(1 / np.mean((restored - clean)**2))
  assert metrics['psnr'] == pytest.approx(want, rel=1e-12)
  assert metrics['psnr'] > metrics['psnr_input'] + 3
  inside = np.abs(restored - clean) <= 1.959964 * uncertainty
  assert metrics['coverage_95'] == pytest.approx(inside.mean())
  assert metrics['noise_learned'] and 0.07 < metrics['noise_std'] < 0.13
  assert metrics['seconds'] > 0
  assert metrics['error_factors'] is None  # denoising: no step 5c


def test_inpainting_with_exact_pixels_keeps_them(files, tmp_path):
  out = tmp_path / 'out'
  run = _run(f'--image={files / "damaged.npy"}',
             f'--mask={files / "missing.npy"}', '--noise_std=0',
             f'--clean={files / "clean.png"}', '--patch_size=5',
             '--iterations=5', '--num_classes=4', f'--output_dir={out}')
  assert run.returncode == 0, run.stderr
  restored = np.load(out / 'restored.npy')
  observed = ~np.load(files / 'missing.npy')
  np.testing.assert_array_equal(restored[observed],
                                np.load(files / 'damaged.npy')[observed])
  metrics = json.loads((out / 'metrics.json').read_text())
  assert metrics['noise_std'] == 0 and metrics['coverage_pixels'] == 'missing'
  # The held-out error factors by window position (restoration step 5c).
  factors = np.array(metrics['error_factors'])
  assert factors.shape == (5, 5) and np.all(factors > 0)
  np.testing.assert_allclose(factors, factors.T, rtol=1e-12)
  # ... and the held-out pixels' factors by variance, variances ascending.
  by_variance = np.array(metrics['variance_factors'])
  assert by_variance.ndim == 2 and by_variance.shape[1] == 2
  assert np.all(np.diff(by_variance[:, 0]) > 0) and np.all(by_variance > 0)


def test_bad_input_is_one_line_before_any_work(files, tmp_path):
  image = f'--image={files / "noisy.npy"}'
  cases = {
      (): r'--image must be set',
      (image, f'--mask={files / "small_mask.npy"}'): r'mask has shape',
      (image, f'--mask={files / "all_missing.npy"}'): r'every pixel missing',
      (f'--image={files / "bright.npy"}',): r'\[0, 1\]',
      (f'--image={files / "notes.txt"}',): r'must be \.npy or one of',
      (f'--image={files / "nothing.png"}',): r'does not exist',
      (image, '--noise_std=-0.1'): r'--noise_std must be a finite number',
      (image, '--patch_size=1'): r'--patch_size must be an integer >= 2',
      (image, f'--clean={files / "small_mask.npy"}'): r'clean has shape',
  }
  argv = [list(k) + [f'--output_dir={tmp_path}'] for k in cases]
  _check_errors(_sweep('scripts/restore_image.py', argv), cases.values())
