"""The bars data set (SPEC 9; paper Sec. 4.1, Appendix E.2).

H = 2 * side generative fields on a side x side grid: `side` vertical and
`side` horizontal bars, value 1 on the bar and 0 elsewhere. Sources
s ~ Laplace(0, 1) i.i.d., x = sum_h s_h bar_h + N(0, noise_std^2 I).
In the unit-norm parameterization the truth is W = bars / sqrt(side),
lambda_h = sqrt(side), sigma^2 = noise_std^2.
"""

import dataclasses

import numpy as np

from tfp_esc import _checks

__all__ = ['BarsData', 'bars_dictionary', 'make_bars']


@dataclasses.dataclass(frozen=True)
class BarsData:
  """A bars data set and its generating parameters.

  Attributes:
    x: `[N, D]` data, D = side^2.
    sources: `[N, H]` Laplace(0, 1) sources s of the original model.
    dictionary: `[D, H]` unit-norm true dictionary W.
    scales: `[H]` true Laplace scales lambda (sqrt(side)).
    noise_variance: true sigma^2.
  """
  x: np.ndarray
  sources: np.ndarray
  dictionary: np.ndarray
  scales: np.ndarray
  noise_variance: float

  @property
  def free_dictionary(self):
    """W~ = W diag(lambda) `[D, H]`: the bars with value 1 on the bar."""
    return self.dictionary * self.scales


def bars_dictionary(side=5, dtype=np.float64):
  """Bars with value 1 on the bar: `[side^2, 2 side]`, vertical bars first."""
  if int(side) < 2:
    raise ValueError(f'side must be an int >= 2, got {side!r}.')
  fields = []
  for i in range(side):
    field = np.zeros((side, side), dtype)
    field[:, i] = 1
    fields.append(field.ravel())
  for i in range(side):
    field = np.zeros((side, side), dtype)
    field[i, :] = 1
    fields.append(field.ravel())
  return np.stack(fields, axis=1)


def make_bars(num_points=1000, side=5, noise_std=0.1, seed=0,
              dtype=np.float64):
  """Generates a bars data set.

  Args:
    num_points: N > 0.
    side: grid side (D = side^2, H = 2 side).
    noise_std: observation noise standard deviation > 0.
    seed: seed of `np.random.default_rng`.
    dtype: NumPy float dtype of the arrays.

  Returns:
    `BarsData`.

  Raises:
    TypeError: num_points, side or seed not an integer, noise_std not a
      real number (`tfp_esc._checks` rules).
    ValueError: num_points <= 0, side < 2, seed < 0, noise_std not positive
      and finite.
  """
  num_points = _checks.check_count(num_points, 'num_points')
  side = _checks.check_count(side, 'side', 2)
  noise_std = _checks.check_real(noise_std, 'noise_std', 0.0)
  _checks.check_count(seed, 'seed', 0)
  rng = np.random.default_rng(seed)
  bars = bars_dictionary(side, np.float64)
  sources = rng.laplace(size=(int(num_points), bars.shape[1]))
  noise = noise_std * rng.standard_normal((int(num_points), bars.shape[0]))
  x = sources @ bars.T + noise
  scale = np.sqrt(side)
  return BarsData(
      x=x.astype(dtype), sources=sources.astype(dtype),
      dictionary=(bars / scale).astype(dtype),
      scales=np.full(bars.shape[1], scale, dtype),
      noise_variance=float(noise_std**2))
