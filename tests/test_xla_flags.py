"""`tfp_esc._xla`: the vector width (added once, only on AVX-512) and the
persistent cache of compiled steps."""

import os
import subprocess
import sys

import pytest

from tfp_esc import _xla


def _cpuinfo(tmp_path, flags):
  path = tmp_path / 'cpuinfo'
  path.write_text(f'processor\t: 0\nflags\t\t: fpu sse2 {flags}\n')
  return str(path)


def test_adds_the_flag_on_avx512(tmp_path):
  environ = {'XLA_FLAGS': '--xla_dump_to=/tmp/x'}
  assert _xla.prefer_wide_vectors(environ, _cpuinfo(tmp_path, 'avx2 avx512f'))
  assert environ['XLA_FLAGS'] == ('--xla_dump_to=/tmp/x '
                                  '--xla_cpu_prefer_vector_width=512')
  # A second call (another import) adds nothing.
  assert not _xla.prefer_wide_vectors(environ,
                                      _cpuinfo(tmp_path, 'avx2 avx512f'))
  assert environ['XLA_FLAGS'].count('prefer_vector_width') == 1


def test_leaves_other_cpus_and_the_users_choice_alone(tmp_path):
  environ = {}
  assert not _xla.prefer_wide_vectors(environ, _cpuinfo(tmp_path, 'avx2'))
  assert 'XLA_FLAGS' not in environ
  assert not _xla.prefer_wide_vectors(environ, str(tmp_path / 'missing'))
  environ = {'XLA_FLAGS': '--xla_cpu_prefer_vector_width=256'}
  assert not _xla.prefer_wide_vectors(environ,
                                      _cpuinfo(tmp_path, 'avx512f'))
  assert environ['XLA_FLAGS'] == '--xla_cpu_prefer_vector_width=256'


def test_importing_tfp_esc_set_it_on_this_machine():
  import os  # pylint: disable=g-import-not-at-top
  if _xla._has_avx512():  # pylint: disable=protected-access
    assert '--xla_cpu_prefer_vector_width' in os.environ.get('XLA_FLAGS', '')


# -- the compilation cache ----------------------------------------------------


def test_cache_folder_is_one_per_cpu_and_xla_flags(tmp_path):
  """Machine code depends on the CPU and XLA_FLAGS, which TensorFlow's key
  does not name: each gets its own folder; the same machine the same one."""
  root = str(tmp_path / 'cache')
  avx512 = _cpuinfo(tmp_path, 'avx2 avx512f')
  folder = _xla.compilation_cache_directory(
      {_xla.CACHE_ENV: root}, avx512)
  assert folder.startswith(root)
  assert folder == _xla.compilation_cache_directory(
      {_xla.CACHE_ENV: root}, avx512)
  avx2 = tmp_path / 'avx2'
  avx2.mkdir()
  assert folder != _xla.compilation_cache_directory(
      {_xla.CACHE_ENV: root}, _cpuinfo(avx2, 'avx2'))
  assert folder != _xla.compilation_cache_directory(
      {_xla.CACHE_ENV: root,
       'XLA_FLAGS': '--xla_cpu_prefer_vector_width=256'}, avx512)
  # Default root: XDG_CACHE_HOME, then ~/.cache.
  assert _xla.compilation_cache_directory(
      {'XDG_CACHE_HOME': str(tmp_path)}, avx512).startswith(
          str(tmp_path / 'tfp_esc' / 'xla'))


def test_cache_is_turned_on_once_and_leaves_the_users_choice(tmp_path):
  root = str(tmp_path / 'cache')
  environ = {_xla.CACHE_ENV: root, 'TF_XLA_FLAGS': '--tf_xla_auto_jit=0'}
  folder = _xla.use_compilation_cache(environ)
  assert folder is not None and (tmp_path / 'cache').is_dir()
  assert environ['TF_XLA_FLAGS'] == (
      f'--tf_xla_auto_jit=0 --tf_xla_persistent_cache_directory={folder} '
      '--tf_xla_persistent_cache_device_types=CPU')
  assert _xla.use_compilation_cache(environ) is None   # Already on.
  assert environ['TF_XLA_FLAGS'].count('persistent_cache_directory') == 1
  mine = {'TF_XLA_FLAGS': '--tf_xla_persistent_cache_directory=/mine'}
  assert _xla.use_compilation_cache(mine) is None
  assert mine['TF_XLA_FLAGS'] == '--tf_xla_persistent_cache_directory=/mine'


@pytest.mark.parametrize('value', ['off', '0', 'OFF', ''])
def test_cache_can_be_turned_off(value):
  environ = {_xla.CACHE_ENV: value}
  assert _xla.use_compilation_cache(environ) is None
  assert 'TF_XLA_FLAGS' not in environ


def test_cache_stays_off_where_it_cannot_write(tmp_path):
  """TensorFlow would fail the compiled call itself; we warn and go on."""
  blocker = tmp_path / 'a_file'
  blocker.write_text('')
  environ = {_xla.CACHE_ENV: str(blocker / 'cache')}
  assert _xla.use_compilation_cache(environ) is None
  assert 'TF_XLA_FLAGS' not in environ
  spaced = {_xla.CACHE_ENV: str(tmp_path / 'with space')}
  assert _xla.use_compilation_cache(spaced) is None
  assert 'TF_XLA_FLAGS' not in spaced


_COMPILE = '''
import numpy as np
from tfp_esc import _xla
print(_xla.use_compilation_cache())
import tensorflow as tf
from tfp_esc.inference.mm import mm_e_step
rng = np.random.default_rng(0)
x, w = rng.standard_normal((8, 6)), rng.standard_normal((6, 3))
step = tf.function(mm_e_step, jit_compile=True, autograph=False)
loc, scale = step(x, w, np.zeros((8, 3)), np.ones((8, 3)), np.ones(3),
                  iterations=tf.constant(5), floor=1e-3)
print(repr(loc.numpy().tolist()))
'''


def test_a_new_process_loads_the_compiled_step(tmp_path):
  """The first process writes the compiled step; the second loads it (no
  new entry) and computes the same numbers."""
  environ = dict(os.environ, **{_xla.CACHE_ENV: str(tmp_path / 'cache'),
                                'TF_XLA_FLAGS': ''})
  outputs = []
  for _ in range(2):
    run = subprocess.run([sys.executable, '-c', _COMPILE], env=environ,
                         capture_output=True, text=True, check=True)
    folder, values = run.stdout.strip().splitlines()[-2:]
    outputs.append(values)
    entries = sorted(os.listdir(folder))
    assert len(entries) == 1 and entries[0].endswith('XLA_CPU_JIT.pb'), (
        entries)
    if len(outputs) == 1:
      first = os.path.getmtime(os.path.join(folder, entries[0]))
  assert os.path.getmtime(os.path.join(folder, entries[0])) == first
  assert outputs[0] == outputs[1]
