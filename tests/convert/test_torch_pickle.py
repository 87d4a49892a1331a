"""Tests for the torch-free, code-free PyTorch checkpoint reader."""

import argparse
import copyreg
import io
import os
import pickle
import zipfile

import numpy as np
import pytest
import torch

from lowlight_jax.convert import torch_pickle

# (original .pth, npz copy written by the conformance generator, format)
REAL_CHECKPOINTS = [
    ("sgz_Epoch99.pth", "sgz_epoch99.npz", "zip"),
    ("retinexnet_decomp.pth", "retinexnet_decomnet.npz", "zip"),
    ("zerodce_Epoch99.pth", "zerodce_epoch99.npz", "legacy"),
    ("SCL-LLE.pth", "scl_lle.npz", "legacy"),
]


@pytest.mark.parametrize("pth,npz,fmt", REAL_CHECKPOINTS)
def test_real_checkpoints_bit_exact(conformance_dir, pth, npz, fmt):
  path = conformance_dir / "weights" / pth
  assert torch_pickle.is_torch_zip(path) == (fmt == "zip")
  assert torch_pickle.is_torch_legacy(path) == (fmt == "legacy")
  sd = torch_pickle.extract_state_dict(torch_pickle.load(path))
  with np.load(conformance_dir / "weights" / npz) as ref:
    assert list(sd) == list(ref.files)
    n_sub = 0
    for k in ref.files:
      assert sd[k].dtype == ref[k].dtype == np.float32, k
      assert sd[k].shape == ref[k].shape, k
      # Compare bit patterns: subnormals (and signed zeros) must survive untouched.
      np.testing.assert_array_equal(sd[k].view(np.uint32), ref[k].view(np.uint32), err_msg=k)
      a = np.abs(sd[k])
      n_sub += int(np.count_nonzero((a > 0) & (a < np.finfo(np.float32).tiny)))
  expected_subnormals = {"sgz_Epoch99.pth": 6127, "retinexnet_decomp.pth": 0,
                         "zerodce_Epoch99.pth": 19266, "SCL-LLE.pth": 41669}  # MANIFEST.md
  assert n_sub == expected_subnormals[pth]


def _random_checkpoint():
  g = torch.Generator().manual_seed(0)
  base = torch.randn(6, 8, generator=g)
  state = {
      "transposed": base.t(),                        # non-contiguous view of a shared storage
      "strided": base[1:5:2, ::3],                   # offset + strides
      "conv.weight": torch.randn(4, 3, 3, 3, generator=g).permute(0, 2, 3, 1),
      "half": torch.randn(3, 4, generator=g).half(),
      "bf16": torch.randn(5, generator=g).bfloat16(),
      "double": torch.randn(3, generator=g).double(),
      "long": torch.arange(-5, 7).reshape(3, 4),
      "int8": torch.tensor([-3, 4], dtype=torch.int8),
      "uint8": torch.randint(0, 255, (4,), dtype=torch.uint8, generator=g),
      "bool": torch.tensor([True, False, True]),
      "param": torch.nn.Parameter(torch.randn(2, 2, generator=g)),
      "empty": torch.zeros(0, 3),
      "scalar": torch.tensor(3.5),
      "bn.num_batches_tracked": torch.tensor(7),
  }
  return state, {"state_dict": state, "epoch": 3, "args": argparse.Namespace(lr=1e-4, name="x"),
                 "best": np.float64(2.5), "hist": np.arange(4.0), "size": torch.Size([2, 3])}


def _expected(t: torch.Tensor) -> np.ndarray:
  t = t.detach()
  return t.float().numpy() if t.dtype == torch.bfloat16 else t.numpy()


