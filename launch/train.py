r"""Trains a method from a config file.

  lowlight train --config sgz[:ARG] --workdir DIR [--config.FIELD=VALUE ...]
  python -m launch.train --config configs/sgz.py[:ARG] --workdir DIR [--config.FIELD=VALUE ...]

`--config` is a packaged config name (`sgz:smoke`) or a file path (`configs/sgz.py:smoke`). A wrong config, an
unknown `--config.FIELD` or a `--workdir` that is a file is one error line (exit 2; `--verbose` for the traceback).

Resumes automatically from the newest checkpoint in DIR. SIGTERM saves at the next step boundary and exits 0.

Multi-host: pass `--distributed` to call `jax.distributed.initialize()` with the cloud launcher's environment
(TPU pods, SLURM, Open MPI are auto-detected), or give `--coordinator_address HOST:PORT --num_processes N
--process_id I` explicitly (the environment variables JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and
JAX_PROCESS_ID are read when the flags are absent). Every process runs the same command.
"""

import os


from absl import app
from absl import flags

from launch import _common
from launch import _config

_CONFIG = _config.DEFINE_config_file("config", None, "Config: a packaged name or a file, with an optional :ARG "
                                     "(sgz:smoke, configs/sgz.py:smoke).", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (checkpoints, TensorBoard events, samples).")
_DISTRIBUTED = flags.DEFINE_bool("distributed", False, "Initialise jax.distributed from the environment.")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "HOST:PORT of process 0 (multi-host).")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Number of processes (multi-host).")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index (multi-host).")
_INIT_TIMEOUT = flags.DEFINE_integer("initialization_timeout", 300, "Seconds to wait for all processes.")
flags.mark_flags_as_required(["config", "workdir"])


def maybe_initialize_distributed() -> None:
  """Starts JAX's distributed runtime when asked by flags or the standard environment variables."""
  import jax

  address = _COORDINATOR.value or os.environ.get("JAX_COORDINATOR_ADDRESS")
  if address:
    num = _NUM_PROCESSES.value if _NUM_PROCESSES.value is not None else int(os.environ["JAX_NUM_PROCESSES"])
    pid = _PROCESS_ID.value if _PROCESS_ID.value is not None else int(os.environ["JAX_PROCESS_ID"])
    jax.distributed.initialize(coordinator_address=address, num_processes=num, process_id=pid,
                               initialization_timeout=_INIT_TIMEOUT.value)
  elif _DISTRIBUTED.value:
    jax.distributed.initialize(initialization_timeout=_INIT_TIMEOUT.value)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  _common.check_workdir(_WORKDIR.value)
  _common.setup_logging()
  maybe_initialize_distributed()
  from lowlight_jax.train import trainer  # Imports TensorFlow (clu): after the command line is known to be good.
  # The trainer checks a resumed run against this config before it writes config.json (process 0).
  final = trainer.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  if final:
    print("final evaluation:", " ".join(f"{k}={v:.4f}" for k, v in final.items()))


def run():
  _common.run(main)


if __name__ == "__main__":
  run()
