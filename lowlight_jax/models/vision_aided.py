"""The vision-aided CLIP ViT-B/32 multi-level discriminator of SCUF/GEFU training.

Paper: Kumari et al., "Ensembling Off-the-shelf Models for GAN Training" (CVPR 2022), as used by
SCUF/GEFU (Wang et al., "Semantically Consistent Unsupervised Fine-tuning"). Reference code: the
`vision_aided_loss` package (nupurkmr9/vision-aided-gan: `cv_discriminator.py`, `cvmodel.py`,
`cv_losses.py`, `DiffAugment_pytorch.py`, `blurpool.py`) as GEFU builds it:
`vision_aided_loss.Discriminator(cv_type='clip', loss_type='multilevel_sigmoid', diffaug=True)`
(output type 'conv_multi_level').

Pipeline (images NHWC in [-1, 1], the generator's range; the reference takes NCHW):

  x = diff_augment(x)                  # DiffAugment 'color,translation,cutout', per-example draws
  x = resize_area(x * 0.5 + 0.5, 224)  # F.interpolate(mode='area') == adaptive average pooling
  x = (x - CLIP_MEAN) / CLIP_STD
  f0, f1, e = CLIP ViT-B/32 taps       # frozen: after blocks [0:4], [4:8] (7x7x768 grids, class
                                       # token dropped) and ln_post(cls) @ proj (B, 512)
  logits = CLIPDiscriminatorHeads(f0, f1, e)  # trainable: [(B,3,3), (B,3,3), (B,1)]
  loss = multilevel_sigmoid_loss(logits, target_is_real)   # (B,); callers take the mean

Public API:
  * `diff_augment(x, rng, policy=DIFFAUG_POLICY)`: random DiffAugment; it samples the draws with
    `sample_diff_augment_draws(rng, x.shape, policy)` and applies the deterministic core
    `diff_augment_with(x, draws, policy)`. All three take NHWC (the library's image layout).
  * `resize_area(x, out_hw)`: torch `F.interpolate(mode='area')` for NHWC, any size up or down.
  * `clip_features(clip_module, clip_params, images, *, taps=(4, 8))` -> [grid0 (B, g, g, width),
    grid1 (B, g, g, width), embed (B, output_dim)], float32; the CLIP part, preprocessing
    included. `clip_module` is an `openai_clip.VisionTransformer` (ViT-B/32: width 768, 12 layers,
    patch 32, output 512, input 224; the grid size g and widths follow the given tower, so a tiny
    random tower works for tests). Its params are frozen (`stop_gradient`), the gradient reaches
    the images.
  * `CLIPDiscriminatorHeads(level=3, out_ch=256, dtype=..., param_dtype=..., precision=...)`: the
    trainable `MultiLevelDViT(level=3, in_ch1=768, in_ch2=512, out_ch=256, down=1)`;
    `__call__(features, *, update_stats)`; in_ch1 / in_ch2 are read from the features.
    `init_heads(heads_module, rng, clip_module)` -> its variables for that tower's feature shapes.
  * `discriminate(heads_module, heads_variables, clip_module, clip_params, images, rng, *,
    diffaug=True, update_stats=True, taps=(4, 8))` -> (logits list, new heads state
    `{'batch_stats': ...}`; merge with `{**heads_variables, **state}`).
  * `multilevel_sigmoid_loss(logits, target_is_real, *, alpha=1.0)` -> (B,) float32
    ('multilevel_sigmoid'; alpha=0.8 is the reference's 'multilevel_sigmoid_s').

Heads layout (submodule names are the torch module paths inside `MultiLevelDViT` split on '.',
the repository's naming rule): `decoder/0/1` and `decoder/1/1` spectral-norm Conv2d(in_ch1,
out_ch, 3x3, pad 1) -> LeakyReLU(0.2) -> `decoder/{0,1}/3` BlurPool (fixed [1,3,3,1] x [1,3,3,1]
/ 64 depthwise filter, zero pad 1 each side, stride 1: 7x7 -> 6x6; a constant, not a variable)
-> `decoder/{0,1}/4` spectral-norm Conv2d(out_ch, 1, 1x1, stride 2) (6x6 -> 3x3) -> channel
squeezed; `decoder/2/0` spectral-norm Linear(in_ch2, out_ch) -> LeakyReLU(0.2) -> `out`
spectral-norm Linear(out_ch, 1). Params: `kernel` (Flax layout: HWIO / (in, out)) and `bias`.
Torch's `weight_orig` is that kernel (OIHW / (out, in) transposed as the naming rule does).

Spectral norm (`torch.nn.utils.spectral_norm`, one power iteration, eps 1e-12): the state is in
the `batch_stats` collection as `weight_u` (out,) and `weight_v` (in * kh * kw,), torch's buffers
with torch's layouts (v indexes torch's `weight.reshape(out, -1)`, i.e. (in, kh, kw) order).
  * `update_stats=True` (torch train mode, as the reference trainer always runs D): v =
    normalize(W^T u), u = normalize(W v), sigma = u . (W v), W_sn = W / sigma; the new u, v are
    stored (apply with `mutable=['batch_stats']`) and are constants for the gradient.
  * `update_stats=False` (torch eval mode): sigma = u . (W v) from the stored u, v; nothing changes.
  * `init` never iterates (torch's buffers start at normalize(N(0, 1)) draws); it does not matter
    which flag init is called with.
The power iteration and sigma are float32 with HIGHEST matmul precision, whatever `dtype` is.

Initialisation is PyTorch's default for Conv2d / Linear: weights and biases ~ U(-1/sqrt(fan_in),
1/sqrt(fan_in)) (kaiming_uniform with a = sqrt(5)). GEFU does not call the reference's
`init_weights` (`create_optim=False`).

Precision: `dtype` is the heads' compute dtype (e.g. bfloat16; params stay `param_dtype`, the
normalised weight is cast to `dtype`); the logits are returned as float32 and the loss is float32.
The CLIP tower's dtype is its own module attribute.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from lowlight_jax.models import openai_clip

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
DIFFAUG_POLICY = ("color", "translation", "cutout")
CLIP_TAPS = (4, 8)  # `feat_points = [0, 4, 8, len(resblocks)]` of the reference
SN_EPS = 1e-12
LEAKY_SLOPE = 0.2
TRANSLATION_RATIO = 0.125
CUTOUT_RATIO = 0.5
_HIGHEST = jax.lax.Precision.HIGHEST

PyTree = Any


# ---------------------------------------------------------------------------------------------
# DiffAugment (Zhao et al., "Differentiable Augmentation for Data-Efficient GAN Training")


def _policy(policy: str | Sequence[str]) -> tuple[str, ...]:
  if isinstance(policy, str):
    policy = [p for p in policy.split(",") if p]
  policy = tuple(policy)
  unknown = [p for p in policy if p not in DIFFAUG_POLICY]
  if unknown:
    raise ValueError(f"unknown DiffAugment policies {unknown}; known: {DIFFAUG_POLICY}")
  return policy


def _translation_shift(h: int, w: int) -> tuple[int, int]:
  return int(h * TRANSLATION_RATIO + 0.5), int(w * TRANSLATION_RATIO + 0.5)


def _cutout_size(h: int, w: int) -> tuple[int, int]:
  return int(h * CUTOUT_RATIO + 0.5), int(w * CUTOUT_RATIO + 0.5)


def sample_diff_augment_draws(rng: jax.Array, shape: Sequence[int],
                              policy: str | Sequence[str] = DIFFAUG_POLICY
                              ) -> dict[str, jax.Array]:
  """The per-example random draws of DiffAugment for NHWC images of `shape`.

  Returns a dict with the entries the policy needs:
    'brightness', 'saturation', 'contrast': (B,) float32 ~ U[0, 1) (policy 'color');
    'translation': (B, 2) int32 (tx, ty), tx ~ randint[-sx, sx], ty ~ randint[-sy, sy] inclusive,
      sx = int(H * 0.125 + 0.5), sy = int(W * 0.125 + 0.5);
    'cutout': (B, 2) int32 (ox, oy), ox ~ randint[0, H + 1 - ch % 2) (exclusive), oy likewise,
      (ch, cw) = (int(H * 0.5 + 0.5), int(W * 0.5 + 0.5)).
  """
  policy = _policy(policy)
  b, h, w = int(shape[0]), int(shape[1]), int(shape[2])
  keys = jax.random.split(rng, 7)
  draws = {}
  if "color" in policy:
    for key, name in zip(keys[:3], ("brightness", "saturation", "contrast")):
      draws[name] = jax.random.uniform(key, (b,), jnp.float32)
  if "translation" in policy:
    sx, sy = _translation_shift(h, w)
    draws["translation"] = jnp.stack(
        [jax.random.randint(keys[3], (b,), -sx, sx + 1, jnp.int32),
         jax.random.randint(keys[4], (b,), -sy, sy + 1, jnp.int32)], axis=1)
  if "cutout" in policy:
    ch, cw = _cutout_size(h, w)
    draws["cutout"] = jnp.stack(
        [jax.random.randint(keys[5], (b,), 0, h + (1 - ch % 2), jnp.int32),
         jax.random.randint(keys[6], (b,), 0, w + (1 - cw % 2), jnp.int32)], axis=1)
  return draws


def _per_example(v: jax.Array, x: jax.Array) -> jax.Array:
  return jnp.asarray(v).astype(x.dtype).reshape(-1, 1, 1, 1)


def _translate(x: jax.Array, shifts: jax.Array) -> jax.Array:
  """out[b, i, j] = xpad[b, clamp(i + tx + 1, 0, H + 1), clamp(j + ty + 1, 0, W + 1)]."""
  _, h, w, _ = x.shape
  xpad = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  shifts = jnp.asarray(shifts, jnp.int32)
  rows = jnp.clip(jnp.arange(h)[None] + shifts[:, :1] + 1, 0, h + 1)
  cols = jnp.clip(jnp.arange(w)[None] + shifts[:, 1:] + 1, 0, w + 1)
  return jax.vmap(lambda img, r, c: img[r][:, c])(xpad, rows, cols)


def _cutout(x: jax.Array, offsets: jax.Array) -> jax.Array:
  """Zeroes rows clamp(ox - ch // 2 + [0, ch)) x cols clamp(oy - cw // 2 + [0, cw))."""
  _, h, w, _ = x.shape
  ch, cw = _cutout_size(h, w)
  offsets = jnp.asarray(offsets, jnp.int32)

  def hit(offset, size, n):  # (B,) -> (B, n) bool: the clamped index set, as one-hot rows
    idx = jnp.clip(offset[:, None] - size // 2 + jnp.arange(size)[None], 0, n - 1)
    return (idx[:, :, None] == jnp.arange(n)[None, None]).any(axis=1)

  cut = hit(offsets[:, 0], ch, h)[:, :, None] & hit(offsets[:, 1], cw, w)[:, None, :]
  return x * (~cut).astype(x.dtype)[..., None]


def diff_augment_with(x: jax.Array, draws: Mapping[str, jax.Array],
                      policy: str | Sequence[str] = DIFFAUG_POLICY) -> jax.Array:
  """DiffAugment's deterministic core on NHWC `x` given explicit draws (see
  `sample_diff_augment_draws`), applied in policy order; 'color' is brightness, saturation,
  contrast:

    brightness  x + (u - 0.5)
    saturation  (x - m) * (2 u) + m, m = channel mean (per pixel)
    contrast    (x - m) * (u + 0.5) + m, m = mean over H, W, C (per example)
    translation content shifted by (tx, ty) rows / cols with zero fill
    cutout      a (ch, cw) box centred at (ox, oy) (clamped to the image) set to 0
  """
  for p in _policy(policy):
    if p == "color":
      x = x + (_per_example(draws["brightness"], x) - 0.5)
      m = jnp.mean(x, axis=3, keepdims=True)
      x = (x - m) * (_per_example(draws["saturation"], x) * 2) + m
      m = jnp.mean(x, axis=(1, 2, 3), keepdims=True)
      x = (x - m) * (_per_example(draws["contrast"], x) + 0.5) + m
    elif p == "translation":
      x = _translate(x, draws["translation"])
    elif p == "cutout":
      x = _cutout(x, draws["cutout"])
  return x


def diff_augment(x: jax.Array, rng: jax.Array,
                 policy: str | Sequence[str] = DIFFAUG_POLICY) -> jax.Array:
  """DiffAugment (default 'color,translation,cutout') of NHWC images with fresh per-example draws.
  Differentiable in x."""
  return diff_augment_with(x, sample_diff_augment_draws(rng, x.shape, policy), policy)


# ---------------------------------------------------------------------------------------------
# CLIP preprocessing and features


def _area_matrix(n_in: int, n_out: int) -> np.ndarray:
  """(n_out, n_in) adaptive-average-pooling matrix: row i averages inputs
  floor(i * n_in / n_out) .. ceil((i + 1) * n_in / n_out) - 1."""
  m = np.zeros((n_out, n_in), np.float64)
  for i in range(n_out):
    start = (i * n_in) // n_out
    end = -((-(i + 1) * n_in) // n_out)
    m[i, start:end] = 1.0 / (end - start)
  return m.astype(np.float32)


def resize_area(x: jax.Array, out_hw: Sequence[int]) -> jax.Array:
  """torch `F.interpolate(x, size=out_hw, mode='area')` (= `adaptive_avg_pool2d`) for NHWC x, up-
  or downsampling. Separable averaging matrices (HIGHEST precision); the same size is a copy."""
  (h, w), (oh, ow) = x.shape[1:3], tuple(int(s) for s in out_hw)
  if (h, w) == (oh, ow):
    return x
  mh, mw = jnp.asarray(_area_matrix(h, oh)), jnp.asarray(_area_matrix(w, ow))
  return jnp.einsum("ih,bhwc,jw->bijc", mh, x.astype(jnp.float32), mw, precision=_HIGHEST
                    ).astype(x.dtype)


def clip_preprocess(images: jax.Array, resolution: int = 224) -> jax.Array:
  """[-1, 1] NHWC -> x * 0.5 + 0.5 -> area resize to resolution^2 -> CLIP mean / std (float32)."""
  x = resize_area(images.astype(jnp.float32) * 0.5 + 0.5, (resolution, resolution))
  return (x - jnp.asarray(CLIP_MEAN, jnp.float32)) / jnp.asarray(CLIP_STD, jnp.float32)


def clip_features(clip_module: openai_clip.VisionTransformer, clip_params: Mapping[str, Any],
                  images: jax.Array, *, taps: Sequence[int] = CLIP_TAPS) -> list[jax.Array]:
  """The reference `CLIP(cv_type='clip_conv_multi_level')` features of [-1, 1] NHWC images.

  Args:
    clip_module: the tower; images are resized to its `input_resolution` (224) and the plain CLIP
      positional embedding is added (`pos_embedding=True` with the table's own length).
    clip_params: its params or `{'params': ...}`; frozen (gradients stop at them, not at images).
    images: (B, H, W, 3), any H, W.
    taps: block counts after which the grid features are read ((4, 8): blocks [0:4], [4:8]).

  Returns:
    [grid_k (B, g, g, width) for each tap: the residual stream without the class token, token
    row * g + col at [row, col]] + [ln_post(cls) @ proj (B, output_dim)], float32.
  """
  variables = clip_params if "params" in clip_params else {"params": clip_params}
  variables = jax.lax.stop_gradient(variables)
  res = clip_module.input_resolution
  x = clip_preprocess(images, res)
  emb, tapped = clip_module.apply(variables, x, pos_embedding=True, block_outputs=tuple(taps))
  g = res // clip_module.patch_size
  grids = [t[:, 1:].reshape(t.shape[0], g, g, t.shape[-1]).astype(jnp.float32) for t in tapped]
  return grids + [emb.astype(jnp.float32)]


# ---------------------------------------------------------------------------------------------
# Trainable heads


def _torch_default_init(fan_in: int):
  bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)
  return init


def _l2_normalize(x: jax.Array) -> jax.Array:
  """torch `F.normalize(x, dim=0, eps=1e-12)`: x / max(|x|, eps)."""
  return x / jnp.maximum(jnp.sqrt(jnp.sum(x * x)), SN_EPS)


class _SpectralNormLayer(nn.Module):
  """A torch `spectral_norm(Conv2d)` (kernel_size > 0) or `spectral_norm(Linear)` (kernel_size 0)
  with a bias. NHWC convs."""
  features: int
  kernel_size: int = 0
  stride: int = 1
  padding: int = 0
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  precision: Any = None

  @nn.compact
  def __call__(self, x: jax.Array, update_stats: bool) -> jax.Array:
    c_in, k = x.shape[-1], self.kernel_size
    shape = (k, k, c_in, self.features) if k else (c_in, self.features)
    fan_in = c_in * k * k if k else c_in
    kernel = self.param("kernel", _torch_default_init(fan_in), shape, self.param_dtype)
    bias = self.param("bias", _torch_default_init(fan_in), (self.features,), self.param_dtype)
    # torch's weight.reshape(out, -1): (O, I, kh, kw) / (O, I) order.
    perm = (3, 2, 0, 1) if k else (1, 0)
    w_mat = jnp.transpose(kernel.astype(jnp.float32), perm).reshape(self.features, -1)

    def draw(n):
      return lambda: _l2_normalize(jax.random.normal(self.make_rng("params"), (n,), jnp.float32))
    u_var = self.variable("batch_stats", "weight_u", draw(self.features))
    v_var = self.variable("batch_stats", "weight_v", draw(w_mat.shape[1]))
    u, v = u_var.value, v_var.value
    if update_stats and not self.is_initializing():
      v = _l2_normalize(jnp.matmul(w_mat.T, u, precision=_HIGHEST))
      u = _l2_normalize(jnp.matmul(w_mat, v, precision=_HIGHEST))
      u, v = jax.lax.stop_gradient(u), jax.lax.stop_gradient(v)
      u_var.value, v_var.value = u, v
    sigma = jnp.dot(u, jnp.matmul(w_mat, v, precision=_HIGHEST), precision=_HIGHEST)
    w_sn = (kernel.astype(jnp.float32) / sigma).astype(self.dtype)
    x = x.astype(self.dtype)
    if k:
      y = jax.lax.conv_general_dilated(
          x, w_sn, (self.stride, self.stride), [(self.padding, self.padding)] * 2,
          dimension_numbers=("NHWC", "HWIO", "NHWC"), precision=self.precision)
    else:
      y = jnp.matmul(x, w_sn, precision=self.precision)
    return y + bias.astype(self.dtype)


def blur_pool(x: jax.Array, precision: Any = None) -> jax.Array:
  """`BlurPool(C, pad_type='zero', filt_size=4, stride=1)`: zero pad 1 each side, depthwise 4x4
  [1,3,3,1] x [1,3,3,1] / 64 filter: (B, H, W, C) -> (B, H - 1, W - 1, C)."""
  a = np.array([1.0, 3.0, 3.0, 1.0])
  filt = np.outer(a, a) / np.outer(a, a).sum()
  c = x.shape[-1]
  kernel = jnp.asarray(np.broadcast_to(filt[:, :, None, None], (4, 4, 1, c)), x.dtype)
  return jax.lax.conv_general_dilated(x, kernel, (1, 1), [(1, 1), (1, 1)],
                                      dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                      feature_group_count=c, precision=precision)


class _ConvLevel(nn.Module):
  """torch `Sequential(Identity, SN Conv3x3, LeakyReLU, BlurPool, SN Conv1x1 s2)` (down=1)."""
  out_ch: int
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  precision: Any = None

  @nn.compact
  def __call__(self, x, update_stats):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype, precision=self.precision)
    x = _SpectralNormLayer(self.out_ch, 3, 1, 1, name="1", **kw)(x, update_stats)
    x = jax.nn.leaky_relu(x, LEAKY_SLOPE)
    x = blur_pool(x, self.precision)
    x = _SpectralNormLayer(1, 1, 2, 0, name="4", **kw)(x, update_stats)
    return x[..., 0]


class _EmbedLevel(nn.Module):
  """torch `Sequential(SN Linear, LeakyReLU)`."""
  out_ch: int
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  precision: Any = None

  @nn.compact
  def __call__(self, x, update_stats):
    x = _SpectralNormLayer(self.out_ch, name="0", dtype=self.dtype, param_dtype=self.param_dtype,
                           precision=self.precision)(x, update_stats)
    return jax.nn.leaky_relu(x, LEAKY_SLOPE)


class _Decoder(nn.Module):
  """torch `MultiLevelDViT.decoder` (a ModuleList named '0', '1', ...)."""
  level: int
  out_ch: int
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  precision: Any = None

  @nn.compact
  def __call__(self, features, update_stats):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype, precision=self.precision)
    preds = [_ConvLevel(self.out_ch, name=str(i), **kw)(features[i], update_stats)
             for i in range(self.level - 1)]
    h = _EmbedLevel(self.out_ch, name=str(self.level - 1), **kw)(features[-1], update_stats)
    return preds, h


