"""OpenAI CLIP's ViT image tower as GEFU/SCUF uses it for the illumination image prompt.

Paper: SCUF/GEFU (Wang et al., "Semantically Consistent Unsupervised Fine-tuning"), its
illumination image prompt. Reference code: wangsen99/GEFU (commit 5d28e53) `src/CLIP/model.py`
(`VisionTransformer`, a copy of OpenAI CLIP's with a `pos_embedding` switch),
`src/my_utils/model.py` (`CLIPLoss.get_image_features`), `src/inference.py` (the prompt) and
`src/adapter.py` (`ProjModel`).

The prompt path of `inference.py` (fixture README quirks 7 and 8):

  v = 1 - V / 255                     # V = PIL HSV value of the resized uint8 image = max(R, G, B)
  e = visual(v repeated to 3 channels, pos_embedding=False)[0]; e = e / |e|
  ca_tokens = ProjModel(e)            # (B, 4, cross_dim), appended to the 77 text tokens

Quirks kept here:
  * No CLIP mean/std normalisation and no resize to 224: the tower sees [0, 1] values at the
    diffusion resolution (H, W multiples of 8).
  * `pos_embedding=False` (what GEFU passes) drops the positional embedding entirely, so any H, W
    work: the patch conv is 'VALID' and the grid is floor(H/p) x floor(W/p). GEFU's
    `pos_embedding=True` does not add the usual grid embedding either: it bicubic-resamples the
    (L0, width) table as a one-channel image to (L, width) with `F.interpolate(mode='bicubic')`,
    i.e. a 1-D resample along the flattened token axis (class token included); reproduced to
    float32 rounding (`_torch_bicubic_matrix`). With L == L0 it is the identity (plain CLIP).
  * heads = width // 64 (`build_model`); QuickGELU x * sigmoid(1.702 x); LayerNorm eps 1e-5 in
    float32; `nn.MultiheadAttention` with a packed `in_proj_weight` (3W, W) / `in_proj_bias`.
  * Precision: `CLIPLoss('cuda')` keeps conv / linear / attention / `proj` weights in fp16
    (`convert_weights`), feeds the image as fp16, runs LayerNorm in fp32 and normalises the
    embedding in fp16 before `inference.py` casts it to float32; on CPU `load()` calls
    `model.float()`. `dtype=jnp.float16` here follows the fp16 path (params stay float32; with the
    released fp16 weights the float32 copies hold the same values; LayerNorm and the attention
    softmax run in float32). The fixture's `*_clip_embed_fp16weights` keys are that path (torch,
    CPU): it differs from float32 by <= 1.3e-4, mostly the final rounding of the unit vector to
    fp16, and this port's fp16 path matches it to one fp16 ulp (1.2e-4); CUDA kernels differ again.

Submodules and params carry the OpenAI state-dict names below `visual.` (`conv1`,
`transformer/resblocks/0/attn/in_proj_weight`, ...), so `lowlight_jax.convert.openai_clip`
converts by the repository's torch -> Flax naming rule.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

LN_EPS = 1e-5
_CUBIC_A = -0.75  # torch's bicubic kernel
_UINT8_TO_UNIT = np.arange(256, dtype=np.float32) / np.float32(255)


def _layer_norm(x, name, param_dtype):
  """CLIP's fp16-safe LayerNorm: computed in float32, cast back to the input dtype."""
  y = nn.LayerNorm(epsilon=LN_EPS, dtype=jnp.float32, param_dtype=param_dtype,
                   use_fast_variance=False, name=name)(x.astype(jnp.float32))
  return y.astype(x.dtype)


def _torch_bicubic_matrix(n_in: int, n_out: int) -> np.ndarray:
  """(n_out, n_in) matrix of torch's 1-D bicubic resample (align_corners=False, A=-0.75).

  As `upsample_bicubic2d`: src = (i + 0.5) * n_in / n_out - 0.5 (not clamped), taps floor(src)-1
  .. floor(src)+2 clamped to the border, cubic-convolution weights of t = src - floor(src).
  """
  if n_in == n_out:
    return np.eye(n_in, dtype=np.float32)  # torch copies when the sizes agree
  a = np.float32(_CUBIC_A)
  scale = np.float32(n_in) / np.float32(n_out)
  m = np.zeros((n_out, n_in), np.float64)
  for i in range(n_out):
    src = np.float32(scale * np.float32(i + 0.5) - np.float32(0.5))
    idx = int(np.floor(src))
    t = np.float32(src - np.float32(idx))

    def near(x):  # |x| <= 1
      return ((a + 2) * x - (a + 3)) * x * x + 1

    def far(x):  # 1 < |x| < 2
      return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a

    weights = (far(t + 1), near(t), near(1 - t), far(2 - t))
    for j, w in enumerate(weights):
      m[i, min(max(idx - 1 + j, 0), n_in - 1)] += w
  return m.astype(np.float32)


