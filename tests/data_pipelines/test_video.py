"""Video source: probing, segments, day/night, resampling, shuffle, shards, checkpoints, clips."""

import json
import logging
import os
import pathlib

import av
import grain
import numpy as np
import pytest

from data_pipelines import synthetic_video
from data_pipelines import video

FPS = 10
FRAMES = 200  # 20 s per video: 10 segments of 2 s.


@pytest.fixture(scope="module")
def video_dir(tmp_path_factory) -> pathlib.Path:
  out = tmp_path_factory.mktemp("videos")
  synthetic_video.write_videos(out, minutes=FRAMES / FPS / 60, fps=FPS, width=64, height=36,
                               night=(False, True), cameras=2, preset="ultrafast")
  return out


def _keys(elements):
  return [(int(e["video"]), int(e["frame"])) for e in elements]


def test_probe_reads_metadata(video_dir):
  info = video.probe_video(video_dir / "cam01_20240601T220100.mp4")
  assert info.num_frames == FRAMES
  assert info.fps == FPS
  assert (info.width, info.height) == (64, 36)
  assert info.count_source == "metadata"
  assert info.keyframes == tuple(range(0, FRAMES, 2 * FPS))  # keyframe_seconds=2, no scene cuts.
  assert info.wall_start == "2024-06-01T22:01:00"
  assert info.frame_index(info.frame_pts(123)) == 123


@pytest.mark.parametrize("name, stamp, camera", [
    ("cam03_20240601T221500.mp4", "2024-06-01T22:15:00", "cam03"),
    ("north-gate_2023-12-31_07-59-58.mkv", "2023-12-31T07:59:58", "north-gate"),
    ("20240101_120000.mp4", "2024-01-01T12:00:00", "site"),  # No prefix: the folder names it.
    ("clip_0001.mp4", None, "site"),
    ("cam_20241399_120000.mp4", None, "site"),  # Month 13: not a timestamp.
])
def test_timestamp_and_camera_from_name(tmp_path, name, stamp, camera):
  stamp_got = video.parse_timestamp(name)
  assert (stamp_got.isoformat() if stamp_got else None) == stamp
  assert video.camera_name(tmp_path / "site" / name, root=tmp_path) == camera


def test_segments_tile_each_video_and_start_on_keyframes(video_dir):
  index = video.VideoIndex(video_dir, video.VideoOptions(segment_seconds=3.0))
  assert len(index.videos) == 4 and index.skipped == []
  assert index.cameras == ["cam00", "cam01"]
  assert index.video_camera == [0, 0, 1, 1]
  for v, info in enumerate(index.videos):
    segs = [s for s in index.segments if s.video == v]
    assert segs[0].start == 0 and segs[-1].end == info.num_frames
    assert all(a.end == b.start for a, b in zip(segs, segs[1:]))
    assert all(s.start in info.keyframes for s in segs)
    # 3 s nominal, snapped to the 2 s keyframe grid: 2 or 4 s long.
    assert {s.end - s.start for s in segs} <= {20, 40}
  assert index.num_frames() == 4 * FRAMES


def test_day_night_split_by_timestamp(video_dir):
  day = video.VideoIndex(video_dir, video.VideoOptions(split="day"))
  night = video.VideoIndex(video_dir, video.VideoOptions(split="night"))
  names = lambda idx: {pathlib.Path(idx.videos[s.video].path).name for s in idx.segments}
  assert names(day) == {"cam00_20240601T120000.mp4", "cam01_20240601T120100.mp4"}
  assert names(night) == {"cam00_20240601T220000.mp4", "cam01_20240601T220100.mp4"}
  assert not any(s.night for s in day.segments) and all(s.night for s in night.segments)
  # Day until 22:00:09: the 4 s segments of the 22:00:00 video with midpoints at 2 s and 6 s are
  # day, the rest night (the split is per segment: a video spanning dusk is cut correctly).
  late = video.VideoIndex(video_dir, video.VideoOptions(split="day", segment_seconds=4.0,
                                                        day_hours=(7.0, 22 + 9 / 3600)))
  dusk = [s for s in late.segments if late.videos[s.video].path.endswith("T220000.mp4")]
  assert [(s.start, s.end) for s in dusk] == [(0, 40), (40, 80)]


