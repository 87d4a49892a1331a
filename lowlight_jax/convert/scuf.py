"""The authors' SCUF/GEFU checkpoint (`test_model.pkl`) -> the param trees of `models.scuf.Generator`.

Reference code: wangsen99/GEFU (commit 5d28e53) `src/train.py` (what is saved), `src/my_utils/cyclegan_turbo.py`
(`CycleGAN_Turbo.load_vae_ckpt_from_state_dict`) and `src/adapter.py` (`CAAdapter.load_ca_adapter`).

The file is a `torch.save` dict, read by our safe unpickler (`convert.io.load_checkpoint`, no torch):

  rank_vae                  int r of the VAE LoRA (peft `LoraConfig(r=rank_vae, target_modules=...)`; lora_alpha
                            is left at peft's default 8, so the LoRA scale is 8 / r = 2 for r = 4)
  vae_lora_target_modules   peft target names (a module is targeted when its name equals one or ends with
                            '.' + one: 'conv' hits `downsamplers.0.conv` / `upsamplers.0.conv`, not `quant_conv`)
  sd_vae_enc, sd_vae_dec    `VAE_encode(vae, vae_b2a).state_dict()` / `VAE_decode(...)`: both hold the WHOLE
                            `vae.` (a2b) and `vae_b2a.` (b2a) models; the authors load enc, then dec into the
                            same modules, so dec's values are the ones used (the two are identical in files the
                            authors' `train.py` writes). Key naming (peft >= 0.7):
                              LoRA'd: `<m>.base_layer.weight` / `.bias`, `<m>.lora_A.<adapter>.weight`,
                                      `<m>.lora_B.<adapter>.weight`; the rest (norms, quant_conv,
                                      post_quant_conv) keep plain names; skip convs
                                      `decoder.skip_conv_{1..4}` (1x1, no bias, LoRA'd too)
  sd_vae_ref                `vae_ref`, the training-only reflectance decoder: not used at inference, ignored
  image_proj                `ProjModel` state dict (`convert.openai_clip.convert_proj_model`)
  ca_adapter                `nn.ModuleList(unet.attn_processors.values()).state_dict()`: `{i}.to_q_ca.weight`
                            (hidden, n), `{i}.to_k_ca.weight` / `{i}.to_v_ca.weight` (hidden, ctx_dim) for the odd
                            i (the attn2 processors; attn1's have no params), in diffusers 0.25.1's
                            `attn_processors` order: down blocks, then up blocks, then the mid block LAST
                            (`attn2_processor_layout` walks the UNet config; no index is hard-coded)

Conversion is strict: every key of the used sub-dicts must be consumed and every target filled with the right
shape; LoRA'd layers must be exactly the peft targets. The VAE LoRA is merged into the base kernels
(`models.scuf.merge_lora`, numpy, float64 then one rounding), so each direction's VAE is a plain diffusers Flax
VAE param tree; the VAE modules' architecture comes from the SD-Turbo folder's `vae/config.json`, and the UNet
params come from its `unet/` untouched. A file of another method (no `sd_vae_enc` / `ca_adapter` / ...)
raises a one-line `WeightsError` naming the file and the missing key.
"""

from __future__ import annotations

import os
import pickle
import re
from collections.abc import Mapping
from typing import Any

import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from lowlight_jax import errors
from lowlight_jax.convert import io as convert_io
from lowlight_jax.convert import openai_clip as convert_openai_clip
from lowlight_jax.convert import sd_turbo
from lowlight_jax.models import scuf
from lowlight_jax.models import sd_compat

PathLike = str | os.PathLike

REQUIRED_KEYS = ("sd_vae_enc", "sd_vae_dec", "rank_vae", "vae_lora_target_modules", "image_proj", "ca_adapter")
DIRECTION_PREFIXES = {"a2b": "vae.", "b2a": "vae_b2a."}
PEFT_DEFAULT_LORA_ALPHA = 8  # peft LoraConfig's default; GEFU does not set lora_alpha for the VAE
CA_PARAMS = ("to_q_ca", "to_k_ca", "to_v_ca")

_LORA_KEY = re.compile(r"^(?P<module>.+)\.lora_(?P<ab>[AB])\.(?P<adapter>[^.]+)\.weight$")
_BASE_KEY = re.compile(r"^(?P<module>.+)\.base_layer\.(?P<param>weight|bias)$")
_SKIP_MODULE = re.compile(r"^decoder\.skip_conv_(\d+)$")


