"""launch.enhance with the authors' original .pth files reproduces their outputs (within 1 LSB)."""

import shutil

import numpy as np
import pytest
from PIL import Image


@pytest.fixture
def enhance(run_module):
  def run(*args):
    result = run_module(["launch.enhance", *args])
    assert result.returncode == 0, result.stderr[-3000:]
    return result
  return run


def _load(path):
  return np.asarray(Image.open(path)).astype(np.int16)


def test_sgz_and_scl_lle_from_pth_match_authors(tmp_path, conformance_dir, enhance):
  inputs = tmp_path / "in"
  inputs.mkdir()
  shutil.copy(conformance_dir / "inputs/LIME/3.png", inputs / "3.png")
  for method, weights, expected in (("sgz", "sgz_Epoch99.pth", "sgz_s12"), ("scl_lle", "SCL-LLE.pth", "scl_lle")):
    out = tmp_path / method
    enhance("--method", method, "--weights", str(conformance_dir / "weights" / weights), "--input",
             str(inputs), "--output", str(out))
    got, want = _load(out / "3.png"), _load(conformance_dir / f"expected/{expected}/LIME/3.png")
    assert got.shape == want.shape  # SGZ: the authors' crop to multiples of 12, as in their test.py.
    diff = np.abs(got - want)
    assert diff.max() <= 1
    assert np.count_nonzero(diff) <= 1e-4 * diff.size


def test_keep_size_keeps_a_non_multiple_size(tmp_path, conformance_dir, enhance):
  src = conformance_dir / "inputs/LIME/6.png"  # 326x326: the authors' script would crop to 324x324.
  out = tmp_path / "out"
  enhance("--method", "sgz", "--weights", str(conformance_dir / "weights/sgz_Epoch99.pth"), "--input", str(src),
           "--output", str(out), "--keep-size")
  assert _load(out / "6.png").shape == _load(src).shape