def _remux_without_metadata(src: pathlib.Path, dst: pathlib.Path) -> None:
  """Copies the video packets into a new MP4 without `creation_time` (no timestamp anywhere)."""
  with av.open(os.fspath(src)) as inp, av.open(os.fspath(dst), "w") as out:
    stream = out.add_stream_from_template(inp.streams.video[0])
    for packet in inp.demux(inp.streams.video[0]):
      if packet.dts is not None:
        packet.stream = stream
        out.mux(packet)
  assert "creation_time" not in av.open(os.fspath(dst)).metadata


def test_day_night_split_by_cached_luma_without_timestamps(video_dir, tmp_path, monkeypatch):
  for sub, src in (("day", "cam00_20240601T120000.mp4"), ("night", "cam00_20240601T220000.mp4")):
    (tmp_path / "videos" / sub).mkdir(parents=True)
    _remux_without_metadata(video_dir / src, tmp_path / "videos" / sub / "clip.mp4")
  cache = tmp_path / "luma.json"
  opts = video.VideoOptions(split="night", luma_cache=os.fspath(cache))
  index = video.VideoIndex(tmp_path / "videos", opts)
  assert index.cameras == ["day", "night"]  # Folder names, since the files carry no timestamp.
  assert {index.videos[s.video].path for s in index.segments} == {
      os.fspath(tmp_path / "videos" / "night" / "clip.mp4")}
  lumas = json.loads(cache.read_text())
  assert len(lumas) == 2
  day_luma, night_luma = sorted(lumas.values(), reverse=True)
  assert day_luma > 0.35 and night_luma < 0.2
  # Second build: served from the on-disk cache, no frame is decoded.
  monkeypatch.setattr(video, "median_luma", lambda *a, **k: pytest.fail("cache not used"))
  again = video.VideoIndex(tmp_path / "videos",
                           video.VideoOptions(split="day", luma_cache=os.fspath(cache)))
  assert {again.videos[s.video].path for s in again.segments} == {
      os.fspath(tmp_path / "videos" / "day" / "clip.mp4")}


def test_frames_are_rgb_float_matching_a_direct_decode(video_dir):
  index = video.VideoIndex(video_dir / "cam00_20240601T220000.mp4", video.VideoOptions())
  elements = list(video.make_frame_dataset(index, shuffle=False, num_epochs=1))
  assert _keys(elements) == [(0, i) for i in range(FRAMES)]
  e = elements[57]
  assert e["image"].dtype == np.float32 and e["image"].shape == (36, 64, 3)
  assert 0.0 <= e["image"].min() and e["image"].max() <= 1.0
  assert e["camera"] == 0 and bool(e["night"]) and e["time"] == pytest.approx(5.7)
  with av.open(os.fspath(video_dir / "cam00_20240601T220000.mp4")) as c:
    for i, frame in enumerate(c.decode(video=0)):
      if i == 57:
        direct = frame.to_ndarray(format="rgb24").astype(np.float32) / 255
        break
  np.testing.assert_allclose(e["image"], direct, atol=1e-6)
  # Night frames are dark on average (the synthetic night scene), day frames are not.
  day = video.VideoIndex(video_dir / "cam00_20240601T120000.mp4", video.VideoOptions())
  day_frame = next(iter(video.make_frame_dataset(day, shuffle=False, num_epochs=1)))["image"]
  assert day_frame.mean() > 2 * e["image"].mean()


def test_resize_in_the_decoder(video_dir):
  opts = video.VideoOptions(size=(18, 32))
  index = video.VideoIndex(video_dir / "cam00_20240601T120000.mp4", opts)
  e = next(iter(video.make_frame_dataset(index, shuffle=False, num_epochs=1)))
  assert e["image"].shape == (18, 32, 3) and e["image"].dtype == np.float32


