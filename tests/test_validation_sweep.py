"""Every public entry point refuses bad input up front, naming the argument.

A table of entry points (`ENTRY_POINTS`): for each, valid keyword arguments
and the arguments to spoil, each with its kind. Every kind of bad value
(`BAD`) has the exception it must raise. The sweep spoils one argument at a
time and asserts the exception type, that the message names the argument,
and that no `tf.function` was run before the error (tf.function is replaced
by one that fails when called). `test_every_cell` walks the whole table once
with a fixed value per kind; `test_hypothesis_sweep` draws the entry point,
the argument and the bad value (e.g. which entry is NaN, how negative a
count) with hypothesis. `print_table()` prints the table for the notes:

  cd tests && python -c "import test_validation_sweep as t; t.print_table()"
"""

import contextlib
import math

import numpy as np
import pytest
import tensorflow as tf
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import tfp_esc
from tfp_esc.evaluation.evaluate import evaluate_dictionary, evaluate_heldout
from tfp_esc.inference import _training
from tfp_esc.inference.amortized import fit_amortized
from tfp_esc.objective.annealing import NoAnnealing

N, D, H = 8, 4, 2


def _x():
  return np.random.default_rng(0).standard_normal((N, D))


def _dictionary():
  w = np.random.default_rng(1).standard_normal((D, H))
  return w / np.linalg.norm(w, axis=0)


def _posterior():
  return tfp_esc.DiagonalGaussian(np.zeros((N, H)), np.ones((N, H)))


def _model():
  return tfp_esc.SparseCodingModel(_dictionary(), np.ones(H), 1.0)


# Kinds of bad value: name -> (exception, maker(valid value, draw)).
# `draw(strategy)` draws from hypothesis, or returns the fixed example.
def _spoil_entry(value, draw, bad):
  value = np.array(value, np.float64)
  index = draw(st.integers(0, value.size - 1), 0)
  value.flat[index] = bad
  return value


BAD = {
    # arrays
    'nan': (ValueError, lambda v, draw: _spoil_entry(v, draw, np.nan)),
    'inf': (ValueError, lambda v, draw: _spoil_entry(
        v, draw, draw(st.sampled_from([np.inf, -np.inf]), np.inf))),
    'empty': (ValueError, lambda v, draw: np.zeros(
        (0,) + np.shape(v)[1:])),
    'rank1': (ValueError, lambda v, draw: np.asarray(v).ravel()),
    'rank3': (ValueError, lambda v, draw: np.asarray(v)[None]),
    'bool dtype': (TypeError, lambda v, draw: np.asarray(v) > 0),
    'complex dtype': (TypeError, lambda v, draw: np.asarray(v) + 1j),
    'strings': (TypeError, lambda v, draw: np.full(np.shape(v), 'a')),
    'constant rows': (ValueError, lambda v, draw: np.broadcast_to(
        np.asarray(v)[:1] * draw(st.sampled_from([0.0, 1.0, -3.5]), 0.0),
        np.shape(v)).copy()),
    'non-positive entry': (ValueError, lambda v, draw: _spoil_entry(
        v, draw, -draw(st.floats(0, 1e6), 0.0))),
    # counts
    'zero': (ValueError, lambda v, draw: 0),
    'negative int': (ValueError, lambda v, draw: draw(
        st.integers(-10**6, -1), -1)),
    'float count': (TypeError, lambda v, draw: float(draw(
        st.integers(1, 100), 2))),
    'fractional count': (TypeError, lambda v, draw: draw(
        st.floats(0.1, 100).filter(lambda f: not f.is_integer()), 2.5)),
    'bool count': (TypeError, lambda v, draw: draw(st.booleans(), True)),
    'string count': (TypeError, lambda v, draw: '3'),
    'too large count': (ValueError, lambda v, draw: draw(
        st.integers(N + 1, 10**6), N + 1)),
    # reals
    'negative real': (ValueError, lambda v, draw: -draw(
        st.floats(1e-9, 1e9), 0.5)),
    'zero real': (ValueError, lambda v, draw: 0.0),
    'nan real': (ValueError, lambda v, draw: math.nan),
    'inf real': (ValueError, lambda v, draw: math.inf),
    # Above every bound in the library (the largest, init_scale's 1000, is
    # allowed: hypothesis once drew exactly 1000.0).
    'huge real': (ValueError, lambda v, draw: draw(st.floats(
        1e3, 1e300, exclude_min=True),
                                                   1e6)),
    'bool real': (TypeError, lambda v, draw: True),
    'string real': (TypeError, lambda v, draw: '0.5'),
    # names
    'unknown name': (ValueError, lambda v, draw: draw(
        st.sampled_from(['spherical', 'Diagonal ', '', 'fast']), 'spherical')),
    'non-string name': (TypeError, lambda v, draw: draw(
        st.sampled_from([3, None, 1.5, ['diagonal']]), 3)),
    # flags
    'non-bool flag': (TypeError, lambda v, draw: draw(
        st.sampled_from([1, 'yes', None, 0.0]), 1)),
    # schedules
    'schedule type': (TypeError, lambda v, draw: draw(
        st.sampled_from([3, 1.5, object()]), 3)),
}

