"""Synthetic surveillance videos: outputs, reproducibility, ground truth, lighting, CLI, default."""

import dataclasses
import json
import os
import pathlib
import subprocess
import sys

import av
import numpy as np
import pytest
from scipy import ndimage

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
  assert manifest["scene"] == {}
  hard = tmp_path / "hard"
  subprocess.run([sys.executable, "-m", "launch.make_synthetic_video", "--out", os.fspath(hard), "--minutes", "0.05",
                  "--fps", "10", "--size", "32x16", "--hard_cases", "--preset", "ultrafast"],
                 cwd=REPO, capture_output=True, text=True, timeout=120, check=True)
  assert json.loads((hard / "manifest.json").read_text())["scene"]["parked_vehicles"] == (
      synthetic_video.HARD_CASES["parked_vehicles"])


def test_default_set_is_rendered_once_into_the_cache(tmp_path, monkeypatch):
  monkeypatch.setattr(synthetic_video, "DEFAULT_SET", dict(
      minutes=0.02, fps=10.0, width=32, height=16, night=(False, True), seed=0, cameras=1))
  first = synthetic_video.default_video_dir(tmp_path)
  assert len(list(first.glob("*.mp4"))) == 2
  monkeypatch.setattr(synthetic_video, "write_videos",
                      lambda *a, **k: pytest.fail("re-rendered an existing default set"))
  assert synthetic_video.default_video_dir(tmp_path) == first
  assert [p.name for p in tmp_path.iterdir()] == [first.name]  # No temporary folders left.


# ---------------------------------------------------------------------------------------------
# Hard cases for background modelling: stopped and parked vehicles, cloud shadows, camera jitter.
# ---------------------------------------------------------------------------------------------

HARD_OFF = dict(signal_cycle=0.0, signal_red=0.0, parked_vehicles=0, cloud_shadow=0.0, jitter=0.0)


def _render(cfg, num_frames, seed=0, camera=0):
  """(renderer, uint8 frames [T, H, W, 3], bool masks [T, H, W], camera offsets [T, 2])."""
  r = synthetic_video.SceneRenderer(cfg, seed=seed, camera=camera, num_frames=num_frames)
  frames, masks, offsets = [], [], []
  for _ in range(num_frames):
    f, m = r.next_frame()
    frames.append(f)
    masks.append(m)
    offsets.append(r.offset)
  return r, np.stack(frames), np.stack(masks), np.array(offsets)


def _blob_centroids(mask, border=3):
  """Centroids (row, col) of the connected blobs of `mask` lying `border` pixels inside it."""
  labels, n = ndimage.label(mask)
  out = []
  for k, (rows, cols) in enumerate(ndimage.find_objects(labels), start=1):
    if (rows.start >= border and cols.start >= border and rows.stop <= mask.shape[0] - border
        and cols.stop <= mask.shape[1] - border):
      out.append(np.argwhere(labels == k).mean(0))
  return out


def test_hard_cases_are_off_by_default_and_on_in_the_default_set():
  cfg = synthetic_video.SceneConfig()
  assert {k: getattr(cfg, k) for k in HARD_OFF} == HARD_OFF
  assert synthetic_video.DEFAULT_SET["scene"] == synthetic_video.HARD_CASES
  hard = synthetic_video.SceneConfig(**synthetic_video.HARD_CASES)
  assert hard.signal_red > 0 and hard.parked_vehicles > 0 and hard.cloud_shadow > 0
  assert hard.jitter > 0 and min(hard.parked_fraction) > 0.5
  for bad in (dict(signal_cycle=10, signal_red=11), dict(parked_fraction=(0.8, 0.6)),
              dict(cloud_shadow=1.0), dict(cloud_coverage=0.0), dict(jitter=-1),
              dict(width=32, height=16, jitter=3)):
    with pytest.raises(ValueError):
      synthetic_video.SceneConfig(**bad)