# ------------------------------------------------------------------------------------------- helpers


def _diffusers_rename(key: str, tensor: np.ndarray, flat_target: dict) -> tuple[tuple[str, ...], np.ndarray]:
  d = sd_compat.diffusers_flax()
  return d.rename_key_and_reshape_tensor(tuple(d.rename_key(key).split(".")), tensor, flat_target)


def _arrays(obj: Any, source: str) -> dict[str, np.ndarray]:
  if not isinstance(obj, Mapping):
    raise errors.WeightsError(f"{source}: expected a state dict, got {type(obj).__name__}")
  out = {}
  for key, value in obj.items():
    if not isinstance(value, np.ndarray):
      raise errors.WeightsError(f"{source}: entry {key!r} is a {type(value).__name__}, not a tensor")
    out[str(key)] = value
  return out


def _lora_a_to_flax(a: np.ndarray) -> np.ndarray:
  """torch lora_A weight -> (..., in, r): conv (r, in, kh, kw) -> (kh, kw, in, r); linear (r, in) -> (in, r)."""
  return np.transpose(a, (2, 3, 1, 0)) if a.ndim == 4 else a.T


def _lora_b_to_flax(b: np.ndarray) -> np.ndarray:
  """torch lora_B weight -> (r, out): conv 1x1 (out, r, 1, 1) or linear (out, r)."""
  if b.ndim == 4:
    if b.shape[2:] != (1, 1):
      raise ValueError(f"conv lora_B must be 1x1, got {b.shape}")
    b = b[:, :, 0, 0]
  return b.T


def _is_target(module: str, targets: tuple[str, ...]) -> bool:
  """peft's `check_target_module_exists` for a list: exact name, or the name ends with '.' + target."""
  return any(module == t or module.endswith("." + t) for t in targets)


def _split_peft(state_dict: Mapping[str, np.ndarray], source: str
                ) -> tuple[dict[str, np.ndarray], dict[str, dict[str, np.ndarray]], set[str]]:
  """peft-wrapped state dict -> (plain state dict with base layers under their plain names,
  {module: {'A': a, 'B': b}}, adapter names)."""
  plain: dict[str, np.ndarray] = {}
  lora: dict[str, dict[str, np.ndarray]] = {}
  adapters: set[str] = set()
  for key, value in state_dict.items():
    if m := _LORA_KEY.match(key):
      adapters.add(m["adapter"])
      lora.setdefault(m["module"], {})[m["ab"]] = value
    elif m := _BASE_KEY.match(key):
      plain[f"{m['module']}.{m['param']}"] = value
    else:
      plain[key] = value
  for module, pair in lora.items():
    if set(pair) != {"A", "B"}:
      missing = "lora_B" if "A" in pair else "lora_A"
      raise errors.WeightsError(f"{source}: {module} has no {missing} weight")
    if f"{module}.weight" not in plain:
      raise errors.WeightsError(f"{source}: {module} has a LoRA but no base_layer.weight")
  if len(adapters) > 1:
    raise errors.WeightsError(f"{source}: several LoRA adapters ({', '.join(sorted(adapters))}); expected one")
  return plain, lora, adapters


# ----------------------------------------------------------------------------------------------- VAE