class CLIPDiscriminatorHeads(nn.Module):
  """`MultiLevelDViT(level, in_ch1, in_ch2, out_ch, down=1)`: the trainable part.

  Attributes:
    level: number of features: level - 1 grids (B, g, g, in_ch1) and one embedding (B, in_ch2).
    out_ch: hidden channels (256).
    dtype: compute dtype (bfloat16 for mixed precision); spectral norms run in float32.
    param_dtype: params dtype (float32).
    precision: conv / matmul precision (`jax.lax.Precision.HIGHEST` for conformance on GPU/TPU).
  """
  level: int = 3
  out_ch: int = 256
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  precision: Any = None

  @nn.compact
  def __call__(self, features: Sequence[jax.Array], *, update_stats: bool) -> list[jax.Array]:
    """features [grid (B, g, g, C1)] * (level - 1) + [embed (B, C2)] -> logits [(B, g', g')] *
    (level - 1) + [(B, 1)], float32 (g' = ceil((g - 1) / 2): 7 -> 3). Apply with
    `mutable=['batch_stats']` when `update_stats` (torch train mode; see the module docstring)."""
    if len(features) != self.level:
      raise ValueError(f"expected {self.level} features ({self.level - 1} grids and an "
                       f"embedding), got {len(features)}")
    for f in features[:-1]:
      if f.ndim != 4:
        raise ValueError(f"grid features must be (B, H, W, C), got shape {f.shape}")
    if features[-1].ndim != 2:
      raise ValueError(f"the last feature must be (B, C), got shape {features[-1].shape}")
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype, precision=self.precision)
    preds, h = _Decoder(self.level, self.out_ch, name="decoder", **kw)(
        list(features[:-1]) + [features[-1].astype(jnp.float32)], update_stats)
    out = _SpectralNormLayer(1, name="out", **kw)(h, update_stats)
    return [p.astype(jnp.float32) for p in preds] + [out.astype(jnp.float32)]


