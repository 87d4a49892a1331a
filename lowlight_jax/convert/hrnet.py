"""HRNet segmentation checkpoints (SKF's semantic prior) -> `lowlight_jax.models.hrnet` variables.

Reference code: langmanbusi/Semantic-Aware-Low-Light-Image-Enhancement
`DRBN_SKF/src/hrseg/hrseg_model.py::create_hrnet`, which loads
`hrnet_w48_pascal_context_cls59_480x480.pth` (the HRNet-Semantic-Segmentation release):

  pretrained_dict = torch.load(path); if 'state_dict' in it: take pretrained_dict['state_dict'];
  keep {k[6:]: v} for keys whose k[6:] is a model key; model_dict.update(...); load_state_dict.

The release stores the training wrapper `FullModel(model, loss)`: the network's keys carry a
`model.` prefix and the criterion's entries a `loss.` prefix (e.g. `loss.criterion.weight`, class
weights, when the dataset has them). Inference never uses the criterion, so `loss.*` entries are
dropped (`DROPPED_PREFIXES`), as are `num_batches_tracked` counters (the naming rule drops them).

Port note: `create_hrnet` is silent about mismatches: checkpoint keys that are not model keys are
discarded and model keys the checkpoint lacks keep their RANDOM init (so a wrong or truncated file
yields a frozen prior of noise). Here every missing, unexpected or mis-shaped key is a
`WeightsError` naming it, and a classifier with the wrong number of classes is reported as such.

Accepted inputs: the release (`{'model.' + key: ...}`, optionally wrapped as `{'state_dict': ...}`
with other top-level entries such as `epoch` / `optimizer`), or a plain `HighResolutionNet` state
dict (keys as in `seg_hrnet.py`); a DataParallel `module.` prefix is stripped in either case. The
submodule names of `models.hrnet.HRNet` are the torch attribute names, so the keys map one-to-one by
the naming rule of docs/CONVENTIONS.md (`lowlight_jax.convert.layout`).
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Mapping
from typing import Any

import numpy as np

from lowlight_jax import errors
from lowlight_jax.convert import layout
from lowlight_jax.models import hrnet

MODEL_PREFIX = "model."
#: Checkpoint entries dropped on purpose: `FullModel.loss` (the training criterion; inference never
#: uses it). Any other non-`model.` entry of a prefixed checkpoint is an error.
DROPPED_PREFIXES = ("loss.",)
_DP_PREFIX = "module."
#: The classifier conv whose output count is the number of classes.
CLASSIFIER_KEY = "last_layer.3.weight"


def _is_array(v: Any) -> bool:
  return isinstance(v, np.ndarray) or (hasattr(v, "shape") and hasattr(v, "dtype"))


def unwrap_checkpoint(obj: Any, *, source: str = "checkpoint") -> dict[str, np.ndarray]:
  """The plain `HighResolutionNet` state dict inside a release checkpoint or a plain state dict.

  Args:
    obj: the loaded file (`convert.io.load_checkpoint`): `{'state_dict': {...}}`, a flat dict of
      `model.`-prefixed (+ `loss.*`) keys, or a plain state dict.
    source: how to name the input in errors (e.g. its path).

  Returns:
    torch key -> numpy array, keys without `model.` / `module.`, `loss.*` dropped.

  Raises:
    WeightsError: not a mapping, no tensors, or a prefixed checkpoint with entries that are neither
      `model.*` nor a dropped prefix (named).
  """
  if not isinstance(obj, Mapping):
    raise errors.WeightsError(f"{source}: expected a state dict or checkpoint mapping, got "
                              f"{type(obj).__name__}")
  if "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
    obj = obj["state_dict"]
  sd = {str(k): np.asarray(v) for k, v in obj.items() if _is_array(v)}
  if not sd:
    raise errors.WeightsError(f"{source}: no tensors found (top-level keys {list(obj)[:10]})")
  if all(k.startswith(_DP_PREFIX) for k in sd):
    sd = {k[len(_DP_PREFIX):]: v for k, v in sd.items()}
  if not any(k.startswith(MODEL_PREFIX) for k in sd):
    return sd
  out, stray = {}, []
  for k, v in sd.items():
    if k.startswith(MODEL_PREFIX):
      out[k[len(MODEL_PREFIX):]] = v
    elif not k.startswith(DROPPED_PREFIXES):
      stray.append(k)
  if stray:
    raise errors.WeightsError(
        f"{source}: a '{MODEL_PREFIX}'-prefixed HRNet checkpoint also holds entries that are "
        f"neither '{MODEL_PREFIX}*' nor dropped ({', '.join(DROPPED_PREFIXES)}*): "
        f"{', '.join(sorted(stray)[:10])}")
  return out


def _target_classes(target_variables: Mapping[str, Any]) -> int | None:
  try:
    return int(target_variables["params"]["last_layer"]["3"]["kernel"].shape[-1])
  except (KeyError, TypeError, AttributeError, IndexError):
    return None


def convert_hrnet(checkpoint: Any, config: hrnet.HRNetConfig | None = None, *,
                  target_variables: Mapping[str, Any] | None = None,
                  source: str = "checkpoint") -> dict[str, dict]:
  """Converts an HRNet checkpoint (release or plain state dict) to checked Flax variables.

  Args:
    checkpoint: see `unwrap_checkpoint`.
    config: `models.hrnet.HRNetConfig` of the target (default: `HRNET_W48_PASCAL_CONTEXT`, unless
      `target_variables` is given).
    target_variables: the model's `init` output or its `jax.eval_shape` (e.g. a trainer's abstract
      subtree); default: `models.hrnet.abstract_variables(config)`. Dtypes follow it.
    source: how to name the input in errors.

  Returns:
    `{'params': ..., 'batch_stats': ...}` of numpy arrays.

  Raises:
    WeightsError: the classifier's class count differs from the model's, there are no BatchNorm
      running statistics, or keys are missing / unexpected / mis-shaped (each named).
  """
  if target_variables is None:
    config = hrnet.HRNET_W48_PASCAL_CONTEXT if config is None else config
    target_variables = hrnet.abstract_variables(config)
  sd = unwrap_checkpoint(checkpoint, source=source)
  classes = config.num_classes if config is not None else _target_classes(target_variables)
  if CLASSIFIER_KEY in sd and classes is not None and sd[CLASSIFIER_KEY].shape[0] != classes:
    raise errors.WeightsError(
        f"{source}: classifier {CLASSIFIER_KEY} has {sd[CLASSIFIER_KEY].shape[0]} classes, the "
        f"model {classes}")
  try:
    converted = layout.torch_to_flax(sd)
  except ValueError as e:
    raise errors.WeightsError(f"{source}: {errors.one_line(e)}") from None
  if "batch_stats" not in converted:
    raise errors.WeightsError(f"{source}: no BatchNorm running statistics (running_mean/"
                              "running_var); the frozen HRNet needs them")
  try:
    return layout.assign(target_variables, converted)
  except ValueError as e:
    raise errors.WeightsError(f"{source}: {errors.one_line(e)}") from None


def load_hrnet(path: str | os.PathLike, config: hrnet.HRNetConfig | None = None, *,
               target_variables: Mapping[str, Any] | None = None) -> dict[str, dict]:
  """Reads a `.pth` (safe unpickler, no torch) / `.npz` / `.safetensors` HRNet file and converts it (or a
  converted `skf_hrnet` file written by `launch.convert_weights`, checked against the model).

  Raises:
    FileNotFoundError: no such file.
    WeightsError: unreadable format or contents that do not fit (see `convert_hrnet`), naming the
      file.
  """
  from lowlight_jax.convert import io as convert_io  # pylint: disable=g-import-not-at-top
  from lowlight_jax.convert import weights as convert_weights  # pylint: disable=g-import-not-at-top

  if os.path.isfile(path) and convert_weights.is_converted_file(path):  # `launch.convert_weights` output.
    if target_variables is None:
      target_variables = hrnet.abstract_variables(hrnet.HRNET_W48_PASCAL_CONTEXT if config is None else config)
    return convert_weights.load_converted(path, "skf_hrnet", target_variables)
  try:
    checkpoint = convert_io.load_checkpoint(path)
  except (FileNotFoundError, IsADirectoryError, PermissionError):
    raise
  except (ValueError, OSError, pickle.UnpicklingError) as e:
    raise errors.WeightsError(f"{path}: {errors.one_line(e)}") from e
  return convert_hrnet(checkpoint, config, target_variables=target_variables, source=str(path))
