"""SKF checkpoints (DRBN-SKF, SNR-SKF) -> checked Flax variables of `models.drbn` / `models.snr`.

Reference code: langmanbusi/Semantic-Aware-Low-Light-Image-Enhancement.
- DRBN-SKF: `model_lol.pt` / `model_lol_v2.pt` are bare `DRBN.state_dict()`s (`Model.save` unwraps
  DataParallel first), loaded in `DRBN_SKF/src/main_test.py` by
  `my_model.model.load_state_dict(torch.load(path))` (strict). Keys `recur{1..4}.*`; the SE blocks
  are `recur4.fuseblk_{1,2,3}.*`. 599,132 parameters, no buffers.
- SNR-SKF: `SNR_SKF_LOL.pth` / `SNR_SKF_LOLv2.pth` are bare `netG.state_dict()`s
  (`BaseModel.save_network`), loaded by `BaseModel.load_network`, which strips a `module.` prefix
  key by key. Keys `conv_first_1.*`, ..., `att_block_{1,2,3}.*`, `transformer.layer_stack.{i}.*`
  (6 layers as released: `snr_transformer_depth` reads the depth from the keys).

Plain state dicts, torch files with the common wrappers (`state_dict`, `model`, `params`, ...) and
npz/safetensors files work too. Keys map by the naming rule of `convert.layout`; torch
ConvTranspose weights (in, out, kh, kw) become (kh, kw, out, in), the layout of the model's
`nn.ConvTranspose(transpose_kernel=True)`, with no special case.

Every mismatch is a `lowlight_jax.errors.WeightsError` on one line that names the first mismatching
keys (e.g. SNR weights given to DRBN, or SKF weights given to a baseline).
"""

from __future__ import annotations

import pickle
import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from lowlight_jax import errors
from lowlight_jax.convert import layout
from lowlight_jax.convert import torch_pickle

_SHOWN = 4  # how many keys an error names per kind

DRBN_TOP_LEVEL = ("recur1", "recur2", "recur3", "recur4")
SNR_TOP_LEVEL = ("conv_first_1", "conv_first_2", "conv_first_3", "feature_extraction",
                 "recon_trunk", "recon_trunk_light", "transformer", "upconv1", "upconv2", "HRconv",
                 "conv_last", "att_block_1", "att_block_2", "att_block_3")
_NETWORKS = {"DRBN": DRBN_TOP_LEVEL, "SNR": SNR_TOP_LEVEL}


def unwrap_checkpoint(obj: Any) -> dict[str, np.ndarray]:
  """The flat state dict in a loaded checkpoint: wrappers unwrapped, `module.` stripped per key."""
  try:
    sd = torch_pickle.extract_state_dict(obj)
  except (ValueError, TypeError, KeyError) as e:
    raise errors.WeightsError(f"no state dict in the checkpoint: {errors.one_line(e)}") from e
  out = {}
  for k, v in sd.items():
    if not hasattr(v, "shape"):
      continue
    k = str(k)
    out[k[len("module."):] if k.startswith("module.") else k] = np.asarray(v)
  if not out:
    raise errors.WeightsError("no tensors in the checkpoint")
  return out


def _guess_network(state_dict: Mapping[str, Any]) -> str | None:
  tops = {k.split(".")[0] for k in state_dict}
  for name, expected in _NETWORKS.items():
    if tops <= set(expected) and tops:
      return name
  return None


def _describe(state_dict: Mapping[str, Any]) -> str:
  guess = _guess_network(state_dict)
  if guess is None:
    return "an unknown network"
  skf = has_se_blocks(state_dict)
  if guess == "SNR":
    depth = snr_transformer_depth(state_dict)
    return f"SNR{'-SKF' if skf else ''} ({depth} transformer layer{'' if depth == 1 else 's'})"
  return f"DRBN{'-SKF' if skf else ''}"


def snr_transformer_depth(state_dict: Mapping[str, Any]) -> int:
  """Number of `transformer.layer_stack.{i}` layers in an SNR state dict (6 in the release)."""
  pattern = re.compile(r"^(?:module\.)?transformer\.layer_stack\.(\d+)\.")
  found = {int(m.group(1)) for k in state_dict if (m := pattern.match(k))}
  return max(found) + 1 if found else 0


def has_se_blocks(state_dict: Mapping[str, Any]) -> bool:
  """Whether a DRBN/SNR state dict holds SKF's SE blocks (else it is a baseline checkpoint)."""
  keys = (k[len("module."):] if k.startswith("module.") else k for k in state_dict)
  return any(".fuseblk_" in k or k.startswith("att_block_") for k in keys)