DATA = ('nan', 'inf', 'empty', 'rank1', 'rank3', 'bool dtype',
        'complex dtype', 'strings')
TRAIN_DATA = DATA + ('constant rows',)
COUNT = ('zero', 'negative int', 'float count', 'fractional count',
         'bool count', 'string count')
COUNT0 = ('negative int', 'float count', 'fractional count', 'bool count',
          'string count')
POSITIVE = ('negative real', 'zero real', 'nan real', 'inf real',
            'bool real', 'string real')
BOUNDED = POSITIVE + ('huge real',)
NAME = ('unknown name', 'non-string name')
FLAG = ('non-bool flag',)
SCHEDULE = ('unknown name', 'schedule type')
POSITIVE_ARRAY = ('nan', 'non-positive entry')

# Entry point -> (function, valid keyword arguments, {argument: kinds}).
ENTRY_POINTS = {
    'fit_joint': (tfp_esc.fit_joint, lambda: dict(
        x=_x(), num_latents=H, posterior='diagonal', max_calls=1,
        max_iterations=2, jit_compile=False), {
            'x': TRAIN_DATA, 'num_latents': COUNT, 'posterior': NAME,
            'max_calls': COUNT, 'max_iterations': COUNT,
            'num_correction_pairs': COUNT, 'seed': COUNT0,
            'log_every': COUNT0, 'tolerance': ('negative real', 'nan real',
                                               'huge real', 'bool real'),
            'init_scale': BOUNDED, 'train_dictionary': FLAG,
            'jit_compile': FLAG, 'schedule': SCHEDULE,
            'init_dictionary': DATA}),
    'fit_em(incremental)': (tfp_esc.fit_em, lambda: dict(
        x=_x(), num_latents=H, epochs=1, batch_size=4, jit_compile=False), {
            'x': TRAIN_DATA, 'num_latents': COUNT, 'epochs': COUNT,
            'batch_size': COUNT + ('too large count',),
            'refine_rounds': COUNT0, 'e_step_iterations': COUNT,
            'first_visit_iterations': COUNT, 'seed': COUNT0,
            'engine': NAME, 'schedule': SCHEDULE, 'resume': FLAG,
            'train_dictionary': FLAG}),
    'fit_em(paper)': (tfp_esc.fit_em, lambda: dict(
        x=_x(), num_latents=H, engine='paper', epochs=1, batch_size=4,
        jit_compile=False), {
            'x': TRAIN_DATA, 'num_latents': COUNT, 'epochs': COUNT,
            'batch_size': COUNT + ('too large count',),
            'e_step_iterations': COUNT, 'eval_iterations': COUNT,
            'm_step_size': BOUNDED, 'posterior': NAME, 'e_step': NAME,
            'schedule': SCHEDULE, 'warm_start': FLAG, 'seed': COUNT0,
            'scale_floor': ('negative real', 'nan real', 'huge real')}),
    'fit_amortized': (fit_amortized, lambda: dict(
        x=_x(), num_latents=H, epochs=1, batch_size=4, hidden_units=4,
        num_blocks=0, verbose=0), {
            'x': TRAIN_DATA, 'num_latents': COUNT, 'epochs': COUNT,
            'batch_size': COUNT + ('too large count',),
            'learning_rate': BOUNDED, 'posterior': NAME, 'objective': NAME,
            'num_samples': COUNT, 'hidden_units': COUNT, 'num_blocks': COUNT0,
            'seed': COUNT0, 'schedule': SCHEDULE, 'resume': FLAG}),
    'evaluate_dictionary': (evaluate_dictionary, lambda: dict(
        x=_x(), dictionary=_dictionary(), max_calls=1, max_iterations=2,
        num_iw_samples=2, jit_compile=False), {
            'x': TRAIN_DATA, 'dictionary': DATA, 'posterior': NAME,
            'num_iw_samples': COUNT0, 'gini_samples': COUNT, 'seed': COUNT0,
            'max_calls': COUNT, 'max_iterations': COUNT}),
    'evaluate_heldout': (evaluate_heldout, lambda: dict(
        x=_x(), dictionary=_dictionary(), scales=np.ones(H),
        noise_variance=1.0, max_calls=1, max_iterations=2, num_iw_samples=2,
        jit_compile=False), {
            'x': DATA, 'dictionary': DATA, 'scales': POSITIVE_ARRAY,
            'noise_variance': POSITIVE, 'gini_samples': COUNT}),
    'entropy_elbo': (tfp_esc.entropy_elbo, lambda: dict(
        x=_x(), dictionary=_dictionary(), posterior=_posterior()), {
            'x': DATA, 'dictionary': DATA}),
    'classical_elbo': (tfp_esc.classical_elbo, lambda: dict(
        x=_x(), dictionary=_dictionary(), posterior=_posterior(),
        scales=np.ones(H), noise_variance=1.0), {
            'x': DATA, 'dictionary': DATA, 'scales': POSITIVE_ARRAY,
            'noise_variance': POSITIVE}),
    'sampled_elbo': (tfp_esc.sampled_elbo, lambda: dict(
        x=_x(), model=_model(), posterior=_posterior(), num_samples=2,
        seed=0), {
            'x': DATA, 'num_samples': COUNT}),
    'SparseCodingModel': (tfp_esc.SparseCodingModel, lambda: dict(
        dictionary=_dictionary(), scales=np.ones(H), noise_variance=1.0), {
            'dictionary': DATA, 'scales': POSITIVE_ARRAY,
            'noise_variance': POSITIVE}),
    'DiagonalGaussian': (tfp_esc.DiagonalGaussian, lambda: dict(
        loc=np.zeros((N, H)), scale=np.ones((N, H))), {
            'loc': ('nan', 'inf', 'bool dtype', 'complex dtype', 'strings'),
            'scale': POSITIVE_ARRAY}),
    'FullGaussian': (tfp_esc.FullGaussian, lambda: dict(
        loc=np.zeros((N, H)), scale_tril=np.broadcast_to(
            np.eye(H), (N, H, H)).copy()), {
                'loc': ('nan', 'inf'), 'scale_tril': ('nan', 'inf')}),
    'LowRankGaussian': (tfp_esc.LowRankGaussian, lambda: dict(
        loc=np.zeros((N, H)), scale=np.ones((N, H)),
        factor=np.zeros((N, H, 1))), {
            'loc': ('nan', 'inf'), 'scale': POSITIVE_ARRAY,
            'factor': ('nan', 'inf')}),
    'make_bars': (tfp_esc.make_bars, lambda: dict(
        num_points=4, side=3, noise_std=0.1, seed=0), {
            'num_points': COUNT, 'side': COUNT, 'noise_std': POSITIVE,
            'seed': COUNT0}),
    'bars_recovery': (tfp_esc.bars_recovery, lambda: dict(
        true_dictionary=_dictionary(), learned_dictionary=_dictionary(),
        threshold=0.9), {
            'true_dictionary': DATA, 'learned_dictionary': DATA,
            'threshold': BOUNDED}),
    'gini_index': (tfp_esc.gini_index, lambda: dict(
        codes=np.ones((N, H))), {
            # (no 'empty': zero code vectors give zero Gini indices, as any
            # elementwise NumPy function does)
            'codes': ('nan', 'inf', 'bool dtype', 'complex dtype',
                      'strings')}),
    'get_schedule': (tfp_esc.get_schedule, lambda: dict(name='prior'), {
        'name': NAME}),
}

