"""RetinexNet DecomNet: Retinex decomposition of an image into reflectance R and illumination L.

Paper: Wei et al., "Deep Retinex Decomposition for Low-Light Enhancement", BMVC 2018. The variant
ported here is the frozen reflectance teacher of SCUF/GEFU (Wang et al., "Semantically Consistent
Unsupervised Fine-tuning"; reference code wangsen99/GEFU `src/my_utils/enhancer.py`, commit 5d28e53,
weights `retinexnet/decomp.pth`).

Input cat(max over RGB, RGB) (the channel max FIRST) -> 9x9 conv 4->64 (no activation) -> 5 x [3x3
conv 64->64 + ReLU] -> 3x3 conv 64->4; every conv uses replicate (edge) padding. R =
sigmoid(channels 0:3), L = sigmoid(channel 3). 207,748 parameters.

Module names follow the released state dict (`DecomNet.net1_conv0`,
`DecomNet.net1_convs.{0,2,4,6,8}`, `DecomNet.net1_recon`): the torch `nn.Sequential` keeps the ReLUs
at the odd indices.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp


def _replicate_conv(x: jax.Array, features: int, kernel: int, name: str, dtype: Any, precision: Any
                    ) -> jax.Array:
  p = kernel // 2
  x = jnp.pad(x, ((0, 0), (p, p), (p, p), (0, 0)), mode="edge")
  return nn.Conv(features, (kernel, kernel), padding="VALID", dtype=dtype, precision=precision,
                 name=name)(x)


class _ConvReLUStack(nn.Module):
  """The torch `net1_convs` Sequential: convs at even indices, ReLU after each."""
  features: int
  depth: int
  dtype: Any
  precision: Any

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    for i in range(self.depth):
      x = nn.relu(_replicate_conv(x, self.features, 3, str(2 * i), self.dtype, self.precision))
    return x


class DecomNet(nn.Module):
  """Decomposition network. Returns dict(R (N,H,W,3), L (N,H,W,1)), both in (0, 1)."""
  channels: int = 64
  depth: int = 5
  dtype: Any = jnp.float32
  precision: Any = None

  @nn.compact
  def __call__(self, x: jax.Array) -> dict[str, jax.Array]:
    x_max = jnp.max(x, axis=-1, keepdims=True)
    h = jnp.concatenate([x_max, x], axis=-1)
    h = _replicate_conv(h, self.channels, 9, "net1_conv0", self.dtype, self.precision)
    h = _ConvReLUStack(self.channels, self.depth, self.dtype, self.precision, name="net1_convs")(h)
    out = _replicate_conv(h, 4, 3, "net1_recon", self.dtype, self.precision)
    return {"R": jax.nn.sigmoid(out[..., 0:3]), "L": jax.nn.sigmoid(out[..., 3:4])}


class RetinexNet(nn.Module):
  """GEFU's `RetinexNet` wrapper (only its DecomNet is used); params live under `DecomNet`."""
  channels: int = 64
  dtype: Any = jnp.float32
  precision: Any = None

  @nn.compact
  def __call__(self, x: jax.Array) -> dict[str, jax.Array]:
    """Args: x (N, H, W, 3) RGB in [0, 1]. Returns dict(R, L)."""
    return DecomNet(self.channels, dtype=self.dtype, precision=self.precision, name="DecomNet")(x)
