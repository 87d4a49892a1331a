"""Variables at scale: built from abstract shapes, user weights loaded straight onto their shardings.

`materialize` turns a method's abstract variables (ShapeDtypeStructs carrying shardings) into placed arrays:
  * every leaf a `WeightSource` provides is placed with `jax.make_array_from_callback`: each device's callback
    reads only that device's slice, so no host holds a copy per device and no `device_get` of a tower ever
    happens. From the conversion cache (a memory-mapped safetensors file) a process reads only the slices its
    devices hold; on a cache miss each process converts once, holding one host copy (process 0 writes the cache);
  * only the leaves no source provides are random-initialised, by one jitted init whose outputs are exactly
    those leaves (XLA drops the rest), placed on their shardings by `out_shardings`;
  * frozen towers' floating leaves take the storage dtype (`frozen_dtype`, e.g. bfloat16).

The conversion cache: a source's files are converted once into `<cache>/<key>.safetensors`, where the key hashes
the converter name and each file's real path, size and mtime; the file's sha256 is recorded in the cache
file's metadata. A resume (same files) reads the cache instead of re-converting.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import tempfile
from typing import Any, Callable, Mapping, Sequence

import jax
import numpy as np

from lowlight_jax import errors
from lowlight_jax.convert import layout
from lowlight_jax.convert import weights as convert_weights
from lowlight_jax.methods import base

PyTree = Any
logger = logging.getLogger(__name__)
ENV_CACHE = "LOWLIGHT_CACHE"
_SEP = "/"


def default_cache_dir(configured: str | None = None) -> str:
  if configured:
    return os.path.expanduser(configured)
  root = os.environ.get(ENV_CACHE) or os.path.join(os.path.expanduser("~"), ".cache", "lowlight_jax")
  return os.path.join(root, "converted")


def _key(entry) -> str:
  return str(getattr(entry, "key", getattr(entry, "name", getattr(entry, "idx", entry))))


def flatten_tree(tree: PyTree) -> tuple[list[tuple[str, ...]], list[Any], Any]:
  """Any pytree -> (path tuples, leaves, treedef); empty containers survive in the treedef."""
  with_path, treedef = jax.tree_util.tree_flatten_with_path(tree)
  return [tuple(_key(e) for e in path) for path, _ in with_path], [leaf for _, leaf in with_path], treedef


def unflatten(flat: Mapping[tuple[str, ...], Any]) -> dict:
  out: dict = {}
  for path, v in flat.items():
    node = out
    for k in path[:-1]:
      node = node.setdefault(k, {})
    node[path[-1]] = v
  return out


def _subtree(tree: Mapping, path: Sequence[str]) -> Any:
  node = tree
  for k in path:
    if not isinstance(node, Mapping) or k not in node:
      raise errors.WeightsError(f"weights for {_SEP.join(path)}: the method has no such part")
    node = node[k]
  return node


def _file_key(path: str) -> dict[str, Any]:
  if not os.path.isfile(path):
    raise FileNotFoundError(f"weights file {path} does not exist")
  st = os.stat(path)
  return {"path": os.path.realpath(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def cache_key(source: base.WeightSource) -> str:
  ident = {"converter": source.converter, "target": list(source.target),
           "files": [_file_key(f) for f in source.files]}
  return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:32]


class _Reader:
  """A leaf in the conversion cache: slices are read from the memory-mapped file on demand."""

  def __init__(self, handle, name: str, shape: tuple[int, ...]):
    self.handle, self.name, self.shape = handle, name, shape

  def __getitem__(self, index) -> np.ndarray:
    if not self.shape:
      return np.asarray(self.handle.get_tensor(self.name))
    return np.asarray(self.handle.get_slice(self.name)[index])


@dataclasses.dataclass
class Converted:
  """One source's leaves, keyed by their full path in the variables tree (target + subtree path)."""
  leaves: dict[tuple[str, ...], Any]  # numpy arrays or _Reader
  cache_file: str | None
  from_cache: bool


