"""The train state: a plain pytree of trained params, their optimizer states, mutable collections and the RNG."""

from __future__ import annotations

from typing import Any

import flax
import jax

PyTree = Any


@flax.struct.dataclass
class TrainState:
  """Everything that changes during training (and so is checkpointed).

  Frozen networks are deliberately NOT here: they never change, can be large (segmentation nets, UNets), and are
  rebuilt from the config on every start.
  """
  step: jax.Array  # int32 scalar
  params: dict[str, PyTree]  # {group: params}
  opt_state: dict[str, PyTree]  # {group: optax state}
  model_state: PyTree  # e.g. batch_stats of trained nets
  rng: jax.Array  # uint32[2] base key; per-step keys are fold_in(rng, step)
