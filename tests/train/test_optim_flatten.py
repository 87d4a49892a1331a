"""`optim.flatten`: one optimizer update over the group's flat, padded parameter vector gives the per-leaf result."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from lowlight_jax.train import optim


@pytest.mark.parametrize("kind", ["adamw", "adam", "sgd"])
def test_flattened_optimizer_equals_per_leaf(kind):
  cfg = ml_collections.ConfigDict(dict(optimizer=kind, lr=1e-2, weight_decay=1e-2, decoupled=kind == "adamw",
                                       clip_norm=0.5, b1=0.9, b2=0.999, eps=1e-8, schedule="constant",
                                       momentum=0.9))
  plain = optim.make_optimizer(cfg, 10)
  cfg.flatten = True
  flat = optim.make_optimizer(cfg, 10)
  rng = np.random.default_rng(0)
  params = {"a": jnp.asarray(rng.normal(size=(3, 5)), jnp.float32),
            "b": {"c": jnp.asarray(rng.normal(size=(7,)), jnp.float32), "d": jnp.asarray(1.5, jnp.float32)}}
  states = [plain.init(params), flat.init(params)]
  current = [params, params]
  for step in range(4):
    for k, opt in enumerate((plain, flat)):
      grads = jax.tree.map(lambda p: jnp.sin(p * (step + 1)) * 3.0, current[k])
      updates, states[k] = opt.update(grads, states[k], current[k])
      current[k] = jax.tree.map(lambda p, u: p + u, current[k], updates)
  for x, y in zip(jax.tree.leaves(current[0]), jax.tree.leaves(current[1])):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-6, atol=1e-7)
  # The state is a few vectors padded to a multiple of FLAT_MULTIPLE (so FSDP can split it), not one per leaf.
  vectors = [x for x in jax.tree.leaves(states[1]) if x.ndim == 1]
  assert vectors and all(v.shape == (optim.FLAT_MULTIPLE,) for v in vectors)
