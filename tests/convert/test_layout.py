"""Tests for the torch -> Flax naming rule (lowlight_jax/convert/layout.py)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lowlight_jax.convert import layout


class _Layer(nn.Module):
  """Stands in for a torch nn.Sequential: children named '0', '1', ..."""

  @nn.compact
  def __call__(self, x):
    return nn.Conv(4, (1, 5), use_bias=False, name="0")(x)


class _Block(nn.Module):
  """A tiny net whose names follow torch attributes: conv, depthwise conv, BN, linear."""

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = nn.Conv(8, (3, 3), name="conv1")(x)
    x = nn.BatchNorm(use_running_average=not train, name="bn1")(x)
    x = nn.Conv(8, (3, 3), feature_group_count=8, name="depth_conv")(x)
    x = _Layer(name="layer1")(x)
    return nn.Dense(3, name="fc")(x.mean(axis=(1, 2)))


def _torch_state_dict(rng):
  """Torch-layout state dict for `_Block`, written by hand."""
  r = lambda *s: rng.standard_normal(s).astype(np.float32)
  return {
      "conv1.weight": r(8, 3, 3, 3), "conv1.bias": r(8),
      "bn1.weight": r(8), "bn1.bias": r(8),
      "bn1.running_mean": r(8), "bn1.running_var": np.abs(r(8)) + 0.5,
      "bn1.num_batches_tracked": np.array(7, np.int64),
      "depth_conv.weight": r(8, 1, 3, 3), "depth_conv.bias": r(8),
      "layer1.0.weight": r(4, 8, 1, 5),
      "fc.weight": r(3, 4), "fc.bias": r(3),
  }


@pytest.fixture(scope="module")
def model_and_target():
  model = _Block()
  # A concrete target with the init's structure, without compiling the random initialisers.
  shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 9, 11, 3)))
  return model, jax.tree.map(lambda s: np.full(s.shape, 0.5, s.dtype), shapes)


def test_layouts_and_names():
  sd = _torch_state_dict(np.random.default_rng(0))
  v = layout.torch_to_flax(sd)
  assert set(v) == {"params", "batch_stats"}
  p = v["params"]
  np.testing.assert_array_equal(p["conv1"]["kernel"][1, 2, 0, 5], sd["conv1.weight"][5, 0, 1, 2])
  assert p["depth_conv"]["kernel"].shape == (3, 3, 1, 8)
  np.testing.assert_array_equal(p["depth_conv"]["kernel"][0, 2, 0, 6],
                                sd["depth_conv.weight"][6, 0, 0, 2])
  assert p["layer1"]["0"]["kernel"].shape == (1, 5, 8, 4)
  np.testing.assert_array_equal(p["fc"]["kernel"], sd["fc.weight"].T)
  np.testing.assert_array_equal(p["bn1"]["scale"], sd["bn1.weight"])
  np.testing.assert_array_equal(v["batch_stats"]["bn1"]["var"], sd["bn1.running_var"])
  assert "num_batches_tracked" not in str(v)
  # No running stats -> no batch_stats collection.
  assert set(layout.torch_to_flax({"a.weight": np.zeros((2, 3))})) == {"params"}


def test_round_trip(model_and_target):
  model, target = model_and_target
  sd = _torch_state_dict(np.random.default_rng(1))
  variables = layout.assign(target, layout.torch_to_flax(sd))
  back = layout.flax_to_torch(variables)
  assert set(back) == set(sd) - {"bn1.num_batches_tracked"}
  for k, v in back.items():
    np.testing.assert_array_equal(v, sd[k], err_msg=k)
  # flax -> torch -> flax is the identity too.
  again = layout.torch_to_flax(back)
  jax.tree.map(np.testing.assert_array_equal, again, variables)
  # The converted tree is usable by the model.
  y = model.apply(variables, jnp.ones((2, 9, 11, 3)))
  assert y.shape == (2, 3) and bool(jnp.all(jnp.isfinite(y)))


def test_assign_accepts_abstract_target(model_and_target):
  model, _ = model_and_target
  abstract = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 9, 11, 3)))
  sd = _torch_state_dict(np.random.default_rng(2))
  out = layout.assign(abstract, layout.torch_to_flax(sd))
  assert out["params"]["fc"]["kernel"].dtype == np.float32
  np.testing.assert_array_equal(out["params"]["fc"]["bias"], sd["fc.bias"])


def test_assign_error_names_torch_keys(model_and_target):
  _, target = model_and_target
  sd = _torch_state_dict(np.random.default_rng(3))
  del sd["fc.bias"]
  del sd["bn1.running_mean"]
  sd["extra.weight"] = np.zeros((2, 2), np.float32)
  sd["conv1.weight"] = np.zeros((8, 3, 5, 5), np.float32)
  with pytest.raises(ValueError) as e:
    layout.assign(target, layout.torch_to_flax(sd))
  msg = str(e.value)
  assert "missing keys (2): bn1.running_mean, fc.bias" in msg
  assert "unexpected keys (1): extra.weight" in msg
  assert "shape mismatch (1): conv1.weight: checkpoint (5, 5, 3, 8)" in msg
  assert "(3, 3, 3, 8)" in msg


def test_assign_non_strict(model_and_target):
  _, target = model_and_target
  sd = _torch_state_dict(np.random.default_rng(4))
  del sd["fc.bias"]
  sd["extra.weight"] = np.zeros((2, 2), np.float32)
  out = layout.assign(target, layout.torch_to_flax(sd), strict=False)
  np.testing.assert_array_equal(out["params"]["fc"]["bias"], target["params"]["fc"]["bias"])
  np.testing.assert_array_equal(out["params"]["conv1"]["bias"], sd["conv1.bias"])
  assert "extra" not in out["params"]
  # Shapes are checked even when not strict.
  sd["fc.weight"] = np.zeros((3, 5), np.float32)
  with pytest.raises(ValueError, match="fc.weight"):
    layout.assign(target, layout.torch_to_flax(sd), strict=False)
