"""SegBMN, the semantic-guided background modelling network of DMGNIE (stage 1).

Paper: "Daytime-memory guided nighttime image enhancement" (DMGNIE; seed
`000_f6de8f8b0015d52c.txt`), section "Semantic-guided for Fast Background Modeling", Eq. 2 and
Fig. 3. No reference code is public: everything below the paper's level of detail is ours and is a
constructor field with a documented default.

What the paper specifies:
- Inputs: K daytime frames Y of one fixed camera and their {0, 1} semantic masks M = fseg(Y)
  (1 = background, 0 = foreground cars / pedestrians / motorcycles).
- A UNet-style encoder E with a pyramid of L stages gives [Y(1), ..., Y(L)] = E(Y) for every frame.
- The masks are "interpolated and resized" to every scale: M(1), ..., M(L).
- Eq. 2: B(l) = Y(l) * M(l), Y_BG(l) = sum_j B_j(l) * M_j(l) / sum_i M_i(l).
- A decoder D_BG with an upsampling path turns [Y_BG(1), ..., Y_BG(L)] into the background image;
  a second decoder D_idt turns each frame's own [Y(1), ..., Y(L)] back into that frame.

Our choices (fields of `SegBMN`):
- Encoder stage l: two 3x3 convs (bias, SAME padding), each followed by `activation`; stages are
  separated by a 2x2 stride-2 downsample (`downsample`), so Y(l) lives at scale 1 / 2**(l-1) and
  there are L - 1 downsamples (the classic UNet layout: the deepest stage is the bottleneck).
- Decoder: from the deepest feature, per level an up-conv (`upsample`) to that level's width,
  concatenation with the level's skip feature (skip first), two 3x3 conv + activation; a 1x1 conv to
  3 channels and a sigmoid. D_BG and D_idt share the architecture, not the parameters.
- Masks per scale: `mask_pyramid` (repeated 2x2 pooling, `mask_resize`).
- Eq. 2: `masked_aggregate`, with a guard where no frame is background (`empty_fill`).
- Sizes: H and W are edge-padded (bottom / right) to multiples of 2**(L-1) and the outputs cropped
  back, so any H, W work.

No BatchNorm (train and eval modes agree, and the K frames of one clip are not i.i.d. samples).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

MASK_RESIZE_MODES = ("area", "min")
WEIGHTINGS = ("paper", "mean")
EMPTY_FILLS = ("mean", "zero")
DOWNSAMPLES = ("maxpool", "avgpool", "conv")
UPSAMPLES = ("bilinear", "transpose")
#: `image_skip`'s base image is clipped to [BASE_EPS, 1 - BASE_EPS] before its logit (finite at 0 and 1; 1e-3 is
#: a quarter of one 8-bit level).
BASE_EPS = 1e-3


def _check(name: str, value: str, allowed: Sequence[str]) -> None:
  if value not in allowed:
    raise ValueError(f"unknown {name} {value!r}; expected one of {tuple(allowed)}")


def _pool2(x: jax.Array, reduce: Callable[..., jax.Array]) -> jax.Array:
  """Non-overlapping 2x2 pooling over axes (-3, -2) of (..., h, w, c); h and w must be even."""
  *lead, h, w, c = x.shape
  if h % 2 or w % 2:
    raise ValueError(f"2x2 pooling needs even sizes, got {h}x{w}")
  return reduce(x.reshape(*lead, h // 2, 2, w // 2, 2, c), axis=(-4, -2))


def mask_pyramid(masks: jax.Array, levels: int, *, mode: str = "area") -> list[jax.Array]:
  """Masks at scales 1, 1/2, ..., 1/2**(levels-1) by repeated non-overlapping 2x2 pooling.

  Args:
    masks: (..., H, W, 1) masks in [0, 1], 1 = background; H and W divisible by 2**(levels-1).
    levels: number of scales L.
    mode: 'area' averages (a coarse position gets the background fraction of its window, so a
      window that is partly foreground keeps a partial weight: the exact area interpolation the
      paper's "interpolated and resized" suggests); 'min' min-pools (any foreground pixel in the
      window makes the coarse position foreground: conservative, erodes the background).

  Returns:
    `levels` float32 arrays; entry i (0-based) has shape (..., H / 2**i, W / 2**i, 1).
  """
  _check("mask_resize", mode, MASK_RESIZE_MODES)
  reduce = jnp.mean if mode == "area" else jnp.min
  out = [masks.astype(jnp.float32)]
  for _ in range(levels - 1):
    out.append(_pool2(out[-1], reduce))
  return out


def masked_aggregate(features: jax.Array, masks: jax.Array, *, eps: float = 1e-6,
                     weighting: str = "paper", empty_fill: str = "mean") -> jax.Array:
  """Eq. 2: per-position mask-weighted average of K frames' features (computed in float32).

  Args:
    features: (B, K, h, w, C) per-frame features Y(l).
    masks: (B, K, h, w, 1) masks M(l) in [0, 1], 1 = background.
    eps: positions with sum_i M_i <= eps count as "no frame is background". 1e-6 only guards
      exact zeros: the smallest non-zero area-pooled mask of a binary mask at 1/2**(L-1) scale is
      1/4**(L-1) (1/64 for L = 4), far above it.
    weighting: 'paper' is Eq. 2 as printed, sum_j (Y_j * M_j) * M_j / sum_i M_i, i.e. weights
      M_j**2 / sum_i M_i (equal to 'mean' for binary masks; with soft masks partial windows count
      less and the weights sum to <= 1); 'mean' is the convex weighted mean
      sum_j Y_j M_j / sum_i M_i.
    empty_fill: value where no frame is background: 'mean' the plain (unmasked) mean of the K
      frames' features there (the best guess without mask information: Eq. 2 with all masks 1);
      'zero' zeros.

  Returns:
    (B, h, w, C) float32 aggregated features; finite, and with finite gradients in both inputs
    (the division uses a denominator of 1 where the guard applies, selected away by `jnp.where`;
    gradients in the masks can reach ~|Y| / eps just above the guard, which is harmless since the
    masks come from a frozen segmenter and are not trained).
  """
  _check("weighting", weighting, WEIGHTINGS)
  _check("empty_fill", empty_fill, EMPTY_FILLS)
  if features.ndim != 5 or masks.ndim != 5 or masks.shape[-1] != 1:
    raise ValueError(f"need features (B,K,h,w,C) and masks (B,K,h,w,1), got {features.shape}, "
                     f"{masks.shape}")
  f = features.astype(jnp.float32)
  m = masks.astype(jnp.float32)
  w = m * m if weighting == "paper" else m
  num = jnp.sum(f * w, axis=1)
  den = jnp.sum(m, axis=1)
  valid = den > eps
  agg = num / jnp.where(valid, den, 1.0)
  fill = jnp.mean(f, axis=1) if empty_fill == "mean" else jnp.zeros_like(agg)
  return jnp.where(valid, agg, fill)


class ConvBlock(nn.Module):
  """Two 3x3 convs (bias, SAME padding), each followed by `activation`."""

  features: int
  activation: Callable[[jax.Array], jax.Array] = nn.relu
  dtype: Any = jnp.float32
  precision: Any = None

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    for i in range(2):
      x = nn.Conv(self.features, (3, 3), padding="SAME", dtype=self.dtype,
                  precision=self.precision, name=f"conv{i + 1}")(x)
      x = self.activation(x)
    return x


def _block_cls(remat: bool):
  return nn.remat(ConvBlock) if remat else ConvBlock


class SegBMNEncoder(nn.Module):
  """E: (N, H, W, 3) -> [Y(1), ..., Y(L)], Y(l) of shape (N, H / 2**(l-1), W / 2**(l-1), F_l).

  H and W must be divisible by 2**(L-1) (`SegBMN` pads). Fields as in `SegBMN`.
  """

  features: Sequence[int] = (32, 64, 128, 256)
  downsample: str = "maxpool"
  activation: Callable[[jax.Array], jax.Array] = nn.relu
  remat: bool = False
  dtype: Any = jnp.float32
  precision: Any = None

  @nn.compact
  def __call__(self, x: jax.Array) -> list[jax.Array]:
    _check("downsample", self.downsample, DOWNSAMPLES)
    block = _block_cls(self.remat)
    feats = []
    for l, c in enumerate(self.features):
      if l > 0:
        if self.downsample == "maxpool":
          x = nn.max_pool(x, (2, 2), strides=(2, 2))
        elif self.downsample == "avgpool":
          x = nn.avg_pool(x, (2, 2), strides=(2, 2))
        else:
          x = nn.Conv(x.shape[-1], (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)),
                      dtype=self.dtype, precision=self.precision, name=f"down{l + 1}")(x)
      x = block(c, self.activation, self.dtype, self.precision, name=f"stage{l + 1}")(x)
      feats.append(x)
    return feats


class SegBMNDecoder(nn.Module):
  """D_BG / D_idt: [Y(1), ..., Y(L)] -> (N, H, W, 3) image in (0, 1) via a UNet upsampling path."""

  features: Sequence[int] = (32, 64, 128, 256)
  upsample: str = "bilinear"
  activation: Callable[[jax.Array], jax.Array] = nn.relu
  remat: bool = False
  dtype: Any = jnp.float32
  precision: Any = None

  @nn.compact
  def __call__(self, feats: Sequence[jax.Array], base: jax.Array | None = None) -> jax.Array:
    """`base` (N, H, W, 3) in [0, 1], optional: the output is sigmoid(logit(base) + head) with a zero-initialised
    head, i.e. exactly `base` at initialisation, refined by training (`SegBMN.image_skip`)."""
    _check("upsample", self.upsample, UPSAMPLES)
    if len(feats) != len(self.features):
      raise ValueError(f"need {len(self.features)} feature maps, got {len(feats)}")
    block = _block_cls(self.remat)
    x = feats[-1].astype(self.dtype)
    for l in reversed(range(len(feats) - 1)):
      c = self.features[l]
      if self.upsample == "bilinear":
        n, h, w, ch = x.shape
        x = jax.image.resize(x, (n, 2 * h, 2 * w, ch), "bilinear")
        x = nn.Conv(c, (3, 3), padding="SAME", dtype=self.dtype, precision=self.precision,
                    name=f"up{l + 1}")(x)
      else:
        x = nn.ConvTranspose(c, (2, 2), strides=(2, 2), dtype=self.dtype,
                             precision=self.precision, name=f"up{l + 1}")(x)
      x = jnp.concatenate([feats[l].astype(self.dtype), x], axis=-1)
      x = block(c, self.activation, self.dtype, self.precision, name=f"stage{l + 1}")(x)
    init = nn.initializers.zeros_init() if base is not None else nn.linear.default_kernel_init
    y = nn.Conv(3, (1, 1), dtype=self.dtype, precision=self.precision, kernel_init=init, name="head")(x)
    y = y.astype(jnp.float32)
    if base is not None:
      b = jnp.clip(base.astype(jnp.float32), BASE_EPS, 1.0 - BASE_EPS)
      y = y + jnp.log(b) - jnp.log1p(-b)
    return nn.sigmoid(y)


class SegBMN(nn.Module):
  """SegBMN: background of K masked frames (D_BG) and each frame's reconstruction (D_idt).

  Attributes:
    features: encoder widths per stage, L = len(features) stages. (32, 64, 128, 256): a small UNet
      (3.1M parameters: encoder 1.17M, each decoder 0.97M) for ~128-256 px surveillance frames;
      the paper gives neither L nor the widths.
    mask_resize: 'area' (default: soft average-pooled masks; the paper says the masks are
      "interpolated", and area interpolation is the exact anti-aliased one for 2x steps) or 'min'
      (min-pooling: conservative, any foreground in a window removes it). See `mask_pyramid`.
    weighting: 'paper' (default: Eq. 2 as printed, weights M_j**2 / sum M_i; identical to 'mean'
      for binary masks) or 'mean' (convex weights M_j / sum M_i). See `masked_aggregate`.
    empty_fill: 'mean' (default: the unmasked mean of the K frames' features where every frame is
      foreground, a finite best guess) or 'zero'. See `masked_aggregate`.
    eps: sum_i M_i <= eps counts as "every frame is foreground" (1e-6: guards exact zeros only).
    downsample: 'maxpool' (default: 2x2 stride-2 max pooling, the original UNet's), 'avgpool', or
      'conv' (3x3 stride-2 conv, width kept).
    upsample: 'bilinear' (default: bilinear x2 then a 3x3 conv to the level's width; avoids the
      checkerboard artefacts of transposed convs in an image-producing decoder) or 'transpose'
      (2x2 stride-2 transposed conv, the original UNet's up-conv).
    activation: after every 3x3 conv of the conv blocks (ReLU, as UNet).
    pad_mode: `jnp.pad` mode for padding H, W up to multiples of 2**(L-1) at the bottom / right
      ('edge', default: padded rows copy real pixels and their mask labels, so no artificial
      border enters the statistics; outputs are cropped back to H, W).
    image_skip: D_BG refines the image-level Eq. 2 (the masked aggregate of the K frames' pixels, computed
      with the full-resolution masks like the features): its output is sigmoid(logit(aggregate) + head) with a
      zero-initialised head, so a new network starts at the masked mean and learns corrections (shadow edges,
      mis-masked pixels, noise). Ours, not the paper's (its D_BG decodes the aggregated features alone, which
      a short training reproduces only blurred); False gives the paper's decoder. D_idt has no such skip (it
      would make the reconstruction trivial and teach the encoder nothing).
    remat: rematerialise every conv block (`nn.remat`) to trade compute for activation memory
      (K frames share one backward pass); parameters are identical either way.
    dtype: compute dtype (params stay float32; Eq. 2 and the sigmoid run in float32).
    precision: conv precision.
  """

  features: Sequence[int] = (32, 64, 128, 256)
  mask_resize: str = "area"
  weighting: str = "paper"
  empty_fill: str = "mean"
  eps: float = 1e-6
  downsample: str = "maxpool"
  upsample: str = "bilinear"
  activation: Callable[[jax.Array], jax.Array] = nn.relu
  pad_mode: str = "edge"
  image_skip: bool = False
  remat: bool = False
  dtype: Any = jnp.float32
  precision: Any = None

  @property
  def multiple(self) -> int:
    """H and W are padded to multiples of this (2**(L-1): L - 1 downsamples)."""
    return 2 ** (len(self.features) - 1)

  @nn.compact
  def __call__(self, frames: jax.Array, masks: jax.Array) -> dict[str, jax.Array]:
    """frames (B, K, H, W, 3) in [0, 1], masks (B, K, H, W, 1) with 1 = background.

    Returns:
      {'background': (B, H, W, 3), 'identity': (B, K, H, W, 3)}, float32 in (0, 1).
    """
    if frames.ndim != 5 or frames.shape[-1] != 3:
      raise ValueError(f"frames must be (B, K, H, W, 3), got {frames.shape}")
    if masks.shape != frames.shape[:-1] + (1,):
      raise ValueError(f"masks must be {frames.shape[:-1] + (1,)}, got {masks.shape}")
    b, k, h, w, _ = frames.shape
    m = self.multiple
    ph, pw = (-h) % m, (-w) % m
    if ph or pw:
      pad = ((0, 0), (0, 0), (0, ph), (0, pw), (0, 0))
      frames = jnp.pad(frames, pad, mode=self.pad_mode)
      masks = jnp.pad(masks, pad, mode=self.pad_mode)
    hp, wp = h + ph, w + pw

    common = dict(features=tuple(self.features), activation=self.activation, remat=self.remat,
                  dtype=self.dtype, precision=self.precision)
    encoder = SegBMNEncoder(downsample=self.downsample, name="encoder", **common)
    feats = encoder(frames.reshape(b * k, hp, wp, 3).astype(self.dtype))
    mask_levels = mask_pyramid(masks, len(self.features), mode=self.mask_resize)
    aggregated = [
        masked_aggregate(f.reshape(b, k, *f.shape[1:]), ml, eps=self.eps,
                         weighting=self.weighting, empty_fill=self.empty_fill).astype(self.dtype)
        for f, ml in zip(feats, mask_levels)]

    base = None
    if self.image_skip:
      base = masked_aggregate(frames.astype(jnp.float32), mask_levels[0], eps=self.eps, weighting=self.weighting,
                              empty_fill=self.empty_fill)
    background = SegBMNDecoder(upsample=self.upsample, name="decoder_bg", **common)(aggregated, base)
    identity = SegBMNDecoder(upsample=self.upsample, name="decoder_idt", **common)(feats)
    identity = identity.reshape(b, k, hp, wp, 3)
    return {"background": background[:, :h, :w], "identity": identity[:, :, :h, :w]}
