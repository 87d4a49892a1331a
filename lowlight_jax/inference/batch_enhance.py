"""Enhancing files and folders of images and videos without ever losing data.

Used by `launch.enhance` for trained runs and released weights. Two phases:

  1. `plan_outputs` (cheap: file names and sizes, no jax, no model) decides every output path and
     refuses, with one line naming the flag and the files, whatever could lose data: an output
     folder equal to or inside the input folder, an output that would overwrite an input, two
     inputs that would write the same output (`x.png` and `x.jpg`), a non-empty output folder
     (unless `overwrite`: replace existing outputs, or `skip_existing`: skip inputs whose output
     exists), an output path that is an existing file.
  2. `run_plan` enhances each input with an `Enhancer`. Still images: one at a time at their own
     size, written as PNG. Videos: streamed, `video_batch` frames at a time through the same
     function (the last batch padded by repeating its last frame, so the jitted function sees one
     shape), written as an H.264 MP4 at the input's frame rate and size (or, with `frames_dir`, as
     numbered PNGs in a folder named after the video). Every output appears atomically (temporary
     file or folder beside it, then a rename). An input that cannot be read or is too small for
     the enhancer is reported by name and the others still run.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Callable, Iterator, Sequence

import numpy as np
import tqdm

from lowlight_jax import errors
from lowlight_jax.io import imageio
from lowlight_jax.io import videoio

#: (B, H, W, 3) float32 in [0, 1] -> (B, h, w, 3) uint8.
BatchFn = Callable[[np.ndarray], np.ndarray]

DEFAULT_VIDEO_BATCH = 8


@dataclasses.dataclass(frozen=True)
class Enhancer:
  """What `run_plan` runs.

  Attributes:
    image_fn: batched enhancement for still images (called with batches of one).
    video_fn: batched enhancement for video frames; must keep the frame size.
    min_size: smallest height and width `image_fn` accepts; smaller images are reported as failed.
    size_hint: appended to the too-small message (what to do about it).
    same_size: whether `image_fn` keeps the size (False only for the authors' SGZ crop).
  """

  image_fn: BatchFn
  video_fn: BatchFn
  min_size: int = 1
  size_hint: str = ''
  same_size: bool = True


@dataclasses.dataclass(frozen=True)
class Job:
  """One input and where its output goes; `kind` is 'image', 'video' (MP4) or 'frames' (PNG folder)."""

  src: str
  dest: str
  kind: str


@dataclasses.dataclass
class Plan:
  output_dir: str
  jobs: list[Job]
  skipped: list[Job] = dataclasses.field(default_factory=list)  # Output exists (skip_existing).
  replace: bool = False  # overwrite: existing outputs are replaced.


@dataclasses.dataclass
class EnhanceReport:
  written: list[str] = dataclasses.field(default_factory=list)
  failed: list[tuple[str, str]] = dataclasses.field(default_factory=list)
  skipped: list[str] = dataclasses.field(default_factory=list)
  videos: int = 0  # Videos among `written`.
  frames: int = 0  # Video frames enhanced.


# ---------------------------------------------------------------------------------------------
# Phase 1: inputs, outputs and the checks that keep data safe.
# ---------------------------------------------------------------------------------------------


def collect_inputs(path: str) -> list[str]:
  """One file, or every image file of a folder (sorted). Images only; see `collect_media`."""
  if os.path.isdir(path):
    files = imageio.list_images(path)
    if not files:
      raise errors.InputError(f"no image files in {path}")
    return [str(f) for f in files]
  if not os.path.exists(path):
    raise FileNotFoundError(f"input {path} does not exist")
  return [path]


def collect_media(path: str) -> list[str]:
  """One file, or every image and video file directly inside a folder (sorted by name)."""
  if os.path.isdir(path):
    files = sorted(imageio.list_images(path) + videoio.list_videos(path))
    if not files:
      raise errors.InputError(
          f"--input {path} holds no image ({', '.join(imageio.IMAGE_EXTENSIONS)}) or video "
          f"({', '.join(videoio.VIDEO_EXTENSIONS)}) files")
    return [str(f) for f in files]
  if not os.path.exists(path):
    raise errors.InputError(f"--input {path} does not exist")
  return [path]


def output_path(input_path: str, output_dir: str, *, frames_dir: bool = False) -> str:
  """Images: same stem, `.png` (lossless). Videos: same stem, `.mp4`, or with `frames_dir` a folder
  named after the stem."""
  stem = os.path.splitext(os.path.basename(input_path))[0]
  if videoio.is_video(input_path):
    return os.path.join(output_dir, stem if frames_dir else stem + ".mp4")
  return os.path.join(output_dir, stem + ".png")


def _inside(path: str, folder: str) -> bool:
  return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def plan_outputs(input_path: str, output_dir: str, *, overwrite: bool = False,
                 skip_existing: bool = False, frames_dir: bool = False) -> Plan:
  """Every input with its output path, after the checks in the module docstring.

  Reads directory listings only (no image or video is decoded).

  Raises:
    ConfigError: `overwrite` together with `skip_existing`.
    InputError: a missing or empty input, or two inputs that would write the same output.
    OutputError: an output location that would lose data.
  """
  if overwrite and skip_existing:
    raise errors.ConfigError("--overwrite and --skip-existing exclude each other; give one")
  if os.path.exists(output_dir) and not os.path.isdir(output_dir):
    raise errors.OutputError(f"--output {output_dir} is an existing file; give a folder")
  inputs = collect_media(input_path)
  real_out = os.path.realpath(output_dir)
  if os.path.isdir(input_path):
    real_in = os.path.realpath(input_path)
    if _inside(real_out, real_in):
      where = "is" if real_out == real_in else "is inside"
      raise errors.OutputError(
          f"--output {output_dir} {where} --input {input_path}: outputs would replace or mix with the "
          "inputs; choose a folder outside it")

  jobs = []
  by_dest: dict[str, list[str]] = {}
  real_input = os.path.realpath(input_path)
  real_inputs = {os.path.realpath(p): p for p in inputs}
  for src in inputs:
    dest = output_path(src, output_dir, frames_dir=frames_dir)
    kind = ("frames" if frames_dir else "video") if videoio.is_video(src) else "image"
    real_dest = os.path.realpath(dest)
    if real_dest in real_inputs:
      raise errors.OutputError(f"the output for {src} would be {dest}, which is the input {real_inputs[real_dest]}"
                               "; choose another --output")
    if _inside(real_input, real_dest):  # A frames folder that is, or holds, the input.
      raise errors.OutputError(f"the output for {src} would be the folder {dest}, which holds --input "
                               f"{input_path}; choose another --output")
    by_dest.setdefault(real_dest, []).append(src)
    jobs.append(Job(src, dest, kind))
  clashes = {d: s for d, s in by_dest.items() if len(s) > 1}
  if clashes:
    text = "; ".join(f"{' and '.join(os.path.basename(p) for p in srcs)} would both write {d}"
                     for d, srcs in clashes.items())
    raise errors.InputError(f"inputs with the same name: {text}; rename or move one of each")

  plan = Plan(output_dir=output_dir, jobs=jobs, replace=overwrite)
  if os.path.isdir(output_dir):
    entries = sorted(os.listdir(output_dir))
    if entries and not (overwrite or skip_existing):
      shown = ", ".join(entries[:5]) + (", ..." if len(entries) > 5 else "")
      raise errors.OutputError(
          f"--output {output_dir} is not empty ({len(entries)} entries: {shown}); pass --overwrite to "
          "replace existing outputs, --skip-existing to skip inputs whose output exists, or choose a "
          "new folder")
  for job in jobs:
    if not os.path.lexists(job.dest):
      continue
    want_dir = job.kind == "frames"
    if os.path.isdir(job.dest) != want_dir:
      raise errors.OutputError(
          f"{job.dest} exists and is {'not ' if want_dir else ''}a folder; the output of {job.src} "
          f"needs a {'folder' if want_dir else 'file'} there")
  if skip_existing:
    plan.skipped = [j for j in jobs if os.path.lexists(j.dest)]
    plan.jobs = [j for j in jobs if not os.path.lexists(j.dest)]
  return plan


# ---------------------------------------------------------------------------------------------
# Phase 2: enhancing.
# ---------------------------------------------------------------------------------------------


def _check_output(out: np.ndarray, batch: np.ndarray, same_size: bool, what: str) -> np.ndarray:
  out = np.asarray(out)
  ok = out.dtype == np.uint8 and out.ndim == 4 and out.shape[0] == batch.shape[0] and out.shape[-1] == 3
  if not ok or (same_size and out.shape != batch.shape):
    raise RuntimeError(f"enhancer returned {out.dtype}{out.shape} for {what} of shape {batch.shape}")
  return out


def enhance_image(enhancer: Enhancer, src: str, dest: str, *, max_pixels: int | None = None) -> None:
  """Reads, enhances and atomically writes one image. Raises InputError or ImageDecodeError for a
  bad or too-small image."""
  kwargs = {} if max_pixels is None else {"max_pixels": max_pixels}
  image = imageio.read_image(src, **kwargs)
  h, w = image.shape[:2]
  if min(h, w) < enhancer.min_size:
    raise errors.InputError(f"image is {w}x{h} pixels; this enhancer needs at least "
                            f"{enhancer.min_size}x{enhancer.min_size} pixels{enhancer.size_hint}")
  out = _check_output(enhancer.image_fn(image[None]), image[None], enhancer.same_size, src)
  imageio.write_png_atomic(dest, out[0])


def batched(frames: Iterator[np.ndarray], batch_size: int) -> Iterator[tuple[np.ndarray, int]]:
  """(batch, n): `batch_size` frames at a time; the last batch is padded with copies of its last
  frame and `n` says how many frames are real. One buffer is reused: use each batch before asking
  for the next."""
  if batch_size < 1:
    raise errors.ConfigError(f"--video-batch must be at least 1, got {batch_size}")
  buf = None
  n = 0
  for frame in frames:
    if buf is None:
      buf = np.empty((batch_size,) + frame.shape, frame.dtype)
    buf[n] = frame
    n += 1
    if n == batch_size:
      yield buf, n
      n = 0
  if n:
    buf[n:] = buf[n - 1]
    yield buf, n


def enhance_video(fn: BatchFn, src: str, dest: str, *, batch_size: int = DEFAULT_VIDEO_BATCH,
                  frames_dir: bool = False, replace: bool = False, progress: bool = True) -> int:
  """Streams the video `src` through `fn` in batches of `batch_size` frames into `dest` (an MP4 at
  the input's frame rate and size, or with `frames_dir` a folder of PNGs). Returns the frame count.

  At most one batch of input frames (plus the encoder's own look-ahead) is held in memory.
  """
  with videoio.VideoReader(src) as reader:
    info = reader.info

    def enhanced() -> Iterator[np.ndarray]:
      with tqdm.tqdm(total=info.num_frames, desc=os.path.basename(src), unit="frame",
                     disable=not progress, leave=False) as bar:
        for batch, n in batched(reader.frames(np.float32), batch_size):
          out = _check_output(fn(batch), batch, True, f"a batch of {src}")
          yield from out[:n]
          bar.update(n)

    if frames_dir:
      return videoio.write_frames_atomic(dest, enhanced(), replace=replace)
    return videoio.write_video_atomic(dest, enhanced(), fps=info.fps, width=info.width,
                                      height=info.height)


def run_plan(enhancer: Enhancer, plan: Plan, *, video_batch: int = DEFAULT_VIDEO_BATCH,
             progress: bool = True, max_pixels: int | None = None) -> EnhanceReport:
  """Enhances every job of `plan` (images first, then videos); bad inputs are reported, not fatal."""
  report = EnhanceReport(skipped=[j.src for j in plan.skipped])
  images = [j for j in plan.jobs if j.kind == "image"]
  videos = [j for j in plan.jobs if j.kind != "image"]
  if images or videos:
    os.makedirs(plan.output_dir, exist_ok=True)

  def failed(path: str, e: BaseException) -> None:
    # Decode errors carry the file name in their message; the line below names it already.
    reason = getattr(e, "reason", None) or errors.one_line(e)
    report.failed.append((path, reason))
    tqdm.tqdm.write(f"error: {path}: {reason}")

  for job in tqdm.tqdm(images, desc="enhance", unit="img", disable=not progress or not images):
    try:
      enhance_image(enhancer, job.src, job.dest, max_pixels=max_pixels)
    except (errors.InputError, imageio.ImageDecodeError, OSError) as e:
      failed(job.src, e)
      continue
    report.written.append(job.dest)
  for job in videos:
    try:
      n = enhance_video(enhancer.video_fn, job.src, job.dest, batch_size=video_batch,
                        frames_dir=job.kind == "frames", replace=plan.replace, progress=progress)
    except (errors.InputError, videoio.VideoDecodeError, OSError) as e:
      failed(job.src, e)
      continue
    report.written.append(job.dest)
    report.videos += 1
    report.frames += n
  return report


def enhance_paths(enhance_one: Callable[[np.ndarray], np.ndarray], inputs: Sequence[str], output_dir: str, *,
                  progress: bool = True, max_pixels: int | None = None, same_size: bool = True) -> EnhanceReport:
  """Runs `enhance_one` (HxWx3 float [0,1] -> HxWx3 uint8) over image files `inputs`, writing PNGs into
  `output_dir` (existing outputs are replaced; no folder checks: callers that take paths from users
  use `plan_outputs` + `run_plan`).

  `same_size=False` is only for reproducing the authors' SGZ script, which crops to multiples of its scale.
  """
  fn = lambda batch: np.stack([np.asarray(enhance_one(x)) for x in batch])
  enhancer = Enhancer(image_fn=fn, video_fn=fn, same_size=same_size)
  jobs = [Job(p, output_path(p, output_dir), "image") for p in inputs]
  return run_plan(enhancer, Plan(output_dir=output_dir, jobs=jobs, replace=True), progress=progress,
                  max_pixels=max_pixels)
