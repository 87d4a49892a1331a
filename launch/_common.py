"""Shared set-up for the launch scripts: quiet logs, and config loading from a run directory."""

from __future__ import annotations

import json
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # clu's writer imports TensorFlow.

import logging  # noqa: E402

import ml_collections  # noqa: E402


def setup_logging() -> None:
  """Our own INFO lines (lowlight_jax, data_pipelines); libraries (Orbax, grain, jax) at WARNING."""
  from absl import logging as absl_logging
  absl_logging.set_verbosity(absl_logging.WARNING)
  for name in ("lowlight_jax", "data_pipelines", "launch"):
    logging.getLogger(name).setLevel(logging.INFO)

CONFIG_FILE = "config.json"


def save_run_config(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Stores the resolved config in the run dir (atomically) so `launch.enhance --workdir` can rebuild the run."""
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, CONFIG_FILE)
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    f.write(config.to_json_best_effort(indent=2))
  os.replace(tmp, path)


def load_run_config(workdir: str) -> ml_collections.ConfigDict:
  path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path} not found: is {workdir!r} a run directory written by launch.train?")
  with open(path) as f:
    raw = json.load(f)
  return _from_json(raw)


def _from_json(raw: dict) -> ml_collections.ConfigDict:
  """JSON -> ConfigDict, turning lists back into tuples (configs use tuples for shapes and rules)."""
  def fix(v):
    if isinstance(v, dict):
      return {k: fix(x) for k, x in v.items()}
    if isinstance(v, list):
      return tuple(fix(x) for x in v)
    return v
  return ml_collections.ConfigDict(fix(raw))