def test_parked_vehicles_defeat_the_temporal_median_but_not_the_masked_median():
  n = 150
  cfg = synthetic_video.SceneConfig(width=160, height=90, fps=10, parked_vehicles=2,
                                    parked_fraction=(0.7, 0.7))
  r, frames, masks, _ = _render(cfg, n)
  background = r.background_uint8.astype(np.float32)
  # The background never shows the parked vehicles (nor does the background of the plain scene
  # differ from it: parked vehicles are foreground only).
  plain = synthetic_video.SceneRenderer(synthetic_video.SceneConfig(width=160, height=90, fps=10),
                                        seed=0, camera=0)
  np.testing.assert_array_equal(r.background_uint8, plain.background_uint8)
  cover = masks.mean(0)
  parked = cover > 0.5  # Foreground in more than half the frames: the parked vehicles.
  (upper_top, upper_bot), (lower_top, _) = r.layout.sidewalks
  rows = np.arange(cfg.height)[:, None]
  leaving = parked & (rows < upper_bot)  # Vehicle 0: upper curb, there from frame 0, drives off.
  arriving = parked & (rows >= lower_top)  # Vehicle 1: lower curb, drives in and stays.
  assert leaving.sum() >= 20 and arriving.sum() >= 20 and (leaving | arriving).sum() == parked.sum()
  assert masks[0][leaving].all() and not masks[-1][leaving].any()
  assert not masks[0][arriving].any() and masks[-1][arriving].all()
  assert cover[parked].max() < 0.9  # They do come and go.
  f = frames.astype(np.float32)
  median = np.median(f[:, parked], axis=0)  # [P, 3]
  assert np.abs(median - background[parked]).mean() > 15  # The median returns the vehicles.
  masked = np.where(masks[:, parked, None], np.nan, f[:, parked])
  masked_median = np.nanmedian(masked, axis=0)  # Over the frames where the pixel is background.
  error = np.abs(masked_median - background[parked])
  assert error.mean() < 1.0 and error.max() <= 4


def test_traffic_light_stops_vehicles_before_the_stop_line_during_red():
  fps, red, n = 10, 10.0, 200  # Red for frames [0, 100), green for [100, 200).
  cfg = synthetic_video.SceneConfig(width=160, height=90, fps=fps, signal_cycle=2 * red,
                                    signal_red=red, vehicle_rate=0.5)
  r = synthetic_video.SceneRenderer(cfg, seed=0, camera=0, num_frames=n)
  stop_left, stop_right = r.traffic.stop
  waiting = lambda: {id(o) for o in r.traffic.objects if o.vehicle and (
      o.x >= stop_left if o.lane < 2 else o.x + o.width <= stop_right)}
  masks, before_line = [], None
  for t in range(n):
    if t == 5:
      before_line = waiting()
    if t == 99:  # Nobody who was before the line at the start of red has crossed it.
      assert before_line and before_line <= waiting()
    masks.append(r.next_frame()[1])
  masks = np.stack(masks)

  def occupancy(m):
    """Per lane: (fraction of red frames 40-99 / late green frames 150-199 with a vehicle on the
    pixels just before the stop line, longest run of such frames)."""
    out = []
    for lane, (top, bot) in enumerate(r.layout.lanes):
      col = stop_left + 1 if lane < 2 else stop_right - 2
      occ = m[:, top:bot, col].any(1)
      run = longest = 0
      for o in occ:
        run = run + 1 if o else 0
        longest = max(longest, run)
      out.append((occ[40:100].mean(), occ[150:200].mean(), longest))
    return np.array(out)

  with_signal = occupancy(masks)
  assert with_signal[:, 0].mean() > 0.85 and with_signal[:, 1].mean() < 0.5
  assert with_signal[:, 2].max() >= 0.6 * red * fps  # Stopped for most of the red phase.
  free = dataclasses.replace(cfg, signal_cycle=0.0, signal_red=0.0)
  _, _, free_masks, _ = _render(free, n)
  assert occupancy(free_masks)[:, 2].max() < 0.3 * red * fps
  # Stop bars are part of the static background only when there is a signal.
  plain = synthetic_video.SceneRenderer(free, seed=0, camera=0).background_uint8
  changed = np.any(r.background_uint8 != plain, axis=-1)
  assert changed.any() and set(np.nonzero(changed.any(0))[0]) <= set(
      range(stop_right - 3, stop_right + 3)) | set(range(stop_left - 8, stop_left))


