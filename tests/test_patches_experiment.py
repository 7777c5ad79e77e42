"""train_patches end to end at tiny size: outputs, keys, resume, bad input."""

import dataclasses
import json
import os

import shutil

import numpy as np
import pytest
import tensorflow as tf

from tfp_esc import experiment
from tfp_esc.inference import _checkpoint


def _config(path, **kwargs):
  return experiment.PatchesConfig(**{**dict(
      images=path, num_patches=256, num_latents=12, patch_size=6, epochs=2,
      batch_size=64, e_step_iterations=15, gini_samples=2, gini_points=64,
      refine_rounds=1),
                                      **kwargs})


def test_em_run_writes_outputs_and_resumes(images, tmp_path):
  whole_dir = tmp_path / 'whole'
  whole = experiment.train_patches(_config(images), str(whole_dir))
  for name in ('dictionary.npy', 'metrics.json', 'dictionary.png',
               'training.png', 'gini.png'):
    assert os.path.getsize(whole_dir / name) > 0, name
  # One tf.train.Checkpoint kept, holding the run's record.
  prefix = tf.train.latest_checkpoint(whole_dir / 'checkpoint')
  record = json.loads(tf.train.load_checkpoint(prefix).get_tensor(
      'record/.ATTRIBUTES/VARIABLE_VALUE'))
  assert record['kind'] == 'em-incremental'
  assert record['state']['epoch'] == 2 and record['state']['refine_round'] == 1
  assert sorted(os.listdir(whole_dir / 'checkpoint')) == [
      'checkpoint', os.path.basename(prefix) + '.data-00000-of-00001',
      os.path.basename(prefix) + '.index']
  with open(whole_dir / 'metrics.json') as f:
    metrics = json.load(f)
  for key in ('elbo', 'noise_variance', 'scales', 'gini', 'seconds', 'entropies',
              'localized_fraction'):
    assert key in metrics, key
  # Two EM epochs (annealed), then one refinement round (never annealed).
  assert metrics['history']['phase'] == ['em', 'em', 'refine']
  assert metrics['history']['a_prior'] == [10.0, 8.0, 1.0]
  assert np.load(whole_dir / 'dictionary.npy').shape == (36, 12)
  # Interrupted after one epoch, then resumed: the same result.
  part_dir = str(tmp_path / 'part')
  experiment.train_patches(_config(images, epochs=1, refine_rounds=0),
                           part_dir)
  _refuses_other_runs(images, part_dir)
  resumed = experiment.train_patches(_config(images), part_dir, resume=True)
  np.testing.assert_allclose(np.load(os.path.join(part_dir, 'dictionary.npy')),
                             np.load(whole_dir / 'dictionary.npy'), atol=1e-6)
  np.testing.assert_allclose(resumed['history']['elbo'],
                             whole['history']['elbo'], rtol=1e-6)
  # A finished run resumed with fewer epochs is refused, not returned.
  with pytest.raises(ValueError, match=r'has done 2 epochs.*epochs=1'):
    experiment.train_patches(_config(images, epochs=1), part_dir, resume=True)
  # Nor can a run that moved on to refinement add epochs.
  with pytest.raises(ValueError, match='moved on to refinement'):
    experiment.train_patches(_config(images, epochs=3), part_dir, resume=True)


