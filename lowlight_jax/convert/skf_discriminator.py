"""SKF discriminator state dicts -> `lowlight_jax.models.skf_discriminator` variables.

Reference code: langmanbusi/Semantic-Aware-Low-Light-Image-Enhancement
`DRBN_SKF/src/model/D_Net.py` (`Discriminator().state_dict()`: `conv0`..`conv9`, `bn2`..`bn8` with
running statistics). The Flax module names its submodules after the torch attributes, so keys map
one-to-one by the naming rule (`lowlight_jax.convert.layout`); every key and shape is checked.
The released trainer never saves D (it is rebuilt every epoch), so such state dicts come from our
own exports or from re-runs of the authors' code.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from lowlight_jax import errors
from lowlight_jax.convert import layout
from lowlight_jax.models import skf_discriminator

_PREFIX = "module."  # nn.DataParallel wrapper


def init_shapes(semantic_channels: int = skf_discriminator.NUM_SEMANTIC_CLASSES) -> Any:
  """`jax.eval_shape` of the discriminator's variables (both stems, all BatchNorm statistics)."""
  model = skf_discriminator.SKFDiscriminator(semantic_channels=semantic_channels)
  return jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 16, 16, 3), jnp.float32))


def convert_skf_discriminator(state_dict: Mapping[str, Any], *,
                              semantic_channels: int = skf_discriminator.NUM_SEMANTIC_CLASSES
                              ) -> dict[str, dict]:
  """Converts the authors' `Discriminator` state dict (torch layout) to Flax variables.

  Args:
    state_dict: torch key -> array; `num_batches_tracked` entries and a `module.` prefix are
      dropped.
    semantic_channels: K of the model the weights are for (`conv0` has 3 + K input channels).

  Returns:
    `{'params': ..., 'batch_stats': ...}` of float32 numpy arrays.

  Raises:
    errors.WeightsError: naming every missing, unexpected or mis-shaped key (e.g. the SNR-SKF
      discriminator, which has no `conv0`).
  """
  sd = {str(k): np.asarray(v) for k, v in state_dict.items()}
  if sd and all(k.startswith(_PREFIX) for k in sd):
    sd = {k[len(_PREFIX):]: v for k, v in sd.items()}
  try:
    return layout.assign(init_shapes(semantic_channels), layout.torch_to_flax(sd))
  except ValueError as e:
    raise errors.WeightsError(f"SKF discriminator weights: {errors.one_line(e)}") from e


def load_skf_discriminator(path: str, **kwargs: Any) -> dict[str, dict]:
  """Reads a `.pth` / `.npz` / `.safetensors` discriminator state dict and converts it."""
  from lowlight_jax.convert import io as convert_io  # pylint: disable=g-import-not-at-top

  return convert_skf_discriminator(convert_io.load_state_dict(path), **kwargs)
