"""Amortized training (SPEC 10, variants C/D): encoder + dictionary by Adam.

`AmortizedSparseCoding` is a `keras.Model` whose `train_step` minimises -F_a
on each minibatch, jointly over the encoder's weights and the unconstrained
dictionary V (W = V / ||V||_col).

With `objective='sampled'` the same step instead minimises minus the standard
reparameterised Monte-Carlo ELBO (`tfp_esc.objective.sampled`),

  (1/S) sum_s (1/B) sum_n [log p(x_n, z_sn | W, lambda, sigma^2)
                           - log q(z_sn | x_n)],   z_sn ~ q(z | x_n),

which has no closed-form optimum in lambda and sigma^2: both are trainable
weights (softplus plus a floor). Its samples use the stateless seed
[sample_seed, optimizer step], so every step draws new noise inside one
(XLA-compilable) `tf.function` and a resumed run repeats the same draws.
Both objectives report the analytic F of the batch ('elbo'), so their curves
are comparable.

Annealing coefficients (analytic objective) are non-trainable weights set by
`AnnealingCallback` at the start of every epoch (so they never retrace the
step). Prior annealing (a_prior > 1) makes F_a unbounded above under a
common shrinkage of the codes, and Adam follows that direction: variant D
(low-rank, a_prior = 2 -> 1 over 10 epochs) ended at ELBO -12.9 on 8,192
default patches, below C's 63.9 without annealing, and the diagonal family
did the same (-15.1). So while a_prior > 1 the step maximises the classical
L_a with lambda held at `held_scales`, and sigma^2 at the batch's sigma^2*
(`tfp_esc.objective.elbo.held_prior_elbo_from_statistics`, as in
`fit_joint` and incremental EM). As in incremental EM, lambda is held
through the whole annealed phase at the full data's lambda* under the
encoder where the phase starts (the callback computes it): D then reaches
74.5 and the diagonal family 76.0 (50 epochs, otherwise unchanged; these
figures predate the dictionary step below, with which D reaches 76.9 and C
without annealing 82.6).
Re-estimated at every epoch instead, lambda ratchets down (the codes shrink
under the stronger prior, lambda follows: 0.6 -> 0.03 over the annealed
epochs) and the run ends near -50. `held_scales` is a non-trainable weight,
so a checkpoint taken inside the phase keeps it.

Working scale. The model works on x / s with s = rms(x) / `WORKING_RMS`
(`tfp_esc.inference._training` explains why trainers normalise): the
encoder sees data of root mean square sqrt(0.1), the scale of SPEC's
whitened patches (variance 0.1) for which its initialisation and Adam's
default step were chosen. Working at rms 1 instead (as from 2026-11-30
08:35 to this change) made the encoder learn far slower: 8,192 default
patches, H = 100, diagonal, 50 epochs: ELBO -31.9 at rms 1, 63.9 at
sqrt(0.1), 76.4 at 0.1, 63.0 at 0.03.

Dictionary step. W = V / ||V||_col, so an Adam step of size about lr per
entry of V turns the column W_h by about lr sqrt(D) / ||V_h||: the column
norm sets how fast the dictionary learns relative to the encoder. V starts
with columns of norm about `DICTIONARY_INIT_NORM` = 0.15 (the norms grow
slowly as training goes on, since the gradient is orthogonal to V_h).
Keras' default RandomNormal(0.05) gave norms of 0.05 sqrt(D) (0.8 for
16 x 16 patches), and the dictionary lagged: unseen photographs (8,192
patches, D = 256, H = 64, diagonal, 60 s): encoder ELBO 62.8 -> 66.4,
per-point re-fit 64.9 -> 68.0, amortization gap 2.1 -> 1.6
(`benchmarks/amortization_gap.py`; norms 0.27 and 0.08 gave 65.6 / 67.1 and
65.7 / 67.5).

Low-rank family: why D < C here. What holds the low-rank family back is
the dictionary it learns, not its posteriors. 8,192 default patches,
H = 100, 50 epochs, then a converged per-point re-fit of each learned
dictionary (`evaluate_dictionary`) with either family:

| trained with | epoch-50 ELBO | re-fit, diagonal | re-fit, rank 5 |
|--------------|---------------|------------------|----------------|
| diagonal     | 82.56         | 88.13            | 88.51          |
| rank 5       | 76.80         | 78.70            | 82.59          |

On the diagonal family's dictionary, correlated posteriors add 0.38 nats;
the low-rank family's own dictionary relies on them (+3.9) and is worse by
6. Trained with posteriors that can anti-correlate codes, near-duplicate
atoms cost nothing, and the dictionary settles there; the diagonal family's
variational gap penalises them. The factor's read-out is not the cause:
scaling its learning rate by 0.001 to 0.3 ends at 76.8 to 77.3; U held
at 0 for the first 30 epochs ends at 82.4, and held throughout at 82.0.
Its epoch cost 1.75x the diagonal one's (it was 4x before the trace term
became one matmul, `tfp_esc.posterior.gaussian`; 1.3-1.5x since it goes
through the Gram matrix, session 27: a step on 1,024 unseen patches, H =
64, 26 ms against 16-17 ms, of which the low-rank F's forward and backward
take 9 ms, the capacitance Cholesky 3 ms of them).
So the dictionary now learns from the posteriors' diagonal marginals:
with a correlated family (low-rank, full) and the analytic objective the
training step maximises F at the encoder's posteriors with W held (the
encoder's gradient) plus F at their marginals N(nu, diag T), held (the
dictionary's gradient; `objective_values`). The encoder still learns the
correlations, and the ELBO reported is that of its correlated posteriors;
the dictionary sees the diagonal family's penalty on near-duplicate
atoms. Measured (session 26, `benchmarks/patches_variants.py
--num_patches=8192 --epochs=10 --amortized_epochs=50 --variants=C,D,C-prior`,
one process each): D 76.96 -> 83.69, against C 82.56 and C with D's
annealing 82.44: D now beats C as in the paper, at equal epochs (26 s
against 16 s). At equal wall-clock it still does not
(`benchmarks/amortization_gap.py --rows=diagonal,lowrank
--learning_rate=5e-3 --batch_size=1024 --evaluate_every=5`, seed 0, 60 s):
low-rank encoder ELBO 49.30 -> 65.39 and re-fit 65.22 -> 68.16 (gap 15.9
-> 2.8), against the diagonal family's 67.10 and 69.48 in 249 epochs to
the low-rank's 180. Session 27, with the cheaper trace term, same
command: 60 s, low-rank 65.96 / 69.20 (232 epochs) against diagonal
66.83 / 69.94 (300); 180 s (`--seconds=180`), 68.21 / 71.21 (742) against
69.29 / 71.27 (905). A longer budget does not turn it: the two
dictionaries end up equally good (re-fit 71.21, by joint L-BFGS, against
71.27 by majorise-minimise), and the low-rank encoder leaves more of its
family's optimum unused (gap 3.00 against 1.98). Trained on the marginals,
the dictionary goes where the diagonal family fits well, so there is
little correlation left to capture; the low-rank run's full-data ELBO
also dropped by 6 to 13 nats at three evaluations of the 60 s run (epochs
89, 144, 194) and recovered within 10 epochs, which the diagonal one
never did. On these unseen photographs (H = 64) the low-rank family does
not pay for itself; on the default patches (H = 100) D beats C at equal
epochs (above), not yet measured at equal time. At larger H and faster
learning rates the factor's read-out itself destabilised training (60 s,
Adam 5e-3 on 1,024: H = 100 84.78 against the diagonal family's 116.55,
H = 256 -14.3 against 70.99); `factor_rate=0.1` (the read-out learns at a
tenth of Adam's rate, `tfp_esc.posterior.encoders`) gave 113.35 and 21.0
there, but costs D its lead at the paper's protocol (82.47 against C's
82.56), so it is not the default. At H = 64 it made no clear difference
(`benchmarks/results/amortization_gap_2026-12-03_s27_factor_rate_60s.md`:
65.29 against the diagonal family's 67.53; runs of the same command
differ by about a nat). Also tried (session 28), not adopted: the factor
relative to the scales, U = diag(d) V with V the encoder's output (the same
family; Adam's steps in V change the covariance in proportion to d, and the
capacitance I + V^T V no longer depends on d). Same settings, full-data
ELBO: H = 256 after 60 epochs 9.5 against U's -20.4 (diagonal 15.8), after
60 s 18.3 (diagonal 79.9); H = 100 after 60 s 111.06 (diagonal 108.37, its
last evaluation, down from 115.8); H = 64 after 300 epochs 67.50 without
the falls U showed (67.13; diagonal 67.51). It behaves like a slow factor
rate, and like `factor_rate=0.1` it costs D its lead at the paper's
protocol: D 81.01 against C 82.56. Also tried (session 29, a probe, one
run each, seed 0; H = 64, 60 s, Adam 5e-3 on 1,024, full-data ELBO every
5 epochs): the factor's read-out cut from the trunk's gradient (a
stop_gradient on the features before `factor_flat`, so the factor cannot
pull the shared layers towards itself): 67.18 after 240 epochs, no fall
at its last evaluations (one to 54.2 earlier), against U as it is 66.13 at
best and 59.27 at the end (a fall at its last evaluations) in 234 epochs,
and the diagonal family's 68.04 in 321. Better than U, still behind the
diagonal family at equal time; not adopted.

Refined posteriors (semi-amortized inference, Kim et al. 2018). With
`posterior_steps` K > 0 (diagonal family, analytic objective) the
model's posterior of a point is the encoder's output improved by K
majorise-minimise iterations of `mm_e_step` with lambda and sigma^2 held at
the lambda*, sigma^2* of the point's set under the encoder. With both held
the iterations act on each point alone and never raise its part of -L, so
F at the refined posteriors is >= F at the encoder's: the refinement can
only help, and a point's refined posterior does not depend on its batch
mates. Training takes the gradient of F_a at the encoder's posteriors (W
held) for the encoder, and of F_a at the refined posteriors for the
dictionary: the dictionary then learns from posteriors near the per-point
optimum, as EM's does.
What it buys (`benchmarks/amortization_gap.py`, unseen photographs,
8,192 patches, H = 64, 60 s of training each, seeds 0 / 1 / 2): K = 1
leaves an amortization gap of 0.20 / 0.17 / 0.23 nats per patch against
1.32 / 1.29 / 1.21 without. An epoch (training plus the full-data
evaluation) costs about twice as much, so the dictionary trains half as
many epochs: its per-point re-fit is 1.72 / 0.02 / 1.00 nats below K = 0's
(3.15 / 1.86 / 2.64 below EM's, against 1.44 / 1.88 / 1.63). A probe
with K = 3 gave a gap of 0.02. So refinement in training is for
posteriors near the per-point optimum (uncertainty per code), not for a
faster dictionary, and the default is K = 0.

Refining at inference only. `refine_in_training=False` (with K > 0)
trains exactly as K = 0 (weights, optimizer, the lambda held in an
annealed phase, the per-epoch history of the encoder's posteriors, hence
early stopping and the cost of an epoch, bit for bit) and refines only the
trained model's posteriors (`posterior`, `amortized_posterior`,
`evaluate_amortized`). It gets K = 0's dictionary and nearly the refined
posteriors: same benchmark, 60 s, K = 1, seeds 0 / 1 / 2 (session 12,
on a machine ~3x slower than the numbers above: ~105 epochs), a gap of
0.25 / 0.23 / 0.23 nats per patch against 1.80 / 1.72 / 1.94 for K = 0 in
the same run, and re-fit ELBOs within 0.3 of K = 0's (the budget ends
after 101 / 108 / 107 epochs against 102 / 101 / 103). It costs nothing in
training; evaluating the posteriors costs one more pass over the data.
This is the setting to use when the posteriors matter; the default stays
K = 0 (refine_in_training only acts with K > 0).

Learning rate and batch size in a time budget. The defaults, Adam at 1e-3
on minibatches of 512, are the paper's protocol (SPEC 10). In a fixed
budget a larger step on larger batches learns the dictionary faster. Same
benchmark, 60 s, seed 0, K = 0, re-fit ELBO by (learning rate, batch):
65.5 (1e-3, 512), 67.2 (3e-3, 512), 65.2 (1e-3, 256), 65.6 (3e-3, 256),
67.6 (3e-3, 1024), 68.7 (5e-3, 1024), 68.5 (7e-3, 1024), 68.2 (5e-3,
2048), 67.3 (3e-3, 2048); EM 71.5. At 1e-2 training settles early in a
poor optimum (ELBO 11 at 512, 31 at 1024; sigma^2 0.035 against 0.021),
so 5e-3 is within a factor of two of that cliff, and on other data it may
be closer: the defaults stay the paper's. With (5e-3, 1024) and K = 1 at
inference only, seeds 0 / 1 / 2 (`--learning_rate=5e-3 --batch_size=1024`,
EM in the same process): gap 0.24 / 0.23 / 0.24, re-fit minus EM -2.29 /
-3.40 / -3.34 (-6.84 / -7.24 / -6.90 at the defaults in session 12), in
213 / 185 / 183 epochs. The same command in session 25, this code
unchanged, on a faster machine: gap 0.22 / 0.24 / 0.21, re-fit minus EM
-1.68 / -1.19 / -1.82 in 291 / 301 / 302 epochs
(benchmarks/results/amortization_gap_2026-12-03_s25_seed*.md). EM there
stops after its 6 epochs, at 27-36 s: it is not given the whole 60 s.

Early stopping on the ELBO. `fit_amortized(early_stopping_patience=P)`
stops when the full-data ELBO of the non-annealed epochs has not risen by
more than `early_stopping_min_delta` for P epochs (`elbo_has_stalled`).
The rule reads only the recorded history, which the checkpoint keeps, so a
resumed run stops where an uninterrupted one does (Keras' `EarlyStopping`
keeps its counter outside any checkpoint, and watches the batch-average
metric).

`CheckpointCallback` evaluates the full data and saves weights, optimizer
state and history atomically after every epoch, or with
`evaluate_every=k` after every k-th, the last and the one where training
stops: the evaluation is a forward pass over all the data, about a third
of an epoch's wall time on whitened patches (8,192 unseen patches, H = 64:
0.07 to 0.11 s against 0.27 s of training), and training does not depend on
it (tests: bit for bit). `fit_amortized` wires these with the usual Keras
progress bar, optional TensorBoard and the caller's own `callbacks`.

Batches come from a permutation that depends only on (seed, epoch), so a
resumed run continues exactly as an uninterrupted one.
"""

