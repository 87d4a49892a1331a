"""SD-Turbo (any SD-2.x-shaped diffusers folder) -> diffusers' / transformers' Flax modules and their params.

The folder is what `StableDiffusionPipeline.save_pretrained` / a hub snapshot of `stabilityai/sd-turbo` holds:

  unet/          config.json + diffusion_pytorch_model.safetensors (or .bin)  -> UNet2DConditionModel
  vae/           config.json + diffusion_pytorch_model.safetensors (or .bin)  -> FlaxAutoencoderKL
  text_encoder/  config.json + model.safetensors (or pytorch_model.bin)       -> CLIPTextEncoder
  tokenizer/     vocab.json, merges.txt, tokenizer_config.json, ...           -> transformers CLIPTokenizer
  scheduler/     scheduler_config.json                                        -> a plain dict

A sharded checkpoint (`<name>.index.json` beside its shards) and a `variant` (`diffusion_pytorch_model.fp16
.safetensors`) are read as well. `.bin` files go through our safe unpickler (`convert.io`), so neither torch
nor safetensors' torch bindings are needed. Modules come from `lowlight_jax.models.sd_compat` (the shims for
the last diffusers / transformers releases with Flax models: see there); the UNet is its
`UNet2DConditionModel`, which computes as PyTorch's (group norms, exact-GELU GEGLU, `upsample_size`).

Conversion never random-initialises: the target tree is `jax.eval_shape` of the module's init, PyTorch keys
are renamed with diffusers' (UNet, VAE) / transformers' (CLIP text) own PyTorch->Flax rules, and every target
entry must be filled exactly once with the right shape, and every checkpoint tensor used, else a one-line
`WeightsError` names the folder and the first missing / unexpected / mis-shaped key.

Params are returned as nested dicts of host numpy arrays (`dtype` for floating values), nothing is put on
a device: pass them to `jax.device_put(params, shardings)` (or use them directly; jax copies them to the
default device on first use). `dtype` is also the modules' computation dtype.

Every loader takes the pipeline folder and a `subfolder` (default the standard name; `subfolder=None` reads
`folder` itself as the component folder), so a caller loads only what it needs:

  unet = sd_turbo.load_unet(path)                       # Component(module, params, config, path)
  eps = unet.module.apply({"params": unet.params}, latents_nchw, 999, context).sample
  te = sd_turbo.load_text_encoder(path)
  emb = te.module.apply({"params": te.params}, input_ids).last_hidden_state
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import pathlib
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from lowlight_jax import errors
from lowlight_jax.convert import io as convert_io
from lowlight_jax.models import sd_compat

PathLike = str | os.PathLike

UNET_WEIGHTS = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")
VAE_WEIGHTS = UNET_WEIGHTS
TEXT_ENCODER_WEIGHTS = ("model.safetensors", "pytorch_model.bin")
TOKENIZER_FILES = ("vocab.json", "merges.txt")
PIPELINE_HINT = "a diffusers-format folder with unet/, vae/, text_encoder/, tokenizer/ and scheduler/"

# PyTorch-only config keys of UNet2DConditionModel and the values diffusers' Flax UNet implements (the Flax UNet's
# own fields pass through; `norm_num_groups` / `norm_eps` are fields of sd_compat's subclass). `upcast_attention`
# only changes reduced-precision runs: Flax attention never upcasts, which is the same computation in float32.
_UNET_PYTORCH_ONLY = {
    "act_fn": ("silu", "swish"), "attention_type": ("default",), "center_input_sample": (False,),
    "class_embed_type": (None,), "class_embeddings_concat": (False,), "conv_in_kernel": (3,),
    "conv_out_kernel": (3,), "cross_attention_norm": (None,), "downsample_padding": (1,),
    "dual_cross_attention": (False,), "encoder_hid_dim": (None,), "encoder_hid_dim_type": (None,),
    "mid_block_only_cross_attention": (None, False), "mid_block_scale_factor": (1,), "num_class_embeds": (None,),
    "resnet_out_scale_factor": (1.0,), "resnet_skip_time_act": (False,), "resnet_time_scale_shift": ("default",),
    "reverse_transformer_layers_per_block": (None,), "time_cond_proj_dim": (None,), "time_embedding_act_fn": (None,),
    "time_embedding_dim": (None,), "time_embedding_type": ("positional",), "timestep_post_act": (None,),
    "upcast_attention": (None, False, True),
}
# The same for AutoencoderKL; `None` = any value (pipeline-level settings the module does not use).
_VAE_PYTORCH_ONLY = {
    "force_upcast": None, "latents_mean": None, "latents_std": None, "shift_factor": None,
    "use_quant_conv": (True,), "use_post_quant_conv": (True,), "mid_block_add_attention": (True,),
}
_VAE_FLAX_FIXED = {"act_fn": ("silu", "swish")}  # a Flax field, but the Flax VAE always uses swish
# Buffers PyTorch may save that are not parameters.
_TEXT_ENCODER_BUFFERS = ("text_model.embeddings.position_ids",)


@dataclasses.dataclass(frozen=True)
class Component:
  """One loaded model: the Flax module, its params (nested dict of host numpy arrays) and config.json."""
  module: Any
  params: dict[str, Any]
  config: dict[str, Any]
  path: pathlib.Path


@dataclasses.dataclass(frozen=True)
class SDTurbo:
  """Everything `load_sd_turbo` reads; `scheduler_config` is scheduler/scheduler_config.json as a dict."""
  unet: Component
  vae: Component
  text_encoder: Component
  tokenizer: Any
  scheduler_config: dict[str, Any]


# ---------------------------------------------------------------------------------------------- files


def _component_dir(folder: PathLike, subfolder: str | None) -> pathlib.Path:
  root = pathlib.Path(folder)
  if not root.exists():
    raise FileNotFoundError(f"SD-Turbo folder not found: {root}")
  if not root.is_dir():
    raise NotADirectoryError(f"SD-Turbo folder is not a directory: {root} (expected {PIPELINE_HINT})")
  path = root / subfolder if subfolder else root
  if not path.is_dir():
    raise FileNotFoundError(f"{root}: no {subfolder}/ subfolder (expected {PIPELINE_HINT})")
  return path


def _read_json(path: pathlib.Path) -> dict[str, Any]:
  if not path.is_file():
    raise FileNotFoundError(f"{path} not found")
  try:
    data = json.loads(path.read_text(encoding="utf-8"))
  except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
    raise errors.ConfigError(f"{path}: not a readable JSON file: {errors.one_line(e)}") from None
  if not isinstance(data, dict):
    raise errors.ConfigError(f"{path}: expected a JSON object, got {type(data).__name__}")
  return data


def _weights_file(path: pathlib.Path, names: tuple[str, ...], variant: str | None) -> pathlib.Path:
  """The first of `names` (with `variant` inserted before the suffix) present, or its sharded `.index.json`."""
  candidates = []
  for name in names:
    stem, suffix = name.rsplit(".", 1)
    candidates.append(f"{stem}.{variant}.{suffix}" if variant else name)
  for name in candidates:
    for candidate in (path / name, path / f"{name}.index.json"):
      if candidate.is_file():
        return candidate
  raise FileNotFoundError(f"{path}: no weights file (looked for {', '.join(candidates)} and their .index.json)")


def _read_one(path: pathlib.Path) -> dict[str, np.ndarray]:
  try:
    if path.suffix == ".safetensors":
      return convert_io.load_safetensors(path)[0]
    return convert_io.load_state_dict(path)
  except errors.UserError:
    raise
  except (OSError, ValueError, KeyError, EOFError) as e:  # also the unpickler's UnsafeCheckpointError
    raise errors.WeightsError(f"{path}: {errors.one_line(e)}") from None
  except Exception as e:  # noqa: BLE001 - a corrupt pickle can raise anything; name the file
    raise errors.WeightsError(f"{path}: unreadable checkpoint ({type(e).__name__}: {errors.one_line(e)})") from None


def read_state_dict(path: PathLike) -> dict[str, np.ndarray]:
  """A PyTorch state dict as numpy arrays from a `.safetensors` / `.bin` file or a sharded `.index.json`."""
  path = pathlib.Path(path)
  if not path.name.endswith(".index.json"):
    return _read_one(path)
  index = _read_json(path)
  weight_map = index.get("weight_map")
  if not isinstance(weight_map, dict) or not weight_map:
    raise errors.WeightsError(f"{path}: no 'weight_map' in the shard index")
  state_dict: dict[str, np.ndarray] = {}
  for shard in dict.fromkeys(weight_map.values()):
    shard_path = path.parent / shard
    if not shard_path.is_file():
      raise FileNotFoundError(f"{shard_path} not found (a shard named in {path})")
    state_dict.update(_read_one(shard_path))
  missing = [k for k in weight_map if k not in state_dict]
  if missing:
    raise errors.WeightsError(f"{path}: key {missing[0]!r} is not in its shard {weight_map[missing[0]]}")
  return state_dict


# ----------------------------------------------------------------------------------------- conversion


def _cast(value: np.ndarray, dtype) -> np.ndarray:
  value = np.asarray(value)
  if np.issubdtype(value.dtype, np.floating) or value.dtype == jnp.bfloat16:
    value = value.astype(jnp.dtype(dtype), copy=False)
  return np.ascontiguousarray(value)


def convert_state_dict(state_dict: Mapping[str, np.ndarray], target: Mapping[str, Any],
                       rename: Callable[[str, np.ndarray, dict], tuple[tuple[str, ...], np.ndarray]], *,
                       source: PathLike, dtype=jnp.float32, ignore: tuple[str, ...] = ()) -> dict[str, Any]:
  """Fills the (abstract) Flax param tree `target` from a PyTorch state dict, checking it entry by entry.

  `rename(torch_key, tensor, flat_target)` -> (Flax path, tensor in Flax layout). Keys in `ignore` (buffers)
  are skipped. Raises WeightsError naming `source` and the first unexpected, duplicated, mis-shaped or
  missing key.
  """
  flat_target = traverse_util.flatten_dict(dict(target))
  filled: dict[tuple[str, ...], np.ndarray] = {}
  origin: dict[tuple[str, ...], str] = {}
  for key, tensor in state_dict.items():
    if key in ignore:
      continue
    try:
      path, value = rename(key, np.asarray(tensor), flat_target)
    except AssertionError:  # diffusers' rule asserts the attention shapes
      raise errors.WeightsError(f"{source}: checkpoint key {key!r} has shape {tuple(np.shape(tensor))}, which does "
                                "not fit the model") from None
    if path not in flat_target:
      raise errors.WeightsError(f"{source}: unexpected checkpoint key {key!r} (-> {'.'.join(path)}, not in the "
                                "model built from config.json)")
    if path in filled:
      raise errors.WeightsError(f"{source}: checkpoint keys {origin[path]!r} and {key!r} both map to "
                                f"{'.'.join(path)}")
    want = tuple(flat_target[path].shape)
    if tuple(value.shape) != want:
      raise errors.WeightsError(f"{source}: checkpoint key {key!r} has shape {tuple(np.shape(tensor))}, the model "
                                f"expects {want} at {'.'.join(path)}")
    filled[path] = _cast(value, dtype)
    origin[path] = key
  missing = [path for path in flat_target if path not in filled]
  if missing:
    raise errors.WeightsError(f"{source}: missing key for {'.'.join(missing[0])} ({len(missing)} of "
                              f"{len(flat_target)} model params have no checkpoint tensor)")
  return traverse_util.unflatten_dict(filled)


def _diffusers_rename(key: str, tensor: np.ndarray, flat_target: dict) -> tuple[tuple[str, ...], np.ndarray]:
  d = sd_compat.diffusers_flax()
  return d.rename_key_and_reshape_tensor(tuple(d.rename_key(key).split(".")), tensor, flat_target)


def _transformers_rename(key: str, tensor: np.ndarray, flat_target: dict) -> tuple[tuple[str, ...], np.ndarray]:
  t = sd_compat.transformers_flax()
  return t.rename_key_and_reshape_tensor(tuple(key.split(".")), tensor, flat_target, "text_model")


def _module_kwargs(config: Mapping[str, Any], fields: set[str], pytorch_only: Mapping[str, Any],
                   config_path: pathlib.Path, model: str) -> dict[str, Any]:
  """config.json -> the Flax module's keyword arguments; PyTorch-only keys must hold a value Flax implements."""
  kwargs = {}
  for key, value in config.items():
    if key.startswith("_"):
      continue
    if key in pytorch_only:
      allowed = pytorch_only[key]
      if allowed is not None and value not in allowed:
        raise errors.ConfigError(f"{config_path}: {key}={value!r} is not implemented by the Flax {model} "
                                 f"(supported: {', '.join(map(repr, allowed))})")
    elif key in fields:
      kwargs[key] = tuple(value) if isinstance(value, list) else value
    else:
      raise errors.ConfigError(f"{config_path}: config key {key!r} is not known to the Flax {model}")
  return kwargs


