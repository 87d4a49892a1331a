"""SCUF/GEFU trained weights <-> the authors' checkpoint file (`test_model.pkl`, the dict `train.py` saves).

`export_checkpoint` writes a run's trained parameters in the authors' layout, so that the authors' own
`src/inference.py` (wangsen99/GEFU, commit 5d28e53) and our `convert.scuf.load_scuf` both load it;
`trainable_from_checkpoint` is the inverse (the authors' file -> our un-merged trained tree), so a run can start
from released or authors'-trained weights. The file layout is described in `convert.scuf` (the reader).

The trained tree (what `methods.scuf` trains; Flax layouts, host or device arrays):

  lora_a2b, lora_b2a   {<flax layer path>: {'lora_a': A, 'lora_b': B}} nested like the FlaxAutoencoderKL param
                       tree, at every layer `vae_lora_layers` lists (skip convs excluded). A conv kernel
                       (kh, kw, in, out) has A (kh, kw, in, r) (A has the base conv's kernel, stride and padding)
                       and B (r, out) (a 1x1 conv); a Dense kernel (in, out) has A (in, r) and B (r, out). The
                       layer computes base(x) + lora_alpha / r * B(A(x)) (`models.scuf.merge_lora`).
  lora_ref             the same, only the layers under 'decoder' (the reflectance decoder: a third VAE of which
                       only the decoder is used and trained)
  skip_a2b, skip_b2a   {'skip_conv_i': {'kernel': (1, 1, in, out), 'lora_a': (1, 1, in, r), 'lora_b': (r, out)}}
                       for i = 1..number of up blocks (LoRA only when the skip convs are targets, as in GEFU)
  skip_ref             the same; 'kernel' may be absent, then `skip_ref_kernels` supplies it
  proj                 the ProjModel params (`convert.openai_clip.convert_proj_model`'s 'params')
  ca_adapter           the attn2 adapter tree (`convert.scuf.convert_ca_adapter`)

Written file (the authors' keys, in their order): `rank_vae` (int), `vae_lora_target_modules` (list of str),
`sd_vae_enc` == `sd_vae_dec` (the `vae.` (a2b) and `vae_b2a.` (b2a) peft-wrapped VAEs: for a targeted layer
`<m>.base_layer.weight` / `.bias`, `<m>.lora_A.vae_skip.weight`, `<m>.lora_B.vae_skip.weight`; other layers
plain; skip convs `decoder.skip_conv_i`), `sd_vae_ref` (those keys plus `vae_ref.`), `image_proj`,
`ca_adapter` (`{i}.to_q_ca.weight` ... at the odd attn2 processor indices of `convert.scuf
.attn2_processor_layout`). State dicts are OrderedDicts whose keys follow PyTorch's module order (the order
`state_dict()` gives), so the VAE dicts list their keys exactly as the authors' file does.

Decisions:
  * Base weights (every VAE key but the LoRA and skip convs) come from the SD-Turbo folder's own VAE file,
    read on the host (`sd_turbo.read_state_dict`), written as float32 in PyTorch layout under diffusers'
    current PyTorch names (a folder with the legacy attention names query/key/value/proj_attn is written
    as to_q/to_k/to_v/to_out.0, as diffusers' PyTorch AutoencoderKL renames them on load). The three VAEs
    share these tensors in the file (one storage each), and `sd_vae_enc` / `sd_vae_dec` share all tensors.
  * lora_alpha: the authors' loader always uses peft's default alpha 8 (scale 8 / r); it is not stored in the
    file. A run trained with another alpha is exported with B rescaled by alpha / 8 so that the authors'
    scale reproduces it; `trainable_from_checkpoint(lora_alpha=...)` undoes the rescale.
  * The reflectance VAE's encoder is never used by the method: its LoRA A and B are written as zeros (its
    base weights are the folder's), so that the authors' strict `load_state_dict` finds every key.
  * `trainable_from_checkpoint` reads `sd_vae_dec` (what the authors' loader ends up using), checks
    `sd_vae_enc` has the same keys and shapes, reads `vae_ref.*` of `sd_vae_ref` (its `vae.` / `vae_b2a.`
    copies are ignored) and drops the reflectance encoder's LoRA (our tree has none). The file's base
    weights must equal the given VAE params (`check_base`), since the trained tree does not carry them.

Everything is strict: a missing, unexpected or mis-shaped entry raises a one-line `errors.WeightsError`
naming the tree key (or file key).
"""

from __future__ import annotations

import collections
import os
import pathlib
import re
from collections.abc import Iterable, Mapping
from typing import Any

import jax
import numpy as np
from flax import traverse_util

from lowlight_jax import errors
from lowlight_jax.convert import openai_clip as convert_openai_clip
from lowlight_jax.convert import scuf as convert_scuf
from lowlight_jax.convert import sd_turbo
from lowlight_jax.convert import torch_save
from lowlight_jax.models import scuf

PathLike = str | os.PathLike

