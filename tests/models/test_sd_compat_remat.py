"""`sd_compat.remat_blocks`: the UNet's and VAE's blocks rematerialised give the same values and gradients, also
on a latent that is not a multiple of 8 (PyTorch's `upsample_size` path, which the remat'd blocks must keep)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lowlight_jax.convert import sd_turbo
from lowlight_jax.models import sd_compat


@pytest.fixture(scope="module")
def family(conformance_dir):
  folder = conformance_dir / "fixtures" / "gefu_tiny" / "sd_turbo_tiny"
  return sd_turbo.load_unet(folder), sd_turbo.load_vae(folder)


def _with_and_without(fn, *args):
  plain = jax.value_and_grad(fn)(*args)
  def remat_fn(*a):
    with sd_compat.remat_blocks(jax.checkpoint_policies.nothing_saveable):
      return fn(*a)
  jaxpr = str(jax.make_jaxpr(jax.grad(remat_fn))(*args))
  return plain, jax.value_and_grad(remat_fn)(*args), jaxpr


def test_unet_blocks_remat_same_value_and_gradient(family):
  unet, _ = family
  x = jax.random.normal(jax.random.key(0), (1, 4, 6, 9))
  ctx = jax.random.normal(jax.random.key(1), (1, 77, unet.config["cross_attention_dim"]))
  fn = lambda x: jnp.sum(unet.module.apply({"params": unet.params}, x, jnp.array([999]), ctx).sample ** 2)
  (v0, g0), (v1, g1), jaxpr = _with_and_without(fn, x)
  assert "remat" in jaxpr or "checkpoint" in jaxpr
  np.testing.assert_allclose(float(v0), float(v1), rtol=1e-6)
  np.testing.assert_allclose(np.asarray(g0), np.asarray(g1), atol=1e-5 * float(jnp.max(jnp.abs(g0))))


def test_vae_blocks_remat_same_value_and_gradient(family):
  _, vae = family
  img = jax.random.normal(jax.random.key(2), (1, 3, 48, 72))
  fn = lambda x: jnp.sum(vae.module.apply({"params": vae.params}, x).sample ** 2)
  (v0, g0), (v1, g1), jaxpr = _with_and_without(fn, img)
  assert "remat" in jaxpr or "checkpoint" in jaxpr
  np.testing.assert_allclose(float(v0), float(v1), rtol=1e-6)
  np.testing.assert_allclose(np.asarray(g0), np.asarray(g1), atol=1e-5 * float(jnp.max(jnp.abs(g0))))
  # Outside the context the classes are the originals again.
  import diffusers.models.vae_flax as vae_flax  # imported by sd_compat
  assert not vae_flax.FlaxUpDecoderBlock2D.__name__.lower().startswith(("remat", "checkpoint"))


def test_vae_layers_ordered_remat_same_values_and_gradients(family):
  """`vae_layers=True`: each resnet / attention / resampling layer rematerialised with its backward pass ordered
  (`policy.ordered_remat`): the same value and the same gradients, to the input and to every parameter."""
  _, vae = family
  img = jax.random.normal(jax.random.key(3), (1, 3, 48, 72))
  fn = lambda p, x: jnp.sum(vae.module.apply({"params": p}, x).sample ** 2)

  def layers_fn(p, x):
    with sd_compat.remat_blocks(jax.checkpoint_policies.nothing_saveable, vae_layers=True):
      return fn(p, x)

  v0, g0 = jax.value_and_grad(fn, argnums=(0, 1))(vae.params, img)
  v1, g1 = jax.value_and_grad(layers_fn, argnums=(0, 1))(vae.params, img)
  assert "custom_vjp" in str(jax.make_jaxpr(layers_fn)(vae.params, img))  # the layers are the ordered ones
  jaxpr = str(jax.make_jaxpr(jax.grad(layers_fn))(vae.params, img))
  assert "remat" in jaxpr or "checkpoint" in jaxpr
  np.testing.assert_allclose(float(v0), float(v1), rtol=1e-6)
  for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(g0), jax.tree.leaves(g1)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5 * float(jnp.max(jnp.abs(a))) + 1e-12,
                               err_msg=jax.tree_util.keystr(path))
  import diffusers.models.vae_flax as vae_flax  # imported by sd_compat
  assert vae_flax.FlaxResnetBlock2D.__qualname__ == "FlaxResnetBlock2D"  # restored outside the context
