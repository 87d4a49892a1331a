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