def convert_source(source: base.WeightSource, abstract_variables: Mapping, cache_dir: str | None) -> Converted:
  """Converts (or reads from the cache) one source; checks every key and shape against the abstract tree."""
  abstract_sub = _subtree(abstract_variables, source.target)
  sub_keys, sub_leaves, _ = flatten_tree(abstract_sub)
  flat_abstract = dict(zip(sub_keys, sub_leaves))
  path = os.path.join(cache_dir, cache_key(source) + ".safetensors") if cache_dir and source.cache else None
  if path and os.path.isfile(path):
    from safetensors import safe_open  # pylint: disable=g-import-not-at-top
    handle = safe_open(path, framework="numpy")
    leaves = {tuple(name.split(_SEP)): _Reader(handle, name, tuple(handle.get_slice(name).get_shape()))
              for name in handle.keys()}
    from_cache = True
  else:
    try:
      converted = source.convert(abstract_sub)
    except (ValueError, KeyError) as e:
      if isinstance(e, errors.UserError):
        raise
      raise errors.WeightsError(f"{', '.join(source.files)}: {errors.one_line(e)}") from e
    leaves = {k: np.asarray(v) for k, v in layout.flatten(converted).items()}
    from_cache = False
  unexpected = sorted(_SEP.join(k) for k in leaves if k not in flat_abstract)
  mis_shaped = sorted(f"{_SEP.join(k)}: file {tuple(v.shape)} vs model {tuple(flat_abstract[k].shape)}"
                      for k, v in leaves.items() if k in flat_abstract
                      and tuple(v.shape) != tuple(flat_abstract[k].shape))
  if unexpected or mis_shaped:
    where = path if from_cache else ", ".join(source.files)
    problems = ([f"unexpected keys under {_SEP.join(source.target)}: {', '.join(unexpected[:8])}"] if unexpected
                else []) + ([f"shape mismatch: {'; '.join(mis_shaped[:8])}"] if mis_shaped else [])
    raise errors.WeightsError(f"{where} does not fit the model: {' | '.join(problems)}")
  if path and not from_cache and jax.process_index() == 0:
    _write_cache(path, source, leaves)
  full = {tuple(source.target) + k: v for k, v in leaves.items()}
  return Converted(leaves=full, cache_file=path, from_cache=from_cache)


def _write_cache(path: str, source: base.WeightSource, leaves: Mapping[tuple[str, ...], np.ndarray]) -> None:
  """Writes the converted leaves atomically (temp file beside the target, then rename); never fails the run."""
  from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top
  try:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    meta = {"converter": source.converter, "target": _SEP.join(source.target),
            "files": json.dumps([{**_file_key(f), "sha256": convert_weights.file_sha256(f)} for f in source.files])}
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".safetensors", dir=os.path.dirname(path))
    os.close(fd)
    try:
      save_file({_SEP.join(k): np.ascontiguousarray(v) for k, v in leaves.items()}, tmp, metadata=meta)
      os.replace(tmp, path)
    finally:
      if os.path.exists(tmp):
        os.remove(tmp)
    logger.info("cached converted weights of %s in %s", ", ".join(source.files), path)
  except OSError as e:
    logger.warning("could not cache converted weights in %s: %s", path, e)


def _place(reader: Any, abstract: jax.ShapeDtypeStruct) -> jax.Array:
  dtype = abstract.dtype

  def cb(index):
    return np.asarray(reader[index], dtype=dtype)

  return jax.make_array_from_callback(tuple(abstract.shape), abstract.sharding, cb)


def materialize(abstract: PyTree, init_fn: Callable[[jax.Array], PyTree], rng: jax.Array,
                sources: Sequence[base.WeightSource] = (), cache_dir: str | None = None
                ) -> tuple[PyTree, dict[str, Any]]:
  """Placed arrays for an abstract nested-dict tree (leaves: ShapeDtypeStructs with shardings).

  Args:
    abstract: the tree to build, e.g. {'params': ..., 'model_state': ..., 'frozen': ...}; leaf dtypes are the
      storage dtypes.
    init_fn: rng -> a tree with (at least) the same structure (the random initialisation).
    rng: key for `init_fn`.
    sources: weights from the user's files; their `target`s index into `abstract`.
    cache_dir: the conversion cache (None: convert every time, cache nothing).

  Returns:
    (tree of jax.Arrays, report {'loaded': n leaves, 'initialised': n, 'from_cache': [bool per source]}).
  """
  keys, abstract_leaves, treedef = flatten_tree(abstract)
  flat_abstract = dict(zip(keys, abstract_leaves))
  provided: dict[tuple[str, ...], Any] = {}
  from_cache = []
  for source in sources:
    conv = convert_source(source, abstract, cache_dir)
    provided.update(conv.leaves)
    from_cache.append(conv.from_cache)
  out = {k: _place(provided[k], a) for k, a in flat_abstract.items() if k in provided}
  missing = [k for k in flat_abstract if k not in provided]
  if missing:
    def init_missing(r):
      init_keys, init_leaves, _ = flatten_tree(init_fn(r))
      flat = dict(zip(init_keys, init_leaves))
      return [flat[k].astype(flat_abstract[k].dtype) for k in missing]

    values = jax.jit(init_missing, out_shardings=[flat_abstract[k].sharding for k in missing])(rng)
    out.update(zip(missing, values))
  report = {"loaded": len(flat_abstract) - len(missing), "initialised": len(missing), "from_cache": from_cache}
  return jax.tree_util.tree_unflatten(treedef, [out[k] for k in keys]), report


def converted_variables(sources: Sequence[base.WeightSource], abstract: PyTree) -> dict:
  """The sources' converted leaves as one nested dict of numpy arrays (checked, not placed); for tests and tools."""
  flat = {}
  for source in sources:
    conv = convert_source(source, abstract, None)
    flat.update({k: np.asarray(v) for k, v in conv.leaves.items()})
  return unflatten(flat)
