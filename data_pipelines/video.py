"""grain sources over long fixed-camera videos, streamed with PyAV: frames, K-frame clips, day/night

DMGNIE (Daytime-Memory Guided Nighttime Image Enhancement; seed `000_f6de8f8b0015d52c`) trains on
weeks of road-intersection footage: SegBMN consumes K daytime frames of ONE camera spread over time,
and the enhancement GAN takes unpaired night and day frames. Nobody can hold such videos in memory,
and decoding a random frame costs a seek plus the decode of its group of pictures (GOP), so this
module never decodes a whole video and never seeks per frame:

  * Indexing reads container metadata only (`probe_video`): frame count, rate, time base, and the
    keyframe positions from the demuxer's index (MP4/MOV `stss`); containers without a frame count
    (MKV, WebM, some AVI) fall back to a packet scan (demux only, no decoding).
  * Each video is cut into segments of ~`segment_seconds`, snapped to keyframes when the index has
    them, so reaching a segment costs one seek and no wasted decoding.
  * Shuffling happens at segment level (grain `MapDataset.shuffle`, reshuffled every epoch) and then
    within a window of decoded frames (`WindowShuffleIterDataset`); a segment is decoded
    sequentially and consecutive segments of one file continue without seeking.
  * Sharding: JAX processes take contiguous, disjoint blocks of segments (`shard_index` of
    `shard_count`); grain worker processes (`mp_prefetch`) take strided, disjoint slices of each
    process's segment stream.
  * The iterator position (segment position + frames already emitted) is a small dict: grain
    `get_state`/`set_state` and Orbax checkpointing restore it exactly; restoring seeks to the
    segment and skips the emitted frames without converting them.
  * Day/night: by wall-clock time, from a timestamp in the file name (`cam03_20240601T221500.mp4`,
    `2024-06-01_22-15-00.mkv`, ...) or the container's `creation_time`, evaluated per segment (a
    video spanning dusk is split correctly); without a timestamp, by the median luma of a few
    sampled frames against a threshold, computed once per file and cached (in-process and
    optionally in a JSON file).
  * Camera (scene) id: the file-name prefix before the timestamp, else the parent folder, else the
    file stem; ids are the sorted camera names' positions.
  * Bad files (empty, truncated, not a video, no video stream, undecodable) are skipped with ONE
    warning naming the file and the reason and listed in `skipped` as (path, reason). Files that
    pass the probe but fail mid-decode end their segment early; the failure is logged once per file
    and appended to `skipped` of the process that saw it (grain workers keep their own lists).

Elements are dicts of numpy values (no jax here: this runs in grain workers):
  frames: {'image': float32 HxWx3 RGB in [0, 1] (uint8 with dtype='uint8'), 'camera': int32,
    'video': int32, 'frame': int64 (index in its video), 'time': float32 (seconds since the video
    start), 'night': bool}
  clips (`VideoClipSource`): {'frames': float32 KxHxWx3, 'camera': int32, 'video': int32[K],
    'frame': int64[K], 'time': float32[K]} (+ 'masks': bool KxHxW from synthetic ground truth).

Frame stride / fps resampling select frames by index over the whole video (not per segment), so the
selection does not depend on segmentation: with `fps`, frame i is kept when floor(i * fps / native)
increases (the first frame of every output period; never upsamples); `stride` then keeps every n-th.

Assumptions (documented, checked where cheap): constant frame rate; a frame's index is
round((pts - start) * time_base * rate). With B-frames, index entries are in decode order; keyframes
of closed GOPs (what encoders write by default) keep their display index.
"""

from __future__ import annotations

import bisect
import copy
import dataclasses
import datetime
import fractions
import functools
import json
import logging
import math
import os
import pathlib
import re
import tempfile
import threading
import zlib
from typing import Any, Callable, Iterator, Sequence

import av
import grain
import numpy as np

log = logging.getLogger(__name__)

VIDEO_EXTENSIONS = ('.mp4', '.m4v', '.mov', '.mkv', '.webm', '.avi', '.ts', '.mts', '.mpg', '.mpeg',
                    '.flv', '.3gp')

_TIMESTAMP_RE = re.compile(
    r'(?<!\d)(\d{4})-?(\d{2})-?(\d{2})[T_ -]?(\d{2})[-:h]?(\d{2})[-:m]?(\d{2})(?!\d)')

# PyAV/FFmpeg raise FFmpegError subclasses for bad data; some container errors surface as OSError,
# EOFError or ValueError. None of these may crash a run.
_DECODE_ERRORS = (av.error.FFmpegError, OSError, EOFError, ValueError, IndexError, StopIteration)


class VideoDecodeError(ValueError):
  """A video file cannot be used; the message names the file and the reason."""

  def __init__(self, path: str | os.PathLike, reason: str):
    self.path = os.fspath(path)
    self.reason = reason
    super().__init__(f'cannot decode video {self.path!r}: {reason}')

  def __reduce__(self):
    # Picklable across grain worker processes (two-argument constructor).
    return (type(self), (self.path, self.reason))


# ---------------------------------------------------------------------------------------------
# Probing.
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class VideoInfo:
  """What indexing needs to know about one video, from its container metadata.

  Attributes:
    path: the file.
    num_frames: frames in the video stream.
    rate: frames per second (exact fraction, as `num/den`).
    time_base: seconds per pts tick (exact fraction).
    start_pts: pts of the first frame.
    width, height: coded frame size.
    keyframes: frame indices of keyframes (sorted, starting with 0); empty when unknown.
    wall_start: ISO timestamp of the first frame, from the file name or `creation_time`; '' if none.
    count_source: 'metadata' or 'packet_scan' (how num_frames was obtained).
  """

  path: str
  num_frames: int
  rate: fractions.Fraction
  time_base: fractions.Fraction
  start_pts: int
  width: int
  height: int
  keyframes: tuple[int, ...]
  wall_start: str
  count_source: str

  @property
  def fps(self) -> float:
    return float(self.rate)

  @property
  def duration(self) -> float:
    return self.num_frames / self.fps

  def frame_index(self, pts: int) -> int:
    """Display index of the frame with this pts (constant frame rate)."""
    return int(round((pts - self.start_pts) * self.time_base * self.rate))

  def frame_pts(self, index: int) -> int:
    """pts at which frame `index` starts (for seeking)."""
    return self.start_pts + int(math.floor(index / (self.rate * self.time_base)))

  def wall_time(self, seconds: float) -> datetime.datetime | None:
    if not self.wall_start:
      return None
    return datetime.datetime.fromisoformat(self.wall_start) + datetime.timedelta(seconds=seconds)


