"""Experiments end to end: the one place that connects the stages.

data -> model -> posterior -> objective -> inference -> evaluation. Scripts and
notebooks call `train_bars(config, workdir)` or
`train_patches(config, workdir)`; everything they learn and measure is written
to `workdir`. For bars:

  dictionary.npy   [D, H] learned unit-norm dictionary
  metrics.json     final ELBO, ground-truth ELBO, sigma^2, scales, recovery,
                   Gini, seconds, the per-call trace
  dictionary.png   learned dictionary next to the truth (when known)
  training.png     ELBO and the three entropies over L-BFGS calls
"""

import dataclasses
import importlib.util
import os
import time
import typing

import numpy as np
import tensorflow as tf
from absl import logging

from tfp_esc import _checks, artifacts
from tfp_esc.data.bars import make_bars
from tfp_esc.data.patches import whitened_patches
from tfp_esc.evaluation import metrics, plots
from tfp_esc.evaluation.evaluate import amortization_gap
from tfp_esc.inference import _checkpoint
from tfp_esc.inference.amortized import fit_amortized
from tfp_esc.inference.em import E_STEPS, ENGINES, fit_em
from tfp_esc.inference.joint import INIT_SCALE, fit_joint
from tfp_esc.objective.annealing import SCHEDULE_NAMES, get_schedule
from tfp_esc.posterior.gaussian import FAMILIES

__all__ = ['DTYPES', 'METHODS', 'POSTERIORS', 'STRATEGIES', 'BarsConfig',
           'ConfigError',
           'PatchesConfig', 'RestorationConfig', 'load_bars_data',
           'restore', 'train_bars', 'train_patches']

# The choices of the configs' enumerated fields: the library's own lists.
POSTERIORS = tuple(sorted(FAMILIES))
METHODS = ('em', 'amortized')
DTYPES = ('float32', 'float64')
# tf.distribute strategies of PatchesConfig.strategy: 'default' (one
# device) or 'mirrored' (`tf.distribute.MirroredStrategy()`: every visible
# GPU, else the CPU).
STRATEGIES = ('default', 'mirrored')

# Fields of PatchesConfig that say how far to train, or on what devices,
# not which run it is: a resumed run may change them (the checkpoint records
# everything else).
_EXTENT_FIELDS = ('epochs', 'refine_rounds', 'strategy',
                  'early_stopping_patience', 'evaluate_every')


class ConfigError(ValueError):
  """A configuration field holds a bad value; `field` names it.

  A ValueError also where `_checks` raised a TypeError (a wrong type), so
  that one except clause catches every bad setting.
  """

  def __init__(self, field, message):
    super().__init__(message)
    self.field = field


def _field(default, *, choices=None, minimum=None, low=None, low_open=True):
  """A config field with the rules `_validate` checks (and flags offer).

  Args:
    default: the default value.
    choices: the allowed values (a library list), or None.
    minimum: an int field's smallest value (`_checks.check_count`).
    low, low_open: a float field's lower bound, excluded or not
      (`_checks.check_real`; every float must be finite).
  """
  return dataclasses.field(default=default, metadata={
      'choices': choices, 'minimum': minimum, 'low': low,
      'low_open': low_open})


def _validate(config):
  """Checks every field of a config dataclass by `_checks`' one set of rules.

  Raises:
    ConfigError: the first field with a bad type or value, named.
  """
  hints = typing.get_type_hints(type(config))
  for f in dataclasses.fields(config):
    value = getattr(config, f.name)
    kinds = typing.get_args(hints[f.name]) or (hints[f.name],)
    if value is None:
      if type(None) not in kinds:
        raise ConfigError(f.name, f'{f.name} must be set, got None.')
      continue
    kind = next(k for k in kinds if k is not type(None))
    rules = f.metadata
    try:
      if rules.get('choices'):
        _checks.check_choice(value, f.name, rules['choices'])
      elif kind is bool:
        _checks.check_flag(value, f.name)
      elif kind is int:
        _checks.check_count(value, f.name, rules.get('minimum') or 0)
      elif kind is float:
        _checks.check_real(value, f.name, rules.get('low'),
                           low_open=rules.get('low_open', True))
      elif not isinstance(value, kind):
        raise TypeError(f'{f.name} must be a {kind.__name__}, got {value!r}.')
    except (TypeError, ValueError) as e:
      raise ConfigError(f.name, str(e)) from None


