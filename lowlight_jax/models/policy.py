"""One mixed-precision and rematerialisation policy for every method, read from the trainer-level config.

Config fields (every method's config has them, see `configs/common.py:trainer_fields`):
  compute_dtype: dtype networks compute in ('float32', or 'bfloat16' on accelerators). Trained params, optimizer
    state, losses and metrics stay float32.
  frozen_dtype: storage dtype of frozen towers' floating-point weights ('float32' or 'bfloat16': half the memory
    of a billion-parameter tower); they are cast to `compute_dtype` where used.
  remat: 'none' | 'full' (recompute everything in the backward pass) | 'dots' (keep matmul/conv outputs,
    recompute the rest) | 'dots_no_batch' (keep only matmuls without batch dims). Methods apply it to the
    networks they differentiate through: `policy.remat_fn(fn)` around a function, `policy.remat_module(cls)`
    around a Flax module class (per block).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from lowlight_jax import errors

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}
REMAT = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.dots_saveable,
    "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


def plus_zero(tree: Any, zero: jax.Array) -> Any:
  """Every floating leaf of `tree` plus the scalar `zero` (cast to the leaf's dtype; other leaves unchanged).
  With `zero` computed as `x * 0.0` from a value XLA cannot fold, the values are exact and each leaf becomes
  data-dependent on `x`: the one ordering every backend keeps (XLA's CPU pipeline drops optimization barriers)."""
  return jax.tree.map(lambda t: t + zero.astype(t.dtype) if jnp.issubdtype(t.dtype, jnp.floating) else t, tree)


def _tied_to_params(params_t: Any, args_t: tuple) -> tuple:
  """The input cotangents `args_t` made data-dependent on every parameter cotangent (plus 0 * their sum): exact
  values, but no input cotangent exists before the layer's parameter cotangents do."""
  leaves = [l for l in jax.tree.leaves(params_t) if jnp.issubdtype(l.dtype, jnp.floating)]
  if not leaves:
    return args_t
  return plus_zero(args_t, sum(jnp.sum(l.astype(jnp.float32)) for l in leaves) * 0.0)


def ordered_remat(module_cls: type[nn.Module], policy: Any = None) -> type[nn.Module]:
  """A subclass of `module_cls` whose `__call__` is rematerialised (`nn.checkpoint` with `policy`: the forward
  pass keeps only the layer's inputs) and whose backward pass hands its input cotangents on only after its
  parameter cotangents exist (`_tied_to_params`; `nn.custom_vjp`). Same parameter names and values.

  Why the ordering: a layer's parameter cotangents (weight-gradient convolutions, norm scale / bias sums) are
  needed only at the end of the step, so a scheduler may run them late; their inputs, the layer's recomputed
  activations, then stay alive through the backward pass of every earlier layer. XLA's CPU scheduler does that
  to the SD VAE (its 512x512 layers: the SCUF step's memory plan), and XLA's CPU pipeline drops
  `optimization_barrier`s before scheduling, so a data dependency is the one ordering every backend keeps.
  Every parameter cotangent of the layer is computed, also one nobody uses (a frozen norm's scale: one reduction).
  Positional arguments are differentiated (floating arrays); keyword arguments are static Python values.
  Values and gradients are those of `module_cls` (checked in tests/models/test_sd_compat_remat.py)."""

  def __call__(self, *args, **kwargs):
    def fn(module, *inputs):
      return module_cls.__call__(module, *inputs, **kwargs)

    def forward(module, *inputs):
      return nn.vjp(nn.checkpoint(fn, policy=policy), module, *inputs)

    def backward(vjp_fn, cotangent):
      params_t, *args_t = vjp_fn(cotangent)
      return (params_t, *_tied_to_params(params_t, tuple(args_t)))

    return nn.custom_vjp(fn, forward_fn=forward, backward_fn=backward)(self, *args)

  return type(module_cls.__name__, (module_cls,), {"__call__": __call__, "__module__": module_cls.__module__,
                                                   "__qualname__": f"ordered_remat({module_cls.__qualname__})"})


def dtype(name: str, field: str = "compute_dtype") -> Any:
  try:
    return DTYPES[name]
  except KeyError:
    raise errors.ConfigError(f"{field}: unknown dtype {name!r}; known: {sorted(DTYPES)}") from None


@dataclasses.dataclass(frozen=True)
class Policy:
  compute_dtype: Any = jnp.float32
  frozen_dtype: Any = jnp.float32
  remat: str = "none"

  @classmethod
  def from_config(cls, config) -> "Policy":
    if config.remat not in REMAT:
      raise errors.ConfigError(f"remat: unknown policy {config.remat!r}; known: {sorted(REMAT)}")
    return cls(compute_dtype=dtype(config.compute_dtype), frozen_dtype=dtype(config.frozen_dtype, "frozen_dtype"),
               remat=config.remat)

  def remat_fn(self, fn: Callable) -> Callable:
    """`fn` under `jax.checkpoint` with the configured policy (unchanged when remat is 'none')."""
    if self.remat == "none":
      return fn
    return jax.checkpoint(fn, policy=REMAT[self.remat])

  def remat_module(self, module_cls: type[nn.Module], **kwargs) -> type[nn.Module]:
    """`nn.remat(module_cls)` with the configured policy (unchanged when remat is 'none')."""
    if self.remat == "none":
      return module_cls
    return nn.remat(module_cls, policy=REMAT[self.remat], **kwargs)

  def cast_frozen(self, tree: Any) -> Any:
    """Floating leaves of a frozen tower in the storage dtype (others unchanged)."""
    def one(x):
      if jnp.issubdtype(x.dtype, jnp.floating):
        return x.astype(self.frozen_dtype) if hasattr(x, "astype") else jax.ShapeDtypeStruct(
            x.shape, self.frozen_dtype, sharding=getattr(x, "sharding", None))
      return x
    return jax.tree.map(one, tree)
