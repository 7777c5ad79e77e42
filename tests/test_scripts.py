"""The scripts as a user meets them: quiet, one-line errors, exact resume.

Bad input is swept through each script's real main (tests/script_driver.py,
one process per script); the resume test kills a real training process.
"""

import json
import os
import random
import re
import signal
import stat
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

from tfp_esc import experiment

# What TensorFlow's C++ logging prints (e.g. "I0000 00:00:17.. port.cc:153]"
# or "WARNING: All log messages before absl::InitializeLog() ...").
_CPP_LOG = re.compile(r'\.cc:\d+\]|absl::InitializeLog|cuInit|remapper')


def _sweep(script, cases):
  """Runs the driver; returns its per-case results."""
  out = subprocess.run(
      [sys.executable, 'tests/script_driver.py', script, json.dumps(cases)],
      check=True, capture_output=True, text=True)
  assert not _CPP_LOG.search(out.stderr), out.stderr
  return json.loads(out.stdout)


def _check_errors(results, expected):
  for result, match in zip(results, expected):
    lines = result['stderr'].splitlines()
    assert result['code'] == 2, result
    assert len(lines) == 1 and lines[0].startswith('error: '), result
    assert 'Traceback' not in result['stderr'], result
    assert re.search(match, lines[0]), (match, result)


def test_train_patches_bad_input(tmp_path, images):
  out = tmp_path / 'out'
  taken = tmp_path / 'taken'
  taken.mkdir()
  (taken / 'checkpoint').mkdir()
  (taken / 'checkpoint' / 'checkpoint').write_bytes(b'from an earlier run')
  base = [f'--images={images}', '--num_patches=64', '--num_latents=4',
          '--patch_size=4', '--batch_size=32', '--refine_rounds=0']
  cases = {
      '--epochs=0': r'^error: --epochs must be an integer >= 1, got 0',
      '--epochs=abc': r'--epochs=abc',
      '--posterior=spherical': r'--posterior=spherical.*diagonal\|full',
      '--engine=fast': r'--engine=fast.*incremental\|paper',
      '--batch_size=-1': r'--batch_size must be an integer >= 1',
      '--learning_rate=0': r'--learning_rate must be a finite number in '
                           r'\(0, inf\), got 0\.0',
      '--m_step_size=-0.5': r'--m_step_size must be a finite number in \(0',
      '--num_patches=0': r'--num_patches must be an integer >= 1',
      '--posterior=full': r"--posterior must be 'diagonal' with the incr",
      '--e_step=newton': r"--e_step is an option of engine 'paper'",
      '--nonsense=1': r'Unknown command line flag .nonsense',
      'positional': r'unexpected arguments \[.positional.\]',
      '--images=/no/such.mat': r'/no/such\.mat',
      '--resume --overwrite': r'resume and overwrite exclude each other',
      f'--output_dir={taken}': r'taken/checkpoint. exists.*--resume.*'
                               r'--overwrite',
      f'--output_dir={taken} --resume': r'taken/checkpoint. is corrupt'
                                        r'.*delete it.*--overwrite',
  }
  argvs = [base + [f'--output_dir={out}'] + case.split() for case in cases]
  _check_errors(_sweep('scripts/train_patches.py', argvs), cases.values())
  assert not out.exists()  # Refused before writing anything.
  assert (taken / 'checkpoint' / 'checkpoint').read_bytes() == (
      b'from an earlier run')


def test_train_bars_bad_input(tmp_path):
  np.save(tmp_path / 'wide.npy', np.ones((10, 24)))
  np.save(tmp_path / 'zeros.npy', np.zeros((10, 25)))
  cases = {
      '--num_points=0': r'--num_points must be an integer >= 1',
      '--annealing=cosine': r'--annealing=cosine.*none\|prior',
      '--init_scale=-1': r'--init_scale must be a finite number in \(0',
      '--max_calls=0': r'--max_calls must be an integer >= 1',
      '--tolerance=-1': r'--tolerance must be a finite number in \[0, inf\)',
      '--noise_std=-0.1': r'--noise_std must be a finite number in \[0,',
      '--dtype=float16': r'--dtype=float16',
      f'--data={tmp_path}/missing.npy': r'missing\.npy. does not exist',
      f'--data={tmp_path}/wide.npy': r'wide\.npy.*\[N, 25\].*\(10, 24\)',
  }
  argvs = [[f'--output_dir={tmp_path}/out'] + c.split() for c in cases]
  _check_errors(_sweep('scripts/train_bars.py', argvs), cases.values())
  assert not (tmp_path / 'out').exists()