def _flax_fields(cls) -> set[str]:
  return {f.name for f in dataclasses.fields(cls)} - {"parent", "name", "dtype"}


def _check_class(config: Mapping[str, Any], expected: tuple[str, ...], config_path: pathlib.Path) -> None:
  name = config.get("_class_name")
  if name is not None and name not in expected:
    raise errors.ConfigError(f"{config_path}: _class_name is {name!r}, expected {' or '.join(expected)}")


# ------------------------------------------------------------------------------------------- loaders


@dataclasses.dataclass(frozen=True)
class ComponentSpec:
  """A component's Flax module and abstract params, built from config.json alone (no weights are read).

  `target` is `jax.eval_shape` of the module's init (ShapeDtypeStructs); `weights` the file `load()` converts
  (None when the folder has no weights, e.g. a config-only spec); `rename` the PyTorch->Flax key rule.
  """
  module: Any
  target: Any
  config: dict[str, Any]
  path: pathlib.Path | None
  weights: pathlib.Path | None
  rename: Callable[..., Any]
  ignore: tuple[str, ...] = ()

  def convert(self, state_dict: Mapping[str, np.ndarray], target: Any = None, *, dtype=jnp.float32
              ) -> dict[str, Any]:
    """A PyTorch-named state dict -> params of `target` (default: the full abstract tree), strictly."""
    return convert_state_dict(state_dict, self.target if target is None else target, self.rename,
                              source=self.weights or "state dict", dtype=dtype, ignore=self.ignore)

  def load(self, *, dtype=jnp.float32) -> dict[str, Any]:
    """The params from `weights` (host numpy arrays)."""
    if self.weights is None:
      raise FileNotFoundError(f"{self.path}: no weights file")
    return self.convert(read_state_dict(self.weights), dtype=dtype)


