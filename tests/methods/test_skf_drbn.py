"""DRBN-SKF on the trainer: the plain-DRBN baseline, released-weight sources and their errors, and (last test,
via tests/methods/conftest.py) the sharded generator/discriminator steps, every loss term, checkpoints, resume."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import skf_drbn as skf_config
from lowlight_jax import errors
from lowlight_jax.losses import ssim as ssim_lib
from lowlight_jax.methods import base
from lowlight_jax.train import towers


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


def test_smoke_run_logs_every_term_checkpoints_and_resumes_bitwise(skf_resume_check, tmp_path):
  skf_resume_check("skf_drbn", tmp_path)  # tests/methods/conftest.py
