"""Helpers shared by config files (after big_vision's configs/common.py)."""

from __future__ import annotations

import ml_collections


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


def trainer_fields(c: ml_collections.ConfigDict | None = None) -> ml_collections.ConfigDict:
  """The shared skeleton of trainer fields every method config starts from (read directly by the trainer).

  Run: seed, total_steps, batch_size (global; divides by the mesh's batch shards), log_every, checkpoint_every,
  keep_checkpoints, progress_bar (a tqdm bar with ETA on process 0 beside the log lines), eval (every,
  num_images, max_images).
  Scale: mesh ({axis: size}, one -1), sharding (rules: [(regex, spec)], fsdp_axis, fsdp_min_size: tensors of at
  least this many elements are split along their largest divisible dimension over `fsdp_axis`), compute_dtype,
  frozen_dtype (storage dtype of frozen towers), remat ('none' | 'full' | 'dots' | 'dots_no_batch'; see
  lowlight_jax/models/policy.py), weights_cache (folder of converted weight files, keyed by the source files'
  checksums; default $LOWLIGHT_CACHE/converted or ~/.cache/lowlight_jax/converted), profile (start_step,
  num_steps: a JAX trace into <workdir>/profile).
  """
  from ml_collections import config_dict

  c = ml_collections.ConfigDict() if c is None else c
  c.seed = 0
  c.total_steps = 1000
  c.batch_size = 8
  c.log_every = 50
  c.checkpoint_every = 1000
  c.keep_checkpoints = 3
  c.progress_bar = True
  c.eval = ml_collections.ConfigDict(dict(every=1000, num_images=0, max_images=3))
  c.mesh = ml_collections.ConfigDict(dict(data=-1))
  c.sharding = ml_collections.ConfigDict(dict(rules=(), fsdp_axis="fsdp", fsdp_min_size=2**20))
  c.compute_dtype = "float32"
  c.frozen_dtype = "float32"
  c.remat = "none"
  c.weights_cache = config_dict.placeholder(str)
  c.profile = ml_collections.ConfigDict(dict(start_step=0, num_steps=0))
  return c