@pytest.mark.parametrize("fps, stride, expected", [
    (0, 3, [i for i in range(FRAMES) if i % 3 == 0]),
    (5, 1, list(range(0, FRAMES, 2))),
    (4, 1, [i for i in range(FRAMES) if i == 0 or (i * 2) // 5 != ((i - 1) * 2) // 5]),
    (5, 2, list(range(0, FRAMES, 4))),
])
def test_stride_and_fps_resampling(video_dir, fps, stride, expected):
  index = video.VideoIndex(video_dir / "cam01_20240601T120100.mp4",
                           video.VideoOptions(fps=fps, stride=stride))
  frames = [f for _, f in _keys(video.make_frame_dataset(index, shuffle=False, num_epochs=1))]
  assert frames == expected
  assert index.num_frames() == len(expected)
  if fps == 4:
    assert len(frames) == FRAMES * 4 // 10  # 4 of every 10 native frames.


def test_shuffle_is_seeded_and_checkpoint_restores_exactly(video_dir):
  index = video.VideoIndex(video_dir, video.VideoOptions(segment_seconds=2.0))
  ds = video.make_frame_dataset(index, seed=7, shuffle_buffer=32).batch(4)
  it = iter(ds)
  first = [next(it) for _ in range(13)]  # 52 frames: inside the second shuffle window.
  state = it.get_state()
  json.dumps(state)  # Plain ints: storable in any checkpoint.
  expected = [next(it) for _ in range(30)]
  restored = iter(ds)
  restored.set_state(state)
  got = [next(restored) for _ in range(30)]
  for a, b in zip(expected, got):
    np.testing.assert_array_equal(a["frame"], b["frame"])
    np.testing.assert_array_equal(a["video"], b["video"])
    np.testing.assert_array_equal(a["image"], b["image"])
  # Shuffled: not in file order, mixes videos within a batch window, and depends on the seed.
  order = [k for b in first for k in zip(b["video"].tolist(), b["frame"].tolist())]
  assert order != sorted(order)
  other = iter(video.make_frame_dataset(index, seed=8, shuffle_buffer=32).batch(4))
  other_frames = [next(other)["frame"].tolist() for _ in range(3)]
  assert other_frames != [b["frame"].tolist() for b in first[:3]]


def test_epochs_repeat_with_a_new_segment_order(video_dir):
  index = video.VideoIndex(video_dir / "cam00_20240601T120000.mp4", video.VideoOptions())
  it = iter(video.make_frame_dataset(index, seed=1, shuffle_buffer=1, num_epochs=2))
  keys = _keys(it)
  epoch1, epoch2 = keys[:FRAMES], keys[FRAMES:]
  assert sorted(epoch1) == sorted(epoch2) == [(0, i) for i in range(FRAMES)]
  assert epoch1 != epoch2


def test_two_process_shards_are_disjoint_and_complete(video_dir):
  index = video.VideoIndex(video_dir, video.VideoOptions(segment_seconds=2.0))
  shards = [set(_keys(video.make_frame_dataset(index, seed=3, shard_index=i, shard_count=2,
                                                num_epochs=1)))
            for i in range(2)]
  assert not shards[0] & shards[1]
  every = {(v, f) for v, info in enumerate(index.videos) for f in range(info.num_frames)}
  assert shards[0] | shards[1] == every
  assert abs(len(shards[0]) - len(shards[1])) <= 2 * FPS  # Balanced to within one segment.


def test_worker_processes_read_disjoint_complete_slices(video_dir):
  index = video.VideoIndex(video_dir, video.VideoOptions(split="night", segment_seconds=2.0))
  ds = video.make_frame_dataset(index, shuffle=False, num_epochs=1)
  ds = ds.map(lambda e: (int(e["video"]), int(e["frame"]))).mp_prefetch(
      grain.MultiprocessingOptions(num_workers=2))
  keys = list(ds)
  assert len(keys) == len(set(keys)) == index.num_frames() == 2 * FRAMES


def test_a_file_failing_mid_decode_is_skipped_once_and_the_run_goes_on(video_dir, monkeypatch,
                                                                       caplog):
  index = video.VideoIndex(video_dir, video.VideoOptions(split="day"))
  bad = index.videos[0].path
  real_read = video.FrameDecoder.read

  def flaky_read(self, start, end, *args, **kwargs):
    if self.info.path == bad and start >= 60:
      raise video.VideoDecodeError(bad, "simulated corrupt packet")
    yield from real_read(self, start, end, *args, **kwargs)

  monkeypatch.setattr(video.FrameDecoder, "read", flaky_read)
  with caplog.at_level(logging.WARNING):
    keys = _keys(video.make_frame_dataset(index, shuffle=False, num_epochs=1))
  # 4 s segments: [0, 40) and [40, 80) decode; the segment at 80 fails, and the file is dropped.
  assert [f for v, f in keys if v == 0] == list(range(80))
  other = {s.video for s in index.segments} - {0}
  assert len(other) == 1  # The other camera's day video is untouched.
  assert [f for v, f in keys if v in other] == list(range(FRAMES))
  assert index.skipped == [(bad, "simulated corrupt packet")]
  assert sum(bad in r.getMessage() for r in caplog.records) == 1


def test_clips_hold_k_frames_of_one_camera_spread_over_its_day(video_dir):
  index = video.VideoIndex(video_dir, video.VideoOptions(split="day"))
  source = video.VideoClipSource(index, clip_frames=4, num_records=6, seed=0, with_masks=True)
  assert len(source) == 6 and "VideoClipSource" in repr(source)
  for i in range(2):
    clip = source[i]
    assert clip["frames"].shape == (4, 36, 64, 3) and clip["frames"].dtype == np.float32
    assert clip["camera"] == i % 2
    assert {index.video_camera[v] for v in clip["video"]} == {i % 2}
    # One frame per quarter of the camera's day timeline (one 200-frame video here).
    assert [f // (FRAMES // 4) for f in clip["frame"]] == [0, 1, 2, 3]
    path = pathlib.Path(index.videos[clip["video"][0]].path)
    gt = synthetic_video.read_masks(path.with_name(path.stem + "_masks.npz"),
                                    clip["frame"].tolist())
    np.testing.assert_array_equal(clip["masks"], gt)
  again = video.VideoClipSource(index, clip_frames=4, num_records=6, seed=0)
  np.testing.assert_array_equal(again[1]["frames"], source[1]["frames"])
  assert video.VideoClipSource(index, clip_frames=4, num_records=6, seed=1).frames_of(1) != \
      source.frames_of(1)


def test_container_without_frame_count_falls_back_to_a_packet_scan(tmp_path):
  path = tmp_path / "gate_20240601T130000.mkv"
  with av.open(os.fspath(path), "w") as c:
    s = c.add_stream("libx264", rate=FPS)
    s.width, s.height, s.pix_fmt = 32, 16, "yuv420p"
    for i in range(30):
      for p in s.encode(av.VideoFrame.from_ndarray(np.full((16, 32, 3), 8 * i, np.uint8),
                                                   format="rgb24")):
        c.mux(p)
    for p in s.encode():
      c.mux(p)
  info = video.probe_video(path)
  assert info.count_source == "packet_scan" and info.num_frames == 30
  index = video.VideoIndex(tmp_path, video.VideoOptions(split="day"))
  elements = list(video.make_frame_dataset(index, shuffle=False, num_epochs=1))
  assert [int(e["frame"]) for e in elements] == list(range(30))
  means = [float(e["image"].mean()) for e in elements]
  np.testing.assert_allclose(means, [8 * i / 255 for i in range(30)], atol=3 / 255)


def _train_cfg(root, **overrides):
  cfg = video.default_video_config()
  cfg.root = os.fspath(root)
  cfg.update(overrides)
  return cfg


@pytest.mark.parametrize("clip_frames", [0, 3])
def test_train_dataset_batches_and_resumes_exactly(video_dir, clip_frames):
  cfg = _train_cfg(video_dir, split="day", shuffle_buffer=16, clip_frames=clip_frames,
                   clip_records=8)
  ds = video.make_train_dataset(cfg, batch_size=4, seed=2, shard_index=0, shard_count=1)
  it = iter(ds)
  for _ in range(3):
    next(it)
  state = it.get_state()
  expected = [next(it) for _ in range(4)]
  restored = iter(ds)
  restored.set_state(state)
  for want in expected:
    got = next(restored)
    assert got.keys() == want.keys()
    for k in want:
      np.testing.assert_array_equal(got[k], want[k])
  batch = expected[0]
  if clip_frames:
    assert batch["frames"].shape == (4, 3, 36, 64, 3) and batch["camera"].shape == (4,)
  else:
    assert batch["image"].shape == (4, 36, 64, 3) and batch["image"].dtype == np.float32
    assert not batch["night"].any()  # split='day'
    # batch_frames converts the whole uint8 batch: identical to the per-frame float path.
    index = video.VideoIndex(video_dir, video.options_from_config(cfg))
    v, f = int(batch["video"][0]), int(batch["frame"][0])
    single = video.VideoIndex(index.videos[v].path, video.options_from_config(cfg))
    frames = list(video.make_frame_dataset(single, shuffle=False, num_epochs=1))
    np.testing.assert_array_equal(batch["image"][0], frames[f]["image"])


def test_benchmark_functions_report_rates(video_dir, tmp_path):
  from data_pipelines import benchmark  # pylint: disable=g-import-not-at-top

  result = benchmark.video_frames_per_s(video_dir, worker_counts=(0,), splits=("night",),
                                        batch_size=2, num_batches=3)
  night = result["night"]
  assert night["size"] == "64x36" and night["bytes_per_frame"] > 0
  assert night["workers_0"]["items"] == 6 and night["workers_0"]["per_s"] > 0
  folder = benchmark.write_benchmark_images(tmp_path / "img", count=4, size=(40, 48))
  assert len(list(folder.glob("*.jpg"))) == 4
  result = benchmark.folder_images_per_s(folder, worker_counts=(0,), batch_size=2, crop=32,
                                         num_batches=2)
  assert result["workers_0"]["items"] == 4 and result["workers_0"]["per_s"] > 0


def _rss_mb() -> float:
  with open("/proc/self/statm") as f:
    return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


@pytest.mark.slow
def test_thirty_minute_video_streams_with_bounded_memory(tmp_path):
  rss0 = _rss_mb()
  cfg = synthetic_video.SceneConfig(width=64, height=36, fps=FPS)
  written = synthetic_video.write_video(tmp_path, cfg, num_frames=30 * 60 * FPS, preset="ultrafast")
  rss_written = _rss_mb()
  index = video.VideoIndex(tmp_path, video.VideoOptions())
  assert index.num_frames() == 18_000
  seen = np.zeros(18_000, bool)
  rss = []
  for n, e in enumerate(video.make_frame_dataset(index, seed=0, shuffle_buffer=256, num_epochs=1)):
    assert e["image"].shape == (36, 64, 3)
    seen[int(e["frame"])] = True
    if n % 1000 == 0:
      rss.append(_rss_mb())
  assert n + 1 == 18_000 and seen.all()
  growth = max(rss) - rss[1]  # After the first window and decoder are warm.
  print(f"RSS MB: start {rss0:.1f}, after writing {rss_written:.1f}, streaming "
        f"{min(rss):.1f}..{max(rss):.1f} (growth {growth:.1f}); "
        f"video {written.video.stat().st_size} B")
  # All 18,000 float32 frames would be 500 MB; a per-frame leak of even 1 kB would add 18 MB.
  assert growth < 16
  assert rss_written - rss0 < 64  # The writer streams too.