CELLS = [(entry, argument, kind)
         for entry, (_, _, arguments) in ENTRY_POINTS.items()
         for argument, kinds in arguments.items() for kind in kinds]


class _Traced(AssertionError):
  pass


@contextlib.contextmanager
def _no_tf_function_runs():
  """tf.function replaced: building one is fine, running one fails."""
  original = tf.function

  def guarded(func=None, **kwargs):
    del kwargs
    def fail(*args, **kw):
      raise _Traced(f'a tf.function ({getattr(func, "__name__", func)}) ran '
                    'before the bad argument was refused')
    return fail if func is not None else (lambda f: guarded(f))

  tf.function = guarded
  try:
    yield
  finally:
    tf.function = original


def _fixed(strategy, example):
  del strategy
  return example


def _call(entry, argument, kind, draw=_fixed):
  """Calls `entry` with `argument` spoiled by `kind`; returns the error."""
  function, valid, _ = ENTRY_POINTS[entry]
  kwargs = valid()
  error, make = BAD[kind]
  kwargs[argument] = make(kwargs.get(argument, 1.0), draw)
  if entry == 'fit_joint' and argument == 'rank':
    kwargs['posterior'] = 'lowrank'
  with _no_tf_function_runs():
    try:
      function(**kwargs)
    except (ValueError, TypeError) as e:
      return error, e
  return error, None


