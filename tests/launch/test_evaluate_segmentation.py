"""launch.evaluate --task segmentation on a tiny SCL-LLE run (paper Table 4 protocol)."""

import json
import math

from tensorboard.backend.event_processing import event_accumulator
from tensorboard.util import tensor_util

from lowlight_jax.methods import scl_lle


def test_segmentation_task_reports_miou_per_gamma(tmp_path, run_module):
  workdir = tmp_path / "run"
  train = run_module(["launch.train", "--config", "configs/scl_lle.py:smoke", "--workdir",
                      str(workdir), "--config.eval.every=0"], timeout=900)
  assert train.returncode == 0, train.stderr[-3000:]
  # Every loss term is its own TensorBoard scalar (CLU writes tensor summaries), finite at every
  # logged step.
  events = event_accumulator.EventAccumulator(str(workdir))
  events.Reload()
  for term in scl_lle.TERMS:
    values = [float(tensor_util.make_ndarray(e.tensor_proto))
              for e in events.Tensors(f"train/enhancer/loss_{term}")]
    assert values and all(math.isfinite(v) for v in values), term
  out = tmp_path / "seg.json"
  result = run_module(["launch.evaluate", "--task", "segmentation", "--workdir", str(workdir),
                       "--out", str(out), "--gammas", "1,6", "--limit", "1"], timeout=900)
  assert result.returncode == 0, result.stderr[-3000:]
  report = json.loads(out.read_text())
  assert report["num_images"] == 1
  assert set(k for k in report if k.startswith("gamma_")) == {"gamma_1", "gamma_6"}
  for value in (report["gamma_1"], report["gamma_6"]):
    assert 0.0 <= value["input"] <= 1.0 and 0.0 <= value["enhanced"] <= 1.0
  assert "gamma_6: mIoU input" in result.stdout


def test_segmentation_task_needs_a_run(tmp_path, run_module):
  result = run_module(["launch.evaluate", "--task", "segmentation", "--out",
                       str(tmp_path / "x.json")], timeout=900)
  assert result.returncode != 0
  assert "--workdir" in result.stderr
