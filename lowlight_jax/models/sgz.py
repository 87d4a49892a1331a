"""SGZ enhancement network: EFE (factor extraction), RIE (recurrent curve), inference pipeline.

Paper: Zheng & Gupta, "Semantic-Guided Zero-Shot Learning for Low-Light Image/Video Enhancement"
(WACV Workshops 2022). Reference code: ShenZheng2000/Semantic-Guided-Low-Light-Image-Enhancement
(`modeling/model.py`: `DSC`, `enhance_net_nopool`; `test.py`, `utils.py`), commit 94dedc5.

Module and submodule names follow the torch attributes, so the released `weight/Epoch99.pth` keys
(`e_conv1.depth_conv.weight`, ...) load through `lowlight_jax.convert.layout.torch_to_flax`.
"""

import functools
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from lowlight_jax.ops import resize

# Port note: METHODS.md (and Zero-DCE's `weights_init`) give N(0, 0.02) for conv weights; the
# released SGZ train.py never calls a weights_init, so the authors' run used torch's default init.
# We use N(0, 0.02) kernels and zero biases.
_KERNEL_INIT = nn.initializers.normal(stddev=0.02)


def _shifted_sum(xp: jax.Array, kernel: jax.Array, h: int, w: int) -> jax.Array:
  """sum_ij xp[:, i:i+h, j:j+w] * kernel[i, j]: a depthwise 3x3 correlation of the padded `xp`, one fused loop."""
  out = None
  for i in range(3):
    for j in range(3):
      term = xp[:, i:i + h, j:j + w, :] * kernel[i, j]
      out = term if out is None else out + term
  return out


def _pad1(x: jax.Array) -> jax.Array:
  return jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))


def _depthwise_kernel_grad_plain(xp: jax.Array, g: jax.Array) -> jax.Array:
  """d/dkernel of `_shifted_sum`: nine products summed over batch and space (float32 accumulation)."""
  h, w = g.shape[1], g.shape[2]
  return jnp.stack([jnp.sum(xp[:, i:i + h, j:j + w] * g, (0, 1, 2), dtype=jnp.float32)
                    for i in range(3) for j in range(3)]).reshape(3, 3, -1)


