"""A thin Orbax wrapper: model state and data-iterator state saved together, restored onto shardings.

Orbax writes each step into a temporary directory and renames it when complete, so a crash mid-write never
leaves a checkpoint that `latest_step()` would pick up: the previous one stays the newest restorable step.
"""

from __future__ import annotations

import os
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp
from flax import traverse_util

from lowlight_jax import errors
from lowlight_jax.convert import layout
from lowlight_jax.train.state import TrainState

PyTree = Any


class Checkpointer:
  """Saves/restores {'state': train state pytree, 'data': grain iterator} under `<workdir>/checkpoints`."""

  def __init__(self, workdir: str, *, max_to_keep: int = 3, save_interval_steps: int = 1,
               async_save: bool = True):
    self.directory = os.path.join(os.path.abspath(workdir), "checkpoints")
    options = ocp.CheckpointManagerOptions(
        max_to_keep=max_to_keep,
        save_interval_steps=save_interval_steps,
        enable_async_checkpointing=async_save,
        create=True,
    )
    self.manager = ocp.CheckpointManager(self.directory, options=options)

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self.manager.all_steps())

  def save(self, step: int, state: PyTree, data_iterator: Any | None = None, *, force: bool = False) -> bool:
    items = {"state": ocp.args.StandardSave(state)}
    if data_iterator is not None:
      items["data"] = grain.checkpoint.CheckpointSave(data_iterator)
    return self.manager.save(step, args=ocp.args.Composite(**items), force=force)

  def restore(self, step: int | None, abstract_state: PyTree, data_iterator: Any | None = None
              ) -> tuple[PyTree, Any]:
    """Restores `state` onto `abstract_state` (ShapeDtypeStructs carrying shardings) and the iterator in place."""
    step, _ = self._state_dir(step)
    items = {"state": ocp.args.StandardRestore(abstract_state)}
    # The data item exists for runs that saved their iterator (item_metadata cannot tell without handlers).
    has_data = os.path.isdir(os.path.join(self.directory, str(step), "data"))
    if data_iterator is not None and has_data:
      items["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
    restored = self.manager.restore(step, args=ocp.args.Composite(**items))
    return restored["state"], data_iterator

  def restore_state_only(self, step: int | None, abstract_state: PyTree) -> PyTree:
    step, _ = self._state_dir(step)
    restored = self.manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state)))
    return restored["state"]

  def _state_dir(self, step: int | None) -> tuple[int, str]:
    step = self.latest_step() if step is None else step
    if step is None:
      raise errors.CheckpointError(f"no checkpoint in {self.directory}: has this run saved a step yet?")
    path = os.path.join(self.directory, str(step), "state")
    if not os.path.isdir(path):
      raise errors.CheckpointError(f"no checkpoint of step {step} in {self.directory} (steps: {self.all_steps()})")
    return step, path

  def state_metadata(self, step: int | None) -> PyTree:
    """The saved train state's tree of array metadata (`.shape`, `.dtype`), without reading any array."""
    _, path = self._state_dir(step)
    return ocp.StandardCheckpointer().metadata(path).item_metadata.tree

  def restore_partial(self, step: int | None, abstract_state: TrainState) -> TrainState:
    """Restores only the parts of the train state present in `abstract_state` (e.g. without the optimizer
    state: inference), each array straight onto the sharding of its ShapeDtypeStruct."""
    _, path = self._state_dir(step)
    item = {k: v for k, v in {"step": abstract_state.step, "params": abstract_state.params,
                               "model_state": abstract_state.model_state, "rng": abstract_state.rng}.items()
            if jax.tree.leaves(v)}
    restore_args = ocp.checkpoint_utils.construct_restore_args(item)
    with ocp.PyTreeCheckpointer() as checkpointer:
      restored = checkpointer.restore(path, args=ocp.args.PyTreeRestore(item, restore_args=restore_args,
                                                                       partial_restore=True))
    return abstract_state.replace(step=restored["step"], params=restored.get("params", abstract_state.params),
                                  model_state=restored.get("model_state", abstract_state.model_state),
                                  rng=restored["rng"], opt_state={})

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()


def abstract_like(tree: PyTree) -> PyTree:
  """ShapeDtypeStructs (with shardings) of a concrete or abstract tree, for restoring onto."""
  return jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)), tree)


def is_run_dir(path: str) -> bool:
  """Whether `path` is a run directory (it has a `checkpoints/` folder), as opposed to a weights file."""
  return os.path.isdir(os.path.join(path, "checkpoints"))


def restore_params_group(workdir: str, group: str, abstract: PyTree, *, step: int | None = None
                         ) -> tuple[dict, list[str]]:
  """Another run's trained params of one group, for initialising this run from it (`init_from=RUN_DIR`).

  A non-strict load, like PyTorch's `load_state_dict(strict=False)` of a pretrained network: the keys both the
  run's checkpoint (newest step, or `step`) and `abstract` (this run's ShapeDtypeStructs of the group) have are
  restored onto the abstract leaves' shardings, and the keys only `abstract` has are returned so the caller can
  say they keep their initialisation (e.g. SKF's SE blocks when starting from a baseline run). Nothing in
  `workdir` is written.

  Returns:
    (nested dict of host arrays for the shared keys, sorted '/'-joined paths of the keys `abstract` alone has).

  Raises:
    errors.CheckpointError: `workdir` has no checkpoint, or none with params of `group`.
    errors.WeightsError: a key of the run that `abstract` lacks (another network), or a different shape.
  """
  if not is_run_dir(workdir):
    raise errors.CheckpointError(f"{workdir} is not a run directory (no checkpoints/ folder in it)")
  checkpointer = Checkpointer(workdir, async_save=False)
  try:
    step, path = checkpointer._state_dir(step)  # pylint: disable=protected-access
    meta = checkpointer.state_metadata(step)
  finally:
    checkpointer.close()
  saved = meta.get("params", {}).get(group) if isinstance(meta.get("params"), dict) else None
  if not saved:
    raise errors.CheckpointError(f"{path}: the run has no params of group '{group}'")

  saved_flat, want_flat = layout.flatten(saved), layout.flatten(dict(abstract))
  extra = sorted("/".join(k) for k in saved_flat if k not in want_flat)
  if extra:
    raise errors.WeightsError(f"{workdir}: its '{group}' params are another network (keys this model lacks: "
                              f"{', '.join(extra[:6])})")
  shapes = sorted(f"{'/'.join(k)}: run {tuple(v.shape)} vs model {tuple(want_flat[k].shape)}"
                  for k, v in saved_flat.items() if tuple(v.shape) != tuple(want_flat[k].shape))
  if shapes:
    raise errors.WeightsError(f"{workdir}: shape mismatch in '{group}': {'; '.join(shapes[:6])}")
  item = {"params": {group: traverse_util.unflatten_dict({
      k: jax.ShapeDtypeStruct(want_flat[k].shape, want_flat[k].dtype, sharding=getattr(want_flat[k], "sharding", None))
      for k in saved_flat})}}
  restore_args = ocp.checkpoint_utils.construct_restore_args(item)
  with ocp.PyTreeCheckpointer() as reader:
    restored = reader.restore(path, args=ocp.args.PyTreeRestore(item, restore_args=restore_args,
                                                                partial_restore=True))
  missing = sorted("/".join(k) for k in want_flat if k not in saved_flat)
  return jax.device_get(restored["params"][group]), missing