def _first(names: list[str]) -> str:
  shown = ", ".join(names[:_SHOWN])
  return shown + (f", ... ({len(names)} in all)" if len(names) > _SHOWN else "")


def _check(network: str, state_dict: Mapping[str, np.ndarray], converted: Mapping[str, Any],
           target_variables: Mapping[str, Any] | None) -> None:
  """Raises a one-line WeightsError naming the first mismatching keys (torch names)."""
  expected_top = _NETWORKS[network]
  stray = [k for k in state_dict if k.split(".")[0] not in expected_top]
  problems = []
  if target_variables is None:
    if stray:
      problems.append(f"unexpected keys {_first(stray)}")
  else:
    collections = [c for c in ("params", "batch_stats") if c in target_variables]
    flat_t = {(c,) + p: v for c in collections for p, v in layout.flatten(target_variables[c]).items()}
    flat_c = {(c,) + p: v for c in converted for p, v in layout.flatten(converted[c]).items()}

    def name(k):
      return layout.flax_path_to_torch_key(k[0], k[1:])

    unexpected = [name(k) for k in flat_c if k not in flat_t]
    missing = [name(k) for k in flat_t if k not in flat_c]
    mis_shaped = [f"{name(k)} {tuple(np.shape(flat_c[k]))} vs model {tuple(flat_t[k].shape)}"
                  for k in flat_t if k in flat_c
                  and tuple(np.shape(flat_c[k])) != tuple(flat_t[k].shape)]
    if unexpected:
      problems.append(f"unexpected keys {_first(unexpected)}")
    if missing:
      problems.append(f"missing keys {_first(missing)}")
    if mis_shaped:
      problems.append(f"shape mismatch (flax layout) {_first(mis_shaped)}")
  if problems:
    raise errors.WeightsError(f"{network} weights: the checkpoint looks like "
                              f"{_describe(state_dict)} and does not fit: {'; '.join(problems)}")


def _convert(network: str, state_dict: Any, target_variables: Mapping[str, Any] | None
             ) -> dict[str, dict]:
  sd = unwrap_checkpoint(state_dict)
  converted = layout.torch_to_flax(sd)
  _check(network, sd, converted, target_variables)
  if target_variables is None:
    return converted
  try:
    return layout.assign(target_variables, converted)
  except ValueError as e:  # unreachable after _check; kept one-line for safety
    raise errors.WeightsError(errors.one_line(e)) from e


def convert_drbn(state_dict: Any, target_variables: Mapping[str, Any] | None = None
                 ) -> dict[str, dict]:
  """DRBN(-SKF) state dict or checkpoint -> `{'params': ...}` for `models.drbn.DRBN`.

  Args:
    state_dict: torch key -> array (torch layout), or a loaded checkpoint holding one.
    target_variables: the model's `init` output or its `jax.eval_shape`; when given, every key and
      shape is checked (use `DRBN(skf=False)` for baseline weights) and dtypes follow the target.

  Raises:
    errors.WeightsError: one line naming the first mismatching keys.
  """
  return _convert("DRBN", state_dict, target_variables)


def convert_snr(state_dict: Any, target_variables: Mapping[str, Any] | None = None
                ) -> dict[str, dict]:
  """SNR(-SKF) state dict or checkpoint -> `{'params': ...}` for `models.snr.SNRNet`.

  Build the target with `n_layers=snr_transformer_depth(state_dict)` (6 for the released weights).

  Raises:
    errors.WeightsError: one line naming the first mismatching keys.
  """
  return _convert("SNR", state_dict, target_variables)


def _load(network: str, kind: str, path: str, target_variables: Mapping[str, Any] | None) -> dict[str, dict]:
  from lowlight_jax.convert import io as convert_io  # pylint: disable=g-import-not-at-top
  from lowlight_jax.convert import weights as convert_weights  # pylint: disable=g-import-not-at-top

  if convert_weights.is_converted_file(path):  # Written by `launch.convert_weights --method <kind>`.
    if target_variables is None:
      raise errors.WeightsError(f"{path}: a converted file is checked against the model; give target_variables")
    return convert_weights.load_converted(path, kind, target_variables)
  try:
    checkpoint = convert_io.load_checkpoint(path)
  except (FileNotFoundError, IsADirectoryError, PermissionError):
    raise
  except (ValueError, OSError, EOFError, pickle.UnpicklingError) as e:
    raise errors.WeightsError(f"{path}: {errors.one_line(e)}") from e
  try:
    return _convert(network, checkpoint, target_variables)
  except errors.WeightsError as e:
    raise errors.WeightsError(f"{path}: {e}") from None