def _depthwise_kernel_grad_banded(xp: jax.Array, g: jax.Array, band: int = 16) -> jax.Array:
  """The same sums, a band of `band` rows at a time (a scan), so each band's shifted slices stay in cache.

  XLA on CPU materialises every shifted slice of the whole image before reducing it; over bands the nine
  products of a band reuse what is already in cache (with the hand-written 1x1 gradient: the whole EFE gradient
  at 256x256 batch 2 in 448 ms instead of 1,030 ms on 2 cores).
  """
  h, w = g.shape[1], g.shape[2]
  rows = -(-h // band) * band
  if rows != h:  # Zero rows of g add nothing.
    g = jnp.pad(g, ((0, 0), (0, rows - h), (0, 0), (0, 0)))
    xp = jnp.pad(xp, ((0, 0), (0, rows - h), (0, 0), (0, 0)))

  def body(acc, k):
    xb = jax.lax.dynamic_slice_in_dim(xp, k * band, band + 2, 1)
    gb = jax.lax.dynamic_slice_in_dim(g, k * band, band, 1)
    return acc + _depthwise_kernel_grad_plain(xb, gb), None

  acc, _ = jax.lax.scan(body, jnp.zeros((3, 3, g.shape[-1]), jnp.float32), jnp.arange(rows // band))
  return acc


@jax.custom_vjp
def depthwise3x3(x: jax.Array, kernel: jax.Array) -> jax.Array:
  """Depthwise 3x3 correlation with zero padding 1 (no bias): `x` (B, H, W, C), `kernel` (3, 3, C)."""
  return _shifted_sum(_pad1(x), kernel, x.shape[1], x.shape[2])


def _depthwise3x3_fwd(x, kernel):
  return depthwise3x3(x, kernel), (x, kernel)


def _depthwise3x3_bwd(res, g):
  x, kernel = res
  gx = _shifted_sum(_pad1(g), kernel[::-1, ::-1], x.shape[1], x.shape[2])  # The transposed correlation.
  gk = jax.lax.platform_dependent(_pad1(x), g, cpu=_depthwise_kernel_grad_banded,
                                  default=_depthwise_kernel_grad_plain)
  return gx, gk.astype(kernel.dtype)


depthwise3x3.defvjp(_depthwise3x3_fwd, _depthwise3x3_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def pointwise(x: jax.Array, kernel: jax.Array, precision: Any = None) -> jax.Array:
  """1x1 convolution as a product over channels: `x` (B, H, W, I), `kernel` (I, O)."""
  return jnp.einsum("bhwi,io->bhwo", x, kernel, precision=precision)


def _pointwise_fwd(x, kernel, precision):
  return pointwise(x, kernel, precision), (x, kernel)


def _pointwise_bwd(precision, res, g):
  x, kernel = res
  gx = jnp.einsum("bhwo,io->bhwi", g, kernel, precision=precision)
  # One (I, N) x (N, O) matrix product over all pixels, accumulated in float32.
  gk = jnp.matmul(x.reshape(-1, x.shape[-1]).T, g.reshape(-1, g.shape[-1]), precision=precision,
                  preferred_element_type=jnp.float32)
  return gx, gk.astype(kernel.dtype)


pointwise.defvjp(_pointwise_fwd, _pointwise_bwd)


class DepthwiseConv3x3(nn.Module):
  """Depthwise 3x3 conv (zero padding 1, bias) written as nine shifted multiply-adds.

  Same parameters as `nn.Conv(C, (3, 3), feature_group_count=C)` (`kernel` (3, 3, 1, C), `bias` (C,)), so
  checkpoints map unchanged. XLA on CPU runs grouped convolutions (and their gradients) an order of magnitude
  slower than this elementwise form, which it fuses into one loop; on accelerators the two are equivalent.
  The gradient is written by hand (`depthwise3x3`): the kernel's is summed over row bands on CPU.
  """

  kernel_init: Callable = _KERNEL_INIT

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    c = x.shape[-1]
    kernel = self.param("kernel", self.kernel_init, (3, 3, 1, c), jnp.float32)
    bias = self.param("bias", nn.initializers.zeros_init(), (c,), jnp.float32)
    return depthwise3x3(x, kernel[:, :, 0].astype(x.dtype)) + bias.astype(x.dtype)


class PointwiseConv(nn.Module):
  """1x1 conv (bias) as a matrix product over channels; parameters as `nn.Conv(F, (1, 1))` (`kernel` (1,1,I,O)).

  XLA on CPU differentiates a 1x1 convolution about 5x slower than the equivalent dot product; the kernel's
  gradient is one matrix product over all pixels (`pointwise`).
  """

  features: int
  kernel_init: Callable = _KERNEL_INIT
  precision: Any = None

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kernel = self.param("kernel", self.kernel_init, (1, 1, x.shape[-1], self.features), jnp.float32)
    bias = self.param("bias", nn.initializers.zeros_init(), (self.features,), jnp.float32)
    return pointwise(x, kernel[0, 0].astype(x.dtype), self.precision) + bias.astype(x.dtype)


class DepthwiseSeparableConv(nn.Module):
  """SGZ `DSC`: depthwise 3x3 (groups = in, bias) then pointwise 1x1 (bias), nothing in between."""

  features: int
  kernel_init: Callable = _KERNEL_INIT
  precision: Any = None

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = DepthwiseConv3x3(self.kernel_init, name="depth_conv")(x)
    return PointwiseConv(self.features, self.kernel_init, self.precision, name="point_conv")(x)


class EnhancementFactorExtractor(nn.Module):
  """EFE: 7 depthwise-separable layers, 32 channels, U-style skips; 10,561 parameters.

  Maps an NHWC image to the 3-channel enhancement factor `x_r` in (-1, 1) at the same resolution.
  """

  features: int = 32
  kernel_init: Callable = _KERNEL_INIT
  # On GPU/TPU pass jax.lax.Precision.HIGHEST for conformance (default precision may be TF32/bf16).
  precision: Any = None

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    conv = lambda f, name: DepthwiseSeparableConv(f, self.kernel_init, self.precision, name=name)
    f = self.features
    x1 = nn.relu(conv(f, "e_conv1")(x))
    x2 = nn.relu(conv(f, "e_conv2")(x1))
    x3 = nn.relu(conv(f, "e_conv3")(x2))
    x4 = nn.relu(conv(f, "e_conv4")(x3))
    x5 = nn.relu(conv(f, "e_conv5")(jnp.concatenate([x3, x4], axis=-1)))
    x6 = nn.relu(conv(f, "e_conv6")(jnp.concatenate([x2, x5], axis=-1)))
    return jnp.tanh(conv(3, "e_conv7")(jnp.concatenate([x1, x6], axis=-1)))


def apply_curve(x: jax.Array, x_r: jax.Array, iterations: int = 8) -> jax.Array:
  """RIE: `iterations` steps of the quadratic curve `x + x_r * (x^2 - x)` with ONE shared map x_r.

  Unrolled in Python: under jit XLA fuses the whole chain into one elementwise kernel.
  """
  for _ in range(iterations):
    x = x + x_r * (x * x - x)
  return x


def sgz_forward(efe_apply: Callable[[Any, jax.Array], jax.Array], params: Any, x: jax.Array, *,
                scale_factor: int, crop_to_multiple: bool = True,
                iterations: int = 8) -> dict[str, jax.Array]:
  """The released SGZ inference pipeline (`test.py` + `enhance_net_nopool.forward`).

  Args:
    efe_apply: `efe_apply(params, x_small) -> x_r_small`, e.g. `EnhancementFactorExtractor().apply`.
    params: whatever `efe_apply` takes first (for `Module.apply`: `{'params': ...}`).
    x: (B, H, W, 3) float32 in [0, 1].
    scale_factor: the integer s (12 in the authors' test script, 1 in training). Static.
    crop_to_multiple: True: as released, crop H, W down to multiples of s (top-left anchored), so
      the outputs are (B, H//s*s, W//s*s, 3). False: keep the full H x W for any size (see below).
    iterations: curve iterations (8 as released).

  Returns:
    dict with `enhanced` (unclipped curve output), `factor` (full-resolution x_r) and
    `factor_lowres` (the EFE output before upsampling; equals `factor` for s = 1).

  With `crop_to_multiple=False` the input is edge-padded at the bottom/right up to multiples of s,
  the factor map is computed on the padded image exactly as in the released pipeline, its padded
  rows/columns are cropped off, and the curve is applied to the uncropped input. When H and W are
  already multiples of s this is identical to the released pipeline.
  """
  s = int(scale_factor)
  if s != scale_factor or s < 1:
    raise ValueError(f"scale_factor must be a positive integer, got {scale_factor}")
  h, w = x.shape[1], x.shape[2]
  if s == 1:
    x_r = efe_apply(params, x)
    return dict(enhanced=apply_curve(x, x_r, iterations), factor=x_r, factor_lowres=x_r)
  if crop_to_multiple:
    hc, wc = h // s * s, w // s * s
    if hc == 0 or wc == 0:
      raise ValueError(f"image {h}x{w} is smaller than the scale factor {s}")
    x = x[:, :hc, :wc]
    padded = x
  else:
    hp, wp = -(-h // s) * s, -(-w // s) * s
    # Port note: not in the released code, which only supports cropping; edge padding keeps the
    # padded low-res pixels close to the image's own border statistics.
    padded = jnp.pad(x, ((0, 0), (0, hp - h), (0, wp - w), (0, 0)), mode="edge")
  x_r_low = efe_apply(params, resize.downsample_bilinear_by(padded, s))
  x_r = resize.upsample_bilinear_align_corners(x_r_low, s)[:, :x.shape[1], :x.shape[2]]
  return dict(enhanced=apply_curve(x, x_r, iterations), factor=x_r, factor_lowres=x_r_low)


def quantize_like_save_image(y: jax.Array) -> jax.Array:
  """torchvision `save_image` quantisation: floor(clip(255*y + 0.5, 0, 255)) in float32 -> uint8.

  Round-half-up, not the round-half-even of `jnp.round`.
  """
  y = jnp.asarray(y, jnp.float32)
  return jnp.floor(jnp.clip(y * 255.0 + 0.5, 0.0, 255.0)).astype(jnp.uint8)