def _refuses_other_runs(images, workdir):
  """Checks what resuming the 1-epoch EM checkpoint in `workdir` refuses."""
  checkpoint = os.path.join(workdir, 'checkpoint')
  before = _contents(checkpoint)
  # Without resume or overwrite: refused, naming both ways out.
  with pytest.raises(ValueError, match='exists from an earlier run.*resume'
                     '.*overwrite'):
    experiment.train_patches(_config(images), workdir)
  # Another seed, engine, method or setting: refused naming the field.
  for change, field in [({'seed': 4}, 'seed=0.*seed=4'),
                        ({'batch_size': 32}, 'batch_size=64.*batch_size=32'),
                        ({'gini_samples': 3}, 'gini_samples'),
                        ({'engine': 'paper', 'refine_rounds': 0},
                         "'em-incremental'.*'em-paper'"),
                        ({'method': 'amortized', 'e_step_iterations': None},
                         "'em-incremental'.*'amortized'")]:
    with pytest.raises(ValueError, match=field + '.*overwrite'):
      experiment.train_patches(_config(images, **change), workdir,
                               resume=True)
  with pytest.raises(ValueError, match='exclude each other'):
    experiment.train_patches(_config(images), workdir, resume=True,
                             overwrite=True)
  assert _contents(checkpoint) == before  # Untouched by refusals.
  # Corrupt or truncated data, index or state file: named, with the remedy.
  broken = os.path.join(workdir, 'broken')
  for name, content in before.items():
    middle = len(content) // 2
    flipped = (content[:middle] + bytes([content[middle] ^ 1])
               + content[middle + 1:])
    for damaged in (content[:middle], flipped):
      shutil.rmtree(broken, ignore_errors=True)
      shutil.copytree(checkpoint, os.path.join(broken, 'checkpoint'))
      with open(os.path.join(broken, 'checkpoint', name), 'wb') as f:
        f.write(damaged)
      with pytest.raises(ValueError, match=r'broken/checkpoint.*corrupt.*'
                         r'delete it.*--overwrite'):
        experiment.train_patches(_config(images), broken, resume=True)


def _contents(folder):
  """{file name: bytes} of a checkpoint directory."""
  return {name: open(os.path.join(folder, name), 'rb').read()
          for name in sorted(os.listdir(folder))}


@pytest.mark.parametrize('change,match', [
    ({'method': 'map'}, r"^method must be one of \['em', 'amortized'\], got "
                        "'map'"),
    ({'annealing': 'cosine'}, r"^annealing must be one of \['none', 'prior'"),
    ({'engine': 'fast'}, r"^engine must be one of \['incremental', 'paper'"),
    ({'posterior': 'spherical'}, '^posterior must be one of'),
    ({'epochs': 0}, r'^epochs must be an integer >= 1, got 0'),
    ({'epochs': 2.0}, r'^epochs must be an integer, got 2.0 \(float\)'),
    ({'batch_size': -1}, '^batch_size must be an integer >= 1'),
    ({'refine_rounds': -1}, '^refine_rounds must be an integer >= 0'),
    ({'learning_rate': 0.0}, r'^learning_rate must be a finite number in '
                             r'\(0, inf\), got 0.0'),
    ({'m_step_size': -0.5}, r'^m_step_size must be a finite number in \(0'),
    ({'m_step_size': float('inf')}, '^m_step_size must be a finite number'),
    ({'learning_rate': True}, '^learning_rate must be a real number'),
    ({'posterior': 3}, r"^posterior must be one of \[.*got 3 \(int\)"),
    ({'seed': None}, '^seed must be set'),
    ({'warm_start': 1}, '^warm_start must be True or False, got 1'),
    ({'posterior': 'full'}, "^posterior must be 'diagonal' with the "
                            'incremental'),
    ({'e_step': 'newton'}, "^e_step is an option of engine 'paper'"),
    ({'method': 'amortized'}, "^e_step_iterations is an option of method "
                              "'em'"),
    ({'strategy': 'mirrored', 'engine': 'paper', 'refine_rounds': 0},
     "^strategy 'mirrored' is an option of method 'amortized' and of the "
     'incremental EM engine'),
    ({'method': 'amortized', 'e_step_iterations': None,
      'early_stopping_patience': 0},
     '^early_stopping_patience must be an integer >= 1'),
    ({'evaluate_every': 2}, "^evaluate_every is an option of method "
                            "'amortized'"),
    ({'method': 'amortized', 'e_step_iterations': None,
      'evaluate_every': 0}, '^evaluate_every must be an integer >= 1'),
    ({'posterior_steps': 1}, "^posterior_steps is an option of method "
                             "'amortized'"),
    ({'method': 'amortized', 'e_step_iterations': None,
      'posterior': 'lowrank', 'posterior_steps': 2},
     '^posterior_steps refines diagonal posteriors only'),
    ({'method': 'amortized', 'e_step_iterations': None,
      'posterior_steps': -1}, '^posterior_steps must be an integer >= 0'),
    ({'refine_in_training': False}, "^refine_in_training False is an option "
                                    "of method 'amortized' with "
                                    'posterior_steps > 0'),
    ({'method': 'amortized', 'e_step_iterations': None,
      'refine_in_training': False}, '^refine_in_training False is an option'),
    ({'method': 'amortized', 'e_step_iterations': None,
      'posterior_steps': 1, 'refine_in_training': 0},
     '^refine_in_training must be True or False, got 0'),
    ({'strategy': 'tpu'}, r"^strategy must be one of \['default', "
                          "'mirrored'\]"),
])
def test_bad_settings_raise_before_any_work(tmp_path, change, match):
  # The images do not exist: the config is refused before they are read.
  with pytest.raises(experiment.ConfigError, match=match) as info:
    experiment.train_patches(_config(str(tmp_path / 'none.mat'), **change),
                             str(tmp_path / 'out'))
  assert match.lstrip('^').startswith(info.value.field + ' ')
  assert not os.path.exists(tmp_path / 'out')


