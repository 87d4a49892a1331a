"""PyTorch-semantics resampling (`F.interpolate`, `nn.UpsamplingBilinear2d`) for NHWC jax arrays.

Ported from PyTorch's CPU kernels (`aten/src/ATen/native/UpSample.h`: `area_pixel_compute_scale`,
`area_pixel_compute_source_index`, `nearest_idx`) so that the SGZ pipeline (Zheng & Gupta,
"Semantic-Guided Zero-Shot Learning for Low-Light Image/Video Enhancement", WACV-W 2022) reproduces
the authors' outputs:

* `jax.image.resize` antialiases when downsampling, has no `align_corners=True` mode and its
  'nearest' is half-pixel; none of these match PyTorch.
* Source coordinates, indices and weights are computed in numpy at trace time exactly as PyTorch
  computes them for float32 tensors, so the ops are static gathers plus a weighted sum: exact on
  every backend (no matmul precision to worry about), jit-compatible and differentiable in x.

Images are NHWC (or HWC): height is axis -3, width axis -2.
"""

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

_Pair = float | Sequence[float]


def _pair(v: _Pair) -> tuple[float, float]:
  if isinstance(v, (int, float)):
    return float(v), float(v)
  a, b = v
  return float(a), float(b)


def _coordinate_scale(in_size: int, out_size: int, align_corners: bool,
                      scale_factor: float | None) -> np.float32:
  """`area_pixel_compute_scale`: the step in source pixels per destination pixel."""
  if align_corners:
    return np.float32(in_size - 1) / np.float32(out_size - 1) if out_size > 1 else np.float32(0)
  if scale_factor is not None and scale_factor > 0:
    # A user-given scale_factor is used as-is (1/scale_factor), not recomputed from the sizes.
    return np.float32(1.0 / scale_factor)
  return np.float32(in_size) / np.float32(out_size)


def _linear_taps(in_size: int, out_size: int, align_corners: bool, scale_factor: float | None):
  """Indices (i0, i1) and weights (w0, w1) of 1-D linear interpolation, PyTorch CPU semantics."""
  scale = _coordinate_scale(in_size, out_size, align_corners, scale_factor)
  # The float32 scale times the index is evaluated without intermediate float32 rounding (PyTorch's
  # compiled kernel contracts it to an FMA); float64 then one rounding reproduces it bit for bit.
  dst = np.arange(out_size, dtype=np.float64)
  if align_corners:
    src = (np.float64(scale) * dst).astype(np.float32)
  else:
    src = np.maximum(np.float64(scale) * (dst + 0.5) - 0.5, 0).astype(np.float32)
  i0 = np.minimum(np.floor(src).astype(np.int32), in_size - 1)
  i1 = np.minimum(i0 + 1, in_size - 1)
  w1 = np.clip(src - i0.astype(np.float32), 0, 1).astype(np.float32)
  return i0, i1, (np.float32(1) - w1), w1


def _lerp_axis(x: jax.Array, axis: int, taps) -> jax.Array:
  i0, i1, w0, w1 = taps
  if x.shape[axis] == len(i0) and np.array_equal(i0, np.arange(len(i0))) and not w1.any():
    return x  # identity resampling (e.g. scale 1)
  shape = [1] * x.ndim
  shape[axis] = -1
  a = jnp.take(x, jnp.asarray(i0), axis=axis)
  b = jnp.take(x, jnp.asarray(i1), axis=axis)
  return (a * jnp.asarray(w0, x.dtype).reshape(shape) + b * jnp.asarray(w1, x.dtype).reshape(shape))


def _out_size(in_hw: tuple[int, int], out_hw: Sequence[int] | None, scale_factor: _Pair | None
              ) -> tuple[tuple[int, int], tuple[float | None, float | None]]:
  if (out_hw is None) == (scale_factor is None):
    raise ValueError("give exactly one of out_hw and scale_factor")
  if out_hw is not None:
    return (int(out_hw[0]), int(out_hw[1])), (None, None)
  sh, sw = _pair(scale_factor)
  # PyTorch: output size = floor(in * scale_factor) in double precision.
  return (math.floor(in_hw[0] * sh), math.floor(in_hw[1] * sw)), (sh, sw)


def resize_bilinear(x: jax.Array, out_hw: Sequence[int] | None = None, *, align_corners: bool,
                    scale_factor: _Pair | None = None) -> jax.Array:
  """`F.interpolate(x, size=out_hw | scale_factor=..., mode='bilinear', align_corners=...)`.

  No antialiasing. With `scale_factor` (and align_corners False) the source coordinate uses
  `1 / scale_factor`, not `in / out`, as PyTorch does when `recompute_scale_factor` is unset.

  Args:
    x: (..., H, W, C) array.
    out_hw: output (H, W); exclusive with `scale_factor`.
    align_corners: PyTorch's flag.
    scale_factor: a float or an (h, w) pair; output size is `floor(in * scale_factor)`.

  Returns:
    (..., out_h, out_w, C) array of x's dtype.
  """
  h, w = x.shape[-3], x.shape[-2]
  (oh, ow), (sh, sw) = _out_size((h, w), out_hw, scale_factor)
  x = _lerp_axis(x, x.ndim - 3, _linear_taps(h, oh, align_corners, sh))
  return _lerp_axis(x, x.ndim - 2, _linear_taps(w, ow, align_corners, sw))


def downsample_bilinear_by(x: jax.Array, factor: float) -> jax.Array:
  """`F.interpolate(x, scale_factor=1/factor, mode='bilinear')` (align_corners False), as in SGZ.

  For an even integer factor s and H, W multiples of s, each output pixel is the mean of the 2x2
  input pixels at the centre of its s x s block (source coordinate s*d + (s-1)/2).
  """
  return resize_bilinear(x, align_corners=False, scale_factor=1.0 / factor)


def upsample_bilinear_align_corners(x: jax.Array, factor: float) -> jax.Array:
  """`nn.UpsamplingBilinear2d(scale_factor=factor)`: align_corners=True, size floor(in * factor)."""
  return resize_bilinear(x, align_corners=True, scale_factor=factor)


def _nearest_index(in_size: int, out_size: int, scale_factor: float | None) -> np.ndarray:
  """PyTorch legacy `nearest_idx`: src = min(floor(dst * scale), in - 1)."""
  if out_size == in_size:
    return np.arange(out_size, dtype=np.int32)
  if out_size == 2 * in_size:
    return np.arange(out_size, dtype=np.int32) >> 1
  scale = _coordinate_scale(in_size, out_size, False, scale_factor)
  src = np.floor(np.arange(out_size, dtype=np.float32) * scale).astype(np.int32)
  return np.minimum(src, in_size - 1)


def resize_nearest_torch(x: jax.Array, out_hw: Sequence[int] | None = None, *,
                         scale_factor: _Pair | None = None) -> jax.Array:
  """`F.interpolate(x, size=out_hw | scale_factor=..., mode='nearest')` (not 'nearest-exact')."""
  h, w = x.shape[-3], x.shape[-2]
  (oh, ow), (sh, sw) = _out_size((h, w), out_hw, scale_factor)
  x = jnp.take(x, jnp.asarray(_nearest_index(h, oh, sh)), axis=x.ndim - 3)
  return jnp.take(x, jnp.asarray(_nearest_index(w, ow, sw)), axis=x.ndim - 2)
