"""Streamed video reading and atomic H.264 writing with PyAV (bottom I/O layer; no jax).

Used by `launch.enhance` (`lowlight_jax.inference.batch_enhance`) to enhance videos frame by frame
without ever holding a whole video in memory:

  * `VideoReader` decodes one frame at a time (RGB uint8 HxWx3, or float32 in [0, 1] like
    `imageio.read_image`) and knows the frame rate (an exact `fractions.Fraction`), the size and,
    when the container records it, the frame count. Like the EXIF orientation of photos, a display
    rotation recorded in the file (phones film portrait video as rotated landscape) is applied, so
    frames come out the way a player shows them. Files that cannot be opened or decoded raise
    `VideoDecodeError` naming the file.
  * `write_video_atomic` encodes a stream of frames as H.264 (libx264) in an MP4, at a constant
    frame rate, into a temporary file beside the target that is renamed over it only when the video
    is complete (`atomic_io.write_file_atomic`): a reader never sees a half-written MP4, and a
    failure mid-way leaves the old file (if any) as it was.
  * `write_frames_atomic` writes the frames as numbered PNGs (`000000.png`, ...) into a temporary
    folder beside the target folder and renames it into place at the end.

Pixel format and size: H.264 in 4:2:0 (`yuv420p`, what every player decodes) needs an even width and
height. Outputs always keep the input size, so even sizes are encoded as `yuv420p` (High profile)
and odd sizes as `yuv444p` (High 4:4:4 Predictive profile, which has no such constraint; ffmpeg,
VLC and mpv play it, some hardware decoders and browsers do not). Nothing is padded or cropped.
Colour conversion RGB <-> YUV is swscale's default (BT.601, limited range) both ways. Audio is not
copied. Variable-frame-rate inputs are written at their average frame rate.
"""

from __future__ import annotations

import dataclasses
import fractions
import os
import pathlib
import shutil
import tempfile
from typing import Iterable, Iterator

import av
import numpy as np
from PIL import Image

from lowlight_jax.io import atomic_io

PathLike = str | os.PathLike

#: File extensions treated as videos (case-insensitive); the same list as `data_pipelines.video`.
VIDEO_EXTENSIONS = ('.mp4', '.m4v', '.mov', '.mkv', '.webm', '.avi', '.ts', '.mts', '.mpg', '.mpeg',
                    '.flv', '.3gp')

#: x264 constant rate factor of `write_video_atomic` (18: visually lossless for most content).
DEFAULT_CRF = 18

_DECODE_ERRORS = (av.error.FFmpegError, OSError, EOFError, ValueError, IndexError)


class VideoDecodeError(ValueError):
  """A video file cannot be opened or decoded; the message names the file and the reason."""

  def __init__(self, path: PathLike, reason: str):
    self.path = os.fspath(path)
    self.reason = reason
    super().__init__(f'cannot decode video {self.path!r}: {reason}')

  def __reduce__(self):
    return (type(self), (self.path, self.reason))


def is_video(path: PathLike) -> bool:
  """Whether `path` has a video file extension."""
  return pathlib.Path(path).suffix.lower() in VIDEO_EXTENSIONS


def list_videos(directory: PathLike) -> list[pathlib.Path]:
  """Video files directly inside `directory` (not recursive; hidden files ignored), sorted by name.

  Raises:
    NotADirectoryError: `directory` does not exist or is not a directory.
  """
  directory = pathlib.Path(directory)
  if not directory.is_dir():
    raise NotADirectoryError(f'not a directory: {os.fspath(directory)!r}')
  return sorted(p for p in directory.iterdir()
                if p.is_file() and not p.name.startswith('.') and is_video(p))


@dataclasses.dataclass(frozen=True)
class VideoInfo:
  """A video as `VideoReader` yields it.

  Attributes:
    path: the file.
    fps: frames per second, exact (e.g. Fraction(30000, 1001)).
    width, height: frame size as displayed (after `rotation`).
    num_frames: frame count recorded in the container, or None when it records none (MKV, WebM).
    rotation: counter-clockwise degrees (0, 90, 180, 270) applied to the coded frames.
  """

  path: str
  fps: fractions.Fraction
  width: int
  height: int
  num_frames: int | None
  rotation: int = 0