AUTHORS_VAE_TARGETS = ("conv1", "conv2", "conv_in", "conv_shortcut", "conv", "conv_out", "skip_conv_1",
                       "skip_conv_2", "skip_conv_3", "skip_conv_4", "to_k", "to_q", "to_v", "to_out.0")
ADAPTER_NAME = "vae_skip"  # GEFU's peft adapter name
DEFAULT_RANK = 4
PEFT_DEFAULT_LORA_ALPHA = convert_scuf.PEFT_DEFAULT_LORA_ALPHA
TRAINED_KEYS = ("lora_a2b", "lora_b2a", "lora_ref", "skip_a2b", "skip_b2a", "skip_ref", "proj", "ca_adapter")
CHECKPOINT_KEYS = ("rank_vae", "vae_lora_target_modules", "sd_vae_enc", "sd_vae_dec", "sd_vae_ref", "image_proj",
                   "ca_adapter")
PREFIXES = {"a2b": "vae.", "b2a": "vae_b2a.", "ref": "vae_ref."}

# diffusers' Flax VAE attention names -> PyTorch (diffusers >= 0.14 Attention) names; the legacy PyTorch names
# equal the Flax ones.
_FLAX_TO_TORCH_ATTENTION = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}
_INDEXED = re.compile(r"^(?P<name>.+)_(?P<index>\d+)$")
_SKIP_MODULE = re.compile(r"^decoder\.skip_conv_\d+$")

# PyTorch registration order of AutoencoderKL's submodules (diffusers' Encoder / Decoder / blocks / ResnetBlock2D /
# Attention) and of peft's LoRA wrapper: sorts state-dict keys as `state_dict()` lists them.
_MODULE_ORDER = {name: i for i, name in enumerate((
    "encoder", "decoder", "quant_conv", "post_quant_conv",
    "conv_in", "down_blocks", "up_blocks", "mid_block", "attentions", "resnets", "downsamplers", "upsamplers",
    "conv_norm_out", "conv_out", "skip_conv",
    "group_norm", "to_q", "to_k", "to_v", "to_out", "query", "key", "value", "proj_attn",
    "norm1", "conv1", "norm2", "conv2", "conv_shortcut", "conv",
    "base_layer", "lora_A", "lora_B", "weight", "bias"))}


# ------------------------------------------------------------------------------------------- naming


def torch_module_name(layer: tuple[str, ...]) -> str:
  """Flax path of a FlaxAutoencoderKL layer -> its PyTorch module name (the inverse of diffusers' `rename_key`
  and attention renames): ('encoder', 'down_blocks_0', 'resnets_1', 'conv1') -> 'encoder.down_blocks.0.resnets
  .1.conv1'; ('decoder', 'mid_block', 'attentions_0', 'proj_attn') -> 'decoder.mid_block.attentions.0.to_out.0'."""
  parts = []
  for part in layer:
    m = _INDEXED.match(part)
    parts.append(f"{m['name']}.{m['index']}" if m else part)
  if len(layer) >= 2 and layer[-1] in _FLAX_TO_TORCH_ATTENTION and layer[-2].startswith("attentions_"):
    parts[-1] = _FLAX_TO_TORCH_ATTENTION[layer[-1]]
  return ".".join(parts)


def _modern_key(key: str) -> str:
  """A VAE state-dict key with the legacy attention names (query/key/value/proj_attn) renamed as diffusers'
  PyTorch AutoencoderKL renames them on load."""
  parts = key.split(".")
  if len(parts) >= 3 and parts[-2] in _FLAX_TO_TORCH_ATTENTION and "attentions" in parts[:-2]:
    parts[-2] = _FLAX_TO_TORCH_ATTENTION[parts[-2]]
    return ".".join(parts)
  return key


def _order_key(key: str) -> tuple:
  out = []
  for part in key.split("."):
    if part.isdigit():
      out.append((0, int(part), ""))
    elif m := re.fullmatch(r"skip_conv_(\d+)", part):
      out.append((1, _MODULE_ORDER["skip_conv"], int(m[1]), ""))
    else:
      out.append((1, _MODULE_ORDER.get(part, len(_MODULE_ORDER)), 0, part))
  return tuple(out)


def _torch_order(keys: Iterable[str]) -> list[str]:
  """State-dict keys in PyTorch's module registration order."""
  return sorted(keys, key=_order_key)


def _torch_shape(flax_kernel_shape: tuple[int, ...]) -> tuple[int, ...]:
  s = tuple(flax_kernel_shape)
  return (s[3], s[2], s[0], s[1]) if len(s) == 4 else s[::-1]


def _check_targets(targets: Any, what: str = "targets") -> tuple[str, ...]:
  if isinstance(targets, str) or not all(isinstance(t, str) for t in targets):
    raise errors.ConfigError(f"{what} must be a list of module names, got {targets!r}")
  return tuple(targets)


def _check_alpha(lora_alpha: Any) -> None:
  if isinstance(lora_alpha, bool) or not isinstance(lora_alpha, (int, float, np.number)) or not lora_alpha > 0:
    raise errors.ConfigError(f"lora_alpha must be a positive number, got {lora_alpha!r}")


