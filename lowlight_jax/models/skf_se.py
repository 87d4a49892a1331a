"""SKF semantic-aware embedding (SE) block: Restormer-style cross attention from semantics.

Paper: Wu et al., "Learning Semantic-Aware Knowledge Guidance for Low-Light Image Enhancement",
CVPR 2023 (SKF), Sec. 3.2, Eqs. 4-5. Reference code:
langmanbusi/Semantic-Aware-Low-Light-Image-Enhancement, class `TransformerBlock(dim_2, dim)`, in
three copies that differ only in the feed-forward network (FFN):

  'llflow'  LLFlow_SKF/code/models/modules/Fuse_Block.py: gated-dconv FFN (GDFN), exact erf GELU;
  'drbn'    DRBN_SKF/src/model/Fuseblock.py: the same GDFN with `my_gelu.GELU`, the tanh
            approximation 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)));
  'snr'     SNR_SKF/models/archs/Fuse_Block.py: "semantic-gated" FFN
            project_out(gelu(W_R x) * gelu(W_S y)) with y = norm2(norm1(conv1(S))), exact GELU,
            no dwconv.

Forward (all variants), R the enhancement feature (B,H,W,dim), S the semantic one (B,h,w,dim_2):
  S = nearest(S, (H, W))    # PyTorch legacy `F.interpolate(mode='nearest')`: floor(dst * in/out)
  S = conv1(S)              # 1x1, with bias
  R, S = norm1(R), norm1(S) # ONE LayerNorm (per pixel over channels, eps 1e-5) for both
  R = R + attn(R, S)        # K, V from R (1x1 -> depthwise 3x3); Q from S (1x1 -> FULL 3x3)
  R = R + ffn(norm2(R)[, norm2(S)])
The residual stream starts from norm1(R): the un-normalised R is dropped, as in the released code.

Attention (MDTA, "transposed"): heads split the channels head-major; q and k are L2-normalised
over the pixels (`F.normalize`, eps 1e-12); attn = softmax(q k^T * temperature), a
(C/heads x C/heads) map per head, softmax over the last axis; out = project_out(attn v). The
temperature is a learned (heads, 1, 1) parameter. Attention/FFN convs have no bias; the FFN hidden
width is int(dim * 2.66), truncated.

Submodules carry the torch attribute names (`conv1`, `norm1.body`, `attn.kv_dwconv`,
`ffn.project_in_R`, ...), so the authors' state dicts map on by the naming rule
(`lowlight_jax.convert.layout`); the raw `attn.temperature` keeps its name and (heads, 1, 1) layout.

Port note: the SNR variant's `ffn.project_in` (dim -> hidden) and `ffn.dwconv` (depthwise 3x3 on
2*hidden) are built by the authors but never used in the forward pass. They are kept as parameters
(13,940 of them at dim 64) so the released state dicts load strictly; they get zero gradients.

Port note: `dtype` is the compute dtype. Parameters stay float32; LayerNorm statistics, the q/k
normalisation and the attention softmax are computed in float32 and cast back.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from lowlight_jax.ops import resize

VARIANTS = ("llflow", "drbn", "snr")
LAYERNORM_EPS = 1e-5
FFN_EXPANSION = 2.66
# HRNet-W48 (PASCAL-Context, 59 classes): branch widths at strides 4, 8, 16, 32.
HRNET_W48_WIDTHS = (48, 96, 192, 384)
PASCAL_CONTEXT_CLASSES = 59


def ffn_hidden_features(dim: int, expansion: float = FFN_EXPANSION) -> int:
  """`int(dim * ffn_expansion_factor)` as the authors compute it (64 -> 170, 32 -> 85, 16 -> 42)."""
  return int(dim * expansion)


def gelu_tanh(x: jax.Array) -> jax.Array:
  """DRBN_SKF `my_gelu.GELU`: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))."""
  return 0.5 * x * (1 + jnp.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))


def gelu_exact(x: jax.Array) -> jax.Array:
  """`F.gelu` (erf form)."""
  return jax.nn.gelu(x, approximate=False)


#: PyTorch's default conv init, kaiming_uniform(a=sqrt(5)): U(+-1/sqrt(fan_in)). Training from scratch as the
#: authors do needs their init scale: Flax's lecun-normal is 3x the variance, and DRBN's recurrent residual sums
#: then start with outputs far outside [0, 1].
TORCH_DEFAULT_INIT = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def conv(features: int, kernel: int, name: str, *, groups: int = 1, bias: bool = False,
         stride: int = 1, dtype: Any = jnp.float32, precision: Any = None) -> nn.Conv:
  """PyTorch `nn.Conv2d(k, stride, padding=(k-1)//2)` (zero padding) as a Flax conv, NHWC."""
  pad = (kernel - 1) // 2
  return nn.Conv(features, (kernel, kernel), strides=(stride, stride),
                 padding=((pad, pad), (pad, pad)), feature_group_count=groups, use_bias=bias,
                 kernel_init=TORCH_DEFAULT_INIT, dtype=dtype, precision=precision, name=name)


def layer_norm(x: jax.Array, scale: jax.Array, bias: jax.Array, eps: float) -> jax.Array:
  """LayerNorm over the last axis, biased two-pass variance, in float32; returns x's dtype."""
  xf = x.astype(jnp.float32)
  mu = jnp.mean(xf, axis=-1, keepdims=True)
  var = jnp.mean(jnp.square(xf - mu), axis=-1, keepdims=True)
  return ((xf - mu) / jnp.sqrt(var + eps) * scale + bias).astype(x.dtype)