def parse_timestamp(text: str) -> datetime.datetime | None:
  """The first plausible YYYYMMDD[T_-]HHMMSS timestamp (with optional separators) in `text`."""
  for m in _TIMESTAMP_RE.finditer(text):
    try:
      return datetime.datetime(*(int(g) for g in m.groups()))
    except ValueError:  # 20241399_... is not a date; try the next match.
      continue
  return None


def camera_name(path: str | os.PathLike, root: str | os.PathLike | None = None) -> str:
  """Camera of a video: the file-name prefix before its timestamp, else the parent folder (when
  below `root`), else the file stem. `cam03_20240601T120000.mp4` -> 'cam03'; `site7/0001.mp4` ->
  'site7'."""
  path = pathlib.Path(path)
  m = _TIMESTAMP_RE.search(path.stem)
  if m and parse_timestamp(path.stem) is not None:
    prefix = path.stem[:m.start()].rstrip('_- .')
    if prefix:
      return prefix
  parent = path.parent
  if root is not None:
    try:
      rel = parent.resolve().relative_to(pathlib.Path(root).resolve())
      if rel.parts:
        return '/'.join(rel.parts)
    except ValueError:
      pass
  elif m:
    return parent.name or path.stem
  return path.stem


def _open(path: str) -> av.container.InputContainer:
  if not os.path.exists(path):
    raise FileNotFoundError(f'video file not found: {path!r}')
  if os.path.getsize(path) == 0:
    raise VideoDecodeError(path, 'empty file (0 bytes)')
  try:
    container = av.open(path, 'r')
  except _DECODE_ERRORS as e:
    raise VideoDecodeError(path, f'cannot open container: {type(e).__name__}: {e}') from e
  if not container.streams.video:
    kinds = sorted({s.type for s in container.streams}) or ['none']
    container.close()
    raise VideoDecodeError(path, f'no video stream (streams: {", ".join(kinds)})')
  return container


def probe_video(path: str | os.PathLike) -> VideoInfo:
  """Reads a video's metadata and checks that its first frame decodes.

  Cost: opening the container, reading its index, decoding one frame (plus a demux-only packet scan
  when the container has no frame count). Raises VideoDecodeError for unusable files.
  """
  path = os.fspath(path)
  container = _open(path)
  try:
    stream = container.streams.video[0]
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    if not rate or rate <= 0:
      raise VideoDecodeError(path, 'unknown frame rate')
    rate = fractions.Fraction(rate)
    time_base = fractions.Fraction(stream.time_base)
    size = os.path.getsize(path)
    num_frames = int(stream.frames or 0)
    count_source = 'metadata'
    keyframes: list[int] = []
    entries = stream.index_entries
    n_entries = len(entries) if entries is not None else 0
    if num_frames and n_entries == num_frames:
      end = 0
      for i, e in enumerate(entries):
        if e.is_keyframe:
          keyframes.append(i)
        end = max(end, e.pos + e.size)
      if end > size:
        raise VideoDecodeError(
            path, f'truncated: frame data extends to byte {end} but the file has {size} bytes')
    start_pts = stream.start_time if stream.start_time is not None else 0
    if not num_frames:
      # No frame count in the container: count packets (demux only; no decoding).
      count_source = 'packet_scan'
      first_pts = None
      try:
        for packet in container.demux(stream):
          if packet.size == 0 or packet.pts is None and packet.dts is None:
            continue
          if packet.is_keyframe:
            keyframes.append(num_frames)
          pts = packet.pts if packet.pts is not None else packet.dts
          first_pts = pts if first_pts is None else min(first_pts, pts)
          num_frames += 1
      except _DECODE_ERRORS as e:
        raise VideoDecodeError(path, f'packet scan failed: {type(e).__name__}: {e}') from e
      if stream.start_time is None and first_pts is not None:
        start_pts = first_pts
      container.seek(0)
    if num_frames <= 0:
      raise VideoDecodeError(path, 'video stream has no frames')
    try:
      first = next(container.decode(stream))
    except _DECODE_ERRORS as e:
      raise VideoDecodeError(path, f'first frame does not decode: {type(e).__name__}: {e}') from e
    if first.pts is not None and stream.start_time is None:
      start_pts = first.pts
    keyframes = sorted(set(keyframes) | {0}) if keyframes else []
    stamp = parse_timestamp(pathlib.Path(path).name)
    if stamp is None:
      created = container.metadata.get('creation_time') or stream.metadata.get('creation_time')
      if created:
        try:
          stamp = datetime.datetime.fromisoformat(created.replace('Z', '+00:00'))
          stamp = stamp.replace(tzinfo=None)
        except ValueError:
          stamp = None
    return VideoInfo(path=path, num_frames=num_frames, rate=rate, time_base=time_base,
                     start_pts=int(start_pts), width=first.width, height=first.height,
                     keyframes=tuple(keyframes), wall_start=stamp.isoformat() if stamp else '',
                     count_source=count_source)
  finally:
    container.close()


def list_videos(root: str | os.PathLike) -> list[pathlib.Path]:
  """Video files under `root` (recursive), sorted; hidden files and folders are ignored."""
  root = pathlib.Path(root)
  if root.is_file():
    return [root]
  if not root.is_dir():
    raise NotADirectoryError(f'not a directory: {os.fspath(root)!r}')
  out = []
  for dirpath, dirnames, filenames in os.walk(root):
    dirnames[:] = sorted(d for d in dirnames if not d.startswith('.'))
    out.extend(pathlib.Path(dirpath) / f for f in filenames
               if not f.startswith('.') and pathlib.Path(f).suffix.lower() in VIDEO_EXTENSIONS)
  return sorted(out)


# ---------------------------------------------------------------------------------------------
# Decoding.
# ---------------------------------------------------------------------------------------------


