"""A tiny random SD-Turbo-shaped model family, written to a folder in diffusers layout (no torch, no download).

`write_tiny_family(folder)` writes what `convert.sd_turbo.load_sd_turbo` reads, shaped like `stabilityai/sd-turbo`
but small, with seeded random weights, so that smoke configs and tests run the real loading path:

  unet/          config.json + diffusion_pytorch_model.safetensors   UNet2DConditionModel, SD-2.1 structure
  vae/           config.json + diffusion_pytorch_model.safetensors   AutoencoderKL, SD-VAE structure
  text_encoder/  config.json + model.safetensors                     CLIPTextModel (hidden 32, 2 layers)
  tokenizer/     vocab.json, merges.txt, tokenizer_config.json, special_tokens_map.json   CLIP BPE
  scheduler/     scheduler_config.json                               sd-turbo's scheduler config
  model_index.json                                                   StableDiffusionPipeline index

The weight files hold PyTorch state dicts (PyTorch key names and layouts, float32), written with
`safetensors.numpy`: PyTorch diffusers / transformers load them as well. The configs are in
`tiny_family_configs()`; the UNet's and VAE's follow sd-turbo's (`models.sd_turbo_configs`) with small widths.

Weights are drawn with numpy from `seed` (per component, in a fixed order), so the same seed writes the same
bytes. Scales keep activations O(1): Conv / Dense kernels N(0, 1/fan_in), biases N(0, 0.02^2), norm scales
1 + N(0, 0.02^2), token embeddings N(0, 0.02^2), position embeddings N(0, 0.01^2). Every tensor is distinct, so a
swapped or dropped entry shows in a round trip.

The Flax -> PyTorch renaming (`flax_to_torch_state_dict`) inverts the loaders' own rules
(`convert.sd_turbo._diffusers_rename` / `_transformers_rename`, i.e. diffusers' and transformers' PyTorch->Flax
rules): for each Flax path it builds the PyTorch key (ModuleList entries `name_N` -> `name.N`, leaf
`kernel`/`scale`/`embedding` -> `weight`, the VAE attention's `query`/`key`/`value`/`proj_attn` -> the current
`to_q`/`to_k`/`to_v`/`to_out.0`) and tensor (conv kernel (kh, kw, in, out) -> (out, in, kh, kw), Dense (in, out)
-> (out, in)), and keeps it only if the forward rule maps it back to exactly that path and array.

Writing is atomic: the family is built in a temporary folder next to `folder` and renamed into place, so a
half-written family never appears at `folder`. An existing `folder` is returned untouched (whatever seed wrote
it) unless `overwrite=True`, which replaces it (the old folder is moved aside, the new one renamed in, the old one
removed).
"""

from __future__ import annotations

import copy
import json
import os
import pathlib
import re
import shutil
import tempfile
import uuid
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
from flax import traverse_util

from lowlight_jax.convert import sd_turbo
from lowlight_jax.models import sd_turbo_configs

PathLike = str | os.PathLike

# ------------------------------------------------------------------------------------------- configs

# sd-turbo's scheduler/scheduler_config.json (the values of the tiny GEFU fixture's copy).
SCHEDULER_CONFIG: dict[str, Any] = {
    "_class_name": "EulerDiscreteScheduler",
    "_diffusers_version": "0.24.0.dev0",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "clip_sample": False,
    "interpolation_type": "linear",
    "num_train_timesteps": 1000,
    "prediction_type": "epsilon",
    "sample_max_value": 1.0,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "timestep_spacing": "trailing",
    "trained_betas": None,
    "use_karras_sigmas": False,
}

MODEL_INDEX: dict[str, Any] = {
    "_class_name": "StableDiffusionPipeline",
    "_diffusers_version": "0.24.0.dev0",
    "feature_extractor": [None, None],
    "requires_safety_checker": False,
    "safety_checker": [None, None],
    "scheduler": ["diffusers", "EulerDiscreteScheduler"],
    "text_encoder": ["transformers", "CLIPTextModel"],
    "tokenizer": ["transformers", "CLIPTokenizer"],
    "unet": ["diffusers", "UNet2DConditionModel"],
    "vae": ["diffusers", "AutoencoderKL"],
}

BOS_TOKEN = "<|startoftext|>"
EOS_TOKEN = "<|endoftext|>"
PAD_TOKEN = "!"  # SD-2 / sd-turbo pad with "!" (id 0), not with <|endoftext|>
MODEL_MAX_LENGTH = 77

