"""SGZ's unsupervised semantic segmentation (USS) network: ResNet-50 + FPN top-down head.

Paper: Zheng & Gupta, "Semantic-Guided Zero-Shot Learning for Low-Light Image/Video Enhancement"
(WACV-W 2022), Sec. 3.3. Reference code: ShenZheng2000/Semantic-Guided-Low-Light-Image-Enhancement
`modeling/fpn.py` (`fpn_module`, `fpn`), commit 8c187c3.

Names follow the torch attributes: `USS` holds `resnet` and `fpn` as the authors' `fpn` class does,
and `FPNHead` holds `toplayer`, `latlayer1..3`, `smooth{1..4}_{1,2}`, `classify`.
The network is frozen in SGZ: it only provides the semantic (focal) loss on the enhanced image.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from lowlight_jax.models import resnet
from lowlight_jax.ops import resize

# `fpn.__init__`: every top-down conv N(0, 0.01), bias 0.
_HEAD_INIT = nn.initializers.normal(stddev=0.01)


def head_conv(features: int, kernel: int, *, name: str, dtype: Any = jnp.float32,
              precision: Any = None) -> nn.Conv:
  """A top-down conv of the head: stride 1, torch padding (k-1)/2, bias, N(0, 0.01) / 0 init."""
  pad = (kernel - 1) // 2
  return nn.Conv(features, (kernel, kernel), padding=((pad, pad), (pad, pad)),
                 kernel_init=_HEAD_INIT, bias_init=nn.initializers.zeros, dtype=dtype,
                 precision=precision, name=name)


class FPNHead(nn.Module):
  """`fpn_module`: 1x1 top/lateral convs, bilinear upsample-add, two 3x3 smooths, classifier.

  Maps backbone features c2..c5 (NHWC, 256/512/1024/2048 channels) to logits at c2's resolution.
  """

  num_classes: int = 21
  dtype: Any = jnp.float32
  precision: Any = None

  def _conv(self, features: int, kernel: int, name: str) -> nn.Conv:
    return head_conv(features, kernel, name=name, dtype=self.dtype, precision=self.precision)

  @staticmethod
  def _resize_to(x: jax.Array, hw: tuple[int, int]) -> jax.Array:
    # `F.upsample(x, size=..., mode='bilinear')`: align_corners False (any size, e.g. 3 -> 4).
    return resize.resize_bilinear(x, hw, align_corners=False)

  @nn.compact
  def __call__(self, c2: jax.Array, c3: jax.Array, c4: jax.Array, c5: jax.Array) -> jax.Array:
    # Top-down pathway with lateral connections, each added at the lateral's own size.
    p5 = self._conv(256, 1, "toplayer")(c5)
    lat = self._conv(256, 1, "latlayer1")(c4)
    p4 = self._resize_to(p5, lat.shape[1:3]) + lat
    lat = self._conv(256, 1, "latlayer2")(c3)
    p3 = self._resize_to(p4, lat.shape[1:3]) + lat
    lat = self._conv(256, 1, "latlayer3")(c2)
    p2 = self._resize_to(p3, lat.shape[1:3]) + lat
    # Two 3x3 convs per level, no activation in between (as released).
    p5 = self._conv(128, 3, "smooth1_2")(self._conv(256, 3, "smooth1_1")(p5))
    p4 = self._conv(128, 3, "smooth2_2")(self._conv(256, 3, "smooth2_1")(p4))
    p3 = self._conv(128, 3, "smooth3_2")(self._conv(256, 3, "smooth3_1")(p3))
    p2 = self._conv(128, 3, "smooth4_2")(self._conv(256, 3, "smooth4_1")(p2))
    hw = p2.shape[1:3]
    # Order p5, p4, p3, p2 as the released `_concatenate`.
    cat = jnp.concatenate([self._resize_to(p, hw) for p in (p5, p4, p3)] + [p2], axis=-1)
    return self._conv(self.num_classes, 3, "classify")(cat)


class USS(nn.Module):
  """ResNet-50 + `FPNHead`: (B, H, W, 3) images in [0, 1] (NOT ImageNet-normalised, as released) ->
  (B, ceil(H/4), ceil(W/4), num_classes) logits.

  Port note: the released training script never calls `.eval()` on the segmentation net, so its
  BatchNorm uses batch statistics. `bn_use_batch_stats=True` reproduces that (apply with
  `mutable=['batch_stats']`, or use `uss_logits`); the default uses the running statistics.
  """

  num_classes: int = 21
  stage_sizes: tuple[int, ...] = (3, 4, 6, 3)
  bn_use_batch_stats: bool = False
  dtype: Any = jnp.float32
  precision: Any = None

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    feats = resnet.ResNet50(self.stage_sizes, self.dtype, self.precision, name="resnet")(
        x, train=self.bn_use_batch_stats)
    return FPNHead(self.num_classes, self.dtype, self.precision, name="fpn")(
        feats["c2"], feats["c3"], feats["c4"], feats["c5"])


def uss_logits(model: USS, variables: Any, x: jax.Array) -> jax.Array:
  """Applies a frozen `USS` in either BN mode (batch-stat mode's running-stat updates dropped)."""
  if model.bn_use_batch_stats:
    logits, _ = model.apply(variables, x, mutable=["batch_stats"])
    return logits
  return model.apply(variables, x)