def _to_rgb(frame: av.VideoFrame, size: tuple[int, int] | None) -> np.ndarray:
  """RGB uint8 HxWx3, resized with swscale (area filter) when `size` = (h, w) is given."""
  kwargs = dict(format='rgb24', threads=1)  # threads=1: one core per grain worker, as measured.
  if size is not None and (frame.height, frame.width) != tuple(size):
    kwargs.update(height=size[0], width=size[1], interpolation='AREA')
  return frame.to_ndarray(**kwargs)


def to_float(rgb: np.ndarray) -> np.ndarray:
  """uint8 -> float32 in [0, 1]."""
  out = rgb.astype(np.float32)
  out *= np.float32(1 / 255)  # In place: half the time of a casting multiply.
  return out


class FrameDecoder:
  """Sequential reader of one video that seeks only when it must.

  `read(start, end, keep)` yields (index, frame) for kept frames with start <= index < end. When the
  previous read stopped at `start`, or `start` lies in the GOP the decoder is already in, decoding
  simply continues; otherwise it seeks to the keyframe at or before `start`.
  """

  def __init__(self, info: VideoInfo, *, size: tuple[int, int] | None = None, threads: int = 1):
    self.info = info
    self.size = tuple(size) if size else None
    self._container = _open(info.path)
    self._stream = self._container.streams.video[0]
    self._stream.codec_context.thread_count = max(0, int(threads))
    if threads != 1:
      self._stream.thread_type = 'AUTO'
    self._frames: Iterator[av.VideoFrame] | None = None
    self._pending: tuple[int, av.VideoFrame] | None = None
    self._next = -1  # Index of the next frame the decoder will produce; -1: unknown (seek).
    self._last = -1

  def close(self) -> None:
    self._frames = None
    self._pending = None
    self._container.close()

  def _keyframe_at_or_before(self, index: int) -> int:
    kf = self.info.keyframes
    if not kf:
      return index
    return kf[max(0, bisect.bisect_right(kf, index) - 1)]

  def _position(self, start: int) -> None:
    if self._frames is not None and 0 <= self._next <= start:
      if self._next == start or self._keyframe_at_or_before(start) <= self._next:
        return  # Decoding forward is no more work than seeking.
      if not self.info.keyframes and start - self._next <= 2 * self.info.fps:
        return
    self._pending = None
    self._container.seek(self.info.frame_pts(start), stream=self._stream, backward=True,
                         any_frame=False)
    self._frames = self._container.decode(self._stream)
    self._next = -1
    self._last = -1

  def _next_frame(self) -> tuple[int, av.VideoFrame] | None:
    if self._pending is not None:
      out, self._pending = self._pending, None
      return out
    frame = next(self._frames, None)
    if frame is None:
      return None
    if frame.pts is not None:
      index = self.info.frame_index(frame.pts)
    else:  # No timestamps (rare raw streams): count.
      index = self._last + 1
    self._last = index
    return index, frame

  def read(self, start: int, end: int, keep: Callable[[int], bool] = lambda i: True,
           skip: int = 0, convert: bool = True) -> Iterator[tuple[int, np.ndarray | None]]:
    """Yields (index, RGB uint8 HxWx3 frame) for kept frames in [start, end), in order.

    The first `skip` kept frames are decoded but neither converted nor yielded (checkpoint restore).
    With convert=False frames are yielded as None (counting). Raises VideoDecodeError if the stream
    is corrupt.
    """
    try:
      self._position(start)
      last_yielded = -1
      while True:
        item = self._next_frame()
        if item is None:
          self._frames, self._next = None, -1
          return
        index, frame = item
        if index >= end:
          self._pending, self._next = item, index
          return
        self._next = index + 1
        # Duplicate timestamps (VFR input) must not yield one index twice.
        if index < start or index <= last_yielded or not keep(index):
          continue
        last_yielded = index
        if skip > 0:
          skip -= 1
          continue
        yield index, (_to_rgb(frame, self.size) if convert else None)
    except Exception as e:  # pylint: disable=broad-except  (GeneratorExit passes through)
      if not isinstance(e, _DECODE_ERRORS):
        raise
      self._frames, self._pending, self._next = None, None, -1
      raise VideoDecodeError(self.info.path,
                             f'decoding failed near frame {start}: {type(e).__name__}: {e}') from e

  def read_frame(self, index: int) -> np.ndarray:
    """The uint8 frame at `index` (or the first decodable one after it, for files with gaps)."""
    for _, frame in self.read(index, self.info.num_frames):
      return frame
    raise VideoDecodeError(self.info.path, f'no frame at or after index {index}')


# ---------------------------------------------------------------------------------------------
# Day / night.
# ---------------------------------------------------------------------------------------------


class LumaCache:
  """Median frame luma per video file, keyed by (absolute path, size, mtime); JSON on disk if given.

  Writes are atomic (temp file + rename); concurrent writers may lose each other's entries, never
  corrupt the file. Entries of other files are preserved.
  """

  def __init__(self, path: str | os.PathLike | None = None):
    self.path = pathlib.Path(path) if path else None
    self._lock = threading.Lock()
    self._mem: dict[str, float] = {}
    if self.path is not None and self.path.is_file():
      try:
        self._mem.update(json.loads(self.path.read_text()))
      except (OSError, ValueError) as e:
        log.warning('ignoring unreadable luma cache %r: %s', os.fspath(self.path), e)

  @staticmethod
  def key(path: str | os.PathLike, samples: int) -> str:
    st = os.stat(path)
    return f'{os.path.abspath(path)}|{st.st_size}|{st.st_mtime_ns}|{samples}'

  def get(self, key: str) -> float | None:
    with self._lock:
      return self._mem.get(key)

  def put(self, key: str, value: float) -> None:
    with self._lock:
      self._mem[key] = value
      if self.path is None:
        return
      self.path.parent.mkdir(parents=True, exist_ok=True)
      fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f'.{self.path.name}.', suffix='.tmp')
      with os.fdopen(fd, 'w') as f:
        json.dump(self._mem, f)
      os.replace(tmp, self.path)


_PROCESS_LUMA_CACHE = LumaCache()