def unet_module(config: Mapping[str, Any], *, dtype=jnp.float32, config_path: PathLike = "unet/config.json",
                **module_kwargs: Any) -> Any:
  """The Flax UNet (`sd_compat`'s UNet2DConditionModel) for a unet/config.json dict."""
  config_path = pathlib.Path(config_path)
  _check_class(config, ("UNet2DConditionModel",), config_path)
  cls = sd_compat.diffusers_flax().UNet2DConditionModel
  kwargs = _module_kwargs(config, _flax_fields(cls), _UNET_PYTORCH_ONLY, config_path, "UNet2DConditionModel")
  if kwargs.get("norm_num_groups", 32) is None:
    raise errors.ConfigError(f"{config_path}: norm_num_groups=None (no output norm) is not implemented by the Flax "
                             "UNet")
  if kwargs.get("sample_size") is None:
    kwargs["sample_size"] = 2 ** (len(kwargs.get("block_out_channels", (0,) * 4)) - 1)
  return cls(**{**kwargs, **module_kwargs}, dtype=dtype)


def vae_module(config: Mapping[str, Any], *, dtype=jnp.float32, config_path: PathLike = "vae/config.json") -> Any:
  """diffusers' FlaxAutoencoderKL for a vae/config.json dict."""
  config_path = pathlib.Path(config_path)
  _check_class(config, ("AutoencoderKL",), config_path)
  cls = sd_compat.diffusers_flax().AutoencoderKL
  kwargs = _module_kwargs(config, _flax_fields(cls), _VAE_PYTORCH_ONLY, config_path, "AutoencoderKL")
  for key, allowed in _VAE_FLAX_FIXED.items():
    if key in kwargs and kwargs[key] not in allowed:
      raise errors.ConfigError(f"{config_path}: {key}={kwargs[key]!r} is not implemented by the Flax AutoencoderKL "
                               f"(supported: {', '.join(map(repr, allowed))})")
  return cls(**kwargs, dtype=dtype)


