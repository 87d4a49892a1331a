"""Helpers shared by config files (after big_vision's configs/common.py)."""

from __future__ import annotations

import ml_collections

# The trainer owns the defaults of its fields; every method config starts from them.
from lowlight_jax.train.run_config import trainer_fields  # noqa: F401


def parse_arg(arg: str | None, **defaults) -> ml_collections.ConfigDict:
  """Parses 'smoke,variant=small' into {'smoke': True, 'variant': 'small', ...defaults}.

  A bare word sets a boolean flag; `key=value` sets a string/int/float (typed after the default's type). Unknown
  keys are an error naming the key and the known ones.
  """
  out = ml_collections.ConfigDict(defaults)
  if not arg:
    return out
  for part in arg.split(","):
    part = part.strip()
    if not part:
      continue
    key, _, value = part.partition("=")
    if key not in defaults:
      raise ValueError(f"unknown config arg {key!r}; known: {sorted(defaults)}")
    if not _:
      out[key] = True
      continue
    kind = type(defaults[key])
    if kind is bool:
      out[key] = value.lower() in ("1", "true", "yes", "y")
    else:
      out[key] = kind(value) if defaults[key] is not None else value
  return out

