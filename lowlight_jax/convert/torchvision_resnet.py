"""torchvision ResNet-50 state dict -> variables of `lowlight_jax.models.resnet.ResNet50`.

Reference: pytorch/vision `torchvision/models/resnet.py` (`resnet50`, `ResNet50_Weights`). The names
follow the torch -> Flax rule of `lowlight_jax.convert.layout`; the classifier `fc.*` is dropped.
"""

from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from lowlight_jax.convert import layout
from lowlight_jax.models import resnet


def convert_resnet50(state_dict: Mapping[str, Any], *,
                     stage_sizes: Sequence[int] = (3, 4, 6, 3)) -> dict[str, dict]:
  """Converts a torchvision ResNet-50 state dict (numpy or torch-convertible arrays).

  Args:
    state_dict: torch key -> array in torch layout (e.g. `{k: v.numpy() for k, v in sd.items()}`).
    stage_sizes: blocks per stage of the target model (ResNet-50: (3, 4, 6, 3)).

  Returns:
    `{'params': ..., 'batch_stats': ...}` for `ResNet50(stage_sizes)`.

  Raises:
    ValueError: a key is missing, unexpected (other than `fc.*`) or has the wrong shape.
  """
  sd = {k: v for k, v in state_dict.items() if not k.startswith("fc.")}
  model = resnet.ResNet50(stage_sizes=tuple(stage_sizes))
  target = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 32, 32, 3), jnp.float32))
  return layout.assign(target, layout.torch_to_flax(sd))
