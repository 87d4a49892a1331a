"""DeepLabV3+ (MobileNetV2, OS 16): key-for-key conversion, size, parity with VainF's code."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lowlight_jax.convert import deeplab
from lowlight_jax.convert import layout
from lowlight_jax.models import deeplabv3plus as dl

_FIX = "fixtures/deeplabv3plus_"


@pytest.fixture(scope="module")
def fixture(conformance_dir):
  state = dict(np.load(conformance_dir / f"{_FIX}mobilenetv2_os16_random.npz"))
  io = dict(np.load(conformance_dir / f"{_FIX}io.npz"))
  keys = json.loads((conformance_dir / f"{_FIX}keys.json").read_text())
  return state, io, keys


def _shapes(model, hw=(96, 160)):
  return jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, *hw, 3), jnp.float32))


def test_parameter_count_and_every_key_maps_one_to_one(fixture):
  _, _, keys = fixture
  shapes = _shapes(dl.DeepLabV3PlusMobileNet(normalize_input=False))
  count = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes["params"]))
  assert count == keys["params"] == 5_225_203
  # The Flax tree, named back to torch keys, is exactly the state dict (minus num_batches_tracked)
  # with the
  # torch shapes of every entry.
  ours = layout.flax_to_torch(jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes))
  theirs = {k: tuple(s) for k, s in keys["state_dict_keys"]
            if not k.endswith("num_batches_tracked")}
  assert {k: v.shape for k, v in ours.items()} == theirs


def test_dilation_schedule_and_feature_strides():
  blocks = dl.mobilenet_v2_blocks(16)
  assert len(blocks) == 17
  # (in, out, stride, dilation, t): the 160-channel stage keeps stride 1 and dilates from its second
  # block.
  assert blocks[13] == (96, 160, 1, 1, 6)
  assert blocks[14] == (160, 160, 1, 2, 6) and blocks[16][3] == 2
  feats = jax.eval_shape(
      lambda x: dl.MobileNetV2Backbone().init_with_output(jax.random.key(0), x)[0],
      jnp.zeros((1, 96, 160, 3)))
  # Unpadded stem: 96 -> 47, then stride-2 blocks with fixed padding: 24 (low level), 12, 6.
  assert feats["low_level"].shape == (1, 24, 40, 24)
  assert feats["out"].shape == (1, 6, 10, 320)


@pytest.mark.parity
def test_logits_match_vainf_reference(fixture):
  state, io, _ = fixture
  outside = dl.DeepLabV3PlusMobileNet(normalize_input=False, precision=jax.lax.Precision.HIGHEST)
  inside = outside.clone(normalize_input=True)
  x = jnp.asarray(io["input_nchw"].transpose(0, 2, 3, 1))
  variables = deeplab.convert_deeplabv3plus(state, _shapes(outside))
  # The fixture feeds its input to the torch module as is; for the wrapper, un-normalise it first.
  raw = x * jnp.asarray(dl.IMAGENET_STD) + jnp.asarray(dl.IMAGENET_MEAN)
  both = jax.jit(lambda v, a, b: (outside.apply(v, a)["logits"], inside.apply(v, b)["logits"]))
  logits, logits_wrapped = (np.asarray(y) for y in both(variables, x, raw))
  ref = io["logits_nchw"].transpose(0, 2, 3, 1)
  assert logits.shape == ref.shape == (2, 96, 160, 19)
  err = np.abs(logits - ref).max()
  assert err < 1e-4, err
  assert np.abs(ref).max() > 0.1  # non-trivial reference
  # ImageNet normalisation inside the module: the raw image gives the reference logits.
  assert float(jnp.abs(raw - x).max()) > 0.3
  assert np.abs(logits_wrapped - ref).max() < 1e-4


def test_converter_unwraps_vainf_checkpoint_and_reports_bad_keys(fixture):
  state, _, _ = fixture
  direct = deeplab.convert_deeplabv3plus(state)
  wrapped = {"cur_itrs": 30000, "best_score": 0.7,
             "optimizer_state": {"state": {}, "param_groups": []},
             "model_state": {f"module.{k}": v for k, v in state.items()}}
  via_ckpt = deeplab.convert_deeplabv3plus(wrapped)
  for a, b in zip(jax.tree.leaves(direct), jax.tree.leaves(via_ckpt)):
    np.testing.assert_array_equal(a, b)
  backbone = direct["params"]["backbone"]
  assert backbone["low_level_features"]["0"]["0"]["kernel"].shape == (3, 3, 3, 32)
  # depthwise (C, 1, 3, 3) -> (3, 3, 1, C)
  assert backbone["high_level_features"]["4"]["conv"]["1"]["0"]["kernel"].shape == (3, 3, 1, 144)
  assert direct["batch_stats"]["classifier"]["aspp"]["convs"]["4"]["2"]["var"].shape == (256,)
  broken = {k: v for k, v in state.items() if k != "classifier.aspp.project.0.weight"}
  shapes = _shapes(dl.DeepLabV3PlusMobileNet())
  with pytest.raises(ValueError, match="classifier.aspp.project.0.weight"):
    deeplab.convert_deeplabv3plus(broken, shapes)
  with pytest.raises(ValueError, match="unexpected top-level"):
    deeplab.convert_deeplabv3plus({"e_conv1.weight": np.zeros((32, 3, 3, 3), np.float32)})
