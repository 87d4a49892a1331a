"""The torch -> Flax naming rule that every checkpoint converter in lowlight_jax relies on.

A Flax parameter path is the PyTorch state-dict key split on `.`; only the leaf is renamed
(docs/CONVENTIONS.md):

  torch leaf                    Flax collection / leaf   layout change
  `weight`, >= 3-D (conv)       params / `kernel`        OIHW -> HWIO (depthwise: (kh,kw,1,C))
  `weight`, 2-D (linear)        params / `kernel`        transposed (out,in) -> (in,out)
  `weight`, 1-D (norm)          params / `scale`         -
  `bias`                        params / `bias`          -
  `running_mean`/`running_var`  batch_stats / `mean`/`var`
  `num_batches_tracked`         dropped

Any other leaf (e.g. a raw `nn.Parameter` such as `pos_embed`) keeps its name and layout in
`params`. Torch `ConvTranspose` weights are stored (in, out, kh, kw) and cannot be told apart from a
conv by key: converters for such layers must fix them up themselves.

`assign` checks a converted tree against a Flax init tree (or its `jax.eval_shape`) and reports
every missing / unexpected / mis-shaped entry in torch key form, so a failing conversion reads like
`load_state_dict` errors.
"""

from collections.abc import Mapping
from typing import Any

import numpy as np

PyTree = Any

_STAT_TO_FLAX = {"running_mean": "mean", "running_var": "var"}
_STAT_TO_TORCH = {v: k for k, v in _STAT_TO_FLAX.items()}
_DROPPED = ("num_batches_tracked",)


def _kernel_perm(ndim: int) -> tuple[int, ...]:
  """Torch (O, I, *spatial) -> Flax (*spatial, I, O)."""
  return tuple(range(2, ndim)) + (1, 0)


def _set(tree: dict, path: tuple[str, ...], value: Any) -> None:
  node = tree
  for part in path[:-1]:
    node = node.setdefault(part, {})
    if not isinstance(node, dict):
      raise ValueError(f"path {'.'.join(path)} collides with a leaf at {part!r}")
  if path[-1] in node:
    raise ValueError(f"duplicate entry for {'.'.join(path)}")
  node[path[-1]] = value


def flatten(tree: Mapping, prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], Any]:
  """Nested mappings -> {path tuple: leaf}."""
  out = {}
  for k, v in tree.items():
    if isinstance(v, Mapping):
      out.update(flatten(v, prefix + (str(k),)))
    else:
      out[prefix + (str(k),)] = v
  return out


def _unflatten(flat: Mapping[tuple[str, ...], Any]) -> dict:
  tree: dict = {}
  for path, v in flat.items():
    _set(tree, path, v)
  return tree


def torch_key_to_flax(key: str, ndim: int) -> tuple[str, tuple[str, ...]] | None:
  """Maps a torch key (and its tensor rank) to `(collection, path)`; None if the key is dropped."""
  *mods, leaf = key.split(".")
  if leaf in _DROPPED:
    return None
  if leaf in _STAT_TO_FLAX:
    return "batch_stats", tuple(mods) + (_STAT_TO_FLAX[leaf],)
  if leaf == "weight":
    leaf = "kernel" if ndim >= 2 else "scale"
  return "params", tuple(mods) + (leaf,)


def flax_path_to_torch_key(collection: str, path: tuple[str, ...]) -> str:
  """Inverse naming of `torch_key_to_flax` (layout aside), used in error messages."""
  *mods, leaf = path
  if collection == "batch_stats":
    leaf = _STAT_TO_TORCH.get(leaf, leaf)
  elif leaf in ("kernel", "scale"):
    leaf = "weight"
  name = ".".join(list(mods) + [leaf])
  return name if collection in ("params", "batch_stats") else f"{collection}:{name}"