def text_encoder_module(config: Mapping[str, Any], *, dtype=jnp.float32,
                        config_path: PathLike = "text_encoder/config.json") -> Any:
  """transformers' Flax CLIPTextEncoder for a text_encoder/config.json dict."""
  config_path = pathlib.Path(config_path)
  t = sd_compat.transformers_flax()
  config = copy.deepcopy(dict(config))  # transformers' from_dict adds keys to the dict it is given
  text_config = config.get("text_config", config) if config.get("model_type") == "clip" else config
  if text_config.get("model_type", "clip_text_model") != "clip_text_model":
    raise errors.ConfigError(f"{config_path}: model_type is {text_config.get('model_type')!r}, expected "
                             "'clip_text_model'")
  try:
    clip_config = t.CLIPTextConfig.from_dict(text_config)
  except (TypeError, ValueError) as e:
    raise errors.ConfigError(f"{config_path}: {errors.one_line(e)}") from None
  if clip_config.hidden_act not in t.ACT2FN:
    raise errors.ConfigError(f"{config_path}: hidden_act={clip_config.hidden_act!r} is not implemented by Flax "
                             f"CLIP (supported: {', '.join(sorted(t.ACT2FN))})")
  return t.CLIPTextEncoder(clip_config, dtype=dtype)


def _unet_target(module):
  return jax.eval_shape(module.init_weights, jax.random.PRNGKey(0))


