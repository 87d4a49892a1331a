"""Shared set-up for the launch scripts: quiet logs, and config loading from a run directory."""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # clu's writer imports TensorFlow.

import logging  # noqa: E402


def setup_logging() -> None:
  """Our own INFO lines (lowlight_jax, data_pipelines); libraries (Orbax, grain, jax) at WARNING."""
  from absl import logging as absl_logging
  absl_logging.set_verbosity(absl_logging.WARNING)
  for name in ("lowlight_jax", "data_pipelines", "launch"):
    logging.getLogger(name).setLevel(logging.INFO)

# The run-config helpers live in the library (the analysis notebook needs them too).
from lowlight_jax.train.run_config import CONFIG_FILE, load_run_config, save_run_config  # noqa: E402,F401
