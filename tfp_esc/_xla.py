"""XLA's CPU code generation: ask for 512-bit vectors where the CPU has them.

The E-steps' cost on CPU is elementwise erf/exp/log work on `[B, H]`
tensors inside XLA loops (`tfp_esc.inference.mm`). XLA's CPU backend
prefers 256-bit vectors by default; on a CPU with AVX-512 the flag
`--xla_cpu_prefer_vector_width=512` made the majorise-minimise E-step
(B = 512, H = 100, 60 iterations) 20% faster (31 vs 38-41 ms, same process
state, same results to float32 rounding), and incremental EM's first-visit
step 10-20% faster.

`prefer_wide_vectors` appends that flag to the XLA_FLAGS environment
variable, which XLA reads once, when it compiles its first computation; so
it acts only if nothing was compiled with XLA before `tfp_esc` is imported,
and never where XLA_FLAGS already names a vector width (set it yourself to
choose, e.g. XLA_FLAGS=--xla_cpu_prefer_vector_width=256 for XLA's own
default).

`use_compilation_cache` keeps XLA's compiled CPU steps on disk, so a new
process (the next run of a script) loads them instead of compiling again:
TensorFlow's own persistent cache (`--tf_xla_persistent_cache_directory` in
TF_XLA_FLAGS), which writes each entry to a temporary file and renames it
(a killed run leaves no partial entry) and loads one only if its stored HLO
equals the function's. Its key does not name the CPU, the TensorFlow
version or XLA_FLAGS, all of which change the machine code, so the folder
is one per (TensorFlow version, CPU flags, XLA_FLAGS): a home folder shared
by machines with different CPUs never hands one of them code for another
(an AVX-512 step on a CPU without it would crash). GPU steps are left out
(`--tf_xla_persistent_cache_device_types=CPU`): their code depends
on the GPU model, which is not in the key either. Measured: incremental
EM's first epoch (8,192 unseen 16 x 16 patches, H = 64) 2.6 s in a fresh
process with an empty cache, 1.7 s in the next one, the same ELBOs; the
blind denoising of a 256 x 256 photograph (`scripts/restore_image.py`)
20.4 s, then 18.0 s, the same image.
The scripts turn it on; the folder is $TFP_ESC_COMPILATION_CACHE, else
$XDG_CACHE_HOME/tfp_esc/xla, else ~/.cache/tfp_esc/xla, and
TFP_ESC_COMPILATION_CACHE=off turns it off. Like the vector width, TF_XLA_FLAGS is read
once, at the first XLA compilation of the process; a TF_XLA_FLAGS that
already names a cache folder is the user's choice and is left alone.
A damaged entry (a disk error; a kill cannot make one) stops the step that
loads it with TensorFlow's read error; deleting the folder clears it. The
folder grows by one entry per compiled function and shape (0.6-2.5 MB
each; a 256 x 256 restoration wrote 4, 5.2 MB) and nothing evicts them:
delete it to reclaim the space.
"""

import hashlib
import importlib.metadata
import os
import platform
import tempfile

from absl import logging

__all__ = ['compilation_cache_directory', 'prefer_wide_vectors',
           'use_compilation_cache']

_FLAG = '--xla_cpu_prefer_vector_width'
_CACHE_FLAG = '--tf_xla_persistent_cache_directory'
_CACHE_DEVICES_FLAG = '--tf_xla_persistent_cache_device_types=CPU'
CACHE_ENV = 'TFP_ESC_COMPILATION_CACHE'
_OFF = ('off', '0', 'false', 'no', 'none')


def _cpu_flags(cpuinfo='/proc/cpuinfo'):
  """The CPU's feature flags (Linux's /proc/cpuinfo), a sorted tuple; empty
  where the file cannot be read."""
  try:
    with open(cpuinfo) as f:
      for line in f:
        if line.startswith('flags'):
          return tuple(sorted(line.partition(':')[2].split()))
  except OSError:
    pass
  return ()