def test_missing_images_raise(tmp_path):
  with pytest.raises(FileNotFoundError):
    experiment.train_patches(_config(str(tmp_path / 'none.mat')), str(tmp_path))
  assert not os.path.exists(tmp_path / 'metrics.json')


def test_amortized_run_writes_outputs_and_resumes(images, tmp_path):
  config = _config(images, method='amortized', posterior='lowrank', rank=2,
                   annealing='prior_linear', epochs=2, refine_rounds=0,
                   e_step_iterations=None)
  whole = experiment.train_patches(config, str(tmp_path / 'whole'))
  assert whole['history']['a_prior'] == pytest.approx([2.0, 1.9])
  assert 0 < whole['gini']['mean'] < 1
  gap = whole['amortization_gap']
  assert gap['encoder_elbo'] == pytest.approx(whole['elbo'], rel=1e-5)
  assert gap['gap'] == pytest.approx(gap['refit_elbo'] - gap['encoder_elbo'])
  part = str(tmp_path / 'part')
  experiment.train_patches(dataclasses.replace(config, epochs=1), part)
  # The strategy says where a run trains, not which run it is: this one
  # resumes under MirroredStrategy (one replica on a CPU-only machine).
  resumed = experiment.train_patches(
      dataclasses.replace(config, strategy='mirrored'), part, resume=True)
  np.testing.assert_allclose(resumed['history']['elbo'],
                             whole['history']['elbo'], rtol=1e-5)


def test_refined_at_inference_only_reports_the_models_posteriors(
    images, tmp_path):
  # The history is of the encoder's posteriors (training's); the headline
  # values are of the refined ones, the model's, as the gap reports them.
  config = _config(images, method='amortized', epochs=2, refine_rounds=0,
                   e_step_iterations=None, posterior_steps=2,
                   refine_in_training=False)
  run = experiment.train_patches(config, str(tmp_path / 'run'))
  gap = run['amortization_gap']
  assert run['elbo'] == pytest.approx(gap['encoder_elbo'], rel=1e-6)
  assert run['training_elbo'] == run['history']['elbo'][-1]
  assert run['elbo'] > run['training_elbo']
  assert run['elbo'] == pytest.approx(
      run['entropies']['q_entropy'] - run['entropies']['prior_entropy']
      - run['entropies']['likelihood_entropy'], rel=1e-6)
  assert run['noise_variance'] != run['history']['noise_variance'][-1]


def test_em_run_under_mirrored_strategy_records_the_data_parallel_e_step(
    images, tmp_path):
  # --strategy=mirrored on the incremental engine: the classical,
  # data-parallel E-step (one replica on a CPU-only machine). It is a
  # different run from the default one, so its checkpoint does not resume
  # as a default run.
  config = _config(images, strategy='mirrored', epochs=1, refine_rounds=0)
  result = experiment.train_patches(config, str(tmp_path / 'run'))
  assert np.isfinite(result['elbo'])
  with pytest.raises(_checkpoint.CheckpointError, match='data_parallel'):
    experiment.train_patches(dataclasses.replace(config, strategy='default'),
                             str(tmp_path / 'run'), resume=True)