import math
import time
import warnings

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from tfp_esc import _checks
from tfp_esc.inference import _checkpoint
from tfp_esc.inference.mm import mm_e_step
from tfp_esc.inference._training import (ElboEarlyStopping, batches,
                                         check_schedule, data_scale,
                                         check_callbacks, elbo_has_stalled,
                                         epoch_index_batches, scale_posterior,
                                         tensorboard_callbacks,
                                         to_data_units)
from tfp_esc.model.sparse_coding import SparseCodingModel, normalize_columns
from tfp_esc.objective import elbo as elbo_lib
from tfp_esc.objective import sampled as sampled_lib
from tfp_esc.objective.annealing import AnnealingCoefficients, NoAnnealing
from tfp_esc.posterior.encoders import (make_encoder, output_names,
                                        posterior_from_outputs)
from tfp_esc.posterior.gaussian import (DEFAULT_SCALE_FLOOR, FAMILIES,
                                        DiagonalGaussian)

__all__ = ['DICTIONARY_INIT_NORM', 'OBJECTIVES', 'REFINE_FLOOR', 'WORKING_RMS',
           'AmortizedSparseCoding', 'AnnealingCallback', 'CheckpointCallback',
           'amortized_posterior', 'batch_order', 'evaluate_amortized', 'fit_amortized', 'make_amortized_model']

