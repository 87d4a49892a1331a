"""launch.data_check: one JSON object describing the configured training pipeline."""

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
from PIL import Image

from configs import sgz
from launch import data_check

REPO = pathlib.Path(__file__).resolve().parents[2]


def test_cli_prints_one_json_object_for_the_smoke_config():
  proc = subprocess.run(
      [sys.executable, "-m", "launch.data_check", "--config", "configs/sgz.py:smoke",
       "--config.batch_size=4", "--num_batches", "3"],
      cwd=REPO, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  lines = proc.stdout.strip().splitlines()
  assert len(lines) == 1
  report = json.loads(lines[0])
  assert report["source"] == "embedded"
  assert (report["batches"], report["batch_size"], report["elements"]) == (3, 4, 12)
  assert report["elements_per_s"] > 0 and report["first_batch_s"] <= report["seconds"]
  spec = report["elements_spec"]
  assert set(spec) == {"low", "high"}
  for key in ("low", "high"):
    assert spec[key]["shape"] == [32, 32, 3] and spec[key]["dtype"] == "float32"
    assert 0.0 <= spec[key]["min"] < spec[key]["mean"] < spec[key]["max"] <= 1.0
  # The synthetic low-light input is darker than its target.
  assert spec["low"]["mean"] < spec["high"]["mean"]
  assert report["skipped"] == [] and report["num_skipped"] == 0


def test_skipped_files_are_listed_with_reasons(tmp_path):
  rng = np.random.default_rng(0)
  for k in range(5):
    Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(tmp_path / f"{k}.png")
  (tmp_path / "empty.png").write_bytes(b"")
  (tmp_path / "page.jpg").write_bytes(b"<html></html>" * 10)
  config = sgz.get_config("smoke")
  config.batch_size = 2
  config.data.source = "unpaired_folder"
  config.data.root = os.fspath(tmp_path)
  config.data.low_dir = ""
  report = data_check.check(config, num_batches=4)
  assert report["elements"] == 8 and set(report["elements_spec"]) == {"low"}
  assert report["elements_spec"]["low"]["shape"] == [32, 32, 3]
  reasons = {pathlib.Path(s["path"]).name: s["reason"] for s in report["skipped"]}
  assert reasons == {"empty.png": "empty file (0 bytes)",
                     "page.jpg": "not a recognised image format"}
  assert report["num_skipped"] == 2
