"""A run directory's resolved config (`<workdir>/config.json`), written by launch.train and read back by
launch.enhance, launch.evaluate and the analysis notebook."""

from __future__ import annotations

import json
import os

import ml_collections

CONFIG_FILE = "config.json"


def write_text_atomic(path: str, text: str) -> None:
  """Writes a file so that readers see the old or the new content, never a half-written one."""
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    f.write(text)
  os.replace(tmp, path)


def write_json_atomic(path: str, obj) -> None:
  write_text_atomic(path, json.dumps(obj, indent=2))


def save_run_config(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Stores the resolved config in the run dir (atomically)."""
  os.makedirs(workdir, exist_ok=True)
  write_text_atomic(os.path.join(workdir, CONFIG_FILE), config.to_json_best_effort(indent=2))


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