OBJECTIVES = ('analytic', 'sampled')

# Root mean square of the data the model works on (module doc).
WORKING_RMS = math.sqrt(0.1)
# Initial column norm of the raw dictionary V (module doc, "Dictionary
# step").
DICTIONARY_INIT_NORM = 0.15
# Scale floor of the refinement iterations (working units): below the
# encoder's floor, which every encoder scale exceeds.
REFINE_FLOOR = 0.5 * DEFAULT_SCALE_FLOOR

_TERMS = ('elbo', 'objective', 'q_entropy', 'prior_entropy',
          'likelihood_entropy', 'noise_variance')
# Extra metric of the sampled objective: its learned sigma^2
# ('noise_variance' is sigma^2* of the batch for both objectives).
_SAMPLED_TERMS = ('learned_noise_variance',)
# Floors of the learned lambda and sigma^2 (sampled objective): softplus(raw)
# + floor, as for the posterior scales.
_SCALE_FLOOR = 1e-3
_NOISE_FLOOR = 1e-6
# Largest accepted Adam learning rate: Adam moves every weight by about the
# learning rate per step, and the dictionary's columns have unit norm, so a
# rate above 1 no longer takes steps smaller than the weights themselves.
MAX_LEARNING_RATE = 1.0


def _check_objective(objective, num_samples):
  """Returns (objective, int num_samples) or raises (`_checks` rules)."""
  return (_checks.check_choice(objective, 'objective', OBJECTIVES),
          _checks.check_count(num_samples, 'num_samples'))


def _check_model_args(x, num_latents, posterior, rank, learning_rate, seed,
                      hidden_units, num_blocks, objective, num_samples,
                      jit_compile):
  """Checks `make_amortized_model`'s arguments; returns x as NumPy."""
  x = _checks.check_data(x, 'x')
  num_latents = _checks.check_count(num_latents, 'num_latents')
  _checks.check_choice(posterior, 'posterior', FAMILIES)
  if posterior == 'lowrank':
    _checks.check_count(rank, 'rank', 1, num_latents)
  _checks.check_real(learning_rate, 'learning_rate', 0.0, MAX_LEARNING_RATE)
  _checks.check_count(seed, 'seed', 0)
  _checks.check_count(hidden_units, 'hidden_units')
  _checks.check_count(num_blocks, 'num_blocks', 0)
  _check_objective(objective, num_samples)
  if not (isinstance(jit_compile, bool) or jit_compile == 'auto'):
    raise TypeError(f"jit_compile must be True, False or 'auto', got "
                    f'{jit_compile!r}.')
  return x


def _check_posterior_steps(posterior_steps, family, objective):
  """Checks `posterior_steps` against the family and objective."""
  posterior_steps = _checks.check_count(posterior_steps, 'posterior_steps',
                                        0)
  if posterior_steps and (family != 'diagonal' or objective != 'analytic'):
    raise ValueError(
        f'posterior_steps={posterior_steps} refines diagonal posteriors '
        "of the analytic objective only (majorise-minimise steps); got "
        f'posterior={family!r}, objective={objective!r}. Use '
        'posterior_steps=0.')
  return posterior_steps


def _check_refine_in_training(refine_in_training, posterior_steps):
  """Checks `refine_in_training`; False needs posterior_steps > 0."""
  refine_in_training = _checks.check_flag(refine_in_training,
                                          'refine_in_training')
  if not refine_in_training and not posterior_steps:
    raise ValueError(
        'refine_in_training=False keeps the refinement of posterior_steps '
        'out of training, but posterior_steps is 0, so there is none: set '
        'posterior_steps > 0 or leave refine_in_training=True.')
  return refine_in_training


def _sum_over_replicas(statistics):
  """`ElboStatistics` of the whole batch under a `tf.distribute` strategy.

  In a replica context with R > 1 replicas (inside `strategy.run`, e.g.
  Keras `fit` under `MirroredStrategy`), each replica holds B / R points of
  the batch; F needs lambda*, sigma^2* of the whole batch, so the sums are
  all-reduced before F is formed. The all-reduce is differentiable (its
  gradient is the all-reduce of the replicas' upstream gradients). With one
  replica, or outside a replica context, the sums are returned unchanged.
  """
  context = tf.distribute.get_replica_context()
  if context is None or context.num_replicas_in_sync == 1:
    return statistics
  return elbo_lib.ElboStatistics(*context.all_reduce(
      tf.distribute.ReduceOp.SUM, list(statistics)))


def _inverse_softplus(value, floor, name):
  """raw with softplus(raw) + floor = value (> floor), as a float."""
  value = float(value)
  if not (np.isfinite(value) and value > floor):
    raise ValueError(f'{name} must be finite and > {floor}, got {value!r}.')
  return float(np.log(np.expm1(value - floor)))


