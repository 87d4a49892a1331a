"""Full-reference image quality: PSNR and SSIM, batched NHWC, jit-able.

SSIM is Wang et al., "Image quality assessment: from error visibility to structural similarity" (TIP
2004), as in the authors' `ssim_index.m` and BasicSR `basicsr/metrics/psnr_ssim.py`: an 11x11
Gaussian window (sigma 1.5) applied with 'valid' support, K1 = 0.01, K2 = 0.03, population (biased)
local covariances, mean of the SSIM map; colour images average the per-channel values.

The evaluation protocol is explicit in every call (BasicSR#634: most "cannot reproduce" reports are
protocol mismatches):
  - `data_range`: the images lie in [0, data_range] (1.0 for the library's float images, 255 for
    8-bit values);
  - `crop_border`: pixels removed from each side before anything else (super-resolution habit; 0
    here);
  - `channel`: 'rgb' (all channels), 'y' (BT.601 luma of MATLAB `rgb2ycbcr`, studio range 16..235)
    or 'grey' (MATLAB `rgb2gray`);
  - `quantize`: round the converted Y/grey channel to the 8-bit grid, as MATLAB does for uint8
    input. With `channel='grey', quantize=True, data_range=255` SSIM matches MATLAB
    `ssim(rgb2gray(A), rgb2gray(B))` on the pyiqa calibration pairs to 5e-5.
"""

import functools
from typing import Literal

import clu.metrics
import jax
import jax.numpy as jnp
import numpy as np

Channel = Literal['rgb', 'y', 'grey']

# MATLAB rgb2gray: the luma row of the NTSC transform, inverted from `rgb2ntsc` (more digits than
# 0.299...).
_GREY_WEIGHTS = (0.298936021293775, 0.587043074451121, 0.114020904255103)
# MATLAB rgb2ycbcr, Y row, for RGB in [0, 1] giving Y in [16, 235] / 255.
_Y_WEIGHTS = (65.481 / 255.0, 128.553 / 255.0, 24.966 / 255.0)
_Y_OFFSET = 16.0 / 255.0


def rgb_to_y(img: jax.Array, *, data_range: float = 1.0, quantize: bool = False) -> jax.Array:
  """BT.601 luma as MATLAB `rgb2ycbcr` (studio range), keeping a trailing channel axis of size 1.

  Args:
    img: RGB images `(..., 3)` in [0, data_range].
    data_range: value of white.
    quantize: round to the 8-bit grid (steps of data_range / 255), as MATLAB does for uint8 input.
  """
  img = jnp.asarray(img, jnp.float32)
  y = img @ jnp.asarray(_Y_WEIGHTS, jnp.float32) + _Y_OFFSET * data_range
  return _maybe_quantize(y[..., None], data_range, quantize)


def rgb_to_grey(img: jax.Array, *, data_range: float = 1.0, quantize: bool = False) -> jax.Array:
  """MATLAB `rgb2gray`, keeping a trailing channel axis of size 1 (arguments as `rgb_to_y`)."""
  img = jnp.asarray(img, jnp.float32)
  grey = img @ jnp.asarray(_GREY_WEIGHTS, jnp.float32)
  return _maybe_quantize(grey[..., None], data_range, quantize)


def _maybe_quantize(x: jax.Array, data_range: float, quantize: bool) -> jax.Array:
  if not quantize:
    return x
  step = data_range / 255.0
  # jnp.round is round-half-even; MATLAB rounds halves away from zero (values are >= 0 here).
  return jnp.floor(x / step + 0.5) * step


def prepare(img: jax.Array, *, data_range: float = 1.0, crop_border: int = 0,
            channel: Channel = 'rgb', quantize: bool = False) -> jax.Array:
  """Applies the protocol (crop, then channel conversion) to NHWC or HWC images; returns float32."""
  img = jnp.asarray(img, jnp.float32)
  if img.ndim not in (3, 4):
    raise ValueError(f'expected HWC or NHWC images, got shape {img.shape}')
  if crop_border:
    img = img[..., crop_border:-crop_border, crop_border:-crop_border, :]
  if channel == 'rgb':
    return img
  if img.shape[-1] != 3:
    raise ValueError(f"channel={channel!r} needs RGB input, got {img.shape[-1]} channels")
  if channel == 'y':
    return rgb_to_y(img, data_range=data_range, quantize=quantize)
  if channel == 'grey':
    return rgb_to_grey(img, data_range=data_range, quantize=quantize)
  raise ValueError(f"channel must be 'rgb', 'y' or 'grey', got {channel!r}")


_PROTOCOL_ARGS = ('data_range', 'crop_border', 'channel', 'quantize')