class MultiheadAttention(nn.Module):
  """`torch.nn.MultiheadAttention(width, heads)` self-attention (packed in_proj, no mask)."""
  width: int
  heads: int
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  precision: Any = None

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    b, n, w = x.shape
    w_in = self.param("in_proj_weight", nn.initializers.normal(self.width ** -0.5),
                      (3 * self.width, self.width), self.param_dtype)
    b_in = self.param("in_proj_bias", nn.initializers.zeros, (3 * self.width,), self.param_dtype)
    qkv = jnp.einsum("bld,ed->ble", x, w_in.astype(self.dtype), precision=self.precision)
    qkv = qkv + b_in.astype(self.dtype)
    q, k, v = (t.reshape(b, n, self.heads, w // self.heads) for t in jnp.split(qkv, 3, axis=-1))
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k, precision=self.precision,
                        preferred_element_type=jnp.float32) * (w // self.heads) ** -0.5
    probs = jax.nn.softmax(logits, axis=-1).astype(self.dtype)
    out = jnp.einsum("bhqk,bkhd->bqhd", probs, v, precision=self.precision).reshape(b, n, w)
    return nn.Dense(w, dtype=self.dtype, param_dtype=self.param_dtype, precision=self.precision,
                    name="out_proj")(out)


class _MLP(nn.Module):
  width: int
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  precision: Any = None

  @nn.compact
  def __call__(self, x):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype, precision=self.precision)
    x = nn.Dense(4 * self.width, name="c_fc", **kw)(x)
    x = x * jax.nn.sigmoid(1.702 * x)  # QuickGELU
    return nn.Dense(self.width, name="c_proj", **kw)(x)


class ResidualAttentionBlock(nn.Module):
  """x + attn(ln_1(x)), then x + mlp(ln_2(x))."""
  width: int
  heads: int
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  precision: Any = None

  @nn.compact
  def __call__(self, x):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype, precision=self.precision)
    x = x + MultiheadAttention(self.width, self.heads, name="attn", **kw)(
        _layer_norm(x, "ln_1", self.param_dtype))
    return x + _MLP(self.width, name="mlp", **kw)(_layer_norm(x, "ln_2", self.param_dtype))


class _Blocks(nn.Module):
  """`nn.Sequential` of blocks named '0', '1', ... (torch `resblocks.{i}`)."""
  width: int
  layers: int
  heads: int
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  precision: Any = None

  @nn.compact
  def __call__(self, x, taps: Sequence[int] = ()):
    """x -> x after all blocks; with `taps`, (x, [x after the first k blocks for k in taps])."""
    taps = tuple(int(k) for k in taps)
    if any(k < 1 or k > self.layers for k in taps):
      raise ValueError(f"block taps {taps} must lie in [1, {self.layers}] (a count of blocks)")
    outs = {}
    for i in range(self.layers):
      x = ResidualAttentionBlock(self.width, self.heads, self.dtype, self.param_dtype,
                                 self.precision, name=str(i))(x)
      outs[i + 1] = x
    return (x, [outs[k] for k in taps]) if taps else x


class _Transformer(nn.Module):
  width: int
  layers: int
  heads: int
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  precision: Any = None

  @nn.compact
  def __call__(self, x, taps: Sequence[int] = ()):
    return _Blocks(self.width, self.layers, self.heads, self.dtype, self.param_dtype,
                   self.precision, name="resblocks")(x, taps)


