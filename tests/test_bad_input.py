"""Bad input gives clear errors that name the offending argument."""

import re

import numpy as np
import pytest
import tensorflow as tf

from tfp_esc.model.sparse_coding import SparseCodingModel
from tfp_esc.objective.elbo import classical_elbo, entropy_elbo
from tfp_esc.posterior.gaussian import (
  DiagonalGaussian,
  FullGaussian,
  LowRankGaussian,
  get_family,
)

N, D, H = 5, 4, 3


@pytest.fixture
def inputs():
  rng = np.random.default_rng(0)
  x = rng.standard_normal((N, D))
  w = rng.standard_normal((D, H))
  w /= np.linalg.norm(w, axis=0)
  q = DiagonalGaussian(rng.standard_normal((N, H)), np.ones((N, H)))
  return x, w, q


def test_valid_inputs_work(inputs):
  # The baseline for every test below: no error with good input.
  x, w, q = inputs
  assert np.isfinite(entropy_elbo(x, w, q).elbo.numpy())
  assert np.isfinite(classical_elbo(x, w, q, np.ones(H), 1.0).numpy())


@pytest.mark.parametrize('elbo', ['entropy', 'classical'])
@pytest.mark.parametrize('bad_x', [np.zeros(D), np.zeros((1, N, D))])
def test_wrong_rank_x(inputs, elbo, bad_x):
  _, w, q = inputs
  with pytest.raises(ValueError, match=r'^x must have rank 2'):
    if elbo == 'entropy':
      entropy_elbo(bad_x, w, q)
    else:
      classical_elbo(bad_x, w, q, np.ones(H), 1.0)


def test_wrong_rank_dictionary(inputs):
  x, w, q = inputs
  with pytest.raises(ValueError, match=r'^dictionary must have rank 2'):
    entropy_elbo(x, w[None], q)


def test_mismatched_observed_dimension(inputs):
  x, w, q = inputs
  with pytest.raises(ValueError, match=r'^x has shape') as info:
    entropy_elbo(x[:, :3], w, q)
  message = str(info.value)
  assert re.search(r'\[5, 3\]', message), message
  assert re.search(r'\[4, 3\]', message), message
  assert 'dictionary' in message
  with pytest.raises(ValueError, match=r'\[5, 3\].*dictionary.*\[4, 3\]'):
    classical_elbo(x[:, :3], w, q, np.ones(H), 1.0)


def test_mismatched_latent_dimension(inputs):
  x, w, _ = inputs
  q4 = DiagonalGaussian(np.zeros((N, H + 1)), np.ones((N, H + 1)))
  with pytest.raises(ValueError, match=r'dictionary has shape \[4, 3\].*'
                     r'posterior.*\[5, 4\]'):
    entropy_elbo(x, w, q4)
  with pytest.raises(ValueError, match=r'dictionary.*posterior'):
    classical_elbo(x, w, q4, np.ones(H + 1), 1.0)


def test_mismatched_number_of_points(inputs):
  x, w, q = inputs
  with pytest.raises(ValueError, match=r'x has shape \[4, 4\].*\[5, 3\]'):
    entropy_elbo(x[:4], w, q)


@pytest.mark.parametrize('bad', [np.nan, np.inf, -np.inf])
def test_non_finite_x(inputs, bad):
  x, w, q = inputs
  x = x.copy()
  x[2, 1] = bad
  with pytest.raises(ValueError, match=r'^x holds 1 NaN or inf.*\(2, 1\)'):
    entropy_elbo(x, w, q)
  with pytest.raises(ValueError, match=r'^x holds'):
    classical_elbo(x, w, q, np.ones(H), 1.0)


def test_non_finite_dictionary(inputs):
  x, w, q = inputs
  w = w.copy()
  w[0, 0] = np.nan
  with pytest.raises(ValueError, match=r'^dictionary holds'):
    entropy_elbo(x, w, q)


@pytest.mark.parametrize('bad', [0.0, -1.0, np.nan])
def test_classical_elbo_non_positive_scales(inputs, bad):
  x, w, q = inputs
  scales = np.ones(H)
  scales[1] = bad
  with pytest.raises(ValueError, match=r'^scales '):
    classical_elbo(x, w, q, scales, 1.0)


@pytest.mark.parametrize('bad', [0.0, -0.5, np.inf])
def test_classical_elbo_non_positive_noise_variance(inputs, bad):
  x, w, q = inputs
  with pytest.raises(ValueError, match=r'^noise_variance '):
    classical_elbo(x, w, q, np.ones(H), bad)


def test_classical_elbo_wrong_shape_scales(inputs):
  x, w, q = inputs
  with pytest.raises(ValueError, match=r'^scales has shape \[1, 3\]'):
    classical_elbo(x, w, q, np.ones((1, H)), 1.0)
  with pytest.raises(ValueError, match=r'^scales has shape \[1, 5, 3\]'):
    classical_elbo(x, w, q, np.ones((1, N, H)), 1.0)
  with pytest.raises(ValueError, match=r'^noise_variance has shape \[1\]'):
    classical_elbo(x, w, q, np.ones(H), np.ones(1))
  with pytest.raises(ValueError, match=r'^noise_variance has shape \[5, 1\]'):
    classical_elbo(x, w, q, np.ones(H), np.ones((N, 1)))