class AmortizedSparseCoding(keras.Model):
  """Encoder q(z | x) plus unit-norm dictionary, trained on an ELBO.

  Args:
    encoder: a model from `make_encoder` for `family`.
    num_observed: D.
    num_latents: H.
    family: the encoder's posterior family.
    seed: seeds the initial dictionary.
    objective: 'analytic' (the entropy ELBO F_a, with the optimal lambda*,
      sigma^2* of each batch) or 'sampled' (the Monte-Carlo ELBO with
      learned lambda, sigma^2).
    num_samples: S >= 1, reparameterised samples per data point and step
      (sampled objective only).
    sample_seed: base of the stateless sampling seeds (default `seed`).
    initial_scale: initial learned lambda_h in x's units (sampled objective
      only); default `data_scale`.
    initial_noise_variance: initial learned sigma^2 in x's units (sampled
      objective only; e.g. the data variance); default `data_scale`^2.
    data_scale: s > 0. The model works on x / s (`tfp_esc.inference.
      _training`): the encoder sees x / s, the floors of the learned lambda
      and sigma^2 are in units of s and s^2, and what it reports
      (`posterior`, `terms`, `scales`, `noise_variance`, metrics) is mapped
      back to x's units. `make_amortized_model` sets it to the data's root
      mean square over `WORKING_RMS`, which makes training equivariant
      under scaling x.
    posterior_steps: K >= 0 majorise-minimise iterations that refine the
      encoder's posteriors (module doc, "Refined posteriors"); K > 0 needs
      the diagonal family and the analytic objective.
    refine_in_training: with posterior_steps > 0, whether training uses the
      refined posteriors (the dictionary's gradient is taken at them). False:
      training (and `fit_amortized`'s per-epoch history) is exactly that of
      posterior_steps = 0, and only the model's posteriors and their
      evaluation are refined (module doc, "Refined posteriors").

  Raises:
    ValueError: an unknown objective, num_samples < 1, a non-positive
      initial scale or noise variance, posterior_steps < 0 or > 0 with
      another family or objective, refine_in_training=False with
      posterior_steps = 0.
    TypeError: refine_in_training not a bool.
  """

  def __init__(self, encoder, num_observed, num_latents, family, seed=0,
               objective='analytic', num_samples=1, sample_seed=None,
               initial_scale=None, initial_noise_variance=None,
               data_scale=1.0, posterior_steps=0, refine_in_training=True,
               **kwargs):
    super().__init__(**kwargs)
    self.posterior_steps = _check_posterior_steps(posterior_steps, family,
                                                  objective)
    self.refine_in_training = _check_refine_in_training(refine_in_training,
                                                        self.posterior_steps)
    self.data_scale = _checks.check_real(data_scale, 'data_scale', 0.0)
    initial_scale = (1.0 if initial_scale is None
                     else initial_scale / self.data_scale)
    initial_noise_variance = (
        1.0 if initial_noise_variance is None
        else initial_noise_variance / self.data_scale**2)
    self.objective, self.num_samples = _check_objective(objective,
                                                        num_samples)
    self.encoder = encoder
    self.family = family
    self.sample_seed = int(seed if sample_seed is None else sample_seed)
    dtype = encoder.inputs[0].dtype
    # Columns of norm about DICTIONARY_INIT_NORM (module doc, "Dictionary
    # step").
    self.v = self.add_weight(
        shape=(num_observed, num_latents), name='dictionary', dtype=dtype,
        initializer=keras.initializers.RandomNormal(
            stddev=DICTIONARY_INIT_NORM / math.sqrt(num_observed),
            seed=seed))
    self.coefficients = self.add_weight(
        shape=(3,), name='annealing', dtype=dtype, trainable=False,
        initializer='ones')
    # lambda held while a_prior > 1, in units of s (module doc); a weight,
    # so checkpoints keep it through an annealed phase.
    self.held_scales = self.add_weight(
        shape=(num_latents,), name='held_scales', dtype=dtype,
        trainable=False, initializer='ones')
    names = _TERMS
    if self.objective == 'sampled':
      # Only the sampled model has these weights, so analytic models keep
      # their weight lists (and checkpoints) unchanged.
      self.raw_scales = self.add_weight(
          shape=(num_latents,), name='raw_scales', dtype=dtype,
          initializer=keras.initializers.Constant(_inverse_softplus(
              initial_scale, _SCALE_FLOOR, 'initial_scale')))
      self.raw_noise_variance = self.add_weight(
          shape=(), name='raw_noise_variance', dtype=dtype,
          initializer=keras.initializers.Constant(_inverse_softplus(
              initial_noise_variance, _NOISE_FLOOR,
              'initial_noise_variance')))
      names = _TERMS + _SAMPLED_TERMS
    # Trackers in the model's dtype, so float64 runs report float64 values.
    self.trackers = {k: keras.metrics.Mean(name=k, dtype=dtype)
                     for k in names}
    self._gradient_function = None
    self._refine_function = None
    self._evaluation_function = None

  @property
  def metrics(self):
    return list(self.trackers.values())

  @property
  def dictionary(self):
    """`[D, H]` unit-norm W."""
    return normalize_columns(tf.convert_to_tensor(self.v))

  def _learned(self, name):
    if self.objective != 'sampled':
      raise ValueError(
          f'{name} is learned only with objective=\'sampled\'; the '
          'analytic objective uses the optimal lambda*, sigma^2* of each '
          'batch (see evaluate_amortized).')
    raw, floor = {'scales': (self.raw_scales, _SCALE_FLOOR),
                  'noise_variance': (self.raw_noise_variance,
                                     _NOISE_FLOOR)}[name]
    raw = tf.convert_to_tensor(raw)
    return tf.math.softplus(raw) + tf.constant(floor, raw.dtype)

  @property
  def scales(self):
    """`[H]` learned lambda (sampled objective only; else ValueError)."""
    return self._learned('scales') * self.data_scale

  @property
  def noise_variance(self):
    """`[]` learned sigma^2 (sampled objective only; else ValueError)."""
    return self._learned('noise_variance') * self.data_scale**2

  def posterior(self, x):
    """q(z | x) for x `[B, D]`: a `GaussianPosterior` in x's units.

    With `posterior_steps` > 0 the encoder's posteriors are refined with
    lambda, sigma^2 held at lambda*, sigma^2* of the B points of x (module
    doc); `amortized_posterior` does the same for a data set in batches.
    """
    x = self._normalise(_checks.as_float_tensor(x, 'x', self.v.dtype,
                                                rank=2))
    posterior = self._posterior(x)
    held = _held_values(self, x, int(x.shape[0]))
    if held is not None:
      posterior = self.refined_posterior(x, posterior, *held)
    return scale_posterior(posterior, self.data_scale)

  def refined_posterior(self, x, posterior, scales, noise_variance,
                        coefficients=None):
    """The encoder's posteriors after `posterior_steps` MM iterations.

    Works in the model's units (x / s), like `mm_e_step`: lambda, sigma^2
    are held, so every point is refined on its own and F of any set of
    points is not lowered (module doc).

    Args:
      x: `[B, D]` float, normalised data.
      posterior: the encoder's `DiagonalGaussian` of x (normalised units).
      scales: `[H]` float lambda held during the iterations.
      noise_variance: `[]` float sigma^2 held during the iterations.
      coefficients: optional `[3]` (a_q, a_prior, a_lik); default all 1.

    Returns:
      `DiagonalGaussian` with B points, treated as constants by gradients
      (no gradient flows through the iterations).
    """
    if coefficients is None:
      coefficients = tf.ones([3], self.v.dtype)
    args = [tf.stop_gradient(tf.convert_to_tensor(t, self.v.dtype))
            for t in (x, self.dictionary, posterior.loc, posterior.scale,
                      coefficients, scales, noise_variance)]
    if tf.executing_eagerly():
      if self._refine_function is None:
        # autograph=False: see `tfp_esc.inference.mm` ("Compiling it").
        self._refine_function = tf.function(self._refine,
                                            reduce_retracing=True,
                                            autograph=False)
      loc, scale = self._refine_function(*args)
    else:
      loc, scale = self._refine(*args)
    return DiagonalGaussian(tf.stop_gradient(loc), tf.stop_gradient(scale))

  def _statistics_function(self):
    """A `tf.function` (x, held) -> `ElboStatistics` of the batch x
    (normalised): of the encoder's posteriors where held is None, else of
    the refined ones at held = (lambda, sigma^2). Compiled once per model;
    eager evaluation cost more than a training epoch."""
    if self._evaluation_function is None:
      def statistics(x, held):
        posterior = self._posterior(x)
        if held is not None:
          posterior = self.refined_posterior(x, posterior, *held)
        return elbo_lib.elbo_statistics(x, self.dictionary, posterior)
      self._evaluation_function = tf.function(statistics,
                                              reduce_retracing=True)
    return self._evaluation_function

  def _refine(self, x, dictionary, loc, scale, coefficients, scales,
              noise_variance):
    return mm_e_step(x, dictionary, loc, scale, coefficients,
                     iterations=self.posterior_steps, floor=REFINE_FLOOR,
                     scales=scales, noise_variance=noise_variance)

  def _normalise(self, x):
    return x / tf.constant(self.data_scale, x.dtype)

  def _posterior(self, x):
    # q(z | x) for normalised x, in its units.
    return posterior_from_outputs(self.encoder(x), self.family)

  def _to_data_units(self, values):
    a = tf.unstack(tf.convert_to_tensor(self.coefficients))
    values = to_data_units(dict(values, a_q=a[0], a_prior=a[1], a_lik=a[2]),
                           self.data_scale, *self.v.shape)
    return {k: values[k] for k in values if k not in ('a_q', 'a_prior',
                                                       'a_lik')}

  def call(self, x):
    return self.encoder(self._normalise(x))

  def terms(self, x):
    """`EntropyElbo` of the batch x `[B, D]` at the current coefficients."""
    x = self._normalise(x)
    terms = self._terms(x, self._posterior(x))
    values = self._to_data_units(terms._asdict())
    return elbo_lib.EntropyElbo(*(values[k] for k in terms._fields))

  def _terms(self, x, posterior, dictionary=None):
    a = tf.convert_to_tensor(self.coefficients)
    dictionary = self.dictionary if dictionary is None else dictionary
    statistics = _sum_over_replicas(
        elbo_lib.elbo_statistics(x, dictionary, posterior))
    return elbo_lib.held_prior_elbo_from_statistics(
        statistics, self.v.shape[0], tf.convert_to_tensor(self.held_scales),
        a[0], a[1], a[2])

  def _step_seed(self):
    """Stateless seed `[2]` int32: [sample_seed, optimizer step]."""
    optimizer = getattr(self, 'optimizer', None)
    step = (tf.zeros([], tf.int64) if optimizer is None
            else tf.convert_to_tensor(optimizer.iterations))
    return tf.stack([tf.constant(self.sample_seed % 2**31, tf.int32),
                     tf.cast(step % 2**31, tf.int32)])

  def objective_values(self, x, seed):
    """The objective that training maximises on x, and the batch's metrics.

    Args:
      x: `[B, D]` float batch, the model's dtype.
      seed: stateless seed (int or `[2]` int tensor) of the Monte-Carlo
        samples; ignored by the analytic objective.

    Returns:
      (objective, values): objective `[]` float, the annealed F_a
      (analytic) or the Monte-Carlo ELBO with the learned lambda, sigma^2
      (sampled); values, a dict of `[]` floats keyed by the metric names
      ('elbo' is the analytic, non-annealed F of the batch in both cases;
      'objective' is `objective`; 'noise_variance' is sigma^2* of the batch; the
      sampled objective adds 'learned_noise_variance').

      With a correlated family (low-rank, full) and the analytic
      objective, it is F_a at the encoder's posteriors with W held (its
      gradient trains the encoder) plus F_a at their diagonal marginals,
      held (its gradient trains the dictionary); the metrics are those of
      the encoder's posteriors.
      With `posterior_steps` > 0 and `refine_in_training` the objective is
      F_a at the encoder's posteriors with W held (its gradient trains the
      encoder) plus F_a at the refined posteriors (its gradient trains the
      dictionary), and the metrics are those of the refined posteriors
      (module doc); without `refine_in_training`, that of posterior_steps
      = 0.
    """
    # Computed on x / s, reported in x's units (a constant shift, so the
    # gradients are those of the normalised objective).
    x = self._normalise(x)
    posterior = self._posterior(x)
    # A second objective when the encoder and the dictionary learn from
    # different posteriors (refined, or marginals): its gradient trains one.
    second_objective = 0.0
    if self.posterior_steps and self.refine_in_training:
      encoder = self._terms(x, posterior, tf.stop_gradient(self.dictionary))
      a = tf.convert_to_tensor(self.coefficients)
      # The objective's lambda: held while a_prior > 1, else lambda*.
      scales = tf.where(a[1] > 1.0, tf.convert_to_tensor(self.held_scales),
                        encoder.scales)
      posterior = self.refined_posterior(x, posterior, scales,
                                         encoder.noise_variance, a)
      second_objective = encoder.objective
    if self.objective == 'analytic' and self.family != 'diagonal':
      # Correlated posteriors: the encoder maximises F with W held, and the
      # dictionary F at the posteriors' marginals (module doc, "Low-rank
      # family"), so it cannot settle on atoms whose codes anti-correlate.
      terms = self._terms(x, posterior, tf.stop_gradient(self.dictionary))
      marginals = DiagonalGaussian(
          tf.stop_gradient(posterior.loc),
          tf.stop_gradient(posterior.marginal_stddev()))
      second_objective = self._terms(x, marginals).objective
    else:
      terms = self._terms(x, posterior)
    values = dict(zip(_TERMS, (terms.elbo, terms.objective, terms.q_entropy,
                               terms.prior_entropy, terms.likelihood_entropy,
                               terms.noise_variance)))
    if self.objective == 'sampled':
      noise_variance = self._learned('noise_variance')
      model = SparseCodingModel(self.dictionary, self._learned('scales'),
                                noise_variance, validate=False)
      estimate = sampled_lib.sampled_elbo(x, model, posterior,
                                          self.num_samples,
                                          _checks.stateless_seed(seed))
      values.update(objective=estimate.mean, learned_noise_variance=noise_variance)
    values = self._to_data_units(values)
    return values['objective'] + second_objective, values

  def _update(self, values):
    for k, v in values.items():
      self.trackers[k].update_state(v)
    return {k: t.result() for k, t in self.trackers.items()}

  def train_step(self, data):
    # Keras passes a dataset's single tensor x, possibly wrapped as (x,).
    x = data[0] if isinstance(data, tuple) else data
    with tf.GradientTape() as tape:
      objective, values = self.objective_values(x, self._step_seed())
      loss = tf.debugging.assert_all_finite(
          -objective, f'amortized train_step: the {self.objective} objective '
          'of this batch is NaN or inf (check the data and the learning rate)')
      # Keras' optimizer sums the replicas' gradients. The analytic F is
      # formed from all-reduced sums, whose gradient is itself all-reduced
      # (`_sum_over_replicas`), and the sampled ELBO is each replica's mean
      # over its share: either way 1 / R per replica gives the gradient of
      # the whole batch's objective.
      loss = loss / tf.cast(
          tf.distribute.get_strategy().num_replicas_in_sync, loss.dtype)
    gradients = tape.gradient(loss, self.trainable_variables)
    self.optimizer.apply_gradients(zip(gradients, self.trainable_variables))
    return self._update(values)

  def test_step(self, data):
    x = data[0] if isinstance(data, tuple) else data
    return self._update(self.objective_values(x, self._step_seed())[1])

  def dictionary_gradient(self, x, seed=0):
    """Gradient of the training objective in the dictionary, for one batch.

    The gradient that a training step hands the optimizer for V (up to the
    sign: this is the gradient of the objective, which training maximises),
    with the Monte-Carlo samples drawn from `seed`. The analytic objective
    ignores `seed`, so its gradient is the same for every seed.

    Args:
      x: `[B, D]` float batch (converted to the model's dtype).
      seed: stateless seed (int or `[2]` int tensor).

    Returns:
      `[D, H]` float tensor, d objective / d V.
    """
    x = _checks.as_float_tensor(x, 'x', self.v.dtype, rank=2)
    if self._gradient_function is None:
      def gradient(x, seed):
        with tf.GradientTape() as tape:
          objective, _ = self.objective_values(x, seed)
        return tape.gradient(objective, self.v)
      self._gradient_function = tf.function(gradient, reduce_retracing=True)
    return self._gradient_function(x, _checks.stateless_seed(seed))