def vae_lora_layers(vae_params: Mapping[str, Any], targets: Iterable[str] = AUTHORS_VAE_TARGETS, *,
                    vae_state_dict_keys: Iterable[str] | None = None) -> dict[tuple[str, ...], str]:
  """{Flax layer path: PyTorch module name} of every layer of a FlaxAutoencoderKL param tree that peft's LoRA
  with `target_modules=targets` wraps (name equal to a target or ending with '.' + target), in PyTorch module
  order; the skip convs (not part of the diffusers VAE) are excluded.

  `vae_params` may hold arrays or `jax.ShapeDtypeStruct`s. The LoRA of a layer with kernel K: conv K (kh, kw,
  in, out) -> A (kh, kw, in, r), B (r, out); Dense K (in, out) -> A (in, r), B (r, out).

  Names follow diffusers' PyTorch naming (`torch_module_name`), checked against diffusers' own PyTorch -> Flax
  rename rule (the one `convert.scuf.convert_vae_direction` uses), so the result is what that reader accepts.
  `vae_state_dict_keys` (a PyTorch VAE state dict's keys, legacy attention names allowed) are checked to hold
  `<name>.weight` for every listed layer.

  Raises:
    errors.ConfigError: a target matches a layer without a kernel (peft wraps only Linear / Conv layers), or no
      layer at all.
    errors.WeightsError: `vae_state_dict_keys` lacks a listed layer.
  """
  targets = _check_targets(targets)
  flat = traverse_util.flatten_dict(dict(vae_params))
  kernels = {path[:-1]: leaf for path, leaf in flat.items() if path[-1] == "kernel"}
  modules = {path[:-1] for path in flat}
  out: dict[tuple[str, ...], str] = {}
  for layer in modules:
    name = torch_module_name(layer)
    if _SKIP_MODULE.match(name) or not convert_scuf._is_target(name, targets):
      continue
    if layer not in kernels:
      raise errors.ConfigError(f"LoRA target modules ({', '.join(targets)}): {name} matches but has no kernel "
                               "(peft wraps only Linear and Conv layers)")
    # diffusers' PyTorch -> Flax rule must map the name back onto this layer.
    shape = _torch_shape(tuple(kernels[layer].shape))
    path, _ = convert_scuf._diffusers_rename(f"{name}.weight", np.broadcast_to(np.float32(0), shape), flat)
    if path != layer + ("kernel",):
      raise errors.WeightsError(f"VAE layer {'/'.join(layer)}: PyTorch name {name} maps back to {'/'.join(path)}")
    out[layer] = name
  if not out:
    raise errors.ConfigError(f"LoRA target modules ({', '.join(targets)}) match no layer of the VAE")
  if vae_state_dict_keys is not None:
    keys = {_modern_key(k) for k in vae_state_dict_keys}
    for layer, name in out.items():
      if f"{name}.weight" not in keys:
        raise errors.WeightsError(f"the VAE state dict has no key {name + '.weight'!r} (the targeted layer "
                                  f"{'/'.join(layer)})")
  return {layer: out[layer] for layer in sorted(out, key=lambda k: _order_key(out[k]))}


# ------------------------------------------------------------------------------------- shape helpers


def _f32(x: Any) -> np.ndarray:
  return np.asarray(x, dtype=np.float32)


def _shape(x: Any) -> tuple[int, ...]:
  return tuple(np.shape(x))


