"""HRNet (SKF's semantic prior): parity with the authors' seg_hrnet.py, W48 structure, bf16."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lowlight_jax import errors
from lowlight_jax.convert import hrnet as convert_hrnet
from lowlight_jax.convert import layout
from lowlight_jax.models import hrnet

_SMALL = "fixtures/skf_hrnet_small_"
_W48_KEYS = "fixtures/skf_hrnet_w48_keys.json"


def _nhwc(a):
  return np.asarray(a).transpose(0, 2, 3, 1)


@pytest.fixture(scope="module")
def small(conformance_dir):
  keys = json.loads((conformance_dir / f"{_SMALL}keys.json").read_text())
  config = hrnet.HRNetConfig.from_authors(keys["config_MODEL"], keys["NUM_CLASSES"])
  state = dict(np.load(conformance_dir / f"{_SMALL}weights.npz"))
  io = dict(np.load(conformance_dir / f"{_SMALL}io.npz"))
  variables = convert_hrnet.convert_hrnet(state, config)
  return config, variables, io, keys


@pytest.fixture(scope="module")
def small_outputs(small):
  config, variables, io, _ = small
  model = hrnet.HRNet(config, precision=jax.lax.Precision.HIGHEST)
  return jax.jit(model.apply)(variables, jnp.asarray(_nhwc(io["x"])))


def _rel_err(ours, ref_nchw):
  ref = _nhwc(ref_nchw)
  ours = np.asarray(ours, np.float32)
  assert ours.shape == ref.shape
  return float(np.abs(ours - ref).max() / np.abs(ref).max())


def test_small_config_is_the_fixture_yaml(small):
  config, variables, _, keys = small
  assert config.align_corners is keys["ALIGN_CORNERS"] is True
  assert config.stage3.num_modules == 2 and config.stage1.num_blocks == (2,)
  assert config.stage4.out_channels == (18, 36, 72, 144) and config.head_channels == 270
  assert hrnet.count_params(variables) == keys["num_trainable_parameters"]
  n_stats = sum(v.size for v in jax.tree.leaves(variables["batch_stats"]))
  assert hrnet.count_params(variables) + n_stats == keys["num_params_in_npz"]


def test_small_fixture_matches_authors_outputs(small, small_outputs):
  _, _, io, _ = small
  out = small_outputs
  assert float(np.abs(io["seg_logits"]).max()) > 1.0  # non-trivial reference
  # Everything but the softmax agrees to ~5e-6 relative. A float64 run of this port lands as far
  # from the (float32) reference, so that is the reference's own rounding.
  for name, ref in (("logits", "seg_logits"), ("logits_quarter", "logits_quarter")):
    assert out[name].dtype == jnp.float32
    assert _rel_err(out[name], io[ref]) < 1e-5, name
  for i, feature in enumerate(out["features"]):
    assert _rel_err(feature, io[f"feat{i}"]) < 1e-5, i
  # The softmax amplifies that rounding (float64 port vs reference: 1.3e-5).
  assert _rel_err(out["probs"], io["seg_map"]) < 3e-5
  np.testing.assert_allclose(np.asarray(out["probs"]).sum(-1), 1.0, atol=1e-5)


def test_logits_are_upsampled_align_corners_then_softmaxed(small, small_outputs):
  config, _, io, _ = small
  out = small_outputs
  quarter = out["logits_quarter"]
  h0, w0 = quarter.shape[1:3]
  assert out["logits"].shape[1:3] == (4 * h0, 4 * w0) == io["x"].shape[2:]
  # Corners of an align_corners=True resize are the source corners exactly.
  np.testing.assert_array_equal(np.asarray(out["logits"])[:, [0, -1]][:, :, [0, -1]],
                                np.asarray(quarter)[:, [0, -1]][:, :, [0, -1]])
  np.testing.assert_allclose(np.asarray(out["probs"]),
                             np.asarray(jax.nn.softmax(out["logits"], axis=-1)), atol=1e-7)
  # align_corners=False moves the logits far off the reference (the fixture doc: up to 2.25).
  assert config.align_corners
  off = jax.image.resize(quarter, out["logits"].shape, "bilinear")
  assert float(jnp.abs(off - out["logits"]).max()) > 0.5


def test_odd_input_size_gives_four_times_the_rounded_up_stride4_size(small):
  config, variables, _, _ = small
  x = jax.ShapeDtypeStruct((2, 63, 93, 3), jnp.float32)
  out = jax.eval_shape(hrnet.HRNet(config).apply, variables, x)
  # Stem: two stride-2 pad-1 convs round up: 63 -> 32 -> 16, 93 -> 47 -> 24.
  assert hrnet.output_hw((63, 93)) == (64, 96)
  assert out["probs"].shape == out["logits"].shape == (2, 64, 96, config.num_classes)
  assert [f.shape for f in out["features"]] == [
      (2, 16, 24, 18), (2, 8, 12, 36), (2, 4, 6, 72), (2, 2, 3, 144)]


def test_bfloat16_compute_runs_and_stays_close(small, small_outputs):
  config, variables, io, _ = small
  out = jax.jit(hrnet.HRNet(config, dtype=jnp.bfloat16).apply)(
      variables, jnp.asarray(_nhwc(io["x"])))
  assert all(f.dtype == jnp.bfloat16 for f in out["features"])
  assert out["logits"].dtype == out["probs"].dtype == jnp.float32
  assert all(bool(jnp.isfinite(f.astype(jnp.float32)).all()) for f in out["features"])
  # 8-bit mantissas through ~30 random (He-scaled) layers: ~6% of max|logits| measured.
  assert _rel_err(out["logits"], io["seg_logits"]) < 0.15
  for i, feature in enumerate(out["features"]):
    assert _rel_err(feature, io[f"feat{i}"]) < 0.15, i
  labels = np.asarray(out["logits"]).argmax(-1)
  agree = np.mean(labels == np.asarray(small_outputs["logits"]).argmax(-1))
  assert agree > 0.85
  np.testing.assert_allclose(np.asarray(out["probs"]).sum(-1), 1.0, atol=1e-5)


def test_w48_from_keys_json_structure_and_parameter_count(conformance_dir):
  keys = json.loads((conformance_dir / _W48_KEYS).read_text())
  config = hrnet.HRNetConfig.from_authors(keys["config_MODEL"], keys["config_NUM_CLASSES"])
  assert config == hrnet.HRNET_W48_PASCAL_CONTEXT
  assert config.head_channels == 720
  shapes = hrnet.abstract_variables(config)  # eval_shape: no weights, no compute
  assert hrnet.count_params(shapes) == keys["num_parameters"] == 65_888_219
  n_stats = sum(int(np.prod(s.shape)) for s in jax.tree.leaves(shapes["batch_stats"]))
  assert n_stats == keys["num_bn_running_stat_elements"]
  # Every key of the authors' state dict maps onto the model by the naming rule, shape for shape.
  ours = {}
  for collection in ("params", "batch_stats"):
    flat = jax.tree_util.tree_flatten_with_path(shapes[collection])[0]
    for path, leaf in flat:
      ours[(collection,) + tuple(p.key for p in path)] = tuple(leaf.shape)
  theirs = {}
  for entry in keys["keys"]:
    shape = tuple(entry["shape"])
    collection, path = layout.torch_key_to_flax(entry["key"], len(shape))
    if path[-1] == "kernel":
      shape = shape[2:] + (shape[1], shape[0])  # OIHW -> HWIO
    theirs[(collection,) + path] = shape
  assert len(theirs) == len(keys["keys"])
  assert len(theirs) == keys["num_state_dict_entries_excluding_num_batches_tracked"] == 1533
  assert ours == theirs


def test_config_errors_name_the_field():
  w48 = hrnet.HRNET_W48_PASCAL_CONTEXT
  with pytest.raises(errors.ConfigError, match="NUM_BRANCHES 3"):
    hrnet.HRNetConfig.from_authors(
        {"EXTRA": {"STAGE1": {"BLOCK": "BOTTLENECK", "NUM_BLOCKS": [1], "NUM_CHANNELS": [64]},
                   "STAGE2": {"NUM_BRANCHES": 3, "BLOCK": "BASIC", "NUM_BLOCKS": [1, 1],
                              "NUM_CHANNELS": [8, 16]}}}, 59)
  with pytest.raises(errors.ConfigError, match="STAGE3"):
    hrnet.HRNetConfig.from_authors({"EXTRA": {"STAGE1": {"BLOCK": "BASIC", "NUM_BLOCKS": [1],
                                                         "NUM_CHANNELS": [64]},
                                              "STAGE2": {"NUM_BRANCHES": 1, "BLOCK": "BASIC",
                                                         "NUM_BLOCKS": [1],
                                                         "NUM_CHANNELS": [8]}}}, 59)
  with pytest.raises(errors.ConfigError, match="'RESNEXT'"):
    hrnet.StageConfig(1, "RESNEXT", (1,), (8,))
  with pytest.raises(errors.ConfigError, match="one branch"):
    hrnet.HRNetConfig(w48.stage2, w48.stage2, w48.stage3, w48.stage4)
