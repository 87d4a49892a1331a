"""DMGNIE Siamese foreground localiser: the four maps of Eq. 4, frozen encoder, hand checks."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lowlight_jax.models import fg_localization as fgl
from lowlight_jax.models import init as init_lib
from lowlight_jax.models import vgg

HIGHEST = jax.lax.Precision.HIGHEST


@pytest.fixture(scope="module")
def setup():
  rng = np.random.default_rng(0)
  y = jnp.asarray(rng.random((2, 32, 32, 3), dtype=np.float32))
  bg = jnp.asarray(rng.random((2, 32, 32, 3), dtype=np.float32))
  enc = vgg.VGG16Features(stop_at="relu3_3")
  vgg_vars = init_lib.random_variables(enc, jax.random.key(1), y)
  model = fgl.SiameseLocalizer(proj_hidden=32, proj_features=16, precision=HIGHEST)
  variables = model.init(jax.random.key(2), vgg_vars, y, bg, jax.random.key(3))
  apply = jax.jit(model.apply)
  return model, vgg_vars, variables, y, bg, apply


def _np_proj(p, x):
  h = np.maximum(x @ np.asarray(p["0"]["kernel"])[0, 0] + np.asarray(p["0"]["bias"]), 0)
  return h @ np.asarray(p["2"]["kernel"])[0, 0] + np.asarray(p["2"]["bias"])


def _unit(x):
  return x / (np.linalg.norm(x, axis=-1, keepdims=True) + 1e-7)


def test_params_are_only_the_projectors(setup):
  _, _, variables, *_ = setup
  assert set(variables) == {"params"}
  assert set(variables["params"]) == {"f", "f_bg"}
  assert variables["params"]["f"]["0"]["kernel"].shape == (1, 1, 256, 32)
  assert variables["params"]["f"]["2"]["kernel"].shape == (1, 1, 32, 16)


def test_maps_match_hand_computation(setup):
  model, vgg_vars, variables, y, bg, apply = setup
  key = jax.random.key(7)
  out = apply(variables, vgg_vars, y, bg, key)
  assert {k: v.shape for k, v in out.items()} == {k: (2, 8, 8) for k in
                                                  ("d_orig", "d_proj", "d_self_y", "d_self_bg")}
  # Recompute with the same noise draw, numpy projectors and explicit ImageNet normalisation.
  k_y, k_bg = jax.random.split(key)
  z_y = 0.05 * jax.random.normal(k_y, y.shape)
  z_bg = 0.05 * jax.random.normal(k_bg, bg.shape)
  mean, std = np.array(fgl.IMAGENET_MEAN), np.array(fgl.IMAGENET_STD)
  enc = vgg.VGG16Features(stop_at="relu3_3", precision=HIGHEST)
  e = lambda im: np.asarray(enc.apply(vgg_vars, (im - mean) / std)["relu3_3"])
  e_y, e_bg, e_yn, e_bgn = e(y), e(bg), e(y + z_y), e(bg + z_bg)
  pf, pb = variables["params"]["f"], variables["params"]["f_bg"]
  dot = lambda a, b: np.sum(a * b, axis=-1)
  ref = {
      "d_orig": dot(_unit(e_y), _unit(e_bg)),
      "d_proj": dot(_unit(_np_proj(pf, e_y)), _unit(_np_proj(pb, e_bg))),
      "d_self_y": dot(_unit(_np_proj(pf, e_y)), _unit(_np_proj(pf, e_yn))),
      "d_self_bg": dot(_unit(_np_proj(pb, e_bg)), _unit(_np_proj(pb, e_bgn))),
  }
  for k, v in ref.items():
    np.testing.assert_allclose(np.asarray(out[k]), v, atol=2e-5, err_msg=k)
    assert np.all(np.abs(np.asarray(out[k])) <= 1 + 1e-5)
  np.testing.assert_allclose(np.asarray(model.apply(variables, vgg_vars, y, bg,
                                                    method=model.localize)),
                             np.asarray(out["d_proj"]), atol=1e-5)


def test_identical_images_and_shared_projector_give_ones(setup):
  model, vgg_vars, variables, y, _, _ = setup
  quiet = fgl.SiameseLocalizer(proj_hidden=32, proj_features=16, noise_sigma=0.0,
                               precision=HIGHEST)
  shared = {"params": {"f": variables["params"]["f"], "f_bg": variables["params"]["f"]}}
  out = quiet.apply(shared, vgg_vars, y, y, jax.random.key(0))
  for k in ("d_orig", "d_proj", "d_self_y", "d_self_bg"):
    np.testing.assert_allclose(np.asarray(out[k]), 1.0, atol=1e-4, err_msg=k)
  # With noise only the self maps change, and drop below 1.
  noisy = model.apply(shared, vgg_vars, y, y, jax.random.key(0))
  np.testing.assert_allclose(np.asarray(noisy["d_proj"]), 1.0, atol=1e-4)
  assert float(jnp.mean(noisy["d_self_y"])) < 1 - 1e-3


def test_encoder_is_frozen_projectors_train(setup):
  model, vgg_vars, variables, y, bg, _ = setup

  def loss(params, vgg_vars, y):
    out = model.apply({"params": params}, vgg_vars, y, bg, jax.random.key(0))
    return jnp.sum(out["d_proj"]) + jnp.sum(out["d_self_y"]) + jnp.sum(out["d_orig"])

  g_params, g_vgg, g_y = jax.grad(loss, argnums=(0, 1, 2))(variables["params"], vgg_vars, y)
  assert all(float(jnp.abs(g).max()) == 0.0 for g in jax.tree.leaves(g_vgg))
  assert float(jnp.abs(g_params["f"]["0"]["kernel"]).max()) > 0
  assert float(jnp.abs(g_params["f_bg"]["2"]["kernel"]).max()) > 0
  assert float(jnp.abs(g_y).max()) > 0  # the generator's output still receives gradients
