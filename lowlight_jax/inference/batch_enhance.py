"""Enhancing files and folders: one image at a time at its own size, never a half-written output.

Used by `launch.enhance` for both trained runs and released weights. A file that cannot be read is reported by
name and skipped; the others are still processed.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Callable, Sequence

import numpy as np
import tqdm

from lowlight_jax.io import imageio


@dataclasses.dataclass
class EnhanceReport:
  written: list[str] = dataclasses.field(default_factory=list)
  failed: list[tuple[str, str]] = dataclasses.field(default_factory=list)


def collect_inputs(path: str) -> list[str]:
  """One file, or every image file of a folder (sorted)."""
  if os.path.isdir(path):
    files = imageio.list_images(path)
    if not files:
      raise ValueError(f"no image files in {path}")
    return [str(f) for f in files]
  if not os.path.exists(path):
    raise FileNotFoundError(f"input {path} does not exist")
  return [path]


def output_path(input_path: str, output_dir: str) -> str:
  """Same name as the input, as PNG (lossless)."""
  stem = os.path.splitext(os.path.basename(input_path))[0]
  return os.path.join(output_dir, stem + ".png")


def enhance_paths(enhance_one: Callable[[np.ndarray], np.ndarray], inputs: Sequence[str], output_dir: str, *,
                  progress: bool = True, max_pixels: int | None = None, same_size: bool = True) -> EnhanceReport:
  """Runs `enhance_one` (HxWx3 float [0,1] -> HxWx3 uint8) over `inputs`, writing PNGs into `output_dir`.

  `same_size=False` is only for reproducing the authors' SGZ script, which crops to multiples of its scale.
  """
  os.makedirs(output_dir, exist_ok=True)
  report = EnhanceReport()
  kwargs = {} if max_pixels is None else {"max_pixels": max_pixels}
  for path in tqdm.tqdm(inputs, desc="enhance", unit="img", disable=not progress):
    try:
      image = imageio.read_image(path, **kwargs)
    except (imageio.ImageDecodeError, OSError) as e:
      report.failed.append((path, str(e)))
      tqdm.tqdm.write(f"error: {path}: {e}")
      continue
    out = np.asarray(enhance_one(image))
    if out.dtype != np.uint8 or out.ndim != 3 or (same_size and out.shape != image.shape):
      raise RuntimeError(f"enhancer returned {out.dtype}{out.shape} for {path} of shape {image.shape}")
    dest = output_path(path, output_dir)
    imageio.write_png_atomic(dest, out)
    report.written.append(dest)
  return report