def _check(entry, argument, kind, draw=_fixed):
  expected, raised = _call(entry, argument, kind, draw)
  assert raised is not None, f'{entry}({argument}={kind}) raised nothing'
  assert type(raised) is expected, (
      f'{entry}({argument}={kind}): {type(raised).__name__} ({raised}), '
      f'expected {expected.__name__}')
  assert argument in str(raised), (
      f'{entry}({argument}={kind}): the message does not name {argument!r}:'
      f' {raised}')


@pytest.mark.parametrize('entry,argument,kind', CELLS)
def test_every_cell(entry, argument, kind):
  _check(entry, argument, kind)


def _listed_values(kind):
  """How many values `kind` draws from a finite list (1 if none)."""
  sizes = []
  def record(strategy, example):
    sizes.append(len(getattr(strategy, 'elements', ())) or 1)
    return example
  BAD[kind][1](_x(), record)
  return max(sizes, default=1)


def _nth_listed(i):
  """A draw returning the i-th value of a finite list, else the example."""
  def draw(strategy, example):
    elements = getattr(strategy, 'elements', None)
    return elements[i % len(elements)] if elements else example
  return draw


@pytest.mark.parametrize('entry,argument,kind', [
    cell for cell in CELLS if _listed_values(cell[2]) > 1])
def test_every_listed_value(entry, argument, kind):
  """Every value of a finite list of bad inputs, not only the first.

  An argument whose default is None must still refuse an explicit None
  where None is listed as bad (e_step once accepted it and ran).
  """
  for i in range(_listed_values(kind)):
    _check(entry, argument, kind, _nth_listed(i))


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_hypothesis_sweep(data):
  entry, argument, kind = data.draw(st.sampled_from(CELLS))
  _check(entry, argument, kind, lambda strategy, example: data.draw(strategy))


def sweep_table():
  """Rows (entry point, argument, bad input, exception: message)."""
  rows = []
  for entry, argument, kind in CELLS:
    expected, raised = _call(entry, argument, kind)
    outcome = ('no error' if raised is None else
               f'{type(raised).__name__}: {raised}')
    rows.append((entry, argument, kind, outcome))
  return rows


def print_table():
  print('| entry point | argument | bad input | raised |')
  print('|---|---|---|---|')
  for row in sweep_table():
    print('| ' + ' | '.join(str(v).replace('|', '/')[:160] for v in row)
          + ' |')


@pytest.mark.parametrize('name', ['none', 'prior', 'prior_linear'])
def test_schedules_are_accepted_by_name(name):
  # fit_em(schedule='prior') used to fail with "'str' object is not
  # callable"; a name now means get_schedule(name).
  schedule = _training.check_schedule(name)
  expected = tfp_esc.get_schedule(name)
  assert type(schedule) is type(expected)
  assert [schedule(k) for k in range(5)] == [expected(k) for k in range(5)]
  assert isinstance(_training.check_schedule(None), NoAnnealing)


def test_counts_accept_numpy_integers():
  # The one rule: Python and NumPy integers are counts, nothing else is.
  assert tfp_esc.make_bars(np.int64(4), side=np.int32(3)).x.shape == (4, 9)