def median_luma(info: VideoInfo, samples: int = 5) -> float:
  """Median over `samples` evenly spaced frames of the mean Rec.601 luma (sRGB values in [0, 1])."""
  decoder = FrameDecoder(info, size=(36, max(2, int(round(36 * info.width / info.height)))))
  try:
    lumas = []
    for k in range(samples):
      frame = decoder.read_frame(int((k + 0.5) * info.num_frames / samples))
      lumas.append(float((to_float(frame) @ np.array([0.299, 0.587, 0.114], np.float32)).mean()))
  finally:
    decoder.close()
  return float(np.median(lumas))


def is_night_by_luma(info: VideoInfo, *, threshold: float = 0.2, samples: int = 5,
                     cache: LumaCache | None = None) -> bool:
  """Night when the median sampled luma is below `threshold` (cached per file)."""
  cache = cache or _PROCESS_LUMA_CACHE
  key = LumaCache.key(info.path, samples)
  luma = cache.get(key)
  if luma is None:
    luma = median_luma(info, samples)
    cache.put(key, luma)
  return luma < threshold


# ---------------------------------------------------------------------------------------------
# Index.
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, kw_only=True)
class VideoOptions:
  """How videos are indexed, selected and decoded.

  Attributes:
    split: 'day', 'night' or 'all' frames.
    segment_seconds: target segment length (the unit of shuffling, sharding and seeking).
    fps: resample to this rate by keeping the first frame of each output period; 0 = native rate.
    stride: then keep every `stride`-th frame.
    size: (height, width) to resize decoded frames to (swscale, area); None = native size.
    day_hours: [start, end) local hours counted as day when a wall-clock timestamp is known.
    luma_threshold, luma_samples: day/night by median luma when no timestamp is known.
    luma_cache: JSON file caching the sampled luma per file ('' = in-process only).
    decoder_threads: FFmpeg decoding threads per decoder (1 per grain worker is the efficient
      choice).
  """

  split: str = 'all'
  segment_seconds: float = 4.0
  fps: float = 0.0
  stride: int = 1
  size: tuple[int, int] | None = None
  day_hours: tuple[float, float] = (7.0, 19.0)
  luma_threshold: float = 0.2
  luma_samples: int = 5
  luma_cache: str = ''
  decoder_threads: int = 1

  def __post_init__(self):
    if self.split not in ('day', 'night', 'all'):
      raise ValueError(f"split must be 'day', 'night' or 'all', got {self.split!r}")
    if self.segment_seconds <= 0 or self.stride < 1 or self.fps < 0:
      raise ValueError(f'invalid segment_seconds/stride/fps in {self}')
    if self.size is not None:
      object.__setattr__(self, 'size', tuple(int(s) for s in self.size))


@dataclasses.dataclass(frozen=True)
class Segment:
  """Frames [start, end) of video `video`, all of one camera and one lighting."""

  video: int
  start: int
  end: int
  night: bool


