"""Input validation shared by the public entry points: the one set of rules.

Every check raises before any work is done (before any `tf.function` is
traced), with a message that names the argument and says what was wrong.
Shape checks use static shapes and so also run while a `tf.function` is
traced; value checks (finite, positive) need concrete values and run only in
eager mode or on NumPy input.

The rules, the same for every entry point:

  * counts (`check_count`: epochs, batch sizes, iterations, numbers of
    latents or samples) are Python or NumPy integers; `bool` and floats
    (also 2.0) are a TypeError, values below the minimum a ValueError;
  * real parameters (`check_real`: step sizes, tolerances, noise levels) are
    Python or NumPy real numbers, not `bool`; NaN, inf and values outside the
    stated interval are a ValueError;
  * flags (`check_flag`) are `bool` (or NumPy bool); anything else is a
    TypeError;
  * names (`check_choice`: posterior families, engines, objectives) are
    strings from a fixed list; another type is a TypeError, another string a
    ValueError that lists the valid names;
  * data (`check_data`) is a numeric `[N, D]` array with N, D >= 1 and no
    NaN or inf; bool, complex, object or string arrays are a TypeError;
  * observation masks (`check_mask`) are bool or 0/1 arrays of the data's
    shape (true = observed).
"""

import numpy as np
import tensorflow as tf

__all__ = [
    'as_float_tensor',
    'check_choice',
    'check_count',
    'check_data',
    'check_finite',
    'check_flag',
    'check_mask',
    'check_positive',
    'check_rank',
    'check_real',
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


def check_count(value, name, minimum=1, maximum=None):
  """Returns `value` as an int after checking it is a count (module doc).

  Args:
    value: a Python or NumPy integer (not bool).
    name: argument name used in error messages.
    minimum: smallest accepted value.
    maximum: largest accepted value, or None.

  Returns:
    int.

  Raises:
    TypeError: `value` is not an integer (bool and 2.0 included).
    ValueError: `value` is outside [minimum, maximum].
  """
  if (isinstance(value, (bool, np.bool_))
      or not isinstance(value, (int, np.integer))):
    raise TypeError(f'{name} must be an integer, got {value!r} '
                    f'({type(value).__name__}).')
  value = int(value)
  if value < minimum or (maximum is not None and value > maximum):
    bound = (f'>= {minimum}' if maximum is None
             else f'in [{minimum}, {maximum}]')
    raise ValueError(f'{name} must be an integer {bound}, got {value}.')
  return value


def check_real(value, name, low=None, high=None, low_open=True,
               high_open=False):
  """Returns `value` as a float after checking it is a finite real number.

  Args:
    value: a Python or NumPy real number (not bool).
    name: argument name used in error messages.
    low, high: bounds of the accepted interval (None: unbounded).
    low_open, high_open: exclude the bound itself.

  Returns:
    float.

  Raises:
    TypeError: `value` is not a real number (bool included).
    ValueError: NaN, inf or outside the interval.
  """
  if (isinstance(value, (bool, np.bool_))
      or not isinstance(value, (int, float, np.integer, np.floating))):
    raise TypeError(f'{name} must be a real number, got {value!r} '
                    f'({type(value).__name__}).')
  value = float(value)
  below = low is not None and (value < low or (low_open and value == low))
  above = high is not None and (value > high or (high_open and value == high))
  if not np.isfinite(value) or below or above:
    interval = ('(' if low_open else '[') + (
        '-inf' if low is None else f'{low:g}') + ', ' + (
            'inf' if high is None else f'{high:g}') + (
                ')' if high_open or high is None else ']')
    raise ValueError(f'{name} must be a finite number in {interval}, got '
                     f'{value!r}.')
  return value


def check_choice(value, name, choices):
  """Returns `value` after checking it is one of the strings `choices`.

  Raises:
    TypeError: `value` is not a string.
    ValueError: `value` is not in `choices` (the message lists them).
  """
  if not isinstance(value, str):
    raise TypeError(f'{name} must be one of {list(choices)}, got {value!r} '
                    f'({type(value).__name__}).')
  if value not in choices:
    raise ValueError(f'{name} must be one of {list(choices)}, got {value!r}.')
  return value


def check_data(x, name='x'):
  """Data as a NumPy `[N, D]` float32/float64 array, checked (module doc).

  Integer data becomes float32; NumPy float32/float64 and TF float tensors
  keep their dtype. Kept in NumPy: a TF copy of a paper-size data set would
  add hundreds of MB to the peak memory.

  Raises:
    TypeError: a non-numeric, bool or complex dtype.
    ValueError: not rank 2, no rows or no columns, NaN/inf values.
  """
  if tf.is_tensor(x) or isinstance(x, tf.Variable):
    x = x.numpy() if hasattr(x, 'numpy') else x
  try:
    array = np.asarray(x)
  except (TypeError, ValueError) as e:
    raise TypeError(f'{name} must be a numeric [N, D] array, got '
                    f'{type(x).__name__} ({e}).') from None
  if array.dtype.kind not in 'fiu':
    raise TypeError(f'{name} must be a real float or integer array, got '
                    f'dtype {array.dtype}.')
  if array.ndim != 2:
    raise ValueError(f'{name} must have rank 2 ([N, D]), got shape '
                     f'{array.shape}.')
  if array.shape[0] == 0 or array.shape[1] == 0:
    raise ValueError(f'{name} is empty: shape {array.shape}; it needs at '
                     'least one row and one column.')
  if array.dtype not in (np.float32, np.float64):
    array = array.astype(np.float32)
  check_finite(array, name)
  return array


def check_flag(value, name):
  """Returns `value` as a bool; raises TypeError unless it is a bool."""
  if not isinstance(value, (bool, np.bool_)):
    raise TypeError(f'{name} must be True or False, got {value!r} '
                    f'({type(value).__name__}).')
  return bool(value)


def check_mask(mask, shape, name='mask', like='x'):
  """An observation mask as a NumPy bool array of `shape` (true = observed).

  Args:
    mask: None (everything observed) or a bool / 0-1 array.
    shape: the shape it must have (that of the data).
    name: argument name used in error messages.
    like: name of the argument whose shape it must have.

  Returns:
    bool ndarray of `shape`.

  Raises:
    ValueError: another shape, or values other than 0 and 1.
  """
  if mask is None:
    return np.ones(shape, bool)
  mask = np.asarray(mask)
  if mask.shape != tuple(shape):
    raise ValueError(f'{name} has shape {mask.shape} but {like} has shape '
                     f'{tuple(shape)}; they must be equal.')
  if mask.dtype != bool and not np.all((mask == 0) | (mask == 1)):
    raise ValueError(f'{name} must be boolean or hold only 0 and 1 '
                     '(1 = observed).')
  return mask.astype(bool)
