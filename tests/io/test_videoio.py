"""lowlight_jax.io.videoio: streamed reading (rate, size, count, rotation), atomic MP4 and PNG-frame writing."""

import fractions
import os

import av
import numpy as np
import pytest
from PIL import Image

from lowlight_jax.io import videoio


def _frames(n, h, w):
  """Smooth gradients that move with the frame index (compress well, survive H.264 nearly intact)."""
  y, x = np.mgrid[0:h, 0:w]
  return [np.stack([x * 3 + i * 2, y * 4 + i, np.full_like(x, 40 + 2 * i)], -1).astype(np.uint8)
          for i in range(n)]


@pytest.mark.parametrize("size,fps,pix_fmt", [((32, 48), fractions.Fraction(12), "yuv420p"),
                                              ((33, 47), fractions.Fraction(30000, 1001), "yuv444p")])
def test_round_trip_keeps_count_size_and_rate(tmp_path, size, fps, pix_fmt):
  h, w = size
  frames = _frames(20, h, w)
  path = tmp_path / "v.mp4"
  assert videoio.write_video_atomic(path, iter(frames), fps=fps, width=w, height=h) == 20
  assert os.listdir(tmp_path) == ["v.mp4"]  # No temporary file left beside it.
  with av.open(str(path)) as c:
    stream = c.streams.video[0]
    assert stream.codec_context.name == "h264" and stream.codec_context.pix_fmt == pix_fmt
  with videoio.VideoReader(path) as reader:
    info = reader.info
    got = list(reader.frames())
  assert (info.width, info.height, info.num_frames, info.fps, info.rotation) == (w, h, 20, fps, 0)
  assert isinstance(info.fps, fractions.Fraction)
  assert len(got) == 20 and all(f.shape == (h, w, 3) and f.dtype == np.uint8 for f in got)
  err = np.mean([np.abs(a.astype(np.int16) - b).mean() for a, b in zip(got, frames)])
  assert err < 3  # Lossy, but the same pictures in the same order.
  assert np.abs(got[19].astype(np.int16) - frames[19]).mean() < np.abs(got[19].astype(np.int16) - frames[0]).mean()


def test_float_frames_and_single_iteration(tmp_path):
  path = tmp_path / "v.mp4"
  videoio.write_video_atomic(path, _frames(3, 16, 16), fps=5, width=16, height=16)
  with videoio.VideoReader(path) as reader:
    frames = list(reader.frames(np.float32))
    with pytest.raises(RuntimeError, match="only once"):
      next(reader.frames())
  assert len(frames) == 3 and frames[0].dtype == np.float32 and 0 <= frames[0].min() <= frames[0].max() <= 1


def test_display_rotation_is_applied(tmp_path):
  # Coded 48x32, left half red, right half blue; a -90 degree display matrix (phones' portrait
  # video, ffmpeg's "rotate=90") shows it turned 90 degrees clockwise: red on top, 32x48.
  arr = np.zeros((32, 48, 3), np.uint8)
  arr[:, :24, 0] = 255
  arr[:, 24:, 2] = 255
  path = tmp_path / "rot.mp4"
  with av.open(str(path), "w") as c:
    s = c.add_stream("libx264", rate=10)
    s.width, s.height, s.pix_fmt = 48, 32, "yuv420p"
    s.set_display_rotation(-90)
    for _ in range(2):
      c.mux(s.encode(av.VideoFrame.from_ndarray(arr, format="rgb24")))
    c.mux(s.encode(None))
  with videoio.VideoReader(path) as reader:
    assert (reader.info.width, reader.info.height, reader.info.rotation) == (32, 48, 270)
    frame = next(reader.frames())
  assert frame.shape == (48, 32, 3)
  assert frame[:20, :, 0].mean() > 200 and frame[:20, :, 2].mean() < 50
  assert frame[-20:, :, 2].mean() > 200 and frame[-20:, :, 0].mean() < 50


def test_failed_write_keeps_the_old_file_and_leaves_nothing(tmp_path):
  path = tmp_path / "v.mp4"
  path.write_bytes(b"old video")

  def frames():
    yield from _frames(3, 16, 16)
    raise OSError("decoder died")

  with pytest.raises(OSError, match="decoder died"):
    videoio.write_video_atomic(path, frames(), fps=5, width=16, height=16)
  with pytest.raises(ValueError, match="expected uint8"):
    videoio.write_video_atomic(path, _frames(2, 16, 18), fps=5, width=16, height=16)
  with pytest.raises(ValueError, match="no frames"):
    videoio.write_video_atomic(path, [], fps=5, width=16, height=16)
  assert path.read_bytes() == b"old video" and os.listdir(tmp_path) == ["v.mp4"]


def test_frames_folder_is_atomic(tmp_path):
  dest = tmp_path / "clip"
  assert videoio.write_frames_atomic(dest, _frames(4, 8, 10)) == 4
  assert sorted(os.listdir(dest)) == [f"{i:06d}.png" for i in range(4)]
  np.testing.assert_array_equal(np.asarray(Image.open(dest / "000003.png")), _frames(4, 8, 10)[3])
  with pytest.raises(FileExistsError):
    videoio.write_frames_atomic(dest, _frames(2, 8, 10))

  def failing():
    yield from _frames(2, 8, 10)
    raise OSError("boom")

  with pytest.raises(OSError, match="boom"):
    videoio.write_frames_atomic(dest, failing(), replace=True)
  assert len(os.listdir(dest)) == 4 and sorted(os.listdir(tmp_path)) == ["clip"]  # Old frames intact.
  assert videoio.write_frames_atomic(dest, _frames(2, 8, 10), replace=True) == 2
  assert sorted(os.listdir(dest)) == ["000000.png", "000001.png"] and sorted(os.listdir(tmp_path)) == ["clip"]


def test_bad_files_name_themselves(tmp_path):
  (tmp_path / "empty.mp4").write_bytes(b"")
  (tmp_path / "junk.mp4").write_bytes(b"not a video at all" * 10)
  for name, reason in (("empty.mp4", "empty file"), ("junk.mp4", "cannot open")):
    with pytest.raises(videoio.VideoDecodeError, match=reason) as e:
      videoio.VideoReader(tmp_path / name)
    assert name in str(e.value)
  with pytest.raises(FileNotFoundError):
    videoio.VideoReader(tmp_path / "missing.mp4")


def test_listing(tmp_path):
  for name in ("b.MOV", "a.mp4", ".hidden.mp4", "c.png", "d.webm"):
    (tmp_path / name).write_bytes(b"x")
  assert [p.name for p in videoio.list_videos(tmp_path)] == ["a.mp4", "b.MOV", "d.webm"]
  assert videoio.is_video("x.MKV") and not videoio.is_video("x.jpg")
  assert videoio.pixel_format(48, 32) == "yuv420p" and videoio.pixel_format(47, 32) == "yuv444p"
