"""A run directory's resolved config (`<workdir>/config.json`), written by launch.train and read back by
launch.enhance, launch.evaluate and the analysis notebook."""

from __future__ import annotations

import json
import os

import ml_collections

from lowlight_jax.io import atomic_io

CONFIG_FILE = "config.json"


def save_run_config(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Stores the resolved config in the run dir (atomically; creates the dir)."""
  atomic_io.write_text_atomic(os.path.join(workdir, CONFIG_FILE), config.to_json_best_effort(indent=2))


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

  return ml_collections.ConfigDict(fix(raw))