@dataclasses.dataclass
class BarsConfig:
  """Configuration of a bars run (SPEC 9-10); defaults are the demo's.

  Attributes:
    seed: seeds the data (when generated), the initial dictionary and the
      posterior samples for the Gini index.
    num_points: N, for generated data.
    side: grid side (D = side^2, H = 2 side), for generated data.
    noise_std: observation noise of generated data.
    data_path: optional .npy of shape [N, side^2] to train on instead.
    posterior: 'full', 'diagonal' or 'lowrank'.
    rank: R of the low-rank family.
    annealing: 'none', 'prior', 'likelihood', 'beta' or 'prior_linear';
      schedules are indexed by L-BFGS call.
    max_calls: most L-BFGS calls (each restarts the L-BFGS history).
    max_iterations: L-BFGS iterations per call.
    num_correction_pairs: L-BFGS history size.
    tolerance: relative ELBO change per call that counts as converged.
    init_scale: initial posterior standard deviation, in units of the
      data's rms (fit_joint's INIT_SCALE: 0.1 on the bars' scale).
    dtype: 'float64' or 'float32'.
    jit_compile: compile the ELBO's value and gradient with XLA (faster
      long runs; slower to start).
    gini_samples: posterior samples per point for the Gini index.
  """
  seed: int = _field(0, minimum=0)
  num_points: int = _field(1000, minimum=1)
  side: int = _field(5, minimum=2)
  noise_std: float = _field(0.1, low=0.0, low_open=False)
  data_path: str | None = None
  posterior: str = _field('full', choices=POSTERIORS)
  rank: int = _field(2, minimum=1)
  annealing: str = _field('none', choices=SCHEDULE_NAMES)
  max_calls: int = _field(100, minimum=1)
  max_iterations: int = _field(200, minimum=1)
  num_correction_pairs: int = _field(10, minimum=1)
  tolerance: float = _field(1e-6, low=0.0, low_open=False)
  init_scale: float = _field(INIT_SCALE, low=0.0)
  dtype: str = _field('float64', choices=DTYPES)
  jit_compile: bool = True
  gini_samples: int = _field(10, minimum=1)

  def validate(self):
    """Checks every field; raises `ConfigError` naming the first bad one."""
    _validate(self)

  def fit_options(self):
    """Keyword arguments of `fit_joint` that this configuration sets."""
    return {'posterior': self.posterior, 'rank': self.rank,
            'max_calls': self.max_calls,
            'max_iterations': self.max_iterations,
            'num_correction_pairs': self.num_correction_pairs,
            'tolerance': self.tolerance, 'init_scale': self.init_scale,
            'jit_compile': self.jit_compile, 'seed': self.seed}


def load_bars_data(path, side=5, dtype='float64'):
  """Loads a user's bars data: a .npy of shape [N, side^2], finite.

  Raises:
    FileNotFoundError: no file at `path`.
    ValueError: not a 2-D array with side^2 columns, or NaN/inf values.
  """
  if not os.path.isfile(path):
    raise FileNotFoundError(f'data file {path!r} does not exist.')
  try:
    x = np.load(path, allow_pickle=False)
  except ValueError as e:
    raise ValueError(f'data file {path!r} is not a readable .npy array: '
                     f'{e}') from e
  if x.ndim != 2 or x.shape[1] != side * side or x.shape[0] < 1:
    raise ValueError(f'data file {path!r} must hold an [N, {side * side}] '
                     f'array, got shape {x.shape}.')
  if x.dtype.kind not in 'fiu':
    raise ValueError(f'data file {path!r} holds dtype {x.dtype}, not numbers.')
  if not np.all(np.isfinite(x)):
    raise ValueError(f'data file {path!r} holds NaN or inf values.')
  return x.astype(dtype)


