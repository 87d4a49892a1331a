"""A store of per-camera background images: `<store>/<camera>.png` (+ `<camera>.json`, how it was made).

DMGNIE (seed `000_f6de8f8b0015d52c`) enhances a camera's night frames with that camera's daytime background
(SegBMN's output, or a classical one) as a guide: stage 1 writes one background per camera here
(`launch.background --store DIR`), stage 2 looks a camera's background up by its id (`data_pipelines.video`'s
`camera_name`: the file-name prefix before the timestamp, e.g. `cam03` for `cam03_20240601T120000.mp4`).

Backgrounds are RGB PNGs (uint8), written atomically (`imageio.write_png_atomic`): a reader sees the old file or
the complete new one. The JSON sidecar is optional provenance (source video, method, frames) and never required
to load.

Errors are `BackgroundStoreError` (an `errors.InputError`, so every CLI reports them as one line): a missing
background names the camera and the store; a background of another size than the frames it must guide names the
file and both sizes; a camera id that is not a plain file name is refused. `lowlight_jax.errors` is the only
import outside this package (a standard-library-only module, so no import cycle).
"""

from __future__ import annotations

import json
import os
import pathlib
from typing import Any

import numpy as np

from lowlight_jax import errors
from lowlight_jax.io import atomic_io
from lowlight_jax.io import imageio

PathLike = str | os.PathLike
SUFFIX = ".png"
INFO_SUFFIX = ".json"


class BackgroundStoreError(errors.InputError):
  """A background that is missing, of the wrong size, or a camera id that cannot name a file."""


def _check_camera(camera: str) -> str:
  camera = str(camera)
  bad = (not camera or camera in (".", "..") or "/" in camera or "\\" in camera or "\0" in camera
         or camera.startswith("."))
  if bad:
    raise BackgroundStoreError(f"camera id {camera!r} cannot name a background file (it must be a plain, "
                               "non-hidden file name)")
  return camera


def path_for(store: PathLike, camera: str) -> pathlib.Path:
  """`<store>/<camera>.png`."""
  return pathlib.Path(store) / f"{_check_camera(camera)}{SUFFIX}"


def to_uint8(image: np.ndarray) -> np.ndarray:
  """float [0, 1] -> uint8 as torchvision's `save_image` (floor(clip(255 x + 0.5))); uint8 is kept."""
  image = np.asarray(image)
  if image.dtype == np.uint8:
    return image
  x = np.asarray(image, np.float32)
  return np.floor(np.clip(x * np.float32(255.0) + np.float32(0.5), 0, 255)).astype(np.uint8)


def save(store: PathLike, camera: str, image: np.ndarray, *, info: dict[str, Any] | None = None) -> pathlib.Path:
  """Writes camera `camera`'s background (HxWx3, float in [0, 1] or uint8) atomically; returns its path.

  `info` (JSON-serialisable) goes to `<camera>.json` beside it; an existing background is replaced.
  """
  image = to_uint8(image)
  if image.ndim != 3 or image.shape[-1] != 3:
    raise ValueError(f"a background is HxWx3, got {image.shape}")
  path = path_for(store, camera)
  imageio.write_png_atomic(path, image)
  if info is not None:
    atomic_io.write_json_atomic(path.with_suffix(INFO_SUFFIX), {"camera": camera, **info})
  return path


def cameras(store: PathLike) -> list[str]:
  """The camera ids with a background in `store` (sorted; [] for a missing store)."""
  store = pathlib.Path(store)
  if not store.is_dir():
    return []
  return sorted(p.stem for p in store.iterdir() if p.suffix == SUFFIX and p.is_file() and not p.name.startswith("."))


def load(store: PathLike, camera: str, *, size: tuple[int, int] | None = None) -> np.ndarray:
  """Camera `camera`'s background as float32 (H, W, 3) in [0, 1].

  Args:
    store: the store folder.
    camera: the camera id (`data_pipelines.video.camera_name`).
    size: (height, width) the background must have (the frames it guides); None accepts any.

  Raises:
    BackgroundStoreError: no background for the camera (naming the camera and the store, and the cameras it
      has), or one of another size (naming the file and both sizes).
  """
  path = path_for(store, camera)
  if not path.is_file():
    known = cameras(store)
    have = f"it has {', '.join(known[:8])}{' ...' if len(known) > 8 else ''}" if known else "it is empty or missing"
    raise BackgroundStoreError(f"no background for camera {camera!r} in store {os.fspath(store)} ({have}); "
                               f"write one with `python -m launch.background --video VIDEO --store {os.fspath(store)}`")
  try:
    image = imageio.read_image(path)
  except imageio.ImageDecodeError as e:
    raise BackgroundStoreError(f"background {os.fspath(path)} cannot be read: {e.reason}") from e
  if size is not None and tuple(image.shape[:2]) != tuple(size):
    raise BackgroundStoreError(f"background {os.fspath(path)} is {image.shape[0]}x{image.shape[1]} (HxW) but "
                               f"{size[0]}x{size[1]} is needed; recompute it at that size")
  return image


def load_info(store: PathLike, camera: str) -> dict[str, Any] | None:
  """The provenance sidecar of a camera's background, or None."""
  path = path_for(store, camera).with_suffix(INFO_SUFFIX)
  if not path.is_file():
    return None
  return json.loads(path.read_text())