class FrameSelector:
  """Keeps frame i of a video at native rate `rate` per the fps/stride rule (module docstring)."""

  def __init__(self, rate: fractions.Fraction, fps: float, stride: int):
    target = fractions.Fraction(fps).limit_denominator(1001) if fps else None
    self.ratio = target / rate if target is not None and target < rate else None
    self.stride = stride

  def rank(self, i: int) -> int:
    """Output-period number of frame i (its position in the resampled stream)."""
    return i if self.ratio is None else math.floor(i * self.ratio)

  def __call__(self, i: int) -> bool:
    r = self.rank(i)
    if self.ratio is not None and i > 0 and math.floor((i - 1) * self.ratio) == r:
      return False
    return r % self.stride == 0

  def count(self, start: int, end: int) -> int:
    """Kept frames in [start, end) (O(1) without fps resampling)."""
    if self.ratio is None:
      return max(0, (end - 1) // self.stride - (start - 1) // self.stride) if end > start else 0
    return sum(1 for i in range(start, end) if self(i))


class VideoIndex:
  """Probed videos, their cameras and their segments; bad files are skipped and listed.

  Attributes:
    videos: VideoInfo of every usable file, sorted by path.
    cameras: sorted camera names; `video_camera[v]` is the camera id of video v.
    segments: all segments of the requested split, ordered by (video, start).
    skipped: [(path, reason)] of unusable files.
  """

  def __init__(self, paths: Sequence[str | os.PathLike] | str | os.PathLike,
               options: VideoOptions = VideoOptions(), *, root: str | os.PathLike | None = None):
    if isinstance(paths, (str, os.PathLike)):
      root = paths if root is None else root
      paths = list_videos(paths)
    self.options = options
    self.skipped: list[tuple[str, str]] = []
    self._skip_lock = threading.Lock()
    self.videos: list[VideoInfo] = []
    for p in sorted(os.fspath(p) for p in paths):
      try:
        self.videos.append(_cached_probe(p, *_stat_key(p)))
      except VideoDecodeError as e:
        self.skip(e.path, e.reason)
    names = [camera_name(v.path, root) for v in self.videos]
    self.cameras = sorted(set(names))
    self.video_camera = [self.cameras.index(n) for n in names]
    self.selectors = [FrameSelector(v.rate, options.fps, options.stride) for v in self.videos]
    cache = LumaCache(options.luma_cache) if options.luma_cache else None
    self.segments: list[Segment] = []
    for vi, info in enumerate(self.videos):
      try:
        self.segments.extend(self._segments_of(vi, info, cache))
      except VideoDecodeError as e:  # A luma probe can still hit a corrupt stretch.
        self.skip(e.path, e.reason)

  def skip(self, path: str, reason: str) -> None:
    """Logs one warning naming the file and the reason, once per file, and lists it in `skipped`."""
    with self._skip_lock:
      if any(p == path for p, _ in self.skipped):
        return
      self.skipped.append((path, reason))
    log.warning('video: skipping %r: %s', path, reason)

  def __getstate__(self) -> dict[str, Any]:
    state = self.__dict__.copy()
    del state['_skip_lock']
    return state

  def __setstate__(self, state: dict[str, Any]) -> None:
    self.__dict__.update(state)
    self._skip_lock = threading.Lock()

  def _boundaries(self, info: VideoInfo) -> list[int]:
    """Segment starts: multiples of segment_seconds, each snapped to the next keyframe if known."""
    n = info.num_frames
    step = max(1, int(round(self.options.segment_seconds * info.fps)))
    nominal = range(0, n, step)
    if not info.keyframes:
      return list(nominal)
    kf = info.keyframes
    out = [0]
    for b in nominal[1:]:
      k = kf[bisect.bisect_left(kf, b)] if bisect.bisect_left(kf, b) < len(kf) else n
      # A keyframe within half a segment is used; otherwise cut at b (costs a partial GOP decode).
      k = k if k - b <= step // 2 else b
      if k > out[-1] and k < n:
        out.append(k)
    return out

  def _segments_of(self, vi: int, info: VideoInfo, cache: LumaCache | None) -> list[Segment]:
    opts = self.options
    starts = self._boundaries(info)
    ends = starts[1:] + [info.num_frames]
    night_by_luma = None
    out = []
    for start, end in zip(starts, ends):
      if self.selectors[vi].count(start, end) == 0:
        continue
      mid = info.wall_time((start + end) / 2 / info.fps)
      if mid is not None:
        hour = mid.hour + mid.minute / 60 + mid.second / 3600
        night = not opts.day_hours[0] <= hour < opts.day_hours[1]
      else:
        if night_by_luma is None:
          night_by_luma = is_night_by_luma(info, threshold=opts.luma_threshold,
                                           samples=opts.luma_samples, cache=cache)
        night = night_by_luma
      if opts.split == 'all' or (opts.split == 'night') == night:
        out.append(Segment(vi, start, end, night))
    return out

  def num_frames(self, segments: Sequence[Segment] | None = None) -> int:
    """Selected frames in `segments` (default: all segments of the split)."""
    segs = self.segments if segments is None else segments
    return sum(self.selectors[s.video].count(s.start, s.end) for s in segs)

  def fingerprint(self) -> str:
    """CRC-32 of the files, their frame counts and the segments: identifies the index in reprs."""
    desc = json.dumps([[v.path, v.num_frames] for v in self.videos]
                      + [dataclasses.astuple(s) for s in self.segments]
                      + [repr(self.options)])
    return f'{zlib.crc32(desc.encode()):08x}'


def _stat_key(path: str) -> tuple[int, int]:
  try:
    st = os.stat(path)
  except OSError:
    return (-1, -1)
  return st.st_size, st.st_mtime_ns


@functools.lru_cache(maxsize=4096)
def _cached_probe(path: str, size: int, mtime_ns: int) -> VideoInfo:
  del size, mtime_ns  # Cache key only: a rewritten file is probed again.
  if not os.path.exists(path):
    raise VideoDecodeError(path, 'file not found')
  return probe_video(path)


def shard_segments(segments: Sequence[Segment], shard_index: int,
                   shard_count: int) -> list[Segment]:
  """Contiguous block `shard_index` of `shard_count` (the first `len % count` blocks get one more
  segment)."""
  if not 0 <= shard_index < shard_count:
    raise ValueError(f'shard_index {shard_index} not in [0, {shard_count})')
  per, extra = divmod(len(segments), shard_count)
  start = per * shard_index + min(shard_index, extra)
  end = start + per + (shard_index < extra)
  return list(segments[start:end])


# ---------------------------------------------------------------------------------------------
# grain: single frames.
# ---------------------------------------------------------------------------------------------


class VideoSegmentSource(grain.sources.RandomAccessDataSource):
  """Random access over (video, segment) records of one shard; records are small dicts, not frames.

  `VideoFramesIterDataset` decodes them. `__repr__` depends only on the index and the shard, so
  grain's checkpoint validation accepts a restored pipeline built from the same files.
  """

  def __init__(self, index: VideoIndex, shard_index: int = 0, shard_count: int = 1):
    self.index = index
    self.shard_index, self.shard_count = shard_index, shard_count
    self.segments = shard_segments(index.segments, shard_index, shard_count)

  @property
  def skipped(self) -> list[tuple[str, str]]:
    return self.index.skipped

  def __len__(self) -> int:
    return len(self.segments)

  def __getitem__(self, i: int) -> dict[str, int]:
    s = self.segments[i]
    return dict(video=s.video, start=s.start, end=s.end, night=s.night)

  def num_frames(self) -> int:
    return self.index.num_frames(self.segments)

  def __repr__(self) -> str:
    return (f'VideoSegmentSource(videos={len(self.index.videos)}, segments={len(self.segments)}, '
            f'shard={self.shard_index}/{self.shard_count}, index={self.index.fingerprint()})')


class VideoFramesIterDataset(grain.IterDataset):
  """Streams the uint8 RGB frames of the segments of a `MapDataset` of `VideoSegmentSource` records.

  Worker processes (`mp_prefetch`) slice the parent (`set_slice`), so each worker decodes disjoint
  segments. Iterator state: {'segment': position in the parent, 'emitted': frames already returned
  from it}.
  """

  def __init__(self, parent: grain.MapDataset, index: VideoIndex, *, image_key: str = 'image'):
    super().__init__(parent)
    self._index = index
    self._image_key = image_key

  def set_slice(self, sl: slice, sequential_slice: bool = False) -> None:
    del sequential_slice  # Strided slices of the (shuffled) segment stream are always disjoint.
    self._parents = (self._parents[0].slice(sl),)

  def __iter__(self) -> 'VideoFramesIterator':
    return VideoFramesIterator(self._parents[0], self._index, self._image_key)

  def __str__(self) -> str:
    return f'VideoFramesIterDataset(image_key={self._image_key!r})'


class VideoFramesIterator(grain.DatasetIterator):
  """See `VideoFramesIterDataset`. Keeps at most two open decoders (current and previous file)."""

  def __init__(self, segments: grain.MapDataset, index: VideoIndex, image_key: str):
    super().__init__()
    self._segments = segments
    self._length = len(segments)
    self._index = index
    self._image_key = image_key
    self._position = 0
    self._emitted = 0
    self._current: Iterator[tuple[int, np.ndarray]] | None = None
    self._record: dict[str, int] | None = None
    self._decoders: dict[int, FrameDecoder] = {}
    self._failed: set[int] = set()

  def _decoder(self, video: int) -> FrameDecoder:
    if video not in self._decoders:
      if len(self._decoders) >= 2:
        oldest = next(iter(self._decoders))
        self._decoders.pop(oldest).close()
      opts = self._index.options
      self._decoders[video] = FrameDecoder(self._index.videos[video], size=opts.size,
                                           threads=opts.decoder_threads)
    return self._decoders[video]

  def _open_segment(self) -> None:
    record = self._segments[self._position]
    self._record = record
    video = record['video']
    if video in self._failed:
      self._current = iter(())
      return
    try:
      decoder = self._decoder(video)
    except (VideoDecodeError, FileNotFoundError) as e:
      self._fail(video, getattr(e, 'reason', str(e)))
      self._current = iter(())
      return
    self._current = decoder.read(record['start'], record['end'], self._index.selectors[video],
                                 skip=self._emitted)

  def _fail(self, video: int, reason: str) -> None:
    self._failed.add(video)
    dec = self._decoders.pop(video, None)
    if dec is not None:
      dec.close()
    self._index.skip(self._index.videos[video].path, reason)

  def __next__(self) -> dict[str, Any]:
    while True:
      if self._current is None:
        if self._position >= self._length:
          raise StopIteration
        self._open_segment()
      try:
        frame_index, image = next(self._current)
      except StopIteration:
        self._current = None
        self._position += 1
        self._emitted = 0
        continue
      except VideoDecodeError as e:
        self._fail(self._record['video'], e.reason)
        self._current = None
        self._position += 1
        self._emitted = 0
        continue
      self._emitted += 1
      video = self._record['video']
      info = self._index.videos[video]
      return {
          self._image_key: image,
          'camera': np.int32(self._index.video_camera[video]),
          'video': np.int32(video),
          'frame': np.int64(frame_index),
          'time': np.float32(frame_index / info.fps),
          'night': np.bool_(self._record['night']),
      }

  def get_state(self) -> dict[str, Any]:
    return {'segment': self._position, 'emitted': self._emitted}

  def set_state(self, state: dict[str, Any]) -> None:
    self._current = None
    self._position = int(state['segment'])
    self._emitted = int(state['emitted'])

  def close(self) -> None:
    for dec in self._decoders.values():
      dec.close()
    self._decoders.clear()
    self._current = None

  def __str__(self) -> str:
    return 'VideoFramesIterator'


def make_frame_dataset(index: VideoIndex, *, seed: int = 0, shuffle: bool = True,
                       shuffle_buffer: int = 256, num_epochs: int | None = None,
                       shard_index: int = 0, shard_count: int = 1,
                       image_key: str = 'image', dtype: str = 'float32') -> grain.IterDataset:
  """Frames of this shard: segments shuffled per epoch, decoded sequentially, window-shuffled.

  Args:
    index: the videos and segments (its `options.split` decides day/night/all).
    seed: shuffle seed (segment order per epoch and the frame window shuffle).
    shuffle: False streams segments in file order (evaluation, benchmarks, coverage checks).
    shuffle_buffer: frames per shuffle window (0 or 1: none); memory = window x frame size.
    num_epochs: None repeats forever.
    shard_index, shard_count: this process's contiguous block of segments.
    image_key: key of the frame in the element dicts.
    dtype: 'float32' (RGB in [0, 1]) or 'uint8' (raw RGB; batch with `batch_frames`, which converts
      a whole batch at once: ~2x cheaper than per-frame conversion, and 4x less data in the shuffle
      window and between worker processes).

  Returns:
    An IterDataset of frame dicts (module docstring) supporting `mp_prefetch` and checkpointing.
  """
  if dtype not in ('float32', 'uint8'):
    raise ValueError(f"dtype must be 'float32' or 'uint8', got {dtype!r}")
  source = VideoSegmentSource(index, shard_index, shard_count)
  if len(source) == 0:
    raise ValueError(f'no {index.options.split} video segments for shard {shard_index} of '
                     f'{shard_count} ({len(index.videos)} usable videos, {len(index.skipped)} '
                     'skipped)')
  segments = grain.MapDataset.source(source)
  if shuffle:
    segments = segments.shuffle(seed=seed)
  if num_epochs != 1:
    segments = segments.repeat(num_epochs)
  ds: grain.IterDataset = VideoFramesIterDataset(segments, index, image_key=image_key)
  if shuffle and shuffle_buffer > 1:
    # Frames wait in the window as uint8 (a quarter of the memory, no page-fault storm).
    ds = WindowShuffleIterDataset(ds, window_size=shuffle_buffer, seed=seed)
  return ds.map(ToFloat(key=image_key)) if dtype == 'float32' else ds


def batch_frames(elements: Sequence[dict[str, Any]], image_key: str = 'image') -> dict[str, Any]:
  """grain `batch_fn` for uint8 frame elements: stacks every key, the image as float32 in [0, 1].

  The float batch is written in place (one allocation per batch instead of one per frame).
  """
  out = {k: np.stack([e[k] for e in elements]) for k in elements[0] if k != image_key}
  first = elements[0][image_key]
  images = np.empty((len(elements),) + first.shape, np.float32)
  for i, e in enumerate(elements):
    np.multiply(e[image_key], np.float32(1 / 255), out=images[i])
  out[image_key] = images
  return out


@dataclasses.dataclass(frozen=True)
class ToFloat(grain.transforms.Map):
  """element[key]: uint8 -> float32 in [0, 1]."""

  key: str = 'image'

  def map(self, element: dict[str, Any]) -> dict[str, Any]:
    element = dict(element)
    element[self.key] = to_float(element[self.key])
    return element


class WindowShuffleIterDataset(grain.IterDataset):
  """Shuffles consecutive windows of `window_size` elements (grain's WindowShuffle semantics).

  Port note: grain's `experimental.WindowShuffleIterDataset` draws each position with
  `index_shuffle`, ~1 ms per element on our machines (a third of the per-frame budget); this draws
  one numpy permutation per window, seeded by (seed, window number). Checkpoint state is the parent
  state at the window start plus the position in the window: restoring re-reads the window.
  """

  def __init__(self, parent: grain.IterDataset, *, window_size: int, seed: int):
    super().__init__(parent)
    if window_size < 1:
      raise ValueError(f'window_size must be >= 1, got {window_size}')
    self._window_size, self._seed = window_size, seed

  def __iter__(self) -> '_WindowShuffleIterator':
    return _WindowShuffleIterator(self._parent.__iter__(), self._window_size, self._seed)

  def __str__(self) -> str:
    return f'WindowShuffleIterDataset(window_size={self._window_size}, seed={self._seed})'


class _WindowShuffleIterator(grain.DatasetIterator):

  def __init__(self, parent: grain.DatasetIterator, window_size: int, seed: int):
    super().__init__(parent)
    self._window_size, self._seed = window_size, seed
    self._window: list[Any] = []
    self._window_index = -1
    self._pos = 0
    self._start_state = parent.get_state()

  def _fill(self) -> None:
    self._start_state = self._parent.get_state()
    items = []
    for _ in range(self._window_size):
      try:
        items.append(next(self._parent))
      except StopIteration:
        break
    rng = np.random.Generator(np.random.Philox(
        np.random.SeedSequence([self._seed, self._window_index])))
    self._window = [items[i] for i in rng.permutation(len(items))]
    self._pos = 0

  def __next__(self) -> Any:
    if self._pos >= len(self._window):
      self._window_index += 1
      self._fill()
      if not self._window:
        raise StopIteration
    item = self._window[self._pos]
    self._window[self._pos] = None  # Release emitted frames early.
    self._pos += 1
    return item

  def get_state(self) -> dict[str, Any]:
    if self._pos >= len(self._window):  # At a window boundary: the next window starts here.
      return {'parent': copy.deepcopy(self._parent.get_state()), 'window': self._window_index + 1,
              'pos': 0}
    return {'parent': copy.deepcopy(self._start_state), 'window': self._window_index,
            'pos': self._pos}

  def set_state(self, state: dict[str, Any]) -> None:
    self._parent.set_state(state['parent'])
    self._window_index = int(state['window'])
    self._window, self._pos = [], 0
    if state['pos']:
      self._fill()
      self._pos = int(state['pos'])
      self._window[:self._pos] = [None] * self._pos
    else:
      self._window_index -= 1  # __next__ increments before filling.

  def __str__(self) -> str:
    return 'WindowShuffleIterator'


# ---------------------------------------------------------------------------------------------
# grain: K frames of one camera spread over time (SegBMN input).
# ---------------------------------------------------------------------------------------------


class VideoClipSource(grain.sources.RandomAccessDataSource):
  """Record i: K frames of camera (i mod cameras), stratified over that camera's whole timeline.

  The camera's selected segments (of the index's split, typically 'day') are concatenated into one
  timeline of T frames; frame j of the clip is drawn uniformly from the j-th of K equal strata, with
  a generator seeded by (seed, i): record i is the same in every process and epoch (grain's shuffle
  changes which records an epoch visits first, not what they contain). Frames are decoded in time
  order with at most one seek each.

  With `with_masks`, foreground masks are read from `{video stem}_masks.npz` beside each video
  (synthetic ground truth, `synthetic_video.read_masks`), resized with nearest neighbour. The fps /
  stride options of the index do not apply to clips (frames are drawn from whole segments).
  """

  def __init__(self, index: VideoIndex, *, clip_frames: int, num_records: int | None = None,
               seed: int = 0, with_masks: bool = False, cameras: Sequence[int] | None = None):
    if clip_frames < 1:
      raise ValueError(f'clip_frames must be >= 1, got {clip_frames}')
    self.index = index
    self.clip_frames = clip_frames
    self.seed = seed
    self.with_masks = with_masks
    by_camera: dict[int, list[Segment]] = {}
    for s in index.segments:
      by_camera.setdefault(index.video_camera[s.video], []).append(s)
    wanted = set(cameras) if cameras is not None else None
    self.cameras = [c for c in sorted(by_camera) if wanted is None or c in wanted]
    if not self.cameras:
      raise ValueError(f'no {index.options.split} segments for any camera '
                       f'({len(index.videos)} videos, {len(index.skipped)} skipped)')
    self._timelines = {c: by_camera[c] for c in self.cameras}
    self._cum = {c: np.cumsum([0] + [s.end - s.start for s in segs])
                 for c, segs in self._timelines.items()}
    self.num_records = num_records if num_records is not None else 100 * len(self.cameras)

  @property
  def skipped(self) -> list[tuple[str, str]]:
    return self.index.skipped

  def __len__(self) -> int:
    return self.num_records

  def __repr__(self) -> str:
    return (f'VideoClipSource(clip_frames={self.clip_frames}, num_records={self.num_records}, '
            f'seed={self.seed}, cameras={self.cameras}, with_masks={self.with_masks}, '
            f'index={self.index.fingerprint()})')

  def frames_of(self, i: int) -> tuple[int, list[tuple[int, int]]]:
    """(camera id, [(video, frame index)] in time order) of record i, without decoding."""
    camera = self.cameras[i % len(self.cameras)]
    segs, cum = self._timelines[camera], self._cum[camera]
    total = int(cum[-1])
    rng = np.random.Generator(np.random.Philox(np.random.SeedSequence([self.seed, i])))
    picks = []
    for j in range(self.clip_frames):
      g = min(total - 1, int((j + rng.random()) * total / self.clip_frames))
      k = int(np.searchsorted(cum, g, side='right')) - 1
      picks.append((segs[k].video, segs[k].start + g - int(cum[k])))
    return camera, sorted(picks)

  def read(self, i: int) -> dict[str, np.ndarray]:
    """Decodes record i; raises VideoDecodeError for a corrupt file."""
    camera, picks = self.frames_of(i)
    opts = self.index.options
    frames, masks = [], []
    decoder = None
    try:
      for video, f in picks:
        if decoder is None or decoder.info is not self.index.videos[video]:
          if decoder is not None:
            decoder.close()
          decoder = FrameDecoder(self.index.videos[video], size=opts.size,
                                 threads=opts.decoder_threads)
        frames.append(to_float(decoder.read_frame(f)))
        if self.with_masks:
          masks.append(self._mask(video, f, frames[-1].shape[:2]))
    finally:
      if decoder is not None:
        decoder.close()
    out = {
        'frames': np.stack(frames),
        'camera': np.int32(camera),
        'video': np.array([v for v, _ in picks], np.int32),
        'frame': np.array([f for _, f in picks], np.int64),
        'time': np.array([f / self.index.videos[v].fps for v, f in picks], np.float32),
    }
    if self.with_masks:
      out['masks'] = np.stack(masks)
    return out

  def _mask(self, video: int, frame: int, hw: tuple[int, int]) -> np.ndarray:
    from data_pipelines import synthetic_video  # pylint: disable=g-import-not-at-top
    path = pathlib.Path(self.index.videos[video].path)
    mask_path = path.with_name(path.stem + '_masks.npz')
    if not mask_path.is_file():
      raise FileNotFoundError(f'with_masks=True but {os.fspath(mask_path)!r} does not exist')
    mask = synthetic_video.read_masks(mask_path, [frame])[0]
    if mask.shape != hw:
      rows = (np.arange(hw[0]) * mask.shape[0] // hw[0])[:, None]
      cols = (np.arange(hw[1]) * mask.shape[1] // hw[1])[None, :]
      mask = mask[rows, cols]
    return mask

  def __getitem__(self, i: int) -> dict[str, np.ndarray]:
    n = len(self)
    for offset in range(n):
      j = (int(i) + offset) % n
      try:
        return self.read(j)
      except VideoDecodeError as e:
        # Deterministic fallback (the next record), like the folder sources: a restored iterator
        # replays identically.
        self.index.skip(e.path, e.reason + ' (at read time)')
    raise RuntimeError(f'{self!r}: no record could be decoded; see skipped={self.skipped}')


# ---------------------------------------------------------------------------------------------
# Config-driven construction.
# ---------------------------------------------------------------------------------------------


def default_video_config():
  """The `data.video` section for video training (see `make_train_dataset`).

  Fields: root (folder of videos, searched recursively; unset = the synthetic default set of
  `synthetic_video.default_video_dir()`), split, segment_seconds, fps, stride, height/width
  (0 = native), day_hours, luma_threshold, luma_samples, luma_cache, decoder_threads,
  shuffle_buffer, clip_frames (K > 0: elements are K-frame clips of one camera instead of single
  frames), clip_records, with_masks, image_key, worker_count, worker_buffer_size.
  """
  import ml_collections  # pylint: disable=g-import-not-at-top
  from ml_collections import config_dict  # pylint: disable=g-import-not-at-top

  c = ml_collections.ConfigDict()
  c.root = config_dict.placeholder(str)
  c.split = 'day'
  c.segment_seconds = 4.0
  c.fps = 0.0
  c.stride = 1
  c.height = 0
  c.width = 0
  c.day_hours = (7.0, 19.0)
  c.luma_threshold = 0.2
  c.luma_samples = 5
  c.luma_cache = ''
  c.decoder_threads = 1
  c.shuffle_buffer = 256
  c.clip_frames = 0
  c.clip_records = 0
  c.with_masks = False
  c.image_key = 'image'
  c.worker_count = 0
  c.worker_buffer_size = 2
  return c


def options_from_config(video_cfg) -> VideoOptions:
  size = (video_cfg.height, video_cfg.width) if video_cfg.height and video_cfg.width else None
  return VideoOptions(split=video_cfg.split, segment_seconds=video_cfg.segment_seconds,
                      fps=video_cfg.fps, stride=video_cfg.stride, size=size,
                      day_hours=tuple(video_cfg.day_hours), luma_threshold=video_cfg.luma_threshold,
                      luma_samples=video_cfg.luma_samples, luma_cache=video_cfg.luma_cache,
                      decoder_threads=video_cfg.decoder_threads)


def make_train_dataset(video_cfg, *, batch_size: int, seed: int, shard_index: int | None = None,
                       shard_count: int | None = None) -> grain.IterDataset:
  """Infinite, shuffled, sharded batches of video frames (or K-frame clips) for training.

  `iter()` of the result is a checkpointable grain DatasetIterator (`get_state`/`set_state`, Orbax
  `grain.checkpoint.CheckpointSave`). Shards default to jax.process_index()/process_count() (read
  here, in the main process). Batches are dicts of stacked numpy arrays; incomplete batches are
  dropped.
  """
  if batch_size <= 0:
    raise ValueError(f'batch_size must be positive, got {batch_size}')
  if (shard_index is None) != (shard_count is None):
    raise ValueError('pass both shard_index and shard_count, or neither')
  if shard_index is None:
    import jax  # pylint: disable=g-import-not-at-top  (main process only)
    shard_index, shard_count = jax.process_index(), jax.process_count()
  root = video_cfg.root
  if not root:
    from data_pipelines import synthetic_video  # pylint: disable=g-import-not-at-top
    root = os.fspath(synthetic_video.default_video_dir())
  index = VideoIndex(root, options_from_config(video_cfg))
  if not index.segments:
    from lowlight_jax import errors  # pylint: disable=g-import-not-at-top
    opts = index.options
    unreadable = f', {len(index.skipped)} unreadable (first: {index.skipped[0][0]}: {index.skipped[0][1]})' \
        if index.skipped else ''
    raise errors.InputError(
        f'data.video.root {root}: no {opts.split} frames in its {len(index.videos)} usable video(s){unreadable} '
        f'(day = a file-name or container timestamp from {opts.day_hours[0]:g}h to {opts.day_hours[1]:g}h, '
        f'else a median luma of at least {opts.luma_threshold:g})')
  if video_cfg.clip_frames:
    source = VideoClipSource(index, clip_frames=video_cfg.clip_frames,
                             num_records=video_cfg.clip_records or None, seed=seed,
                             with_masks=video_cfg.with_masks)
    ds = grain.MapDataset.source(source)[shard_index::shard_count].shuffle(seed=seed).repeat()
    ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=2, prefetch_buffer_size=4))
    ds = ds.batch(batch_size, drop_remainder=True)
  else:
    ds = make_frame_dataset(index, seed=seed, shuffle=True, shuffle_buffer=video_cfg.shuffle_buffer,
                            shard_index=shard_index, shard_count=shard_count,
                            image_key=video_cfg.image_key, dtype='uint8')
    ds = ds.batch(batch_size, drop_remainder=True,
                  batch_fn=functools.partial(batch_frames, image_key=video_cfg.image_key))
  if video_cfg.worker_count > 0:
    ds = ds.mp_prefetch(grain.MultiprocessingOptions(
        num_workers=video_cfg.worker_count, per_worker_buffer_size=video_cfg.worker_buffer_size))
  return ds
