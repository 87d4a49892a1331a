"""RetinexNet DecomNet (GEFU's reflectance teacher): structure and parity with the authors' code."""

import jax
import jax.numpy as jnp
import numpy as np

from lowlight_jax.convert import layout
from lowlight_jax.models import retinexnet


def test_param_count_and_names(conformance_dir):
  v = jax.eval_shape(retinexnet.RetinexNet().init, jax.random.key(0), jnp.zeros((1, 12, 12, 3)))
  assert sum(int(np.prod(x.shape)) for x in jax.tree.leaves(v["params"])) == 207_748
  with np.load(conformance_dir / "weights" / "retinexnet_decomnet.npz") as w:
    torch_keys = set(w.files)
  zeros = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), v)
  assert set(layout.flax_to_torch(zeros)) == torch_keys


def test_replicate_padding_keeps_constant_images_constant():
  """Replicate padding: a constant image gives constant R and L (zero padding changes borders)."""
  model = retinexnet.RetinexNet(channels=8)
  x = jnp.full((1, 12, 12, 3), 0.7)
  rng = np.random.default_rng(0)
  shapes = jax.eval_shape(model.init, jax.random.key(0), x)
  v = jax.tree.map(lambda s: rng.normal(0, 0.2, s.shape).astype(np.float32), shapes)
  out = jax.jit(model.apply)(v, x)
  assert out["R"].shape == (1, 12, 12, 3) and out["L"].shape == (1, 12, 12, 1)
  for k in ("R", "L"):
    a = np.asarray(out[k])
    np.testing.assert_allclose(a, np.broadcast_to(a[:, 6:7, 6:7], a.shape), atol=1e-6, rtol=0)


def test_layerwise_parity_with_released_weights(conformance_dir):
  with np.load(conformance_dir / "weights" / "retinexnet_decomnet.npz") as w:
    sd = {k: w[k] for k in w.files}
  acts = np.load(conformance_dir / "activations" / "retinexnet_decomnet_lowCUT_1_crop32.npz")
  model = retinexnet.RetinexNet()
  x = jnp.asarray(acts["input"])
  target = jax.eval_shape(model.init, jax.random.key(0), x)
  variables = layout.assign(target, layout.torch_to_flax(sd))
  out, state = model.apply(variables, x, capture_intermediates=True)
  inter = state["intermediates"]["DecomNet"]
  np.testing.assert_allclose(np.asarray(inter["net1_conv0"]["__call__"][0]), acts["net1_conv0"],
                             atol=1e-4, rtol=0)
  for i in (0, 2, 4, 6, 8):
    np.testing.assert_allclose(np.asarray(inter["net1_convs"][str(i)]["__call__"][0]),
                               acts[f"net1_convs.{i}"], atol=1e-4, rtol=0, err_msg=str(i))
  np.testing.assert_allclose(np.asarray(inter["net1_recon"]["__call__"][0]), acts["net1_recon"],
                             atol=1e-4, rtol=0)
  np.testing.assert_allclose(np.asarray(out["R"]), acts["R"], atol=1e-5, rtol=0)
  np.testing.assert_allclose(np.asarray(out["L"]), acts["L"], atol=1e-5, rtol=0)
