"""Preemption-safe exact resume, with real subprocesses and real signals.

SIGTERM: the trainer saves at the next step boundary and exits 0. SIGKILL: nothing runs at all; the restarted run
continues from the newest complete checkpoint. Either way the final parameters, optimizer state and step must be
bitwise identical to an uninterrupted run on the same topology.
"""

import os
import pathlib
import re
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from configs import sgz as sgz_config
from lowlight_jax.train import checkpoint as ckpt_lib
from lowlight_jax.train import trainer

REPO = pathlib.Path(__file__).resolve().parents[2]
STEPS = 12
ARGS = ["--config", f"configs/sgz.py:smoke,steps={STEPS}", "--config.loss_weights.semantic=0",
        "--config.log_every=1", "--config.eval.every=0"]


def _env():
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1")
  env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
  return env


def _train(workdir, *extra):
  return subprocess.run([sys.executable, "-m", "launch.train", *ARGS, "--workdir", str(workdir), *extra],
                        cwd=REPO, env=_env(), capture_output=True, text=True, timeout=600)


def _start(workdir, *extra):
  return subprocess.Popen([sys.executable, "-m", "launch.train", *ARGS, "--workdir", str(workdir), *extra],
                          cwd=REPO, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _wait_for_step(proc, step, timeout=300):
  """Reads the child's log until it reports `step` (the trainer logs every step here)."""
  deadline = time.time() + timeout
  lines = []
  for line in proc.stdout:
    lines.append(line)
    m = re.search(r"step (\d+)/", line)
    if m and int(m.group(1)) >= step:
      return lines
    if time.time() > deadline:
      break
  proc.kill()
  raise AssertionError("child never reached step %d:\n%s" % (step, "".join(lines[-30:])))


def _final_state(workdir):
  config = sgz_config.get_config(f"smoke,steps={STEPS}")
  config.loss_weights.semantic = 0.0
  state = trainer.restore_train_state(config, str(workdir))
  assert jax.tree.leaves(state.opt_state)
  return jax.device_get((state.step, state.params, state.opt_state, state.rng))


def _assert_bitwise_equal(a, b):
  leaves_a, leaves_b = jax.tree.leaves(a), jax.tree.leaves(b)
  assert len(leaves_a) == len(leaves_b)
  for x, y in zip(leaves_a, leaves_b):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("uninterrupted")
  result = _train(workdir, "--config.checkpoint_every=1000")
  assert result.returncode == 0, result.stderr[-3000:]
  return _final_state(workdir)


def test_sigterm_saves_and_exits_zero_then_resumes_bitwise(tmp_path, reference):
  workdir = tmp_path / "run"
  proc = _start(workdir, "--config.checkpoint_every=1000")  # No periodic save before the signal.
  _wait_for_step(proc, 3)
  proc.send_signal(signal.SIGTERM)
  rest = proc.communicate(timeout=300)[0]
  assert proc.returncode == 0, rest[-3000:]
  steps = ckpt_lib.Checkpointer(str(workdir)).all_steps()
  assert len(steps) == 1 and 3 <= steps[0] < STEPS, steps  # Saved at the step boundary after the signal.
  result = _train(workdir, "--config.checkpoint_every=1000")
  assert result.returncode == 0, result.stderr[-3000:]
  _assert_bitwise_equal(_final_state(workdir), reference)


def test_sigkill_restart_resumes_bitwise(tmp_path, reference):
  workdir = tmp_path / "run"
  proc = _start(workdir, "--config.checkpoint_every=2")
  _wait_for_step(proc, int(np.random.default_rng().integers(5, 9)))
  proc.kill()  # SIGKILL: no handler, no cleanup, possibly in the middle of an async checkpoint write.
  proc.communicate(timeout=60)
  checkpointer = ckpt_lib.Checkpointer(str(workdir))
  newest = checkpointer.latest_step()
  checkpointer.close()
  assert newest is not None and newest < STEPS
  result = _train(workdir, "--config.checkpoint_every=2")
  assert result.returncode == 0, result.stderr[-3000:]
  _assert_bitwise_equal(_final_state(workdir), reference)
