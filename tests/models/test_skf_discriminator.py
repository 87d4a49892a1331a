"""SKF SA discriminator: parity with the authors' D_Net.Discriminator, conversion checks, bf16."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lowlight_jax import errors
from lowlight_jax.convert import layout
from lowlight_jax.convert import skf_discriminator as convert
from lowlight_jax.models.skf_discriminator import SKFDiscriminator


@pytest.fixture(scope="module")
def fixture(conformance_dir):
  d = conformance_dir / "fixtures"
  return {"sd": dict(np.load(d / "skf_dnet_weights.npz")), "io": np.load(d / "skf_dnet_io.npz"),
          "keys": json.loads((d / "skf_dnet_keys.json").read_text()),
          "losses": json.loads((d / "skf_dnet_losses.json").read_text())}


@pytest.fixture(scope="module")
def variables(fixture):
  return convert.convert_skf_discriminator(fixture["sd"])


def _nhwc(a):
  return jnp.asarray(a.transpose(0, 2, 3, 1))


def _close(ours, ref):
  ref = np.asarray(ref)
  np.testing.assert_allclose(np.asarray(ours), ref, rtol=0, atol=1e-5 * np.abs(ref).max())


def test_structure_matches_state_dict(fixture, variables):
  keys = fixture["keys"]
  n = sum(x.size for x in jax.tree.leaves(variables["params"]))
  assert n == keys["num_trainable_parameters"] == 4_725_377
  # Both stems exist whatever the init input; every torch key maps back.
  init = convert.init_shapes()
  assert set(init["params"]) == {f"conv{i}" for i in range(10)} | {f"bn{i}" for i in range(2, 9)}
  back = layout.flax_to_torch(variables)
  assert sorted(back) == sorted(k["key"] for k in keys["keys"])
  for k in keys["keys"]:
    np.testing.assert_array_equal(back[k["key"]], fixture["sd"][k["key"]])


def test_eval_outputs_match_released(fixture, variables):
  io, model = fixture["io"], SKFDiscriminator()
  x3, seg = _nhwc(io["x3"]), _nhwc(io["seg"])
  y3, state = model.apply(variables, x3, capture_intermediates=True, mutable=["intermediates"])
  assert y3.shape == (2, 1) and y3.dtype == jnp.float32
  _close(y3, io["y3"])
  conv9 = state["intermediates"]["conv9"]["__call__"][0]
  _close(conv9, io["conv9_out_x3"].transpose(0, 2, 3, 1))  # (2, 6, 6, 1): 64/16 + 2
  bias = float(variables["params"]["conv9"]["bias"][0])
  np.testing.assert_allclose(np.asarray(conv9)[:, 0], bias, rtol=1e-6)  # the padding ring
  _close(model.apply(variables, jnp.concatenate([x3, seg], -1)), io["y62"])  # conv0 stem
  _close(model.apply(variables, _nhwc(io["x3_odd"])), io["y3_odd"])  # 50 x 70


def test_train_mode_uses_batch_statistics(fixture, variables):
  io, model = fixture["io"], SKFDiscriminator()
  calls = fixture["losses"]["results"]["drbn_train_mode"]["D_calls_in_order"]
  y, updates = model.apply(variables, _nhwc(io["fake"]), train=True, mutable=["batch_stats"])
  _close(y[:, 0], calls[0])
  y, _ = model.apply(variables, _nhwc(io["real"]), train=True, mutable=["batch_stats"])
  _close(y[:, 0], calls[1])
  moved = jax.tree.leaves(jax.tree.map(lambda a, b: float(jnp.abs(a - b).max()),
                                       updates["batch_stats"], variables["batch_stats"]))
  assert min(moved) > 0  # running statistics updated


def test_channel_dispatch_and_errors(variables):
  model = SKFDiscriminator()
  with pytest.raises(ValueError, match="3 or 62"):
    model.apply(variables, jnp.zeros((1, 32, 32, 4)))
  # A model initialised on image + semantics also has the plain stem.
  v = jax.eval_shape(SKFDiscriminator(semantic_channels=5).init, jax.random.key(0),
                     jnp.zeros((1, 16, 16, 8)))
  assert v["params"]["conv1"]["kernel"].shape == (3, 3, 3, 64)
  assert v["params"]["conv0"]["kernel"].shape == (3, 3, 8, 64)


def test_converter_names_bad_keys(fixture):
  sd = fixture["sd"]
  no_conv0 = {k: v for k, v in sd.items() if not k.startswith("conv0.")}
  with pytest.raises(errors.WeightsError, match=r"missing keys \(2\): conv0.bias, conv0.weight"):
    convert.convert_skf_discriminator(no_conv0)  # e.g. SNR-SKF's discriminator
  with pytest.raises(errors.WeightsError, match="unexpected keys .*: conv10.weight"):
    convert.convert_skf_discriminator(dict(sd, **{"conv10.weight": np.zeros((1, 1, 1, 1))}))
  with pytest.raises(errors.WeightsError, match="conv0.weight: checkpoint"):
    convert.convert_skf_discriminator(sd, semantic_channels=20)
  # DataParallel prefixes and num_batches_tracked are fine.
  wrapped = {f"module.{k}": v for k, v in sd.items()}
  wrapped["module.bn2.num_batches_tracked"] = np.asarray(3)
  v = convert.convert_skf_discriminator(wrapped)
  np.testing.assert_array_equal(v["batch_stats"]["bn8"]["var"], sd["bn8.running_var"])


def test_bfloat16_compute_runs(fixture, variables):
  io = fixture["io"]
  x = jnp.concatenate([_nhwc(io["x3"]), _nhwc(io["seg"])], -1)[:, :32, :32]
  model = SKFDiscriminator(dtype=jnp.bfloat16)
  y32 = jax.jit(SKFDiscriminator().apply)(variables, x)
  y = jax.jit(model.apply)(variables, x)
  assert y.dtype == jnp.float32 and y.shape == (2, 1)
  np.testing.assert_allclose(y, y32, atol=0.03)

  # Training in bf16: train-mode BatchNorm, gradients finite and float32 like the params.
  @jax.jit
  def grads(p):
    def loss(p):
      out, _ = model.apply({"params": p, "batch_stats": variables["batch_stats"]}, x, train=True,
                           mutable=["batch_stats"])
      return jnp.mean(jnp.square(out - 1))
    return jax.grad(loss)(p)

  g = grads(variables["params"])
  assert all(a.dtype == jnp.float32 and bool(jnp.isfinite(a).all()) for a in jax.tree.leaves(g))
  assert float(jnp.abs(g["conv0"]["kernel"]).max()) > 0
