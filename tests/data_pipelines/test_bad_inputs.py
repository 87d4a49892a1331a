"""Bad input never crashes a run: a generated corpus of awkward and broken images and videos.

Real images in unusual encodings (16-bit, grey, grey+alpha, RGBA, palette, CMYK, EXIF rotation, 1x1)
must be converted correctly; broken files (empty, truncated, not an image, over the pixel limit,
video without a video stream, cut-short MP4) must be skipped with ONE warning naming the file and
the reason, and counted in `skipped`, while the training pipeline keeps going.
"""

import io
import logging
import os
import pathlib
import struct
import zlib

import av
import ml_collections
import numpy as np
import pytest
from PIL import Image

from lowlight_jax.io import imageio
from data_pipelines import pipeline
from data_pipelines import image_sources
from data_pipelines import synthetic_video
from data_pipelines import video

MAX_PIXELS = 5000  # The configured limit for the "decompression bomb" (100x100 = 10,000 pixels).


def _png_rgb16(path: pathlib.Path, rgb16: np.ndarray) -> None:
  """A 16-bit-per-channel RGB PNG (Pillow cannot write these), written by hand."""
  h, w, _ = rgb16.shape
  raw = b"".join(b"\x00" + rgb16[y].astype(">u2").tobytes() for y in range(h))
  chunk = lambda kind, data: (struct.pack(">I", len(data)) + kind + data
                              + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))
  header = struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0)  # 16 bits, colour type 2 (RGB).
  path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
                   + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def _jpeg_bytes(image: Image.Image, **kwargs) -> bytes:
  buf = io.BytesIO()
  image.save(buf, format="JPEG", quality=95, **kwargs)
  return buf.getvalue()


