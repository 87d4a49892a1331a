"""launch.evaluate --task segmentation on a tiny SCL-LLE run (paper Table 4 protocol)."""

import json
import os
import pathlib
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parents[2]


def _run(args):
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", JAX_PLATFORMS="cpu", XLA_FLAGS="")
  return subprocess.run([sys.executable, "-m", *args], cwd=REPO, env=env, capture_output=True, text=True,
                        timeout=900)


def test_segmentation_task_reports_miou_per_gamma(tmp_path):
  workdir = tmp_path / "run"
  train = _run(["launch.train", "--config", "configs/scl_lle.py:smoke", "--workdir", str(workdir),
                "--config.eval.every=0"])
  assert train.returncode == 0, train.stderr[-3000:]
  out = tmp_path / "seg.json"
  result = _run(["launch.evaluate", "--task", "segmentation", "--workdir", str(workdir), "--out", str(out),
                 "--gammas", "1,6", "--limit", "1"])
  assert result.returncode == 0, result.stderr[-3000:]
  report = json.loads(out.read_text())
  assert report["num_images"] == 1
  assert set(k for k in report if k.startswith("gamma_")) == {"gamma_1", "gamma_6"}
  for value in (report["gamma_1"], report["gamma_6"]):
    assert 0.0 <= value["input"] <= 1.0 and 0.0 <= value["enhanced"] <= 1.0
  assert "gamma_6: mIoU input" in result.stdout


def test_segmentation_task_needs_a_run(tmp_path):
  result = _run(["launch.evaluate", "--task", "segmentation", "--out", str(tmp_path / "x.json")])
  assert result.returncode != 0
  assert "--workdir" in result.stderr
