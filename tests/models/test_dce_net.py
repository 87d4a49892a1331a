"""DCE-Net (Zero-DCE / SCL-LLE): structure and layer-by-layer parity with the authors' code."""

import jax
import jax.numpy as jnp
import numpy as np

from lowlight_jax.convert import layout
from lowlight_jax.models import dce_net


def _count(tree) -> int:
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def test_param_count_and_names():
  v = jax.eval_shape(dce_net.DCENet().init, jax.random.key(0), jnp.zeros((1, 8, 8, 3)))
  assert _count(v["params"]) == 79_416
  assert sorted(v["params"]) == [f"e_conv{i}" for i in range(1, 8)]
  assert v["params"]["e_conv7"]["kernel"].shape == (3, 3, 64, 24)


def test_apply_curves_matches_reference_loop():
  rng = np.random.default_rng(0)
  x = rng.random((2, 5, 6, 3), dtype=np.float32)
  r = rng.uniform(-1, 1, (2, 5, 6, 24)).astype(np.float32)
  enhanced, after_4 = dce_net.apply_curves(jnp.asarray(x), jnp.asarray(r))
  y = x.copy()
  for k in range(8):
    y = y + r[..., 3 * k:3 * k + 3] * (y ** 2 - y)
    if k == 3:
      y4 = y.copy()
  np.testing.assert_allclose(np.asarray(enhanced), y, atol=1e-6)
  np.testing.assert_allclose(np.asarray(after_4), y4, atol=1e-6)


def test_layerwise_parity_with_released_weights(conformance_dir):
  """Zero-DCE Epoch99 on a 64x64 crop of lowCUT/1 against the official model's activations."""
  with np.load(conformance_dir / "weights" / "zerodce_epoch99.npz") as w:
    sd = {k: w[k] for k in w.files}
  model = dce_net.DCENet()
  acts = np.load(conformance_dir / "activations" / "zerodce_lowCUT_1_crop64.npz")
  x = jnp.asarray(acts["input"])
  target = jax.eval_shape(model.init, jax.random.key(0), x)
  variables = layout.assign(target, layout.torch_to_flax(sd))
  out, state = model.apply(variables, x, capture_intermediates=True)
  inter = state["intermediates"]
  for i in range(1, 8):
    # Stored conv outputs are pre-activation, like the Flax Conv outputs.
    np.testing.assert_allclose(np.asarray(inter[f"e_conv{i}"]["__call__"][0]), acts[f"e_conv{i}"],
                               atol=2e-5, rtol=0, err_msg=f"e_conv{i}")
  np.testing.assert_allclose(np.asarray(out["curves"]), acts["x_r"], atol=1e-5, rtol=0)
  np.testing.assert_allclose(np.asarray(out["enhanced_4"]), acts["iter4"], atol=1e-5, rtol=0)
  np.testing.assert_allclose(np.asarray(out["enhanced"]), acts["iter8"], atol=1e-5, rtol=0)
