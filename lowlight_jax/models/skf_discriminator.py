"""The discriminator of SKF's semantic-guided adversarial (SA) loss.

Paper: Wu et al., "Learning Semantic-Aware Knowledge Guidance for Low-Light Image Enhancement",
CVPR 2023, Sec. 3.4. Reference code: langmanbusi/Semantic-Aware-Low-Light-Image-Enhancement
`DRBN_SKF/src/model/D_Net.py` (`Discriminator`); `SNR_SKF/models/D_Net.py` has the same network
without `conv0`.

Two input stems: `conv1` (3 -> 64) for plain or region-masked images, `conv0` (3 + K -> 64, K = 59
PASCAL-Context classes) for an image concatenated with its semantic map; the stem is chosen by the
input's channel count, as released. Both are 3x3 convs with padding 1 and a ReLU. Then seven
conv(3x3, pad 1) -> BatchNorm(eps 1e-5) -> ReLU: 64 s2, 128, 128 s2, 256, 256 s2, 512, 512 s2;
then `conv9`, a 1x1 conv 512 -> 1 with padding 1 (so its output has a ring equal to its bias, and
the ring is part of the average), a global average and a sigmoid: (B, 1) scores.

Submodules carry the torch attribute names (`conv0`..`conv9`, `bn2`..`bn8`), so the authors' state
dict converts by the naming rule (`lowlight_jax.convert.skf_discriminator`).

BatchNorm: the released trainer builds D fresh every epoch and never calls `eval()`, so every D
call normalises with its own batch statistics: `train=True` here (pass `mutable=['batch_stats']`).
`train=False` uses the running statistics.
Port note: torch updates `running_var` with the unbiased batch variance, flax with the biased one;
the normalisation itself uses the biased variance in both, so train-mode outputs agree.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

NUM_SEMANTIC_CLASSES = 59
# (features, stride) of conv2..conv8.
_BODY = ((64, 2), (128, 1), (128, 2), (256, 1), (256, 2), (512, 1), (512, 2))


class SKFDiscriminator(nn.Module):
  """SKF's `D_Net.Discriminator`: NHWC image (3 channels) or image + semantic map -> (B, 1) scores.

  Attributes:
    semantic_channels: K, the semantic map's channels; `conv0` takes 3 + K (59 as released).
    dtype: compute dtype of the convolutions (params stay float32; BatchNorm statistics, the final
      average and the sigmoid run in float32).
    precision: conv precision; `jax.lax.Precision.HIGHEST` for conformance on accelerators.
  """
  semantic_channels: int = NUM_SEMANTIC_CLASSES
  dtype: Any = jnp.float32
  precision: Any = None

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    """x (B, H, W, 3) or (B, H, W, 3 + semantic_channels) -> (B, 1) sigmoid scores (float32)."""
    c = x.shape[-1]
    if c not in (3, 3 + self.semantic_channels):
      raise ValueError(f"the discriminator takes 3 or {3 + self.semantic_channels} channels "
                       f"(image, or image + semantic map), got {c}")

    def conv(name, features, stride=1, kernel=3):
      return nn.Conv(features, (kernel, kernel), strides=(stride, stride),
                     padding=((1, 1), (1, 1)), dtype=self.dtype, precision=self.precision,
                     name=name)

    stem3, stem_sem = conv("conv1", 64), conv("conv0", 64)
    if self.is_initializing():
      # Create both stems whatever the first input is (the released dispatch is by channel count).
      other = 3 + self.semantic_channels if c == 3 else 3
      (stem_sem if c == 3 else stem3)(jnp.zeros((1, 1, 1, other), x.dtype))
    h = nn.relu((stem3 if c == 3 else stem_sem)(x))
    for i, (features, stride) in enumerate(_BODY, start=2):
      h = conv(f"conv{i}", features, stride)(h)
      h = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                       dtype=self.dtype, use_fast_variance=False, name=f"bn{i}")(h)
      h = nn.relu(h)
    # 1x1 conv with padding 1 (released): the zero ring maps to the bias and enters the mean.
    h = conv("conv9", 1, kernel=1)(h).astype(jnp.float32)
    return jax.nn.sigmoid(jnp.mean(h, axis=(1, 2)))