def train_bars(config, workdir):
  """Trains on bars, evaluates, and writes the outputs to `workdir`.

  Args:
    config: `BarsConfig`.
    workdir: output folder (created).

  Returns:
    The metrics dict also written to workdir/metrics.json.

  Raises:
    ConfigError: a bad setting (named), before any work.
    FileNotFoundError, ValueError: the data file's errors.
  """
  config.validate()
  schedule = get_schedule(config.annealing)
  truth = None
  if config.data_path:
    x = load_bars_data(config.data_path, config.side, config.dtype)
  else:
    data = make_bars(config.num_points, config.side, config.noise_std,
                     seed=config.seed, dtype=np.dtype(config.dtype))
    x, truth = data.x, data.dictionary
  num_latents = 2 * config.side
  os.makedirs(workdir, exist_ok=True)
  logging.info('Bars: N=%d, D=%d, H=%d, %s posterior, %s annealing -> %s',
               x.shape[0], x.shape[1], num_latents, config.posterior,
               config.annealing, workdir)
  start = time.perf_counter()
  result = fit_joint(x, num_latents, schedule=schedule, **config.fit_options())
  seconds = time.perf_counter() - start
  gini_mean, gini_sd = metrics.posterior_gini(
      result.posterior, config.gini_samples, seed=config.seed)
  summary = {
      'elbo': result.elbo,
      'noise_variance': result.noise_variance,
      'scales': result.scales,
      'entropies': {k: result.trace[k][-1] for k in (
          'q_entropy', 'prior_entropy', 'likelihood_entropy')},
      'gini': {'mean': gini_mean, 'sd': gini_sd},
      'seconds': seconds,
      'converged': result.converged,
      'num_calls': int(result.trace['call'][-1]),
      'trace': result.trace,
      'config': dataclasses.asdict(config),
  }
  if truth is not None:
    logging.info('Fitting posteriors for the ground-truth dictionary.')
    ground_truth = fit_joint(x, init_dictionary=truth, train_dictionary=False,
                             **config.fit_options())
    match = metrics.bars_recovery(truth, result.dictionary)
    summary.update(
        ground_truth_elbo=ground_truth.elbo,
        ground_truth_noise_variance=ground_truth.noise_variance,
        recovered=match.recovered,
        num_recovered=match.num_recovered,
        bar_similarity=match.similarity)
  artifacts.save_npy(os.path.join(workdir, 'dictionary.npy'),
                     result.dictionary)
  artifacts.save_json(os.path.join(workdir, 'metrics.json'), summary)
  title = (f'ELBO {result.elbo:.3f}' + (
      f' (ground truth {summary["ground_truth_elbo"]:.3f})'
      if truth is not None else ''))
  if truth is not None:
    plots.plot_dictionary_comparison(
        result.dictionary, truth, path=os.path.join(workdir, 'dictionary.png'),
        title=title)
  else:
    order = np.argsort(-result.scales)
    plots.plot_dictionary(result.dictionary, order=order, title=title,
                          path=os.path.join(workdir, 'dictionary.png'))
  trace = dict(result.trace, step=result.trace['call'],
               annealed_objective=result.trace['objective'])
  plots.plot_training_curves(trace, path=os.path.join(workdir, 'training.png'),
                             title='Bars: entropy ELBO over L-BFGS calls')
  logging.info('Done in %.1f s: ELBO %.4f%s, noise_variance %.4g, Gini %.3f +- %.3f',
               seconds, result.elbo,
               '' if truth is None else (
                   f' (ground truth {summary["ground_truth_elbo"]:.4f}), '
                   f'{summary["num_recovered"]}/{truth.shape[1]} bars '
                   'recovered'),
               result.noise_variance, gini_mean, gini_sd)
  return summary