def make_image_corpus(d: pathlib.Path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
  """Writes the corpus; returns ({good file: expected RGB}, {bad file: reason fragment})."""
  d.mkdir(parents=True, exist_ok=True)
  good, bad = {}, {}
  # 16-bit grey: full precision is kept.
  g16 = (np.arange(64, dtype=np.uint16).reshape(8, 8) * 1000 + 7)
  Image.fromarray(g16).save(d / "grey16.png")  # uint16 -> mode I;16.
  good["grey16.png"] = np.repeat((g16 / 65535.0)[..., None], 3, -1)
  # 16-bit RGB: Pillow reduces it to the high byte of each sample.
  rgb16 = np.random.default_rng(0).integers(0, 65536, (8, 8, 3)).astype(np.uint16)
  _png_rgb16(d / "rgb16.png", rgb16)
  good["rgb16.png"] = (rgb16 >> 8) / 255.0
  # Grey, grey + alpha, RGBA: replicated, then composited onto black (colour * alpha).
  grey = np.tile(np.arange(0, 256, 32, dtype=np.uint8), (8, 1))
  Image.fromarray(grey, mode="L").save(d / "grey.png")
  good["grey.png"] = np.repeat((grey / 255.0)[..., None], 3, -1)
  alpha = np.full((8, 8), 255, np.uint8)
  alpha[:, :4] = 0
  Image.fromarray(np.stack([grey, alpha], -1), mode="LA").save(d / "grey_alpha.png")
  good["grey_alpha.png"] = np.repeat((grey / 255.0 * (alpha / 255.0))[..., None], 3, -1)
  rgba = np.zeros((8, 8, 4), np.uint8)
  rgba[..., 0], rgba[..., 1], rgba[..., 2], rgba[..., 3] = 200, 100, 50, 128
  Image.fromarray(rgba, mode="RGBA").save(d / "rgba.png")
  good["rgba.png"] = np.broadcast_to(np.array([200, 100, 50]) / 255.0 * (128 / 255.0), (8, 8, 3))
  # Palette: indices into a colour table.
  pal = Image.fromarray(np.tile(np.array([0, 1, 2, 1], np.uint8), (4, 2)), mode="P")
  pal.putpalette([255, 0, 0, 0, 255, 0, 0, 0, 255] + [0] * 759)
  pal.save(d / "palette.png")
  colours = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1]], np.float64)
  good["palette.png"] = colours[np.tile(np.array([0, 1, 2, 1]), (4, 2))]
  # CMYK JPEG: pure cyan ink -> RGB (0, 1, 1).
  (d / "cmyk.jpg").write_bytes(_jpeg_bytes(Image.new("CMYK", (16, 16), (255, 0, 0, 0))))
  good["cmyk.jpg"] = np.broadcast_to(np.array([0.0, 1.0, 1.0]), (16, 16, 3))
  # EXIF orientation 6 ("rotate 90 CW to display"): stored 32 wide x 16 high, left red / right blue;
  # displayed 16 wide x 32 high, top red / bottom blue.
  stored = np.zeros((16, 32, 3), np.uint8)
  stored[:, :16] = (255, 0, 0)
  stored[:, 16:] = (0, 0, 255)
  exif = Image.Exif()
  exif[0x0112] = 6
  (d / "exif_rotated.jpg").write_bytes(_jpeg_bytes(Image.fromarray(stored), exif=exif.tobytes()))
  shown = np.zeros((32, 16, 3))
  shown[:16] = (1, 0, 0)
  shown[16:] = (0, 0, 1)
  good["exif_rotated.jpg"] = shown
  # 1x1.
  Image.new("RGB", (1, 1), (10, 20, 30)).save(d / "one_pixel.png")
  good["one_pixel.png"] = np.array([[[10, 20, 30]]]) / 255.0

  # Broken files.
  photo = np.random.default_rng(1).integers(0, 256, (32, 32, 3), dtype=np.uint8)
  buf = io.BytesIO()
  Image.fromarray(photo).save(buf, format="PNG")
  png = buf.getvalue()
  jpg = _jpeg_bytes(Image.fromarray(photo))
  (d / "zero.png").write_bytes(b"")
  bad["zero.png"] = "empty"
  (d / "zero.jpg").write_bytes(b"")
  bad["zero.jpg"] = "empty"
  (d / "truncated.png").write_bytes(png[:len(png) // 2])
  bad["truncated.png"] = "Truncated"  # Caught by the header check (chunk CRCs).
  (d / "truncated.jpg").write_bytes(jpg[:len(jpg) // 2])
  bad["truncated.jpg"] = "truncated"  # Header intact: caught when decoded ("at read time").
  (d / "not_an_image.png").write_bytes(b"<html>404 Not Found</html>" * 20)
  bad["not_an_image.png"] = "not a recognised image"
  Image.new("RGB", (100, 100), (1, 2, 3)).save(d / "bomb.png")
  bad["bomb.png"] = "max_pixels"
  return good, bad


def test_real_images_in_awkward_encodings_convert_correctly(tmp_path):
  good, _ = make_image_corpus(tmp_path)
  for name, expected in good.items():
    image = imageio.read_image(tmp_path / name, max_pixels=MAX_PIXELS)
    assert image.dtype == np.float32 and image.shape == expected.shape, name
    if name == "exif_rotated.jpg":
      # JPEG chroma subsampling blurs the rows next to the red/blue edge; compare away from it.
      for rows in (slice(0, 12), slice(20, 32)):
        np.testing.assert_allclose(image[rows], expected[rows], atol=3 / 255, err_msg=name)
      continue
    atol = 3 / 255 if name.endswith(".jpg") else 1e-6
    np.testing.assert_allclose(image, expected, atol=atol, err_msg=name)


def test_broken_images_are_skipped_once_with_a_reason(tmp_path, caplog):
  good, bad = make_image_corpus(tmp_path)
  with caplog.at_level(logging.WARNING):
    source = image_sources.UnpairedFolder(tmp_path, key="low", max_pixels=MAX_PIXELS)
    elements = [source[i] for i in range(len(source))]
    again = [source[i] for i in range(len(source))]  # A second epoch warns no more.
  assert len(elements) == len(again) == len(source)
  reasons = dict(source.skipped)
  assert sorted(reasons) == sorted(os.fspath(tmp_path / n) for n in bad)
  for name, fragment in bad.items():
    reason = reasons[os.fspath(tmp_path / name)]
    assert fragment in reason, (name, reason)
  for name in bad:
    assert sum(os.fspath(tmp_path / name) in r.getMessage() for r in caplog.records) == 1, name
  # Every element handed out is a real image of the corpus, never a broken one.
  assert all(e["low"].dtype == np.float32 and np.isfinite(e["low"]).all() for e in elements)
  assert {tuple(e["low"].shape) for e in elements} <= {tuple(v.shape) for v in good.values()}


def test_training_loader_runs_through_the_corpus(tmp_path, caplog):
  good, bad = make_image_corpus(tmp_path / "corpus")
  cfg = pipeline.default_data_config()
  cfg.source = "unpaired_folder"
  cfg.root = os.fspath(tmp_path / "corpus")
  cfg.low_dir = ""
  cfg.crop = 8
  cfg.max_pixels = MAX_PIXELS
  cfg.read_threads = 2
  loader = pipeline.make_train_loader(cfg, batch_size=4, seed=0, shard_index=0, shard_count=1)
  with caplog.at_level(logging.WARNING):
    it = iter(loader)
    batches = [next(it) for _ in range(3 * len(good) // 4 + 1)]  # About three epochs.
  for b in batches:
    assert b["low"].shape == (4, 8, 8, 3) and b["low"].dtype == np.float32
    assert 0.0 <= b["low"].min() and b["low"].max() <= 1.0
  for name in bad:
    path = os.fspath(tmp_path / "corpus" / name)
    assert sum(path in r.getMessage() for r in caplog.records) == 1, name


def _write_mp4(path: pathlib.Path, frames: int = 20, **options) -> bytes:
  with av.open(os.fspath(path), "w", options=options) as c:
    s = c.add_stream("libx264", rate=10)
    s.width, s.height, s.pix_fmt = 32, 16, "yuv420p"
    rng = np.random.default_rng(0)
    for _ in range(frames):
      for p in s.encode(av.VideoFrame.from_ndarray(rng.integers(0, 256, (16, 32, 3), np.uint8),
                                                   format="rgb24")):
        c.mux(p)
    for p in s.encode():
      c.mux(p)
  return path.read_bytes()


def make_video_corpus(d: pathlib.Path) -> tuple[list[str], dict[str, str]]:
  """Writes good and broken videos; returns (good names, {bad name: expected reason fragment})."""
  d.mkdir(parents=True, exist_ok=True)
  cfg = synthetic_video.SceneConfig(width=32, height=16, fps=10)
  good = synthetic_video.write_video(d, cfg, num_frames=30, preset="ultrafast").video.name
  data = (d / good).read_bytes()
  bad = {}
  (d / "zero.mp4").write_bytes(b"")
  bad["zero.mp4"] = "empty"
  (d / "not_a_video.mp4").write_bytes(b"\x00\x01garbage" * 500)
  bad["not_a_video.mp4"] = "cannot open container"
  # Cut short: the index (moov) at the end of the file is gone.
  (d / "truncated.mp4").write_bytes(data[:len(data) // 2])
  bad["truncated.mp4"] = "cannot open container"
  # Cut short with the index at the front (faststart): the index points past the end.
  fast = _write_mp4(d / "fast.tmp.mp4", movflags="faststart")
  (d / "fast.tmp.mp4").unlink()
  (d / "truncated_faststart.mp4").write_bytes(fast[:len(fast) * 2 // 3])
  bad["truncated_faststart.mp4"] = "truncated"
  # Audio only.
  with av.open(os.fspath(d / "audio_only.mp4"), "w") as c:
    s = c.add_stream("aac", rate=16000)
    for i in range(8):
      frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp",
                                         layout="mono")
      frame.sample_rate, frame.pts = 16000, i * 1024
      for p in s.encode(frame):
        c.mux(p)
    for p in s.encode():
      c.mux(p)
  bad["audio_only.mp4"] = "no video stream (streams: audio)"
  return [good], bad


def test_broken_videos_are_skipped_once_and_good_ones_stream(tmp_path, caplog):
  good, bad = make_video_corpus(tmp_path)
  with caplog.at_level(logging.WARNING):
    index = video.VideoIndex(tmp_path, video.VideoOptions(split="all"))
  assert [pathlib.Path(v.path).name for v in index.videos] == good
  reasons = {pathlib.Path(p).name: r for p, r in index.skipped}
  assert sorted(reasons) == sorted(bad)
  for name, fragment in bad.items():
    assert fragment in reasons[name], (name, reasons[name])
    assert sum(name in r.getMessage() for r in caplog.records) == 1, name
  frames = list(video.make_frame_dataset(index, shuffle=False, num_epochs=1))
  assert [int(e["frame"]) for e in frames] == list(range(30))
  # The same corpus as K-frame clips: only the good file is ever decoded.
  clips = video.VideoClipSource(index, clip_frames=3, num_records=2)
  assert clips[1]["frames"].shape == (3, 16, 32, 3)


def test_a_video_folder_with_nothing_usable_says_why(tmp_path):
  _, bad = make_video_corpus(tmp_path)
  for p in tmp_path.glob("cam*"):
    p.unlink()
  index = video.VideoIndex(tmp_path, video.VideoOptions())
  assert len(index.skipped) == len(bad) and not index.videos
  with pytest.raises(ValueError, match=f"0 usable videos, {len(bad)} skipped"):
    video.make_frame_dataset(index)


def test_a_training_folder_without_frames_of_the_split_is_one_line_naming_it(tmp_path):
  """Only night footage where day frames are asked for (DMGNIE's daytime memory, or its day stream): one
  InputError naming the folder and the day/night rule, the unreadable file among the videos named too."""
  from lowlight_jax import errors
  synthetic_video.write_video(tmp_path, synthetic_video.SceneConfig(width=32, height=16, fps=10, night=True),
                              num_frames=10, preset="ultrafast")
  (tmp_path / "cam01_20240601T120000.mp4").write_bytes(b"\x00\x01garbage" * 500)
  cfg = ml_collections.ConfigDict(video.default_video_config())
  cfg.root, cfg.split = os.fspath(tmp_path), "day"
  for clip_frames in (0, 3):
    cfg.clip_frames = clip_frames
    with pytest.raises(errors.InputError) as raised:
      video.make_train_dataset(cfg, batch_size=2, seed=0, shard_index=0, shard_count=1)
    message = str(raised.value)
    assert message.startswith(f"data.video.root {tmp_path}: no day frames in its 1 usable video(s), 1 unreadable "
                              f"(first: {tmp_path / 'cam01_20240601T120000.mp4'}"), message
    assert "from 7h to 19h" in message and "\n" not in message


def test_the_training_config_survives_bad_videos(tmp_path):
  make_video_corpus(tmp_path)
  cfg = ml_collections.ConfigDict(video.default_video_config())
  cfg.root = os.fspath(tmp_path)
  cfg.split = "all"
  cfg.shuffle_buffer = 8
  it = iter(video.make_train_dataset(cfg, batch_size=4, seed=0, shard_index=0, shard_count=1))
  batches = [next(it) for _ in range(20)]  # 80 frames: more than two passes over the good video.
  assert all(b["image"].shape == (4, 16, 32, 3) for b in batches)
  assert {int(f) for b in batches for f in b["frame"]} == set(range(30))
