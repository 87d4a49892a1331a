"""Paired image transforms for grain: frozen keyword-only dataclasses over dict elements (numpy).

Following kauldron (`kauldron/data/transforms/`) and BasicSR (`paired_random_crop`, `augment` in
`basicsr/data/transforms.py`): a random transform samples ONE geometry per element and applies it to
every key in `keys`, so a low image and its ground truth stay pixel-aligned. Every listed key must
be present and all of them must have the same height and width (a KeyError / ValueError otherwise: a
silent misalignment would poison training). Images are HxWxC float32 in [0, 1]; keys not listed pass
through.

No jax here: these run inside grain worker processes, which must not initialise an accelerator.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import grain
import numpy as np
from PIL import Image

from data_pipelines import degrade as degrade_lib

Element = Mapping[str, Any]

_PIL_FILTERS = {
    'lanczos': Image.Resampling.LANCZOS,
    'bicubic': Image.Resampling.BICUBIC,
    'bilinear': Image.Resampling.BILINEAR,
    'nearest': Image.Resampling.NEAREST,
    'area': Image.Resampling.BOX,
}


def _as_hw(size: int | tuple[int, int] | list[int]) -> tuple[int, int]:
  if isinstance(size, int):
    size = (size, size)
  h, w = (int(s) for s in size)
  if h <= 0 or w <= 0:
    raise ValueError(f'size must be positive, got {size}')
  return h, w


def _normalise(obj: Any) -> None:
  """Canonical `size`/`keys` (int -> (h, w), list -> tuple) on a frozen dataclass."""
  if hasattr(obj, 'size'):
    object.__setattr__(obj, 'size', _as_hw(obj.size))
  keys = (obj.keys,) if isinstance(obj.keys, str) else tuple(obj.keys)
  if not keys:
    raise ValueError(f'{type(obj).__name__}: keys must not be empty')
  object.__setattr__(obj, 'keys', keys)


def _common_hw(element: Element, keys: tuple[str, ...], who: str) -> tuple[int, int]:
  """The (H, W) shared by all `keys`; raises if a key is missing or sizes differ."""
  shapes = {}
  for k in keys:
    if k not in element:
      raise KeyError(f'{who}: key {k!r} not in element (keys: {sorted(element)})')
    shapes[k] = np.shape(element[k])[:2]
  if len(set(shapes.values())) != 1:
    raise ValueError(f'{who}: image keys differ in size, cannot apply one geometry: {shapes}')
  return next(iter(shapes.values()))


def _pad_to(image: np.ndarray, h: int, w: int) -> np.ndarray:
  """Reflect-pads (BasicSR/cv2 BORDER_REFLECT_101) so the image is at least h x w, centred."""
  ph, pw = max(h - image.shape[0], 0), max(w - image.shape[1], 0)
  if not (ph or pw):
    return image
  pad = [(ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2)] + [(0, 0)] * (image.ndim - 2)
  return np.pad(image, pad, mode='reflect')


@dataclasses.dataclass(frozen=True, kw_only=True)
class RandomCrop(grain.transforms.RandomMap):
  """Crops the same random `size` window from every key.

  Images smaller than `size` are first padded by reflection (centred), never with zeros: a black
  border would look like a dark region whose "ground truth" is also black, which is wrong
  supervision for low-light enhancement.
  """

  size: int | tuple[int, int]
  keys: tuple[str, ...] = ('low', 'high')

  def __post_init__(self):
    _normalise(self)

  def random_map(self, element: Element, rng: np.random.Generator) -> dict[str, Any]:
    h, w = self.size
    ih, iw = _common_hw(element, self.keys, 'RandomCrop')
    top = int(rng.integers(0, max(ih - h, 0) + 1))
    left = int(rng.integers(0, max(iw - w, 0) + 1))
    out = dict(element)
    for k in self.keys:
      padded = _pad_to(np.asarray(element[k]), h, w)
      out[k] = np.ascontiguousarray(padded[top:top + h, left:left + w])
    return out


@dataclasses.dataclass(frozen=True, kw_only=True)
class CenterCrop(grain.transforms.Map):
  """Crops the central `size` window of every key (reflect-pads smaller images like RandomCrop)."""

  size: int | tuple[int, int]
  keys: tuple[str, ...] = ('low', 'high')

  def __post_init__(self):
    _normalise(self)

  def map(self, element: Element) -> dict[str, Any]:
    h, w = self.size
    ih, iw = _common_hw(element, self.keys, 'CenterCrop')
    top, left = max(ih - h, 0) // 2, max(iw - w, 0) // 2
    out = dict(element)
    for k in self.keys:
      padded = _pad_to(np.asarray(element[k]), h, w)
      out[k] = np.ascontiguousarray(padded[top:top + h, left:left + w])
    return out


@dataclasses.dataclass(frozen=True, kw_only=True)
class RandomFlip(grain.transforms.RandomMap):
  """Flips every key left-right and/or up-down together, each with probability 1/2."""

  keys: tuple[str, ...] = ('low', 'high')
  horizontal: bool = True
  vertical: bool = False

  def __post_init__(self):
    _normalise(self)

  def random_map(self, element: Element, rng: np.random.Generator) -> dict[str, Any]:
    _common_hw(element, self.keys, 'RandomFlip')
    # Draw both coins whenever enabled so the stream does not depend on outcomes.
    flip_h = self.horizontal and bool(rng.random() < 0.5)
    flip_v = self.vertical and bool(rng.random() < 0.5)
    out = dict(element)
    for k in self.keys:
      image = np.asarray(element[k])
      if flip_h:
        image = image[:, ::-1]
      if flip_v:
        image = image[::-1]
      out[k] = np.ascontiguousarray(image)
    return out


@dataclasses.dataclass(frozen=True, kw_only=True)
class Resize(grain.transforms.Map):
  """Resizes every key to exactly `size` (an int means square, ignoring aspect ratio) with Pillow.

  SGZ (Zheng & Gupta, WACV 2022; `data_loader` in the authors' code) resizes training images to
  512x512 with Pillow's Lanczos filter; this does the same per channel on float32 ('F' mode), so no
  8-bit rounding, then clips the filter's ringing back to [0, 1].
  """

  size: int | tuple[int, int]
  keys: tuple[str, ...] = ('low', 'high')
  method: str = 'lanczos'

  def __post_init__(self):
    _normalise(self)
    if self.method not in _PIL_FILTERS:
      raise ValueError(f'unknown resize method {self.method!r}; choose from {sorted(_PIL_FILTERS)}')

  def map(self, element: Element) -> dict[str, Any]:
    _common_hw(element, self.keys, 'Resize')
    out = dict(element)
    for k in self.keys:
      # Port note: SGZ resizes uint8 images; resizing floats differs by at most half a level.
      out[k] = resize_image(np.asarray(element[k]), self.size, self.method)
    return out


def resize_image(image: np.ndarray, size: tuple[int, int], method: str = 'lanczos') -> np.ndarray:
  """Resizes an HxW or HxWxC float image to `size` = (h, w) per channel; float32 in [0, 1]."""
  h, w = size
  if image.shape[:2] == (h, w):
    return image.astype(np.float32, copy=False)
  channels = image[..., None] if image.ndim == 2 else image
  resized = [
      # A 2-D float32 array becomes a Pillow 'F' image, which every filter supports.
      np.asarray(Image.fromarray(np.ascontiguousarray(channels[..., c], dtype=np.float32))
                 .resize((w, h), _PIL_FILTERS[method]))
      for c in range(channels.shape[-1])
  ]
  out = np.clip(np.stack(resized, axis=-1), 0.0, 1.0)
  return out[..., 0] if image.ndim == 2 else out


@dataclasses.dataclass(frozen=True, kw_only=True)
class Degrade(grain.transforms.RandomMap):
  """Synthesises `dst` (default 'low') from `src` (default 'high') with `degrade.degrade`.

  Placed AFTER the geometry transforms, so noise is generated at the network's input resolution (as
  a sensor would produce it) rather than being averaged away by a later resize, and only the crop is
  degraded. The element generator comes from the sampler, i.e. (seed, epoch, index): fresh every
  epoch.
  """

  config: degrade_lib.DegradationConfig = degrade_lib.DegradationConfig()
  src: str = 'high'
  dst: str = 'low'

  def random_map(self, element: Element, rng: np.random.Generator) -> dict[str, Any]:
    if self.src not in element:
      raise KeyError(f'Degrade: key {self.src!r} not in element (keys: {sorted(element)})')
    out = dict(element)
    out[self.dst] = degrade_lib.degrade(np.asarray(element[self.src]), rng, self.config)
    return out
