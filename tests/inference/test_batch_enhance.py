"""lowlight_jax.inference.batch_enhance: output planning refuses data loss; videos stream in fixed batches."""

import fractions
import os

import numpy as np
from PIL import Image
import pytest

from lowlight_jax import errors
from lowlight_jax.inference import batch_enhance
from lowlight_jax.io import videoio


def _image(path, h=20, w=30, value=40):
  Image.fromarray(np.full((h, w, 3), value, np.uint8)).save(path)


def _video(path, n=20, h=32, w=48, fps=12):
  frames = [np.full((h, w, 3), 10 + 3 * i, np.uint8) for i in range(n)]
  videoio.write_video_atomic(path, frames, fps=fps, width=w, height=h)


def _brighten(batch):
  return np.clip(np.asarray(batch) * 2 * 255 + 0.5, 0, 255).astype(np.uint8)


def test_output_equal_to_or_inside_input_is_refused(tmp_path):
  src = tmp_path / "in"
  src.mkdir()
  _image(src / "a.png")
  with pytest.raises(errors.OutputError, match="is --input"):
    batch_enhance.plan_outputs(str(src), str(src))
  with pytest.raises(errors.OutputError, match="is --input"):
    batch_enhance.plan_outputs(str(src), str(src) + "/.")
  with pytest.raises(errors.OutputError, match="inside --input"):
    batch_enhance.plan_outputs(str(src), str(src / "out"))
  os.symlink(src, tmp_path / "link")  # The same folder under another name.
  with pytest.raises(errors.OutputError, match="is --input"):
    batch_enhance.plan_outputs(str(src), str(tmp_path / "link"))
  # A single input file whose output would be itself, even with --overwrite.
  with pytest.raises(errors.OutputError, match="which is the input"):
    batch_enhance.plan_outputs(str(src / "a.png"), str(src), overwrite=True)
  # A video's frames folder that would replace the folder holding it (in/in.mp4 -> ./in/).
  (src / "in.mp4").write_bytes(b"v")
  for input_path in (src, src / "in.mp4"):
    with pytest.raises(errors.OutputError, match="holds --input"):
      batch_enhance.plan_outputs(str(input_path), str(tmp_path), overwrite=True, frames_dir=True)
  assert sorted(os.listdir(src)) == ["a.png", "in.mp4"]


def test_colliding_names_are_refused_naming_both(tmp_path):
  src = tmp_path / "in"
  src.mkdir()
  for name in ("x.png", "x.jpg", "y.png"):
    _image(src / name)
  with pytest.raises(errors.InputError, match=r"x\.jpg and x\.png would both write"):
    batch_enhance.plan_outputs(str(src), str(tmp_path / "out"))
  # Videos collide among themselves (x.mp4, x.mov -> x.mp4), not with images.
  (src / "x.jpg").unlink()
  (src / "x.mp4").write_bytes(b"v")
  plan = batch_enhance.plan_outputs(str(src), str(tmp_path / "out"))
  assert sorted((os.path.basename(j.dest), j.kind) for j in plan.jobs) == [
      ("x.mp4", "video"), ("x.png", "image"), ("y.png", "image")]
  (src / "x.mov").write_bytes(b"v")
  with pytest.raises(errors.InputError, match=r"x\.mov and x\.mp4 would both write"):
    batch_enhance.plan_outputs(str(src), str(tmp_path / "out"))
  assert not (tmp_path / "out").exists()


def test_non_empty_output_needs_overwrite_or_skip_existing(tmp_path):
  src, out = tmp_path / "in", tmp_path / "out"
  src.mkdir()
  out.mkdir()
  for name in ("a.png", "b.png"):
    _image(src / name)
  (out / "a.png").write_bytes(b"old")
  with pytest.raises(errors.OutputError, match="is not empty.*--overwrite.*--skip-existing"):
    batch_enhance.plan_outputs(str(src), str(out))
  with pytest.raises(errors.ConfigError, match="exclude each other"):
    batch_enhance.plan_outputs(str(src), str(out), overwrite=True, skip_existing=True)
  plan = batch_enhance.plan_outputs(str(src), str(out), skip_existing=True)
  assert [os.path.basename(j.src) for j in plan.jobs] == ["b.png"]
  assert [os.path.basename(j.src) for j in plan.skipped] == ["a.png"]
  plan = batch_enhance.plan_outputs(str(src), str(out), overwrite=True)
  assert len(plan.jobs) == 2 and plan.replace
  with pytest.raises(errors.OutputError, match="is an existing file"):
    batch_enhance.plan_outputs(str(src), str(out / "a.png"))
  # A folder where a PNG must go (or a file where a frames folder must go) is refused too.
  (out / "b.png").mkdir()
  with pytest.raises(errors.OutputError, match="b.png exists and is a folder"):
    batch_enhance.plan_outputs(str(src), str(out), overwrite=True)
  assert (out / "a.png").read_bytes() == b"old"  # Planning never writes.