def _text_target(module):
  ids = jnp.zeros((1, 1), jnp.int32)
  return jax.eval_shape(lambda rng: module.init(rng, ids)["params"], jax.random.PRNGKey(0))


def unet_spec(folder: PathLike, *, subfolder: str | None = "unet", dtype=jnp.float32, variant: str | None = None,
              **module_kwargs: Any) -> ComponentSpec:
  """The UNet's module and abstract params from `folder/subfolder/config.json` (weights not read)."""
  path = _component_dir(folder, subfolder)
  config = _read_json(path / "config.json")
  module = unet_module(config, dtype=dtype, config_path=path / "config.json", **module_kwargs)
  return ComponentSpec(module, _unet_target(module), config, path, _weights_file(path, UNET_WEIGHTS, variant),
                       _diffusers_rename)


def vae_spec(folder: PathLike, *, subfolder: str | None = "vae", dtype=jnp.float32,
             variant: str | None = None) -> ComponentSpec:
  """The VAE's module and abstract params from `folder/subfolder/config.json` (weights not read)."""
  path = _component_dir(folder, subfolder)
  config = _read_json(path / "config.json")
  module = vae_module(config, dtype=dtype, config_path=path / "config.json")
  return ComponentSpec(module, _unet_target(module), config, path, _weights_file(path, VAE_WEIGHTS, variant),
                       _diffusers_rename)


def text_encoder_spec(folder: PathLike, *, subfolder: str | None = "text_encoder", dtype=jnp.float32,
                      variant: str | None = None) -> ComponentSpec:
  """The text encoder's module and abstract params from `folder/subfolder/config.json` (weights not read)."""
  path = _component_dir(folder, subfolder)
  config = _read_json(path / "config.json")
  module = text_encoder_module(config, dtype=dtype, config_path=path / "config.json")
  return ComponentSpec(module, _text_target(module), config, path,
                       _weights_file(path, TEXT_ENCODER_WEIGHTS, variant), _transformers_rename,
                       _TEXT_ENCODER_BUFFERS)


def config_spec(kind: str, config: Mapping[str, Any], *, dtype=jnp.float32, **module_kwargs: Any) -> ComponentSpec:
  """A spec from a config dict alone (no folder, no weights): kind 'unet' | 'vae' | 'text_encoder'. For abstract
  shapes (memory benchmarks) and for writing random families. `module_kwargs`: the UNet's, as `unet_spec`."""
  if kind == "unet":
    module = unet_module(config, dtype=dtype, **module_kwargs)
    return ComponentSpec(module, _unet_target(module), dict(config), None, None, _diffusers_rename)
  if kind == "vae":
    module = vae_module(config, dtype=dtype)
    return ComponentSpec(module, _unet_target(module), dict(config), None, None, _diffusers_rename)
  if kind == "text_encoder":
    module = text_encoder_module(config, dtype=dtype)
    return ComponentSpec(module, _text_target(module), dict(config), None, None, _transformers_rename,
                         _TEXT_ENCODER_BUFFERS)
  raise ValueError(f"kind must be 'unet', 'vae' or 'text_encoder', got {kind!r}")