class WithBiasLayerNorm(nn.Module):
  """Restormer `WithBias_LayerNorm` (torch `body`): (x - mean) / sqrt(var + eps) * weight + bias."""

  eps: float = LAYERNORM_EPS

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    c = x.shape[-1]
    scale = self.param("scale", nn.initializers.ones, (c,), jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, (c,), jnp.float32)
    return layer_norm(x, scale, bias, self.eps)


class LayerNorm(nn.Module):
  """Restormer `LayerNorm(dim, 'WithBias')`: the wrapper whose only child is `body`."""

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    return WithBiasLayerNorm(name="body")(x)


class SemanticAttention(nn.Module):
  """MDTA with the query from the semantic branch (torch `attn`): channel attention."""

  dim: int
  num_heads: int = 2
  dtype: Any = jnp.float32
  precision: Any = None

  @nn.compact
  def __call__(self, r: jax.Array, s: jax.Array) -> jax.Array:
    dim, heads = self.dim, self.num_heads
    if dim % heads:
      raise ValueError(f"dim {dim} is not divisible by num_heads {heads}")
    kw = dict(dtype=self.dtype, precision=self.precision)
    temperature = self.param("temperature", nn.initializers.ones, (heads, 1, 1), jnp.float32)
    kv = conv(2 * dim, 1, "kv", **kw)(r)
    kv = conv(2 * dim, 3, "kv_dwconv", groups=2 * dim, **kw)(kv)
    k, v = kv[..., :dim], kv[..., dim:]
    q = conv(dim, 1, "q", **kw)(s)
    q = conv(dim, 3, "q_dwconv", **kw)(q)  # a FULL 3x3 conv (not depthwise) in the released code

    b, h, w, _ = r.shape

    def split_heads(t):  # 'b h w (head c) -> b head c (h w)'
      return t.reshape(b, h * w, heads, dim // heads).transpose(0, 2, 3, 1)

    def l2_normalize(t):  # F.normalize(t, dim=-1): t / max(||t||, 1e-12)
      t = t.astype(jnp.float32)
      return t / jnp.maximum(jnp.sqrt(jnp.sum(t * t, axis=-1, keepdims=True)), 1e-12)

    q, k, v = l2_normalize(split_heads(q)), l2_normalize(split_heads(k)), split_heads(v)
    logits = jnp.einsum("bhcn,bhdn->bhcd", q, k, precision=self.precision) * temperature
    attn = jax.nn.softmax(logits, axis=-1).astype(self.dtype)
    out = jnp.einsum("bhcd,bhdn->bhcn", attn, v.astype(self.dtype), precision=self.precision)
    out = out.transpose(0, 3, 1, 2).reshape(b, h, w, dim)
    return conv(dim, 1, "project_out", **kw)(out)


class GatedDconvFFN(nn.Module):
  """Restormer GDFN (LLFlow/DRBN `ffn`): 1x1 -> depthwise 3x3 -> gelu(x1) * x2 -> 1x1."""

  dim: int
  expansion: float = FFN_EXPANSION
  approximate_gelu: bool = False
  dtype: Any = jnp.float32
  precision: Any = None

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    hidden = ffn_hidden_features(self.dim, self.expansion)
    kw = dict(dtype=self.dtype, precision=self.precision)
    x = conv(2 * hidden, 1, "project_in", **kw)(x)
    x = conv(2 * hidden, 3, "dwconv", groups=2 * hidden, **kw)(x)
    x1, x2 = x[..., :hidden], x[..., hidden:]
    act = gelu_tanh if self.approximate_gelu else gelu_exact
    return conv(self.dim, 1, "project_out", **kw)(act(x1) * x2)


class _UnusedConvKernel(nn.Module):
  """A bias-free conv kernel the released network holds but never applies (see the Port note)."""

  shape: tuple[int, ...]  # Flax HWIO layout

  @nn.compact
  def __call__(self) -> jax.Array:
    return self.param("kernel", nn.initializers.lecun_normal(), self.shape, jnp.float32)


class SemanticGatedFFN(nn.Module):
  """SNR_SKF `FeedForward(x, y)`: project_out(gelu(project_in_R(x)) * gelu(project_in_S(y)))."""

  dim: int
  expansion: float = FFN_EXPANSION
  dtype: Any = jnp.float32
  precision: Any = None

  @nn.compact
  def __call__(self, x: jax.Array, y: jax.Array) -> jax.Array:
    hidden = ffn_hidden_features(self.dim, self.expansion)
    kw = dict(dtype=self.dtype, precision=self.precision)
    # Port note: built but unused by the authors; kept so their state dicts load.
    _UnusedConvKernel((1, 1, self.dim, hidden), name="project_in")()
    _UnusedConvKernel((3, 3, 1, 2 * hidden), name="dwconv")()
    x = conv(hidden, 1, "project_in_R", **kw)(x)
    y = conv(hidden, 1, "project_in_S", **kw)(y)
    return conv(self.dim, 1, "project_out", **kw)(gelu_exact(x) * gelu_exact(y))


class SEBlock(nn.Module):
  """The SKF SE block, torch `TransformerBlock(dim_2, dim)` (dim_2 is read from S).

  Attributes:
    dim: channels of R (and of the output).
    variant: 'llflow' (exact-GELU GDFN), 'drbn' (tanh-GELU GDFN) or 'snr' (semantic-gated FFN).
    num_heads: attention heads (2 in every released network).
    ffn_expansion_factor: FFN width factor (2.66).
    dtype: compute dtype.
    precision: matmul/conv precision (e.g. `jax.lax.Precision.HIGHEST` for parity on accelerators).
  """

  dim: int
  variant: str = "llflow"
  num_heads: int = 2
  ffn_expansion_factor: float = FFN_EXPANSION
  dtype: Any = jnp.float32
  precision: Any = None

  @nn.compact
  def __call__(self, r: jax.Array, s: jax.Array) -> jax.Array:
    """R (B,H,W,dim) and S (B,h,w,dim_2), NHWC -> refined R (B,H,W,dim)."""
    if self.variant not in VARIANTS:
      raise ValueError(f"unknown SE variant {self.variant!r}; known: {VARIANTS}")
    if r.shape[-1] != self.dim:
      raise ValueError(f"R has {r.shape[-1]} channels, the block was built for {self.dim}")
    kw = dict(dtype=self.dtype, precision=self.precision)
    r = r.astype(self.dtype)
    s = resize.resize_nearest_torch(s.astype(self.dtype), r.shape[1:3])
    s = conv(self.dim, 1, "conv1", bias=True, **kw)(s)
    norm1 = LayerNorm(name="norm1")  # one module, applied to both R and S (shared parameters)
    r = norm1(r)
    s = norm1(s)
    r = r + SemanticAttention(self.dim, self.num_heads, name="attn", **kw)(r, s)
    norm2 = LayerNorm(name="norm2")
    if self.variant == "snr":
      ffn = SemanticGatedFFN(self.dim, self.ffn_expansion_factor, name="ffn", **kw)
      return r + ffn(norm2(r), norm2(s))
    ffn = GatedDconvFFN(self.dim, self.ffn_expansion_factor,
                        approximate_gelu=self.variant == "drbn", name="ffn", **kw)
    return r + ffn(norm2(r))


def hrnet_w48_shapes(batch: int, height: int, width: int) -> dict[str, Any]:
  """NHWC shapes of the HRNet-W48 outputs the SKF networks receive, for an input (height, width).

  The stem's two stride-2 convs (3x3, pad 1) give ceil(H/2) then ceil(ceil(H/2)/2) rows, and each
  transition halves again with ceil. `seg_orin` / `seg_map` are the logits / softmax upsampled x4
  from stride 4 (H itself when 4 divides H).
  """
  sizes = []
  h, w = -(-height // 2), -(-width // 2)
  for _ in HRNET_W48_WIDTHS:
    h, w = -(-h // 2), -(-w // 2)
    sizes.append((h, w))
  h4, w4 = sizes[0]
  return {
      "seg_orin": (batch, 4 * h4, 4 * w4, PASCAL_CONTEXT_CLASSES),
      "seg_fea": tuple((batch, hh, ww, c) for (hh, ww), c in zip(sizes, HRNET_W48_WIDTHS)),
  }


def zero_semantics(image: jax.Array) -> tuple[jax.Array, tuple[jax.Array, ...]]:
  """(seg_orin, seg_fea) of zeros with HRNet-W48's shapes for `image` (B,H,W,3), for `init`."""
  shapes = hrnet_w48_shapes(*image.shape[:3])
  return (jnp.zeros(shapes["seg_orin"], image.dtype),
          tuple(jnp.zeros(s, image.dtype) for s in shapes["seg_fea"]))


def check_semantic_features(seg_fea: Sequence[jax.Array], needed: int) -> None:
  if len(seg_fea) < needed:
    raise ValueError(f"expected at least {needed} HRNet branch features, got {len(seg_fea)}")