def _has_avx512(cpuinfo='/proc/cpuinfo'):
  return 'avx512f' in _cpu_flags(cpuinfo)


def prefer_wide_vectors(environ=None, cpuinfo='/proc/cpuinfo'):
  """Adds `--xla_cpu_prefer_vector_width=512` to XLA_FLAGS (module doc).

  Args:
    environ: the environment to change; default `os.environ`.
    cpuinfo: where the CPU's flags are read (Linux); elsewhere nothing
      changes.

  Returns:
    True if the flag was added.
  """
  environ = os.environ if environ is None else environ
  flags = environ.get('XLA_FLAGS', '')
  if _FLAG in flags or not _has_avx512(cpuinfo):
    return False
  environ['XLA_FLAGS'] = f'{flags} {_FLAG}=512'.strip()
  return True


def _tensorflow_version():
  for name in ('tensorflow', 'tensorflow-cpu', 'tf-nightly'):
    try:
      return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
      pass
  return 'unknown'


def compilation_cache_directory(environ=None, cpuinfo='/proc/cpuinfo'):
  """This machine's folder of compiled steps (module doc), or None if off.

  Args:
    environ: the environment read; default `os.environ`.
    cpuinfo: where the CPU's flags are read (Linux).

  Returns:
    `<root>/tf<version>-<16 hex digits>`: the digits a hash of the
    TensorFlow version, the machine type, the CPU's flags and XLA_FLAGS.
    None where $TFP_ESC_COMPILATION_CACHE is off (or empty).
  """
  environ = os.environ if environ is None else environ
  root = environ.get(CACHE_ENV)
  if root is not None and root.strip().lower() in _OFF + ('',):
    return None
  if root is None:
    base = environ.get('XDG_CACHE_HOME') or os.path.join(
        os.path.expanduser('~'), '.cache')
    root = os.path.join(base, 'tfp_esc', 'xla')
  version = _tensorflow_version()
  machine = '\n'.join([version, platform.machine(),
                       ' '.join(_cpu_flags(cpuinfo)),
                       environ.get('XLA_FLAGS', '')])
  digest = hashlib.sha256(machine.encode()).hexdigest()[:16]
  return os.path.join(os.path.expanduser(root), f'tf{version}-{digest}')


def use_compilation_cache(environ=None, cpuinfo='/proc/cpuinfo'):
  """Turns on TensorFlow's persistent XLA cache for CPU steps (`tfp_esc._xla`'s
  module doc).

  Call it before the process compiles anything with XLA (TF_XLA_FLAGS is
  read once); `import tfp_esc` first, so that the folder's name includes
  the vector width it chooses.

  Args:
    environ: the environment to change; default `os.environ`.
    cpuinfo: where the CPU's flags are read (Linux).

  Returns:
    The folder now used, or None where nothing changed: the cache is off
    ($TFP_ESC_COMPILATION_CACHE=off), TF_XLA_FLAGS names a folder already,
    or the folder cannot be written or has white space in its name (then
    with a logged warning).
  """
  environ = os.environ if environ is None else environ
  flags = environ.get('TF_XLA_FLAGS', '')
  directory = compilation_cache_directory(environ, cpuinfo)
  if directory is None or _CACHE_FLAG in flags:
    return None
  # TensorFlow fails the compiled call itself where it cannot write an
  # entry, and TF_XLA_FLAGS splits at white space: check both here.
  if any(c.isspace() for c in directory):
    logging.warning('XLA compilation cache off: its folder %r has white '
                    'space (set %s to another folder).', directory, CACHE_ENV)
    return None
  try:
    os.makedirs(directory, exist_ok=True)
    with tempfile.TemporaryFile(dir=directory):
      pass
  except OSError as e:
    logging.warning('XLA compilation cache off: cannot write to %r (%s; set '
                    '%s to another folder).', directory, e, CACHE_ENV)
    return None
  environ['TF_XLA_FLAGS'] = (
      f'{flags} {_CACHE_FLAG}={directory} {_CACHE_DEVICES_FLAG}'.strip())
  return directory
