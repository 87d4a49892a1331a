"""SCL-LLE method: sharded smoke step with every loss term, semantic gradients, configs, weights."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import scl_lle as scl_config
from lowlight_jax.convert import deeplab
from lowlight_jax.methods import base
from lowlight_jax.methods import scl_lle
from lowlight_jax.train import sharding as sharding_lib
from lowlight_jax.train import towers
from lowlight_jax.train import trainer


def _batch(config, batch_size, seed=0):
  rng = np.random.default_rng(seed)
  s, d = config.data.crop, config.data
  labels = rng.integers(0, 4, (batch_size, s, s)).astype(np.int32)
  labels[:, :2] = 255
  return {"low": rng.uniform(0.0, 0.3, (batch_size, s, s, 3)).astype(np.float32),
          "labels": labels,
          "pos": rng.uniform(0.35, 0.65, (batch_size, d.num_pos, s, s, 3)).astype(np.float32),
          "neg": np.concatenate([rng.uniform(0.0, 0.1, (batch_size, 1, s, s, 3)),
                                 rng.uniform(0.85, 1.0, (batch_size, d.num_neg - 1, s, s, 3))],
                                axis=1).astype(np.float32)}


@pytest.fixture(scope="module")
def smoke():
  """One smoke build and one compiled step, shared: compiling is the slow part on CPU."""
  config = scl_config.get_config("smoke")
  setup = trainer.build(config)
  host_state = jax.device_get(setup.state)
  return config, setup, host_state, trainer.make_train_step(setup)


def _run(smoke, batch):
  """One step from the initial state (a fresh device copy: the step donates its state)."""
  config, setup, host_state, step = smoke
  state = jax.device_put(host_state, setup.state_shardings)
  batch = jax.device_put(batch, sharding_lib.batch_sharding(setup.mesh))
  state, metrics, finite = step(state, setup.frozen, batch)
  values = {k: float(v.compute()) for k, v in metrics.items()}
  return jax.device_get(state.params), values, bool(finite)


def test_smoke_step_on_8_devices_reports_every_loss_term(smoke):
  config, setup, host_state, _ = smoke
  assert jax.device_count() == 8
  assert dict(setup.mesh.shape) == {"data": 8}
  assert set(setup.frozen) == {"vgg", "deeplab"}
  frozen_before = jax.device_get(setup.frozen)
  params, values, finite = _run(smoke, _batch(config, config.batch_size))
  assert finite
  for term in scl_lle.TERMS:
    assert np.isfinite(values[f"enhancer/loss_{term}"]), term
  weights = config.loss_weights
  total = sum(weights[t] * values[f"enhancer/loss_{t}"] for t in scl_lle.TERMS)
  np.testing.assert_allclose(values["enhancer/loss"], total, rtol=1e-5)
  assert values["enhancer/loss_segmentation"] > 0 and values["enhancer/loss_feature_retention"] > 0
  changed = jax.tree.leaves(
      jax.tree.map(lambda a, b: bool(np.any(a != b)), host_state.params, params))
  assert all(changed)
  for a, b in zip(jax.tree.leaves(frozen_before), jax.tree.leaves(jax.device_get(setup.frozen))):
    np.testing.assert_array_equal(a, b)
  enhance = trainer.make_enhance_fn(setup)(jax.device_put(host_state, setup.state_shardings),
                                           setup.frozen)
  assert enhance(jnp.full((1, 20, 28, 3), 0.2))["enhanced"].shape == (1, 20, 28, 3)


def test_semantic_terms_change_the_enhancer_gradient(smoke):
  config = smoke[0]
  batch = _batch(config, config.batch_size, seed=1)
  # The labels reach the enhancer's gradient only through the two semantic terms.
  labels = batch["labels"]
  swapped = dict(batch, labels=np.where(labels == 0, 1, np.where(labels == 1, 0, labels)))
  moved = dict(batch, labels=np.roll(batch["labels"], 5, axis=2))
  p0, m0, _ = _run(smoke, batch)
  p1, m1, _ = _run(smoke, swapped)
  p2, m2, _ = _run(smoke, moved)

  def differs(a, b):
    return any(bool(np.any(x != y)) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))

  # Swapping two class ids leaves the brightness term unchanged but changes the cross-entropy, its
  # gradient and hence the update: the segmentation term reaches the enhancer.
  assert m1["enhancer/loss_semantic_brightness"] == pytest.approx(
      m0["enhancer/loss_semantic_brightness"], rel=1e-6)
  assert m1["enhancer/loss_segmentation"] != m0["enhancer/loss_segmentation"]
  assert m1["enhancer/grad_norm"] != m0["enhancer/grad_norm"] and differs(p0, p1)
  # Moving the label map changes the class regions: the brightness term and the gradient change.
  assert m2["enhancer/loss_semantic_brightness"] != m0["enhancer/loss_semantic_brightness"]
  assert m2["enhancer/grad_norm"] != m0["enhancer/grad_norm"] and differs(p0, p2)
  for k in ("tv", "color", "contrast_appearance", "contrast_gram", "feature_retention"):
    assert m1[f"enhancer/loss_{k}"] == m0[f"enhancer/loss_{k}"] == m2[f"enhancer/loss_{k}"]


def test_brightness_term_alone_has_gradient_and_released_segmentation_has_none(smoke):
  config, setup, host_state, _ = smoke
  cfg = scl_config.get_config("smoke")
  cfg.segmentation.gradient = False  # the released behaviour (enhanced image detached)
  detached = scl_lle.Method(cfg)
  batch = {k: jnp.asarray(v) for k, v in _batch(config, 2, seed=2).items()}
  frozen = jax.device_get(setup.frozen)

  def grads(name, method):
    return jax.jit(jax.grad(lambda p: method.loss_terms(p, frozen, batch)[name].mean()))(
        host_state.params["enhancer"])

  norm = lambda g: float(np.sqrt(sum(np.square(np.asarray(x)).sum() for x in jax.tree.leaves(g))))
  assert norm(grads("semantic_brightness", setup.method)) > 0
  assert norm(grads("segmentation", detached)) == 0.0


@pytest.mark.parametrize("arg", ["", "demo", "smoke", "smoke,steps=7"])
def test_configs_load_and_build_the_method(arg):
  config = scl_config.get_config(arg)
  method = base.load_method(config)
  assert isinstance(method, scl_lle.Method) and method.groups == ("enhancer",)
  assert config.data.source == "scl" and config.data.pool_size == config.data.crop
  if not arg:
    assert (config.batch_size, config.total_steps, config.data.crop) == (2, 50_000, 384)
    assert config.optim.enhancer.lr == 1e-4 and config.optim.enhancer.clip_norm == 0.1
    assert dict(config.loss_weights) == dict(contrast_appearance=10.0, contrast_gram=5.0,
                                             semantic_brightness=1.0, segmentation=1.0,
                                             feature_retention=1.0, color=8.0, tv=200.0)
  if "steps=7" in arg:
    assert config.total_steps == 7


def test_weight_sources_released_enhancer_and_deeplab(conformance_dir):
  config = scl_config.get_config("")
  # No VGG needed here.
  config.loss_weights.contrast_gram = config.loss_weights.feature_retention = 0.0
  config.init_from = str(conformance_dir / "weights/scl_lle.npz")
  fixture = conformance_dir / "fixtures/deeplabv3plus_mobilenetv2_os16_random.npz"
  config.segmentation.weights = str(fixture)
  method = scl_lle.Method(config)
  shapes = jax.eval_shape(lambda r: dict(method.init(r, method.example_batch())), jax.random.key(0))
  loaded = towers.converted_variables(method.weight_sources(), shapes)
  released = np.load(conformance_dir / "weights/scl_lle.npz")
  np.testing.assert_array_equal(loaded["params"]["enhancer"]["e_conv7"]["bias"],
                                released["e_conv7.bias"])
  np.testing.assert_array_equal(loaded["params"]["enhancer"]["e_conv1"]["kernel"],
                                released["e_conv1.weight"].transpose(2, 3, 1, 0))
  expected = deeplab.convert_deeplabv3plus(dict(np.load(fixture)))
  for a, b in zip(jax.tree.leaves(loaded["frozen"]["deeplab"]), jax.tree.leaves(expected)):
    np.testing.assert_array_equal(a, b)


def test_weight_sources_vgg_keeps_the_convs_up_to_relu4_3(tmp_path):
  # A torchvision `vgg16().state_dict()`-shaped file (random values; the classifier is ignored).
  rng = np.random.default_rng(0)
  widths = [(3, 64), (64, 64), (64, 128), (128, 128), (128, 256), (256, 256), (256, 256),
            (256, 512), (512, 512), (512, 512), (512, 512), (512, 512), (512, 512)]
  indices = [0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28]
  state = {}
  for i, (cin, cout) in zip(indices, widths):
    state[f"features.{i}.weight"] = rng.normal(size=(cout, cin, 3, 3)).astype(np.float32)
    state[f"features.{i}.bias"] = rng.normal(size=(cout,)).astype(np.float32)
  state["classifier.6.bias"] = np.zeros(1000, np.float32)
  np.savez(tmp_path / "vgg16.npz", **state)
  config = scl_config.get_config("smoke")
  config.loss_weights.segmentation = 0.0
  config.vgg.weights = str(tmp_path / "vgg16.npz")
  method = scl_lle.Method(config)
  shapes = jax.eval_shape(lambda r: dict(method.init(r, method.example_batch())), jax.random.key(0))
  vgg = towers.converted_variables(method.weight_sources(), shapes)["frozen"]["vgg"]["params"]["features"]
  assert sorted(vgg, key=int) == [str(i) for i in indices[:10]]  # conv 4_3 is features.21
  np.testing.assert_array_equal(vgg["21"]["kernel"],
                                state["features.21.weight"].transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(vgg["0"]["bias"], state["features.0.bias"])
