"""All mesh and sharding logic lives here; models never see a mesh.

The mesh has a `data` axis (batch) and optionally further axes (e.g. `fsdp`, `model`) whose sizes come from
config. Every array the trainer places (trained params, optimizer state, frozen towers) gets its sharding here:
  1. the first regex rule of `config.sharding.rules` that matches its path ('frozen/uss/params/.../kernel') names
     a partition spec;
  2. otherwise, with an `fsdp` mesh axis of size > 1 (`config.sharding.fsdp_axis`), a tensor of at least
     `config.sharding.fsdp_min_size` elements is split along its largest dimension that the axis size divides;
  3. otherwise it is replicated.
Nothing large is replicated silently: every tensor of at least `fsdp_min_size` elements that stays replicated
(no divisible dimension, or a rule whose axis does not divide) is logged with its path and shape.
Batches arrive as process-local numpy arrays and become global arrays sharded over the batch axes.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from lowlight_jax.models import policy

PyTree = Any
logger = logging.getLogger(__name__)


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


def inference_mesh(mesh_cfg: ml_collections.ConfigDict | dict, devices: Sequence[jax.Device] | None = None,
                   fsdp_axis: str = "fsdp") -> Mesh:
  """The run's mesh where this machine's devices fit it; else the same axes over the devices there are: the FSDP
  axis over all of them (every other axis 1), or `data` over all when the mesh has no FSDP axis. A run trained on
  a pod is enhanced on a workstation this way (the checkpoint is restored onto the new shardings)."""
  try:
    return make_mesh(mesh_cfg, devices)
  except ValueError:
    names = list(mesh_cfg.keys())
    fit = {n: 1 for n in names}
    fit[fsdp_axis if fsdp_axis in names else "data"] = -1
    mesh = make_mesh(fit, devices)
    logger.info("mesh %s does not fit %d device(s); inference uses %s", dict(mesh_cfg), mesh.devices.size,
                dict(mesh.shape))
    return mesh


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_axes(mesh: Mesh | jax.sharding.AbstractMesh) -> tuple[str, ...]:
  """Mesh axes the batch dimension is split over (`data` plus `fsdp` when present)."""
  return tuple(a for a in ("data", "fsdp") if a in mesh.axis_names)


def batch_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P(batch_axes(mesh)))


def batch_divisor(mesh: Mesh | jax.sharding.AbstractMesh) -> int:
  return int(np.prod([mesh.shape[a] for a in batch_axes(mesh)]))


def constrain_batch(x: jax.Array, axis: int = 0) -> jax.Array:
  """`x` split along `axis` over the batch mesh axes, inside a step traced under the trainer's mesh
  (`jax.sharding.use_abstract_mesh`); unchanged outside one, or when that dimension is not divisible.

  XLA's partitioner does not always keep a batch split through a merge of the batch with another axis (a
  (2, B) -> (2B) reshape, a concatenation along the batch) or through a loop body: it may replicate the compute,
  or keep it split over `data` only and repeat it on every `fsdp` device. A method pins its activations with this
  where that happens (models never see a mesh)."""
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty:
    return x
  size = batch_divisor(mesh)
  if size == 1 or x.shape[axis] % size:
    return x
  return jax.lax.with_sharding_constraint(x, P(*([None] * axis), batch_axes(mesh)))


def gathered_per_iteration(tree: PyTree, index: jax.Array, sharding_cfg: ml_collections.ConfigDict) -> PyTree:
  """`tree` (FSDP-sharded frozen weights a loop body closes over) made to depend on the loop's `index`: each leaf
  plus 0 * index (exact values), kept on its shard (`plan_shardings` with `sharding_cfg`'s rules, as the trainer
  placed it). Inside a step traced under a mesh whose fsdp axis has size > 1 only; unchanged otherwise.

  A loop body's weights are loop-invariant, so XLA's loop-invariant code motion hoists their FSDP all-gathers
  (and any cast of the gathered weights) out of the loop: every tower used in a `lax.scan` / `lax.map` body is
  then held whole on every device for the whole step, which is what FSDP is meant to avoid. Depending on the
  index keeps each gather in the body that uses it, at the cost of one add per weight shard and iteration."""
  mesh = jax.sharding.get_abstract_mesh()
  axis = sharding_cfg.fsdp_axis
  if mesh.empty or not axis or axis not in mesh.axis_names or mesh.shape[axis] == 1:
    return tree
  plan = plan_shardings(tree, mesh, [tuple(r) for r in sharding_cfg.rules], fsdp_axis=axis,
                        fsdp_min_size=int(sharding_cfg.fsdp_min_size))
  zero = jnp.asarray(index).astype(jnp.float32) * 0.0  # not folded: 0.0 * x is not 0 for every float x
  return jax.tree.map(lambda w, sharding: jax.lax.with_sharding_constraint(w, sharding.spec),
                      policy.plus_zero(tree, zero), plan.shardings)


def _path_str(path) -> str:
  return "/".join(str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k)))) for k in path)


@dataclasses.dataclass(frozen=True)
class ShardingPlan:
  """Per-leaf shardings and the large tensors that stayed replicated (path, shape, why)."""
  shardings: PyTree
  replicated_large: list[tuple[str, tuple[int, ...], str]]


def plan_shardings(tree: PyTree, mesh: Mesh, rules: Sequence[tuple[str, Sequence[str | None]]] = (), *,
                   fsdp_axis: str | None = "fsdp", fsdp_min_size: int = 2**20) -> ShardingPlan:
  """Shardings of every leaf of `tree` (arrays or ShapeDtypeStructs): explicit rules, then the automatic FSDP rule
  (see the module docstring), then replication. A rule's dimension that its axis size does not divide is left
  unsplit."""
  compiled = [(re.compile(pattern), tuple(spec)) for pattern, spec in rules]
  fsdp_size = mesh.shape[fsdp_axis] if fsdp_axis and fsdp_axis in mesh.axis_names else 1
  large: list[tuple[str, tuple[int, ...], str]] = []

  def one(path, leaf):
    name = _path_str(path)
    shape = tuple(getattr(leaf, "shape", ()))
    size = int(np.prod(shape)) if shape else 1
    for pattern, spec in compiled:
      if pattern.search(name):
        spec = spec[: len(shape)]
        fixed, dropped = [], []
        for dim, axis in zip(shape, spec):
          ok = axis is not None and axis in mesh.axis_names and dim % mesh.shape[axis] == 0
          fixed.append(axis if ok else None)
          if axis is not None and not ok:
            dropped.append(axis)
        if dropped and size >= fsdp_min_size:
          large.append((name, shape, f"rule {pattern.pattern!r}: axis {dropped} does not divide"))
        return NamedSharding(mesh, P(*fixed))
    if fsdp_size > 1 and size >= fsdp_min_size:
      for dim_index in sorted(range(len(shape)), key=lambda i: -shape[i]):
        if shape[dim_index] % fsdp_size == 0:
          spec = [None] * len(shape)
          spec[dim_index] = fsdp_axis
          return NamedSharding(mesh, P(*spec))
      large.append((name, shape, f"no dimension divisible by {fsdp_axis}={fsdp_size}"))
    return NamedSharding(mesh, P())

  shardings = jax.tree_util.tree_map_with_path(one, tree)
  return ShardingPlan(shardings=shardings, replicated_large=large)


def param_shardings(tree: PyTree, mesh: Mesh, rules: Sequence[tuple[str, Sequence[str | None]]] = (), *,
                    fsdp_axis: str | None = "fsdp", fsdp_min_size: int = 2**20, what: str = "") -> PyTree:
  """`plan_shardings(...).shardings`, logging every large tensor that stays replicated."""
  plan = plan_shardings(tree, mesh, rules, fsdp_axis=fsdp_axis, fsdp_min_size=fsdp_min_size)
  for name, shape, why in plan.replicated_large:
    logger.warning("sharding%s: %s %s stays replicated (%s)", f" ({what})" if what else "", name, shape, why)
  return plan.shardings


def from_config(tree: PyTree, mesh: Mesh, sharding_cfg: ml_collections.ConfigDict, what: str = "") -> PyTree:
  """`param_shardings` with `config.sharding` (rules, fsdp_axis, fsdp_min_size)."""
  return param_shardings(tree, mesh, [tuple(r) for r in sharding_cfg.rules], fsdp_axis=sharding_cfg.fsdp_axis,
                         fsdp_min_size=int(sharding_cfg.fsdp_min_size), what=what)


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
