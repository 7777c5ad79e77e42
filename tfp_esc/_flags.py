"""Command-line flags generated from a config dataclass: one place per setting.

Every field of a config (e.g. `experiment.PatchesConfig`) becomes an absl
flag of the same name: its type from the annotation (`int | None` is an
optional integer), its default from the dataclass, its help text from the
class docstring's `Attributes:` entry, and, for fields whose metadata lists
`choices` (the library's own lists, e.g. `tfp_esc.inference.em.ENGINES`),
an enum flag. The scripts then build the config with `config_from_flags`
and the config validates itself, so the command line, the library and the
docs cannot drift apart.

  define_config_flags(experiment.PatchesConfig)
  ...
  config = config_from_flags(experiment.PatchesConfig)
"""

import dataclasses
import inspect
import re
import typing

from absl import flags

__all__ = ['config_from_flags', 'define_config_flags', 'field_help']


def field_help(config_class):
  """The `Attributes:` entries of a dataclass's docstring, by field name.

  Args:
    config_class: a dataclass documented in Google style.

  Returns:
    dict of field name -> its description on one line.

  Raises:
    ValueError: a field has no entry (every flag must have help).
  """
  lines = (inspect.getdoc(config_class) or '').splitlines()
  helps, name = {}, None
  inside = False
  for line in lines:
    if line.strip() == 'Attributes:':
      inside = True
      continue
    if not inside:
      continue
    if line and not line.startswith(' '):
      break  # The next section.
    entry = re.match(r'^  (\w+): ?(.*)$', line)
    if entry:
      name = entry.group(1)
      helps[name] = entry.group(2).strip()
    elif name and line.strip():
      helps[name] += ' ' + line.strip()
  missing = [f.name for f in dataclasses.fields(config_class)
             if f.name not in helps]
  if missing:
    raise ValueError(f'{config_class.__name__} documents no Attributes entry '
                     f'for {missing}.')
  return helps


def _base_type(annotation):
  """(type, optional): `int | None` -> (int, True); `int` -> (int, False)."""
  kinds = typing.get_args(annotation) or (annotation,)
  named = [k for k in kinds if k is not type(None)]
  if len(named) != 1:
    raise TypeError(f'cannot make a flag of type {annotation}.')
  return named[0], len(named) < len(kinds)


def define_config_flags(config_class, flag_values=flags.FLAGS):
  """Defines one absl flag per field of `config_class`.

  Args:
    config_class: a dataclass whose fields are bool, int, float or str (each
      possibly `| None`), documented under `Attributes:`; a field's
      `metadata['choices']` makes it an enum flag.
    flag_values: where to define them.
  """
  helps = field_help(config_class)
  hints = typing.get_type_hints(config_class)
  defaults = config_class()
  for f in dataclasses.fields(config_class):
    kind, _ = _base_type(hints[f.name])
    default = getattr(defaults, f.name)
    help_text = helps[f.name]
    choices = f.metadata.get('choices')
    if choices:
      flags.DEFINE_enum(f.name, default, list(choices), help_text,
                        flag_values=flag_values)
    elif kind is bool:
      flags.DEFINE_bool(f.name, default, help_text, flag_values=flag_values)
    elif kind is int:
      flags.DEFINE_integer(f.name, default, help_text,
                           flag_values=flag_values)
    elif kind is float:
      flags.DEFINE_float(f.name, default, help_text, flag_values=flag_values)
    elif kind is str:
      flags.DEFINE_string(f.name, default, help_text, flag_values=flag_values)
    else:
      raise TypeError(f'{config_class.__name__}.{f.name}: cannot make a flag '
                      f'of type {kind}.')


def config_from_flags(config_class, flag_values=flags.FLAGS):
  """The config the parsed flags describe, validated.

  Raises:
    ValueError: a field's value breaks its rules (the config's `validate`,
      which names the field, i.e. the flag).
  """
  config = config_class(**{f.name: flag_values[f.name].value
                           for f in dataclasses.fields(config_class)})
  if hasattr(config, 'validate'):
    config.validate()
  return config