def torch_to_flax(state_dict: Mapping[str, Any]) -> dict[str, dict]:
  """Converts a torch state dict (arrays in torch layout) to `{'params': ..., 'batch_stats': ...}`.

  Args:
    state_dict: torch key -> array-like (numpy arrays, or anything `np.asarray` accepts).

  Returns:
    Nested dicts of numpy arrays (copies); `batch_stats` only if there are running stats.
  """
  out: dict[str, dict] = {"params": {}}
  for key, value in state_dict.items():
    arr = np.asarray(value)
    dest = torch_key_to_flax(key, arr.ndim)
    if dest is None:
      continue
    collection, path = dest
    if path[-1] == "kernel":
      arr = arr.T if arr.ndim == 2 else np.transpose(arr, _kernel_perm(arr.ndim))
    # Always copy: `tensor.numpy()` shares memory with torch buffers that torch may update in place.
    _set(out.setdefault(collection, {}), path, np.array(arr, order="C", copy=True))
  return out


def flax_to_torch(variables: Mapping[str, Any]) -> dict[str, np.ndarray]:
  """Inverse of `torch_to_flax`: Flax variables -> torch-layout state dict (numpy arrays).

  Only the `params` and `batch_stats` collections are translated; others are ignored.
  """
  out: dict[str, np.ndarray] = {}
  for collection in ("params", "batch_stats"):
    for path, value in flatten(variables.get(collection, {})).items():
      arr = np.asarray(value)
      if collection == "params" and path[-1] == "kernel":
        if arr.ndim == 2:
          arr = arr.T
        elif arr.ndim >= 3:
          arr = np.transpose(arr, np.argsort(_kernel_perm(arr.ndim)))
      out[flax_path_to_torch_key(collection, path)] = np.array(arr, order="C", copy=True)
  return out


def assign(target_variables: Mapping[str, Any], converted: Mapping[str, Any], *,
           strict: bool = True) -> dict[str, dict]:
  """Checks `converted` against a Flax variables tree and returns it with the target's dtypes.

  Args:
    target_variables: the model's `init` output (or `jax.eval_shape` of it: only `.shape`/`.dtype`
      of the leaves are read). Collections other than `params` / `batch_stats` are ignored.
    converted: output of `torch_to_flax` (or any tree with the same structure).
    strict: if True, missing and unexpected entries are errors; if False, missing entries keep
      the target's value (which must then be concrete) and unexpected entries are ignored.
      Shape mismatches are always errors.

  Returns:
    `{'params': ..., 'batch_stats': ...}` (the latter only if the target has it), numpy leaves.

  Raises:
    ValueError: naming every missing / unexpected / mis-shaped entry by its torch key.
  """
  collections = [c for c in ("params", "batch_stats") if c in target_variables]
  flat_t = {(c,) + p: v for c in collections for p, v in flatten(target_variables[c]).items()}
  flat_c = {(c,) + p: v for c in converted for p, v in flatten(converted[c]).items()}

  def name(k):
    return flax_path_to_torch_key(k[0], k[1:])

  missing = sorted(name(k) for k in flat_t if k not in flat_c)
  unexpected = sorted(name(k) for k in flat_c if k not in flat_t)
  mis_shaped = sorted(
      f"{name(k)}: checkpoint {tuple(np.shape(flat_c[k]))} (flax layout) vs model "
      f"{tuple(flat_t[k].shape)}" for k in flat_t
      if k in flat_c and tuple(np.shape(flat_c[k])) != tuple(flat_t[k].shape))
  problems = []
  if strict and missing:
    problems.append(f"missing keys ({len(missing)}): {', '.join(missing)}")
  if strict and unexpected:
    problems.append(f"unexpected keys ({len(unexpected)}): {', '.join(unexpected)}")
  if mis_shaped:
    problems.append(f"shape mismatch ({len(mis_shaped)}): {'; '.join(mis_shaped)}")
  if problems:
    raise ValueError("checkpoint does not match the model:\n  " + "\n  ".join(problems))

  out = {}
  for k, t in flat_t.items():
    v = flat_c[k] if k in flat_c else t
    out[k] = np.asarray(v, dtype=t.dtype)
  return _unflatten(out)
