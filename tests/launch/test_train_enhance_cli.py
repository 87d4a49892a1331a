"""The CLIs as a user runs them: launch.train (smoke config) then launch.enhance on a folder."""

import json
import os

import numpy as np
from PIL import Image


def test_train_then_enhance_folder(tmp_path, run_module):
  workdir = tmp_path / "run"
  train = run_module(["launch.train", "--config", "configs/sgz.py:smoke", "--workdir", str(workdir),
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
  # A video in the same folder: streamed through the run's enhance function into an MP4 of the same size/rate.
  from lowlight_jax.io import videoio
  videoio.write_video_atomic(inputs / "clip.mp4", [np.full((18, 26, 3), 8 * i, np.uint8) for i in range(7)],
                             fps=5, width=26, height=18)
  out = tmp_path / "out"
  enhance = run_module(["launch.enhance", "--workdir", str(workdir), "--input", str(inputs),
                        "--output", str(out), "--video-batch", "4"])
  # One input failed (its name is printed), the others were written: exit status 1.
  assert enhance.returncode == 1, enhance.stderr[-3000:]
  assert sorted(os.listdir(out)) == ["clip.mp4", "odd.png", "small.png"]
  assert np.asarray(Image.open(out / "odd.png")).shape == (37, 53, 3)
  assert np.asarray(Image.open(out / "small.png")).shape == (30, 25, 3)
  assert "broken.png" in enhance.stdout and "1 failed" in enhance.stdout
  with videoio.VideoReader(out / "clip.mp4") as reader:
    assert (reader.info.width, reader.info.height, reader.info.fps) == (26, 18, 5)
    assert len(list(reader.frames())) == 7


def test_bad_config_key_names_itself(tmp_path, run_module):
  result = run_module(["launch.train", "--config", "configs/sgz.py:smoke", "--workdir",
                       str(tmp_path / "w"), "--config.loss_weights.tvv=3"])
  assert result.returncode != 0
  assert "tvv" in result.stderr