@dataclasses.dataclass
class PatchesConfig:
  """Configuration of a natural-image-patches run (SPEC 9-10).

  Attributes:
    method: 'em' (variants A/B) or 'amortized' (C/D).
    engine: EM engine, 'incremental' (the default: incremental EM plus
      refinement rounds, diagonal posteriors) or 'paper' (the paper's
      protocol: fresh-start L-BFGS E-steps, gradient M-steps); see
      `tfp_esc.inference.em.fit_em`.
    refine_rounds: refinement rounds of the incremental engine after the
      epochs (each `refine_iterations` L-BFGS iterations on the profile
      ELBO, each iteration about one pass over the data).
    posterior: 'diagonal', 'lowrank' or 'full'.
    rank: R of the low-rank family.
    annealing: 'none', 'prior', 'prior_linear', 'likelihood' or 'beta'
      (indexed by epoch).
    num_patches: N; None: every row of a file of ready patches `[N, D]`,
      else `DEFAULT_NUM_PATCHES` drawn from the images.
    num_latents: H, the number of latents (dictionary columns).
    patch_size: patches are patch_size x patch_size (D = patch_size^2).
    epochs: training epochs.
    batch_size: minibatch size.
    images: path of IMAGES.mat, an image folder or a .npy/.npz of images or
      patches; None: the embedded scikit-image photographs.
    seed: seeds patches, initialisation and batch order.
    warm_start: engine 'paper': E-steps start from each point's previous
      parameters.
    e_step: engine 'paper': E-step, 'lbfgs' or 'newton' (diagonal only);
      None: L-BFGS (see `tfp_esc.inference.em.EMTrainer`).
    e_step_iterations: iterations per EM E-step; None: the engine's default
      (incremental 16 per revisit; paper 10 Newton or 100 L-BFGS).
    m_step_size: engine 'paper': gradient step on the dictionary.
    learning_rate: Adam learning rate (amortized).
    early_stopping_patience: stop before `epochs` once the full-data ELBO
      has not risen for this many non-annealed epochs
      (`tfp_esc.inference._training.elbo_has_stalled`; EM's refinement
      rounds still run after); None: run every epoch.
    evaluate_every: method 'amortized': the full-data evaluation (history,
      checkpoint, early stopping, Gini) after every this many epochs, the
      last one and one where training stops; 1: every epoch. Training does
      not depend on it; each evaluation costs about a third of an epoch.
    posterior_steps: method 'amortized', diagonal posteriors: K
      majorise-minimise steps that refine the encoder's posteriors in
      training and evaluation (`tfp_esc.inference.amortized`, "Refined
      posteriors"); 0: the encoder's own.
    refine_in_training: method 'amortized' with posterior_steps > 0: False
      trains exactly as posterior_steps = 0 and refines only the model's
      posteriors and their evaluation (`fit_amortized`).
    hidden_units: width of the encoder's layers (amortized).
    num_blocks: residual blocks of the encoder (amortized).
    dtype: 'float32' or 'float64'.
    gini_samples: posterior samples per point for the Gini index.
    gini_points: at most this many points enter the Gini index.
    strategy: 'default' (one device) or 'mirrored'
      (`tf.distribute.MirroredStrategy()` over every visible GPU, else the
      CPU; the batch is split among them). Method 'amortized': see
      `fit_amortized`. The incremental EM engine then runs the classical,
      data-parallel E-step (`tfp_esc.inference.incremental_em`'s module
      doc), recorded in its checkpoint; engine 'paper' runs on one device.
  """
  method: str = _field('em', choices=METHODS)
  engine: str = _field('incremental', choices=ENGINES)
  refine_rounds: int = _field(3, minimum=0)
  posterior: str = _field('diagonal', choices=POSTERIORS)
  rank: int = _field(5, minimum=1)
  annealing: str = _field('prior', choices=SCHEDULE_NAMES)
  num_patches: int | None = _field(None, minimum=1)
  num_latents: int = _field(100, minimum=1)
  patch_size: int = _field(16, minimum=2)
  epochs: int = _field(10, minimum=1)
  batch_size: int = _field(512, minimum=1)
  images: str | None = None
  seed: int = _field(0, minimum=0)
  warm_start: bool = False
  e_step: str | None = _field(None, choices=E_STEPS)
  e_step_iterations: int | None = _field(None, minimum=1)
  m_step_size: float = _field(0.5, low=0.0)
  learning_rate: float = _field(1e-3, low=0.0)
  early_stopping_patience: int | None = _field(None, minimum=1)
  evaluate_every: int = _field(1, minimum=1)
  posterior_steps: int = _field(0, minimum=0)
  refine_in_training: bool = True
  hidden_units: int = _field(256, minimum=1)
  num_blocks: int = _field(2, minimum=0)
  dtype: str = _field('float32', choices=DTYPES)
  gini_samples: int = _field(10, minimum=1)
  gini_points: int = _field(2048, minimum=1)
  strategy: str = _field('default', choices=STRATEGIES)

  def validate(self):
    """Checks every field; raises `ConfigError` naming the first bad one.

    Besides each field's own rules: options of one engine or method are
    refused with the other, so that no setting is silently ignored.
    """
    _validate(self)
    incremental = self.method == 'em' and self.engine == 'incremental'
    if incremental and self.posterior != 'diagonal':
      raise ConfigError('posterior', "posterior must be 'diagonal' with the "
                        f"incremental EM engine, got {self.posterior!r} (use "
                        "engine 'paper' or method 'amortized').")
    if incremental and (self.e_step is not None or self.warm_start):
      name = 'e_step' if self.e_step is not None else 'warm_start'
      raise ConfigError(name, f"{name} is an option of engine 'paper', not "
                        'of the incremental engine.')
    if (self.method == 'em' and self.engine == 'paper'
        and self.strategy != 'default'):
      raise ConfigError('strategy', f"strategy {self.strategy!r} is an "
                        "option of method 'amortized' and of the "
                        "incremental EM engine; engine 'paper' runs on one "
                        'device.')
    if self.method == 'em' and self.evaluate_every != 1:
      raise ConfigError('evaluate_every', 'evaluate_every is an option of '
                        "method 'amortized'; EM records every epoch (the "
                        'incremental engine reads it off its sums).')
    if self.method == 'em' and self.posterior_steps:
      raise ConfigError('posterior_steps', 'posterior_steps is an option of '
                        "method 'amortized'; EM fits every point's posterior "
                        'itself.')
    if (self.method == 'amortized' and self.posterior_steps
        and self.posterior != 'diagonal'):
      raise ConfigError('posterior_steps', 'posterior_steps refines diagonal '
                        f'posteriors only, got posterior {self.posterior!r}.')
    if not self.refine_in_training and not (self.method == 'amortized'
                                            and self.posterior_steps):
      raise ConfigError('refine_in_training', 'refine_in_training False is '
                        "an option of method 'amortized' with "
                        'posterior_steps > 0 (it keeps their refinement out '
                        'of training).')
    if self.method == 'amortized' and (
        self.e_step is not None or self.e_step_iterations is not None):
      name = 'e_step' if self.e_step is not None else 'e_step_iterations'
      raise ConfigError(name, f"{name} is an option of method 'em', not "
                        "'amortized'.")

  def run_record(self):
    """The fields that identify the run (all but how far it trains).

    A checkpoint records them; a resume with other values is refused.
    """
    record = dataclasses.asdict(self)
    for name in _EXTENT_FIELDS:
      del record[name]
    return record