# A few BPE merges (rank = position) so that the tokenizer really merges; each result is in the vocabulary.
TINY_MERGES: tuple[tuple[str, str], ...] = (
    ("t", "h"), ("th", "e</w>"), ("i", "n"), ("in", "g</w>"), ("a", "n"), ("an", "d</w>"),
    ("h", "t</w>"), ("g", "ht</w>"), ("l", "i"), ("li", "ght</w>"), ("o", "n</w>"), ("e", "r</w>"),
)

TOKENIZER_CONFIG: dict[str, Any] = {
    "add_prefix_space": False,
    "bos_token": BOS_TOKEN,
    "do_lower_case": True,
    "eos_token": EOS_TOKEN,
    "errors": "replace",
    "model_max_length": MODEL_MAX_LENGTH,
    "pad_token": PAD_TOKEN,
    "tokenizer_class": "CLIPTokenizer",
    "unk_token": EOS_TOKEN,
}
SPECIAL_TOKENS_MAP: dict[str, Any] = {
    "bos_token": BOS_TOKEN, "eos_token": EOS_TOKEN, "pad_token": PAD_TOKEN, "unk_token": EOS_TOKEN,
}


def _byte_symbols() -> list[str]:
  """The 256 characters CLIP's byte-level BPE uses for the bytes 0..255, in CLIP's vocabulary order.

  The 188 bytes that are printable Latin-1 ('!'..'~', '¡'..'¬', '®'..'ÿ') stand for themselves and come first;
  the other 68 bytes get the characters from U+0100 upward, in byte order.
  """
  printable = [b for b in range(256) if 0x21 <= b <= 0x7E or 0xA1 <= b <= 0xAC or 0xAE <= b <= 0xFF]
  others = [b for b in range(256) if b not in set(printable)]
  return [chr(b) for b in printable] + [chr(0x100 + i) for i in range(len(others))]


def tiny_vocab(merges: tuple[tuple[str, str], ...] = TINY_MERGES) -> dict[str, int]:
  """CLIP-ordered vocabulary: byte symbols, the same with '</w>', the merges' results, then BOS and EOS."""
  symbols = _byte_symbols()
  tokens = symbols + [s + "</w>" for s in symbols] + ["".join(pair) for pair in merges] + [BOS_TOKEN, EOS_TOKEN]
  if len(set(tokens)) != len(tokens):
    raise ValueError("duplicate tokens in the tiny vocabulary (a merge repeats a base symbol or another merge)")
  return {token: i for i, token in enumerate(tokens)}


def _tiny_unet_config() -> dict[str, Any]:
  config = copy.deepcopy(sd_turbo_configs.UNET_CONFIG)
  config.update(block_out_channels=[32, 64, 64, 64], attention_head_dim=[2, 4, 4, 4], cross_attention_dim=32,
                layers_per_block=1, norm_num_groups=8, sample_size=8)
  return config


def _tiny_vae_config() -> dict[str, Any]:
  config = copy.deepcopy(sd_turbo_configs.VAE_CONFIG)
  config.update(block_out_channels=[32, 64, 64, 64], layers_per_block=2, norm_num_groups=8, sample_size=64)
  return config


def _tiny_text_encoder_config(vocab_size: int) -> dict[str, Any]:
  config = copy.deepcopy(sd_turbo_configs.TEXT_ENCODER_CONFIG)
  config.update(hidden_size=32, intermediate_size=64, num_attention_heads=2, num_hidden_layers=2,
                projection_dim=32, vocab_size=vocab_size)
  return config


def tiny_family_configs() -> dict[str, dict[str, Any]]:
  """Every JSON file `write_tiny_family` writes, as dicts (fresh copies).

  Keys: 'unet', 'vae', 'text_encoder' (their config.json), 'tokenizer' (tokenizer_config.json),
  'special_tokens_map', 'scheduler' (scheduler_config.json), 'model_index'. The vocabulary is `tiny_vocab()`.
  """
  return {
      "unet": _tiny_unet_config(),
      "vae": _tiny_vae_config(),
      "text_encoder": _tiny_text_encoder_config(len(tiny_vocab())),
      "tokenizer": copy.deepcopy(TOKENIZER_CONFIG),
      "special_tokens_map": copy.deepcopy(SPECIAL_TOKENS_MAP),
      "scheduler": copy.deepcopy(SCHEDULER_CONFIG),
      "model_index": copy.deepcopy(MODEL_INDEX),
  }


# ------------------------------------------------------------------------------------------- Flax -> PyTorch

