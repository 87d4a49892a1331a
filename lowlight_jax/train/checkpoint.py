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

from lowlight_jax import errors
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
