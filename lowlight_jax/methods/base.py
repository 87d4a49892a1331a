"""The method interface: what the trainer needs to know about a method.

A method owns its networks, says which parameter groups are trained (each with its own optimizer) and which
networks are frozen, and computes its losses as pure functions of arrays. The trainer never sees a network
directly.

Two ways to train, sharing everything else (mesh, shardings, checkpoints, metrics, resume):
  * single-network methods implement `loss(group, ...)`; the default `train_step` updates each group in the
    order of `groups` with `jax.value_and_grad` of that loss;
  * adversarial methods override `train_step` and share results between their groups' updates within one step
    (e.g. the discriminator update sees the fakes that the same step's generator forward produced, detached,
    computed once via `jax.vjp`); `StepContext.apply_gradients` is the one optimizer update they call per group.

Weights the user gives (released checkpoints, frozen towers) are declared by `weight_sources()`: the trainer
converts each once (cached with the source file's checksum), checks every key and shape against the abstract
variables, and places the arrays straight onto their shardings; only what no source provides is random-initialised.

Methods are found by module path: `lowlight_jax.methods.<config.method>` must define `Method`, a subclass of
`BaseMethod` constructed from the full config (see `load_method`); a dotted `config.method` (`pkg.module`) names
any importable module, e.g. a method that lives outside this package.
"""

from __future__ import annotations

import abc
import dataclasses
import importlib
import logging
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import optax

from lowlight_jax import errors
from lowlight_jax.models import policy as policy_lib

PyTree = Any
Batch = Mapping[str, jax.Array]


class Variables(dict):
  """Named pieces of a method's state, as returned by `BaseMethod.init`.

  Keys:
    params: {group_name: params} for every trained group (each gets its own optimizer).
    model_state: mutable non-trained collections (e.g. `batch_stats` of trained nets); may be empty.
    frozen: {tower_name: variables} of frozen networks (never in an optimizer, never checkpointed: they are
      re-created from the config's weight files or seed on every start).
  """


@dataclasses.dataclass(frozen=True)
class WeightSource:
  """Weights from the user's files for one subtree of a method's `Variables`.

  Attributes:
    target: path of the subtree, e.g. ("frozen", "uss") or ("params", "enhancer").
    files: the user's files the weights come from (their size, mtime and sha256 key the conversion cache).
    convert: abstract subtree (ShapeDtypeStructs) -> nested dict of numpy arrays under `target`. It may provide
      a part of the subtree (e.g. a backbone without its head); the rest is random-initialised. Every provided
      key must exist in the subtree with the same shape.
    converter: a name and version of the conversion (part of the cache key; bump it when `convert` changes).
    cache: whether the conversion cache keeps the result (False for sources that need no conversion, e.g. the
      params of another run's checkpoint).
  """
  target: tuple[str, ...]
  files: tuple[str, ...]
  convert: Callable[[PyTree], PyTree]
  converter: str
  cache: bool = True


def run_weight_source(workdir: str, group: str) -> WeightSource:
  """`init_from=RUN_DIR`: the params of trained group `group` from another run's newest checkpoint, restored
  non-strictly (`train.checkpoint.restore_params_group`): params that run lacks keep this run's initialisation,
  with a warning naming them (e.g. SKF blocks fine-tuned from a baseline run, as the authors start SNR-SKF from a
  baseline SNR-LLIE-Net)."""
  def convert(abstract):
    from lowlight_jax.train import checkpoint  # pylint: disable=g-import-not-at-top (train imports methods)
    params, missing = checkpoint.restore_params_group(workdir, group, abstract)
    if missing:
      tops = sorted({m.split("/")[0] for m in missing})
      logging.warning("init_from %s: %d '%s' params are not in that run and keep their initialisation (under %s)",
                      workdir, len(missing), group, ", ".join(tops))
    return params

  return WeightSource(target=("params", group), files=(workdir,), convert=convert, converter="run-params-v1",
                      cache=False)


@dataclasses.dataclass(frozen=True)
class StepContext:
  """What a method's `train_step` needs from the trainer: the per-group optimizers and the step number (a traced
  int32 scalar: the number of updates before this one; None outside the trainer's step)."""
  optimizers: Mapping[str, optax.GradientTransformation]
  step: jax.Array | None = None

  def apply_gradients(self, group: str, grads: PyTree, params: PyTree, opt_state: PyTree
                      ) -> tuple[PyTree, PyTree, dict[str, jax.Array], jax.Array]:
    """One optimizer update of `group` -> (new params, new opt state, {grad_norm}, all-finite flag)."""
    updates, opt_state = self.optimizers[group].update(grads, opt_state, params)
    finite = all_finite(grads)
    return optax.apply_updates(params, updates), opt_state, {"grad_norm": optax.global_norm(grads)}, finite


def all_finite(tree: PyTree) -> jax.Array:
  leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]
  return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)