def feature_shapes(clip_module: openai_clip.VisionTransformer, batch: int = 1,
                   taps: Sequence[int] = CLIP_TAPS) -> list[tuple[int, ...]]:
  """The shapes `clip_features` returns for this tower."""
  g = clip_module.input_resolution // clip_module.patch_size
  return ([(batch, g, g, clip_module.width)] * len(taps)
          + [(batch, clip_module.output_dim)])


def init_heads(heads_module: CLIPDiscriminatorHeads, rng: jax.Array,
               clip_module: openai_clip.VisionTransformer,
               taps: Sequence[int] = CLIP_TAPS) -> PyTree:
  """Fresh heads variables ({'params', 'batch_stats'}) for the features of `clip_module`."""
  feats = [jnp.zeros(s, jnp.float32) for s in feature_shapes(clip_module, 1, taps)]
  return jax.jit(lambda key, f: heads_module.init(key, f, update_stats=False))(rng, feats)


def discriminate(heads_module: CLIPDiscriminatorHeads, heads_variables: PyTree,
                 clip_module: openai_clip.VisionTransformer, clip_params: Mapping[str, Any],
                 images: jax.Array, rng: jax.Array | None, *, diffaug: bool = True,
                 update_stats: bool = True, taps: Sequence[int] = CLIP_TAPS
                 ) -> tuple[list[jax.Array], PyTree]:
  """The reference `Discriminator.forward` without the loss: DiffAugment -> CLIP -> heads.

  Args:
    images: (B, H, W, 3) in [-1, 1] (the generator's outputs; detach them for the D step).
    rng: DiffAugment key (unused when `diffaug` is False).
    update_stats: torch train mode (power iteration, new u / v) vs eval mode.

  Returns:
    (logits [(B, 3, 3), (B, 3, 3), (B, 1)] float32, new heads state `{'batch_stats': ...}`; the
    input state when `update_stats` is False).
  """
  if diffaug:
    if rng is None:
      raise ValueError("diffaug needs an rng")
    images = diff_augment(images, rng)
  feats = clip_features(clip_module, clip_params, images, taps=taps)
  if update_stats:
    logits, state = heads_module.apply(heads_variables, feats, update_stats=True,
                                       mutable=["batch_stats"])
    return logits, dict(state)
  logits = heads_module.apply(heads_variables, feats, update_stats=False)
  return logits, {"batch_stats": heads_variables["batch_stats"]}


def _bce_with_logits(x: jax.Array, target: float) -> jax.Array:
  return jnp.maximum(x, 0) - x * target + jnp.log1p(jnp.exp(-jnp.abs(x)))


def multilevel_sigmoid_loss(logits: Sequence[jax.Array], target_is_real: bool, *,
                            alpha: float = 1.0) -> jax.Array:
  """'multilevel_sigmoid': sum over levels of BCE-with-logits against alpha (real; also the
  generator's term) or 0 (fake); a level with spatial dims is averaged over them. -> (B,) float32
  (the reference's (B, 1) flattened); callers take the mean."""
  target = float(alpha) if target_is_real else 0.0
  total = 0.0
  for x in logits:
    loss = _bce_with_logits(x.astype(jnp.float32), target)
    total = total + loss.reshape(loss.shape[0], -1).mean(axis=1)
  return total