class AnnealingCallback(keras.callbacks.Callback):
  """Sets the model's annealing coefficients to `schedule(epoch)` each epoch.

  At the first epoch of an annealed phase (a_prior > 1 there but not at
  the epoch before, or at epoch 0) it also sets the model's `held_scales`
  to lambda* of x under the current encoder, held through the phase
  (module doc).

  Args:
    schedule: an `AnnealingSchedule`, indexed by epoch.
    x: `[N, D]` training data; needed when the schedule anneals the prior.
    batch_size: points per evaluation batch.

  Raises:
    ValueError (at an epoch with a_prior > 1): x was not given.
  """

  def __init__(self, schedule, x=None, batch_size=512):
    super().__init__()
    self.schedule = schedule
    self.x = x
    self.batch_size = batch_size

  def on_epoch_begin(self, epoch, logs=None):
    c = self.schedule(epoch)
    self.model.coefficients.assign([c.q, c.prior, c.likelihood])
    phase_starts = epoch == 0 or self.schedule(epoch - 1).prior <= 1.0
    if c.prior > 1.0 and phase_starts:
      if self.x is None:
        raise ValueError(
            f'AnnealingCallback: epoch {epoch} has a_prior = {c.prior} > 1, '
            'which holds lambda at the training data\'s lambda*; give the '
            'data as x=.')
      self.model.held_scales.assign(
          _training_scales(self.model, self.x, self.batch_size))

  def on_epoch_end(self, epoch, logs=None):
    if logs is not None:
      c = self.schedule(epoch)
      logs.update(a_q=c.q, a_prior=c.prior, a_lik=c.likelihood)


def _training_scales(model, x, batch_size):
  """lambda* of the data under the posteriors that training uses.

  The refined posteriors only where `refine_in_training`, so that a model
  refined at inference alone trains exactly as one with posterior_steps =
  0, annealing included.

  Args:
    model: an `AmortizedSparseCoding`.
    x: `[N, D]` float data in its own units.
    batch_size: points per evaluation batch.

  Returns:
    `[H]` NumPy lambda* in the model's units (those of x / s), of x's dtype.
  """
  return _normalised_terms(model, x, batch_size,
                           model.refine_in_training).scales.numpy()