@dataclasses.dataclass
class StepResult:
  """What `train_step` returns: new params and optimizer states of every group, new model state, scalar metrics
  (names are `<group>/<name>`) and whether every loss and gradient of the step was finite."""
  params: dict[str, PyTree]
  opt_state: dict[str, PyTree]
  model_state: PyTree
  metrics: dict[str, jax.Array]
  finite: jax.Array


class BaseMethod(abc.ABC):
  """Base class of all methods."""

  #: Trained parameter groups, in the order their updates are applied within one step.
  groups: tuple[str, ...] = ()
  #: Frozen towers that `enhance` reads; inference restores these and nothing else that is frozen.
  inference_towers: tuple[str, ...] = ()

  def __init__(self, config: ml_collections.ConfigDict):
    self.config = config
    #: The trainer-level mixed-precision and remat policy (compute_dtype, frozen_dtype, remat).
    self.policy = policy_lib.Policy.from_config(config)

  @abc.abstractmethod
  def init(self, rng: jax.Array, batch: Batch) -> Variables:
    """Creates all variables for a (per-device sized) example batch.

    The trainer only traces this (`jax.eval_shape`) for shapes and jits the parts no weight source provides, so
    a tower that weights replace is never random-initialised.
    """

  def loss(self, group: str, params: PyTree, model_state: PyTree, frozen: PyTree, batch: Batch,
           rng: jax.Array) -> tuple[jax.Array, tuple[dict[str, jax.Array], PyTree]]:
    """Loss to minimise w.r.t. `params[group]` (used by the default `train_step`).

    Args:
      group: which parameter group is being updated.
      params: {group: params} of ALL trained groups (the others are constants here).
      model_state: mutable collections; the updated version is returned.
      frozen: frozen networks' parameters.
      batch: global batch (sharded over the batch mesh axes).
      rng: per-step, per-group key.

    Returns:
      (scalar loss, (metrics dict of scalars, new model_state)).
    """
    raise NotImplementedError(f"{type(self).__name__} must implement loss() or override train_step()")

  def train_step(self, ctx: StepContext, params: dict[str, PyTree], opt_state: dict[str, PyTree],
                 model_state: PyTree, frozen: PyTree, batch: Batch, rng: jax.Array) -> StepResult:
    """One step of every group's update (traced inside the trainer's jitted, sharded step).

    Default: for each group in `groups` order, `value_and_grad` of `loss(group, ...)` and one optimizer update;
    later groups see the earlier groups' updated params. Override to share computation between groups.
    """
    params, opt_state = dict(params), dict(opt_state)
    metrics, finite = {}, jnp.array(True)
    for i, group in enumerate(self.groups):
      group_rng = jax.random.fold_in(rng, i)
      others = params

      def loss_fn(p, group=group, others=others, group_rng=group_rng):
        return self.loss(group, {**others, group: p}, model_state, frozen, batch, group_rng)

      (loss, (group_metrics, model_state)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params[group])
      params[group], opt_state[group], upd_metrics, ok = ctx.apply_gradients(group, grads, params[group],
                                                                             opt_state[group])
      finite = finite & jnp.isfinite(loss) & ok
      metrics[f"{group}/loss"] = loss
      metrics.update({f"{group}/{k}": v for k, v in {**upd_metrics, **group_metrics}.items()})
    return StepResult(params=params, opt_state=opt_state, model_state=model_state, metrics=metrics, finite=finite)

  @abc.abstractmethod
  def enhance(self, params: PyTree, model_state: PyTree, frozen: PyTree, images: jax.Array
              ) -> dict[str, jax.Array]:
    """Inference on NHWC [0,1] images of any size; returns at least {'enhanced': same shape}.

    `frozen` holds only the towers named in `inference_towers` when called from a restored run.
    """

  def weight_sources(self) -> Sequence[WeightSource]:
    """Weights named in the config (released checkpoints, frozen towers); default: none."""
    return ()

  def eval_images(self, outputs: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
    """Extra NHWC images in [0,1] worth writing at evaluation time (e.g. learned factor maps)."""
    del outputs
    return {}


def load_method(config: ml_collections.ConfigDict) -> BaseMethod:
  """Imports `lowlight_jax.methods.<config.method>` (or a dotted module path) and builds its `Method`."""
  name = config.method
  module_name = name if "." in name else f"lowlight_jax.methods.{name}"
  try:
    module = importlib.import_module(module_name)
  except ModuleNotFoundError as e:
    if e.name is not None and module_name.startswith(e.name):
      raise errors.ConfigError(f"method: unknown method {name!r} (no module {module_name}); "
                               f"`lowlight methods` lists the known ones") from e
    raise
  if not hasattr(module, "Method"):
    raise errors.ConfigError(f"method: module {module_name} defines no `Method` class")
  return module.Method(config)
