"""tfp_esc: sparse coding with analytic, entropy-based ELBOs in TFP.

The public API; everything else lives in the subpackages, in the order data
flows: data -> model -> posterior -> objective -> inference -> evaluation.
"""

from tfp_esc import _xla

_xla.prefer_wide_vectors()

from tfp_esc.data.bars import make_bars  # pylint: disable=g-import-not-at-top,wrong-import-position
from tfp_esc.estimator import SparseCoding
from tfp_esc.evaluation.metrics import bars_recovery, gini_index
from tfp_esc.inference.em import fit_em
from tfp_esc.inference.joint import fit_joint
from tfp_esc.model.sparse_coding import SparseCodingModel
from tfp_esc.objective.annealing import get_schedule
from tfp_esc.objective.elbo import classical_elbo, entropy_elbo
from tfp_esc.objective.sampled import sampled_elbo
from tfp_esc.posterior.gaussian import DiagonalGaussian, FullGaussian, LowRankGaussian

use_compilation_cache = _xla.use_compilation_cache

__version__ = '0.1.0'

__all__ = [
    'DiagonalGaussian',
    'FullGaussian',
    'LowRankGaussian',
    'SparseCoding',
    'SparseCodingModel',
    'bars_recovery',
    'classical_elbo',
    'entropy_elbo',
    'fit_em',
    'fit_joint',
    'get_schedule',
    'gini_index',
    'make_bars',
    'sampled_elbo',
    'use_compilation_cache',
]
