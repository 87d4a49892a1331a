"""Robust image reading and atomic writing for the data pipelines (Pillow + numpy only).

`read_image` turns any still image Pillow can open into RGB float32 in [0, 1], HxWx3, the layout the
library uses everywhere (docs/CONVENTIONS.md). Real folders of photographs contain camera JPEGs with
EXIF rotation, 16-bit PNGs, greyscale scans, RGBA screenshots, palette GIFs and CMYK JPEGs, and also
files that are empty, cut short or not images at all; the latter raise `ImageDecodeError` (a
`ValueError`) naming the file, so a data source can skip them with one clear warning instead of
crashing a training run.

Mode handling (what a photo "means" as RGB):
  * EXIF orientation is applied (`ImageOps.exif_transpose`), as every photo viewer does.
  * 16-bit greyscale (`I;16*`, `I`) keeps full precision (divided by 65535). Pillow has no 16-bit
    RGB mode: 16-bit colour PNG/TIFF arrive already reduced to 8 bits per channel by Pillow.
  * 32-bit float (`F`) is taken as already in [0, 1] and clipped.
  * Greyscale is replicated to three channels.
  * Alpha (`RGBA`, `LA`, `PA`, palette transparency) is composited onto BLACK, i.e. colour * alpha:
    fully opaque images (the usual case) are unchanged, and transparent pixels, whose stored colour
    is undefined and often garbage, become "no light", which is what a low-light pipeline should
    see.
  * Palette, CMYK, YCbCr, LAB, HSV and 1-bit images use Pillow's conversion to RGB. ICC profiles are
    ignored (no colour management).

Decompression bombs: an image whose header declares more than `max_pixels` pixels is rejected before
any pixel is decoded; Pillow's own `DecompressionBombWarning` (raised above
`PIL.Image.MAX_IMAGE_PIXELS`, which therefore caps `max_pixels` from above) is turned into an error
for our calls only.
"""

from __future__ import annotations

import os
import pathlib
import threading
import warnings

import numpy as np
from PIL import Image
from PIL import ImageOps

from lowlight_jax.io import atomic_io

# 50 Mpx covers full-resolution photos from current 45 Mpx cameras; a float32 HxWx3 of that size is
# 600 MB, so anything larger in a training folder is almost certainly a mistake or an attack.
DEFAULT_MAX_PIXELS = 50_000_000

IMAGE_EXTENSIONS = ('.png', '.jpg', '.jpeg', '.bmp', '.tif', '.tiff', '.webp')

PathLike = str | os.PathLike

# `warnings.catch_warnings` edits process-global filters; grain reads records from a thread pool, so
# our own calls serialise around it. Only the header parse (`Image.open`) runs under the lock.
_WARNINGS_LOCK = threading.Lock()


class ImageDecodeError(ValueError):
  """A file could not be decoded as an image; the message names the file and the reason."""

  def __init__(self, path: PathLike, reason: str):
    self.path = os.fspath(path)
    self.reason = reason
    super().__init__(f'cannot decode image {self.path!r}: {reason}')

  def __reduce__(self):
    # Keeps the exception picklable across grain worker processes (two-argument constructor).
    return (type(self), (self.path, self.reason))


def _open_checked(path: PathLike, max_pixels: int) -> Image.Image:
  """Opens (header only) and rejects empty files and oversized images."""
  if os.path.getsize(path) == 0:
    raise ImageDecodeError(path, 'empty file (0 bytes)')
  try:
    with _WARNINGS_LOCK, warnings.catch_warnings():
      warnings.simplefilter('error', Image.DecompressionBombWarning)
      im = Image.open(path)
  except (Image.DecompressionBombWarning, Image.DecompressionBombError) as e:
    raise ImageDecodeError(path, f'decompression bomb check failed: {e}') from e
  except Image.UnidentifiedImageError as e:
    raise ImageDecodeError(path, 'not a recognised image format') from e
  except OSError as e:
    raise ImageDecodeError(path, f'{type(e).__name__}: {e}') from e
  width, height = im.size
  if width * height > max_pixels:
    im.close()
    raise ImageDecodeError(
        path, f'{width}x{height} = {width * height} pixels exceeds max_pixels={max_pixels}')
  if width == 0 or height == 0:
    im.close()
    raise ImageDecodeError(path, f'degenerate size {width}x{height}')
  return im