def _held_values(model, x, batch_size):
  """lambda*, sigma^2* of normalised x under the encoder, or None (K = 0).

  With `posterior_steps` > 0 the model's posteriors of a data set are
  refined with these held (module doc), so they do not depend on
  batch_size.
  """
  if not model.posterior_steps:
    return None
  terms = elbo_lib.entropy_elbo_from_statistics(
      _summed_statistics(model, x, batch_size, None), x.shape[1])
  return terms.scales, terms.noise_variance


def _summed_statistics(model, x, batch_size, held):
  """`ElboStatistics` of normalised x: of the encoder's posteriors (held
  None) or of the refined ones at held = (lambda, sigma^2)."""
  # pylint: disable=protected-access
  function = model._statistics_function()
  total = None
  for i in range(0, int(x.shape[0]), int(batch_size)):
    stats = function(x[i:i + batch_size], held)
    total = stats if total is None else elbo_lib.add_statistics(total, stats)
  return total


def amortized_posterior(model, x, batch_size=512):
  """The model's posteriors of a data set x `[N, D]`, in x's units.

  The encoder's, or with `posterior_steps` > 0 the refined ones at
  lambda*, sigma^2* of all of x: the posteriors `evaluate_amortized`
  scores.

  Returns:
    A `GaussianPosterior` of the model's family with N points.
  """
  # pylint: disable=protected-access
  x = model._normalise(_checks.as_float_tensor(x, 'x', model.v.dtype,
                                               rank=2))
  held = _held_values(model, x, batch_size)
  parts = []
  for i in range(0, int(x.shape[0]), int(batch_size)):
    xb = x[i:i + batch_size]
    q = model._posterior(xb)
    parts.append(q if held is None else model.refined_posterior(xb, q, *held))
  posterior = type(parts[0])(*(tf.concat([getattr(q, k) for q in parts], 0)
                               for k in output_names(model.family)))
  return scale_posterior(posterior, model.data_scale)


def _normalised_terms(model, x, batch_size, refined):
  """`EntropyElbo` of x `[N, D]` (x's units) in the model's units (x / s),
  from summed batch statistics: of the refined posteriors where `refined`
  (and posterior_steps > 0), else of the encoder's."""
  x = model._normalise(  # pylint: disable=protected-access
      _checks.as_float_tensor(x, 'x', model.v.dtype, rank=2))
  held = _held_values(model, x, batch_size) if refined else None
  return elbo_lib.entropy_elbo_from_statistics(
      _summed_statistics(model, x, batch_size, held), x.shape[1])


def evaluate_amortized(model, x, batch_size=512):
  """Full-data, non-annealed F of x `[N, D]` from summed batch statistics.

  F of the model's posteriors: the encoder's, or the refined ones
  (`amortized_posterior`).

  Returns:
    dict: 'elbo', 'q_entropy', 'prior_entropy', 'likelihood_entropy',
    'noise_variance' (floats), 'scales' (list).
  """
  return _evaluate(model, x, batch_size, refined=True)


def _evaluate(model, x, batch_size, refined):
  """`evaluate_amortized`, of the refined posteriors only where `refined`
  (and the model has posterior_steps > 0), else of the encoder's."""
  terms = _normalised_terms(model, x, batch_size, refined)
  values = {k: float(getattr(terms, k)) for k in (
      'elbo', 'q_entropy', 'prior_entropy', 'likelihood_entropy')}
  values['noise_variance'] = float(terms.noise_variance)
  values['scales'] = terms.scales.numpy().tolist()
  return to_data_units(values, model.data_scale, *model.v.shape)


class CheckpointCallback(keras.callbacks.Callback):
  """Evaluates on the full data and saves the state, every
  `evaluate_every` epochs and after the last epoch trained.

  The state (model weights, optimizer variables, epoch, history) goes to one
  `tf.train.Checkpoint` in the directory `path`, replaced atomically.
  `history` holds one record per evaluated epoch: the full-data terms of
  the posteriors that training uses (`evaluate_amortized`, of the encoder's
  posteriors where the model refines at inference only), the coefficients,
  cumulative seconds of training (evaluations excluded) and whatever
  `on_epoch_end(model, epoch)` returns.

  Args:
    x: `[N, D]` the training data.
    path: optional checkpoint directory.
    history: dict of lists to append to (a resumed run's).
    on_epoch_end: optional `f(model, epoch) -> dict` of extra metrics,
      called at each evaluation.
    batch_size: points per evaluation batch.
    seconds: training seconds done before (a resumed run's).
    config: the run's config, recorded in the checkpoint.
    evaluate_every: k >= 1: evaluate (and checkpoint) after epochs k - 1,
      2k - 1, ... (0-based); the last epoch trained, if not one of them
      (the run's last, or one where `model.stop_training` was set), is
      evaluated when training ends.
  """

  def __init__(self, x, path=None, history=None, on_epoch_end=None,
               batch_size=512, seconds=0.0, config=None, evaluate_every=1):
    super().__init__()
    self.x, self.path, self.extra = x, path, on_epoch_end
    self.config = config
    self.batch_size = batch_size
    self.history = history if history is not None else {}
    self.seconds = seconds
    self.evaluate_every = evaluate_every
    self._unrecorded = None     # the last trained epoch, until evaluated

  def on_epoch_begin(self, epoch, logs=None):
    self._start = time.perf_counter()

  def on_epoch_end(self, epoch, logs=None):
    self.seconds += time.perf_counter() - self._start
    self._unrecorded = epoch
    if (epoch + 1) % self.evaluate_every == 0:
      self._record(epoch)

  def on_train_end(self, logs=None):
    if self._unrecorded is not None:
      self._record(self._unrecorded)

  def _record(self, epoch):
    self._unrecorded = None
    c = self.model.coefficients.numpy()
    record = dict(_evaluate(self.model, self.x, self.batch_size,
                            refined=self.model.refine_in_training),
                  epoch=epoch, a_q=float(c[0]), a_prior=float(c[1]),
                  a_lik=float(c[2]), seconds=self.seconds)
    if self.extra is not None:
      record.update(self.extra(self.model, epoch) or {})
    if not np.isfinite(record['elbo']):
      raise FloatingPointError(f'amortized epoch {epoch}: full-data ELBO is '
                               f'{record["elbo"]}.')
    for k, v in record.items():
      self.history.setdefault(k, []).append(v)
    logging.info('epoch %d: ELBO %.4f (full data), noise_variance %.4g, a_prior %.3g',
                 epoch, record['elbo'], record['noise_variance'], record['a_prior'])
    if self.path:
      save_state(self.path, self.model, epoch + 1, self.history, self.seconds,
                 self.config)


def save_state(path, model, epoch, history, seconds, config=None):
  """Writes model, optimizer and progress to the checkpoint `path`.

  The model's weights and the optimizer's variables (Adam's slots and step
  count) go onto `tf.train.Checkpoint` as the objects `model` and
  `optimizer`; their shapes are recorded so that a mismatch is named
  before anything is restored. `config` identifies the run (see
  `tfp_esc.inference._checkpoint`).
  """
  state = {'epoch': epoch, 'history': history, 'seconds': seconds,
           'shapes': _shapes(model)}
  _checkpoint.save(path, 'amortized', config or {}, {}, state,
                   objects=_trackables(model))


def _shapes(model):
  """Shapes of the model's weights, then of its optimizer's variables."""
  return [list(v.shape) for v in model.weights + model.optimizer.variables]


def _trackables(model):
  """What an amortized checkpoint holds: the model and its optimizer."""
  return {'model': model, 'optimizer': model.optimizer}


def _restore_state(path, model, config=None):
  """Loads a state written by `save_state` into `model`; returns progress.

  Raises:
    CheckpointError: a missing, corrupt or foreign checkpoint, another
      run's, or one of another model.
  """
  _, state = _checkpoint.load(path, 'amortized', config or {})
  model.optimizer.build(model.trainable_variables)
  shapes = _shapes(model)
  if state.get('shapes') != shapes:
    raise _checkpoint.CheckpointError(
        f'checkpoint {path!r} holds weights of shapes {state.get("shapes")}, '
        f'this model has {shapes}.')
  _checkpoint.restore_objects(path, _trackables(model))
  return state


