"""Tests for format detection and the npz / safetensors / torch state-dict loaders."""

import numpy as np
import pytest
import torch
from safetensors.numpy import save_file as save_safetensors_np
from safetensors.torch import save_file as save_safetensors_torch

from lowlight_jax.convert import io


def _arrays(seed=0):
  rng = np.random.default_rng(seed)
  return {
      "conv.weight": rng.standard_normal((4, 3, 3, 3)).astype(np.float32),
      "conv.bias": rng.standard_normal(4).astype(np.float32),
      "half": rng.standard_normal((2, 5)).astype(np.float16),
      "double": rng.standard_normal(3),
      "steps": np.arange(-3, 3, dtype=np.int64),
      "mask": np.array([True, False]),
      "bytes": np.arange(7, dtype=np.uint8),
      "empty": np.zeros((0, 2), np.float32),
  }


def _assert_same(got, ref):
  assert sorted(got) == sorted(ref)
  for k in ref:
    assert got[k].dtype == ref[k].dtype and got[k].shape == ref[k].shape, k
    np.testing.assert_array_equal(got[k], ref[k], err_msg=k)


def test_npz(tmp_path):
  ref = _arrays()
  np.savez(tmp_path / "w.npz", **ref)
  assert io.sniff_format(tmp_path / "w.npz") == "npz"
  _assert_same(io.load_state_dict(tmp_path / "w.npz"), ref)


def test_safetensors_numpy_writer(tmp_path):
  ref = _arrays(1)
  path = tmp_path / "w.safetensors"
  save_safetensors_np(ref, str(path), metadata={"format": "np", "note": "x"})
  assert io.sniff_format(path) == "safetensors"
  tensors, meta = io.load_safetensors(path)
  assert meta == {"format": "np", "note": "x"}
  _assert_same(tensors, ref)
  _assert_same(io.load_state_dict(path), ref)


def test_safetensors_bfloat16_is_widened_exactly(tmp_path):
  g = torch.Generator().manual_seed(0)
  t = {"w": torch.randn(3, 4, generator=g).bfloat16(), "b": torch.randn(4, generator=g)}
  path = tmp_path / "w.bin"  # the name does not matter: the content does
  save_safetensors_torch(t, str(path))
  got = io.load_state_dict(path)
  assert got["w"].dtype == np.float32
  np.testing.assert_array_equal(got["w"], t["w"].float().numpy())
  np.testing.assert_array_equal(got["b"], t["b"].numpy())


def test_safetensors_bad_offsets_rejected(tmp_path):
  path = tmp_path / "w.safetensors"
  save_safetensors_np({"a": np.zeros(4, np.float32)}, str(path))
  raw = bytearray(path.read_bytes())
  n = int.from_bytes(raw[:8], "little")
  header = raw[8:8 + n].decode().replace('"data_offsets":[0,16]', '"data_offsets":[0,64]')
  assert len(header) == n
  raw[8:8 + n] = header.encode()
  path.write_bytes(bytes(raw))
  with pytest.raises(ValueError, match="data_offsets"):
    io.load_safetensors(path)


@pytest.mark.parametrize("zip_format", [True, False])
def test_torch_files_dispatch(tmp_path, zip_format):
  ref = _arrays(2)
  path = tmp_path / "w.pt"
  torch.save({"state_dict": {f"module.{k}": torch.from_numpy(v) for k, v in ref.items()}}, path,
             _use_new_zipfile_serialization=zip_format)
  assert io.sniff_format(path) == ("torch_zip" if zip_format else "torch_legacy")
  _assert_same(io.load_state_dict(path), ref)


def test_real_files_agree_across_formats(conformance_dir):
  w = conformance_dir / "weights"
  for pth, npz in [("sgz_Epoch99.pth", "sgz_epoch99.npz"), ("SCL-LLE.pth", "scl_lle.npz")]:
    a, b = io.load_state_dict(w / pth), io.load_state_dict(w / npz)
    assert list(a) == list(b)
    for k in a:
      np.testing.assert_array_equal(a[k].view(np.uint32), b[k].view(np.uint32))


def test_unknown_format(tmp_path):
  path = tmp_path / "w.pth"
  path.write_text("not a checkpoint at all")
  with pytest.raises(ValueError, match="unrecognised"):
    io.load_state_dict(path)