def test_cloud_shadows_darken_a_drifting_region_and_are_not_foreground():
  n = 60
  cfg = synthetic_video.SceneConfig(width=160, height=90, fps=10, vehicle_rate=0.0,
                                    pedestrian_rate=0.0, day_noise=(0.0, 0.0), cloud_shadow=0.5,
                                    cloud_coverage=0.4, cloud_speed=0.1)
  r, frames, masks, _ = _render(cfg, n)
  # Ground truth: the background without shadows (the same as without clouds at all).
  free = dataclasses.replace(cfg, cloud_shadow=0.0)
  free_background = synthetic_video.SceneRenderer(free, seed=0, camera=0).background_uint8
  np.testing.assert_array_equal(r.background_uint8, free_background)
  assert not masks.any()  # Shadows are not foreground.
  linear = lambda u8: (u8.astype(np.float64) / 255) ** 2.2
  bg = linear(r.background_uint8).mean(-1)
  ratio = linear(frames).mean(-1) / np.maximum(bg, 1e-3)  # [T, H, W] shadow factor.
  ground = ~r.layout.sky & (bg > 0.02)
  assert ratio[:, r.layout.sky].min() > 0.99  # The open sky is never shadowed ...
  assert ratio[:, ground].max() < 1.03 and ratio[:, ground].min() > 0.45  # ... the ground darkens,
  dark = (ratio < 0.9) & ground  # by up to cloud_shadow.
  fraction = dark[:, ground].mean(1)
  assert 0.05 < fraction.mean() < 0.8
  # The shadows move: the shadowed region of the first frame is not that of the last one.
  first, last = dark[0], dark[-1]
  assert (first & last).sum() < 0.5 * (first | last).sum()
  # The field is smooth (low frequency): a shadow's edge (0.5 deep) spreads over > 5 pixels.
  for t in (0, n // 2):
    factor = r.clouds.factor(t)
    for axis in (0, 1):
      step = np.abs(np.diff(factor, axis=axis))
      both = ground[1:] & ground[:-1] if axis == 0 else ground[:, 1:] & ground[:, :-1]
      assert step[both].max() < 0.1
  # Night videos have no cloud shadows.
  night = dataclasses.replace(cfg, night=True)
  night_free = dataclasses.replace(free, night=True)
  a = [f for f, _ in synthetic_video.render_frames(night, 5)]
  b = [f for f, _ in synthetic_video.render_frames(night_free, 5)]
  np.testing.assert_array_equal(a, b)


def test_camera_jitter_moves_frames_and_masks_together():
  n = 30
  still = synthetic_video.SceneConfig(width=160, height=90, fps=10, vehicle_rate=0.6,
                                      day_noise=(0.0, 0.0))
  _, f0, m0, off0 = _render(still, n)
  assert not off0.any()
  # Whole-pixel jitter, independent per frame: frames and masks are exact shifts of the still ones.
  shaky = dataclasses.replace(still, jitter=2.0, jitter_time=0.0, jitter_subpixel=False)
  r, f1, m1, off1 = _render(shaky, n)
  np.testing.assert_array_equal(r.background_uint8, synthetic_video.SceneRenderer(
      still, seed=0, camera=0).background_uint8)  # The ground truth is the un-jittered view.
  assert np.all(off1 == np.round(off1)) and np.abs(off1).max() <= 2
  assert len({tuple(o) for o in off1}) >= 5 and np.abs(off1).max() == 2
  moved = 0
  for t, (dx, dy) in enumerate(off1):
    np.testing.assert_array_equal(f1[t], synthetic_video.shift_image(f0[t], dx, dy))
    np.testing.assert_array_equal(m1[t], synthetic_video.shift_image(m0[t], dx, dy))
    if dx or dy:
      # Objects away from the borders: each mask blob's centroid moves with the frame's content.
      after = _blob_centroids(m1[t], border=0)
      for c in _blob_centroids(m0[t]):
        assert any(np.allclose(c + (dy, dx), d) for d in after)
        moved += 1
  assert moved >= 10
  # Sub-pixel, smooth sway: masks follow the bilinear shift of the still masks (a pixel is
  # foreground when any interpolation tap is), frames follow it up to rounding; offsets change
  # smoothly from frame to frame (more slowly than independent offsets would).
  sway = dataclasses.replace(still, jitter=1.0, jitter_time=0.5)
  _, f2, m2, off2 = _render(sway, n)
  assert np.abs(off2).max() <= 1 and np.any(off2 != np.round(off2))
  linear = lambda u8: (u8.astype(np.float32) / 255) ** 2.2
  for t, (dx, dy) in enumerate(off2):
    np.testing.assert_array_equal(m2[t], synthetic_video.shift_image(m0[t], dx, dy))
    expected = synthetic_video._to_uint8(synthetic_video.shift_image(linear(f0[t]), dx, dy))
    assert np.abs(f2[t].astype(int) - expected).max() <= 2
  _, _, _, off3 = _render(dataclasses.replace(sway, jitter_time=0.0), n)
  assert np.abs(np.diff(off2, axis=0)).mean() < 0.7 * np.abs(np.diff(off3, axis=0)).mean()
  # Amplitude 0: no jitter, whatever the other jitter settings.
  _, f4, m4, off4 = _render(dataclasses.replace(shaky, jitter=0.0), n)
  assert not off4.any()
  np.testing.assert_array_equal(f4, f0)
  np.testing.assert_array_equal(m4, m0)


def test_hard_cases_are_deterministic_per_seed_and_camera():
  cfg = synthetic_video.SceneConfig(width=64, height=36, fps=10, **synthetic_video.HARD_CASES)
  a = _render(cfg, 25, seed=7, camera=1)
  b = _render(cfg, 25, seed=7, camera=1)
  for x, y in zip(a[1:], b[1:]):
    np.testing.assert_array_equal(x, y)
  for other in (dict(seed=8, camera=1), dict(seed=7, camera=2)):
    c = _render(cfg, 25, **other)
    assert not np.array_equal(a[1], c[1])
  # Night videos with the hard cases render (no cloud shadows at night).
  night = _render(dataclasses.replace(cfg, night=True), 5, seed=7, camera=1)
  assert night[0].clouds is None and night[1].shape == (5, 36, 64, 3)


def test_default_set_cache_is_keyed_by_version_and_scene(tmp_path, monkeypatch):
  small = dict(minutes=0.02, fps=10.0, width=32, height=16, night=(False, True), seed=0, cameras=1,
               scene=synthetic_video.HARD_CASES)
  monkeypatch.setattr(synthetic_video, "DEFAULT_SET", small)
  hard = synthetic_video.default_video_dir(tmp_path)
  assert hard.name.startswith(f"synthetic_video_v{synthetic_video.RENDER_VERSION}_")
  manifest = json.loads((hard / "manifest.json").read_text())
  assert manifest["scene"]["parked_vehicles"] == synthetic_video.HARD_CASES["parked_vehicles"]
  monkeypatch.setattr(synthetic_video, "DEFAULT_SET", {**small, "scene": {}})
  plain = synthetic_video.default_video_dir(tmp_path)
  assert plain != hard and len(list(plain.glob("*.mp4"))) == 2


def test_daylit_reference_is_the_night_frame_under_daylight(tmp_path):
  """A night video's reference: the same objects at the same places (identical masks, camera jitter included), lit
  by day, clean (where nothing covers the scene: the day background exactly); read back from the MP4's generator
  tag. A day video has none."""
  scene = dict(width=64, height=48, fps=10, vehicle_rate=0.6, parked_vehicles=2)
  n = 30
  for jitter in (0.5, 0.0):
    cfg = synthetic_video.SceneConfig(night=True, jitter=jitter, **scene)
    night = list(synthetic_video.render_frames(cfg, n, seed=2, camera=1))
    lit = list(synthetic_video.render_frames(cfg, n, seed=2, camera=1, daylit=True))
    assert sum(m.sum() for _, m in night) > 0
    for (nf, nm), (df, dm) in zip(night, lit):
      np.testing.assert_array_equal(nm, dm)
      assert df.mean() > 2 * nf.mean()
  day = synthetic_video.SceneConfig(night=False, **scene)
  day_bg = synthetic_video.SceneRenderer(day, seed=2, camera=1).background_uint8
  for frame, mask in lit:
    np.testing.assert_array_equal(frame[~mask], day_bg[~mask])
  written = synthetic_video.write_video(tmp_path, cfg, num_frames=n, seed=2, camera=1, preset="ultrafast")
  ref = synthetic_video.daylit_reference(written.video, [17, 3])
  np.testing.assert_array_equal(ref, np.stack([lit[17][0], lit[3][0]]))
  day_video = synthetic_video.write_video(tmp_path, day, num_frames=4, seed=2, camera=1, preset="ultrafast")
  assert synthetic_video.daylit_reference(day_video.video, [0]) is None
  with pytest.raises(IndexError, match="out of range"):
    synthetic_video.daylit_reference(written.video, [n])
