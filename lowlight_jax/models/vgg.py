"""VGG-16 feature extractor in the torchvision `vgg16().features` layout.

Paper: Simonyan & Zisserman, "Very Deep Convolutional Networks for Large-Scale Image Recognition",
ICLR 2015. Reference code: pytorch/vision `torchvision/models/vgg.py` (configuration "D", no batch
norm). SCL-LLE uses its relu1_2 / relu2_2 (Gram triplet) and relu4_3 (feature retention) activations
on un-normalised inputs.

Convs are named by their index in the torch `features` Sequential (`features.0`, `features.2`,
`features.5`, ...), so a torchvision state dict converts by the naming rule (the classifier is
simply not part of this module). No input normalisation happens inside: callers normalise if their
reference code does.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

# torchvision cfg "D": conv widths, "M" = 2x2 max pool.
_CFG_D = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")
# The ReLU outputs we expose, by block.
LAYERS = ("relu1_2", "relu2_2", "relu3_3", "relu4_3", "relu5_3")


def _layer_plan() -> list[tuple[str, Any]]:
  """[(torch index or relu name, conv width | 'M' | 'relu')] in torch Sequential order."""
  plan, idx, block, conv_in_block = [], 0, 1, 0
  for v in _CFG_D:
    if v == "M":
      plan.append((str(idx), "M"))
      idx += 1
      block += 1
      conv_in_block = 0
      continue
    conv_in_block += 1
    plan.append((str(idx), v))
    plan.append((f"relu{block}_{conv_in_block}", "relu"))
    idx += 2
  return plan


class _Features(nn.Module):
  """torchvision `features` up to (and including) the ReLU named `stop_at`."""
  stop_at: str
  dtype: Any
  precision: Any

  @nn.compact
  def __call__(self, x: jax.Array) -> dict[str, jax.Array]:
    out = {}
    for name, spec in _layer_plan():
      if spec == "M":
        x = nn.max_pool(x, (2, 2), strides=(2, 2), padding="VALID")
      elif spec == "relu":
        x = nn.relu(x)
        if name in LAYERS:
          out[name] = x
        if name == self.stop_at:
          break
      else:
        x = nn.Conv(spec, (3, 3), padding=((1, 1), (1, 1)), dtype=self.dtype,
                    precision=self.precision, name=name)(x)
    return out


class VGG16Features(nn.Module):
  """VGG-16 `features`, returning {relu1_2, relu2_2, relu3_3, relu4_3, relu5_3} up to `stop_at`.

  Attributes:
    stop_at: last ReLU computed (one of `LAYERS`); deeper convs are neither run nor created, so a
    truncated
      model's params are a prefix of the torchvision state dict.
    dtype: compute dtype.
    precision: conv precision (`jax.lax.Precision.HIGHEST` for parity on accelerators).
  """
  stop_at: str = "relu5_3"
  dtype: Any = jnp.float32
  precision: Any = None

  @nn.compact
  def __call__(self, x: jax.Array) -> dict[str, jax.Array]:
    """Args: x (N, H, W, 3), not normalised here. Returns the named ReLU activations (NHWC)."""
    if self.stop_at not in LAYERS:
      raise ValueError(f"stop_at must be one of {LAYERS}, got {self.stop_at!r}")
    return _Features(self.stop_at, self.dtype, self.precision, name="features")(x)
