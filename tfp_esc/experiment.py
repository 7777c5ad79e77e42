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
import os
import time

import numpy as np
from absl import logging

from tfp_esc import artifacts
from tfp_esc.data.bars import make_bars
from tfp_esc.data.patches import whitened_patches
from tfp_esc.evaluation import metrics, plots
from tfp_esc.inference.amortized import fit_amortized
from tfp_esc.inference.em import fit_em
from tfp_esc.inference.joint import fit_joint
from tfp_esc.objective.annealing import get_schedule

__all__ = ['BarsConfig', 'PatchesConfig', 'load_bars_data', 'train_bars',
           'train_patches']


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
    init_scale: initial posterior standard deviation.
    dtype: 'float64' or 'float32'.
    jit_compile: compile L-BFGS calls with XLA.
    gini_samples: posterior samples per point for the Gini index.
  """
  seed: int = 0
  num_points: int = 1000
  side: int = 5
  noise_std: float = 0.1
  data_path: str | None = None
  posterior: str = 'full'
  rank: int = 2
  annealing: str = 'none'
  max_calls: int = 100
  max_iterations: int = 200
  num_correction_pairs: int = 10
  tolerance: float = 1e-6
  init_scale: float = 0.1
  dtype: str = 'float64'
  jit_compile: bool = True
  gini_samples: int = 10

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
  """
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
      'sigma2': result.noise_variance,
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
        ground_truth_sigma2=ground_truth.noise_variance,
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
  logging.info('Done in %.1f s: ELBO %.4f%s, sigma2 %.4g, Gini %.3f +- %.3f',
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
    num_latents: H.
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
      (incremental 8 per revisit; paper 10 Newton or 100 L-BFGS).
    m_step_size: engine 'paper': gradient step on the dictionary.
    learning_rate: Adam learning rate (amortized).
    dtype: 'float32' or 'float64'.
    gini_samples: posterior samples per point for the Gini index.
    gini_points: at most this many points enter the Gini index.
  """
  method: str = 'em'
  engine: str = 'incremental'
  refine_rounds: int = 3
  posterior: str = 'diagonal'
  rank: int = 5
  annealing: str = 'prior'
  num_patches: int | None = None
  num_latents: int = 100
  patch_size: int = 16
  epochs: int = 10
  batch_size: int = 512
  images: str | None = None
  seed: int = 0
  warm_start: bool = False
  e_step: str | None = None
  e_step_iterations: int | None = None
  m_step_size: float = 0.5
  learning_rate: float = 1e-3
  dtype: str = 'float32'
  gini_samples: int = 10
  gini_points: int = 2048


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


def _train_patches_em(config, x, workdir, resume):
  subset = _gini_subset(config, len(x))

  def gini(trainer, record):
    del record
    mean, sd = metrics.posterior_gini(trainer.posterior(subset),
                                      config.gini_samples, seed=config.seed)
    return {'gini_mean': mean, 'gini_sd': sd}

  if config.engine == 'incremental':
    options = {'refine_rounds': config.refine_rounds}
    if config.e_step_iterations is not None:
      options['e_step_iterations'] = config.e_step_iterations
  else:
    options = {'rank': config.rank, 'e_step': config.e_step,
               'e_step_iterations': config.e_step_iterations,
               'm_step_size': config.m_step_size,
               'warm_start': config.warm_start}
  result = fit_em(
      x, config.num_latents, engine=config.engine, epochs=config.epochs,
      checkpoint_path=os.path.join(workdir, 'checkpoint.npz'), resume=resume,
      on_epoch_end=gini, posterior=config.posterior,
      schedule=get_schedule(config.annealing), batch_size=config.batch_size,
      seed=config.seed, **options)
  return result.dictionary, result.history


def train_patches(config, workdir, resume=False):
  """Trains on whitened natural-image patches and writes outputs to `workdir`.

  Writes dictionary.npy `[D, H]`, metrics.json (per-epoch ELBO, entropies,
  sigma^2, Gini mean and sd, seconds under 'history'; final values at top
  level under the bars script's keys), dictionary.png (ordered by lambda),
  training.png, gini.png, and checkpoints; `resume=True` continues an
  interrupted run to the same result as an uninterrupted one.

  Args:
    config: `PatchesConfig`.
    workdir: output folder (created).
    resume: continue from the checkpoint in `workdir`, if any.

  Returns:
    The metrics dict also written to workdir/metrics.json.

  Raises:
    ValueError: unknown method, or the data loaders' errors.
  """
  if config.method not in ('em', 'amortized'):
    raise ValueError(f"method must be 'em' or 'amortized', got "
                     f'{config.method!r}.')
  get_schedule(config.annealing)  # Fails early on an unknown name.
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
  if config.method == 'em':
    dictionary, history = _train_patches_em(config, x, workdir, resume)
  else:
    dictionary, history = _train_patches_amortized(config, x, workdir, resume)
  final = {k: history[k][-1] for k in history}
  summary = {
      'elbo': final['elbo'],
      'sigma2': final['sigma2'],
      'scales': final['scales'],
      'entropies': {k: final[k] for k in (
          'q_entropy', 'prior_entropy', 'likelihood_entropy')},
      'gini': {'mean': final['gini_mean'], 'sd': final['gini_sd']},
      'localized_fraction': metrics.localized_fraction(
          dictionary, (config.patch_size, config.patch_size)),
      'seconds': final['seconds'],
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
  logging.info('Done: ELBO %.3f, sigma2 %.4g, Gini %.3f +- %.3f, %.0f%% of '
               'the fields localized, %.1f s', final['elbo'], final['sigma2'],
               final['gini_mean'], final['gini_sd'],
               100 * summary['localized_fraction'], final['seconds'])
  return summary


def _train_patches_amortized(config, x, workdir, resume):
  subset = _gini_subset(config, len(x))

  def gini(model, epoch):
    del epoch
    mean, sd = metrics.posterior_gini(model.posterior(x[subset]),
                                      config.gini_samples, seed=config.seed)
    return {'gini_mean': mean, 'gini_sd': sd}

  model, history = fit_amortized(
      x, config.num_latents, family=config.posterior, rank=config.rank,
      schedule=get_schedule(config.annealing), epochs=config.epochs,
      batch_size=config.batch_size, learning_rate=config.learning_rate,
      seed=config.seed, checkpoint_path=os.path.join(workdir, 'checkpoint.npz'),
      resume=resume, tensorboard_dir=os.path.join(workdir, 'tensorboard'),
      on_epoch_end=gini, verbose=2)
  return model.dictionary.numpy(), history
