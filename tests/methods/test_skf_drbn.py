"""DRBN-SKF on the trainer: one sharded generator/discriminator step on 8 fake devices with every loss term,
the plain-DRBN baseline, released-weight sources and their errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import skf_drbn as skf_config
from lowlight_jax import errors
from lowlight_jax.losses import ssim as ssim_lib
from lowlight_jax.methods import base
from lowlight_jax.train import sharding as sharding_lib
from lowlight_jax.train import towers
from lowlight_jax.train import trainer


def _batch(size=32, n=8, seed=0):
  rng = np.random.default_rng(seed)
  return {"low": rng.uniform(0, 0.3, (n, size, size, 3)).astype(np.float32),
          "high": rng.uniform(0.2, 0.9, (n, size, size, 3)).astype(np.float32)}


def test_smoke_step_updates_both_groups_and_reports_every_term():
  assert jax.device_count() == 8
  setup = trainer.build(skf_config.get_config("smoke"))
  assert setup.method.groups == ("enhancer", "discriminator")
  assert set(setup.frozen) == {"hrnet"}
  before = jax.device_get(setup.state.params)
  step = trainer.make_train_step(setup)
  state, metrics, finite = step(setup.state, setup.frozen, jax.device_put(_batch(), sharding_lib.batch_sharding(
      setup.mesh)))
  assert bool(finite)
  for key in ("enhancer/loss", "enhancer/loss_ssim", "enhancer/loss_sch", "enhancer/loss_adversarial",
              "discriminator/loss", "discriminator/global_fake", "discriminator/region_real"):
    assert np.isfinite(float(metrics[key].compute())), key
  # Random-init sanity (the He-normal HRNet, see the method's port note): the first update is not an explosion.
  assert float(metrics["enhancer/grad_norm"].compute()) < 1e4
  after = jax.device_get(state.params)
  for group in ("enhancer", "discriminator"):
    assert any(np.any(a != b) for a, b in zip(jax.tree.leaves(before[group]), jax.tree.leaves(after[group])))


def test_baseline_has_no_semantic_parts_and_enhances_any_size():
  config = skf_config.get_config("smoke,baseline")
  method = base.load_method(config)
  assert method.groups == ("enhancer",) and method.inference_towers == ()
  shapes = jax.eval_shape(lambda r: dict(method.init(r, method.example_batch())), jax.random.key(0))
  assert shapes["frozen"] == {} and "discriminator" not in shapes["params"]
  assert not any("fuseblk" in "/".join(map(str, p)) for p, _ in
                 jax.tree_util.tree_flatten_with_path(shapes["params"])[0])
  variables = method.init(jax.random.key(0), method.example_batch())
  out = method.enhance(variables["params"], {}, {}, jnp.full((1, 30, 21, 3), 0.2))["enhanced"]
  assert out.shape == (1, 30, 21, 3) and float(out.min()) >= 0.0 and float(out.max()) <= 1.0


def test_released_weight_sources_load_and_misfits_are_named(conformance_dir, tmp_path):
  fixture = conformance_dir / "fixtures" / "skf_drbn_net_weights.npz"
  config = skf_config.get_config("smoke")
  config.init_from = str(fixture)
  method = base.load_method(config)
  shapes = jax.eval_shape(lambda r: dict(method.init(r, method.example_batch())), jax.random.key(0))
  loaded = towers.converted_variables(method.weight_sources(), shapes)
  weights = np.load(fixture)
  key = next(k for k in weights.files if k.endswith("fuseblk_3.attn.temperature"))
  node = loaded["params"]["enhancer"]
  for part in key.split(".")[:-1]:
    node = node[part]
  np.testing.assert_array_equal(node["temperature"], weights[key])
  # The small HRNet fixture is not the configured (tiny) HRNet: the error names the mismatching key.
  config.hrnet.weights = str(conformance_dir / "fixtures" / "skf_hrnet_small_weights.npz")
  config.init_from = None
  with pytest.raises(errors.WeightsError, match="skf_hrnet_small_weights.npz"):
    towers.converted_variables(base.load_method(config).weight_sources(), shapes)
  config.hrnet.weights = str(tmp_path / "missing.pth")
  with pytest.raises(FileNotFoundError, match="missing.pth"):
    towers.converted_variables(base.load_method(config).weight_sources(), shapes)


def test_ssim_loss_is_zero_on_identical_images_and_positive_otherwise():
  x = jnp.asarray(np.random.default_rng(0).uniform(size=(2, 24, 24, 3)), jnp.float32)
  np.testing.assert_allclose(ssim_lib.ssim_loss(x, x), 0.0, atol=1e-6)
  assert float(jnp.min(ssim_lib.ssim_loss(x, 0.5 * x))) > 0.01
