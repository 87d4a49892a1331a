r"""Trains a method from a config file.

  python -m launch.train --config configs/sgz.py[:ARG] --workdir DIR [--config.FIELD=VALUE ...]

Resumes automatically from the newest checkpoint in DIR.
"""

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from launch import _common
from lowlight_jax.train import trainer

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (configs/<method>.py[:arg]).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (checkpoints, TensorBoard events, samples).")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  logging.set_verbosity(logging.INFO)
  _common.save_run_config(_CONFIG.value, _WORKDIR.value)
  final = trainer.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  if final:
    print("final evaluation:", " ".join(f"{k}={v:.4f}" for k, v in final.items()))


def run():
  app.run(main)


if __name__ == "__main__":
  run()
