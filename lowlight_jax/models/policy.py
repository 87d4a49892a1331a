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

import contextlib
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


def sequential_pair(f: Callable, g: Callable, context: Callable[[], Any] = contextlib.nullcontext) -> Callable:
  """(a, b) -> (f(*a), g(*b)), rematerialised (only a and b are kept for the backward pass), whose backward pass
  runs g's (recomputation and backward) to the end before f's recomputation starts: f's inputs are tied
  (`plus_zero`) to every cotangent g's backward pass returns. Values and gradients are those of the two calls.

  Why: two branches reading the same inputs (SCUF's output and reflectance decoders of one latent, 512x512
  each) are otherwise recomputed and differentiated in whatever interleaving the scheduler picks; XLA's CPU
  scheduler, under FSDP, kept both decoders' activations alive at the step's peak. `context` is entered around
  the backward pass's recomputations (it runs when the step is differentiated, outside the caller's `with`
  blocks: `sd_compat.remat_blocks`)."""

  @jax.custom_vjp
  def pair(a, b):
    return f(*a), g(*b)

  def fwd(a, b):
    return pair(a, b), (a, b)

  def bwd(res, cotangent):
    a, b = res
    with context():
      _, g_vjp = jax.vjp(g, *b)
      b_t = g_vjp(cotangent[1])
      leaves = [l for l in jax.tree.leaves(b_t) if jnp.issubdtype(l.dtype, jnp.floating)]
      a = plus_zero(a, sum(jnp.sum(l, dtype=jnp.float32) for l in leaves) * 0.0)
      _, f_vjp = jax.vjp(f, *a)
      a_t = f_vjp(cotangent[0])
    return tuple(a_t), tuple(b_t)

  pair.defvjp(fwd, bwd)
  return pair


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


def params_after_input(module_cls: type[nn.Module]) -> type[nn.Module]:
  """A subclass of `module_cls` whose parameters, for each call, are made data-dependent on that call's first
  positional input (`plus_zero` with 0 * a sum over its first channel, not differentiated): exact values, same
  parameter names, but nothing computed from a parameter (an FSDP all-gather, a dtype conversion) can run before
  the layer's input exists, and two calls of the layer (a UNet applied twice in one step, a rematerialised
  block's forward pass and its recomputation) no longer share such a value.

  Why: XLA common-subexpression-eliminates `gather(w)` / `convert(w)` across every use of a frozen weight, so the
  gathered (FSDP) or float32-converted (XLA CPU runs bf16 convolutions in float32) copy of a whole tower stays
  alive from its first use to its last: across both UNet calls of an identity or cycle term, from a block's
  forward pass to its backward pass. Inside `nn.remat` (`sd_compat.remat_blocks`) each block's copies then live
  while that block runs. The price: one scalar reduction per call (an all-reduce of a scalar on a mesh), and a
  block's gathers cannot be prefetched before its input exists."""

  def __call__(self, *args, **kwargs):
    x = args[0]
    zero = jax.lax.stop_gradient(jnp.sum(jax.lax.slice_in_dim(x, 0, 1, axis=-1), dtype=jnp.float32)) * 0.0

    def fn(module, *inputs):
      return module_cls.__call__(module, *inputs, **kwargs)

    tied = nn.map_variables(fn, "params", trans_in_fn=lambda v: plus_zero(v, zero), init=self.is_initializing())
    return tied(self, *args)

  return type(module_cls.__name__, (module_cls,), {"__call__": __call__, "__module__": module_cls.__module__,
                                                   "__qualname__": f"params_after_input({module_cls.__qualname__})"})


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
