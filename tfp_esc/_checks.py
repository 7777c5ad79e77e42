"""Input validation shared by the public entry points.

Every check raises before any work is done, with a message that names the
argument and says what was wrong. Shape checks use static shapes and so also
run while a `tf.function` is traced; value checks (finite, positive) need
concrete values and run only in eager mode or on NumPy input.
"""

import numpy as np
import tensorflow as tf

__all__ = [
    'as_float_tensor',
    'check_finite',
    'check_positive',
    'check_rank',
    'float_dtype',
    'stateless_seed',
]


def float_dtype(dtype):
  """Returns `dtype` as a TF float dtype (float32 or float64), else raises."""
  dtype = tf.as_dtype(dtype)
  if dtype not in (tf.float32, tf.float64):
    raise TypeError(f'dtype must be float32 or float64, got {dtype.name}.')
  return dtype


def _is_concrete(value):
  return (isinstance(value, (np.ndarray, np.generic, float, int, list, tuple))
          or (tf.is_tensor(value) and hasattr(value, 'numpy')))


def as_float_tensor(value, name, dtype=None, rank=None):
  """Converts `value` to a float tensor, checking dtype and (static) rank.

  Args:
    value: array-like or tensor.
    name: argument name used in error messages.
    dtype: float32 or float64; default: the dtype of a float tensor or NumPy
      array, else float32.
    rank: expected rank, or None.

  Returns:
    A float32 or float64 `tf.Tensor`.

  Raises:
    TypeError: `value` has a non-float dtype that differs from `dtype`.
    ValueError: `value` does not have rank `rank`.
  """
  if dtype is not None:
    dtype = float_dtype(dtype)
  if tf.is_tensor(value) or isinstance(value, tf.Variable):
    if not value.dtype.is_floating:
      raise TypeError(f'{name} must be a float tensor, got {value.dtype.name}.')
    if dtype is not None and value.dtype != dtype:
      raise TypeError(f'{name} has dtype {value.dtype.name}, expected '
                      f'{dtype.name} (the dtype of the other arguments).')
    tensor = tf.convert_to_tensor(value)
  else:
    array = np.asarray(value)
    if array.dtype.kind not in 'fiu':
      raise TypeError(f'{name} must be numeric, got dtype {array.dtype}.')
    if dtype is None:
      dtype = tf.float64 if array.dtype == np.float64 else tf.float32
    tensor = tf.convert_to_tensor(array, dtype=dtype)
  if rank is not None:
    check_rank(tensor, rank, name)
  return tensor


def check_rank(tensor, rank, name):
  """Raises ValueError unless `tensor` has static rank `rank`."""
  if tensor.shape.rank is not None and tensor.shape.rank != rank:
    raise ValueError(f'{name} must have rank {rank}, got shape '
                     f'{tensor.shape.as_list()}.')


def check_finite(tensor, name):
  """Raises ValueError if a concrete `tensor` holds NaN or inf."""
  if not _is_concrete(tensor):
    return tensor
  array = np.asarray(tensor)
  if not np.all(np.isfinite(array)):
    bad = np.argwhere(~np.isfinite(array))
    raise ValueError(f'{name} holds {len(bad)} NaN or inf value(s) (first at '
                     f'index {tuple(int(i) for i in bad[0])}).')
  return tensor


def check_positive(tensor, name):
  """Raises ValueError unless a concrete `tensor` is finite and > 0."""
  check_finite(tensor, name)
  if not _is_concrete(tensor):
    return tensor
  array = np.asarray(tensor)
  if np.any(array <= 0):
    raise ValueError(f'{name} must be positive, got minimum '
                     f'{float(array.min())}.')
  return tensor


def stateless_seed(seed):
  """A shape-[2] int32 stateless seed from an int or a seed tensor.

  `tfp.random.sanitize_seed` turns a Python int into a seed with a *stateful*
  draw, so the same int would give different samples on each call; here an
  int n always maps to [n, 0].
  """
  if isinstance(seed, (int, np.integer)):
    return tf.constant([int(seed) % 2**31, 0], tf.int32)
  return tf.convert_to_tensor(seed)