# Jitted with the protocol static: eager callers get one compiled program per image shape instead of
# one dispatch per primitive; inside a caller's jit this is simply inlined.
@functools.partial(jax.jit, static_argnames=_PROTOCOL_ARGS)
def psnr(pred: jax.Array, target: jax.Array, *, data_range: float = 1.0, crop_border: int = 0,
         channel: Channel = 'rgb', quantize: bool = False) -> jax.Array:
  """Peak signal-to-noise ratio in dB, one value per image (a scalar for HWC input).

  The MSE is over all pixels and channels of each image; identical images give +inf.
  """
  _check_shapes(pred, target)
  kw = dict(data_range=data_range, crop_border=crop_border, channel=channel, quantize=quantize)
  x, y = prepare(pred, **kw), prepare(target, **kw)
  mse = jnp.mean(jnp.square(x - y), axis=(-3, -2, -1))
  return 10.0 * jnp.log10(data_range**2 / mse)


def _gaussian_1d(size: int = 11, sigma: float = 1.5) -> np.ndarray:
  x = np.arange(size, dtype=np.float64) - (size - 1) / 2
  g = np.exp(-(x**2) / (2 * sigma**2))
  return (g / g.sum()).astype(np.float32)


def _filter_valid(x: jax.Array, g: np.ndarray) -> jax.Array:
  """Separable Gaussian filter of NHWC `x` with 'valid' support.

  Written as a sum of shifted slices (11 taps per axis): XLA fuses it into a few passes, while a
  depthwise `conv_general_dilated` is an order of magnitude slower on CPU.
  """
  k = len(g)
  h, w = x.shape[1] - k + 1, x.shape[2] - k + 1
  x = sum(float(g[i]) * x[:, i:i + h] for i in range(k))
  return sum(float(g[i]) * x[:, :, i:i + w] for i in range(k))


def ssim_map(x: jax.Array, y: jax.Array, *, data_range: float = 1.0, window_size: int = 11,
             sigma: float = 1.5, k1: float = 0.01, k2: float = 0.03) -> jax.Array:
  """The SSIM map of prepared NHWC float images, shape (N, H - 10, W - 10, C)."""
  g = _gaussian_1d(window_size, sigma)
  c1 = (k1 * data_range)**2
  c2 = (k2 * data_range)**2
  # Port note: the references compute E[x^2] - mu^2 in float64. In float32 that cancels badly on
  # bright images, so second moments are taken of images centred on their per-image, per-channel
  # mean (variance and covariance are shift-invariant; the means use the original values).
  xc = x - jnp.mean(x, axis=(1, 2), keepdims=True)
  yc = y - jnp.mean(y, axis=(1, 2), keepdims=True)
  # One filter pass over all seven moment images (stacked on channels) keeps the program small.
  moments = jnp.concatenate([x, y, xc, yc, xc * xc, yc * yc, xc * yc], axis=-1)
  mu_x, mu_y, mu_xc, mu_yc, e_xx, e_yy, e_xy = jnp.split(_filter_valid(moments, g), 7, axis=-1)
  var_x = e_xx - mu_xc**2
  var_y = e_yy - mu_yc**2
  cov = e_xy - mu_xc * mu_yc
  num = (2 * mu_x * mu_y + c1) * (2 * cov + c2)
  den = (mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2)
  return num / den


@functools.partial(jax.jit, static_argnames=_PROTOCOL_ARGS)
def ssim(pred: jax.Array, target: jax.Array, *, data_range: float = 1.0, crop_border: int = 0,
         channel: Channel = 'rgb', quantize: bool = False) -> jax.Array:
  """Structural similarity, one value per image (a scalar for HWC input); channels are averaged."""
  _check_shapes(pred, target)
  kw = dict(data_range=data_range, crop_border=crop_border, channel=channel, quantize=quantize)
  x, y = prepare(pred, **kw), prepare(target, **kw)
  unbatched = x.ndim == 3
  if unbatched:
    x, y = x[None], y[None]
  if min(x.shape[1:3]) < 11:
    raise ValueError(
        f'SSIM needs images of at least 11x11 pixels after cropping, got {x.shape[1:3]}')
  values = jnp.mean(ssim_map(x, y, data_range=data_range), axis=(1, 2, 3))
  return values[0] if unbatched else values


def _check_shapes(pred: jax.Array, target: jax.Array) -> None:
  if jnp.shape(pred) != jnp.shape(target):
    raise ValueError(f'pred and target shapes differ: {jnp.shape(pred)} vs {jnp.shape(target)}')


def psnr_metric(*, pred_key: str = 'pred', target_key: str = 'target', **protocol) -> type:
  """A `clu.metrics.Average` of per-image PSNR, for `Collection`s updated inside jitted eval steps.

  Use `psnr: full_reference.psnr_metric(data_range=1.0)` as a field of a `clu.metrics.Collection`,
  then `Collection.single_from_model_output(pred=..., target=..., mask=...)`. `protocol` holds the
  keyword arguments of `psnr`.
  """
  def fn(**outputs):
    return psnr(outputs[pred_key], outputs[target_key], **protocol)
  return clu.metrics.Average.from_fun(fn)


def ssim_metric(*, pred_key: str = 'pred', target_key: str = 'target', **protocol) -> type:
  """A `clu.metrics.Average` of per-image SSIM (see `psnr_metric`)."""
  def fn(**outputs):
    return ssim(outputs[pred_key], outputs[target_key], **protocol)
  return clu.metrics.Average.from_fun(fn)
