"""`models.policy`'s ordering devices: exact values and gradients, only the order of evaluation changes."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from lowlight_jax.models import policy


def _close(a, b):
  for (path, x), y in zip(jax.tree_util.tree_leaves_with_path(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-6, atol=1e-6, err_msg=jax.tree_util.keystr(path))


def test_plus_zero_keeps_values_and_non_floating_leaves():
  tree = {"w": jnp.arange(6.0).reshape(2, 3), "i": jnp.arange(3), "h": jnp.ones(2, jnp.bfloat16)}
  out = policy.plus_zero(tree, jnp.float32(3.0) * 0.0)
  assert out["i"] is tree["i"] and out["h"].dtype == jnp.bfloat16
  _close(out, tree)


def test_sequential_pair_same_values_and_gradients():
  f = lambda w, x: jnp.tanh(x @ w)
  g = lambda w, x: jnp.sin(x @ w) ** 2
  pair = policy.sequential_pair(f, g)

  def loss(sequential, wa, wb, x):
    a, b = pair((wa, x), (wb, x)) if sequential else (f(wa, x), g(wb, x))
    return jnp.sum(a * 1.5) + jnp.sum(b ** 2)

  keys = jax.random.split(jax.random.key(0), 3)
  args = (jax.random.normal(keys[0], (5, 4)), jax.random.normal(keys[1], (5, 4)), jax.random.normal(keys[2], (3, 5)))
  v0, g0 = jax.value_and_grad(lambda *a: loss(False, *a), argnums=(0, 1, 2))(*args)
  v1, g1 = jax.jit(jax.value_and_grad(lambda *a: loss(True, *a), argnums=(0, 1, 2)))(*args)
  np.testing.assert_allclose(float(v1), float(v0), rtol=1e-6)
  _close(g1, g0)
  # Only the inputs are kept for the backward pass: the pair is a custom_vjp, recomputed there.
  assert "custom_vjp" in str(jax.make_jaxpr(lambda *a: loss(True, *a))(*args))
  # The order: f's backward pass reads g's input cotangents (a NaN in g's output cotangent reaches f's kernel
  # gradient through the tie; through the two plain calls it does not).
  def nan_in_g(sequential, wa, wb, x):
    a, b = pair((wa, x), (wb, x)) if sequential else (f(wa, x), g(wb, x))
    return jnp.sum(a) + jnp.sum(b * jnp.nan)

  assert np.isfinite(np.asarray(jax.grad(lambda *a: nan_in_g(False, *a))(*args))).all()
  assert np.isnan(np.asarray(jax.grad(lambda *a: nan_in_g(True, *a))(*args))).all()


class _Block(nn.Module):
  @nn.compact
  def __call__(self, x, scale):
    return nn.Dense(3, name="proj")(nn.gelu(nn.Dense(4, name="fc")(x))) * scale


def test_params_after_input_same_names_values_and_gradients():
  tied = policy.params_after_input(_Block)
  x = jax.random.normal(jax.random.key(1), (2, 5))
  params = _Block().init(jax.random.key(2), x, 2.0)["params"]
  tied_params = tied().init(jax.random.key(2), x, 2.0)["params"]  # init through the mapped variables
  assert jax.tree.structure(tied_params) == jax.tree.structure(params)
  _close(tied_params, params)
  fn = lambda cls: lambda p, x: jnp.sum(cls().apply({"params": p}, x, scale=2.0) ** 2)
  v0, g0 = jax.value_and_grad(fn(_Block), argnums=(0, 1))(params, x)
  v1, g1 = jax.value_and_grad(fn(tied), argnums=(0, 1))(params, x)
  np.testing.assert_allclose(float(v1), float(v0), rtol=1e-6)
  _close(g1, g0)
  # The parameters read depend on the input (a NaN in row 0's first channel reaches every row through them;
  # without the tie only row 0).
  bad = x.at[0, 0].set(jnp.nan)
  assert np.isnan(np.asarray(_Block().apply({"params": params}, bad, 2.0))).any(axis=1).tolist() == [True, False]
  assert np.isnan(np.asarray(tied().apply({"params": params}, bad, 2.0))).all()
