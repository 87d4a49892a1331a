"""Random variables of frozen towers that no weights file provides (smoke tests, demos, random baselines).

`random_variables` draws ONE normal vector and cuts it into the kernels: XLA compiles one random-number kernel
instead of one initialiser per leaf, which keeps the jitted init of a network with hundreds of leaves fast on CPU
(flax's per-leaf initialisers took tens of seconds to compile there).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

PyTree = Any


def random_variables(module: Any, rng: jax.Array, *example: jax.Array,
                     kernel_std: float | None = None) -> PyTree:
  """Random variables of a network without running it or compiling one initialiser per leaf.

  Kernels ~ N(0, kernel_std^2), or He-normal N(0, 2 / fan_in) when `kernel_std` is None (fan_in =
  all kernel dims but the last); biases, BatchNorm shifts and running means 0; BatchNorm scales and
  running variances 1. All values come from ONE normal draw cut into the leaves: XLA compiles one
  random-number kernel instead of one per leaf, which keeps the jitted init of a 300-leaf network
  fast on CPU (flax's per-leaf initialisers took tens of seconds to compile there).
  """
  shapes = jax.eval_shape(module.init, rng, *example)
  leaves, treedef = jax.tree_util.tree_flatten_with_path(shapes)
  kernels = [leaf for path, leaf in leaves if getattr(path[-1], "key", None) == "kernel"]
  flat = jax.random.normal(rng, (sum(int(np.prod(k.shape)) for k in kernels),), jnp.float32)
  out, offset = [], 0
  for path, leaf in leaves:
    name = getattr(path[-1], "key", None)
    if name == "kernel":
      n = int(np.prod(leaf.shape))
      fan_in = max(int(np.prod(leaf.shape[:-1])), 1)
      std = kernel_std if kernel_std is not None else np.sqrt(2.0 / fan_in)
      out.append((flat[offset:offset + n].reshape(leaf.shape) * std).astype(leaf.dtype))
      offset += n
    elif name in ("scale", "var"):
      out.append(jnp.ones(leaf.shape, leaf.dtype))
    else:
      out.append(jnp.zeros(leaf.shape, leaf.dtype))
  return jax.tree_util.tree_unflatten(treedef, out)