@pytest.mark.parametrize('bad', [0.0, -1.0])
def test_model_non_positive_scales(inputs, bad):
  _, w, _ = inputs
  scales = np.ones(H)
  scales[0] = bad
  with pytest.raises(ValueError, match=r'^scales must be positive'):
    SparseCodingModel(w, scales, 1.0)


@pytest.mark.parametrize('bad', [0.0, -1.0, np.nan])
def test_model_non_positive_noise_variance(inputs, bad):
  _, w, _ = inputs
  with pytest.raises(ValueError, match=r'^noise_variance '):
    SparseCodingModel(w, np.ones(H), bad)


def test_model_scales_shape_mismatch(inputs):
  _, w, _ = inputs
  with pytest.raises(ValueError, match=r'^scales has shape \[4\].*\[4, 3\]'):
    SparseCodingModel(w, np.ones(H + 1), 1.0)


def test_model_non_unit_norm_dictionary(inputs):
  _, w, _ = inputs
  with pytest.raises(ValueError, match=r'^dictionary columns must have unit '
                     r'norm'):
    SparseCodingModel(w * 1.01, np.ones(H), 1.0)
  # from_original normalises a free dictionary; validate=False skips checks.
  SparseCodingModel.from_original(w * 3.0, 1.0)
  SparseCodingModel(w * 1.01, np.ones(H), 1.0, validate=False)


def test_model_zero_column_in_free_dictionary(inputs):
  _, w, _ = inputs
  w = w.copy()
  w[:, 2] = 0
  with pytest.raises(ValueError, match=r'free_dictionary'):
    SparseCodingModel.from_original(w, 1.0)


@pytest.mark.parametrize('bad', [0.0, -0.1])
def test_diagonal_gaussian_non_positive_scale(bad):
  scale = np.ones((N, H))
  scale[3, 2] = bad
  with pytest.raises(ValueError, match=r'^scale must be positive'):
    DiagonalGaussian(np.zeros((N, H)), scale)


@pytest.mark.parametrize('bad', [0.0, -0.1])
def test_lowrank_gaussian_non_positive_scale(bad):
  scale = np.ones((N, H))
  scale[0, 0] = bad
  with pytest.raises(ValueError, match=r'^scale must be positive'):
    LowRankGaussian(np.zeros((N, H)), scale, np.zeros((N, H, 2)))


def test_posterior_shape_mismatch():
  with pytest.raises(ValueError, match=r'^scale has shape \[5, 4\].*\[5, 3\]'):
    DiagonalGaussian(np.zeros((N, H)), np.ones((N, H + 1)))
  with pytest.raises(ValueError, match=r'^scale_tril has shape'):
    FullGaussian(np.zeros((N, H)), np.ones((N, H, H + 1)))
  with pytest.raises(ValueError, match=r'^factor has shape'):
    LowRankGaussian(np.zeros((N, H)), np.ones((N, H)), np.ones((N, H + 1, 2)))


def test_posterior_non_finite_loc():
  loc = np.zeros((N, H))
  loc[0, 0] = np.nan
  with pytest.raises(ValueError, match=r'^loc holds'):
    DiagonalGaussian(loc, np.ones((N, H)))


@pytest.mark.parametrize('bad', [0.0, -0.2])
def test_full_gaussian_non_positive_diagonal(bad):
  tril = np.tile(np.eye(H), (N, 1, 1))
  tril[1, 2, 2] = bad
  with pytest.raises(ValueError, match=r'diagonal of scale_tril must be '
                     r'positive'):
    FullGaussian(np.zeros((N, H)), tril)


def test_unknown_family():
  with pytest.raises(ValueError, match=r"posterior family.*'diag'"):
    get_family('diag')
  assert get_family('lowrank') is LowRankGaussian


@pytest.mark.parametrize('rank', [None, 0])
def test_lowrank_init_without_rank(rank):
  with pytest.raises(ValueError, match=r'^rank must be a positive int'):
    LowRankGaussian.init_unconstrained(N, H, tf.float64, rank=rank)


def test_init_unconstrained_bad_dtype():
  with pytest.raises(TypeError, match=r'^dtype must be float32 or float64'):
    DiagonalGaussian.init_unconstrained(N, H, tf.int32)


def test_dtype_mismatch_x_and_posterior(inputs):
  x, w, q = inputs
  x32 = tf.constant(x, tf.float32)
  with pytest.raises(TypeError, match=r'^x has dtype float32, expected '
                     r'float64'):
    entropy_elbo(x32, w, q)
  with pytest.raises(TypeError, match=r'^x has dtype float32'):
    classical_elbo(x32, w, q, np.ones(H), 1.0)
  with pytest.raises(TypeError, match=r'^dictionary has dtype float32'):
    entropy_elbo(x, tf.constant(w, tf.float32), q)


def test_dtype_mismatch_within_posterior():
  with pytest.raises(TypeError, match=r'^scale has dtype float32'):
    DiagonalGaussian(tf.zeros((N, H), tf.float64), tf.ones((N, H),
                                                           tf.float32))


def test_non_float_x(inputs):
  _, w, q = inputs
  with pytest.raises(TypeError, match=r'^x must be a float tensor'):
    entropy_elbo(tf.zeros((N, D), tf.int32), w, q)