_RENAMES: dict[str, Callable] = {
    "unet": sd_turbo._diffusers_rename, "vae": sd_turbo._diffusers_rename,
    "text_encoder": sd_turbo._transformers_rename,
}
# diffusers' Flax VAE attention names -> the PyTorch names diffusers saves today (the rule accepts both).
_ATTENTION_NAMES = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}
_INDEXED = re.compile(r"(.+)_(\d+)")


def _to_torch_layout(leaf: str, value: np.ndarray) -> list[tuple[str, np.ndarray]]:
  """Candidate (PyTorch leaf name, tensor) for a Flax leaf."""
  if leaf == "kernel":
    if value.ndim == 4:  # conv (kh, kw, in, out) -> (out, in, kh, kw)
      return [("weight", np.ascontiguousarray(value.transpose(3, 2, 0, 1)))]
    if value.ndim == 2:  # Dense (in, out) -> Linear (out, in)
      return [("weight", np.ascontiguousarray(value.T))]
    return []
  if leaf in ("scale", "embedding"):
    return [("weight", value)]
  return [(leaf, value)]


def _module_names(path: tuple[str, ...], prefixes: set[tuple[str, ...]], kind: str) -> list[str]:
  """PyTorch module names for a Flax path without its leaf: `name_N` is ModuleList entry `name.N` when the list
  has an entry 0 at that level (`down_blocks_0`, `to_out_0`, `net_0`/`net_2`), else a plain attribute
  (`linear_1`); the diffusers VAE attention's Flax names become today's PyTorch names."""
  names = []
  for i, element in enumerate(path):
    match = _INDEXED.fullmatch(element)
    if match and path[:i] + (f"{match[1]}_0",) in prefixes:
      element = f"{match[1]}.{match[2]}"
    elif kind != "text_encoder" and i == len(path) - 1 and element in _ATTENTION_NAMES:
      element = _ATTENTION_NAMES[element]
    names.append(element)
  return names


def flax_to_torch_state_dict(flax_params: Mapping[str, Any], target_kind: str) -> dict[str, np.ndarray]:
  """A PyTorch state dict (key -> numpy array, sorted by key) holding `flax_params`.

  `target_kind`: 'unet' or 'vae' (diffusers' UNet2DConditionModel / AutoencoderKL naming) or 'text_encoder'
  (transformers' CLIPTextModel). `flax_params` is the module's full param tree (`{"params": ...}` unwrapped), as
  the loaders return it; values are converted with `np.asarray`. Each key is checked against the loaders' own
  PyTorch->Flax rule: it must map back to exactly its Flax path and array, else ValueError (so does a Flax path
  with no or several candidate keys, or two paths with one key).
  """
  if target_kind not in _RENAMES:
    raise ValueError(f"unknown target_kind {target_kind!r} (expected one of {', '.join(_RENAMES)})")
  rename = _RENAMES[target_kind]
  flat = {path: np.asarray(value) for path, value in traverse_util.flatten_dict(dict(flax_params)).items()}
  prefixes = {path[:i] for path in flat for i in range(1, len(path) + 1)}
  out: dict[str, np.ndarray] = {}
  origin: dict[str, tuple[str, ...]] = {}
  for path, value in flat.items():
    modules = ".".join(_module_names(path[:-1], prefixes, target_kind))
    matches = []
    for leaf, tensor in _to_torch_layout(path[-1], value):
      key = f"{modules}.{leaf}" if modules else leaf
      try:
        back, back_value = rename(key, tensor, flat)
      except AssertionError:  # diffusers' attention rule asserts shapes
        continue
      back_value = np.asarray(back_value)
      if (tuple(back) == path and back_value.shape == value.shape and back_value.dtype == value.dtype
          and np.array_equal(back_value, value)):
        matches.append((key, tensor))
    if len(matches) != 1:
      found = f"several ({', '.join(k for k, _ in matches)})" if matches else "none"
      raise ValueError(f"{target_kind}: no unique PyTorch key for Flax param {'/'.join(path)} "
                       f"{tuple(value.shape)}: {found} of the candidates maps back to it")
    key, tensor = matches[0]
    if key in out:
      raise ValueError(f"{target_kind}: Flax params {'/'.join(origin[key])} and {'/'.join(path)} both become "
                       f"PyTorch key {key!r}")
    out[key] = tensor
    origin[key] = path
  return dict(sorted(out.items()))


# --------------------------------------------------------------------------------------------- weights

_COMPONENT_STREAMS = {"unet": 0, "vae": 1, "text_encoder": 2}