def convert_vae_direction(state_dict: Mapping[str, np.ndarray], prefix: str, vae_target: Mapping[str, Any], *,
                          rank: int, targets: tuple[str, ...], lora_alpha: float = PEFT_DEFAULT_LORA_ALPHA,
                          source: str, dtype=np.float32) -> tuple[dict[str, Any], dict[str, Any]]:
  """One direction (`prefix` 'vae.' or 'vae_b2a.') of `sd_vae_dec` -> (merged FlaxAutoencoderKL params,
  {'skip_conv_i': {'kernel': (1, 1, in, out)}}).

  `vae_target`: a FlaxAutoencoderKL param tree (arrays or shape structs) of the folder's VAE config.
  """
  source = f"{source} ({prefix}*)"
  sub = {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
  if not sub:
    raise errors.WeightsError(f"{source}: no keys with this prefix")
  plain, lora, adapters = _split_peft(sub, source)
  scale = float(lora_alpha) / float(rank)

  # peft targets: every LoRA'd module is a target, and every targeted layer is LoRA'd.
  modules = {k.rsplit(".", 1)[0] for k in plain}
  for module in sorted(modules):
    if (module in lora) != _is_target(module, targets):
      what = "has a LoRA but is not" if module in lora else "has no LoRA but is"
      raise errors.WeightsError(f"{source}: {module} {what} a vae_lora_target_modules target ({', '.join(targets)})")

  # Skip convs: not part of the diffusers VAE.
  num_up = len({path[1] for path in traverse_util.flatten_dict(dict(vae_target)) if path[0] == "decoder"
                and path[1].startswith("up_blocks_")})
  skip_names = scuf.skip_conv_names(num_up)
  skips: dict[str, Any] = {}
  for module in sorted(modules):
    if (m := _SKIP_MODULE.match(module)) and f"skip_conv_{m[1]}" not in skip_names:
      raise errors.WeightsError(f"{source}: unexpected skip conv {module} (the VAE has {num_up} up blocks)")
  for name in skip_names:
    key = f"decoder.{name}.weight"
    if key not in plain:
      raise errors.WeightsError(f"{source}: missing key {key!r} (GEFU's VAE has one skip conv per up block)")
    if f"decoder.{name}.bias" in plain:
      raise errors.WeightsError(f"{source}: {name} has a bias; GEFU's skip convs have none")
    w = plain.pop(key)
    if w.ndim != 4 or w.shape[2:] != (1, 1):
      raise errors.WeightsError(f"{source}: {key} has shape {w.shape}, expected a 1x1 conv (out, in, 1, 1)")
    kernel = np.transpose(w, (2, 3, 1, 0)).astype(dtype)
    module = f"decoder.{name}"
    if module in lora:
      pair = lora.pop(module)
      try:
        kernel = scuf.merge_lora(kernel, _lora_a_to_flax(pair["A"]).astype(dtype),
                                 _lora_b_to_flax(pair["B"]).astype(dtype), scale)
      except ValueError as e:
        raise errors.WeightsError(f"{source}: {module}: {errors.one_line(e)}") from None
    skips[name] = {"kernel": kernel}

  base = sd_turbo.convert_state_dict(plain, vae_target, _diffusers_rename, source=source, dtype=dtype)
  flat_target = traverse_util.flatten_dict(dict(vae_target))
  lora_tree: dict[tuple[str, ...], np.ndarray] = {}
  for module, pair in lora.items():
    if pair["A"].shape[0] != rank or pair["B"].shape[1] != rank:
      raise errors.WeightsError(f"{source}: {module} LoRA has rank {pair['A'].shape[0]}, rank_vae is {rank}")
    path, _ = _diffusers_rename(f"{module}.weight", plain[f"{module}.weight"], flat_target)
    lora_tree[path[:-1] + ("lora_a",)] = _lora_a_to_flax(pair["A"]).astype(dtype)
    lora_tree[path[:-1] + ("lora_b",)] = _lora_b_to_flax(pair["B"]).astype(dtype)
  try:
    merged = scuf.merge_lora_tree(base, traverse_util.unflatten_dict(lora_tree), scale)
  except ValueError as e:
    raise errors.WeightsError(f"{source}: {errors.one_line(e)}") from None
  _check_skip_shapes(skips, merged, source)
  return merged, skips


def skip_conv_shapes(vae_params: Mapping[str, Any]) -> dict[str, tuple[int, int, int, int]]:
  """{'skip_conv_i': (1, 1, in, out)} of a FlaxAutoencoderKL param tree (arrays or shapes): skip_conv_{i+1} maps
  the input of encoder down block (n-1-i) to the input of decoder up block i (GEFU's `my_vae_decoder_fwd`)."""
  enc, dec = vae_params["encoder"], vae_params["decoder"]
  n = len([k for k in dec if k.startswith("up_blocks_")])
  enc_in = [enc["conv_in"]["kernel"].shape[-1]] + [
      enc[f"down_blocks_{j}"]["resnets_0"]["conv2"]["kernel"].shape[-1] for j in range(n - 1)]
  dec_in = [dec["conv_in"]["kernel"].shape[-1]] + [
      dec[f"up_blocks_{i}"]["resnets_0"]["conv2"]["kernel"].shape[-1] for i in range(n - 1)]
  return {name: (1, 1, int(enc_in[n - 1 - i]), int(dec_in[i])) for i, name in enumerate(scuf.skip_conv_names(n))}


def _check_skip_shapes(skips: Mapping[str, Any], vae_params: Mapping[str, Any], source: str) -> None:
  for name, want in skip_conv_shapes(vae_params).items():
    if tuple(skips[name]["kernel"].shape) != want:
      got = skips[name]["kernel"].shape
      raise errors.WeightsError(f"{source}: decoder.{name} maps {got[2]} -> {got[3]} channels, the VAE needs "
                                f"{want[2]} -> {want[3]}")


# ------------------------------------------------------------------------------------- cycle attention


def attn2_processor_layout(unet_config: Mapping[str, Any]) -> list[tuple[int, str, tuple[str, ...]]]:
  """[(index in diffusers 0.25.1 `unet.attn_processors`, PyTorch module name, Flax module path)] of every attn2.

  diffusers registers `down_blocks`, `up_blocks`, then `mid_block`, so the processors run down blocks, up
  blocks, mid block (last); each transformer block contributes attn1 (even index) then attn2 (odd index).
  """
  def per_block(value, n):
    return list(value) if isinstance(value, (list, tuple)) else [value] * n

  down = list(unet_config.get("down_block_types", ()))
  up = list(unet_config.get("up_block_types", ()))
  layers = per_block(unet_config.get("layers_per_block", 2), len(down))
  tf_layers = per_block(unet_config.get("transformer_layers_per_block", 1), len(down))
  rev_tf_layers = unet_config.get("reverse_transformer_layers_per_block") or list(reversed(tf_layers))
  rev_layers = list(reversed(layers))
  blocks: list[tuple[str, int]] = []  # (attention module prefix, transformer blocks)
  for i, kind in enumerate(down):
    if "CrossAttn" in kind:
      blocks += [(f"down_blocks.{i}.attentions.{j}", tf_layers[i]) for j in range(layers[i])]
  for i, kind in enumerate(up):
    if "CrossAttn" in kind:
      depths = per_block(rev_tf_layers[i], rev_layers[i] + 1)  # a list per layer if `reverse_...` is given
      blocks += [(f"up_blocks.{i}.attentions.{j}", depths[j]) for j in range(rev_layers[i] + 1)]
  mid = unet_config.get("mid_block_type", "UNetMidBlock2DCrossAttn")
  if mid == "UNetMidBlock2DCrossAttn":
    blocks.append(("mid_block.attentions.0", tf_layers[-1]))
  elif mid is not None:
    raise errors.ConfigError(f"UNet config: mid_block_type={mid!r} is not supported")
  out = []
  index = 0
  for prefix, depth in blocks:
    for k in range(depth):
      name = f"{prefix}.transformer_blocks.{k}.attn2"
      path = tuple(re.sub(r"\.(\d+)", r"_\1", name).split("."))
      out.append((index + 1, name, path))
      index += 2
  return out


def convert_ca_adapter(state_dict: Mapping[str, np.ndarray], unet_config: Mapping[str, Any],
                       unet_params: Mapping[str, Any], *, source: str, dtype=np.float32
                       ) -> tuple[dict[str, Any], int]:
  """`ca_adapter` -> (adapter tree mirroring the UNet's attn2 paths, num_tokens)."""
  layout = attn2_processor_layout(unet_config)
  flat_unet = traverse_util.flatten_dict(dict(unet_params))
  unet_attn2 = {path[:path.index("attn2") + 1] for path in flat_unet if "attn2" in path}
  walked = {path for _, _, path in layout}
  if walked != unet_attn2:
    extra = sorted(unet_attn2 - walked) or sorted(walked - unet_attn2)
    raise errors.ConfigError(f"UNet config and params disagree on the attn2 layers (e.g. {'/'.join(extra[0])})")
  sd = dict(state_dict)
  tree: dict[tuple[str, ...], np.ndarray] = {}
  num_tokens = None
  for index, name, path in layout:
    to_q = flat_unet[path + ("to_q", "kernel")]
    to_k = flat_unet[path + ("to_k", "kernel")]
    hidden, ctx_dim = to_q.shape[-1], to_k.shape[0]
    for param in CA_PARAMS:
      key = f"{index}.{param}.weight"
      if key not in sd:
        raise errors.WeightsError(f"{source}: missing key {key!r} (the {param} of {name})")
      w = sd.pop(key)
      tokens = w.shape[1] if w.ndim == 2 else None
      want = (hidden, tokens if param == "to_q_ca" else ctx_dim)
      if w.ndim != 2 or w.shape != want or (param == "to_q_ca" and num_tokens not in (None, tokens)):
        raise errors.WeightsError(f"{source}: key {key!r} has shape {w.shape}, {name} expects "
                                  f"{(hidden, num_tokens or 'n') if param == 'to_q_ca' else want}")
      if param == "to_q_ca":
        num_tokens = tokens
      tree[path + (param,)] = np.ascontiguousarray(w.T.astype(dtype))
  if sd:
    raise errors.WeightsError(f"{source}: unexpected key {next(iter(sd))!r} (the UNet has {len(layout)} attn2 "
                              f"processors at odd indices 1..{2 * len(layout) - 1})")
  if num_tokens is None:
    raise errors.WeightsError(f"{source}: the UNet has no cross-attention layers")
  return traverse_util.unflatten_dict(tree), int(num_tokens)


# ---------------------------------------------------------------------------------------- checkpoint


def read_checkpoint(path: PathLike) -> dict[str, Any]:
  """The checkpoint dict (numpy tensors); WeightsError if unreadable or not a SCUF checkpoint."""
  try:
    obj = convert_io.load_checkpoint(path)
  except (FileNotFoundError, IsADirectoryError, PermissionError):
    raise
  except (ValueError, OSError, EOFError, KeyError, pickle.UnpicklingError) as e:
    raise errors.WeightsError(f"{path}: {errors.one_line(e)}") from None
  check_checkpoint(obj, str(path))
  return obj


def check_checkpoint(obj: Any, source: str) -> None:
  if not isinstance(obj, Mapping):
    raise errors.WeightsError(f"{source}: not a SCUF/GEFU checkpoint (a {type(obj).__name__}, expected the dict "
                              "train.py saves)")
  missing = [k for k in REQUIRED_KEYS if k not in obj]
  if missing:
    have = ", ".join(repr(k) for k in list(obj)[:5]) + (", ..." if len(obj) > 5 else "")
    raise errors.WeightsError(f"{source}: not a SCUF/GEFU checkpoint: missing key {missing[0]!r} (it has "
                              f"{have or 'no keys'})")


def vae_rank_and_state(ckpt: Mapping[str, Any], source: str) -> tuple[int, dict[str, np.ndarray]]:
  """(rank_vae, sd_vae_dec as numpy) of a checked checkpoint dict; sd_vae_enc must hold the same keys and shapes.

  The authors load sd_vae_enc, then sd_vae_dec (both strict, into the same two VAEs): dec's values win.
  """
  try:
    rank = int(ckpt["rank_vae"])
  except (TypeError, ValueError):
    raise errors.WeightsError(f"{source}: rank_vae is {ckpt['rank_vae']!r}, not an integer") from None
  enc = _arrays(ckpt["sd_vae_enc"], f"{source}['sd_vae_enc']")
  dec = _arrays(ckpt["sd_vae_dec"], f"{source}['sd_vae_dec']")
  if set(enc) != set(dec):
    odd = sorted(set(enc) ^ set(dec))[0]
    raise errors.WeightsError(f"{source}: sd_vae_enc and sd_vae_dec hold different keys (e.g. {odd!r})")
  for key, value in enc.items():
    if value.shape != dec[key].shape:
      raise errors.WeightsError(f"{source}: {key!r} has shape {value.shape} in sd_vae_enc, {dec[key].shape} in "
                                "sd_vae_dec")
  return rank, dec


def convert_checkpoint(ckpt: Mapping[str, Any], *, unet: sd_turbo.Component, vae: sd_turbo.Component,
                       source: str = "checkpoint", lora_alpha: float = PEFT_DEFAULT_LORA_ALPHA,
                       dtype=np.float32) -> tuple[dict[str, Any], Any, int]:
  """A loaded checkpoint dict -> (params without 'unet', ProjModel module, num_tokens).

  params: {'vae_a2b', 'vae_b2a' (merged FlaxAutoencoderKL trees), 'skip_convs_a2b', 'skip_convs_b2a', 'proj',
  'ca_adapter'} of host numpy arrays.
  """
  check_checkpoint(ckpt, source)
  rank, dec = vae_rank_and_state(ckpt, source)
  targets = ckpt["vae_lora_target_modules"]
  if isinstance(targets, str) or not all(isinstance(t, str) for t in targets):
    raise errors.WeightsError(f"{source}: vae_lora_target_modules must be a list of names")
  targets = tuple(targets)
  unknown = [k for k in dec if not k.startswith(tuple(DIRECTION_PREFIXES.values()))]
  if unknown:
    raise errors.WeightsError(f"{source}['sd_vae_dec']: unexpected key {unknown[0]!r} (expected 'vae.*' and "
                              "'vae_b2a.*')")
  params: dict[str, Any] = {}
  for direction, prefix in DIRECTION_PREFIXES.items():
    params[f"vae_{direction}"], params[f"skip_convs_{direction}"] = convert_vae_direction(
        dec, prefix, vae.params, rank=rank, targets=targets, lora_alpha=lora_alpha,
        source=f"{source}['sd_vae_dec']", dtype=dtype)
  proj_module, proj_vars = convert_openai_clip.convert_proj_model(
      _arrays(ckpt["image_proj"], f"{source}['image_proj']"), source=f"{source}['image_proj']")
  params["proj"] = _host(proj_vars["params"], dtype)
  params["ca_adapter"], num_tokens = convert_ca_adapter(
      _arrays(ckpt["ca_adapter"], f"{source}['ca_adapter']"), unet.config, unet.params,
      source=f"{source}['ca_adapter']", dtype=dtype)
  if proj_module.clip_extra_context_tokens != num_tokens:
    raise errors.WeightsError(f"{source}: image_proj makes {proj_module.clip_extra_context_tokens} tokens, the "
                              f"ca_adapter processors take {num_tokens}")
  ctx_dim = int(unet.config.get("cross_attention_dim", 0) or 0)
  if proj_module.cross_attention_dim != ctx_dim:
    raise errors.WeightsError(f"{source}: image_proj makes {proj_module.cross_attention_dim}-d tokens, the UNet's "
                              f"cross_attention_dim is {ctx_dim}")
  return params, proj_module, num_tokens


def _host(tree: Any, dtype) -> Any:
  """Host numpy copies (floating values in `dtype`)."""
  flat = traverse_util.flatten_dict(dict(tree))
  return traverse_util.unflatten_dict({k: np.asarray(v, dtype=dtype) for k, v in flat.items()})


def load_scuf(checkpoint: PathLike, sd_turbo_folder: PathLike, *, dtype=jnp.float32, text_encoder: bool = False,
              lora_alpha: float = PEFT_DEFAULT_LORA_ALPHA) -> tuple[scuf.Generator, dict[str, Any]]:
  """`test_model.pkl` + an SD-Turbo folder -> (Generator computing in `dtype`, params of host float32 arrays).

  params: {'unet' (the folder's, untouched), 'vae_a2b', 'vae_b2a', 'skip_convs_a2b', 'skip_convs_b2a', 'proj',
  'ca_adapter'} plus 'text_encoder' when `text_encoder=True` (then `Generator.encode_prompt` works).
  """
  ckpt = read_checkpoint(checkpoint)
  unet = sd_turbo.load_unet(sd_turbo_folder)
  vae = sd_turbo.load_vae(sd_turbo_folder)
  params, proj, num_tokens = convert_checkpoint(ckpt, unet=unet, vae=vae, source=str(checkpoint),
                                                lora_alpha=lora_alpha)
  params["unet"] = unet.params
  te_module = None
  if text_encoder:
    te = sd_turbo.load_text_encoder(sd_turbo_folder)
    params["text_encoder"], te_module = te.params, te.module
  generator = scuf.Generator(unet=unet.module, vae=vae.module, proj=proj,
                             scheduler_config=sd_turbo.load_scheduler_config(sd_turbo_folder),
                             num_tokens=num_tokens, text_encoder=te_module)
  if jnp.dtype(dtype) != jnp.float32:
    generator = generator.with_dtype(dtype)
  return generator, params