def load_unet(folder: PathLike, *, subfolder: str | None = "unet", dtype=jnp.float32,
              variant: str | None = None, **module_kwargs: Any) -> Component:
  """The UNet (`sd_compat.diffusers_flax().UNet2DConditionModel`) and its params from `folder/subfolder`.

  `module_kwargs` go to the module on top of config.json (e.g. `split_head_dim=True`,
  `use_memory_efficient_attention=True`). Call it as diffusers' Flax UNet: NCHW sample, timesteps, context.
  """
  spec = unet_spec(folder, subfolder=subfolder, dtype=dtype, variant=variant, **module_kwargs)
  return Component(spec.module, spec.load(dtype=dtype), spec.config, spec.path)


def load_vae(folder: PathLike, *, subfolder: str | None = "vae", dtype=jnp.float32,
             variant: str | None = None) -> Component:
  """The VAE (diffusers' `FlaxAutoencoderKL`) and its params from `folder/subfolder`.

  `module.apply(v, x_nchw, method=module.encode).latent_dist` (`.mean`, `.logvar` clamped to [-30, 20], `.std`;
  NHWC) and `module.apply(v, latents, method=module.decode).sample` (NCHW), as in diffusers' Flax VAE.
  """
  spec = vae_spec(folder, subfolder=subfolder, dtype=dtype, variant=variant)
  return Component(spec.module, spec.load(dtype=dtype), spec.config, spec.path)


def load_text_encoder(folder: PathLike, *, subfolder: str | None = "text_encoder", dtype=jnp.float32,
                      variant: str | None = None) -> Component:
  """The CLIP text encoder (`sd_compat.transformers_flax().CLIPTextEncoder`) and its params.

  `module.apply({"params": params}, input_ids).last_hidden_state` is PyTorch's `text_encoder(input_ids)[0]`
  (no attention mask, as SD pipelines call it).
  """
  spec = text_encoder_spec(folder, subfolder=subfolder, dtype=dtype, variant=variant)
  return Component(spec.module, spec.load(dtype=dtype), spec.config, spec.path)


def load_tokenizer(folder: PathLike, *, subfolder: str | None = "tokenizer"):
  """transformers' (slow, pure-Python) `CLIPTokenizer` from `folder/subfolder`, offline.

  SD pipelines call it as `tokenizer(prompt, padding="max_length", max_length=tokenizer.model_max_length,
  truncation=True, return_tensors="np").input_ids`.
  """
  path = _component_dir(folder, subfolder)
  for name in TOKENIZER_FILES:
    if not (path / name).is_file():
      raise FileNotFoundError(f"{path / name} not found (a CLIP tokenizer needs {' and '.join(TOKENIZER_FILES)})")
  try:
    return sd_compat.transformers_flax().CLIPTokenizer.from_pretrained(os.fspath(path), local_files_only=True)
  except (OSError, ValueError, KeyError, json.JSONDecodeError) as e:
    raise errors.ConfigError(f"{path}: cannot build the CLIP tokenizer: {errors.one_line(e)}") from None


def load_scheduler_config(folder: PathLike, *, subfolder: str | None = "scheduler") -> dict[str, Any]:
  """scheduler/scheduler_config.json as a dict (no scheduler object is built)."""
  return _read_json(_component_dir(folder, subfolder) / "scheduler_config.json")


def load_sd_turbo(folder: PathLike, *, dtype=jnp.float32, variant: str | None = None) -> SDTurbo:
  """Every component of an SD-Turbo diffusers folder (see the module doc); params are host numpy arrays."""
  _component_dir(folder, None)
  return SDTurbo(
      unet=load_unet(folder, dtype=dtype, variant=variant),
      vae=load_vae(folder, dtype=dtype, variant=variant),
      text_encoder=load_text_encoder(folder, dtype=dtype, variant=variant),
      tokenizer=load_tokenizer(folder),
      scheduler_config=load_scheduler_config(folder),
  )
