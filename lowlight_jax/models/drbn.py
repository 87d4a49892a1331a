"""DRBN and DRBN-SKF: the deep recursive band network with SKF's semantic-aware embedding blocks.

Papers: Yang et al., "From Fidelity to Perceptual Quality: A Semi-Supervised Approach for Low-Light
Image Enhancement", CVPR 2020 (DRBN); Wu et al., "Learning Semantic-Aware Knowledge Guidance for
Low-Light Image Enhancement", CVPR 2023 (SKF). Reference code:
langmanbusi/Semantic-Aware-Low-Light-Image-Enhancement `DRBN_SKF/src/model/drbn.py` (`DRBN`,
`DRBN_BU`, `RDB`, `RDB_Conv`), `model/Fuseblock.py` (the SE block:
`skf_se.SEBlock(variant='drbn')`), `trainer_seg_hist_fuse.py` (the call path and losses).

Architecture (599,132 parameters with SKF; no BatchNorm anywhere, so train and eval modes agree):
- Four recurrences `recur1..4`, each a `DRBN_BU` (G0=16, G=8, 4 convs per RDB, all hard-coded).
  recur1 sees cat(x, x); recur2..4 see cat(previous full-res output, x) and add the previous
  recurrence's features at every scale.
- One `DRBN_BU` pass: f_first = relu(SFENet1), f_s1 = relu(SFENet2(f_first)),
  f_s2 = Down1(RDB0(f_s1)), f_s4 = Down2(RDB1(f_s2)) (3x3 stride-2 convs; Down2 doubles to 32 ch);
  f_s4 += RDB3(RDB2(f_s4)) [+ prev_s4]; f_s2 += RDB4(Up2(f_s4)) [+ prev_s2];
  f_s1 += RDB5(Up1(f_s2)) + f_first [+ prev_s1]  (Up*: ConvTranspose 4x4, stride 2, pad 1);
  res4 = UPNet4(f_s4), res2 = UPNet2(f_s2) + up2(res4), res1 = UPNet(f_s1) + up2(res2), where UPNet*
  are two 3x3 convs with no activation between them and up2 is bilinear x2 (align_corners False).
- An RDB is 4 x (3x3 conv -> ReLU, concatenated after its input: old channels first), a 1x1 `LFF`
  back to the input width, plus the input.
- SKF (`recur4` only): after each scale's update the feature is REPLACED by an SE block's output,
  f_s4 = fuseblk_1(f_s4, seg_fea[1]) (SE 96 -> 32), f_s2 = fuseblk_2(f_s2, seg_fea[0])
  (SE 48 -> 16), f_s1 = fuseblk_3(f_s1, seg_orin) (SE 59 -> 16; seg_orin = the HRNet logits
  upsampled to input size, NOT the softmax). The fused f_s4 feeds both Up2 and UPNet4.
  seg_fea[2], seg_fea[3] and the softmax map are not used by the network. The SE blocks use the
  tanh-approximate GELU.
- H and W must be multiples of 4 (the Up* outputs are added to the Down* inputs). Outputs are not
  clamped; (phr1, phr2, phr4) are the full, 1/2 and 1/4 resolution images.

Baseline switch: `skf=False` builds the authors' plain DRBN (`recur4 = DRBN_BU(args)` without
fuseblk_*, `DRBN.forward`: four recurrences, no semantic input) for the ablation.

Semantic input (which image the frozen HRNet-W48 sees; for the method built around this network):
- Test (`Trainer.test()`) and train (`Trainer.train()`) alike: `forward_1` runs recurrences 1-3,
  then HRNet segments `res_g3_s1`, recurrence 3's full-resolution output (unclamped, no mean/std
  normalisation), and `forward_2` runs recur4 with that `seg_orin` and `seg_fea`. `__call__` with a
  `segment` callable does exactly this.
- Train only: HRNet is called a second time on the final output `phr1`; that softmax `seg_map`
  feeds the losses (SCH histogram classes and the discriminator's inputs/masks), not the network.
- Paper vs code: the paper (Eqs. 1-2) takes the semantic prior from the low-light input; the code
  takes it from recurrence 3's output. We follow the code (the released weights were trained so).

Training losses in the authors' DRBN-SKF code (`trainer_seg_hist_fuse.py`, adv=True), documented
for the method, not implemented here:
- rect_loss = SSIM(phr1, hr) + SSIM(phr2, hr[::2, ::2]) + SSIM(phr4, hr[::4, ::4]): their
  `pytorch_ssim.SSIM` RETURNS -mean(SSIM map) (11x11 Gaussian window, sigma 1.5, zero padding,
  C1 = 0.01^2, C2 = 0.03^2, per channel), so this is a multi-scale negative-SSIM loss; the half and
  quarter targets are strided subsamples of the ground truth, not resized images.
- + hist_loss(seg_map(phr1), phr1, hr): SCH loss with DRBN's normalisation, sum / (N*C*H*W*3)
  (C = 59 classes), weight 1; no edge-pixel removal in the code although the paper has one.
- + 0.1 * calculate_loss_G(D, hr, phr1, seg_map): the SA adversarial term (LSGAN), in the code
  through the discriminator's `conv0` on cat(phr1, seg_map), a layer the discriminator's own loss
  never trains. The discriminator (`D_Net.Discriminator`, BatchNorm in train mode) is rebuilt with a
  fresh Adam (lr = lr/1000) every epoch and trained by `calculate_loss_D` (0.9 global + 0.1 region
  terms, with the top-1/top-2 mask aliasing bug).
- Adam(lr 1e-4, betas 0.9/0.999, eps 1e-8), step decay x0.5 every 200 epochs, 300 epochs,
  batch 4, 256x256 crops; inputs and targets in [0, 1] (`/255`).

Submodules carry the torch attribute names (`recur4.RDBs.2.convs.1.conv.0`, `recur4.fuseblk_3.attn`)
so `model_lol.pt` (`DRBN.state_dict()`) converts by the naming rule; torch ConvTranspose weights
(in, out, kh, kw) land as (kh, kw, out, in), the layout `nn.ConvTranspose(transpose_kernel=True)`
expects (`lowlight_jax.convert.skf`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from lowlight_jax.models import skf_se
from lowlight_jax.ops import resize

G0 = 16  # DRBN_BU's hard-coded widths
GROWTH = 8
RDB_CONVS = 4
SE_WIDTHS = (("fuseblk_1", 2 * G0), ("fuseblk_2", G0), ("fuseblk_3", G0))

SegmentFn = Callable[[jax.Array], tuple[jax.Array, Sequence[jax.Array]]]


class Recurrence(NamedTuple):
  """One `DRBN_BU` pass: images at scales 1, 1/2, 1/4 and the features at those scales."""

  res_s1: jax.Array
  res_s2: jax.Array
  res_s4: jax.Array
  feat_s1: jax.Array
  feat_s2: jax.Array
  feat_s4: jax.Array


class _Conv(nn.Module):
  """A torch `nn.Conv2d` child named after its index in an `nn.Sequential`."""

  features: int
  kernel: int
  dtype: Any
  precision: Any
  stride: int = 1

  @nn.compact
  def __call__(self, x):
    return skf_se.conv(self.features, self.kernel, "0", bias=True, stride=self.stride,
                       dtype=self.dtype, precision=self.precision)(x)


class _RDBConvs(nn.Module):
  """`RDB.convs`: Sequential of `RDB_Conv` (conv 3x3 -> ReLU, concatenated after its input)."""

  growth: int
  dtype: Any
  precision: Any

  @nn.compact
  def __call__(self, x):
    for c in range(RDB_CONVS):
      out = nn.relu(_RDBConvSeq(self.growth, self.dtype, self.precision, name=str(c))(x))
      x = jnp.concatenate([x, out], axis=-1)
    return x


class _RDBConvSeq(nn.Module):
  """`RDB_Conv` whose `conv.0` is the 3x3 conv."""

  growth: int
  dtype: Any
  precision: Any

  @nn.compact
  def __call__(self, x):
    return _Conv(self.growth, 3, self.dtype, self.precision, name="conv")(x)


class RDB(nn.Module):
  """Residual dense block: x + LFF(convs(x))."""

  growth0: int
  growth: int
  dtype: Any = jnp.float32
  precision: Any = None

  @nn.compact
  def __call__(self, x):
    feat = _RDBConvs(self.growth, self.dtype, self.precision, name="convs")(x)
    return skf_se.conv(self.growth0, 1, "LFF", bias=True, dtype=self.dtype,
                       precision=self.precision)(feat) + x


class _RDBList(nn.Module):
  """`DRBN_BU.RDBs` (an nn.ModuleList): the six RDBs, called one at a time by index."""

  dtype: Any
  precision: Any

  @nn.compact
  def __call__(self, x, index: int):
    wide = index in (2, 3)  # the quarter-resolution pair works at 2*G0 channels
    g0, g = (2 * G0, 2 * GROWTH) if wide else (G0, GROWTH)
    return RDB(g0, g, self.dtype, self.precision, name=str(index))(x)


class _TwoConvs(nn.Module):
  """`UPNet*`: nn.Sequential(conv 3x3 -> G0, conv 3x3 -> 3) with no activation in between."""

  dtype: Any
  precision: Any

  @nn.compact
  def __call__(self, x):
    kw = dict(bias=True, dtype=self.dtype, precision=self.precision)
    x = skf_se.conv(G0, 3, "0", **kw)(x)
    return skf_se.conv(3, 3, "1", **kw)(x)


def _conv_transpose(features: int, name: str, dtype: Any, precision: Any) -> nn.ConvTranspose:
  """torch `ConvTranspose2d(k=4, stride=2, padding=1)`: output 2H; kernel (kh, kw, out, in)."""
  # transpose_kernel=True flips the kernel and swaps its channel axes (gradient-of-conv semantics,
  # as torch). Torch's padding p becomes k - 1 - p = 2 on the stride-dilated input.
  return nn.ConvTranspose(features, (4, 4), strides=(2, 2), padding=((2, 2), (2, 2)),
                          transpose_kernel=True, kernel_init=skf_se.TORCH_DEFAULT_INIT, dtype=dtype,
                          precision=precision, name=name)


class DRBNBU(nn.Module):
  """One recurrence (`DRBN_BU`); `seg=True` adds the three SE blocks (`fuseblk_1..3`)."""

  seg: bool = False
  dtype: Any = jnp.float32
  precision: Any = None

  @nn.compact
  def __call__(self, input_x: jax.Array, prev: Recurrence | None = None,
               seg_orin: jax.Array | None = None,
               seg_fea: Sequence[jax.Array] | None = None) -> Recurrence:
    """input_x: cat(image, x) (B,H,W,6); prev: the previous recurrence (None for the first)."""
    kw = dict(dtype=self.dtype, precision=self.precision)
    h, w = input_x.shape[1:3]
    if h % 4 or w % 4:
      raise ValueError(f"DRBN needs H and W divisible by 4, got {h}x{w}")
    rdbs = _RDBList(name="RDBs", **kw)
    f_first = nn.relu(skf_se.conv(G0, 3, "SFENet1", bias=True, **kw)(input_x))
    f_s1 = nn.relu(skf_se.conv(G0, 3, "SFENet2", bias=True, **kw)(f_first))
    f_s2 = skf_se.conv(G0, 3, "Down1", bias=True, stride=2, **kw)(rdbs(f_s1, 0))
    f_s4 = skf_se.conv(2 * G0, 3, "Down2", bias=True, stride=2, **kw)(rdbs(f_s2, 1))
    up2 = _conv_transpose(G0, "Up2", **kw)
    up1 = _conv_transpose(G0, "Up1", **kw)
    fuse = self.seg and seg_orin is not None
    if fuse and seg_fea is None:
      raise ValueError("seg_orin given without seg_fea")
    f_s4 = f_s4 + rdbs(rdbs(f_s4, 2), 3)
    if prev is not None:
      f_s4 = f_s4 + prev.feat_s4
    if fuse:
      skf_se.check_semantic_features(seg_fea, 2)
      f_s4 = skf_se.SEBlock(2 * G0, "drbn", name="fuseblk_1", **kw)(f_s4, seg_fea[1])
    f_s2 = f_s2 + rdbs(up2(f_s4), 4)
    if prev is not None:
      f_s2 = f_s2 + prev.feat_s2
    if fuse:
      f_s2 = skf_se.SEBlock(G0, "drbn", name="fuseblk_2", **kw)(f_s2, seg_fea[0])
    f_s1 = f_s1 + rdbs(up1(f_s2), 5) + f_first
    if prev is not None:
      f_s1 = f_s1 + prev.feat_s1
    if fuse:
      f_s1 = skf_se.SEBlock(G0, "drbn", name="fuseblk_3", **kw)(f_s1, seg_orin)

    def img_up(t):  # nn.Upsample(scale_factor=2, mode='bilinear'), align_corners False
      return resize.resize_bilinear(t, align_corners=False, scale_factor=2.0)

    res4 = _TwoConvs(name="UPNet4", **kw)(f_s4)
    res2 = _TwoConvs(name="UPNet2", **kw)(f_s2) + img_up(res4)
    res1 = _TwoConvs(name="UPNet", **kw)(f_s1) + img_up(res2)
    return Recurrence(res1, res2, res4, f_s1, f_s2, f_s4)


class DRBN(nn.Module):
  """DRBN-SKF (`skf=True`, the released network) or the plain DRBN baseline (`skf=False`).

  Images are NHWC RGB in [0, 1] (the authors divide by 255), H and W multiples of 4. Semantic
  inputs are HRNet-W48 outputs, NHWC: `seg_orin` (B,~H,~W,59) logits at input size, `seg_fea` the
  branch features at strides 4, 8, 16, 32 (only the first two are used).

  Attributes:
    skf: build the SE blocks in recur4 (False: the baseline, no semantic input).
    dtype: compute dtype.
    precision: conv precision.
  """

  skf: bool = True
  dtype: Any = jnp.float32
  precision: Any = None

  def setup(self):
    kw = dict(dtype=self.dtype, precision=self.precision)
    self.recur1 = DRBNBU(**kw)
    self.recur2 = DRBNBU(**kw)
    self.recur3 = DRBNBU(**kw)
    self.recur4 = DRBNBU(seg=self.skf, **kw)

  def forward_1(self, x: jax.Array) -> Recurrence:
    """Recurrences 1-3 (the authors' `forward_1`); `res_s1` is what HRNet segments."""
    x = x.astype(self.dtype)
    r = self.recur1(jnp.concatenate([x, x], axis=-1))
    r = self.recur2(jnp.concatenate([r.res_s1, x], axis=-1), r)
    return self.recur3(jnp.concatenate([r.res_s1, x], axis=-1), r)

  def forward_2(self, x: jax.Array, r3: Recurrence, seg_orin: jax.Array | None,
                seg_fea: Sequence[jax.Array] | None) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Recurrence 4 with the SE path (the authors' `forward_2`) -> (phr1, phr2, phr4)."""
    if self.skf and seg_orin is None:
      raise ValueError("DRBN-SKF needs seg_orin and seg_fea (HRNet outputs on r3.res_s1)")
    if not self.skf and seg_orin is not None:
      raise ValueError("the baseline DRBN (skf=False) takes no semantic input")
    x = x.astype(self.dtype)
    seg_fea = None if seg_fea is None else [f.astype(self.dtype) for f in seg_fea]
    seg_orin = None if seg_orin is None else seg_orin.astype(self.dtype)
    r = self.recur4(jnp.concatenate([r3.res_s1, x], axis=-1), r3, seg_orin, seg_fea)
    return r.res_s1, r.res_s2, r.res_s4

  def __call__(self, x: jax.Array, segment: SegmentFn | None = None
               ) -> tuple[jax.Array, jax.Array, jax.Array]:
    """x (B,H,W,3) -> (phr1, phr2, phr4).

    Args:
      x: the low-light image.
      segment: SKF only: maps recurrence 3's output image (B,H,W,3) to HRNet's
        `(seg_orin, seg_fea)`; e.g. a closure over the frozen HRNet, or `skf_se.zero_semantics`
        for `init`.
    """
    r3 = self.forward_1(x)
    if not self.skf:
      if segment is not None:
        raise ValueError("the baseline DRBN (skf=False) takes no semantic input")
      return self.forward_2(x, r3, None, None)
    if segment is None:
      raise ValueError("DRBN-SKF needs `segment`: image -> (seg_orin, seg_fea)")
    seg_orin, seg_fea = segment(r3.res_s1)
    return self.forward_2(x, r3, seg_orin, seg_fea)
