"""launch.enhance on videos: an MP4 in, an H.264 MP4 out (same frame count, size and rate), or PNG frames."""

import fractions
import os

import av
import numpy as np
from PIL import Image
import pytest


def _make_mp4(path, n=20, w=48, h=32, fps=12):
  """A dark moving gradient, written with PyAV directly (not with the code under test)."""
  y, x = np.mgrid[0:h, 0:w]
  with av.open(str(path), "w") as c:
    s = c.add_stream("libx264", rate=fps)
    s.width, s.height, s.pix_fmt = w, h, "yuv420p" if w % 2 == h % 2 == 0 else "yuv444p"
    for i in range(n):
      rgb = np.stack([x + i, y + 2 * i, np.full_like(x, 10 + i)], -1).astype(np.uint8)
      c.mux(s.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")))
    c.mux(s.encode(None))


def _probe(path):
  with av.open(str(path)) as c:
    s = c.streams.video[0]
    frames = [f.to_ndarray(format="rgb24") for f in c.decode(s)]
    return dict(codec=s.codec_context.name, rate=s.average_rate, size=(s.width, s.height), frames=frames)


@pytest.fixture
def sgz(conformance_dir):
  return ["--method", "sgz", "--weights", str(conformance_dir / "weights" / "sgz_Epoch99.pth")]


def test_video_and_image_folder_to_mp4(tmp_path, run_module, sgz):
  src, out = tmp_path / "in", tmp_path / "out"
  src.mkdir()
  _make_mp4(src / "clip.mp4")
  _make_mp4(src / "odd.mov", n=5, w=25, h=15, fps=10)  # Odd size: kept, encoded as 4:4:4.
  Image.fromarray(np.full((36, 48, 3), 20, np.uint8)).save(src / "photo.jpg")
  result = run_module(["launch.enhance", *sgz, "--input", str(src), "--output", str(out), "--video-batch", "8"])
  assert result.returncode == 0, result.stderr[-3000:]
  assert sorted(os.listdir(out)) == ["clip.mp4", "odd.mp4", "photo.png"]
  assert "2 video(s) (25 frames)" in result.stdout
  assert "frame" in result.stderr  # The progress bar counts frames.
  src_info, got = _probe(src / "clip.mp4"), _probe(out / "clip.mp4")
  assert got["codec"] == "h264" and got["rate"] == fractions.Fraction(12) and got["size"] == (48, 32)
  assert len(got["frames"]) == 20
  # Enhanced (brighter) frame by frame, in order: later input frames are brighter, so are their outputs.
  means_in = [f.mean() for f in src_info["frames"]]
  means_out = [f.mean() for f in got["frames"]]
  assert all(o > i + 10 for i, o in zip(means_in, means_out))
  assert np.corrcoef(means_in, means_out)[0, 1] > 0.9
  odd = _probe(out / "odd.mp4")
  assert odd["size"] == (25, 15) and odd["rate"] == 10 and len(odd["frames"]) == 5


def test_frames_dir_writes_one_png_per_frame(tmp_path, run_module, sgz):
  src = tmp_path / "clip.mp4"
  _make_mp4(src, n=20)
  out = tmp_path / "frames"
  result = run_module(["launch.enhance", *sgz, "--input", str(src), "--output", str(out), "--frames-dir",
                       "--video-batch", "6", "--noprogress"])
  assert result.returncode == 0, result.stderr[-3000:]
  assert os.listdir(out) == ["clip"]
  names = sorted(os.listdir(out / "clip"))
  assert names == [f"{i:06d}.png" for i in range(20)]
  assert np.asarray(Image.open(out / "clip" / "000019.png")).shape == (32, 48, 3)