# Patches drawn from images when PatchesConfig.num_patches is None.
DEFAULT_NUM_PATCHES = 20480


def _holds_ready_patches(path):
  """Whether `path` is a .npy/.npz whose (first) array is 2-D patches."""
  if path is None or not str(path).endswith(('.npy', '.npz')):
    return False
  try:
    with np.load(path, mmap_mode='r') as data:  # .npz
      return data[data.files[0]].ndim == 2
  except (AttributeError, TypeError):  # .npy: a memory-mapped array
    return np.load(path, mmap_mode='r').ndim == 2
  except (OSError, ValueError, IndexError):
    return False  # the loaders below raise the error that names the file


def _gini_subset(config, num_points):
  rng = np.random.default_rng([config.seed, 7])
  size = min(config.gini_points, num_points)
  return np.sort(rng.choice(num_points, size, replace=False))


def _tensorboard_dir(workdir):
  """workdir/tensorboard where TensorBoard is installed, else None (no
  warning for an optional extra)."""
  return (os.path.join(workdir, 'tensorboard')
          if importlib.util.find_spec('tensorboard') else None)


def _train_patches_em(config, x, workdir, checkpoint, resume):
  subset = _gini_subset(config, len(x))

  def gini(trainer, record):
    del record
    mean, sd = metrics.posterior_gini(trainer.posterior(subset),
                                      config.gini_samples, seed=config.seed)
    return {'gini_mean': mean, 'gini_sd': sd}

  if config.engine == 'incremental':
    options = {'refine_rounds': config.refine_rounds}
    if config.strategy == 'mirrored':
      options['strategy'] = tf.distribute.MirroredStrategy()
    if config.e_step_iterations is not None:
      options['e_step_iterations'] = config.e_step_iterations
  else:
    options = {'rank': config.rank,
               'e_step_iterations': config.e_step_iterations,
               'm_step_size': config.m_step_size,
               'warm_start': config.warm_start}
    if config.e_step is not None:
      options['e_step'] = config.e_step
  result = fit_em(
      x, config.num_latents, engine=config.engine, epochs=config.epochs,
      checkpoint_path=checkpoint, resume=resume, overwrite=not resume,
      checkpoint_config=config.run_record(), on_epoch_end=gini, verbose=0,
      tensorboard_dir=_tensorboard_dir(workdir),
      early_stopping_patience=config.early_stopping_patience,
      posterior=config.posterior,
      schedule=get_schedule(config.annealing), batch_size=config.batch_size,
      seed=config.seed, **options)
  return result.dictionary, result.history


