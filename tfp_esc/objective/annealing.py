"""Entropy-annealing schedules for the entropy ELBO (SPEC 6, Eq. 17).

The annealed objective weights the three entropies of the entropy ELBO,

  F_a = a_q (1/N) sum_n H[q_n] - a_prior H[p(z | lambda*)]
        - a_lik H[p(x | z, sigma2*)],

with lambda* and sigma2* unchanged. A schedule maps a step (the epoch for the
EM and amortized trainers, the L-BFGS call index for the bars trainer) to the
three coefficients:

  >>> schedule = get_schedule('prior')
  >>> [schedule(step).prior for step in range(7)]
  [10.0, 8.0, 6.0, 4.0, 2.0, 1.0, 1.0]

Every schedule reaches a_q = a_prior = a_lik = 1 after finitely many steps and
stays there; from then on it optimises the ELBO itself. Only the non-annealed F
is an ELBO: report it, never the annealed value, as "ELBO".
"""

import abc
import dataclasses
import inspect
import math
import operator

import numpy as np

__all__ = [
    'SCHEDULE_NAMES',
    'AnnealingCoefficients',
    'AnnealingSchedule',
    'BetaAnnealing',
    'LikelihoodAnnealing',
    'NoAnnealing',
    'PriorAnnealing',
    'get_schedule',
]

# Coefficients within this distance of 1 are taken as exactly 1, so that
# `start - rate * step` in floating point (e.g. 2 - 0.1 * 10) ends annealing at
# the intended step rather than one step later.
_ONE_TOLERANCE = 1e-12


def _check_positive_number(value, name):
  """Returns `value` as a float; raises unless it is finite and > 0."""
  try:
    if isinstance(value, (str, bytes)):
      raise TypeError
    number = float(value)
  except (TypeError, ValueError):
    raise TypeError(f'{name} must be a positive number, got {value!r}.'
                    ) from None
  if not math.isfinite(number) or number <= 0.0:
    raise ValueError(f'{name} must be positive and finite, got {value!r}.')
  return number


def _check_integer(value, name, minimum):
  """Returns `value` as an int; raises unless it is an integer >= minimum."""
  if isinstance(value, bool):
    raise TypeError(f'{name} must be an integer, got {value!r}.')
  try:
    index = operator.index(value)
  except TypeError:
    # Integer scalars without __index__, e.g. a tf.Variable epoch counter.
    array = np.asarray(value)
    if array.ndim != 0 or array.dtype.kind not in 'iu':
      raise TypeError(f'{name} must be an integer, got {value!r} of type '
                      f'{type(value).__name__}.') from None
    index = int(array)
  if index < minimum:
    raise ValueError(f'{name} must be an integer >= {minimum}, got {index}.')
  return index


def _linear_values(start, num_steps):
  """start + (1 - start) * step / num_steps for step = 0, ..., num_steps - 1."""
  return tuple(start + (1.0 - start) * step / num_steps
               for step in range(num_steps))


def _snap_to_one(value):
  return 1.0 if abs(value - 1.0) <= _ONE_TOLERANCE else value


@dataclasses.dataclass(frozen=True)
class AnnealingCoefficients:
  """The weights (a_q, a_prior, a_lik) of the three entropies in Eq. 17.

  Attributes:
    q: float > 0, weight of the mean posterior entropy (1/N) sum_n H[q_n].
    prior: float > 0, weight of the prior entropy H[p(z | lambda*)].
    likelihood: float > 0, weight of the noise entropy H[p(x | z, sigma2*)].

  Raises:
    TypeError: a coefficient is not a number.
    ValueError: a coefficient is not positive and finite.
  """
  q: float = 1.0
  prior: float = 1.0
  likelihood: float = 1.0

  def __post_init__(self):
    for field in dataclasses.fields(self):
      value = _check_positive_number(getattr(self, field.name),
                                     f'AnnealingCoefficients.{field.name}')
      object.__setattr__(self, field.name, value)

  @property
  def is_annealed(self):
    """True unless all three coefficients are 1 (the plain ELBO)."""
    return not (self.q == 1.0 and self.prior == 1.0 and self.likelihood == 1.0)


