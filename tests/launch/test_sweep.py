"""launch.sweep: dry-run commands and a real 3-variant smoke sweep with its results table."""

import csv
import os


def test_dry_run_prints_one_command_per_variant(tmp_path, run_module):
  result = run_module(
      ["launch.sweep", "--config", "configs/sgz.py", "--sweep",
       "configs/sweeps/sgz_loss_ablation.py", "--workdir-root", str(tmp_path), "--dry-run", "--multihost"],
      timeout=120)
  assert result.returncode == 0, result.stderr[-2000:]
  lines = [l for l in result.stdout.splitlines() if l.strip()]
  assert len(lines) == 6  # Full loss + without each of the 5 terms (paper Table 2).
  assert all("-m launch.train" in l and "--distributed" in l for l in lines)
  assert sum("--config.loss_weights.semantic=0.0" in l for l in lines) == 1
  assert not os.listdir(tmp_path)  # Nothing ran.


def test_three_variant_smoke_sweep_collects_results(tmp_path, run_module):
  sweep = tmp_path / "sweep.py"
  sweep.write_text(
      "from lowlight_jax.train import sweeps\n\n"
      "def get_sweep(arg=None):\n"
      "  return sweeps.axis('optim.enhancer.lr', [1e-4, 1e-3, 1e-2])\n")
  root = tmp_path / "runs"
  result = run_module(
      ["launch.sweep", "--config", "configs/sgz.py:smoke", "--sweep", str(sweep),
       "--workdir-root", str(root), "--parallel", "2", "--set", "loss_weights.semantic=0"],
      timeout=900)
  assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
  with open(root / "results.csv") as f:
    rows = list(csv.DictReader(f))
  assert [r["optim.enhancer.lr"] for r in rows] == ["0.0001", "0.001", "0.01"]
  assert all(r["exit"] == "0" and r["step"] == "4" for r in rows)
  assert all(float(r["train/enhancer/loss"]) > 0 for r in rows)
  assert "| run |" in (root / "results.md").read_text()


def test_skf_ablation_dry_run_is_the_eight_on_off_variants(tmp_path, run_module):
  result = run_module(["launch.sweep", "--config", "skf_drbn", "--sweep", "skf_ablation", "--workdir-root",
                       str(tmp_path), "--dry-run"], timeout=120)
  assert result.returncode == 0, result.stderr[-2000:]
  lines = [l for l in result.stdout.splitlines() if l.strip()]
  assert len(lines) == 8 and all("-m launch.train" in l for l in lines)
  off = [tuple(flag in l for flag in ("--config.model.skf=False", "--config.loss_weights.sch=0.0",
                                      "--config.loss_weights.adversarial=0.0")) for l in lines]
  assert len(set(off)) == 8  # Every on/off combination once.
  assert off[0] == (True, True, True) and off[-1] == (False, False, False)  # Baseline first, full SKF last.
  assert not os.listdir(tmp_path)