def _posterior_name(posterior, family):
  """`posterior`, or the deprecated `family=` that named it before."""
  if family is None:
    return posterior
  warnings.warn('family= is deprecated; pass posterior= (the same family '
                'name).', DeprecationWarning, stacklevel=3)
  return family


def batch_order(num_points, batch_size, seed, first_epoch, last_epoch):
  """Batch indices of epochs [first_epoch, last_epoch): `[E, steps, B]` int.

  Each epoch is the EM engines' batch order (`_training.batches`: a
  permutation that depends only on (seed, epoch)), cut into N // B batches
  (the last partial batch is dropped), so a resumed run sees the same
  batches as an uninterrupted one.
  """
  steps = num_points // int(batch_size)
  epochs = range(first_epoch, int(last_epoch))
  if steps == 0 or not epochs:
    return np.zeros((len(epochs), steps, batch_size), np.int64)
  return np.stack([
      np.stack(batches(num_points, int(batch_size), seed, e,
                       drop_remainder=True))
      for e in epochs]).astype(np.int64)


def _training_batches(x, batch_size, seed, first_epoch, last_epoch):
  """`tf.data.Dataset` of the batches of epochs [first_epoch, last_epoch).

  The batches of `batch_order`, each epoch's indices drawn only when the
  pipeline reaches that epoch: a run asked for many epochs (a time budget
  or early stopping with a large `epochs`) holds one epoch's order, not
  all of them.

  Args:
    x: `[N, D]` float tensor.
    batch_size: B.
    seed, first_epoch, last_epoch: as `batch_order`.

  Returns:
    Dataset of `[B, D]` batches of x, N // B per epoch.
  """
  num_points, batch_size = int(x.shape[0]), int(batch_size)

  def epoch_order(epoch):
    return batch_order(num_points, batch_size, seed, epoch,
                       epoch + 1)[0].reshape(-1)

  return (epoch_index_batches(epoch_order, batch_size, first_epoch,
                              last_epoch, drop_remainder=True)
          .map(lambda i: tf.gather(x, i)).prefetch(1))


def make_amortized_model(x, num_latents, *, posterior='diagonal', rank=5,
                         learning_rate=1e-3, seed=0, hidden_units=256,
                         num_blocks=2, objective='analytic', num_samples=1,
                         jit_compile='auto', family=None,
                         posterior_steps=0, refine_in_training=True,
                         factor_rate=1.0):
  """A compiled, untrained `AmortizedSparseCoding` for data like x.

  Same arguments, same initial weights: the encoder and V depend only on
  `seed`. The sampled objective starts at lambda = 1 and sigma^2 = the data
  variance (the mean over dimensions of the variance of x).

  Args:
    x: `[N, D]` float32/float64 data (fixes D, the dtype and sigma^2's start).
    num_latents: H.
    posterior: the posterior family, 'diagonal', 'lowrank' or 'full'.
    rank: R of the low-rank family.
    learning_rate: Adam learning rate, in (0, `MAX_LEARNING_RATE`] = (0, 1].
    seed: seeds the weights and the Monte-Carlo samples.
    hidden_units, num_blocks: encoder size.
    objective: 'analytic' or 'sampled'.
    num_samples: S >= 1 (sampled objective).
    jit_compile: Keras' `compile(jit_compile=...)`: True, False or 'auto'
      (XLA on accelerators, not on CPU-only machines).
    family: deprecated name of `posterior`.
    posterior_steps: K >= 0 (`AmortizedSparseCoding`).
    refine_in_training: bool (`AmortizedSparseCoding`).
    factor_rate: c > 0: the low-rank factor's read-out learns at c times
      Adam's rate (`tfp_esc.posterior.encoders`; 0.1 for learning rates
      well above the paper's 1e-3).

  Returns:
    `AmortizedSparseCoding` compiled with Adam.

  Raises:
    ValueError: bad shapes, NaN/inf data, an unknown family or objective,
      num_samples < 1, constant data with the sampled objective.
  """
  posterior = _posterior_name(posterior, family)
  x = _check_model_args(x, num_latents, posterior, rank, learning_rate, seed,
                        hidden_units, num_blocks, objective, num_samples,
                        jit_compile)
  _check_refine_in_training(
      refine_in_training,
      _check_posterior_steps(posterior_steps, posterior, objective))
  rms = data_scale(x)
  scale = rms / WORKING_RMS
  num_observed = int(x.shape[1])
  options = {}
  if objective == 'sampled':
    variance = float(np.mean(np.var(x, axis=0, dtype=np.float64)))
    if not variance > _NOISE_FLOOR * scale**2:
      relative = variance / rms**2
      raise ValueError(f'x has variance {variance:.3g}, {relative:.3g} times '
                       'its mean square: too small to start the learned '
                       'noise variance of the sampled objective.')
    options = {'num_samples': num_samples,
               'initial_noise_variance': variance}
  keras.utils.set_random_seed(seed)
  encoder = make_encoder(num_observed, num_latents, posterior, rank,
                         hidden_units, num_blocks, seed=seed,
                         dtype=x.dtype.name, factor_rate=factor_rate)
  model = AmortizedSparseCoding(encoder, num_observed, num_latents, posterior,
                                seed=seed, objective=objective,
                                data_scale=scale,
                                posterior_steps=posterior_steps,
                                refine_in_training=refine_in_training,
                                **options)
  # A new optimizer per model: Keras 3 optimizers cannot move to new variables.
  model.compile(optimizer=keras.optimizers.Adam(learning_rate),
                jit_compile=jit_compile)
  return model


