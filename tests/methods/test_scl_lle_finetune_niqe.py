"""SCL-LLE from the released weights: a few hundred steps on the embedded default keep NIQE.

The run a user would make (`launch.train configs/scl_lle.py:finetune --config.init_from=SCL-LLE.pth`,
300 steps of the paper's optimiser on the embedded stand-in data, random frozen VGG), then
`launch.enhance` on the conformance DICM + LIME low-light images (the paper's NIQE test sets), scored
against the released model's outputs of the same images.

Measured on the 2-core CPU machine (NIQE, mean of the 17 images): inputs 4.502, released model
3.746, fine-tuned 3.762 / 3.764 (seeds 0 / 1; 3.781 with feature retention on). The stand-in
settings matter: with the earlier noise-free gamma darkening and colour-cast photos the same run
gave 4.03 (+7.7%, red curve suppressed), which this test rejects. The bound allows 3% because the
model does move: the stand-in is not the paper's Cityscapes/SICE data and the frozen VGG is random.
In an earlier stand-in run the kernels moved by 15-30% of their norm in 300 steps, while a random
perturbation of the same size per layer changed NIQE by < 0.02; the test guards against losses
that pull the model somewhere worse, not against any movement at all.
"""

import shutil

import numpy as np
from PIL import Image

from lowlight_jax.metrics import assets
from lowlight_jax.metrics import niqe as niqe_lib

SETS = ("DICM", "LIME")
TOLERANCE = 1.03


def _read(path):
  return np.asarray(Image.open(path).convert("RGB"), np.float32) / 255.0


def _mean_niqe(paths):
  return float(np.mean([niqe_lib.niqe(_read(p)) for p in paths]))


def test_finetuning_released_weights_on_embedded_default_keeps_niqe(tmp_path, conformance_dir,
                                                                    run_module):
  assets.fetch()  # NIQE's pristine model (cached after the first fetch).
  weights = conformance_dir / "weights" / "SCL-LLE.pth"
  inputs = tmp_path / "in"
  inputs.mkdir()
  for s in SETS:
    for f in sorted((conformance_dir / "inputs" / s).glob("*.png")):
      shutil.copy(f, inputs / f"{s}_{f.name}")
  assert len(list(inputs.glob("*.png"))) == 17

  # The released model's outputs: the baseline (the authors' PNGs exist for 6 of the 17 images;
  # ours match them within 1 LSB, checked here as in tests/test_conformance.py).
  released_dir = tmp_path / "released"
  run = run_module(["launch.enhance", "--method", "scl_lle", "--weights", str(weights), "--input",
                    str(inputs), "--output", str(released_dir)], timeout=1200)
  assert run.returncode == 0, run.stderr[-3000:]
  authors = sorted((conformance_dir / "expected" / "scl_lle" / s / f.name)
                   for s in SETS for f in (conformance_dir / "inputs" / s).glob("*.png"))
  authors = [p for p in authors if p.is_file()]
  assert len(authors) >= 6
  for p in authors:
    ours = np.asarray(Image.open(released_dir / f"{p.parent.name}_{p.name}"), np.int16)
    assert np.abs(ours - np.asarray(Image.open(p), np.int16)).max() <= 1, p

  workdir = tmp_path / "run"
  train = run_module(["launch.train", "--config", "configs/scl_lle.py:finetune", "--workdir",
                      str(workdir), f"--config.init_from={weights}", "--config.eval.every=0",
                      "--config.checkpoint_every=300"], timeout=1200)
  assert train.returncode == 0, train.stderr[-3000:]
  out = tmp_path / "out"
  run = run_module(["launch.enhance", "--workdir", str(workdir), "--input", str(inputs),
                    "--output", str(out)], timeout=1200)
  assert run.returncode == 0, run.stderr[-3000:]
  tuned = sorted(out.glob("*.png"))
  released = sorted(released_dir.glob("*.png"))
  assert [p.name for p in tuned] == [p.name for p in released] and len(tuned) == 17

  # Training moved the model (not a no-op or an ignored checkpoint)...
  change = np.mean([np.abs(_read(a) - _read(b)).mean() for a, b in zip(tuned, released)])
  assert change > 2 / 255, change
  # ...and NIQE stays within the bound of the released model's, still well below the inputs'.
  niqe_released, niqe_tuned = _mean_niqe(released), _mean_niqe(tuned)
  niqe_inputs = _mean_niqe(sorted(inputs.glob("*.png")))
  print(f"NIQE inputs {niqe_inputs:.4f} released {niqe_released:.4f} fine-tuned {niqe_tuned:.4f} "
        f"mean |change| {change * 255:.2f}/255")
  assert niqe_tuned <= TOLERANCE * niqe_released, (niqe_tuned, niqe_released)
  assert niqe_tuned < niqe_inputs - 0.5, (niqe_tuned, niqe_inputs)
