"""All mesh and sharding logic lives here; models never see a mesh.

The mesh has a `data` axis (batch) and optionally further axes (e.g. `fsdp`, `model`) whose sizes come from
config. Parameters are replicated unless a regex rule in `config.sharding.rules` names a partition spec for them.
Batches arrive as process-local numpy arrays and become global arrays sharded over `data`.
"""

from __future__ import annotations

import re
from typing import Any, Sequence

import jax
import ml_collections
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

PyTree = Any


def make_mesh(mesh_cfg: ml_collections.ConfigDict | dict, devices: Sequence[jax.Device] | None = None) -> Mesh:
  """Builds a mesh from {'axis': size}; one size may be -1 (= all remaining devices).

  Axis order follows the config; `data` should come first so batch shards are contiguous per host.
  """
  devices = list(jax.devices() if devices is None else devices)
  names = list(mesh_cfg.keys())
  sizes = [int(mesh_cfg[n]) for n in names]
  if "data" not in names:
    raise ValueError(f"mesh: needs a 'data' axis, got axes {names}")
  if sizes.count(-1) > 1:
    raise ValueError(f"mesh: at most one axis may be -1, got {dict(zip(names, sizes))}")
  known = int(np.prod([s for s in sizes if s != -1]))
  if len(devices) % known:
    raise ValueError(f"mesh: {dict(zip(names, sizes))} does not divide {len(devices)} devices")
  sizes = [len(devices) // known if s == -1 else s for s in sizes]
  if int(np.prod(sizes)) != len(devices):
    raise ValueError(f"mesh: {dict(zip(names, sizes))} uses {int(np.prod(sizes))} of {len(devices)} devices")
  try:
    dev_array = jax.experimental.mesh_utils.create_device_mesh(sizes, devices)
  except Exception:  # Fake CPU devices have no topology; a plain reshape is correct there.
    dev_array = np.asarray(devices).reshape(sizes)
  return Mesh(dev_array, tuple(names))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_axes(mesh: Mesh) -> tuple[str, ...]:
  """Mesh axes the batch dimension is split over (`data` plus `fsdp` when present)."""
  return tuple(a for a in ("data", "fsdp") if a in mesh.axis_names)


def batch_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P(batch_axes(mesh)))


def batch_divisor(mesh: Mesh) -> int:
  return int(np.prod([mesh.shape[a] for a in batch_axes(mesh)]))


def _path_str(path) -> str:
  return "/".join(str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k)))) for k in path)


def param_shardings(tree: PyTree, mesh: Mesh, rules: Sequence[tuple[str, Sequence[str | None]]] = ()) -> PyTree:
  """Per-leaf NamedSharding: the first regex rule matching the leaf path ('a/b/kernel') wins.

  A rule's spec names mesh axes per array dimension (None = not split); a dimension that the axis size does not
  divide falls back to unsplit, so small leaves stay replicated. No match -> replicated.
  """
  compiled = [(re.compile(pattern), tuple(spec)) for pattern, spec in rules]

  def one(path, leaf):
    name = _path_str(path)
    shape = getattr(leaf, "shape", ())
    for pattern, spec in compiled:
      if pattern.search(name):
        spec = spec[: len(shape)]
        fixed = []
        for dim, axis in zip(shape, spec):
          ok = axis is not None and axis in mesh.axis_names and dim % mesh.shape[axis] == 0
          fixed.append(axis if ok else None)
        return NamedSharding(mesh, P(*fixed))
    return NamedSharding(mesh, P())

  return jax.tree_util.tree_map_with_path(one, tree)


def global_batch(local: PyTree, mesh: Mesh) -> PyTree:
  """Assembles process-local numpy batches into global arrays sharded over the batch axes.

  Works unchanged on one host and on many: every process passes its own slice.
  """
  sharding = batch_sharding(mesh)

  def one(x):
    x = np.asarray(x)
    global_shape = (x.shape[0] * jax.process_count(),) + x.shape[1:]
    return jax.make_array_from_process_local_data(sharding, x, global_shape)

  return jax.tree.map(one, local)