def fit_amortized(x, num_latents, *, posterior='diagonal', rank=5,
                  schedule=None, epochs=10, batch_size=512, learning_rate=1e-3,
                  seed=0, hidden_units=256, num_blocks=2, checkpoint_path=None,
                  resume=False, overwrite=False, checkpoint_config=None,
                  tensorboard_dir=None, on_epoch_end=None, verbose=1,
                  objective='analytic', num_samples=1, family=None,
                  strategy=None, early_stopping_patience=None,
                  early_stopping_min_delta=0.0, posterior_steps=0,
                  refine_in_training=True, evaluate_every=1, callbacks=None,
                  factor_rate=1.0):
  """Trains encoder and dictionary by Adam on F_a (the Keras way).

  Args:
    x: `[N, D]` float32/float64 data.
    num_latents: H.
    posterior: the posterior family, 'diagonal', 'lowrank' or 'full'.
    rank: R of the low-rank family.
    schedule: annealing schedule by epoch (default none; analytic only).
    epochs: total epochs (a resumed run counts those done).
    batch_size: minibatch size (the last partial batch is dropped).
    learning_rate: Adam learning rate, in (0, `MAX_LEARNING_RATE`] = (0, 1].
    seed: seeds weights, the batch order and the Monte-Carlo samples.
    hidden_units, num_blocks: encoder size.
    checkpoint_path: optional checkpoint directory (`tf.train.Checkpoint`
      of the model and its optimizer) replaced atomically after every
      epoch; it records the run's config (these settings, the data's shape
      and fingerprint, `checkpoint_config`).
    resume: continue from `checkpoint_path` if it exists; a checkpoint of
      another run (a differing config field) or trainer, with more epochs
      done than `epochs`, or a corrupt one raises `CheckpointError`.
    overwrite: without `resume`, replace an existing `checkpoint_path`
      (else it is an error).
    checkpoint_config: optional JSON-able dict recorded in the checkpoint
      and compared on resume (e.g. an experiment's config).
    tensorboard_dir: optional TensorBoard log folder.
    on_epoch_end: optional `f(model, epoch) -> dict` of extra metrics.
    verbose: Keras progress-bar verbosity.
    objective: 'analytic' (F_a) or 'sampled' (Monte-Carlo ELBO with learned
      lambda, sigma^2; see `AmortizedSparseCoding`).
    num_samples: S >= 1, samples per point and step (sampled objective).
    family: deprecated name of `posterior`.
    strategy: optional `tf.distribute.Strategy` (default: the current one,
      i.e. one device). The model is built and trained in its scope; Keras
      splits every batch across the replicas, which all-reduce the ELBO's
      sums (`_sum_over_replicas`), so a `MirroredStrategy` over several
      devices follows the one-device run up to the order of float sums
      (analytic objective; the sampled one draws its noise per replica).
      `MultiWorkerMirroredStrategy` runs the same code on several machines
      (README). batch_size is the global batch, divided among replicas.
    early_stopping_patience: optional P >= 1: stop before `epochs` once
      the full-data ELBO has not risen by more than
      `early_stopping_min_delta` (>= 0) for P non-annealed epochs
      (`elbo_has_stalled`); a resumed run that has already stalled trains
      no further. Default None: run all epochs.
    posterior_steps: K >= 0 MM iterations refining the encoder's
      posteriors, in training and evaluation (`AmortizedSparseCoding`,
      module doc); diagonal family, analytic objective.
    refine_in_training: with posterior_steps > 0, False keeps the
      refinement out of training: the weights, the recorded history (the
      full-data ELBO of the encoder's posteriors, hence early stopping)
      and the cost of an epoch are those of the posterior_steps = 0 run;
      only the returned model's posteriors (`posterior`,
      `amortized_posterior`, `evaluate_amortized`) are refined.
    factor_rate: c > 0, the low-rank factor's read-out learns at c times
      Adam's rate (`make_amortized_model`); recorded in the checkpoint
      where not 1.

    evaluate_every: k >= 1: the full-data evaluation behind the history
      (with the checkpoint, early stopping and `on_epoch_end`) after every
      k-th epoch, the last one and the one where training stops; default
      every epoch. It costs a forward pass over all the data, about a third
      of an epoch's time on whitened patches; training itself does not
      depend on k. Early stopping's patience then counts evaluations, and
      a resumed run continues from the last evaluated epoch.
    callbacks: optional list of `keras.callbacks.Callback` added to Keras'
      `fit` after the library's own; called after every epoch, evaluated
      or not (a callback that sets `model.stop_training` ends training,
      and that epoch is evaluated).

  Returns:
    (model, history): the trained `AmortizedSparseCoding` and per-epoch lists
    of full-data terms (the analytic F, whatever the objective),
    coefficients and seconds, one entry per evaluated epoch ('epoch' says
    which).

  Raises:
    ValueError: bad shapes, NaN/inf data, batch_size > N, an unknown
      objective, num_samples < 1, an annealing schedule with the sampled
      objective, a batch_size not divisible by the strategy's replicas,
      bad posterior_steps, refine_in_training=False with posterior_steps
      = 0.
    TypeError: a strategy that is not a `tf.distribute.Strategy`, a
      refine_in_training that is not a bool.
  """
  posterior = _posterior_name(posterior, family)
  x = _check_model_args(x, num_latents, posterior, rank, learning_rate, seed,
                        hidden_units, num_blocks, objective, num_samples,
                        'auto')
  posterior_steps = _check_posterior_steps(posterior_steps, posterior,
                                           objective)
  refine_in_training = _check_refine_in_training(refine_in_training,
                                                 posterior_steps)
  data_scale(x)  # refuses data without variation before any work
  schedule = check_schedule(schedule)
  if objective == 'sampled' and not isinstance(schedule, NoAnnealing):
    raise ValueError('schedule: entropy annealing applies to the analytic '
                     "objective only; pass schedule=None with "
                     "objective='sampled'.")
  num_points = int(x.shape[0])
  epochs = _checks.check_count(epochs, 'epochs')
  batch_size = _checks.check_count(batch_size, 'batch_size', 1, num_points)
  _checks.check_flag(resume, 'resume')
  _checks.check_flag(overwrite, 'overwrite')
  _checks.check_count(verbose, 'verbose', 0, 2)
  if early_stopping_patience is not None:
    _checks.check_count(early_stopping_patience, 'early_stopping_patience')
  _checks.check_real(early_stopping_min_delta, 'early_stopping_min_delta',
                     low=0.0, low_open=False)
  evaluate_every = _checks.check_count(evaluate_every, 'evaluate_every')
  user_callbacks = check_callbacks(callbacks)
  if on_epoch_end is not None and not callable(on_epoch_end):
    raise TypeError(f'on_epoch_end must be callable or None, got '
                    f'{type(on_epoch_end).__name__}.')
  if strategy is None:
    strategy = tf.distribute.get_strategy()
  if not isinstance(strategy, tf.distribute.Strategy):
    raise TypeError('strategy must be a tf.distribute.Strategy or None, got '
                    f'{type(strategy).__name__}.')
  replicas = strategy.num_replicas_in_sync
  if batch_size % replicas:
    raise ValueError(f'batch_size ({batch_size}) must be divisible by the '
                     f"strategy's {replicas} replicas, so that every replica "
                     'gets the same share of each batch.')
  x = tf.constant(x)
  with strategy.scope():
    model = make_amortized_model(
        x, num_latents, posterior=posterior, rank=rank,
        learning_rate=learning_rate,
        seed=seed, hidden_units=hidden_units, num_blocks=num_blocks,
        objective=objective, num_samples=num_samples,
        posterior_steps=posterior_steps,
        refine_in_training=refine_in_training, factor_rate=factor_rate)
  history, seconds, initial_epoch = {}, 0.0, 0
  config = {**(checkpoint_config or {})}
  for k, v in dict(
      posterior=posterior, rank=rank, num_latents=int(num_latents),
      schedule=repr(schedule or NoAnnealing()), batch_size=int(batch_size),
      learning_rate=learning_rate, seed=seed, hidden_units=hidden_units,
      num_blocks=num_blocks, objective=objective, num_samples=num_samples,
      data_shape=x.shape.as_list(), data_dtype=x.dtype.name,
      data=_checkpoint.data_fingerprint(x.numpy())).items():
    config.setdefault(k, v)
  if posterior_steps:
    # Only where set, so checkpoints of earlier runs still resume.
    config.setdefault('posterior_steps', posterior_steps)
  if not refine_in_training:
    config.setdefault('refine_in_training', False)
  if factor_rate != 1.0 and posterior == 'lowrank':
    # Only where set, so checkpoints of earlier runs still resume.
    config.setdefault('factor_rate', float(factor_rate))
  if _checkpoint.check_start(checkpoint_path, resume, overwrite):
    with strategy.scope():
      state = _restore_state(checkpoint_path, model, config)
    history, seconds = state['history'], state['seconds']
    initial_epoch = int(state['epoch'])
    if initial_epoch > epochs:
      raise _checkpoint.CheckpointError(
          f'checkpoint {checkpoint_path!r} has done {initial_epoch} epochs, '
          f'more than this run asks for (epochs={epochs}); ask for at least '
          'as many, or start afresh with overwrite=True (scripts: '
          '--overwrite).')
    logging.info('Resumed from %s at epoch %d.', checkpoint_path,
                 initial_epoch)
  steps = num_points // int(batch_size)
  dataset = _training_batches(x, batch_size, seed, initial_epoch, epochs)
  callbacks = [
      AnnealingCallback(NoAnnealing() if schedule is None else schedule, x,
                        batch_size),
      CheckpointCallback(x, checkpoint_path, history, on_epoch_end,
                         batch_size, seconds, config, evaluate_every)]
  stalled = False
  if early_stopping_patience is not None:
    callbacks.append(ElboEarlyStopping(history, early_stopping_patience,
                                       early_stopping_min_delta))
    stalled = elbo_has_stalled(history, early_stopping_patience,
                               early_stopping_min_delta)
  callbacks += tensorboard_callbacks(tensorboard_dir)
  callbacks += user_callbacks
  if epochs > initial_epoch and not stalled:
    model.fit(dataset, epochs=int(epochs), initial_epoch=initial_epoch,
              steps_per_epoch=steps, callbacks=callbacks, verbose=verbose,
              shuffle=False)
  return model, callbacks[1].history