def random_params(abstract: Mapping[str, Any], seed: int, stream: int = 0) -> dict[str, Any]:
  """Seeded float32 values for an abstract Flax param tree (see the module doc for the scales).

  Drawn with numpy's PCG64 from (seed, stream), leaf by leaf in sorted path order: deterministic, and
  independent of jax's PRNG and backend.
  """
  rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([int(seed), int(stream)])))
  flat = traverse_util.flatten_dict(dict(abstract))
  out = {}
  for path in sorted(flat):
    shape = tuple(flat[path].shape)
    noise = rng.standard_normal(shape, dtype=np.float32)
    leaf = path[-1]
    if leaf == "kernel":
      fan_in = int(np.prod(shape[:-1])) if len(shape) > 1 else 1
      value = noise * np.float32(1.0 / np.sqrt(fan_in))
    elif leaf == "scale":
      value = np.float32(1.0) + np.float32(0.02) * noise
    elif leaf == "embedding":
      value = noise * np.float32(0.01 if "position" in "/".join(path) else 0.02)
    else:  # biases
      value = np.float32(0.02) * noise
    out[path] = value.astype(np.float32)
  return traverse_util.unflatten_dict(out)


def tiny_family_params(seed: int = 0) -> dict[str, dict[str, Any]]:
  """{'unet' | 'vae' | 'text_encoder': Flax params} that `write_tiny_family(seed=seed)` writes (converted back)."""
  configs = tiny_family_configs()
  params = {}
  for kind, stream in _COMPONENT_STREAMS.items():
    _, abstract = sd_turbo_configs.build_module(kind, configs[kind])
    params[kind] = random_params(abstract, seed, stream)
  return params


# ---------------------------------------------------------------------------------------------- writing

_WEIGHT_FILES = {"unet": sd_turbo.UNET_WEIGHTS[0], "vae": sd_turbo.VAE_WEIGHTS[0],
                 "text_encoder": sd_turbo.TEXT_ENCODER_WEIGHTS[0]}


def _write_json(path: pathlib.Path, data: Any) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")


def _write_tokenizer(path: pathlib.Path, configs: Mapping[str, Any]) -> None:
  path.mkdir(parents=True, exist_ok=True)
  _write_json(path / "vocab.json", tiny_vocab())
  merges = "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in TINY_MERGES)
  (path / "merges.txt").write_text(merges, encoding="utf-8")
  _write_json(path / "tokenizer_config.json", configs["tokenizer"])
  _write_json(path / "special_tokens_map.json", configs["special_tokens_map"])


def _write_family(root: pathlib.Path, seed: int) -> None:
  from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top

  configs = tiny_family_configs()
  for kind, params in tiny_family_params(seed).items():
    _write_json(root / kind / "config.json", configs[kind])
    save_file(flax_to_torch_state_dict(params, kind), os.fspath(root / kind / _WEIGHT_FILES[kind]),
              metadata={"format": "pt"})
  _write_tokenizer(root / "tokenizer", configs)
  _write_json(root / "scheduler" / "scheduler_config.json", configs["scheduler"])
  _write_json(root / "model_index.json", configs["model_index"])


def write_tiny_family(folder: PathLike, *, seed: int = 0, overwrite: bool = False) -> pathlib.Path:
  """Writes the tiny random SD-Turbo-shaped family (see the module doc) to `folder`; returns `folder` as a Path.

  Atomic: built in a temporary folder beside `folder`, then renamed to it. If `folder` exists it is returned
  untouched (not checked, whatever seed or version wrote it) unless `overwrite=True`, which replaces it. If
  another process renames its family into place first, that one is kept and returned. Raises
  NotADirectoryError if `folder` exists and is not a directory.
  """
  folder = pathlib.Path(folder)
  if folder.exists() and not folder.is_dir():
    raise NotADirectoryError(f"{folder} exists and is not a directory")
  if folder.is_dir() and not overwrite:
    return folder
  folder.parent.mkdir(parents=True, exist_ok=True)
  tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".{folder.name}.tmp-", dir=folder.parent))
  try:
    _write_family(tmp, seed)
    os.chmod(tmp, 0o755)  # mkdtemp makes it 0700
    if folder.is_dir() and overwrite:
      old = folder.parent / f".{folder.name}.old-{uuid.uuid4().hex}"
      os.rename(folder, old)
      os.rename(tmp, folder)
      shutil.rmtree(old, ignore_errors=True)
    else:
      try:
        os.rename(tmp, folder)
      except OSError:
        if not folder.is_dir():
          raise
        shutil.rmtree(tmp, ignore_errors=True)  # another writer won the race: keep its family
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  return folder
