"""Two processes x 4 CPU devices (jax.distributed over 127.0.0.1) == one process x 8 devices."""

import json
import os
import pathlib
import socket
import subprocess
import sys

import numpy as np

from lowlight_jax.train import checkpoint as ckpt_lib

REPO = pathlib.Path(__file__).resolve().parents[2]
STEPS = 4
ARGS = ["-m", "launch.train", "--config", f"configs/sgz.py:smoke,steps={STEPS}", "--config.loss_weights.semantic=0",
        "--config.log_every=1", "--config.eval.every=0", "--config.checkpoint_every=2"]


def _env(devices):
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", JAX_PLATFORMS="cpu")
  env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
  return env


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _losses(workdir):
  rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  return np.array([r["train/enhancer/loss"] for r in rows])


def test_two_processes_match_one_process(tmp_path):
  single = tmp_path / "single"
  result = subprocess.run([sys.executable, *ARGS, "--workdir", str(single)], cwd=REPO, env=_env(8),
                          capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]

  multi = tmp_path / "multi"
  port = _free_port()
  procs = [subprocess.Popen([sys.executable, *ARGS, "--workdir", str(multi),
                             f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2",
                             f"--process_id={i}", "--initialization_timeout=120"],
                            cwd=REPO, env=_env(4), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
           for i in range(2)]
  outputs = []
  for proc in procs:
    try:
      outputs.append(proc.communicate(timeout=600)[0])
    except subprocess.TimeoutExpired:
      for p in procs:
        p.kill()
      raise
  for proc, out in zip(procs, outputs):
    assert proc.returncode == 0, out[-3000:]

  a, b = _losses(single), _losses(multi)
  assert len(a) == len(b) == STEPS
  np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6)
  # One coherent checkpoint, written jointly, restorable by a single process.
  checkpointer = ckpt_lib.Checkpointer(str(multi))
  assert checkpointer.all_steps() == [2, 4]
  checkpointer.close()
