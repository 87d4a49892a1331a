"""Gradient accumulation over micro-batches: one loss's gradient on a batch computed as the mean over equal slices
of it, one slice's forward and backward pass at a time (a `lax.scan`), so activation memory is that of a slice.

For a loss that is a mean over the batch's examples (and whose examples do not interact: no batch statistics), the
mean over equal slices is the batch's loss, so the gradient is the same up to float summation order. Random draws
differ: each slice gets its own key (`jax.random.split(rng, num)`), so with sampling the result is equal in
distribution, not bitwise. With `num == 1` the loss is called once on the whole batch with `rng` itself: exactly the
step without accumulation.

Slices are strided (slice j holds examples j, j + num, j + 2 num, ...): with the batch axis sharded over the mesh's
data axis, each device's contiguous block of examples splits into its own share of every slice (no resharding when
the per-device batch is a multiple of `num`).
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp

PyTree = Any


def split(tree: PyTree, num: int, axis: int = 0) -> PyTree:
  """Every leaf's batch `axis` (size B, a multiple of num) -> a leading axis of num strided slices of B / num."""
  def one(t):
    b = t.shape[axis]
    t = t.reshape(t.shape[:axis] + (b // num, num) + t.shape[axis + 1:])
    return jnp.moveaxis(t, axis + 1, 0)
  return jax.tree.map(one, tree)


def unsplit(tree: PyTree, axis: int = 0) -> PyTree:
  """The inverse of `split`: stacked slices (num, ..., B / num at `axis` + 1, ...) -> the batch in its order."""
  def one(t):
    num = t.shape[0]
    t = jnp.moveaxis(t, 0, axis + 1)
    return t.reshape(t.shape[:axis] + (t.shape[axis] * num,) + t.shape[axis + 2:])
  return jax.tree.map(one, tree)


def value_and_grad(fn: Callable[..., tuple[jax.Array, PyTree]], params: PyTree, data: PyTree, rng: jax.Array,
                   num: int, axis: int = 0) -> tuple[tuple[jax.Array, PyTree], PyTree]:
  """`jax.value_and_grad(fn, has_aux=True)(params, data, rng)` accumulated over `num` micro-batches.

  fn(params, data, rng) -> (scalar loss, aux); every leaf of `data` has the batch at `axis`. Returns
  ((mean loss, aux stacked over the slices: leading axis num), mean gradient). The caller reduces the aux (a mean
  for batch-mean terms, `unsplit` for per-example outputs); with num == 1 the aux gets a leading axis of 1.
  """
  grad_fn = jax.value_and_grad(fn, has_aux=True)
  if num < 1:
    raise ValueError(f"micro-batches: {num} is not a positive number")
  if num == 1:
    (loss, aux), grads = grad_fn(params, data, rng)
    return (loss, jax.tree.map(lambda t: t[None], aux)), grads
  for leaf in jax.tree.leaves(data):
    if leaf.shape[axis] % num:
      raise ValueError(f"micro-batches: a batch of {leaf.shape[axis]} does not split into {num} equal slices")
  slices, keys = split(data, num, axis), jax.random.split(rng, num)
  first = jax.eval_shape(grad_fn, params, jax.tree.map(lambda t: t[0], slices), keys[0])
  (loss_shape, _), grads_shape = first
  zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), (loss_shape, grads_shape))

  def body(acc, xs):
    (loss, aux), grads = grad_fn(params, *xs)
    return jax.tree.map(jnp.add, acc, (loss, grads)), aux

  (loss, grads), aux = jax.lax.scan(body, zeros, (slices, keys))
  return (loss / num, aux), jax.tree.map(lambda g: g / num, grads)