def train_patches(config, workdir, resume=False, overwrite=False):
  """Trains on whitened natural-image patches and writes outputs to `workdir`.

  Writes dictionary.npy `[D, H]`, metrics.json (per-epoch ELBO, entropies,
  sigma^2, Gini mean and sd, seconds under 'history'; final values at top
  level under the bars script's keys, of the model's posteriors: the
  refined ones of an amortized model that refines at inference only, whose
  history and 'training_elbo' are those of the encoder's, which training
  uses), dictionary.png (ordered by lambda),
  training.png, gini.png, and the checkpoint directory workdir/checkpoint
  (`tf.train.Checkpoint`) after every epoch.
  The checkpoint records the run's config (`PatchesConfig.run_record`) and
  a fingerprint of the data; `resume=True` continues an interrupted run to
  the same result as an uninterrupted one, and refuses a checkpoint of
  another run.

  Args:
    config: `PatchesConfig`.
    workdir: output folder (created).
    resume: continue from the checkpoint in `workdir`, if any.
    overwrite: start afresh even if `workdir` holds a checkpoint (without
      `resume` or `overwrite`, an existing checkpoint is an error).

  Returns:
    The metrics dict also written to workdir/metrics.json.

  Raises:
    ConfigError: a bad setting (named), before any work.
    ValueError: resume and overwrite both set; a checkpoint in `workdir`
      without either; a checkpoint of another run, fewer epochs than it has
      done, or a corrupt one (see `tfp_esc.inference._checkpoint`); the
      data loaders' errors.
  """
  config.validate()
  if resume and overwrite:
    raise ValueError('resume and overwrite exclude each other: resume '
                     'continues the checkpoint, overwrite starts afresh.')
  checkpoint = os.path.join(workdir, 'checkpoint')
  _checkpoint.check_start(checkpoint, resume, overwrite)
  num_patches = config.num_patches
  if num_patches is None and not _holds_ready_patches(config.images):
    num_patches = DEFAULT_NUM_PATCHES
  x = whitened_patches(config.images, num_patches=num_patches,
                       patch_size=config.patch_size, seed=config.seed,
                       dtype=np.dtype(config.dtype))
  os.makedirs(workdir, exist_ok=True)
  logging.info('Patches: N=%d, D=%d, H=%d, %s (%s posterior), %s annealing '
               '-> %s', x.shape[0], x.shape[1], config.num_latents,
               config.method, config.posterior, config.annealing, workdir)
  extra = {}
  if config.method == 'em':
    dictionary, history = _train_patches_em(config, x, workdir, checkpoint,
                                            resume)
  else:
    dictionary, history, model = _train_patches_amortized(
        config, x, workdir, checkpoint, resume)
    # What the encoder costs against per-point posteriors (issue 11).
    gap = amortization_gap(model, x)
    model_values = gap.pop('model')
    extra['amortization_gap'] = gap
    logging.info('Amortization gap: %.3f nats per patch (encoder %.3f, '
                 're-fit %.3f).', extra['amortization_gap']['gap'],
                 extra['amortization_gap']['encoder_elbo'],
                 extra['amortization_gap']['refit_elbo'])
  final = {k: history[k][-1] for k in history}
  if config.method == 'amortized' and not config.refine_in_training:
    # The history holds the encoder's posteriors (those training uses); the
    # model's posteriors are the refined ones, so the headline is theirs.
    extra['training_elbo'] = final['elbo']
    final.update(model_values)
  summary = {
      'elbo': final['elbo'],
      'noise_variance': final['noise_variance'],
      'scales': final['scales'],
      'entropies': {k: final[k] for k in (
          'q_entropy', 'prior_entropy', 'likelihood_entropy')},
      'gini': {'mean': final['gini_mean'], 'sd': final['gini_sd']},
      'localized_fraction': metrics.localized_fraction(
          dictionary, (config.patch_size, config.patch_size)),
      'seconds': final['seconds'],
      **extra,
      'history': history,
      'config': dataclasses.asdict(config),
  }
  artifacts.save_npy(os.path.join(workdir, 'dictionary.npy'), dictionary)
  artifacts.save_json(os.path.join(workdir, 'metrics.json'), summary)
  side = config.patch_size
  plots.plot_dictionary(
      dictionary, patch_shape=(side, side),
      order=np.argsort(-np.asarray(final['scales'])),
      title=f'{config.method}, {config.annealing} annealing: ELBO '
            f'{final["elbo"]:.2f} (ordered by scale)',
      path=os.path.join(workdir, 'dictionary.png'))
  plots.plot_training_curves(
      dict(history, step=history['epoch']),
      path=os.path.join(workdir, 'training.png'),
      title='Patches: entropy ELBO over epochs')
  plots.plot_gini(
      {'gini_mean': history['gini_mean'], 'gini_sd': history['gini_sd'],
       'step': history['epoch']}, path=os.path.join(workdir, 'gini.png'))
  logging.info('Done: ELBO %.3f, noise_variance %.4g, Gini %.3f +- %.3f, %.0f%% of '
               'the fields localized, %.1f s', final['elbo'], final['noise_variance'],
               final['gini_mean'], final['gini_sd'],
               100 * summary['localized_fraction'], final['seconds'])
  return summary


