"""SNR-LLIE-Net and SNR-SKF: the SNR-aware transformer network with SKF's semantic-aware embedding.

Papers: Xu et al., "SNR-Aware Low-Light Image Enhancement", CVPR 2022 (SNR-LLIE-Net); Wu et al.,
"Learning Semantic-Aware Knowledge Guidance for Low-Light Image Enhancement", CVPR 2023 (SKF).
Reference code: langmanbusi/Semantic-Aware-Low-Light-Image-Enhancement `SNR_SKF/models/archs/`
`low_light_transformer_seg.py` (`low_light_transformer_seg`), `Fuse_Block.py` (SE block, SNR
variant: `skf_se.SEBlock(variant='snr')`), `arch_util.py` (`ResidualBlock_noBN`), `transformer/`
(`Encoder_patch66`, `EncoderLayer3`, `MultiHeadAttention4`, `PositionwiseFeedForward4`,
`ScaledDotProductAttention`);
`models/Video_base_model4_m.py` (the SNR mask, losses), `test.py` / `train.py` (call paths). The
baseline is `low_light_transformer.py`: the same network without the SE blocks.

Architecture (network_G of options/*/LOLv1_SKF.yml: nf 64, front_RBs 1, back_RBs 1, HR_in):
- Encoder: L1 = lrelu(conv_first_1(x)) (3x3), L2 = lrelu(conv_first_2(L1)), L3 =
  lrelu(conv_first_3(L2)) (3x3 stride 2 each; LeakyReLU 0.1); fea = feature_extraction(L3) (1
  residual block x + conv2(relu(conv1(x))), no BN); fea_light = recon_trunk_light(fea) (6 blocks).
- Long range: the SNR mask resized to 1/4 (legacy nearest); fea cut into 4x4 patches (`F.unfold`,
  token feature index c*16 + kh*4 + kw, row-major tokens, no positional encoding), a transformer of
  `n_layers` pre-norm layers (6 in the released network): MHA with ONE LayerNorm (eps 1e-6) on q, k
  and v, 8 heads x 64, q / 8 before q k^T, keys whose patch-mean mask is <= 0.5 filled with -1e9
  (all keys masked -> uniform attention), fc back, + residual; FFN LayerNorm -> 1024->2048 ReLU ->
  1024, + residual; no final norm. `nn.Fold` puts tokens back; positions no token covers (H/4 or W/4
  not a multiple of 4, e.g. LOL 600 px -> 150) are ZERO. fea = fold * (1 - mask) + fea_light * mask.
- Decoder: o = recon_trunk(fea) (1 block) -> [SE att_block_3(o, seg_fea[2])] -> cat(o, L3) ->
  upconv1 -> PixelShuffle(2) -> lrelu -> [att_block_2(o, seg_fea[1])] -> cat(o, L2) -> upconv2 ->
  PixelShuffle(2) -> lrelu -> [att_block_1(o, seg_fea[0])] -> cat(o, L1) -> lrelu(HRconv) ->
  conv_last -> + x. SE outputs REPLACE the feature and come before the skip concatenation.
  seg_fea[3] and the softmax map are not used by the network. Output not clamped.
- H, W multiples of 4 and H/4, W/4 >= 4 (one token at least); the test path does not pad.
- No BatchNorm and no active dropout (p = 0): train and eval modes compute the same function.

Baseline switch: `skf=False` builds `low_light_transformer` (no att_block_*, no semantic input).

Semantic input (which image the frozen HRNet-W48 sees; for the method built around this network):
- Test (`test.py`, and LOL validation in `train.py`): TWO passes. seg1 = HRNet(LQ);
  out1 = net(LQ, mask, seg1); seg2 = HRNet(out1) (unclamped, no normalisation);
  out2 = net(LQ, mask, seg2) is the reported result. The mask is the same in both passes.
- Train (`train.py`): ONE pass with HRNet on the GROUND TRUTH: seg = HRNet(GT),
  fake = net(LQ, mask, seg). Its softmax map also gives the SCH loss's classes.
- Paper vs code: the paper takes the prior from the low-light input in both phases; the code uses
  GT features in training and a two-pass LQ -> output refinement at test time. The released
  weights were trained the code's way.

The SNR mask (`snr_mask`, model-wrapper side): Y = 0.299 R + 0.587 G + 0.114 B of LQ (dark) and of
`nf` (light), nf = 5x5 box blur of LQ with BORDER_REFLECT_101 (`box_blur`, the dataset's
cv2.blur); m = light / (|dark - light| + 1e-4); m = clamp(m / (max_per_image(m) + 1e-4), 0, 1).

Training losses in the authors' SNR-SKF code (`Video_base_model4_m.optimize_parameters`, documented
for the method, not implemented here): Charbonnier sum(sqrt((out - GT)^2 + 1e-6)) (a SUM over the
batch, pixel_weight 1) every step, plus 10000 * hist_loss(seg_map(GT), out, GT) (SCH loss,
normalised by N*H*W) on steps divisible by 50 only. No adversarial (SA) term in this code path
although SNR_SKF ships a discriminator. Adam(lr 1e-4, betas 0.9/0.99), MultiStepLR x0.5 at 50k,
100k, 200k, 300k of 600k iterations, batch 16, 128x128 crops, flips and rotations.

Submodules carry the torch attribute names (`transformer.layer_stack.0.slf_attn.w_qs`,
`att_block_1.ffn.project_in_S`) so `SNR_SKF_LOL.pth` converts by the naming rule
(`lowlight_jax.convert.skf`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from lowlight_jax.models import skf_se
from lowlight_jax.ops import resize

RELEASED_N_LAYERS = 6
PATCH = 4
TRANSFORMER_LN_EPS = 1e-6


def lrelu(x: jax.Array) -> jax.Array:
  return nn.leaky_relu(x, negative_slope=0.1)


def luma(x: jax.Array) -> jax.Array:
  """0.299 R + 0.587 G + 0.114 B, keeping a channel axis: (B,H,W,3) -> (B,H,W,1)."""
  return x[..., 0:1] * 0.299 + x[..., 1:2] * 0.587 + x[..., 2:3] * 0.114


def box_blur(x: jax.Array, size: int = 5) -> jax.Array:
  """cv2.blur(x, (size, size)): the mean over a size x size window, BORDER_REFLECT_101 (NHWC)."""
  pad = size // 2
  xp = jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)), mode="reflect")
  total = jax.lax.reduce_window(xp, 0.0, jax.lax.add, (1, size, size, 1), (1, 1, 1, 1), "VALID")
  return total / (size * size)


def snr_mask(lq: jax.Array, nf: jax.Array) -> jax.Array:
  """The SNR map of `Video_base_model4_m.test()` from LQ and its blur `nf` (NHWC) -> (B,H,W,1)."""
  dark, light = luma(lq), luma(nf)
  mask = light / (jnp.abs(dark - light) + 0.0001)
  mask_max = jnp.max(mask, axis=(1, 2, 3), keepdims=True)
  return jnp.clip(mask / (mask_max + 0.0001), 0.0, 1.0)


def unfold_patches(x: jax.Array, patch: int = PATCH) -> jax.Array:
  """`F.unfold(kernel=stride=patch)` then permute: (B,H,W,C) -> (B, L, C*patch*patch).

  Rows/columns past the last whole patch are dropped; the feature index is c*p*p + kh*p + kw.
  """
  b, h, w, c = x.shape
  nh, nw = h // patch, w // patch
  x = x[:, :nh * patch, :nw * patch]
  x = x.reshape(b, nh, patch, nw, patch, c).transpose(0, 1, 3, 5, 2, 4)
  return x.reshape(b, nh * nw, c * patch * patch)


def fold_patches(tokens: jax.Array, hw: tuple[int, int], patch: int = PATCH) -> jax.Array:
  """`nn.Fold(output_size=hw, kernel=stride=patch)`: inverse of `unfold_patches`, uncovered = 0."""
  b, _, d = tokens.shape
  h, w = hw
  c = d // (patch * patch)
  nh, nw = h // patch, w // patch
  x = tokens.reshape(b, nh, nw, c, patch, patch).transpose(0, 1, 4, 2, 5, 3)
  x = x.reshape(b, nh * patch, nw * patch, c)
  return jnp.pad(x, ((0, 0), (0, h - nh * patch), (0, w - nw * patch), (0, 0)))


def pixel_shuffle(x: jax.Array, r: int = 2) -> jax.Array:
  """torch `nn.PixelShuffle(r)` in NHWC: channel c*r*r + i*r + j -> pixel (r*y + i, r*x + j)."""
  b, h, w, crr = x.shape
  c = crr // (r * r)
  x = x.reshape(b, h, w, c, r, r).transpose(0, 1, 4, 2, 5, 3)
  return x.reshape(b, h * r, w * r, c)


class TorchLayerNorm(nn.Module):
  """`nn.LayerNorm(d, eps)`: `weight` -> scale, `bias`; two-pass variance in float32."""

  eps: float = TRANSFORMER_LN_EPS

  @nn.compact
  def __call__(self, x):
    d = x.shape[-1]
    scale = self.param("scale", nn.initializers.ones, (d,), jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, (d,), jnp.float32)
    return skf_se.layer_norm(x, scale, bias, self.eps)


class MultiHeadAttention(nn.Module):
  """`MultiHeadAttention4`: pre-norm self-attention with a key mask; one LayerNorm for q, k, v."""

  n_head: int = 8
  d_k: int = 64
  d_v: int = 64
  dtype: Any = jnp.float32
  precision: Any = None

  @nn.compact
  def __call__(self, x: jax.Array, key_keep: jax.Array | None) -> jax.Array:
    b, length, d_model = x.shape
    kw = dict(use_bias=False, dtype=self.dtype, precision=self.precision)
    residual = x
    x = TorchLayerNorm(name="layer_norm")(x)  # q, k and v are the same tensor: one norm
    q = nn.Dense(self.n_head * self.d_k, name="w_qs", **kw)(x).reshape(b, length, self.n_head, -1)
    k = nn.Dense(self.n_head * self.d_k, name="w_ks", **kw)(x).reshape(b, length, self.n_head, -1)
    v = nn.Dense(self.n_head * self.d_v, name="w_vs", **kw)(x).reshape(b, length, self.n_head, -1)
    q = q / (self.d_k ** 0.5)  # the temperature divides q before the product
    scores = jnp.einsum("bqhd,bkhd->bhqk", q, k, precision=self.precision).astype(jnp.float32)
    if key_keep is not None:  # masked_fill(mask == 0, -1e9) on the keys
      scores = jnp.where(key_keep[:, None, None, :], scores, jnp.float32(-1e9))
    attn = jax.nn.softmax(scores, axis=-1).astype(self.dtype)
    out = jnp.einsum("bhqk,bkhd->bqhd", attn, v, precision=self.precision)
    out = out.reshape(b, length, self.n_head * self.d_v)
    return nn.Dense(d_model, name="fc", **kw)(out) + residual


class PositionwiseFeedForward(nn.Module):
  """`PositionwiseFeedForward4`: x + w_2(relu(w_1(LayerNorm(x))))."""

  d_inner: int = 2048
  dtype: Any = jnp.float32
  precision: Any = None

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kw = dict(dtype=self.dtype, precision=self.precision)
    y = TorchLayerNorm(name="layer_norm")(x)
    y = nn.relu(nn.Dense(self.d_inner, name="w_1", **kw)(y))
    return nn.Dense(x.shape[-1], name="w_2", **kw)(y) + x


class EncoderLayer(nn.Module):
  """`EncoderLayer3`: slf_attn then pos_ffn."""

  d_inner: int = 2048
  n_head: int = 8
  d_k: int = 64
  d_v: int = 64
  dtype: Any = jnp.float32
  precision: Any = None

  @nn.compact
  def __call__(self, x, key_keep):
    kw = dict(dtype=self.dtype, precision=self.precision)
    x = MultiHeadAttention(self.n_head, self.d_k, self.d_v, name="slf_attn", **kw)(x, key_keep)
    return PositionwiseFeedForward(self.d_inner, name="pos_ffn", **kw)(x)


class _LayerStack(nn.Module):
  """`Encoder_patch66.layer_stack` (an nn.ModuleList) applied in order."""

  n_layers: int
  d_inner: int
  n_head: int
  d_k: int
  d_v: int
  dtype: Any
  precision: Any

  @nn.compact
  def __call__(self, x, key_keep):
    for i in range(self.n_layers):
      x = EncoderLayer(self.d_inner, self.n_head, self.d_k, self.d_v, self.dtype, self.precision,
                       name=str(i))(x, key_keep)
    return x


class PatchTransformer(nn.Module):
  """`Encoder_patch66` (torch `transformer`): a plain layer stack, no positions, no final norm."""

  n_layers: int = RELEASED_N_LAYERS
  d_inner: int = 2048
  n_head: int = 8
  d_k: int = 64
  d_v: int = 64
  dtype: Any = jnp.float32
  precision: Any = None

  @nn.compact
  def __call__(self, tokens: jax.Array, key_keep: jax.Array | None) -> jax.Array:
    return _LayerStack(self.n_layers, self.d_inner, self.n_head, self.d_k, self.d_v, self.dtype,
                       self.precision, name="layer_stack")(tokens, key_keep)


class ResidualBlockNoBN(nn.Module):
  """`arch_util.ResidualBlock_noBN`: x + conv2(relu(conv1(x)))."""

  nf: int = 64
  dtype: Any = jnp.float32
  precision: Any = None

  @nn.compact
  def __call__(self, x):
    kw = dict(bias=True, dtype=self.dtype, precision=self.precision)
    y = nn.relu(skf_se.conv(self.nf, 3, "conv1", **kw)(x))
    return x + skf_se.conv(self.nf, 3, "conv2", **kw)(y)


class _Trunk(nn.Module):
  """`arch_util.make_layer(ResidualBlock_noBN, n)`: an nn.Sequential of residual blocks."""

  n: int
  nf: int
  dtype: Any
  precision: Any

  @nn.compact
  def __call__(self, x):
    for i in range(self.n):
      x = ResidualBlockNoBN(self.nf, self.dtype, self.precision, name=str(i))(x)
    return x


class SNRNet(nn.Module):
  """SNR-SKF (`skf=True`, `low_light_transformer_seg`) or the SNR-LLIE-Net baseline (`skf=False`).

  Attributes:
    skf: build the three SE blocks (False: the baseline, no semantic input).
    n_layers: transformer depth, 6 in the released network.
    nf: feature width (64; the transformer's d_model is nf * 16 = 1024).
    front_rbs, back_rbs: residual blocks before / after the transformer (1 and 1 as released).
    d_inner, n_head, d_k, d_v: transformer sizes (2048, 8, 64, 64).
    dtype: compute dtype.
    precision: conv/matmul precision.
  """

  skf: bool = True
  n_layers: int = RELEASED_N_LAYERS
  nf: int = 64
  front_rbs: int = 1
  back_rbs: int = 1
  d_inner: int = 2048
  n_head: int = 8
  d_k: int = 64
  d_v: int = 64
  dtype: Any = jnp.float32
  precision: Any = None

  @nn.compact
  def __call__(self, x: jax.Array, mask: jax.Array,
               seg_fea: Sequence[jax.Array] | None = None) -> jax.Array:
    """x (B,H,W,3) in [0, 1], mask (B,H,W,1) from `snr_mask`, seg_fea the HRNet-W48 branch features
    (NHWC, strides 4, 8, 16[, 32]) -> the enhanced image (B,H,W,3), unclamped."""
    h, w = x.shape[1:3]
    if h % 4 or w % 4 or h < 16 or w < 16:
      raise ValueError(f"SNR needs H, W multiples of 4 and at least 16, got {h}x{w}")
    if self.skf:
      if seg_fea is None:
        raise ValueError("SNR-SKF needs seg_fea (HRNet-W48 branch features)")
      skf_se.check_semantic_features(seg_fea, 3)
      seg_fea = [f.astype(self.dtype) for f in seg_fea]
    elif seg_fea is not None:
      raise ValueError("the baseline SNR network (skf=False) takes no semantic input")
    nf = self.nf
    kw = dict(dtype=self.dtype, precision=self.precision)
    x = x.astype(self.dtype)
    l1 = lrelu(skf_se.conv(nf, 3, "conv_first_1", bias=True, **kw)(x))
    l2 = lrelu(skf_se.conv(nf, 3, "conv_first_2", bias=True, stride=2, **kw)(l1))
    l3 = lrelu(skf_se.conv(nf, 3, "conv_first_3", bias=True, stride=2, **kw)(l2))
    fea = _Trunk(self.front_rbs, nf, name="feature_extraction", **kw)(l3)
    fea_light = _Trunk(6, nf, name="recon_trunk_light", **kw)(fea)

    hq, wq = fea.shape[1:3]
    mask_q = resize.resize_nearest_torch(mask.astype(jnp.float32), (hq, wq))
    keep = jnp.mean(unfold_patches(mask_q), axis=-1) > 0.5  # (B, L), decided in float32
    mask_q = mask_q.astype(self.dtype)
    tokens = unfold_patches(fea)
    tokens = PatchTransformer(self.n_layers, self.d_inner, self.n_head, self.d_k, self.d_v,
                              name="transformer", **kw)(tokens, keep)
    fea_fold = fold_patches(tokens, (hq, wq))
    fea = fea_fold * (1 - mask_q) + fea_light * mask_q

    def fuse(o, name, index):  # SE output replaces the feature, before the skip concatenation
      if not self.skf:
        return o
      return skf_se.SEBlock(64, "snr", name=name, **kw)(o, seg_fea[index])

    o = _Trunk(self.back_rbs, nf, name="recon_trunk", **kw)(fea)
    o = fuse(o, "att_block_3", 2)
    o = jnp.concatenate([o, l3], axis=-1)
    o = lrelu(pixel_shuffle(skf_se.conv(4 * nf, 3, "upconv1", bias=True, **kw)(o)))
    o = fuse(o, "att_block_2", 1)
    o = jnp.concatenate([o, l2], axis=-1)
    o = lrelu(pixel_shuffle(skf_se.conv(4 * 64, 3, "upconv2", bias=True, **kw)(o)))
    o = fuse(o, "att_block_1", 0)
    o = jnp.concatenate([o, l1], axis=-1)
    o = lrelu(skf_se.conv(64, 3, "HRconv", bias=True, **kw)(o))
    return skf_se.conv(3, 3, "conv_last", bias=True, **kw)(o) + x