def _to_rgb_float(im: Image.Image) -> np.ndarray:
  """Any loaded Pillow image -> float32 HxWx3 in [0, 1] (rules in the module docstring)."""
  mode = im.mode
  if mode.startswith('I;16') or mode == 'I':
    grey = np.asarray(im).astype(np.float32) / 65535.0
    return np.repeat(np.clip(grey, 0.0, 1.0)[..., None], 3, axis=-1)
  if mode == 'F':
    grey = np.clip(np.asarray(im, dtype=np.float32), 0.0, 1.0)
    return np.repeat(grey[..., None], 3, axis=-1)
  has_alpha = mode in ('RGBA', 'LA', 'PA', 'RGBa', 'La') or 'transparency' in im.info
  im = im.convert('RGBA' if has_alpha else 'RGB')
  arr = np.asarray(im, dtype=np.float32) / 255.0
  if has_alpha:
    # Composite onto black: colour * alpha.
    arr = arr[..., :3] * arr[..., 3:4]
  return np.ascontiguousarray(arr, dtype=np.float32)


def read_image(path: PathLike, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
  """Decodes an image file to RGB float32 HxWx3 in [0, 1].

  Args:
    path: image file (any format Pillow reads).
    max_pixels: reject images whose header declares more pixels than this (decompression-bomb
      guard).

  Returns:
    float32 array of shape (H, W, 3) with values in [0, 1], EXIF orientation applied.

  Raises:
    ImageDecodeError: the file is empty, truncated, not an image, too large or otherwise
      undecodable.
    FileNotFoundError: the path does not exist (a configuration error, not a bad file).
  """
  if not os.path.exists(path):
    raise FileNotFoundError(f'image file not found: {os.fspath(path)!r}')
  im = _open_checked(path, max_pixels)
  try:
    with im:
      # load() decodes every pixel: truncated data raises OSError here (we never set
      # ImageFile.LOAD_TRUNCATED_IMAGES, which would silently pad with grey).
      im.load()
      im = ImageOps.exif_transpose(im)
      return _to_rgb_float(im)
  except ImageDecodeError:
    raise
  except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as e:
    raise ImageDecodeError(path, f'{type(e).__name__}: {e}') from e


def verify_image(path: PathLike, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[int, int]:
  """Cheap validity check without decoding pixels; returns (height, width).

  Checks existence of a known header, the size limit, and Pillow's `verify()` (chunk CRCs for PNG;
  header consistency for most other formats). A truncated JPEG can still pass and only fail at
  `read_image` time, so readers must handle `ImageDecodeError` anyway.

  Raises:
    ImageDecodeError: as `read_image`.
  """
  im = _open_checked(path, max_pixels)
  width, height = im.size
  try:
    with im:
      im.verify()
    # verify() must come first and leaves the image unusable: reopen (header only) for EXIF, whose
    # 90/270 degree rotations swap the decoded size.
    with Image.open(path) as im:
      if _exif_orientation(im) in (5, 6, 7, 8):
        height, width = width, height
  except Exception as e:  # Pillow's verify raises a zoo of types (SyntaxError, struct.error, ...).
    raise ImageDecodeError(path, f'verify failed: {type(e).__name__}: {e}') from e
  return height, width


def _exif_orientation(im: Image.Image) -> int:
  """EXIF orientation from the header only.

  Pillow's getexif() decodes a whole PNG whose eXIf chunk comes after the pixel data; such
  (non-conforming) PNGs are treated as unrotated here.
  """
  if im.format == 'PNG' and 'exif' not in im.info:
    return 1
  return im.getexif().get(0x0112, 1)


def write_png_atomic(path: PathLike, image: np.ndarray) -> None:
  """Writes a uint8 HxW, HxWx3 or HxWx4 array as PNG; readers never see a half-written file.

  The PNG goes to a temporary file in the destination directory (same filesystem) which is flushed,
  fsync'ed and then renamed over `path` with `os.replace`, which is atomic on POSIX and Windows.
  """
  image = np.asarray(image)
  if image.dtype != np.uint8:
    raise TypeError(f'write_png_atomic expects uint8, got {image.dtype}')
  if not (image.ndim == 2 or (image.ndim == 3 and image.shape[-1] in (1, 3, 4))):
    raise ValueError(f'expected HxW, HxWx1, HxWx3 or HxWx4, got shape {image.shape}')
  if image.ndim == 3 and image.shape[-1] == 1:
    image = image[..., 0]
  atomic_io.write_file_atomic(path, lambda f: Image.fromarray(image).save(f, format='PNG'))


def list_images(directory: PathLike) -> list[pathlib.Path]:
  """Image files directly inside `directory` (not recursive), sorted by name.

  Extensions png/jpg/jpeg/bmp/tif/tiff/webp, case-insensitive; hidden files (leading '.') are
  ignored.

  Raises:
    NotADirectoryError: `directory` does not exist or is not a directory.
  """
  directory = pathlib.Path(directory)
  if not directory.is_dir():
    raise NotADirectoryError(f'not a directory: {os.fspath(directory)!r}')
  return sorted(
      p for p in directory.iterdir()
      if p.is_file() and not p.name.startswith('.') and p.suffix.lower() in IMAGE_EXTENSIONS)
