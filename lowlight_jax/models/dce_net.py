"""DCE-Net, the curve-estimation network of Zero-DCE (also the enhancer of SCL-LLE).

Paper: Guo et al., "Zero-Reference Deep Curve Estimation for Low-Light Image Enhancement", CVPR
2020; SCL-LLE (Liang et al., "Semantically Contrastive Learning for Low-Light Image Enhancement",
AAAI 2022) reuses it. Reference code: Li-Chongyi/Zero-DCE `Zero-DCE_code/model.py` (commit e0f4adc)
and LingLIx/SCL-LLE `lowlight_model.py` (commit 408d89a); `enhance_net_nopool` in both.

Seven 3x3 convolutions (32 channels, bias, zero padding 1) with the symmetric skips conv5(cat[x3,
x4]), conv6(cat[x2, x5]), conv7(cat[x1, x6]); ReLU after 1-6; tanh after conv7, whose 24 channels
are split into eight 3-channel curve maps r1..r8. Iteration k applies the quadratic curve `x = x +
r_k * (x^2 - x)` at full resolution. 79,416 parameters. Submodules are named `e_conv1` .. `e_conv7`
like the torch attributes, so the released state dicts convert by the naming rule of
docs/CONVENTIONS.md.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp


def apply_curves(x: jax.Array, curves: jax.Array, *, iterations: int = 8
                 ) -> tuple[jax.Array, jax.Array | None]:
  """Applies `iterations` quadratic curves; `curves` holds one 3-channel map per iteration.

  Args:
    x: (..., H, W, 3) image in [0, 1].
    curves: (..., H, W, 3 * iterations) curve parameters in [-1, 1], channel order r1, r2, ...
    iterations: number of curve applications.

  Returns:
    (enhanced, enhanced after 4 iterations or None when iterations < 4).
  """
  if curves.shape[-1] != 3 * iterations:
    raise ValueError(f"need {3 * iterations} curve channels, got {curves.shape[-1]}")
  after_4 = None
  for k in range(iterations):
    r = curves[..., 3 * k:3 * k + 3]
    x = x + r * (x * x - x)  # torch.pow(x, 2) is x * x exactly
    if k == 3:
      after_4 = x
  return x, after_4


class DCENet(nn.Module):
  """DCE-Net: curve maps from a low-light image, and the image they enhance.

  Attributes:
    features: hidden channels (32 as released).
    iterations: number of curve maps / iterations (8 as released).
    dtype: compute dtype (params stay float32).
    precision: conv precision; use `jax.lax.Precision.HIGHEST` on accelerators for conformance.
  """
  features: int = 32
  iterations: int = 8
  dtype: Any = jnp.float32
  precision: Any = None

  @nn.compact
  def __call__(self, x: jax.Array) -> dict[str, jax.Array]:
    """x (N, H, W, 3) in [0, 1] -> dict(enhanced, curves (N, H, W, 3*iterations), enhanced_4)."""

    def conv(name, features):
      return nn.Conv(features, (3, 3), padding=((1, 1), (1, 1)), dtype=self.dtype,
                     precision=self.precision, name=name)

    h = self.features
    x1 = nn.relu(conv("e_conv1", h)(x))
    x2 = nn.relu(conv("e_conv2", h)(x1))
    x3 = nn.relu(conv("e_conv3", h)(x2))
    x4 = nn.relu(conv("e_conv4", h)(x3))
    x5 = nn.relu(conv("e_conv5", h)(jnp.concatenate([x3, x4], axis=-1)))
    x6 = nn.relu(conv("e_conv6", h)(jnp.concatenate([x2, x5], axis=-1)))
    curves = jnp.tanh(conv("e_conv7", 3 * self.iterations)(jnp.concatenate([x1, x6], axis=-1)))
    enhanced, enhanced_4 = apply_curves(x.astype(curves.dtype), curves, iterations=self.iterations)
    out = {"enhanced": enhanced, "curves": curves}
    if enhanced_4 is not None:
      out["enhanced_4"] = enhanced_4
    return out