class AnnealingSchedule(abc.ABC):
  """Base class: a map from a step (int >= 0) to `AnnealingCoefficients`.

  Subclasses implement `_coefficients(step)`; `__call__` validates the step.
  """

  def __call__(self, step):
    """Returns the coefficients at `step`.

    Args:
      step: int >= 0 (Python, NumPy or TF integer scalar): the epoch, or the
        L-BFGS call index for the bars trainer.

    Returns:
      `AnnealingCoefficients`.

    Raises:
      TypeError: `step` is not an integer (floats and bools are refused).
      ValueError: `step` is negative.
    """
    return self._coefficients(_check_integer(step, 'step', 0))

  def is_annealed(self, step):
    """Returns False once all coefficients at `step` are 1, else True.

    Args:
      step: int >= 0.

    Returns:
      bool.

    Raises:
      TypeError: `step` is not an integer (floats and bools are refused).
      ValueError: `step` is negative.
    """
    return self(step).is_annealed

  @abc.abstractmethod
  def _coefficients(self, step):
    """Returns `AnnealingCoefficients` for a validated int `step` >= 0."""


@dataclasses.dataclass(frozen=True)
class NoAnnealing(AnnealingSchedule):
  """a_q = a_prior = a_lik = 1 at every step: the plain entropy ELBO."""

  def _coefficients(self, step):
    del step
    return AnnealingCoefficients()


@dataclasses.dataclass(frozen=True)
class PriorAnnealing(AnnealingSchedule):
  """Prior annealing, the paper's proposal: a_prior > 1 decaying to 1.

  a_prior(step) = max(1, start - rate * step), a_q = a_lik = 1. The defaults
  are the paper's EM reference, 10, 8, 6, 4, 2, 1, 1, ...; the two reference
  schedules are also available as `PriorAnnealing.em()` and
  `PriorAnnealing.linear()` (amortized reference 2, 1.9, ..., 1.1, 1, 1, ...).

  Attributes:
    start: float >= 1, a_prior at step 0.
    rate: float > 0, decrease of a_prior per step.

  Raises:
    TypeError: `start` or `rate` is not a number.
    ValueError: `start` < 1 or not finite, or `rate` <= 0 or not finite.
  """
  start: float = 10.0
  rate: float = 2.0

  def __post_init__(self):
    start = _check_positive_number(self.start, 'start')
    if start < 1.0:
      raise ValueError('start must be >= 1 (a_prior decays to 1 from above), '
                       f'got {self.start!r}.')
    object.__setattr__(self, 'start', start)
    object.__setattr__(self, 'rate', _check_positive_number(self.rate, 'rate'))

  @classmethod
  def em(cls, slope=2.0, offset=5.0):
    """The EM reference schedule a_prior = max(1, slope * (offset - step)).

    Args:
      slope: float > 0 (default 2).
      offset: float > 0 with slope * offset >= 1 (default 5), the step at
        which slope * (offset - step) reaches 0.

    Returns:
      `PriorAnnealing` with start = slope * offset and rate = slope; with the
      defaults a_prior = 10, 8, 6, 4, 2, 1, 1, ... for steps 0, 1, 2, ...

    Raises:
      TypeError: `slope` or `offset` is not a number.
      ValueError: `slope` or `offset` is not positive and finite, or
        slope * offset < 1.
    """
    slope = _check_positive_number(slope, 'slope')
    offset = _check_positive_number(offset, 'offset')
    if slope * offset < 1.0:
      raise ValueError('slope * offset must be >= 1 (a_prior at step 0), got '
                       f'slope={slope} and offset={offset}.')
    return cls(start=slope * offset, rate=slope)

  @classmethod
  def linear(cls, start=2.0, rate=0.1):
    """Linear decay a_prior = max(1, start - rate * step).

    Args:
      start: float >= 1, a_prior at step 0 (default 2).
      rate: float > 0 (default 0.1).

    Returns:
      `PriorAnnealing`; the defaults are the paper's amortized (Adam)
      reference 2, 1.9, ..., 1.1, then 1 from step 10 on.

    Raises:
      TypeError, ValueError: as for the constructor.
    """
    return cls(start=start, rate=rate)

  def _coefficients(self, step):
    prior = _snap_to_one(max(1.0, self.start - self.rate * step))
    return AnnealingCoefficients(prior=prior)


def _as_values(values, name):
  """Returns `values` as a non-empty tuple of positive finite floats."""
  if isinstance(values, (str, bytes)) or not hasattr(values, '__iter__'):
    raise TypeError(f'{name} must be a sequence of positive numbers, got '
                    f'{values!r}.')
  values = tuple(values)
  if not values:
    raise ValueError(f'{name} must hold at least one value, got ().')
  return tuple(_check_positive_number(value, f'{name}[{i}]')
               for i, value in enumerate(values))