def test_too_small_and_broken_images_fail_alone(tmp_path):
  src, out = tmp_path / "in", tmp_path / "out"
  src.mkdir()
  _image(src / "big.png")
  _image(src / "tiny.png", 1, 1)
  (src / "broken.jpg").write_bytes(b"not a jpeg")
  enhancer = batch_enhance.Enhancer(image_fn=_brighten, video_fn=_brighten, min_size=12, size_hint=" (hint)")
  report = batch_enhance.run_plan(enhancer, batch_enhance.plan_outputs(str(src), str(out)), progress=False)
  assert report.written == [str(out / "big.png")] and os.listdir(out) == ["big.png"]
  failed = dict(report.failed)
  assert set(failed) == {str(src / "tiny.png"), str(src / "broken.jpg")}
  assert "1x1" in failed[str(src / "tiny.png")] and "(hint)" in failed[str(src / "tiny.png")]
  assert np.asarray(Image.open(out / "big.png")).max() == 80  # The enhancer ran on it: 2 x 40.


def test_batched_pads_the_last_batch():
  frames = [np.full((2, 2, 3), i, np.float32) for i in range(5)]
  got = [(b.copy(), n) for b, n in batch_enhance.batched(iter(frames), 2)]
  assert [n for _, n in got] == [2, 2, 1] and all(b.shape == (2, 2, 2, 3) for b, _ in got)
  np.testing.assert_array_equal(got[-1][0][:, 0, 0, 0], [4, 4])


def test_video_streams_in_fixed_batches(tmp_path, monkeypatch):
  src, dest = tmp_path / "clip.mp4", tmp_path / "out" / "clip.mp4"
  _video(src, n=20)
  decoded = [0]
  real_frames = videoio.VideoReader.frames

  def counting_frames(self, dtype=np.uint8):
    for frame in real_frames(self, dtype):
      decoded[0] += 1
      yield frame

  monkeypatch.setattr(videoio.VideoReader, "frames", counting_frames)
  calls = []

  def fn(batch):
    calls.append((batch.shape, decoded[0]))
    return _brighten(batch)

  n = batch_enhance.enhance_video(fn, str(src), str(dest), batch_size=8, progress=False)
  assert n == 20
  # One shape for the jitted function (the last batch of 4 is padded), never more than a batch decoded
  # ahead of the function: the video is never held in memory as a whole.
  assert [shape for shape, _ in calls] == [(8, 32, 48, 3)] * 3
  assert [seen for _, seen in calls] == [8, 16, 20]
  with videoio.VideoReader(dest) as reader:
    assert (reader.info.width, reader.info.height, reader.info.fps, reader.info.num_frames) == (
        48, 32, fractions.Fraction(12), 20)
    out = list(reader.frames())
  assert len(out) == 20 and abs(int(out[5].mean()) - 2 * (10 + 15)) <= 3  # Frame order kept.


def test_mixed_folder_with_frames_dir_and_a_bad_video(tmp_path):
  src, out = tmp_path / "in", tmp_path / "out"
  src.mkdir()
  _image(src / "photo.jpg")
  _video(src / "clip.mov", n=5, h=16, w=24)
  (src / "bad.mp4").write_bytes(b"junk" * 100)
  enhancer = batch_enhance.Enhancer(image_fn=_brighten, video_fn=_brighten)
  plan = batch_enhance.plan_outputs(str(src), str(out), frames_dir=True)
  report = batch_enhance.run_plan(enhancer, plan, video_batch=2, progress=False)
  assert sorted(os.listdir(out)) == ["clip", "photo.png"]
  assert sorted(os.listdir(out / "clip")) == [f"{i:06d}.png" for i in range(5)]
  assert report.frames == 5 and report.videos == 1
  assert [p for p, _ in report.failed] == [str(src / "bad.mp4")] and "cannot open" in report.failed[0][1]
