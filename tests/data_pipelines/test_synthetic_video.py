"""Synthetic surveillance videos: outputs, reproducibility, ground truth, lighting, CLI, default."""

import json
import os
import pathlib
import subprocess
import sys

import av
import numpy as np
import pytest

from lowlight_jax.io import imageio
from data_pipelines import synthetic_video
from data_pipelines import video

REPO = pathlib.Path(__file__).resolve().parents[2]


def _decode(path) -> np.ndarray:
  with av.open(os.fspath(path)) as c:
    return np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])


def test_write_video_outputs(tmp_path):
  cfg = synthetic_video.SceneConfig(width=48, height=32, fps=8, night=True)
  out = synthetic_video.write_video(tmp_path, cfg, num_frames=20, seed=1, camera=3)
  assert out.video.name == "cam03_20240601T220300.mp4"
  assert sorted(p.name for p in tmp_path.iterdir()) == [
      "cam03_20240601T220300.mp4", "cam03_20240601T220300_background.png",
      "cam03_20240601T220300_masks.npz"]  # No temporary files left behind.
  frames = _decode(out.video)
  assert frames.shape == (20, 32, 48, 3)
  info = video.probe_video(out.video)
  assert info.fps == 8 and info.num_frames == 20 and info.wall_start == "2024-06-01T22:03:00"
  assert imageio.read_image(out.background).shape == (32, 48, 3)
  masks = synthetic_video.read_masks(out.masks)
  assert masks.shape == (20, 32, 48) and masks.dtype == bool


def test_same_seed_same_video_other_seed_other_video(tmp_path):
  cfg = synthetic_video.SceneConfig(width=32, height=16, fps=5)
  a = synthetic_video.write_video(tmp_path / "a", cfg, num_frames=12, seed=4)
  b = synthetic_video.write_video(tmp_path / "b", cfg, num_frames=12, seed=4)
  c = synthetic_video.write_video(tmp_path / "c", cfg, num_frames=12, seed=5)
  np.testing.assert_array_equal(_decode(a.video), _decode(b.video))
  np.testing.assert_array_equal(synthetic_video.read_masks(a.masks),
                                synthetic_video.read_masks(b.masks))
  assert a.background.read_bytes() == b.background.read_bytes()
  assert not np.array_equal(_decode(a.video), _decode(c.video))


def test_masks_mark_exactly_the_moving_objects_by_day():
  cfg = synthetic_video.SceneConfig(width=160, height=90, fps=10, vehicle_rate=0.6)
  renderer = synthetic_video.SceneRenderer(cfg, seed=0, camera=0)
  background = renderer.background_uint8.astype(np.float32)
  inside, outside, fg_fraction = [], [], []
  for _ in range(30):
    frame, mask = renderer.next_frame()
    diff = np.abs(frame.astype(np.float32) - background).mean(-1)
    outside.append(diff[~mask].mean())
    if mask.any():
      inside.append(diff[mask].mean())
    fg_fraction.append(mask.mean())
  # Outside the mask only sensor noise separates a frame from the background (< 1.5 levels) ...
  assert max(outside) < 1.5
  # ... inside it, objects differ clearly, and there is traffic in most frames.
  assert np.mean(inside) > 15
  assert 0.01 < np.mean(fg_fraction) < 0.3


def test_night_is_dark_noisy_and_has_glare():
  day = synthetic_video.SceneConfig(width=160, height=90, fps=10, vehicle_rate=0.6)
  night = synthetic_video.SceneConfig(width=160, height=90, fps=10, vehicle_rate=0.6, night=True)
  d = [f for f, _ in synthetic_video.render_frames(day, 20)]
  n = [f for f, _ in synthetic_video.render_frames(night, 20)]
  luma = lambda fs: float(np.mean([f.mean() for f in fs])) / 255
  assert luma(d) > 0.4 and luma(n) < 0.25
  # Headlights saturate the sensor at night.
  assert max(int(f.min(-1).max()) for f in n) == 255
  # Night noise: frame-to-frame changes of static pixels are larger than by day.
  bg_n = synthetic_video.SceneRenderer(night, seed=0, camera=0).background_uint8.astype(np.float32)
  bg_d = synthetic_video.SceneRenderer(day, seed=0, camera=0).background_uint8.astype(np.float32)
  sky = (slice(0, 5), slice(None))  # Top rows: sky, never covered by objects or beams.
  assert np.std(n[0][sky] - bg_n[sky]) > 2 * np.std(d[0][sky] - bg_d[sky])


def test_read_masks_random_access_across_chunks(tmp_path):
  cfg = synthetic_video.SceneConfig(width=16, height=16, fps=25)
  out = synthetic_video.write_video(tmp_path, cfg, num_frames=synthetic_video.MASK_CHUNK + 40,
                                    preset="ultrafast")
  every = synthetic_video.read_masks(out.masks)
  picks = [290, 3, synthetic_video.MASK_CHUNK - 1, synthetic_video.MASK_CHUNK]
  np.testing.assert_array_equal(synthetic_video.read_masks(out.masks, picks), every[picks])
  np.testing.assert_array_equal(synthetic_video.read_masks(out.masks, slice(250, 270)),
                                every[250:270])
  with pytest.raises(IndexError):
    synthetic_video.read_masks(out.masks, [every.shape[0]])


def test_rejects_odd_sizes():
  with pytest.raises(ValueError, match="even"):
    synthetic_video.SceneConfig(width=33, height=16)


def test_cli_writes_day_and_night_videos_the_video_source_splits(tmp_path):
  out = tmp_path / "vids"
  proc = subprocess.run(
      [sys.executable, "-m", "launch.make_synthetic_video", "--out", os.fspath(out),
       "--minutes", "0.05", "--fps", "10", "--size", "32x16", "--both", "--cameras", "2",
       "--seed", "3", "--preset", "ultrafast"],
      cwd=REPO, capture_output=True, text=True, timeout=120, check=True)
  result = json.loads(proc.stdout.strip().splitlines()[-1])
  assert len(result["videos"]) == 4 and result["frames_per_video"] == 30
  manifest = json.loads((out / "manifest.json").read_text())
  assert manifest["seed"] == 3 and [v["night"] for v in manifest["videos"]] == [False, True] * 2
  night = video.VideoIndex(out, video.VideoOptions(split="night"))
  assert night.cameras == ["cam00", "cam01"]
  assert {pathlib.Path(night.videos[s.video].path).name for s in night.segments} == {
      "cam00_20240601T220000.mp4", "cam01_20240601T220100.mp4"}


def test_default_set_is_rendered_once_into_the_cache(tmp_path, monkeypatch):
  monkeypatch.setattr(synthetic_video, "DEFAULT_SET", dict(
      minutes=0.02, fps=10.0, width=32, height=16, night=(False, True), seed=0, cameras=1))
  first = synthetic_video.default_video_dir(tmp_path)
  assert len(list(first.glob("*.mp4"))) == 2
  monkeypatch.setattr(synthetic_video, "write_videos",
                      lambda *a, **k: pytest.fail("re-rendered an existing default set"))
  assert synthetic_video.default_video_dir(tmp_path) == first
  assert [p.name for p in tmp_path.iterdir()] == [first.name]  # No temporary folders left.
