"""SNR-SKF on the trainer: sharded steps on 8 fake devices with SCH switched on the released step numbers, the
switched SCH's value and gradient, the two-pass test at any size, the plain SNR-LLIE-Net baseline, released-weight
sources and their errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import skf_snr as snr_config
from lowlight_jax import errors
from lowlight_jax.convert import skf as skf_convert
from lowlight_jax.losses import skf_histogram
from lowlight_jax.methods import base
from lowlight_jax.methods import skf_snr
from lowlight_jax.models import snr as snr_lib
from lowlight_jax.train import sharding as sharding_lib
from lowlight_jax.train import towers
from lowlight_jax.train import trainer


def _batch(size=32, n=8, seed=0):
  rng = np.random.default_rng(seed)
  return {"low": rng.uniform(0, 0.3, (n, size, size, 3)).astype(np.float32),
          "high": rng.uniform(0.2, 0.9, (n, size, size, 3)).astype(np.float32)}


def _changed(before, after):
  return any(np.any(a != b) for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(after)))


@pytest.fixture(scope="module")
def smoke():
  """The smoke setup (built once: its jitted init is most of a test's time) and host copies of its variables."""
  setup = trainer.build(snr_config.get_config("smoke"))
  return setup, jax.device_get({"params": setup.state.params, "frozen": setup.frozen})


def test_smoke_steps_switch_sch_on_the_released_step_numbers(smoke):
  assert jax.device_count() == 8
  setup, _ = smoke
  assert setup.config.loss.sch_every == 2
  assert setup.method.groups == ("enhancer",) and setup.method.inference_towers == ("hrnet",)
  assert set(setup.frozen) == {"hrnet"}
  step = trainer.make_train_step(setup)
  batch = jax.device_put(_batch(), sharding_lib.batch_sharding(setup.mesh))
  state, history = setup.state, []
  for _ in range(2):
    before = jax.device_get(state.params)
    state, metrics, finite = step(state, setup.frozen, batch)
    assert bool(finite)
    values = {k: float(v.compute()) for k, v in metrics.items()}
    assert set(values) == {"enhancer/loss", "enhancer/loss_charbonnier", "enhancer/loss_sch",
                           "enhancer/sch_active", "enhancer/grad_norm"}
    assert all(np.isfinite(v) for v in values.values()), values
    assert _changed(before["enhancer"], jax.device_get(state.params)["enhancer"])
    history.append(values)
  # The released 1-based counter: update 1 (ctx.step 0) has no SCH, update 2 (ctx.step 1) has it.
  off, on = history
  assert off["enhancer/sch_active"] == 0.0 and on["enhancer/sch_active"] == 1.0
  assert off["enhancer/loss"] == off["enhancer/loss_charbonnier"]
  assert off["enhancer/loss_sch"] > 0  # logged even when off
  np.testing.assert_allclose(on["enhancer/loss"], on["enhancer/loss_charbonnier"] + 1e4 * on["enhancer/loss_sch"],
                             rtol=1e-5)
  # The released SUM over batch, pixels and channels: at least eps^0.5 per element.
  assert off["enhancer/loss_charbonnier"] > 8 * 32 * 32 * 3 * 1e-3


def test_switched_sch_has_its_value_every_step_and_its_gradient_only_when_on():
  method = base.load_method(snr_config.get_config("smoke"))
  rng = np.random.default_rng(1)
  labels = np.kron(rng.integers(0, 59, (2, 4, 4)), np.ones((1, 8, 8), int))  # 8 x 8 blocks, interiors survive
  probs = jax.nn.one_hot(labels, 59)
  fake = jnp.asarray(rng.uniform(0.1, 0.9, (2, 32, 32, 3)), jnp.float32)
  high = jnp.asarray(rng.uniform(0.1, 0.9, (2, 32, 32, 3)), jnp.float32)

  def plain(f):
    return jnp.mean(skf_histogram.semantic_histogram_loss(probs, f, high, normalization="llflow", edge_radius=2))

  switched = jax.jit(jax.value_and_grad(lambda f, on: method._sch(probs, f, high, on)))
  value, grad = jax.jit(jax.value_and_grad(plain))(fake)
  on_value, on_grad = switched(fake, jnp.array(True))
  off_value, off_grad = switched(fake, jnp.array(False))
  np.testing.assert_allclose([on_value, off_value], [value, value], rtol=1e-6)
  assert float(jnp.max(jnp.abs(grad))) > 0
  np.testing.assert_allclose(on_grad, grad, rtol=1e-5, atol=1e-6 * float(jnp.max(jnp.abs(grad))))
  assert not np.any(np.asarray(off_grad))


def test_enhance_is_the_released_two_pass_test_at_any_size(smoke):
  setup, variables = smoke
  config, method = setup.config.copy_and_resolve_references(), setup.method
  params, frozen = variables["params"], variables["frozen"]
  h, w = 30, 21  # not multiples of 4: padded to 32 x 24, cropped back
  image = jnp.asarray(np.random.default_rng(2).uniform(0.02, 0.4, (1, h, w, 3)), jnp.float32)
  enhance = jax.jit(method.enhance)
  out = enhance(params, {}, frozen, image)["enhanced"]
  assert out.shape == (1, h, w, 3) and out.dtype == jnp.float32

  @jax.jit
  def by_hand(image):
    pad = ((0, 0), (0, 32 - h), (0, 24 - w), (0, 0))
    mask = jnp.pad(snr_lib.snr_mask(image, snr_lib.box_blur(image)), pad, mode="edge")
    x = jnp.pad(image, pad, mode="edge")

    def net(seg_fea):
      return method.net.apply({"params": params["enhancer"]}, x, mask, seg_fea)

    out1 = net(method.hrnet.apply(frozen["hrnet"], x)["features"])
    out2 = net(method.hrnet.apply(frozen["hrnet"], out1)["features"])  # HRNet sees the unclamped first pass
    return jnp.clip(out1, 0, 1)[:, :h, :w], jnp.clip(out2, 0, 1)[:, :h, :w]

  one_pass, two_pass = by_hand(image)
  np.testing.assert_allclose(out, two_pass, atol=1e-5)
  assert float(jnp.max(jnp.abs(two_pass - one_pass))) > 1e-4  # the second pass matters: the test can tell
  config.model.test_passes = 1
  out1 = jax.jit(base.load_method(config).enhance)(params, {}, frozen, image)["enhanced"]
  np.testing.assert_allclose(out1, one_pass, atol=1e-5)


def test_baseline_has_no_semantic_parts_and_enhances_any_size():
  config = snr_config.get_config("smoke,baseline")
  method = base.load_method(config)
  assert method.groups == ("enhancer",) and method.inference_towers == ()
  shapes = jax.eval_shape(lambda r: dict(method.init(r, method.example_batch())), jax.random.key(0))
  assert shapes["frozen"] == {}
  assert not any(k.startswith("att_block") for k in shapes["params"]["enhancer"])
  assert "transformer" in shapes["params"]["enhancer"]
  params = jax.jit(lambda r: method.init(r, method.example_batch())["params"])(jax.random.key(0))
  out = jax.jit(method.enhance)(params, {}, {}, jnp.full((1, 13, 27, 3), 0.2))["enhanced"]
  assert out.shape == (1, 13, 27, 3) and float(out.min()) >= 0.0 and float(out.max()) <= 1.0


def test_released_weight_sources_load_and_misfits_are_named(conformance_dir, tmp_path):
  fixtures = conformance_dir / "fixtures"
  fixture = fixtures / "skf_snr_net_weights.npz"
  weights = dict(np.load(fixture))
  config = snr_config.get_config("smoke")
  config.hrnet.variant = "w48"  # the fixture's att_block_3 reads W48's 192-channel branch (`tiny` has 32)
  config.model.n_layers = skf_convert.snr_transformer_depth(weights)
  config.init_from = str(fixture)
  method = base.load_method(config)
  shapes = jax.eval_shape(lambda r: dict(method.init(r, method.example_batch())), jax.random.key(0))
  loaded = towers.converted_variables(method.weight_sources(), shapes)["params"]["enhancer"]
  np.testing.assert_array_equal(loaded["att_block_3"]["attn"]["temperature"], weights["att_block_3.attn.temperature"])
  np.testing.assert_array_equal(loaded["transformer"]["layer_stack"]["0"]["slf_attn"]["w_qs"]["kernel"],
                                weights["transformer.layer_stack.0.slf_attn.w_qs.weight"].T)

  # A baseline SNR-LLIE-Net checkpoint (the authors' `pretrain_model_G`): everything but the SE blocks.
  baseline = tmp_path / "snr_baseline.npz"
  np.savez(baseline, **{k: v for k, v in weights.items() if not k.startswith("att_block_")})
  config.init_from = str(baseline)
  loaded = towers.converted_variables(base.load_method(config).weight_sources(), shapes)["params"]["enhancer"]
  assert "att_block_1" not in loaded and "conv_last" in loaded

  # A DRBN checkpoint, or the wrong transformer depth: the error names the file and what it holds.
  config.init_from = str(fixtures / "skf_drbn_net_weights.npz")
  with pytest.raises(errors.WeightsError, match=r"skf_drbn_net_weights\.npz.*DRBN-SKF"):
    towers.converted_variables(base.load_method(config).weight_sources(), shapes)
  config.init_from = str(fixture)
  config.model.n_layers += 1
  method = base.load_method(config)
  deeper = jax.eval_shape(lambda r: dict(method.init(r, method.example_batch())), jax.random.key(0))
  with pytest.raises(errors.WeightsError, match=r"skf_snr_net_weights\.npz.*missing keys transformer\.layer_stack\.1"):
    towers.converted_variables(method.weight_sources(), deeper)


def test_config_switches_are_checked():
  for field, value in (("model.train_seg_input", "low"), ("loss.charbonnier_reduction", "max"),
                       ("loss.sch_every", 0), ("model.test_passes", 3), ("data.crop", 30)):
    config = snr_config.get_config("smoke")
    section, key = field.split(".")
    config[section][key] = value
    with pytest.raises(errors.ConfigError, match=field.replace(".", r"\.")):
      skf_snr.Method(config)


def test_smoke_run_logs_every_term_checkpoints_and_resumes_bitwise(skf_resume_check, tmp_path):
  skf_resume_check("skf_snr", tmp_path)  # tests/methods/conftest.py
