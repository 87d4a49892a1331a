"""MATLAB-compatible image primitives in float64 numpy, for the no-reference metrics (NIQE,
BRISQUE).

The official NIQE and BRISQUE releases are MATLAB code; reproducing their numbers needs MATLAB's own
`rgb2gray` (rounded for uint8 input), `fspecial('gaussian')`, `imresize` (bicubic, antialiased when
shrinking, symmetric boundary) and the colon operator `0.2:0.001:10`. Behaviour follows the
documented MATLAB algorithms (and BasicSR `basicsr/utils/matlab_functions.py`, which ports
`imresize` the same way).
"""

import functools

import numpy as np
from scipy import special

# rgb2gray weights: first row of inv(rgb2ntsc matrix), as MATLAB computes them.
GREY_WEIGHTS = np.array([0.298936021293775, 0.587043074451121, 0.114020904255103])
# rgb2ycbcr Y row for RGB in [0, 255]: Y = 16 + (65.481 R + 128.553 G + 24.966 B) / 255.
Y_WEIGHTS = np.array([65.481, 128.553, 24.966]) / 255.0


def round_half_away(x: np.ndarray) -> np.ndarray:
  """MATLAB `round` (halves away from zero; numpy rounds halves to even)."""
  return np.sign(x) * np.floor(np.abs(x) + 0.5)


def to_grey_255(img: np.ndarray, *, data_range: float = 1.0, channel: str = 'grey',
                quantize: bool = True) -> np.ndarray:
  """A single-channel float64 image in [0, 255] as the MATLAB metrics see it.

  Args:
    img: HW or HWC (C = 1 or 3) image in [0, data_range].
    data_range: value of white in `img` (255 for uint8 arrays).
    channel: 'grey' (MATLAB `rgb2gray`, what NIQE/BRISQUE use) or 'y' (BT.601 luma of `rgb2ycbcr`,
      BasicSR's NIQE default).
    quantize: emulate 8-bit data: round the RGB values to integers (as saving a PNG does), then
      round the converted channel as MATLAB does for uint8 input. Off: the conversion is exact in
      float64.
  """
  x = np.asarray(img, dtype=np.float64) * (255.0 / data_range)
  if quantize:
    x = round_half_away(np.clip(x, 0.0, 255.0))
  if x.ndim == 3 and x.shape[-1] == 1:
    x = x[..., 0]
  if x.ndim == 3:
    if x.shape[-1] != 3:
      raise ValueError(f'expected HW, HW1 or HW3 images, got shape {x.shape}')
    if channel == 'grey':
      x = x @ GREY_WEIGHTS
    elif channel == 'y':
      x = x @ Y_WEIGHTS + 16.0
    else:
      raise ValueError(f"channel must be 'grey' or 'y', got {channel!r}")
    if quantize:
      x = round_half_away(x)
  elif x.ndim != 2:
    raise ValueError(f'expected HW, HW1 or HW3 images, got shape {x.shape}')
  return x


def fspecial_gaussian(size: int, sigma: float) -> np.ndarray:
  """MATLAB `fspecial('gaussian', size, sigma)`."""
  r = (size - 1) / 2.0
  y, x = np.mgrid[-r:r + 1, -r:r + 1]
  h = np.exp(-(x * x + y * y) / (2.0 * sigma * sigma))
  h[h < np.finfo(np.float64).eps * h.max()] = 0
  return h / h.sum()


def colon(start: float, step: float, stop: float) -> np.ndarray:
  """MATLAB `start:step:stop`: values are computed from both ends towards the middle."""
  n = int(np.floor((stop - start) / step + 1e-10))
  k = np.arange(n + 1, dtype=np.float64)
  return np.where(k <= n / 2, start + k * step, stop - (n - k) * step)


@functools.cache
def _aggd_table() -> tuple[np.ndarray, np.ndarray]:
  """The shape grid 0.2:0.001:10 and the AGGD moment ratio r(gamma) on it."""
  gam = colon(0.2, 0.001, 10.0)
  r_gam = special.gamma(2.0 / gam)**2 / (special.gamma(1.0 / gam) * special.gamma(3.0 / gam))
  return gam, r_gam


@functools.cache
def _ggd_table() -> tuple[np.ndarray, np.ndarray]:
  """The shape grid and the GGD ratio of BRISQUE's `estimateggdparam` (the reciprocal form)."""
  gam = colon(0.2, 0.001, 10.0)
  r_gam = special.gamma(1.0 / gam) * special.gamma(3.0 / gam) / special.gamma(2.0 / gam)**2
  return gam, r_gam