def _rotation_steps(frame: av.VideoFrame) -> int:
  """Quarter turns (counter-clockwise, `np.rot90`'s k) of the frame's display matrix."""
  try:
    degrees = frame.rotation
  except (AttributeError, ValueError):
    return 0
  if not degrees or degrees % 90:
    return 0  # None, 0, or a non-right angle (not produced by cameras): shown as coded.
  return int(round(degrees / 90)) % 4


class VideoReader:
  """Sequential reader of one video; use as a context manager.

  Opening decodes the first frame (so a file that cannot be decoded fails here, naming itself).
  `frames()` can be iterated once.
  """

  def __init__(self, path: PathLike, *, threads: bool = True):
    self.path = os.fspath(path)
    if not os.path.exists(self.path):
      raise FileNotFoundError(f'video file not found: {self.path!r}')
    if os.path.getsize(self.path) == 0:
      raise VideoDecodeError(self.path, 'empty file (0 bytes)')
    try:
      self._container = av.open(self.path, 'r')
    except _DECODE_ERRORS as e:
      raise VideoDecodeError(self.path, f'cannot open container: {type(e).__name__}: {e}') from e
    try:
      if not self._container.streams.video:
        kinds = sorted({s.type for s in self._container.streams}) or ['none']
        raise VideoDecodeError(self.path, f'no video stream (streams: {", ".join(kinds)})')
      stream = self._container.streams.video[0]
      if threads:
        stream.thread_type = 'AUTO'
      rate = stream.average_rate or stream.guessed_rate or stream.base_rate
      if not rate or rate <= 0:
        raise VideoDecodeError(self.path, 'unknown frame rate')
      self._decoded = self._container.decode(stream)
      try:
        self._first = next(self._decoded)
      except StopIteration:
        raise VideoDecodeError(self.path, 'video stream has no frames') from None
      except _DECODE_ERRORS as e:
        raise VideoDecodeError(self.path,
                               f'first frame does not decode: {type(e).__name__}: {e}') from e
      self._k = _rotation_steps(self._first)
      w, h = self._first.width, self._first.height
      if self._k % 2:
        w, h = h, w
      self.info = VideoInfo(path=self.path, fps=fractions.Fraction(rate), width=w, height=h,
                            num_frames=int(stream.frames) or None, rotation=90 * self._k)
    except BaseException:
      self._container.close()
      raise
    self._started = False

  def __enter__(self) -> 'VideoReader':
    return self

  def __exit__(self, *exc) -> None:
    self.close()

  def close(self) -> None:
    self._container.close()

  def _to_array(self, frame: av.VideoFrame, index: int) -> np.ndarray:
    rgb = frame.to_ndarray(format='rgb24')
    if self._k:
      rgb = np.ascontiguousarray(np.rot90(rgb, self._k))
    if rgb.shape[:2] != (self.info.height, self.info.width):
      raise VideoDecodeError(
          self.path, f'frame {index} is {rgb.shape[1]}x{rgb.shape[0]}, the video started at '
          f'{self.info.width}x{self.info.height} (size changes mid-stream are not supported)')
    return rgb

  def frames(self, dtype: str | np.dtype = np.uint8) -> Iterator[np.ndarray]:
    """Yields the frames in display order: HxWx3 RGB uint8, or float32 in [0, 1] for
    `dtype=np.float32`. Decoding errors mid-stream raise VideoDecodeError naming the frame."""
    if self._started:
      raise RuntimeError(f'frames() of {self.path!r} can be iterated only once')
    self._started = True
    as_float = np.dtype(dtype) == np.float32
    if not as_float and np.dtype(dtype) != np.uint8:
      raise ValueError(f'dtype must be uint8 or float32, got {dtype}')
    index = 0
    frame = self._first
    self._first = None
    while frame is not None:
      rgb = self._to_array(frame, index)
      if as_float:
        out = rgb.astype(np.float32)
        out *= np.float32(1 / 255)
        yield out
      else:
        yield rgb
      index += 1
      try:
        frame = next(self._decoded)
      except StopIteration:
        frame = None
      except _DECODE_ERRORS as e:
        raise VideoDecodeError(self.path,
                               f'frame {index} does not decode: {type(e).__name__}: {e}') from e


