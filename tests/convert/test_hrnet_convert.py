"""HRNet checkpoint conversion: the release layout (`model.` prefix, `state_dict`), errors."""

import json

import jax
import numpy as np
import pytest

from lowlight_jax import errors
from lowlight_jax.convert import hrnet as convert_hrnet
from lowlight_jax.models import hrnet

_SMALL = "fixtures/skf_hrnet_small_"


@pytest.fixture(scope="module")
def small(conformance_dir):
  keys = json.loads((conformance_dir / f"{_SMALL}keys.json").read_text())
  config = hrnet.HRNetConfig.from_authors(keys["config_MODEL"], keys["NUM_CLASSES"])
  state = dict(np.load(conformance_dir / f"{_SMALL}weights.npz"))
  return config, state, hrnet.abstract_variables(config)


def _release(state, num_classes):
  """What HRNet-Semantic-Segmentation saves: FullModel(model, loss) keys, plus BN counters."""
  sd = {f"model.{k}": v for k, v in state.items()}
  sd.update({f"model.{k[:-len('running_mean')]}num_batches_tracked": np.array(7, np.int64)
             for k in state if k.endswith("running_mean")})
  sd["loss.criterion.weight"] = np.ones((num_classes,), np.float32)
  return sd


def _assert_same(a, b):
  flat_a = jax.tree_util.tree_flatten_with_path(a)[0]
  flat_b = jax.tree_util.tree_flatten_with_path(b)[0]
  assert [p for p, _ in flat_a] == [p for p, _ in flat_b]
  for (path, x), (_, y) in zip(flat_a, flat_b):
    assert x.dtype == y.dtype, path
    np.testing.assert_array_equal(x, y, err_msg=str(path))


def test_release_and_plain_state_dicts_convert_identically(small, tmp_path):
  config, state, target = small
  plain = convert_hrnet.convert_hrnet(state, config)
  wrapped = {"epoch": 200, "best_mIoU": 0.5, "optimizer": {"state": {}, "param_groups": []},
             "state_dict": _release(state, config.num_classes)}
  _assert_same(plain, convert_hrnet.convert_hrnet(wrapped, config))
  _assert_same(plain, convert_hrnet.convert_hrnet(_release(state, config.num_classes),
                                                  target_variables=target))
  dataparallel = {f"module.{k}": v for k, v in state.items()}
  _assert_same(plain, convert_hrnet.convert_hrnet(dataparallel, config))
  path = tmp_path / "hrnet_release.npz"
  np.savez(path, **_release(state, config.num_classes))
  _assert_same(plain, convert_hrnet.load_hrnet(path, config))
  # Torch layout -> Flax layout, running stats -> batch_stats.
  assert plain["params"]["conv1"]["kernel"].shape == (3, 3, 3, 64)
  np.testing.assert_array_equal(plain["params"]["conv1"]["kernel"],
                                state["conv1.weight"].transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(
      plain["batch_stats"]["stage3"]["1"]["fuse_layers"]["2"]["0"]["1"]["1"]["var"],
      state["stage3.1.fuse_layers.2.0.1.1.running_var"])
  assert plain["params"]["last_layer"]["3"]["bias"].shape == (config.num_classes,)


def test_wrong_class_count_is_named(small):
  config, state, target = small
  bad = dict(state)
  bad["last_layer.3.weight"] = np.zeros((21,) + state["last_layer.3.weight"].shape[1:], np.float32)
  bad["last_layer.3.bias"] = np.zeros((21,), np.float32)
  msg = "classifier last_layer.3.weight has 21 classes, the model 59"
  with pytest.raises(errors.WeightsError, match=msg):
    convert_hrnet.convert_hrnet(bad, config)
  # The class count also comes from the target tree alone (a trainer's abstract subtree).
  with pytest.raises(errors.WeightsError, match=msg):
    convert_hrnet.convert_hrnet({f"model.{k}": v for k, v in bad.items()}, target_variables=target)
  # The default target is SKF's W48 with 59 classes: the small checkpoint does not fit it.
  with pytest.raises(errors.WeightsError, match="stage4.0.branches.0.0.conv1.weight"):
    convert_hrnet.convert_hrnet(state)


def test_missing_unexpected_and_misshaped_keys_are_named(small, tmp_path):
  config, state, target = small
  missing = {k: v for k, v in state.items() if k != "stage2.0.fuse_layers.1.0.0.1.running_var"}
  with pytest.raises(errors.WeightsError,
                     match=r"missing keys \(1\): stage2.0.fuse_layers.1.0.0.1.running_var"):
    convert_hrnet.convert_hrnet(missing, target_variables=target)
  extra = dict(state, **{"stage2.0.fuse_layers.0.2.0.weight": np.zeros((18, 72, 1, 1), np.float32)})
  with pytest.raises(errors.WeightsError, match="unexpected keys.*stage2.0.fuse_layers.0.2.0"):
    convert_hrnet.convert_hrnet(extra, target_variables=target)
  shaped = dict(state, **{"transition2.2.0.0.weight": np.zeros((72, 36, 1, 1), np.float32)})
  with pytest.raises(errors.WeightsError, match="shape mismatch.*transition2.2.0.0.weight"):
    convert_hrnet.convert_hrnet(shaped, target_variables=target)
  # A release file with a stray top-level entry (neither model.* nor loss.*) names it and the file.
  stray = dict(_release(state, 59), **{"aux_head.weight": np.zeros((3,), np.float32)})
  path = tmp_path / "stray.npz"
  np.savez(path, **stray)
  with pytest.raises(errors.WeightsError, match=f"{path}.*aux_head.weight"):
    convert_hrnet.load_hrnet(path, config)
  no_stats = {k: v for k, v in state.items() if "running" not in k}
  with pytest.raises(errors.WeightsError, match="running statistics"):
    convert_hrnet.convert_hrnet(no_stats, target_variables=target)
  garbage = tmp_path / "hrnet.pth"
  garbage.write_bytes(b"not a checkpoint at all")
  with pytest.raises(errors.WeightsError, match="hrnet.pth"):
    convert_hrnet.load_hrnet(garbage, config)
  with pytest.raises(errors.WeightsError, match="no tensors"):
    convert_hrnet.convert_hrnet({"state_dict": {"epoch": 3}}, target_variables=target)
  assert issubclass(errors.WeightsError, ValueError)
