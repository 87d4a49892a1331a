"""DeepLabV3+ with a dilated MobileNetV2 backbone: the frozen segmentation network of SCL-LLE.

Papers: Chen et al., "Encoder-Decoder with Atrous Separable Convolution for Semantic Image
Segmentation", ECCV 2018; Sandler et al., "MobileNetV2: Inverted Residuals and Linear Bottlenecks",
CVPR 2018. SCL-LLE (Liang et al., AAAI 2022) segments its enhanced images with it.
Reference code: VainF/DeepLabV3Plus-Pytorch `network/modeling.py::deeplabv3plus_mobilenet`,
`network/_deeplab.py` (`DeepLabHeadV3Plus`, `ASPP`), `network/backbone/mobilenetv2.py`, as vendored
by LingLIx/SCL-LLE (`network/`) and loaded from `best_deeplabv3plus_mobilenet_cityscapes_os16.pth`.

Architecture as released (19 Cityscapes classes, output stride 16: 5,225,203 parameters):
- `backbone.low_level_features` = MobileNetV2 `features[0:4]` (stride 4, 24 channels) and
  `backbone.high_level_features` = `features[4:18]` (320 channels); the last 1x1 conv to 1280
  channels is not used. Once the running stride reaches the output stride, later stages keep stride
  1 and dilate instead (the first block of a stage uses the previous dilation, the others the new
  one).
- The stem conv (3x3, stride 2) has NO padding. Every inverted-residual block zero-pads its INPUT by
  the dilated 3x3 extent (`fixed_padding`) and runs all its convs unpadded; the zeros therefore pass
  through the 1x1 expansion conv + BatchNorm + ReLU6 before the depthwise conv sees them, so the
  depthwise conv's border is not zero. This is reproduced exactly (it changes the logits near the
  border).
- Head: ASPP (1x1, three 3x3 atrous convs with rates 6/12/18, image pooling; 256 channels each; 1x1
  projection; dropout, inactive in eval) on the stride-16 features, bilinearly upsampled
  (align_corners False) to the stride-4 features, which are projected to 48 channels; concat (304)
  -> 3x3 conv 256 -> 1x1 conv to the classes; logits upsampled to the input size (bilinear,
  align_corners False).
- Every BatchNorm is used in eval mode (running statistics, eps 1e-5): the network is frozen.

Submodule names are the torch attribute names (`backbone.high_level_features.4.conv.0.1` is
`params['backbone']['high_level_features']['4']['conv']['0']['1']`), so a VainF state dict converts
by the naming rule of docs/CONVENTIONS.md (`lowlight_jax.convert.deeplab.convert_deeplabv3plus`).

Input: by default RGB in [0, 1], ImageNet-normalised inside (`normalize_input=True`), which is what
SCL-LLE's train.py does (`transforms.Normalize(mean, std)` on the enhanced image before
`model(...)`). Pass `normalize_input=False` to feed already-normalised images exactly like the torch
module.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from lowlight_jax.ops import resize

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CITYSCAPES_NUM_CLASSES = 19

# MobileNetV2 inverted-residual settings (expansion t, channels c, repeats n, stride s).
_MOBILENET_V2_SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
                          (6, 160, 3, 2), (6, 320, 1, 1))
MOBILENET_V2_REPEATS = tuple(n for _, _, n, _ in _MOBILENET_V2_SETTINGS)  # (1, 2, 3, 4, 3, 3, 1)
_STEM_CHANNELS = 32


def imagenet_normalize(x: jax.Array) -> jax.Array:
  """(x - mean) / std with the ImageNet statistics (torchvision `Normalize`), NHWC RGB in [0, 1]."""
  mean = jnp.asarray(IMAGENET_MEAN, x.dtype)
  std = jnp.asarray(IMAGENET_STD, x.dtype)
  return (x - mean) / std


def mobilenet_v2_blocks(output_stride: int = 16, repeats: tuple[int, ...] = MOBILENET_V2_REPEATS
                        ) -> tuple[tuple[int, int, int, int, int], ...]:
  """(in, out, stride, dilation, expansion) of `features[1:18]`, VainF's dilation schedule.

  `repeats` overrides the blocks per stage (only for small test networks; released weights need the
  default).
  """
  if output_stride not in (8, 16, 32):
    raise ValueError(f"output_stride must be 8, 16 or 32, got {output_stride}")
  if len(repeats) != len(_MOBILENET_V2_SETTINGS) or min(repeats) < 1:
    raise ValueError(
        f"repeats must be {len(_MOBILENET_V2_SETTINGS)} positive counts, got {repeats}")
  blocks = []
  current_stride, dilation, inp = 2, 1, _STEM_CHANNELS
  for (t, c, _, s), n in zip(_MOBILENET_V2_SETTINGS, repeats):
    previous_dilation = dilation
    if current_stride == output_stride:
      stride, dilation = 1, dilation * s
    else:
      stride, current_stride = s, current_stride * s
    for i in range(n):
      if i == 0:
        blocks.append((inp, c, stride, previous_dilation, t))
      else:
        blocks.append((inp, c, 1, dilation, t))
      inp = c
  return tuple(blocks)


def _batch_norm(name: str) -> nn.BatchNorm:
  # Frozen network: always running statistics. PyTorch eps 1e-5 (flax default is also 1e-5 for
  # BatchNorm, stated anyway); momentum is irrelevant in eval mode.
  return nn.BatchNorm(use_running_average=True, momentum=0.9, epsilon=1e-5, dtype=jnp.float32,
                      name=name)


class ConvBN(nn.Module):
  """torch `Sequential(Conv2d(bias=False) '0', BatchNorm2d '1', activation)`.

  Attributes:
    features: output channels.
    kernel: square kernel size.
    stride, dilation, groups: as in torch.
    padding: symmetric zero padding (0 = unpadded, as in MobileNetV2's ConvBNReLU).
    activation: 'relu', 'relu6' or None.
  """
  features: int
  kernel: int = 1
  stride: int = 1
  dilation: int = 1
  groups: int = 1
  padding: int = 0
  activation: str | None = "relu"
  dtype: Any = jnp.float32
  precision: Any = None

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    p = self.padding
    x = nn.Conv(self.features, (self.kernel, self.kernel), strides=(self.stride, self.stride),
                padding=((p, p), (p, p)), kernel_dilation=(self.dilation, self.dilation),
                feature_group_count=self.groups, use_bias=False, dtype=self.dtype,
                precision=self.precision, name="0")(x)
    x = _batch_norm("1")(x)
    if self.activation == "relu":
      x = nn.relu(x)
    elif self.activation == "relu6":
      x = jnp.clip(x, 0.0, 6.0)
    elif self.activation is not None:
      raise ValueError(f"unknown activation {self.activation!r}")
    return x.astype(self.dtype)


class _InvertedResidualLayers(nn.Module):
  """An inverted residual's `conv` Sequential: [pw ConvBNReLU6], dw ConvBNReLU6, pw-linear, BN."""
  inp: int
  oup: int
  stride: int
  dilation: int
  expansion: int
  dtype: Any = jnp.float32
  precision: Any = None

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    hidden = int(round(self.inp * self.expansion))
    i = 0
    if self.expansion != 1:
      x = ConvBN(hidden, 1, activation="relu6", dtype=self.dtype, precision=self.precision,
                 name="0")(x)
      i = 1
    x = ConvBN(hidden, 3, stride=self.stride, dilation=self.dilation, groups=hidden,
               activation="relu6", dtype=self.dtype, precision=self.precision, name=str(i))(x)
    x = nn.Conv(self.oup, (1, 1), use_bias=False, dtype=self.dtype, precision=self.precision,
                name=str(i + 1))(x)
    return _batch_norm(str(i + 2))(x).astype(self.dtype)


class InvertedResidual(nn.Module):
  """VainF's `InvertedResidual`: pad the input by the dilated 3x3 extent; unpadded convs; skip."""
  inp: int
  oup: int
  stride: int
  dilation: int
  expansion: int
  dtype: Any = jnp.float32
  precision: Any = None

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    total = 2 * self.dilation  # effective kernel 3 + 2 (d - 1), minus 1
    lo, hi = total // 2, total - total // 2
    x_pad = jnp.pad(x, ((0, 0), (lo, hi), (lo, hi), (0, 0)))
    y = _InvertedResidualLayers(self.inp, self.oup, self.stride, self.dilation, self.expansion,
                                self.dtype, self.precision, name="conv")(x_pad)
    if self.stride == 1 and self.inp == self.oup:
      return x + y
    return y


class _FeatureSlice(nn.Module):
  """A slice of MobileNetV2 `features`; children are named by their index in the full Sequential."""
  start: int
  stop: int
  output_stride: int
  repeats: tuple[int, ...] = MOBILENET_V2_REPEATS
  dtype: Any = jnp.float32
  precision: Any = None

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    blocks = mobilenet_v2_blocks(self.output_stride, self.repeats)
    for index in range(self.start, self.stop):
      if index == 0:
        # Stem: 3x3 stride 2 with NO padding (VainF's ConvBNReLU passes padding 0).
        x = ConvBN(_STEM_CHANNELS, 3, stride=2, activation="relu6", dtype=self.dtype,
                   precision=self.precision, name="0")(x)
      else:
        inp, oup, stride, dilation, t = blocks[index - 1]
        x = InvertedResidual(inp, oup, stride, dilation, t, self.dtype, self.precision,
                             name=str(index))(x)
    return x


class MobileNetV2Backbone(nn.Module):
  """`low_level_features` (features[0:4], stride 4) and `high_level_features` (features[4:18])."""
  output_stride: int = 16
  repeats: tuple[int, ...] = MOBILENET_V2_REPEATS
  dtype: Any = jnp.float32
  precision: Any = None

  @nn.compact
  def __call__(self, x: jax.Array) -> dict[str, jax.Array]:
    repeats = tuple(self.repeats)
    n = len(mobilenet_v2_blocks(self.output_stride, repeats)) + 1
    low_end = 1 + repeats[0] + repeats[1]  # stem + the 16- and 24-channel stages (4 as released)
    low = _FeatureSlice(0, low_end, self.output_stride, repeats, self.dtype, self.precision,
                        name="low_level_features")(x)
    out = _FeatureSlice(low_end, n, self.output_stride, repeats, self.dtype, self.precision,
                        name="high_level_features")(low)
    return {"low_level": low, "out": out}


class _ASPPPooling(nn.Module):
  """Image pooling `Sequential(AdaptiveAvgPool2d(1) '0', Conv '1', BN '2', ReLU)`, broadcast."""
  features: int = 256
  dtype: Any = jnp.float32
  precision: Any = None

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    pooled = jnp.mean(x.astype(jnp.float32), axis=(1, 2), keepdims=True).astype(self.dtype)
    y = nn.Conv(self.features, (1, 1), use_bias=False, dtype=self.dtype, precision=self.precision,
                name="1")(pooled)
    y = nn.relu(_batch_norm("2")(y)).astype(self.dtype)
    # Bilinear upsampling of a 1x1 map (align_corners False) is a broadcast.
    return jnp.broadcast_to(y, x.shape[:3] + (self.features,))


class _ASPPBranches(nn.Module):
  """`ASPP.convs`: 1x1, three atrous 3x3 (padding = dilation), image pooling; concatenated."""
  rates: tuple[int, int, int]
  features: int = 256
  dtype: Any = jnp.float32
  precision: Any = None

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    outs = [ConvBN(self.features, 1, dtype=self.dtype, precision=self.precision, name="0")(x)]
    for i, rate in enumerate(self.rates):
      outs.append(ConvBN(self.features, 3, dilation=rate, padding=rate, dtype=self.dtype,
                         precision=self.precision, name=str(i + 1))(x))
    outs.append(_ASPPPooling(self.features, self.dtype, self.precision, name="4")(x))
    return jnp.concatenate(outs, axis=-1)


class ASPP(nn.Module):
  """Atrous spatial pyramid pooling; the projection's dropout is inactive (eval mode)."""
  rates: tuple[int, int, int]
  features: int = 256
  dtype: Any = jnp.float32
  precision: Any = None

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    y = _ASPPBranches(tuple(self.rates), self.features, self.dtype, self.precision, name="convs")(x)
    return ConvBN(self.features, 1, dtype=self.dtype, precision=self.precision, name="project")(y)


class _DecoderClassifier(nn.Module):
  """`Sequential(Conv3x3 '0', BN '1', ReLU '2', Conv1x1 with bias '3')`."""
  num_classes: int
  dtype: Any = jnp.float32
  precision: Any = None

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = nn.Conv(256, (3, 3), padding=((1, 1), (1, 1)), use_bias=False, dtype=self.dtype,
                precision=self.precision, name="0")(x)
    x = nn.relu(_batch_norm("1")(x)).astype(self.dtype)
    return nn.Conv(self.num_classes, (1, 1), dtype=self.dtype, precision=self.precision,
                   name="3")(x)


class DeepLabHeadV3Plus(nn.Module):
  """Decoder: ASPP on the stride-16 features, upsampled and fused with 48 stride-4 channels."""
  num_classes: int
  rates: tuple[int, int, int] = (6, 12, 18)
  dtype: Any = jnp.float32
  precision: Any = None

  @nn.compact
  def __call__(self, features: dict[str, jax.Array]) -> jax.Array:
    low = ConvBN(48, 1, dtype=self.dtype, precision=self.precision,
                 name="project")(features["low_level"])
    out = ASPP(tuple(self.rates), dtype=self.dtype, precision=self.precision,
               name="aspp")(features["out"])
    out = resize.resize_bilinear(out, low.shape[1:3], align_corners=False)
    return _DecoderClassifier(self.num_classes, self.dtype, self.precision, name="classifier")(
        jnp.concatenate([low, out], axis=-1))


class DeepLabV3PlusMobileNet(nn.Module):
  """`deeplabv3plus_mobilenet(num_classes, output_stride)` in eval mode.

  Attributes:
    num_classes: 19 for the Cityscapes checkpoints.
    output_stride: 16 (ASPP rates 6/12/18) as SCL-LLE uses; 8 gives rates 12/24/36.
    repeats: inverted-residual blocks per MobileNetV2 stage; anything but the default (1, 2, 3, 4,
      3, 3, 1) is a smaller network for fast tests that no released checkpoint fits.
    normalize_input: ImageNet-normalise the [0, 1] input first (see module docstring).
    dtype: compute dtype of the convs (BatchNorm runs in float32; params are float32).
    precision: conv precision (`jax.lax.Precision.HIGHEST` for parity on accelerators).
  """
  num_classes: int = CITYSCAPES_NUM_CLASSES
  output_stride: int = 16
  repeats: tuple[int, ...] = MOBILENET_V2_REPEATS
  normalize_input: bool = True
  dtype: Any = jnp.float32
  precision: Any = None

  @nn.compact
  def __call__(self, x: jax.Array) -> dict[str, jax.Array]:
    """Args: x (N, H, W, 3). Returns {'logits': (N, H, W, num_classes) float32, input size}."""
    if self.normalize_input:
      x = imagenet_normalize(x.astype(jnp.float32))
    rates = (12, 24, 36) if self.output_stride == 8 else (6, 12, 18)  # VainF's `_segm_mobilenet`
    features = MobileNetV2Backbone(self.output_stride, tuple(self.repeats), self.dtype,
                                   self.precision, name="backbone")(x.astype(self.dtype))
    logits = DeepLabHeadV3Plus(self.num_classes, rates, self.dtype, self.precision,
                               name="classifier")(features)
    logits = resize.resize_bilinear(logits.astype(jnp.float32), x.shape[1:3], align_corners=False)
    return {"logits": logits}
