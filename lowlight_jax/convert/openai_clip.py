"""OpenAI CLIP (GEFU `src/CLIP`) image tower and GEFU `ProjModel` state dicts -> Flax variables.

Reference code: wangsen99/GEFU `src/CLIP/model.py::build_model` (a copy of openai/CLIP's) and
`src/adapter.py::ProjModel`. The image tower is the `visual.*` part of an OpenAI CLIP state dict;
the text tower's keys (`transformer.*`, `token_embedding.*`, `ln_final.*`, `positional_embedding`,
`text_projection`, `logit_scale`) are ignored. `models.openai_clip.VisionTransformer` carries the
names below `visual.`, so the keys map by the naming rule (`lowlight_jax.convert.layout`); the raw
parameters `class_embedding`, `positional_embedding`, `proj` and `attn.in_proj_weight/_bias` keep
their torch layout. Released weights are fp16 values; they are widened to float32 exactly.

Files: OpenAI's released `ViT-B-32.pt` (a TorchScript archive; its `state_dict()` is read by
`convert.torchscript` without torch and without running its code), a plain torch state-dict
pickle (`torch.save(model.state_dict())`, read by the safe unpickler of `convert.io`) or an `.npz`
of the same keys.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from lowlight_jax import errors
from lowlight_jax.convert import layout
from lowlight_jax.models import openai_clip

VISUAL_PREFIX = "visual."
REQUIRED_KEY = "visual.conv1.weight"
PROJ_KEYS = ("proj.weight", "proj.bias", "norm.weight", "norm.bias")


def _arrays(obj: Any, source: str) -> dict[str, np.ndarray]:
  if not isinstance(obj, Mapping):
    raise errors.WeightsError(f"{source}: expected a state dict, got {type(obj).__name__}")
  return {str(k): np.asarray(v) for k, v in obj.items()
          if isinstance(v, np.ndarray) or hasattr(v, "shape")}


def _check_openai_layout(sd: Mapping[str, Any], source: str) -> None:
  if REQUIRED_KEY in sd and "visual.proj" in sd:
    return
  if "visual.layer1.0.conv1.weight" in sd:
    raise errors.WeightsError(f"{source}: a ResNet CLIP (visual.layer1...); only ViT CLIP image "
                              "towers are supported (GEFU uses ViT-B/32)")
  hint = ""
  if any(k.startswith(("vision_model.", "text_model.")) for k in sd):
    hint = " (this is a Hugging Face transformers CLIP state dict; use OpenAI's layout)"
  missing = REQUIRED_KEY if REQUIRED_KEY not in sd else "visual.proj"
  raise errors.WeightsError(f"{source}: not an OpenAI CLIP state dict: missing key "
                            f"'{missing}'{hint}")


def infer_clip_config(state_dict: Mapping[str, Any], *, source: str = "state dict"
                      ) -> dict[str, int]:
  """`VisionTransformer` fields as `build_model` infers them from an OpenAI CLIP state dict.

  Returns:
    {'width', 'layers', 'patch_size', 'output_dim', 'input_resolution', 'heads'}: width =
    conv1 out channels, layers = number of `visual.*.attn.in_proj_weight`, patch = conv1 kernel,
    input_resolution = patch * round(sqrt(len(positional_embedding) - 1)), output_dim =
    `visual.proj` columns, heads = width // 64.

  Raises:
    errors.WeightsError: not a ViT OpenAI CLIP state dict (names the missing key), or width < 64.
  """
  _check_openai_layout(state_dict, source)
  conv1 = np.shape(state_dict[REQUIRED_KEY])
  width, patch = int(conv1[0]), int(conv1[-1])
  if "visual.positional_embedding" not in state_dict:
    raise errors.WeightsError(f"{source}: missing key 'visual.positional_embedding'")
  grid = round((np.shape(state_dict["visual.positional_embedding"])[0] - 1) ** 0.5)
  layers = sum(1 for k in state_dict
               if k.startswith(VISUAL_PREFIX) and k.endswith(".attn.in_proj_weight"))
  if width < 64:
    raise errors.WeightsError(f"{source}: vision width {width} < 64 (build_model sets heads = "
                              "width // 64)")
  return dict(width=width, layers=layers, patch_size=patch,
              output_dim=int(np.shape(state_dict["visual.proj"])[1]),
              input_resolution=patch * grid, heads=width // 64)


def _target(model: Any, sample_hw: int) -> Any:
  return jax.eval_shape(model.init, jax.random.key(0),
                        jnp.zeros((1, sample_hw, sample_hw, 3), jnp.float32))


def convert_clip_visual(state_dict: Mapping[str, Any], *, source: str = "state dict"
                        ) -> dict[str, dict]:
  """Converts the `visual.*` entries of an OpenAI CLIP state dict to checked Flax variables.

  Args:
    state_dict: torch key -> array (any float dtype; returned as float32). A DataParallel
      `module.` prefix is stripped.
    source: how to name the input in errors (e.g. its path).

  Returns:
    `{'params': ...}` of float32 numpy arrays for `VisionTransformer(**infer_clip_config(sd))`.

  Raises:
    errors.WeightsError: wrong layout, or missing / unexpected / mis-shaped `visual.*` keys.
  """
  sd = _arrays(state_dict, source)
  if sd and all(k.startswith("module.") for k in sd):
    sd = {k[len("module."):]: v for k, v in sd.items()}
  cfg = infer_clip_config(sd, source=source)
  visual = {k: v for k, v in sd.items() if k.startswith(VISUAL_PREFIX)}
  # Checked under a `visual` level so that errors name the full torch keys.
  target = _target(openai_clip.VisionTransformer(**cfg), cfg["patch_size"])["params"]
  try:
    out = layout.assign({"params": {"visual": target}}, layout.torch_to_flax(visual))
  except ValueError as e:
    raise errors.WeightsError(f"{source}: CLIP image tower: {errors.one_line(e)}") from None
  return {"params": out["params"]["visual"]}


def load_clip_image_encoder(path: str | os.PathLike, *, dtype: Any = jnp.float32,
                            precision: Any = None
                            ) -> tuple[openai_clip.VisionTransformer, dict[str, dict]]:
  """Reads an OpenAI CLIP checkpoint -> (model, variables).

  Accepts OpenAI's released TorchScript `.pt` (what `clip.load` reads with `torch.jit.load`), a
  plain state-dict pickle (`.pt`/`.pth`) or an `.npz`; the format is detected from the content.

  Raises:
    FileNotFoundError: no such file.
    errors.WeightsError: unreadable or unsafe file, or a state dict (TorchScript module) of another
      layout; one line naming the file (and the missing key).
  """
  from lowlight_jax.convert import io as convert_io  # pylint: disable=g-import-not-at-top
  from lowlight_jax.convert import torch_pickle  # pylint: disable=g-import-not-at-top
  from lowlight_jax.convert import torchscript  # pylint: disable=g-import-not-at-top

  source = str(path)
  try:
    if torchscript.is_torchscript(path):
      sd = torchscript.load_state_dict(path)
      source = f"{path} (TorchScript archive)"
    else:
      sd = torch_pickle.extract_state_dict(convert_io.load_checkpoint(path))
  except (FileNotFoundError, IsADirectoryError, PermissionError):
    raise
  except (ValueError, OSError, pickle.UnpicklingError) as e:
    msg = errors.one_line(e)
    raise errors.WeightsError(msg if msg.startswith(f"{path}:") else f"{path}: {msg}") from None
  variables = convert_clip_visual(sd, source=source)
  cfg = openai_clip.config_from_params(variables)
  return openai_clip.VisionTransformer(**cfg, dtype=dtype, precision=precision), variables


def infer_proj_config(state_dict: Mapping[str, Any], *, source: str = "image_proj"
                      ) -> dict[str, int]:
  """`ProjModel` fields from its state dict: cross_dim = len(norm.weight), tokens = rows / dim."""
  missing = [k for k in PROJ_KEYS if k not in state_dict]
  if missing:
    raise errors.WeightsError(f"{source}: not a GEFU ProjModel state dict: missing key "
                              f"'{missing[0]}'")
  d = int(np.shape(state_dict["norm.weight"])[0])
  rows = int(np.shape(state_dict["proj.weight"])[0])
  if d == 0 or rows % d:
    raise errors.WeightsError(f"{source}: proj.weight has {rows} rows, not a multiple of the "
                              f"norm width {d}")
  return dict(cross_attention_dim=d, clip_extra_context_tokens=rows // d)


def convert_proj_model(state_dict: Mapping[str, Any], *, source: str | None = None
                       ) -> tuple[openai_clip.ProjModel, dict[str, dict]]:
  """GEFU checkpoint `image_proj` (or the whole checkpoint dict holding it) -> (model, variables).

  Raises:
    errors.WeightsError: a missing / unexpected / mis-shaped key, named.
  """
  if isinstance(state_dict, Mapping) and isinstance(state_dict.get("image_proj"), Mapping):
    state_dict, source = state_dict["image_proj"], f"{source or 'checkpoint'}['image_proj']"
  source = source or "image_proj"
  sd = _arrays(state_dict, source)
  model = openai_clip.ProjModel(**infer_proj_config(sd, source=source))
  clip_dim = int(np.shape(sd["proj.weight"])[1])
  target = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, clip_dim), jnp.float32))
  try:
    return model, layout.assign(target, layout.torch_to_flax(sd))
  except ValueError as e:
    raise errors.WeightsError(f"{source}: ProjModel: {errors.one_line(e)}") from None
