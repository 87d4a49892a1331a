"""launch.enhance never loses data: unsafe outputs are refused before any model is loaded; bad inputs fail alone."""

import os

import numpy as np
from PIL import Image
import pytest


@pytest.fixture
def weights(conformance_dir):
  return str(conformance_dir / "weights" / "sgz_Epoch99.pth")


@pytest.fixture
def not_weights(tmp_path):
  """A weights file that would fail to load: a refusal that names the output proves the checks ran first."""
  path = tmp_path / "garbage.pth"
  path.write_bytes(b"not a checkpoint")
  return str(path)


def _photos(folder, names=("a.png", "b.jpg"), size=(24, 36)):
  folder.mkdir(parents=True, exist_ok=True)
  rng = np.random.default_rng(0)
  for name in names:
    Image.fromarray(rng.integers(0, 70, size + (3,), dtype=np.uint8)).save(folder / name)
  return {name: (folder / name).read_bytes() for name in names}


def _refused(result, *words):
  assert result.returncode == 2, (result.stdout, result.stderr[-2000:])
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
  for word in words:
    assert word in lines[0], lines[0]
  assert "garbage.pth" not in lines[0]


def test_output_equal_to_input_is_refused_and_inputs_intact(tmp_path, run_module, not_weights):
  src = tmp_path / "in"
  before = _photos(src)
  result = run_module(["launch.enhance", "--method", "sgz", "--weights", not_weights, "--input", str(src),
                       "--output", str(src), "--overwrite"])
  _refused(result, "--output", "is --input")
  assert {p: (src / p).read_bytes() for p in before} == before and sorted(os.listdir(src)) == sorted(before)
  # A single file whose output (same stem, .png) would be the file itself.
  result = run_module(["launch.enhance", "--method", "sgz", "--weights", not_weights, "--input",
                       str(src / "a.png"), "--output", str(src), "--overwrite"])
  _refused(result, "a.png", "which is the input")
  assert (src / "a.png").read_bytes() == before["a.png"]


def test_workdir_mode_checks_outputs_before_the_run_is_read(tmp_path, run_module):
  src, workdir = tmp_path / "in", tmp_path / "not_a_run"
  before = _photos(src)
  workdir.mkdir()  # No config, no checkpoint: reading the run would fail with another message.
  result = run_module(["launch.enhance", "--workdir", str(workdir), "--input", str(src), "--output", str(src)])
  _refused(result, "--output", "is --input")
  assert {p: (src / p).read_bytes() for p in before} == before


def test_output_inside_input_and_output_file_are_refused(tmp_path, run_module, not_weights):
  src = tmp_path / "in"
  _photos(src)
  result = run_module(["launch.enhance", "--method", "sgz", "--weights", not_weights, "--input", str(src),
                       "--output", str(src / "enhanced")])
  _refused(result, "inside --input")
  assert not (src / "enhanced").exists()
  result = run_module(["launch.enhance", "--method", "sgz", "--weights", not_weights, "--input", str(src),
                       "--output", str(src / "a.png")])
  _refused(result, "a.png", "existing file")


def test_same_output_name_is_refused_naming_both(tmp_path, run_module, not_weights):
  src = tmp_path / "in"
  _photos(src, ("x.png", "x.jpg", "y.png"))
  result = run_module(["launch.enhance", "--method", "sgz", "--weights", not_weights, "--input", str(src),
                       "--output", str(tmp_path / "out")])
  _refused(result, "x.jpg and x.png", "x.png")
  assert not (tmp_path / "out").exists()


def test_non_empty_output_overwrite_and_skip_existing(tmp_path, run_module, weights):
  src, out = tmp_path / "in", tmp_path / "out"
  _photos(src)
  out.mkdir()
  (out / "a.png").write_bytes(b"old a")
  (out / "notes.txt").write_text("mine")
  args = ["launch.enhance", "--method", "sgz", "--weights", weights, "--input", str(src), "--output", str(out),
          "--noprogress"]
  _refused(run_module(args), "not empty", "--overwrite", "--skip-existing")
  assert (out / "a.png").read_bytes() == b"old a" and sorted(os.listdir(out)) == ["a.png", "notes.txt"]

  result = run_module(args + ["--skip-existing"])
  assert result.returncode == 0, result.stderr[-2000:]
  assert (out / "a.png").read_bytes() == b"old a"  # Kept: its output existed.
  assert np.asarray(Image.open(out / "b.png")).shape == (24, 36, 3)
  assert "skipped (output exists)" in result.stdout and "a.png" in result.stdout

  result = run_module(args + ["--overwrite"])
  assert result.returncode == 0, result.stderr[-2000:]
  assert np.asarray(Image.open(out / "a.png")).shape == (24, 36, 3)  # Replaced by its enhancement.
  assert (out / "notes.txt").read_text() == "mine"  # Other files are never touched.
  assert sorted(os.listdir(out)) == ["a.png", "b.png", "notes.txt"]  # No temporary files left.


def test_tiny_and_broken_images_fail_by_name_the_rest_is_written(tmp_path, run_module, weights):
  src, out = tmp_path / "in", tmp_path / "out"
  _photos(src, ("a.png", "c.png"))
  Image.fromarray(np.zeros((1, 1, 3), np.uint8)).save(src / "b_tiny.png")  # Below SGZ's 12-px crop.
  (src / "broken.jpg").write_bytes(b"\xff\xd8 cut short")
  result = run_module(["launch.enhance", "--method", "sgz", "--weights", weights, "--input", str(src),
                       "--output", str(out), "--noprogress"])
  assert result.returncode == 1, result.stderr[-2000:]
  assert "Traceback" not in result.stderr
  assert sorted(os.listdir(out)) == ["a.png", "c.png"]
  assert "wrote 2 image(s)" in result.stdout and "2 failed" in result.stdout
  failed = [line for line in result.stdout.splitlines() if line.strip().startswith("failed:")]
  assert len(failed) == 2
  assert any("b_tiny.png" in line and "1x1" in line and "--keep-size" in line for line in failed)
  assert any("broken.jpg" in line for line in failed)


def test_camera_flag_is_refused_for_methods_without_backgrounds(tmp_path, run_module, not_weights):
  src = tmp_path / "in"
  _photos(src)
  result = run_module(["launch.enhance", "--method", "sgz", "--weights", not_weights, "--input", str(src),
                       "--output", str(tmp_path / "out"), "--camera", "cam00"])
  _refused(result, "--camera", "DMGNIE")
  assert not (tmp_path / "out").exists()
