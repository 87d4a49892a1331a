"""torchvision-layout ResNet-50 (v1.5) feature extractor returning c2..c5.

Paper: He et al., "Deep Residual Learning for Image Recognition" (CVPR 2016). Reference code:
pytorch/vision `torchvision/models/resnet.py` (`Bottleneck`, `ResNet`), the backbone of SGZ's frozen
segmentation network (ShenZheng2000/Semantic-Guided-Low-Light-Image-Enhancement `modeling/fpn.py`).

Submodules are named after the torch attributes (`conv1`, `bn1`, `layer1` > `'0'` > `conv1`, ...,
`downsample` > `'0'`, `'1'`), so a torchvision state dict converts with
`lowlight_jax.convert.layout.torch_to_flax` (see `lowlight_jax.convert.torchvision_resnet`).
The stride of a downsampling bottleneck sits on its 3x3 conv2 (v1.5, as torchvision).
"""

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

# torchvision init: kaiming_normal_(mode='fan_out', nonlinearity='relu') (not truncated); BN 1 / 0.
_CONV_INIT = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def _conv(features: int, kernel: int, stride: int, name: str, dtype: Any,
          precision: Any) -> nn.Conv:
  pad = (kernel - 1) // 2  # torch's symmetric padding, not flax 'SAME' (asymmetric at stride 2)
  return nn.Conv(features, (kernel, kernel), strides=(stride, stride),
                 padding=((pad, pad), (pad, pad)), use_bias=False, kernel_init=_CONV_INIT,
                 dtype=dtype, precision=precision, name=name)


def _bn(train: bool, name: str, dtype: Any) -> nn.BatchNorm:
  # PyTorch BatchNorm2d: eps 1e-5, momentum 0.1 (= flax 0.9), biased batch variance for normalising.
  # Port note: in train mode torch updates running_var with the UNBIASED batch variance, flax with
  # the biased one (factor n/(n-1)); outputs are identical, only the running-stat updates differ.
  return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, dtype=dtype,
                      name=name)


class Downsample(nn.Module):
  """The projection shortcut `downsample = Sequential(conv1x1(stride), BatchNorm2d)`."""

  features: int
  stride: int
  dtype: Any = jnp.float32
  precision: Any = None

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    x = _conv(self.features, 1, self.stride, "0", self.dtype, self.precision)(x)
    return _bn(train, "1", self.dtype)(x)


class Bottleneck(nn.Module):
  """torchvision `Bottleneck` (expansion 4), stride on the 3x3 conv."""

  planes: int
  stride: int = 1
  dtype: Any = jnp.float32
  precision: Any = None

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    out_features = self.planes * 4
    conv = lambda f, k, s, name: _conv(f, k, s, name, self.dtype, self.precision)
    y = nn.relu(_bn(train, "bn1", self.dtype)(conv(self.planes, 1, 1, "conv1")(x)))
    y = nn.relu(_bn(train, "bn2", self.dtype)(conv(self.planes, 3, self.stride, "conv2")(y)))
    y = _bn(train, "bn3", self.dtype)(conv(out_features, 1, 1, "conv3")(y))
    if self.stride != 1 or x.shape[-1] != out_features:
      x = Downsample(out_features, self.stride, self.dtype, self.precision,
                     name="downsample")(x, train)
    return nn.relu(y + x)


class ResLayer(nn.Module):
  """One stage (`layerN`, a torch `nn.Sequential`): blocks named '0', '1', ..."""

  planes: int
  blocks: int
  stride: int
  dtype: Any = jnp.float32
  precision: Any = None

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    for i in range(self.blocks):
      x = Bottleneck(self.planes, self.stride if i == 0 else 1, self.dtype, self.precision,
                     name=str(i))(x, train)
    return x


class ResNet50(nn.Module):
  """ResNet-50 trunk (no pooling / fc) returning `{'c2', 'c3', 'c4', 'c5'}` at strides 4, 8, 16, 32.

  Attributes:
    stage_sizes: bottleneck blocks per stage; (3, 4, 6, 3) is ResNet-50, (3, 4, 23, 3) ResNet-101;
      tests use (1, 1, 1, 1).
    dtype: compute dtype (params stay float32).
    precision: conv precision (pass jax.lax.Precision.HIGHEST for parity on GPU/TPU).
  """

  stage_sizes: Sequence[int] = (3, 4, 6, 3)
  dtype: Any = jnp.float32
  precision: Any = None

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> dict[str, jax.Array]:
    """x: (B, H, W, 3). `train=True` normalises with batch statistics (and needs a mutable
    `batch_stats` collection, which receives the updated running averages)."""
    x = _conv(64, 7, 2, "conv1", self.dtype, self.precision)(x)
    x = nn.relu(_bn(train, "bn1", self.dtype)(x))
    x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))  # pads with -inf, as torch
    feats = {}
    for i, (planes, blocks) in enumerate(zip((64, 128, 256, 512), self.stage_sizes)):
      x = ResLayer(planes, blocks, 1 if i == 0 else 2, self.dtype, self.precision,
                   name=f"layer{i + 1}")(x, train)
      feats[f"c{i + 2}"] = x
    return feats
