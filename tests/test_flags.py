"""Flags generated from the configs: every field, its help, the library's enums."""

import dataclasses

import pytest
from absl import flags

from tfp_esc import _flags, experiment
from tfp_esc.inference.em import E_STEPS, ENGINES
from tfp_esc.objective.annealing import SCHEDULE_NAMES
from tfp_esc.posterior.gaussian import FAMILIES


@pytest.mark.parametrize('config_class', [experiment.BarsConfig,
                                          experiment.PatchesConfig])
def test_every_field_is_a_documented_flag(config_class):
  values = flags.FlagValues()
  _flags.define_config_flags(config_class, values)
  defaults = config_class()
  fields = [f.name for f in dataclasses.fields(config_class)]
  assert sorted(values) == sorted(fields)
  for name in fields:
    assert values[name].default == getattr(defaults, name), name
    assert values[name].help.endswith('.'), name
  assert sorted(values['posterior'].parser.enum_values) == sorted(FAMILIES)
  assert tuple(values['annealing'].parser.enum_values) == SCHEDULE_NAMES
  values(['prog'])
  assert _flags.config_from_flags(config_class, values) == defaults


def test_patches_flags_parse_into_the_config():
  values = flags.FlagValues()
  _flags.define_config_flags(experiment.PatchesConfig, values)
  assert tuple(values['engine'].parser.enum_values) == ENGINES
  assert tuple(values['e_step'].parser.enum_values) == E_STEPS
  assert 'Adam learning rate' in values['learning_rate'].help
  values(['prog', '--engine=paper', '--posterior=full', '--num_patches=64',
          '--e_step=lbfgs', '--learning_rate=0.01', '--warm_start'])
  config = _flags.config_from_flags(experiment.PatchesConfig, values)
  assert config == experiment.PatchesConfig(
      engine='paper', posterior='full', num_patches=64, e_step='lbfgs',
      learning_rate=0.01, warm_start=True)
  values.unparse_flags()
  values(['prog', '--epochs=0'])
  with pytest.raises(experiment.ConfigError, match='^epochs must be') as info:
    _flags.config_from_flags(experiment.PatchesConfig, values)
  assert info.value.field == 'epochs'


def test_an_undocumented_field_is_refused():

  @dataclasses.dataclass
  class Config:
    """A config.

    Attributes:
      documented: has help
        over two lines.
    """
    documented: int = 1
    hidden: int = 2

  with pytest.raises(ValueError, match=r"no Attributes entry for \['hidden'\]"):
    _flags.define_config_flags(Config, flags.FlagValues())