@dataclasses.dataclass(frozen=True)
class LikelihoodAnnealing(AnnealingSchedule):
  """Likelihood annealing (energy tempering): a_lik < 1 rising to 1.

  a_lik(step) = values[step] for step < len(values), then 1; a_q = a_prior = 1.
  The default is the paper's reference 1/7, 1/6, 1/5, 1/4, 1/3, 1/2, 1, 1, ...

  Attributes:
    values: non-empty sequence of positive floats, a_lik for the first
      len(values) steps (stored as a tuple).

  Raises:
    TypeError: `values` is not a sequence of numbers.
    ValueError: `values` is empty or holds a non-positive or non-finite value.
  """
  values: tuple = (1 / 7, 1 / 6, 1 / 5, 1 / 4, 1 / 3, 1 / 2)

  def __post_init__(self):
    object.__setattr__(self, 'values', _as_values(self.values, 'values'))

  def _coefficients(self, step):
    likelihood = self.values[step] if step < len(self.values) else 1.0
    return AnnealingCoefficients(likelihood=likelihood)


@dataclasses.dataclass(frozen=True)
class BetaAnnealing(AnnealingSchedule):
  """Beta annealing (beta-VAE): a_q = a_prior = beta, a_lik = 1.

  beta(step) = values[step] for step < len(values), then 1. With beta < 1 the
  KL part of the ELBO is down-weighted (warm-up); beta > 1 weights it up.
  The default is a linear warm-up from 0.1 over 10 steps, 0.1, 0.19, ...,
  0.91, then 1 (`BetaAnnealing.linear()`).

  Attributes:
    values: non-empty sequence of positive floats, beta for the first
      len(values) steps (stored as a tuple).

  Raises:
    TypeError: `values` is not a sequence of numbers.
    ValueError: `values` is empty or holds a non-positive or non-finite value.
  """
  values: tuple = _linear_values(0.1, 10)

  def __post_init__(self):
    object.__setattr__(self, 'values', _as_values(self.values, 'values'))

  @classmethod
  def linear(cls, start=0.1, num_steps=10):
    """beta moving linearly from `start` (step 0) to 1 (step `num_steps`).

    beta(step) = start + (1 - start) * step / num_steps for step < num_steps,
    then 1. `start` may be above 1 (beta decaying to 1) or below (warm-up).

    Args:
      start: float > 0, beta at step 0 (default 0.1).
      num_steps: int >= 1, the first step with beta = 1 (default 10).

    Returns:
      `BetaAnnealing`.

    Raises:
      TypeError: `start` is not a number or `num_steps` not an integer.
      ValueError: `start` is not positive and finite, or `num_steps` < 1.
    """
    start = _check_positive_number(start, 'start')
    num_steps = _check_integer(num_steps, 'num_steps', 1)
    return cls(values=_linear_values(start, num_steps))

  def _coefficients(self, step):
    beta = self.values[step] if step < len(self.values) else 1.0
    return AnnealingCoefficients(q=beta, prior=beta)


_FACTORIES = {
    'none': NoAnnealing,
    'prior': PriorAnnealing.em,
    'prior_linear': PriorAnnealing.linear,
    'likelihood': LikelihoodAnnealing,
    'beta': BetaAnnealing,
}

SCHEDULE_NAMES = tuple(_FACTORIES)


def get_schedule(name, **kwargs):
  """Returns the annealing schedule called `name`.

  Args:
    name: str, one of 'none' (`NoAnnealing`), 'prior' (`PriorAnnealing.em`,
      kwargs slope, offset), 'prior_linear' (`PriorAnnealing.linear`, kwargs
      start, rate), 'likelihood' (`LikelihoodAnnealing`, kwarg values) and
      'beta' (`BetaAnnealing`, kwarg values). Case-insensitive.
    **kwargs: passed on to the schedule's constructor.

  Returns:
    An `AnnealingSchedule`.

  Raises:
    ValueError: `name` is unknown (the message lists the valid names), a
      keyword argument is not accepted by that schedule, or a value is
      invalid.
    TypeError: `name` is not a string, or a value has the wrong type (see
      the schedule's constructor).
  """
  if not isinstance(name, str):
    raise TypeError(f'name must be a string, one of '
                    f'{", ".join(SCHEDULE_NAMES)}; got {name!r}.')
  if name.lower() not in _FACTORIES:
    raise ValueError(f'name must be one of {", ".join(SCHEDULE_NAMES)}; got '
                     f'{name!r}.')
  factory = _FACTORIES[name.lower()]
  try:
    inspect.signature(factory).bind(**kwargs)
  except TypeError:
    accepted = ', '.join(inspect.signature(factory).parameters) or 'none'
    raise ValueError(f'get_schedule({name!r}) got keyword arguments '
                     f'{sorted(kwargs)}; that schedule accepts: {accepted}.'
                     ) from None
  return factory(**kwargs)