def _lora_shapes(kernel_shape: tuple[int, ...], rank: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
  return tuple(kernel_shape[:-1]) + (rank,), (rank, kernel_shape[-1])


def _as_mapping(tree: Any, where: str) -> Mapping:
  if not isinstance(tree, Mapping):
    raise errors.WeightsError(f"{where}: expected a dict of parameters, got {type(tree).__name__}")
  return tree


def _check_lora_tree(tree: Any, layers: Mapping[tuple[str, ...], str], kernel_shapes: Mapping[tuple[str, ...], Any],
                     rank: int, where: str) -> dict[tuple[str, ...], tuple[np.ndarray, np.ndarray]]:
  """A trained LoRA tree -> {layer: (A, B)} (float32 numpy, Flax layout), checked against `layers`."""
  flat = traverse_util.flatten_dict(dict(_as_mapping(tree, where)))
  for path in flat:
    if path[:-1] not in layers or path[-1] not in ("lora_a", "lora_b"):
      raise errors.WeightsError(f"{where}: unexpected entry {'/'.join(path)} (not the lora_a / lora_b of a targeted "
                                "VAE layer)")
  out = {}
  for layer, name in layers.items():
    pair = []
    for leaf, want in zip(("lora_a", "lora_b"), _lora_shapes(tuple(kernel_shapes[layer]), rank)):
      key = layer + (leaf,)
      if key not in flat:
        raise errors.WeightsError(f"{where}: missing {'/'.join(key)} (the LoRA of {name})")
      if _shape(flat[key]) != want:
        raise errors.WeightsError(f"{where}: {'/'.join(key)} has shape {_shape(flat[key])}, expected {want} (rank "
                                  f"{rank}, kernel {tuple(kernel_shapes[layer])})")
      pair.append(_f32(flat[key]))
    out[layer] = (pair[0], pair[1])
  return out


def _check_skip_tree(tree: Any, shapes: Mapping[str, tuple[int, ...]], rank: int, targeted: bool, where: str,
                     kernels: Mapping[str, Any] | None = None) -> dict[str, dict[str, np.ndarray]]:
  """A trained skip-conv tree -> {'skip_conv_i': {'kernel', ['lora_a', 'lora_b']}} (float32, Flax layout).

  `kernels` (optional, {name: kernel or {'kernel': kernel}}) supplies kernels the tree lacks (skip_ref)."""
  tree = _as_mapping(tree, where)
  leaves = ("kernel", "lora_a", "lora_b") if targeted else ("kernel",)
  for name in tree:
    if name not in shapes:
      raise errors.WeightsError(f"{where}: unexpected entry {name!r} (the VAE has {', '.join(shapes)})")
  out = {}
  for name, kshape in shapes.items():
    if name not in tree:
      raise errors.WeightsError(f"{where}: missing {name!r}")
    entry = _as_mapping(tree[name], f"{where}[{name!r}]")
    for leaf in entry:
      if leaf not in leaves:
        raise errors.WeightsError(f"{where}: unexpected entry {name}/{leaf}" + (
            "" if targeted else " (the skip convs are not LoRA targets)"))
    values = dict(entry)
    if kernels is not None and name in kernels:
      if "kernel" in values:
        raise errors.WeightsError(f"{where}: {name}/kernel is given both in the tree and in skip_ref_kernels")
      extra = kernels[name]
      values["kernel"] = extra["kernel"] if isinstance(extra, Mapping) else extra
    want = {"kernel": kshape}
    if targeted:
      want["lora_a"], want["lora_b"] = _lora_shapes(kshape, rank)
    checked = {}
    for leaf, shape in want.items():
      if leaf not in values:
        hint = " (pass skip_ref_kernels)" if leaf == "kernel" and kernels is not None else ""
        raise errors.WeightsError(f"{where}: missing {name}/{leaf}{hint}")
      if _shape(values[leaf]) != shape:
        raise errors.WeightsError(f"{where}: {name}/{leaf} has shape {_shape(values[leaf])}, expected {shape}")
      checked[leaf] = _f32(values[leaf])
    out[name] = checked
  if kernels is not None:
    for name in kernels:
      if name not in shapes:
        raise errors.WeightsError(f"skip_ref_kernels: unexpected entry {name!r} (the VAE has {', '.join(shapes)})")
  return out


# ------------------------------------------------------------------------------------------- export


def _lora_to_torch(a: np.ndarray, b: np.ndarray, factor: float) -> tuple[np.ndarray, np.ndarray]:
  """Flax A (..., in, r) / B (r, out) -> peft lora_A (r, in[, kh, kw]) / lora_B (out, r[, 1, 1]) weights."""
  if a.ndim == 4:
    ta, tb = np.transpose(a, (3, 2, 0, 1)), b.T[:, :, None, None]
  else:
    ta, tb = a.T, b.T
  if factor != 1.0:
    tb = (tb.astype(np.float64) * factor).astype(np.float32)
  return np.ascontiguousarray(ta), np.ascontiguousarray(tb)


def _peft_vae(base: Mapping[str, np.ndarray], layers: Mapping[tuple[str, ...], str],
              lora: Mapping[tuple[str, ...], tuple[np.ndarray, np.ndarray]],
              skips: Mapping[str, Mapping[str, np.ndarray]], *, skip_targeted: bool, factor: float
              ) -> dict[str, np.ndarray]:
  """One peft-wrapped VAE's state dict (no prefix), in PyTorch order."""
  targeted = set(layers.values())
  out: dict[str, np.ndarray] = {}
  for key, value in base.items():
    module, param = key.rsplit(".", 1)
    out[f"{module}.base_layer.{param}" if module in targeted else key] = value
  for layer, name in layers.items():
    out[f"{name}.lora_A.{ADAPTER_NAME}.weight"], out[f"{name}.lora_B.{ADAPTER_NAME}.weight"] = _lora_to_torch(
        *lora[layer], factor)
  for name, entry in skips.items():
    module = f"decoder.{name}"
    weight = np.ascontiguousarray(np.transpose(entry["kernel"], (3, 2, 0, 1)))
    if skip_targeted:
      out[f"{module}.base_layer.weight"] = weight
      out[f"{module}.lora_A.{ADAPTER_NAME}.weight"], out[f"{module}.lora_B.{ADAPTER_NAME}.weight"] = (
          _lora_to_torch(entry["lora_a"], entry["lora_b"], factor))
    else:
      out[f"{module}.weight"] = weight
  return {k: out[k] for k in _torch_order(out)}


def _unet_dims(unet_config: Mapping[str, Any], name: str) -> tuple[int, int]:
  """(hidden channels, cross-attention dim) of the attn2 at PyTorch module `name`, from the UNet config."""
  boc = list(unet_config["block_out_channels"])
  ctx = unet_config.get("cross_attention_dim", 1280)
  n = len(boc)
  if m := re.match(r"^down_blocks\.(\d+)\.", name):
    i = int(m[1])
  elif m := re.match(r"^up_blocks\.(\d+)\.", name):
    i = n - 1 - int(m[1])
  else:  # mid block
    i = n - 1
  ctx_i = ctx[i] if isinstance(ctx, (list, tuple)) else ctx
  return int(boc[i]), int(ctx_i)


def _proj_state_dict(proj: Any, where: str) -> tuple[dict[str, np.ndarray], Any]:
  """ProjModel params -> (its PyTorch state dict, the ProjModel module), checked by the reader."""
  flat = traverse_util.flatten_dict(dict(_as_mapping(proj, where)))
  names = {("proj", "kernel"): "proj.weight", ("proj", "bias"): "proj.bias", ("norm", "scale"): "norm.weight",
           ("norm", "bias"): "norm.bias"}
  for path in flat:
    if path not in names:
      raise errors.WeightsError(f"{where}: unexpected entry {'/'.join(path)} (ProjModel has proj/kernel, proj/bias, "
                                "norm/scale, norm/bias)")
  sd = collections.OrderedDict()
  for path, key in names.items():
    if path not in flat:
      raise errors.WeightsError(f"{where}: missing {'/'.join(path)}")
    value = _f32(flat[path])
    if path[-1] == "kernel":
      if value.ndim != 2:
        raise errors.WeightsError(f"{where}: proj/kernel has shape {value.shape}, expected (clip_dim, tokens * dim)")
      value = value.T
    sd[key] = np.ascontiguousarray(value)
  model, _ = convert_openai_clip.convert_proj_model(sd, source=where)
  return sd, model


def _ca_state_dict(tree: Any, unet_config: Mapping[str, Any], num_tokens: int, where: str
                   ) -> dict[str, np.ndarray]:
  """The attn2 adapter tree -> `ca_adapter` ({i}.to_q_ca.weight (hidden, n), to_k_ca / to_v_ca (hidden, ctx))."""
  layout = convert_scuf.attn2_processor_layout(unet_config)
  flat = traverse_util.flatten_dict(dict(_as_mapping(tree, where)))
  expected = {path + (param,) for _, _, path in layout for param in convert_scuf.CA_PARAMS}
  for path in flat:
    if path not in expected:
      raise errors.WeightsError(f"{where}: unexpected entry {'/'.join(path)} (not a to_q_ca / to_k_ca / to_v_ca of "
                                "an attn2 of the UNet)")
  sd = collections.OrderedDict()
  for index, name, path in layout:
    hidden, ctx = _unet_dims(unet_config, name)
    for param in convert_scuf.CA_PARAMS:
      key = path + (param,)
      if key not in flat:
        raise errors.WeightsError(f"{where}: missing {'/'.join(key)} (the {param} of {name})")
      want = (num_tokens if param == "to_q_ca" else ctx, hidden)
      if _shape(flat[key]) != want:
        raise errors.WeightsError(f"{where}: {'/'.join(key)} has shape {_shape(flat[key])}, expected {want}")
      sd[f"{index}.{param}.weight"] = np.ascontiguousarray(_f32(flat[key]).T)
  return sd


def _vae_base(sd_turbo_folder: PathLike) -> tuple[Any, dict[str, np.ndarray]]:
  """(the folder's VAE Component (its params checked strictly), its PyTorch state dict as float32 under current
  diffusers names, in PyTorch order), read on the host."""
  vae = sd_turbo.load_vae(sd_turbo_folder)
  weights = sd_turbo._weights_file(vae.path, sd_turbo.VAE_WEIGHTS, None)  # the file load_vae read
  raw = sd_turbo.read_state_dict(weights)
  base = {}
  for key, value in raw.items():
    value = np.asarray(value)
    if np.issubdtype(value.dtype, np.floating):
      value = value.astype(np.float32, copy=False)
    base[_modern_key(key)] = np.ascontiguousarray(value)
  return vae, {k: base[k] for k in _torch_order(base)}


def export_checkpoint(path: PathLike, trained: Mapping[str, Any], *, sd_turbo_folder: PathLike,
                      rank: int = DEFAULT_RANK, lora_alpha: float = PEFT_DEFAULT_LORA_ALPHA,
                      targets: Iterable[str] = AUTHORS_VAE_TARGETS,
                      skip_ref_kernels: Mapping[str, Any] | None = None) -> pathlib.Path:
  """Writes `trained` (the tree in the module doc) as the authors' checkpoint dict to `path` (`torch.save`
  format, atomically; no torch needed). Returns the path.

  Args:
    path: the file to write (replaced atomically if it exists).
    trained: {'lora_a2b', 'lora_b2a', 'lora_ref', 'skip_a2b', 'skip_b2a', 'skip_ref', 'proj', 'ca_adapter'}.
    sd_turbo_folder: the SD-Turbo folder the run started from: base VAE weights, VAE and UNet configs.
    rank: the LoRA rank r (written as `rank_vae`; every A / B must have it).
    lora_alpha: the alpha the run merges with (scale alpha / r); B is rescaled by alpha / 8 in the file (the
      authors' loader uses peft's default 8).
    targets: peft target module names (written as `vae_lora_target_modules`).
    skip_ref_kernels: {'skip_conv_i': kernel (1, 1, in, out) or {'kernel': ...}} for the skip_ref entries
      without a 'kernel' (GEFU's reflectance skip-conv base weights stay at their init: peft freezes them).

  Raises:
    errors.WeightsError: a missing / unexpected / mis-shaped entry of `trained` (named), or a folder that does not
      fit; errors.ConfigError: bad targets. Nothing is written then.
  """
  targets = _check_targets(targets)
  if isinstance(rank, bool) or not isinstance(rank, (int, np.integer)) or rank < 1:
    raise errors.ConfigError(f"rank must be a positive integer, got {rank!r}")
  rank = int(rank)
  _check_alpha(lora_alpha)
  trained = _as_mapping(trained, "trained")
  for key in TRAINED_KEYS:
    if key not in trained:
      raise errors.WeightsError(f"trained: missing {key!r} (expected {', '.join(TRAINED_KEYS)})")
  for key in trained:
    if key not in TRAINED_KEYS:
      raise errors.WeightsError(f"trained: unexpected entry {key!r} (expected {', '.join(TRAINED_KEYS)})")

  vae, base = _vae_base(sd_turbo_folder)
  unet_config = sd_turbo._read_json(sd_turbo._component_dir(sd_turbo_folder, "unet") / "config.json")
  layers = vae_lora_layers(vae.params, targets, vae_state_dict_keys=base)
  flat_vae = traverse_util.flatten_dict(dict(vae.params))
  kernel_shapes = {layer: flat_vae[layer + ("kernel",)].shape for layer in layers}
  ref_layers = {layer: name for layer, name in layers.items() if layer[0] == "decoder"}
  skip_shapes = convert_scuf.skip_conv_shapes(vae.params)
  skip_targeted = all(convert_scuf._is_target(f"decoder.{name}", targets) for name in skip_shapes)
  if not skip_targeted and any(convert_scuf._is_target(f"decoder.{name}", targets) for name in skip_shapes):
    raise errors.ConfigError(f"targets ({', '.join(targets)}) LoRA some skip convs but not all")

  lora = {d: _check_lora_tree(trained[f"lora_{d}"], layers, kernel_shapes, rank, f"trained['lora_{d}']")
          for d in ("a2b", "b2a")}
  lora["ref"] = _check_lora_tree(trained["lora_ref"], ref_layers, kernel_shapes, rank, "trained['lora_ref']")
  skips = {d: _check_skip_tree(trained[f"skip_{d}"], skip_shapes, rank, skip_targeted, f"trained['skip_{d}']")
           for d in ("a2b", "b2a")}
  skips["ref"] = _check_skip_tree(trained["skip_ref"], skip_shapes, rank, skip_targeted, "trained['skip_ref']",
                                  kernels=skip_ref_kernels or {})
  proj_sd, proj_model = _proj_state_dict(trained["proj"], "trained['proj']")
  ctx_dim = int(unet_config.get("cross_attention_dim", 0) or 0)
  if proj_model.cross_attention_dim != ctx_dim:
    raise errors.WeightsError(f"trained['proj']: makes {proj_model.cross_attention_dim}-d tokens, the UNet's "
                              f"cross_attention_dim is {ctx_dim}")
  ca_sd = _ca_state_dict(trained["ca_adapter"], unet_config, proj_model.clip_extra_context_tokens,
                         "trained['ca_adapter']")

  # The reflectance VAE's encoder is unused: zero LoRA (A and B) so that every key the authors' model has exists.
  for layer, name in layers.items():
    if layer not in lora["ref"]:
      a_shape, b_shape = _lora_shapes(tuple(kernel_shapes[layer]), rank)
      lora["ref"][layer] = (np.zeros(a_shape, np.float32), np.zeros(b_shape, np.float32))

  factor = float(lora_alpha) / float(PEFT_DEFAULT_LORA_ALPHA)
  vaes = {d: _peft_vae(base, layers, lora[d], skips[d], skip_targeted=skip_targeted, factor=factor)
          for d in ("a2b", "b2a", "ref")}
  sd_enc = collections.OrderedDict()
  for d in ("a2b", "b2a"):
    sd_enc.update((PREFIXES[d] + k, v) for k, v in vaes[d].items())
  sd_ref = collections.OrderedDict(sd_enc)
  sd_ref.update((PREFIXES["ref"] + k, v) for k, v in vaes["ref"].items())
  ckpt = {
      "rank_vae": rank,
      "vae_lora_target_modules": list(targets),
      "sd_vae_enc": sd_enc,
      "sd_vae_dec": collections.OrderedDict(sd_enc),  # the same tensors: one storage each in the file
      "sd_vae_ref": sd_ref,
      "image_proj": proj_sd,
      "ca_adapter": ca_sd,
  }
  path = pathlib.Path(path)
  torch_save.save(ckpt, path)
  return path


# ------------------------------------------------------------------------------------------- import


def _read_direction(sd: Mapping[str, np.ndarray], prefix: str, vae_params: Mapping[str, Any],
                    layers: Mapping[tuple[str, ...], str], *, rank: int, factor: float, skip_targeted: bool,
                    check_base: bool, source: str) -> tuple[dict[tuple[str, ...], dict[str, np.ndarray]],
                                                            dict[str, dict[str, np.ndarray]]]:
  """One `<prefix>*` VAE of a checkpoint dict -> ({layer: {'lora_a', 'lora_b'}}, skip tree) in Flax layout."""
  source = f"{source} ({prefix}*)"
  sub = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
  if not sub:
    raise errors.WeightsError(f"{source}: no keys with this prefix")
  plain, lora, _ = convert_scuf._split_peft(sub, source)
  by_module = {name: layer for layer, name in layers.items()}
  skip_shapes = convert_scuf.skip_conv_shapes(vae_params)
  skip_modules = {f"decoder.{name}" for name in skip_shapes} if skip_targeted else set()
  for module in sorted(lora, key=_order_key):
    if module not in by_module and module not in skip_modules:
      raise errors.WeightsError(f"{source}: {module} has a LoRA but is not a LoRA target")
  for module in list(by_module) + sorted(skip_modules):
    if module not in lora:
      raise errors.WeightsError(f"{source}: {module} has no LoRA but is a LoRA target")

  def lora_pair(module: str, kernel_shape: tuple[int, ...]) -> dict[str, np.ndarray]:
    pair = lora[module]
    try:
      a = convert_scuf._lora_a_to_flax(_f32(pair["A"]))
      b = convert_scuf._lora_b_to_flax(_f32(pair["B"]))
    except ValueError as e:
      raise errors.WeightsError(f"{source}: {module}: {errors.one_line(e)}") from None
    want_a, want_b = _lora_shapes(kernel_shape, rank)
    if a.shape != want_a or b.shape != want_b:
      raise errors.WeightsError(f"{source}: {module} has LoRA shapes A {tuple(pair['A'].shape)}, B "
                                f"{tuple(pair['B'].shape)}; rank {rank} on kernel {kernel_shape} needs Flax A "
                                f"{want_a}, B {want_b}")
    if factor != 1.0:
      b = (b.astype(np.float64) * factor).astype(np.float32)
    return {"lora_a": np.ascontiguousarray(a), "lora_b": np.ascontiguousarray(b)}

  skips: dict[str, dict[str, np.ndarray]] = {}
  for name, kshape in skip_shapes.items():
    key = f"decoder.{name}.weight"
    if key not in plain:
      raise errors.WeightsError(f"{source}: missing key {key!r} (GEFU's VAE has one skip conv per up block)")
    if f"decoder.{name}.bias" in plain:
      raise errors.WeightsError(f"{source}: {name} has a bias; GEFU's skip convs have none")
    w = _f32(plain.pop(key))
    want = _torch_shape(kshape)
    if w.shape != want:
      raise errors.WeightsError(f"{source}: {key} has shape {w.shape}, expected {want}")
    skips[name] = {"kernel": np.ascontiguousarray(np.transpose(w, (2, 3, 1, 0)))}
    if skip_targeted:
      skips[name].update(lora_pair(f"decoder.{name}", kshape))

  base = sd_turbo.convert_state_dict(plain, vae_params, convert_scuf._diffusers_rename, source=source,
                                     dtype=np.float32)
  flat_vae = traverse_util.flatten_dict(dict(vae_params))
  if check_base:
    for path, value in traverse_util.flatten_dict(base).items():
      given = flat_vae[path]
      if isinstance(given, jax.ShapeDtypeStruct):
        continue  # shape structs: nothing to compare
      given = np.asarray(given)
      eps = max(np.finfo(np.float32).eps, np.finfo(given.dtype).eps if np.issubdtype(given.dtype, np.floating)
                else 0.0)
      scale = float(np.max(np.abs(given), initial=0.0))
      diff = float(np.max(np.abs(value.astype(np.float64) - given.astype(np.float64)), initial=0.0))
      if diff > 4 * eps * max(scale, 1e-30):
        raise errors.WeightsError(f"{source}: the base weight at {'/'.join(path)} differs from the SD-Turbo VAE's "
                                  f"(max |diff| {diff:.3g}): the file was trained from other base weights "
                                  "(check_base=False ignores this)")
  out = {}
  for layer, name in layers.items():
    out[layer] = lora_pair(name, tuple(flat_vae[layer + ("kernel",)].shape))
  return out, skips


def _nest(flat: Mapping[tuple[str, ...], Mapping[str, np.ndarray]]) -> dict[str, Any]:
  return traverse_util.unflatten_dict({layer + (leaf,): v for layer, pair in flat.items() for leaf, v in pair.items()})


def trainable_from_checkpoint(path_or_dict: PathLike | Mapping[str, Any], *, vae_params: Mapping[str, Any],
                              unet_config: Mapping[str, Any], unet_params: Mapping[str, Any],
                              targets: Iterable[str] = AUTHORS_VAE_TARGETS,
                              lora_alpha: float = PEFT_DEFAULT_LORA_ALPHA, check_base: bool = True,
                              allow_missing_ref: bool = False) -> dict[str, Any]:
  """The authors' checkpoint (a path or the loaded dict) -> our un-merged trained tree (module doc; float32 numpy).

  Args:
    path_or_dict: `test_model.pkl` (or what `convert.scuf.read_checkpoint` returns).
    vae_params: the base FlaxAutoencoderKL params (`sd_turbo.load_vae(folder).params`; shape structs skip the
      base-weight check); unet_config / unet_params: the UNet's config dict and params (or shape structs).
    targets: the LoRA targets the run uses; the file's LoRA'd layers must be exactly those.
    lora_alpha: the run's alpha (file B is divided by alpha / 8, see the module doc).
    check_base: require the file's base weights to equal `vae_params` (within float rounding).
    allow_missing_ref: a file without `sd_vae_ref` gives a tree without 'lora_ref' and 'skip_ref' (the caller
      initialises them) instead of an error.

  Returns:
    The TRAINED_KEYS tree; 'skip_ref' holds the file's reflectance skip-conv kernels too.

  Raises:
    errors.WeightsError: not a SCUF checkpoint, or a missing / unexpected / mis-shaped key (named); one line.
  """
  targets = _check_targets(targets)
  _check_alpha(lora_alpha)
  if isinstance(path_or_dict, Mapping):
    ckpt, source = path_or_dict, "checkpoint"
    convert_scuf.check_checkpoint(ckpt, source)
  else:
    ckpt, source = convert_scuf.read_checkpoint(path_or_dict), str(path_or_dict)
  has_ref = "sd_vae_ref" in ckpt
  if not has_ref and not allow_missing_ref:
    raise errors.WeightsError(f"{source}: missing key 'sd_vae_ref' (the reflectance decoder, which train.py saves; "
                              "allow_missing_ref=True reads the rest)")
  rank, dec = convert_scuf.vae_rank_and_state(ckpt, source)
  ref = convert_scuf._arrays(ckpt["sd_vae_ref"], f"{source}['sd_vae_ref']") if has_ref else {}
  for name, sd, prefixes in (("sd_vae_dec", dec, ("a2b", "b2a")), ("sd_vae_ref", ref, ("a2b", "b2a", "ref"))):
    # (an absent sd_vae_ref is an empty dict here)
    allowed = tuple(PREFIXES[d] for d in prefixes)
    unknown = [k for k in sd if not k.startswith(allowed)]
    if unknown:
      raise errors.WeightsError(f"{source}['{name}']: unexpected key {unknown[0]!r} (expected "
                                f"{', '.join(repr(p + '*') for p in allowed)})")

  layers = vae_lora_layers(vae_params, targets)
  skip_shapes = convert_scuf.skip_conv_shapes(vae_params)
  skip_targeted = all(convert_scuf._is_target(f"decoder.{name}", targets) for name in skip_shapes)
  factor = float(PEFT_DEFAULT_LORA_ALPHA) / float(lora_alpha)
  kwargs = dict(rank=rank, factor=factor, skip_targeted=skip_targeted, check_base=check_base)
  trained: dict[str, Any] = {}
  for d in ("a2b", "b2a"):
    lora, trained[f"skip_{d}"] = _read_direction(dec, PREFIXES[d], vae_params, layers,
                                                 source=f"{source}['sd_vae_dec']", **kwargs)
    trained[f"lora_{d}"] = _nest(lora)
  if has_ref:
    lora, trained["skip_ref"] = _read_direction(ref, PREFIXES["ref"], vae_params, layers,
                                                source=f"{source}['sd_vae_ref']", **kwargs)
    trained["lora_ref"] = _nest({layer: pair for layer, pair in lora.items() if layer[0] == "decoder"})

  proj_model, proj_vars = convert_openai_clip.convert_proj_model(
      convert_scuf._arrays(ckpt["image_proj"], f"{source}['image_proj']"), source=f"{source}['image_proj']")
  trained["proj"] = convert_scuf._host(proj_vars["params"], np.float32)
  trained["ca_adapter"], num_tokens = convert_scuf.convert_ca_adapter(
      convert_scuf._arrays(ckpt["ca_adapter"], f"{source}['ca_adapter']"), unet_config, unet_params,
      source=f"{source}['ca_adapter']")
  if proj_model.clip_extra_context_tokens != num_tokens:
    raise errors.WeightsError(f"{source}: image_proj makes {proj_model.clip_extra_context_tokens} tokens, the "
                              f"ca_adapter processors take {num_tokens}")
  return {key: trained[key] for key in TRAINED_KEYS if key in trained}