def _train_patches_amortized(config, x, workdir, checkpoint, resume):
  subset = _gini_subset(config, len(x))

  def gini(model, epoch):
    del epoch
    mean, sd = metrics.posterior_gini(model.posterior(x[subset]),
                                      config.gini_samples, seed=config.seed)
    return {'gini_mean': mean, 'gini_sd': sd}

  model, history = fit_amortized(
      x, config.num_latents, posterior=config.posterior, rank=config.rank,
      schedule=get_schedule(config.annealing), epochs=config.epochs,
      batch_size=config.batch_size, learning_rate=config.learning_rate,
      seed=config.seed, hidden_units=config.hidden_units,
      num_blocks=config.num_blocks, checkpoint_path=checkpoint,
      resume=resume, overwrite=not resume,
      checkpoint_config=config.run_record(),
      tensorboard_dir=_tensorboard_dir(workdir),
      on_epoch_end=gini, verbose=0,
      early_stopping_patience=config.early_stopping_patience,
      evaluate_every=config.evaluate_every,
      posterior_steps=config.posterior_steps,
      refine_in_training=config.refine_in_training,
      strategy=(tf.distribute.MirroredStrategy()
                if config.strategy == 'mirrored' else None))
  return model.dictionary.numpy(), history, model


@dataclasses.dataclass
class RestorationConfig:
  """Configuration of an image restoration (`tfp_esc.restoration`).

  Attributes:
    image: the damaged image: a .npy 2-D float array in [0, 1] or a
      PNG/JPEG/TIFF/BMP file (read, converted to grey in [0, 1]).
    mask: optional file of the image's shape (.npy or an image), nonzero
      where a pixel is missing and must be filled (scikit-image's
      convention).
    noise_std: optional noise std of the observed pixels; default learned
      (blind). 0: the observed pixels are exact and kept.
    clean: optional clean image (same formats) for PSNR and calibration.
    patch_size: patch side p.
    num_latents: atoms H; default p^2 / 4.
    num_train_patches: patches the dictionary is learned on.
    iterations: masked-EM iterations.
    e_step_iterations: E-step iterations of the final pass over every patch.
    scale_rounds: rounds of per-patch prior scales (0: one lambda for all).
    num_classes: patch classes with a dictionary each (1: one dictionary).
    class_rounds: rounds in which patches move to the class whose
      dictionary gives them the highest ELBO (0: none; 2 gains 0.2-0.5 dB
      inpainting textured photographs, at 4-5 times the time).
    seed: seeds the patch subset.
    dtype: 'float32' (default; as float64 to 0.02 dB, 2.4 times as fast)
      or 'float64'.
  """
  image: str | None = None
  mask: str | None = None
  noise_std: float | None = _field(None, low=0.0, low_open=False)
  clean: str | None = None
  patch_size: int = _field(8, minimum=2)
  num_latents: int | None = _field(None, minimum=1)
  num_train_patches: int = _field(8192, minimum=1)
  iterations: int = _field(20, minimum=1)
  e_step_iterations: int = _field(30, minimum=1)
  scale_rounds: int = _field(10, minimum=0)
  num_classes: int = _field(24, minimum=1)
  class_rounds: int = _field(0, minimum=0)
  seed: int = _field(0, minimum=0)
  dtype: str = _field('float32', choices=DTYPES)

  def validate(self):
    """Checks every field; raises `ConfigError` naming the first bad one."""
    _validate(self)