def test_evaluate_dictionary_bad_input(tmp_path):
  np.save(tmp_path / 'x.npy', np.ones((10, 4)))
  np.save(tmp_path / 'w.npy', np.eye(4)[:, :2])
  (tmp_path / 'text.npy').write_text('not an array')
  (tmp_path / 'bad.json').write_text('{"scales": [1, 2], "noise_variance": ')
  (tmp_path / 'partial.json').write_text('{"scales": [1, 2]}')
  good = [f'--data={tmp_path}/x.npy', f'--dictionary={tmp_path}/w.npy']
  cases = {
      f'--output={tmp_path}': r'--output .* is a directory',
      f'--model={tmp_path}/bad.json': r'--model file .*bad\.json. is not '
                                      r'readable JSON',
      f'--model={tmp_path}/partial.json': r'partial\.json. lacks \[.noise_variance.\]',
      f'--model={tmp_path}/none.json': r'none\.json. does not exist',
      f'--data={tmp_path}/text.npy': r'--data file .*text\.npy. is not a '
                                     r'readable \.npy',
      '--posterior=spherical': r'--posterior=spherical',
  }
  argvs = [good + c.split() for c in cases] + [[good[0]]]
  expected = list(cases.values()) + [r'--dictionary must have a value']
  _check_errors(_sweep('scripts/evaluate_dictionary.py', argvs), expected)


def test_compare_elbos_bad_input(tmp_path):
  cases = {
      '--samples=a,b': r'--samples must be comma-separated integers',
      '--samples=0': r'--samples must be integers >= 1',
      '--data=faces': r'--data=faces.*bars\|patches',
  }
  argvs = [[f'--output_dir={tmp_path}'] + c.split() for c in cases]
  _check_errors(_sweep('scripts/compare_elbos.py', argvs), cases.values())


def _patches_flags(images, workdir):
  # Float64, the incremental engine with a refinement round: the resumed run
  # must repeat the uninterrupted one bit for bit.
  return [f'--images={images}', '--num_patches=1024', '--num_latents=16',
          '--patch_size=6', '--batch_size=128', '--epochs=6',
          '--refine_rounds=1', '--e_step_iterations=10', '--gini_points=64',
          '--gini_samples=2', '--dtype=float64', '--seed=3',
          f'--output_dir={workdir}']


def test_sigkill_then_resume_equals_an_uninterrupted_run(tmp_path, images):
  workdir = tmp_path / 'killed'
  command = [sys.executable, 'scripts/train_patches.py']
  process = subprocess.Popen(command + _patches_flags(images, workdir),
                             stderr=subprocess.PIPE, text=True)
  checkpoint = workdir / 'checkpoint'
  while not (checkpoint / 'checkpoint').exists() and process.poll() is None:
    time.sleep(0.005)
  time.sleep(random.uniform(0.0, 0.2))  # Anywhere in the run after that.
  running = process.poll() is None
  process.send_signal(signal.SIGKILL)
  stderr = process.communicate()[1]
  assert not _CPP_LOG.search(stderr), stderr  # Quiet by default.
  record = json.loads(tf.train.load_checkpoint(  # What survived the kill.
      str(checkpoint)).get_tensor('record/.ATTRIBUTES/VARIABLE_VALUE'))
  print(f'killed while running: {running}, after epoch '
        f'{record["state"]["epoch"]}')
  config = experiment.PatchesConfig(
      images=images, num_patches=1024, num_latents=16, patch_size=6,
      batch_size=128, epochs=6, refine_rounds=1, e_step_iterations=10,
      gini_points=64, gini_samples=2, dtype='float64', seed=3)
  # What `--resume` runs (the sweep above checks the flag reaches it).
  experiment.train_patches(config, str(workdir), resume=True)
  whole_dir = tmp_path / 'whole'
  whole = experiment.train_patches(config, str(whole_dir))
  np.testing.assert_array_equal(np.load(workdir / 'dictionary.npy'),
                                np.load(whole_dir / 'dictionary.npy'))
  with open(workdir / 'metrics.json') as f:
    history = json.load(f)['history']
  for key in ('elbo', 'noise_variance', 'scales', 'gini_mean', 'phase', 'a_prior'):
    assert history[key] == whole['history'][key], key
  # One checkpoint left, nothing of a save the kill interrupted.
  prefix = os.path.basename(tf.train.latest_checkpoint(str(checkpoint)))
  names = sorted(os.listdir(checkpoint))
  assert names == ['checkpoint', f'{prefix}.data-00000-of-00001',
                   f'{prefix}.index'], names
  # Outputs and checkpoint share the figures' permissions (umask 022: 0644).
  modes = {p: stat.S_IMODE(os.stat(workdir / p).st_mode) for p in (
      'dictionary.npy', 'metrics.json', 'dictionary.png',
      *(f'checkpoint/{name}' for name in names))}
  assert len(set(modes.values())) == 1, modes


def test_verbosity_brings_back_the_logs_and_the_traceback(tmp_path):
  env = {k: v for k, v in os.environ.items() if k != 'TF_CPP_MIN_LOG_LEVEL'}
  out = subprocess.run(
      [sys.executable, 'scripts/train_bars.py', '--verbosity=1',
       '--num_points=0', f'--output_dir={tmp_path}'],
      capture_output=True, text=True, env=env)
  assert out.returncode != 0
  assert _CPP_LOG.search(out.stderr), out.stderr
  assert 'Traceback' in out.stderr and 'ConfigError: num_points' in out.stderr