class VisionTransformer(nn.Module):
  """OpenAI CLIP / GEFU `VisionTransformer`: NHWC image -> (B, output_dim) raw embedding.

  Attributes:
    width, layers, patch_size, output_dim: the tower (ViT-B/32: 768, 12, 32, 512).
    input_resolution: the training resolution; sets the positional table's length
      (input_resolution // patch_size) ** 2 + 1, which is used only with `pos_embedding=True`.
    heads: attention heads; None -> width // 64, as `build_model` sets them.
    dtype: compute dtype (float16 reproduces GEFU's CUDA run; LayerNorm stays float32).
    param_dtype: parameter dtype (float32).
    precision: matmul / conv precision (`jax.lax.Precision.HIGHEST` for conformance on GPU/TPU).
  """
  width: int = 768
  layers: int = 12
  patch_size: int = 32
  output_dim: int = 512
  input_resolution: int = 224
  heads: int | None = None
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  precision: Any = None

  @property
  def num_heads(self) -> int:
    heads = self.width // 64 if self.heads is None else self.heads
    if heads < 1 or self.width % heads:
      raise ValueError(f"width {self.width} does not split into {heads} heads (build_model uses "
                       "width // 64, so the width must be >= 64)")
    return heads

  @nn.compact
  def __call__(self, x: jax.Array, *, pos_embedding: bool = False,
               return_tokens: bool = False, block_outputs: Sequence[int] = ()
               ) -> jax.Array | tuple[Any, ...]:
    """x (B, H, W, 3) float in the caller's range (GEFU: [0, 1], not CLIP-normalised).

    Returns the (B, output_dim) embedding `ln_post(x[:, 0]) @ proj` (not L2-normalised) in float32
    (values rounded to `dtype`); with `return_tokens`, also `ln_post` of the patch tokens
    (B, gh * gw, width), the second output of GEFU's `forward` (unused by inference).

    `block_outputs` (optional, e.g. (4, 8)): block counts k in [1, layers]; adds a last output, the
    list of the residual streams after the first k blocks, (B, 1 + gh * gw, width) float32 each
    (class token first, no `ln_post`): the intermediate taps of the vision-aided discriminator
    (`models.vision_aided`). The embedding (and tokens) are unchanged by it.
    """
    p, w = self.patch_size, self.width
    if x.shape[1] < p or x.shape[2] < p:
      raise ValueError(f"image {x.shape[1]}x{x.shape[2]} is smaller than one {p}x{p} patch")
    scale = w ** -0.5
    h = nn.Conv(w, (p, p), strides=(p, p), padding="VALID", use_bias=False, dtype=self.dtype,
                param_dtype=self.param_dtype, precision=self.precision, name="conv1")(
                    x.astype(self.dtype))
    h = h.reshape(h.shape[0], -1, w)  # row-major grid, as torch's reshape of (B, W, gh, gw)
    cls = self.param("class_embedding", nn.initializers.normal(scale), (w,), self.param_dtype)
    table = self.param("positional_embedding", nn.initializers.normal(scale),
                       ((self.input_resolution // p) ** 2 + 1, w), self.param_dtype)
    cls = jnp.broadcast_to(cls.astype(self.dtype), (h.shape[0], 1, w))
    h = jnp.concatenate([cls, h], axis=1)
    if pos_embedding:
      resample = jnp.asarray(_torch_bicubic_matrix(table.shape[0], h.shape[1]))
      pos = jnp.matmul(resample, table.astype(jnp.float32), precision=jax.lax.Precision.HIGHEST)
      h = h + pos.astype(self.dtype)
    h = _layer_norm(h, "ln_pre", self.param_dtype)
    h = _Transformer(w, self.layers, self.num_heads, self.dtype, self.param_dtype, self.precision,
                     name="transformer")(h, tuple(block_outputs))
    taps = None
    if block_outputs:
      h, taps = h
      taps = [t.astype(jnp.float32) for t in taps]
    ln_post = nn.LayerNorm(epsilon=LN_EPS, dtype=jnp.float32, param_dtype=self.param_dtype,
                           use_fast_variance=False, name="ln_post")
    proj = self.param("proj", nn.initializers.normal(scale), (w, self.output_dim),
                      self.param_dtype)
    emb = ln_post(h[:, 0].astype(jnp.float32)).astype(self.dtype)
    emb = jnp.matmul(emb, proj.astype(self.dtype), precision=self.precision).astype(jnp.float32)
    out = (emb,)
    if return_tokens:
      out += (ln_post(h[:, 1:].astype(jnp.float32)).astype(self.dtype).astype(jnp.float32),)
    if taps is not None:
      out += (taps,)
    return out if len(out) > 1 else emb


def config_from_params(params: Mapping[str, Any]) -> dict[str, int]:
  """`VisionTransformer` fields (width, layers, patch_size, output_dim, input_resolution) from its
  params (or `{'params': ...}`), as `build_model` infers them from a state dict."""
  params = params.get("params", params)
  width = int(params["class_embedding"].shape[0])
  patch = int(params["conv1"]["kernel"].shape[0])
  grid = round((params["positional_embedding"].shape[0] - 1) ** 0.5)
  return dict(width=width, layers=len(params["transformer"]["resblocks"]), patch_size=patch,
              output_dim=int(params["proj"].shape[1]), input_resolution=patch * grid)


def l2_normalize(emb: jax.Array, dtype: Any = jnp.float32) -> jax.Array:
  """e / |e| (`CLIPLoss.get_image_features(norm=True)`), rounded to `dtype`, returned as float32."""
  emb = emb.astype(jnp.float32)
  out = emb / jnp.linalg.norm(emb, axis=-1, keepdims=True)
  return out.astype(dtype).astype(jnp.float32)


def image_embedding(params: Mapping[str, Any], images: jax.Array, *, dtype: Any = jnp.float32,
                    precision: Any = None, pos_embedding: bool = False) -> jax.Array:
  """GEFU's `img_emb`: encode (B, H, W, 3) prompts with `pos_embedding=False`, then L2-normalise.

  Args:
    params: the tower's params or variables (`convert.openai_clip.convert_clip_visual`); its
      config is read from their shapes.
    images: NHWC prompt images, e.g. `illumination_prompt(...)`.
    dtype: compute dtype; float16 reproduces the released CUDA run (fixture `*_fp16weights`).
    precision: matmul precision.
    pos_embedding: GEFU's switch (False at inference; see the module docstring).

  Returns:
    (B, output_dim) float32 unit vectors: the input of `ProjModel`.
  """
  variables = params if "params" in params else {"params": params}
  model = VisionTransformer(**config_from_params(variables), dtype=dtype, precision=precision)
  return l2_normalize(model.apply(variables, images, pos_embedding=pos_embedding), dtype)


def illumination_prompt(image: Any, direction: str = "a2b") -> jax.Array:
  """The CLIP input of GEFU's illumination image prompt: (..., H, W, 3) -> (..., H, W, 3) float32.

  `inference.py`: `ToTensor(img.convert('HSV'))[:, 2]` is V / 255 with V = max(R, G, B) (PIL's HSV
  value equals the channel maximum exactly on uint8), then `1 - V` for a2b (lighten) and V for b2a;
  the map is repeated to 3 channels. No CLIP mean/std normalisation.

  Args:
    image: RGB, uint8 (as GEFU, after `resize_image_to_nearest_factor`) or float in [0, 1].
    direction: 'a2b' (low -> normal light: 1 - V) or 'b2a' (V).
  """
  if direction not in ("a2b", "b2a"):
    raise ValueError(f"direction must be 'a2b' or 'b2a', got {direction!r}")
  image = jnp.asarray(image)
  if image.shape[-1] != 3:
    raise ValueError(f"expected RGB images (..., H, W, 3), got shape {image.shape}")
  v = jnp.max(image, axis=-1, keepdims=True)
  # uint8: a table of float32 k / 255 (torch's `.float().div(255)`); an in-graph division by a
  # constant may be compiled as a reciprocal multiply, which is not bit-exact.
  v = jnp.asarray(_UINT8_TO_UNIT)[v] if image.dtype == jnp.uint8 else v.astype(jnp.float32)
  v = 1.0 - v if direction == "a2b" else v
  return jnp.repeat(v, 3, axis=-1)


class ProjModel(nn.Module):
  """GEFU `ProjModel`: (B, clip_dim) -> Linear -> (B, tokens, cross_dim) -> LayerNorm(eps 1e-5).

  Token t is output features [t * D, (t + 1) * D) of `proj` (`reshape(-1, tokens, D)`). Released:
  512 -> 4 x 1024. Params `proj`, `norm` as in the checkpoint's `image_proj` state dict.
  """
  cross_attention_dim: int = 1024
  clip_extra_context_tokens: int = 4
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  precision: Any = None

  @nn.compact
  def __call__(self, image_embeds: jax.Array) -> jax.Array:
    t, d = self.clip_extra_context_tokens, self.cross_attention_dim
    x = nn.Dense(t * d, dtype=self.dtype, param_dtype=self.param_dtype, precision=self.precision,
                 name="proj")(image_embeds)
    x = x.reshape(-1, t, d)
    return nn.LayerNorm(epsilon=LN_EPS, dtype=jnp.float32, param_dtype=self.param_dtype,
                        use_fast_variance=False, name="norm")(x.astype(jnp.float32))