def estimate_ggd(vec: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """BRISQUE `estimateggdparam`, batched over the leading axis of `vec` (N, M): (shape, sigma)."""
  gam, r_gam = _ggd_table()
  sigma_sq = np.mean(vec * vec, axis=-1)
  e = np.mean(np.abs(vec), axis=-1)
  with np.errstate(invalid='ignore', divide='ignore'):
    rho = sigma_sq / e**2
    idx = np.argmin(np.abs(rho[:, None] - r_gam[None, :]), axis=-1)
  return gam[idx], np.sqrt(sigma_sq)


def estimate_aggd(vec: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """`estimateaggdparam`, batched over the leading axis of `vec` (N, M): (alpha, leftstd, rightstd).

  These are BRISQUE's outputs; NIQE's version scales both spreads by sqrt(gamma(1/alpha) /
  gamma(3/alpha)). Rows without negative (positive) values give NaN left (right) spreads, as
  MATLAB's mean of an empty set.
  """
  gam, r_gam = _aggd_table()
  sq = vec * vec
  neg, pos = vec < 0, vec > 0
  with np.errstate(invalid='ignore', divide='ignore'):
    left_std = np.sqrt(np.sum(sq * neg, axis=-1) / np.sum(neg, axis=-1))
    right_std = np.sqrt(np.sum(sq * pos, axis=-1) / np.sum(pos, axis=-1))
    gamma_hat = left_std / right_std
    rhat = np.mean(np.abs(vec), axis=-1)**2 / np.mean(sq, axis=-1)
    rhat_norm = rhat * (gamma_hat**3 + 1) * (gamma_hat + 1) / (gamma_hat**2 + 1)**2
    # An all-NaN row selects the first grid point, as MATLAB's `min` does.
    idx = np.argmin((r_gam[None, :] - rhat_norm[:, None])**2, axis=-1)
  return gam[idx], left_std, right_std


def _cubic(x: np.ndarray) -> np.ndarray:
  ax = np.abs(x)
  ax2, ax3 = ax * ax, ax * ax * ax
  return ((1.5 * ax3 - 2.5 * ax2 + 1) * (ax <= 1)
          + (-0.5 * ax3 + 2.5 * ax2 - 4 * ax + 2) * ((ax > 1) & (ax <= 2)))


@functools.lru_cache(maxsize=64)
def _resize_matrix(in_len: int, out_len: int, scale: float, antialias: bool) -> np.ndarray:
  """(out_len, in_len) weights of MATLAB `imresize` bicubic along one dimension."""
  width = 4.0
  if scale < 1 and antialias:
    kernel = lambda x: scale * _cubic(scale * x)
    width = width / scale
  else:
    kernel = _cubic
  x = np.arange(1, out_len + 1, dtype=np.float64)
  u = x / scale + 0.5 * (1 - 1 / scale)  # output pixel centres in input coordinates (1-based)
  left = np.floor(u - width / 2)
  taps = int(np.ceil(width)) + 2
  idx = left[:, None] + np.arange(taps)[None, :]
  weights = kernel(u[:, None] - idx)
  weights = weights / weights.sum(axis=1, keepdims=True)
  # Symmetric boundary: index into [1..n, n..1] cyclically.
  aux = np.concatenate([np.arange(in_len), np.arange(in_len)[::-1]])
  idx = aux[np.mod(idx.astype(np.int64) - 1, 2 * in_len)]
  mat = np.zeros((out_len, in_len))
  np.add.at(mat, (np.repeat(np.arange(out_len), taps), idx.ravel()), weights.ravel())
  return mat


def imresize(img: np.ndarray, scale: float, *, antialias: bool = True) -> np.ndarray:
  """MATLAB `imresize(img, scale)` (bicubic) of HW or HWC images, to size `ceil(scale * size)`."""
  img = np.asarray(img, dtype=np.float64)
  h, w = img.shape[:2]
  out_h, out_w = int(np.ceil(scale * h)), int(np.ceil(scale * w))
  # MATLAB resizes the dimension with the smaller scale first; with equal scales rows come first.
  out = np.tensordot(_resize_matrix(h, out_h, scale, antialias), img, axes=(1, 0))
  out = np.tensordot(_resize_matrix(w, out_w, scale, antialias), out, axes=(1, 1))
  return np.moveaxis(out, 0, 1)
