"""The method interface: what the trainer needs to know about a method.

A method owns its networks, says which parameter groups are trained (each with its own optimizer, updated in
order inside one jitted step, so generator/discriminator alternation fits) and which networks are frozen, and
computes its losses as pure functions of arrays. The trainer never sees a network directly.

Methods are found by module path: `lowlight_jax.methods.<config.method>` must define `Method`, a subclass of
`BaseMethod` constructed from the full config (see `load_method`).
"""

from __future__ import annotations

import abc
import importlib
from typing import Any, Mapping

import jax
import ml_collections

PyTree = Any
Batch = Mapping[str, jax.Array]


class Variables(dict):
  """Named pieces of a method's state, as returned by `BaseMethod.init`.

  Keys:
    params: {group_name: params} for every trained group (each gets its own optimizer).
    model_state: mutable non-trained collections (e.g. `batch_stats` of trained nets); may be empty.
    frozen: parameters of frozen networks (never in an optimizer, never checkpointed: they are re-created from
      the config's weight files or seed on every start).
  """


class BaseMethod(abc.ABC):
  """Base class of all methods."""

  #: Trained parameter groups, in the order their updates are applied within one step.
  groups: tuple[str, ...] = ()

  def __init__(self, config: ml_collections.ConfigDict):
    self.config = config

  @abc.abstractmethod
  def init(self, rng: jax.Array, batch: Batch) -> Variables:
    """Creates all variables for a (per-device sized) example batch."""

  @abc.abstractmethod
  def loss(self, group: str, params: PyTree, model_state: PyTree, frozen: PyTree, batch: Batch,
           rng: jax.Array) -> tuple[jax.Array, tuple[dict[str, jax.Array], PyTree]]:
    """Loss to minimise w.r.t. `params[group]`.

    Args:
      group: which parameter group is being updated.
      params: {group: params} of ALL trained groups (the others are constants here).
      model_state: mutable collections; the updated version is returned.
      frozen: frozen networks' parameters.
      batch: global batch (sharded over the `data` mesh axis).
      rng: per-step, per-group key.

    Returns:
      (scalar loss, (metrics dict of scalars, new model_state)).
    """

  @abc.abstractmethod
  def enhance(self, params: PyTree, model_state: PyTree, frozen: PyTree, images: jax.Array
              ) -> dict[str, jax.Array]:
    """Inference on NHWC [0,1] images of any size; returns at least {'enhanced': same shape}."""

  def load_pretrained(self, variables: Variables) -> Variables:
    """Replaces initial variables with user-supplied weights named in the config (default: no-op)."""
    return variables

  def eval_images(self, outputs: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
    """Extra NHWC images in [0,1] worth writing at evaluation time (e.g. learned factor maps)."""
    del outputs
    return {}


def load_method(config: ml_collections.ConfigDict) -> BaseMethod:
  """Imports `lowlight_jax.methods.<config.method>` and builds its `Method`."""
  name = config.method
  try:
    module = importlib.import_module(f"lowlight_jax.methods.{name}")
  except ModuleNotFoundError as e:
    if e.name == f"lowlight_jax.methods.{name}":
      raise ValueError(f"Unknown method {name!r}: no module lowlight_jax.methods.{name}") from e
    raise
  return module.Method(config)
