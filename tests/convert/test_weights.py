"""convert(method, state_dict) for every supported network; the converted-weights file format."""

import jax
import numpy as np
import pytest
import torch
import torchvision

from lowlight_jax.convert import io
from lowlight_jax.convert import weights

RELEASED = [("sgz", "sgz_Epoch99.pth", 10_561), ("zero_dce", "zerodce_Epoch99.pth", 79_416),
            ("scl_lle", "SCL-LLE.pth", 79_416),
            ("retinexnet_decom", "retinexnet_decomp.pth", 207_748)]


def _count(tree) -> int:
  return sum(int(np.size(x)) for x in jax.tree.leaves(tree))


@pytest.mark.parametrize("method,fname,n_params", RELEASED)
def test_convert_released(conformance_dir, method, fname, n_params):
  sd = io.load_state_dict(conformance_dir / "weights" / fname)
  variables = weights.convert(method, sd)
  assert list(variables) == ["params"]
  assert _count(variables["params"]) == n_params == sum(v.size for v in sd.values())


def test_convert_wrong_network_lists_keys(conformance_dir):
  sd = io.load_state_dict(conformance_dir / "weights" / "zerodce_Epoch99.pth")
  with pytest.raises(ValueError, match="depth_conv"):
    weights.convert("sgz", sd)
  with pytest.raises(ValueError, match="unknown method"):
    weights.convert("zerodce", sd)


def _random_state_dict(builder) -> dict[str, np.ndarray]:
  """torchvision key names and shapes (built on the meta device: no init cost), random values."""
  with torch.device("meta"):
    sd = builder(weights=None).state_dict()
  rng = np.random.default_rng(0)
  # The VGG classifier (~124M values) is dropped by the converter: zeros (lazily allocated) suffice
  # there.
  def fill(k, shape):
    if k.startswith("classifier."):
      return np.zeros(shape, np.float32)
    return rng.random(shape, np.float32)

  return {k: fill(k, tuple(v.shape)) for k, v in sd.items()}


def test_convert_torchvision_vgg16_and_resnet50():
  vgg_sd = _random_state_dict(torchvision.models.vgg16)
  assert any(k.startswith("classifier.") for k in vgg_sd)
  v = weights.convert("vgg16", vgg_sd)
  assert _count(v["params"]) == 14_714_688  # classifier dropped
  np.testing.assert_array_equal(v["params"]["features"]["28"]["kernel"],
                                vgg_sd["features.28.weight"].transpose(2, 3, 1, 0))
  rn_sd = _random_state_dict(torchvision.models.resnet50)
  r = weights.convert("resnet50", rn_sd)
  assert sorted(r) == ["batch_stats", "params"]
  n_fc = rn_sd["fc.weight"].size + rn_sd["fc.bias"].size
  n_stats = sum(a.size for k, a in rn_sd.items() if "running_" in k)
  assert _count(r["params"]) == 25_557_032 - n_fc
  assert _count(r["batch_stats"]) == n_stats


def test_save_load_round_trip(conformance_dir, tmp_path):
  src = conformance_dir / "weights" / "retinexnet_decomp.pth"
  variables = weights.convert("retinexnet_decom", io.load_state_dict(src))
  variables["batch_stats"] = {"bn": {"mean": np.arange(3, dtype=np.float32)}}  # a 2nd collection
  path = tmp_path / "w.msgpack"
  weights.save_params(path, variables, method="retinexnet_decom", source=src)
  assert weights.is_converted_file(path)
  assert [p.name for p in tmp_path.iterdir()] == ["w.msgpack"]
  loaded, meta = weights.load_params(path)
  sha = "c6901c9424100bc24b682c278f8c8318c661c649c3aa36f828a5d6582ba166b9"  # MANIFEST.md
  assert meta == {"format": weights.FORMAT, "method": "retinexnet_decom", "source_name": src.name,
                  "source_sha256": sha}
  assert jax.tree.structure(loaded) == jax.tree.structure(variables)
  for a, b in zip(jax.tree.leaves(loaded), jax.tree.leaves(variables)):
    assert a.dtype == b.dtype
    np.testing.assert_array_equal(a, b)
  # Overwriting is atomic too, and a non-converted file is refused.
  weights.save_params(path, {"params": {}}, method="sgz")
  assert weights.load_params(path)[1]["method"] == "sgz"
  with pytest.raises(ValueError, match="not a converted-weights file"):
    weights.load_params(src)
