"""VainF DeepLabV3Plus-Pytorch checkpoints -> `lowlight_jax.models.deeplabv3plus` variables.

Reference code: VainF/DeepLabV3Plus-Pytorch `main.py::save_ckpt`, which stores
`{'cur_itrs', 'model_state', 'optimizer_state', 'scheduler_state', 'best_score'}`; `model_state` is
the state dict of the (DataParallel-unwrapped) network, e.g.
`best_deeplabv3plus_mobilenet_cityscapes_os16.pth`, the checkpoint SCL-LLE's train.py loads
(`--ckpt`). The Flax module names its submodules after the torch attributes, so the keys map
one-to-one by the naming rule (`lowlight_jax.convert.layout`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from lowlight_jax.convert import layout

_PREFIXES = ("module.",)  # nn.DataParallel wrappers.
_TOP_LEVEL = ("backbone", "classifier")


def unwrap_checkpoint(obj: Any) -> dict[str, np.ndarray]:
  """The flat state dict inside a VainF checkpoint (`{'model_state': ...}`) or a bare state dict.

  Also accepts the common `state_dict` / `model` wrappers and strips a `module.` prefix. Non-array
  entries (optimizer state, iteration counters) are never part of the result.
  """
  if not isinstance(obj, Mapping):
    raise ValueError(f"expected a mapping (state dict or checkpoint), got {type(obj).__name__}")
  for key in ("model_state", "state_dict", "model"):
    if key in obj and isinstance(obj[key], Mapping):
      obj = obj[key]
      break
  out = {str(k): np.asarray(v) for k, v in obj.items()
         if hasattr(v, "shape") or isinstance(v, np.ndarray)}
  if not out:
    raise ValueError(f"no tensors found in checkpoint keys {list(obj)[:10]}")
  for prefix in _PREFIXES:
    if all(k.startswith(prefix) for k in out):
      out = {k[len(prefix):]: v for k, v in out.items()}
  unknown = sorted({k.split(".")[0] for k in out} - set(_TOP_LEVEL))
  if unknown:
    raise ValueError(f"not a DeepLabV3+ state dict: unexpected top-level modules {unknown} "
                     f"(expected {_TOP_LEVEL})")
  return out


def convert_deeplabv3plus(state_dict: Mapping[str, Any],
                          target_variables: Mapping[str, Any] | None = None) -> dict[str, dict]:
  """Converts a DeepLabV3+ (MobileNetV2) state dict or VainF checkpoint to Flax variables.

  Args:
    state_dict: torch key -> array (torch layout), or a VainF checkpoint dict holding it under
      `model_state`. `num_batches_tracked` entries are dropped.
    target_variables: optional `init` (or `jax.eval_shape`) output of `DeepLabV3PlusMobileNet`; when
      given, every key and shape is checked (errors name the torch keys) and dtypes follow the
      target.

  Returns:
    `{'params': ..., 'batch_stats': ...}` of numpy arrays.
  """
  converted = layout.torch_to_flax(unwrap_checkpoint(state_dict))
  if "batch_stats" not in converted:
    raise ValueError(
        "the state dict holds no BatchNorm running statistics; the frozen network needs them")
  if target_variables is not None:
    converted = layout.assign(target_variables, converted)
  return converted


def load_deeplabv3plus(path: str,
                       target_variables: Mapping[str, Any] | None = None) -> dict[str, dict]:
  """Reads a `.pth` / `.npz` / `.safetensors` DeepLabV3+ checkpoint and converts it."""
  from lowlight_jax.convert import io as convert_io  # pylint: disable=g-import-not-at-top

  return convert_deeplabv3plus(convert_io.load_checkpoint(path), target_variables)