def load_drbn(path: str, target_variables: Mapping[str, Any] | None = None) -> dict[str, dict]:
  """Reads a DRBN(-SKF) `.pt`/`.pth`/`.npz`/`.safetensors` file (never executes pickled code), or a converted
  `skf_drbn` file; errors name the file."""
  return _load("DRBN", "skf_drbn", path, target_variables)


def load_snr(path: str, target_variables: Mapping[str, Any] | None = None) -> dict[str, dict]:
  """Reads an SNR(-SKF) `.pth`/`.npz`/`.safetensors` file (never executes pickled code), or a converted
  `skf_snr` file; errors name the file."""
  return _load("SNR", "skf_snr", path, target_variables)


def released_state_dict(path: str) -> dict[str, np.ndarray]:
  """The flat state dict of a released DRBN/SNR(-SKF) checkpoint (to read its SE blocks and depth)."""
  from lowlight_jax.convert import io as convert_io  # pylint: disable=g-import-not-at-top

  try:
    return unwrap_checkpoint(convert_io.load_checkpoint(path))
  except (FileNotFoundError, IsADirectoryError, PermissionError):
    raise
  except (ValueError, OSError, EOFError, pickle.UnpicklingError) as e:
    raise errors.WeightsError(f"{path}: {errors.one_line(e)}") from e


def released_info(network: str, path: str, state_dict: Mapping[str, Any] | None = None) -> dict[str, Any]:
  """What a released DRBN(-SKF) / SNR(-SKF) checkpoint's own keys say: {'skf': SE blocks present, 'n_layers': SNR
  transformer depth (SNR only)}. Raises WeightsError naming the file when it holds another network."""
  from lowlight_jax.convert import weights as convert_weights  # pylint: disable=g-import-not-at-top

  if state_dict is None and convert_weights.is_converted_file(path):
    kind = {"DRBN": "skf_drbn", "SNR": "skf_snr"}[network]
    variables, meta = convert_weights.load_params(path)
    if meta.get("method") != kind:
      raise errors.WeightsError(f"{path} holds converted {meta.get('method')!r} weights, not {kind!r}")
    params = variables.get("params", {})
    info = {"skf": any(k.startswith("att_block_") for k in params) or "fuseblk_1" in params.get("recur4", {})}
    if network == "SNR":
      info["n_layers"] = len(params.get("transformer", {}).get("layer_stack", {}))
    return info
  sd = released_state_dict(path) if state_dict is None else state_dict
  if _guess_network(sd) != network:
    raise errors.WeightsError(f"{path}: expected {network}(-SKF) weights, the checkpoint looks like {_describe(sd)}")
  info = {"skf": has_se_blocks(sd)}
  if network == "SNR":
    info["n_layers"] = snr_transformer_depth(sd)
  return info


def network_variables(network: str, path: str) -> tuple[dict[str, dict], dict[str, Any]]:
  """Converts a released DRBN(-SKF) / SNR(-SKF) checkpoint onto the network its own keys describe.

  Returns (variables, `released_info`). Raises WeightsError naming the file when it holds another network or
  does not fit.
  """
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from lowlight_jax.models import skf_se  # pylint: disable=g-import-not-at-top

  sd = released_state_dict(path)
  info = released_info(network, path, sd)
  x = jnp.zeros((1, 32, 32, 3))
  semantics = skf_se.zero_semantics(x)
  if network == "DRBN":
    from lowlight_jax.models import drbn  # pylint: disable=g-import-not-at-top
    model = drbn.DRBN(skf=info["skf"])
    target = jax.eval_shape(lambda: model.init(jax.random.key(0), x,
                                               segment=(lambda _: semantics) if info["skf"] else None))
  else:
    from lowlight_jax.models import snr  # pylint: disable=g-import-not-at-top
    model = snr.SNRNet(skf=info["skf"], n_layers=info["n_layers"])
    target = jax.eval_shape(lambda: model.init(jax.random.key(0), x, x[..., :1],
                                               semantics[1] if info["skf"] else None))
  try:
    return _convert(network, sd, target), info
  except errors.WeightsError as e:
    raise errors.WeightsError(f"{path}: {e}") from None
