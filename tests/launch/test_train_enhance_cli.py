"""The CLIs as a user runs them: launch.train (smoke config) then launch.enhance on a folder."""

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
from PIL import Image

REPO = pathlib.Path(__file__).resolve().parents[2]


def _run(args, **kw):
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", JAX_PLATFORMS="cpu")
  # Subprocesses get one CPU device each: the CLI must not depend on the fake-device count.
  env["XLA_FLAGS"] = ""
  return subprocess.run([sys.executable, "-m"] + args, cwd=REPO, env=env, capture_output=True, text=True,
                        timeout=600, **kw)


def test_train_then_enhance_folder(tmp_path):
  workdir = tmp_path / "run"
  train = _run(["launch.train", "--config", "configs/sgz.py:smoke", "--workdir", str(workdir),
                "--config.profile.start_step=1", "--config.profile.num_steps=2"])
  assert train.returncode == 0, train.stderr[-3000:]
  # The run directory: an Orbax checkpoint per saved step, TensorBoard events, config and final metrics.
  assert sorted(os.listdir(workdir / "checkpoints")) == ["2", "4"]
  assert any(f.startswith("events.out.tfevents") for f in os.listdir(workdir))
  final = json.loads((workdir / "final_metrics.json").read_text())
  assert final["step"] == 4
  assert np.isfinite(final["train/enhancer/loss_semantic"])
  # The profiler window wrote a trace.
  traces = [f for _, _, files in os.walk(workdir / "profile") for f in files]
  assert any(f.endswith(".xplane.pb") for f in traces), traces

  inputs = tmp_path / "in"
  inputs.mkdir()
  rng = np.random.default_rng(0)
  # Odd sizes that the inference scale factor (12) does not divide: outputs must keep them exactly.
  Image.fromarray(rng.integers(0, 60, (37, 53, 3), dtype=np.uint8)).save(inputs / "odd.png")
  Image.fromarray(rng.integers(0, 60, (30, 25, 3), dtype=np.uint8)).save(inputs / "small.jpg")
  (inputs / "broken.png").write_bytes(b"this is not a png")
  out = tmp_path / "out"
  enhance = _run(["launch.enhance", "--workdir", str(workdir), "--input", str(inputs), "--output", str(out)])
  assert enhance.returncode == 0, enhance.stderr[-3000:]
  assert sorted(os.listdir(out)) == ["odd.png", "small.png"]
  assert np.asarray(Image.open(out / "odd.png")).shape == (37, 53, 3)
  assert np.asarray(Image.open(out / "small.png")).shape == (30, 25, 3)
  assert "broken.png" in enhance.stdout and "1 failed" in enhance.stdout


def test_bad_config_key_names_itself(tmp_path):
  result = _run(["launch.train", "--config", "configs/sgz.py:smoke", "--workdir", str(tmp_path / "w"),
                 "--config.loss_weights.tvv=3"])
  assert result.returncode != 0
  assert "tvv" in result.stderr
