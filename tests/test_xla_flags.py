"""`tfp_esc._xla.prefer_wide_vectors`: the flag is added once, only on AVX-512."""

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
