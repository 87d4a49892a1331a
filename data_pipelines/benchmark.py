"""Input-pipeline throughput: decoded + augmented images/s (folders), frames/s (video), per worker count.

Called by `launch/benchmark.py`; each function returns a JSON-ready dict. No timing lives in tests.
With `worker_count=0` everything runs in this process, so `cpu_per_s` (items per CPU-second of this
process) is the per-core figure, robust to other load on the machine; with workers, `per_s` is the
wall-clock rate the training loop would see. The goal for video is >= 300 frames/s per core at
640x360 (decode + RGB conversion + float32), which PyAV/FFmpeg reaches when a worker decodes with
one thread and segments start on keyframes (see video.py).
"""

from __future__ import annotations

import os
import pathlib
import tempfile
import time
from typing import Any, Iterable, Sequence

import grain
import numpy as np
from PIL import Image


def _measure(iterator, count: int, items_per_step: int, warmup: int = 1) -> dict[str, float]:
  for _ in range(warmup):
    next(iterator)
  wall, cpu = time.perf_counter(), time.process_time()
  for _ in range(count):
    next(iterator)
  wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
  n = count * items_per_step
  return {"items": n, "seconds": round(wall, 4), "per_s": round(n / wall, 1),
          "cpu_per_s": round(n / cpu, 1) if cpu > 0 else None}


def write_benchmark_images(out_dir: str | os.PathLike, count: int = 48,
                           size: tuple[int, int] = (360, 640)) -> pathlib.Path:
  """`count` JPEGs of real photographs (the embedded ones, tiled and cropped to `size` = (h, w))."""
  from data_pipelines import embedded  # pylint: disable=g-import-not-at-top

  out = pathlib.Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  names = embedded.EMBEDDED_TRAIN
  rng = np.random.default_rng(0)
  for k in range(count):
    photo = np.round(embedded.load_photo(names[k % len(names)]) * 255).astype(np.uint8)
    reps = (-(-size[0] // photo.shape[0]) + 1, -(-size[1] // photo.shape[1]) + 1, 1)
    tiled = np.tile(photo, reps)
    top = int(rng.integers(0, tiled.shape[0] - size[0] + 1))
    left = int(rng.integers(0, tiled.shape[1] - size[1] + 1))
    Image.fromarray(tiled[top:top + size[0], left:left + size[1]]).save(out / f"{k:04d}.jpg",
                                                                        quality=90)
  return out


def folder_images_per_s(root: str | os.PathLike | None = None, *,
                        worker_counts: Sequence[int] = (0, 1, 2), batch_size: int = 8,
                        crop: int = 256, num_batches: int = 12) -> dict[str, Any]:
  """Images/s of `pipeline.make_train_loader` over an unpaired folder (decode + crop + flip).

  Without `root`, 48 640x360 JPEGs of the embedded photos are written to a temporary folder.
  """
  from data_pipelines import pipeline  # pylint: disable=g-import-not-at-top

  with tempfile.TemporaryDirectory() as tmp:
    folder = root or write_benchmark_images(tmp)
    results = {}
    for workers in worker_counts:
      cfg = pipeline.default_data_config()
      cfg.source, cfg.root, cfg.low_dir = "unpaired_folder", os.fspath(folder), ""
      cfg.crop, cfg.worker_count = crop, workers
      loader = pipeline.make_train_loader(cfg, batch_size=batch_size, seed=0, shard_index=0,
                                          shard_count=1)
      results[f"workers_{workers}"] = _measure(iter(loader), num_batches, batch_size)
  return {"what": f"unpaired folder, JPEG decode + {crop} crop + flip, batch {batch_size}",
          **results}


def benchmark_video_dir(cache_dir: str | os.PathLike | None = None, *, seconds: float = 24.0,
                        size: tuple[int, int] = (360, 640), fps: float = 25.0) -> pathlib.Path:
  """A day + night pair of synthetic videos at `size` (rendered once, ~1 min at 640x360)."""
  from data_pipelines import synthetic_video  # pylint: disable=g-import-not-at-top

  base = pathlib.Path(cache_dir or os.environ.get("LOWLIGHT_JAX_CACHE")
                      or pathlib.Path.home() / ".cache" / "lowlight_jax")
  target = base / f"benchmark_video_{size[1]}x{size[0]}_{fps:g}fps_{seconds:g}s"
  if not (target / "manifest.json").is_file():
    synthetic_video.write_videos(target, minutes=seconds / 60, fps=fps, width=size[1],
                                 height=size[0], night=(False, True), cameras=1)
  return target


def video_frames_per_s(video_dir: str | os.PathLike | None = None, *,
                       worker_counts: Sequence[int] = (0, 1, 2),
                       splits: Iterable[str] = ("day", "night"),
                       shuffle_buffer: int = 64, batch_size: int = 8,
                       num_batches: int = 40) -> dict[str, Any]:
  """Frames/s of the video source (shuffled segments, decode, RGB, float32, window shuffle, batch).

  Without `video_dir`, the 640x360 synthetic pair of `benchmark_video_dir` is used. Night footage is
  noisier, so it compresses worse and decodes slower: both are reported.
  """
  from data_pipelines import video  # pylint: disable=g-import-not-at-top

  folder = video_dir or benchmark_video_dir()
  out: dict[str, Any] = {"what": "video frames: seek to segment, decode, rgb24, float32, "
                                 f"window shuffle {shuffle_buffer}, batch {batch_size}"}
  for split in splits:
    index = video.VideoIndex(folder, video.VideoOptions(split=split))
    info = index.videos[index.segments[0].video]
    per = {"size": f"{info.width}x{info.height}",
           "bytes_per_frame": round(os.path.getsize(info.path) / info.num_frames)}
    for workers in worker_counts:
      # The training path of `video.make_train_dataset`: uint8 frames, converted per batch.
      ds = video.make_frame_dataset(index, seed=0, shuffle_buffer=shuffle_buffer, dtype="uint8")
      ds = ds.batch(batch_size, drop_remainder=True, batch_fn=video.batch_frames)
      if workers:
        ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers))
      it = iter(ds)
      per[f"workers_{workers}"] = _measure(it, num_batches, batch_size, warmup=2)
      del it
    out[split] = per
  return out