def _load_restoration_inputs(config):
  """(image, observed, clean) as arrays, checked before any work."""
  from tfp_esc.data.images import load_image_file  # pylint: disable=g-import-not-at-top
  image = load_image_file(config.image, 'image')
  observed = None
  if config.mask is not None:
    missing = load_image_file(config.mask, 'mask')
    if missing.shape != image.shape:
      raise ConfigError('mask', f'mask has shape {missing.shape} but image '
                        f'has shape {image.shape}; they must be equal.')
    observed = np.asarray(missing) == 0
  clean = None
  if config.clean is not None:
    clean = load_image_file(config.clean, 'clean').astype(np.float64)
    if clean.shape != image.shape:
      raise ConfigError('clean', f'clean has shape {clean.shape} but image '
                        f'has shape {image.shape}; they must be equal.')
  return image, observed, clean


def restore(config, workdir):
  """Restores `config.image`; writes arrays, PNGs, a figure and metrics.

  Writes restored.npy / restored.png, uncertainty.npy / uncertainty.png
  (posterior std of each clean pixel), restoration.png (input | restored |
  uncertainty | error when `clean` is given) and metrics.json ('noise_std',
  'noise_learned', 'seconds', 'elbo', 'error_factors' (`[p, p]` nested
  list with noise_std = 0 and missing pixels, else None: the windows'
  held-out error factors of `restore_image`), 'variance_factors' (`[B, 2]`
  nested list of (variance, factor) rows, or None: the held-out pixels'
  factors by variance), and with `clean`: 'psnr',
  'psnr_input', 'coverage_95' and its halves by uncertainty).

  Raises:
    ConfigError: a bad field or input file (named), before any work.
  """
  from skimage import io  # pylint: disable=g-import-not-at-top
  from tfp_esc import restoration  # pylint: disable=g-import-not-at-top
  config.validate()
  if config.image is None:
    raise ConfigError('image', 'image must be set: the damaged image file.')
  image, observed, clean = _load_restoration_inputs(config)
  os.makedirs(workdir, exist_ok=True)
  result = restoration.restore_image(
      image, observed=observed, noise_std=config.noise_std,
      patch_size=config.patch_size, num_latents=config.num_latents,
      num_train_patches=config.num_train_patches,
      iterations=config.iterations,
      e_step_iterations=config.e_step_iterations,
      scale_rounds=config.scale_rounds, num_classes=config.num_classes,
      class_rounds=config.class_rounds, seed=config.seed,
      dtype=config.dtype, progress=True)
  metrics_ = {'noise_std': result.noise_std,
              'noise_learned': result.noise_learned,
              'model_noise_std': result.model_noise_std,
              'seconds': result.seconds,
              'elbo': result.history['elbo'][-1],
              'num_latents': int(result.dictionary.shape[1]),
              'error_factors': (None if result.error_factors is None
                                else result.error_factors.tolist()),
              'variance_factors': (None if result.variance_factors is None
                                   else result.variance_factors.tolist()),
              'config': dataclasses.asdict(config)}
  shown = np.where(observed, image, np.nan) if observed is not None else image
  panels = {'input': np.nan_to_num(shown, nan=0.0),
            'restored': result.restored,
            'uncertainty (std)': result.uncertainty}
  if clean is not None:
    pixels = None if observed is None else ~observed
    coverage = restoration.interval_coverage(result.restored,
                                             result.uncertainty, clean,
                                             pixels)
    metrics_.update(
        psnr=restoration.psnr(result.restored, clean),
        psnr_input=(restoration.psnr(image, clean) if observed is None
                    else None),
        coverage_95=coverage['overall'],
        coverage_95_low_uncertainty=coverage['low_half'],
        coverage_95_high_uncertainty=coverage['high_half'],
        coverage_pixels='all' if observed is None else 'missing')
    panels['error |restored - clean|'] = result.restored - clean
  for name, array in (('restored', result.restored),
                      ('uncertainty', result.uncertainty)):
    artifacts.save_npy(os.path.join(workdir, f'{name}.npy'), array)
  top = float(np.max(result.uncertainty)) or 1.0
  for name, array in (('restored', np.clip(result.restored, 0, 1)),
                      ('uncertainty', result.uncertainty / top)):
    with artifacts.atomic_path(os.path.join(workdir, f'{name}.png')) as tmp:
      io.imsave(tmp, (255 * array).round().astype(np.uint8),
                check_contrast=False)
  plots.plot_restoration(panels, os.path.join(workdir, 'restoration.png'),
                         title=f'noise std {result.noise_std:.4f} '
                         f'({"learned" if result.noise_learned else "given"})')
  artifacts.save_json(os.path.join(workdir, 'metrics.json'), metrics_)
  logging.info('Wrote %s', workdir)
  return metrics_
