"""A run directory's resolved config (`<workdir>/config.json`), written by launch.train and read back by
launch.enhance, launch.evaluate and the analysis notebook."""

from __future__ import annotations

import json
import os

import ml_collections
from ml_collections import config_dict

from lowlight_jax.io import atomic_io

CONFIG_FILE = "config.json"


def save_run_config(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Stores the resolved config in the run dir (atomically; creates the dir)."""
  atomic_io.write_text_atomic(os.path.join(workdir, CONFIG_FILE), config.to_json_best_effort(indent=2))


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
  num_steps: a JAX trace into <workdir>/profile), xla_backend_optimization_level (-1: the backend's default; 0:
  no LLVM optimisation of the compiled step: the same buffer plan, slower code; `memory.step_memory(plan_only=True)`
  compiles the memory plans this way).
  """
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
  c.xla_backend_optimization_level = -1
  return c


def with_trainer_defaults(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Adds the trainer fields a config lacks (runs written before a field existed), with their defaults."""

  def fill(node, defaults):
    for key, value in defaults.items():
      if key not in node:
        node[key] = value
      elif isinstance(value, ml_collections.ConfigDict) and isinstance(node[key], ml_collections.ConfigDict):
        fill(node[key], value)

  fill(config, trainer_fields())
  return config


def load_run_config(workdir: str) -> ml_collections.ConfigDict:
  path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path} not found: is {workdir!r} a run directory written by launch.train?")
  with open(path) as f:
    raw = json.load(f)

  def fix(v):  # JSON lists back to tuples (configs use tuples for shapes and rules).
    if isinstance(v, dict):
      return {k: fix(x) for k, x in v.items()}
    if isinstance(v, list):
      return tuple(fix(x) for x in v)
    return v

  return with_trainer_defaults(ml_collections.ConfigDict(fix(raw)))