@pytest.mark.parametrize("zip_format", [True, False])
def test_torch_save_round_trip(tmp_path, zip_format):
  state, ckpt = _random_checkpoint()
  path = tmp_path / "ckpt.pth"
  torch.save(ckpt, path, _use_new_zipfile_serialization=zip_format)
  assert torch_pickle.is_torch_zip(path) == zip_format
  out = torch_pickle.load(path)
  assert out["epoch"] == 3
  assert out["args"].lr == 1e-4 and out["args"].name == "x"
  assert out["best"] == 2.5 and out["best"].dtype == np.float64
  np.testing.assert_array_equal(out["hist"], np.arange(4.0))
  assert tuple(out["size"]) == (2, 3)
  got = out["state_dict"]
  assert list(got) == list(state)
  for k, v in state.items():
    exp = _expected(v)
    assert got[k].dtype == exp.dtype, (k, got[k].dtype, exp.dtype)
    assert got[k].shape == exp.shape, k
    np.testing.assert_array_equal(got[k], exp, err_msg=k)
    assert got[k].flags.c_contiguous and got[k].flags.writeable


def test_extract_state_dict_unwraps_and_strips(tmp_path):
  g = torch.Generator().manual_seed(1)
  sd = {"module.a.weight": torch.randn(2, 3, generator=g),
        "module.a.bias": torch.randn(2, generator=g)}
  path = tmp_path / "wrapped.pth"
  torch.save({"epoch": 1, "model": {"params_ema": sd}}, path)
  out = torch_pickle.extract_state_dict(torch_pickle.load(path))
  assert list(out) == ["a.weight", "a.bias"]
  np.testing.assert_array_equal(out["a.weight"], sd["module.a.weight"].numpy())
  assert list(torch_pickle.extract_state_dict(torch_pickle.load(path), key="model.params_ema")) == \
      ["a.weight", "a.bias"]


# --- malicious checkpoints
# -------------------------------------------------------------------------------


class _Payload:
  def __init__(self, func, arg):
    self.func, self.arg = func, arg

  def __reduce__(self):
    return self.func, (self.arg,)


def _touch_cmd(marker) -> str:
  return f"touch {marker}"


def _write_zip(path, data_pkl: bytes) -> None:
  with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
    zf.writestr("archive/data.pkl", data_pkl)
    zf.writestr("archive/byteorder", "little")
    zf.writestr("archive/version", "3\n")


def _legacy_stream(main: bytes, first: bytes | None = None) -> bytes:
  head = first if first is not None else pickle.dumps(0x1950A86A20F9469CFC6C, protocol=2)
  return (head + pickle.dumps(1001, protocol=2)
          + pickle.dumps({"protocol_version": 1001, "little_endian": True}, protocol=2)
          + main + pickle.dumps([], protocol=2))


def _malicious_pickles(marker) -> dict[str, bytes]:
  cmd = _touch_cmd(marker)
  eval_src = f"__import__('os').system({cmd!r})"
  return {
      # os.system through STACK_GLOBAL + REDUCE, hidden inside an otherwise normal state dict.
      "os_system": pickle.dumps({"w": 1.0, "evil": _Payload(os.system, cmd)}, protocol=2),
      # builtins.eval through the text GLOBAL opcode (protocol 0).
      "builtins_eval": b"cbuiltins\neval\n(V" + eval_src.encode() + b"\ntR.",
      # subprocess via protocol 4 (STACK_GLOBAL).
      "subprocess": pickle.dumps(_Payload(__import__("subprocess").call, ["touch", str(marker)]),
                                 protocol=4),
  }


@pytest.mark.parametrize("kind", ["os_system", "builtins_eval", "subprocess"])
def test_malicious_zip_refused(tmp_path, kind):
  marker = tmp_path / "pwned"
  path = tmp_path / "evil.pth"
  _write_zip(path, _malicious_pickles(marker)[kind])
  with pytest.raises(torch_pickle.UnsafeCheckpointError, match="not on the allowlist") as e:
    torch_pickle.load(path)
  assert any(name in str(e.value) for name in ("system", "eval", "call"))
  assert not marker.exists()


@pytest.mark.parametrize("kind", ["os_system", "builtins_eval", "subprocess"])
def test_malicious_legacy_refused(tmp_path, kind):
  marker = tmp_path / "pwned"
  path = tmp_path / "evil.pth"
  path.write_bytes(_legacy_stream(_malicious_pickles(marker)[kind]))
  assert torch_pickle.is_torch_legacy(path)
  with pytest.raises(torch_pickle.UnsafeCheckpointError):
    torch_pickle.load(path)
  assert not marker.exists()


