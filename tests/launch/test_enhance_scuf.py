"""`launch.enhance --method scuf` (subprocesses, as a user runs it) on fixtures/gefu_tiny: outputs of the inputs'
sizes, and one-line refusals naming the bad folder / file that leave the output folder untouched."""

import shutil

import numpy as np
import pytest
from PIL import Image


@pytest.fixture(scope="module")
def files(tmp_path_factory, conformance_dir):
  gefu = conformance_dir / "fixtures" / "gefu_tiny"
  root = tmp_path_factory.mktemp("scuf_cli")
  inputs = root / "in"
  inputs.mkdir()
  shutil.copy(gefu / "input_a.png", inputs / "a.png")  # 64x64
  shutil.copy(gefu / "input_b.png", inputs / "b.png")  # 45x70: resized to 48x72 and back
  videos = root / "with_video"
  shutil.copytree(inputs, videos)
  (videos / "clip.mp4").write_bytes(b"not decoded: the refusal comes first")
  hf_clip = root / "hf_clip.npz"  # a Hugging Face transformers CLIP layout, not OpenAI's
  np.savez(hf_clip, **{"vision_model.embeddings.patch_embedding.weight": np.zeros((8, 3, 8, 8), np.float32),
                       "vision_model.post_layernorm.weight": np.ones((8,), np.float32)})
  return {"inputs": inputs, "videos": videos, "sd_turbo": gefu / "sd_turbo_tiny",
          "clip": gefu / "clip_vit_tiny_openai_layout.npz", "weights": gefu / "scuf_tiny_model.pkl",
          "skf_weights": conformance_dir / "fixtures" / "skf_drbn_net_weights.npz", "hf_clip": hf_clip,
          "missing": root / "no_sd_turbo"}


def _args(files, **overrides):
  values = {"weights": files["weights"], "sd-turbo": files["sd_turbo"], "clip-image": files["clip"],
            "input": files["inputs"], **overrides}
  args = ["launch.enhance", "--method", "scuf", "--noprogress"]
  for flag, value in values.items():
    args += [f"--{flag}", str(value)]
  return args


def test_writes_pngs_of_the_inputs_sizes(files, run_module, tmp_path):
  out = tmp_path / "out"
  result = run_module(_args(files, output=out))
  assert result.returncode == 0, result.stderr[-3000:]
  assert "wrote 2 image(s)" in result.stdout
  assert sorted(p.name for p in out.iterdir()) == ["a.png", "b.png"]  # no temporary files left
  for name in ("a.png", "b.png"):
    src = np.asarray(Image.open(files["inputs"] / name).convert("RGB"))
    got = np.asarray(Image.open(out / name))
    assert got.shape == src.shape and got.dtype == np.uint8
    assert not np.array_equal(got, src)


@pytest.mark.parametrize("bad,named", [
    ("missing_sd_turbo", "missing"), ("skf_checkpoint", "skf_weights"), ("hf_clip", "hf_clip"),
    ("video", "clip.mp4")])
def test_refusals_name_the_file_and_touch_nothing(files, run_module, tmp_path, bad, named):
  overrides = {"missing_sd_turbo": {"sd-turbo": files["missing"]}, "skf_checkpoint": {"weights": files["skf_weights"]},
               "hf_clip": {"clip-image": files["hf_clip"]}, "video": {"input": files["videos"]}}[bad]
  # An output folder holding an earlier result, replaced only by a successful run (--overwrite).
  out = tmp_path / "out"
  out.mkdir()
  (out / "a.png").write_bytes(b"earlier result")
  result = run_module(_args(files, output=out, **overrides) + ["--overwrite"])
  assert result.returncode == 2, (result.stdout, result.stderr[-3000:])
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1 and "error:" in lines[0], result.stderr[-3000:]
  assert str(files.get(named, named)) in lines[0]
  assert sorted(p.name for p in out.iterdir()) == ["a.png"]
  assert (out / "a.png").read_bytes() == b"earlier result"
  # A new output folder is not even created.
  fresh = tmp_path / "fresh"
  result = run_module(_args(files, output=fresh, **overrides))
  assert result.returncode == 2 and not fresh.exists()


def test_scuf_flags_belong_to_scuf(files, run_module, tmp_path):
  result = run_module(["launch.enhance", "--method", "sgz", "--weights", str(files["weights"]), "--sd-turbo",
                       str(files["sd_turbo"]), "--input", str(files["inputs"]), "--output", str(tmp_path / "o")])
  assert result.returncode == 2 and "--sd-turbo is for --method scuf" in result.stderr
  args = [a for a in _args(files, output=tmp_path / "o") if a != "--clip-image" and a != str(files["clip"])]
  result = run_module(args)
  assert result.returncode == 2 and "--method scuf needs --clip-image" in result.stderr
  assert not (tmp_path / "o").exists()