def pixel_format(width: int, height: int) -> str:
  """`yuv420p` for even sizes, `yuv444p` when the width or height is odd (see module docstring)."""
  return 'yuv420p' if width % 2 == 0 and height % 2 == 0 else 'yuv444p'


def _check_frame(frame: np.ndarray, index: int, width: int, height: int) -> np.ndarray:
  frame = np.asarray(frame)
  if frame.dtype != np.uint8 or frame.shape != (height, width, 3):
    raise ValueError(f'frame {index}: expected uint8 {(height, width, 3)}, got '
                     f'{frame.dtype}{frame.shape}')
  return np.ascontiguousarray(frame)


def write_video_atomic(path: PathLike, frames: Iterable[np.ndarray], *, fps: fractions.Fraction | float,
                       width: int, height: int, crf: int = DEFAULT_CRF,
                       preset: str = 'medium') -> int:
  """Encodes `frames` (uint8 HxWx3 RGB, consumed one at a time) as an H.264 MP4 at `path`.

  Frame i gets the timestamp i / fps (constant frame rate). The file appears at `path` only when
  every frame is encoded; on any error (including one raised by the `frames` iterator) the
  temporary file is removed and an existing `path` is untouched.

  Returns:
    The number of frames written.

  Raises:
    ValueError: a frame of another size or type, or no frames at all.
  """
  rate = fractions.Fraction(fps).limit_denominator(1_000_000)
  if rate <= 0:
    raise ValueError(f'fps must be positive, got {fps}')
  count = 0

  def write(f) -> None:
    nonlocal count
    container = av.open(f, 'w', format='mp4')
    try:
      stream = container.add_stream('libx264', rate=rate)
      stream.width, stream.height = width, height
      stream.pix_fmt = pixel_format(width, height)
      stream.codec_context.time_base = 1 / rate
      stream.options = {'crf': str(crf), 'preset': preset}
      for frame in frames:
        vf = av.VideoFrame.from_ndarray(_check_frame(frame, count, width, height), format='rgb24')
        vf.pts = count
        vf.time_base = stream.codec_context.time_base
        container.mux(stream.encode(vf))
        count += 1
      if not count:
        raise ValueError(f'no frames to write to {os.fspath(path)!r}')
      container.mux(stream.encode(None))
    finally:
      container.close()

  atomic_io.write_file_atomic(path, write)
  return count


def write_frames_atomic(directory: PathLike, frames: Iterable[np.ndarray], *,
                        replace: bool = False) -> int:
  """Writes `frames` (uint8 HxWx3) as `directory/000000.png`, `000001.png`, ...

  The PNGs go to a temporary folder beside `directory`, renamed to `directory` at the end, so the
  folder only ever appears complete. An existing `directory` is an error unless `replace`, in which
  case it is swapped out and deleted once the new folder is in place.

  Returns:
    The number of frames written.
  """
  directory = pathlib.Path(directory)
  if directory.exists() and not replace:
    raise FileExistsError(f'{os.fspath(directory)!r} exists')
  if directory.exists() and not directory.is_dir():
    raise NotADirectoryError(f'{os.fspath(directory)!r} exists and is not a folder')
  directory.parent.mkdir(parents=True, exist_ok=True)
  tmp = pathlib.Path(tempfile.mkdtemp(dir=directory.parent, prefix=f'.{directory.name}.',
                                      suffix='.tmp'))
  count = 0
  try:
    for frame in frames:
      frame = np.asarray(frame)
      if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[-1] != 3:
        raise ValueError(f'frame {count}: expected uint8 HxWx3, got {frame.dtype}{frame.shape}')
      Image.fromarray(frame).save(tmp / f'{count:06d}.png', format='PNG')
      count += 1
    if not count:
      raise ValueError(f'no frames to write to {os.fspath(directory)!r}')
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes 0700 folders; give what mkdir would.
    if directory.exists():
      old = pathlib.Path(tempfile.mkdtemp(dir=directory.parent, prefix=f'.{directory.name}.',
                                          suffix='.old'))
      os.replace(directory, old / directory.name)
      try:
        os.replace(tmp, directory)
      except BaseException:
        os.replace(old / directory.name, directory)  # Put the old frames back.
        shutil.rmtree(old, ignore_errors=True)
        raise
      shutil.rmtree(old, ignore_errors=True)
    else:
      os.replace(tmp, directory)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  return count