def test_malicious_legacy_header_refused(tmp_path):
  # The payload sits in the first (magic-number) pickle, before any check on the content.
  marker = tmp_path / "pwned"
  path = tmp_path / "evil.pth"
  path.write_bytes(_legacy_stream(pickle.dumps({}, protocol=2),
                                  first=_malicious_pickles(marker)["os_system"]))
  with pytest.raises(torch_pickle.UnsafeCheckpointError):
    torch_pickle.load(path)
  assert not marker.exists()


@pytest.mark.parametrize("data", [
    # numpy.ndarray((16,)): would hand out uninitialised memory.
    b"\x80\x02cnumpy\nndarray\nK\x10\x85\x85R.",
    # Calling a storage type.
    b"\x80\x02ctorch\nFloatStorage\nK\x10\x85R.",
    # _rebuild_tensor_v2(1, 0, (1,), (1,), False, None): a tensor over a non-storage object.
    b"\x80\x02ctorch._utils\n_rebuild_tensor_v2\n(K\x01K\x00K\x01\x85K\x01\x85\x89NtR.",
])
def test_allowlisted_names_cannot_be_misused(tmp_path, data):
  path = tmp_path / "odd.pth"
  _write_zip(path, data)
  with pytest.raises(torch_pickle.UnsafeCheckpointError):
    torch_pickle.load(path)


def test_extension_registry_goes_through_allowlist(tmp_path):
  # EXT opcodes resolve via copyreg's registry: they must hit find_class as well.
  marker = tmp_path / "pwned"
  code = 0xF0
  copyreg.add_extension(os.system.__module__, "system", code)
  try:
    arg = pickle.dumps(_touch_cmd(marker), protocol=2)[2:-1]  # the string, without PROTO and STOP
    data = b"\x80\x02\x82" + bytes([code]) + arg + b"\x85R."
    path = tmp_path / "evil.pth"
    _write_zip(path, data)
    with pytest.raises(torch_pickle.UnsafeCheckpointError, match="system"):
      torch_pickle.load(path)
  finally:
    copyreg.remove_extension(os.system.__module__, "system", code)
  assert not marker.exists()


def test_out_of_bounds_strides_refused(tmp_path):
  # A well-formed tensor whose size/stride would read past its storage (a memory-disclosure
  # attempt).
  state = {"w": torch.arange(4.0)}
  path = tmp_path / "ok.pth"
  torch.save(state, path)
  with zipfile.ZipFile(path) as zf:
    entries = {n: zf.read(n) for n in zf.namelist()}
  pkl_name = next(n for n in entries if n.endswith("data.pkl"))
  # The size tuple (4,) is pickled as BININT1 4 + TUPLE1; make it (400,).
  old = b"K\x04\x85"
  assert entries[pkl_name].count(old) == 1
  entries[pkl_name] = entries[pkl_name].replace(old, b"M\x90\x01\x85")
  bad = tmp_path / "bad.pth"
  with zipfile.ZipFile(bad, "w", zipfile.ZIP_STORED) as zf:
    for n, d in entries.items():
      zf.writestr(n, d)
  with pytest.raises(torch_pickle.UnsafeCheckpointError, match="past its storage"):
    torch_pickle.load(bad)


def test_not_a_checkpoint(tmp_path):
  path = tmp_path / "junk.pth"
  path.write_bytes(b"hello world")
  with pytest.raises(pickle.UnpicklingError):
    torch_pickle.load(path)
  assert not torch_pickle.is_torch_legacy(path)
  buf = io.BytesIO()
  np.save(buf, np.zeros(2))
  path.write_bytes(buf.getvalue())
  with pytest.raises(pickle.UnpicklingError):
    torch_pickle.load(path)


def test_payloads_are_live(tmp_path):
  # Control: the same bytes DO run their payload under the stock unpickler, so the refusals above
  # are real.
  for kind, data in _malicious_pickles(tmp_path / "pwned").items():
    pickle.loads(data)
    assert (tmp_path / "pwned").exists(), kind
    (tmp_path / "pwned").unlink()
