"""Tests for the torch-free `torch.save` writer (convert.torch_save): torch.load and our reader read its files,
its layout matches torch's own output, and writes are atomic."""

import collections
import io
import os
import pickle
import zipfile

import ml_dtypes
import numpy as np
import pytest
import torch

from lowlight_jax.convert import io as convert_io
from lowlight_jax.convert import torch_pickle
from lowlight_jax.convert import torch_save

DTYPES = [np.float32, np.float16, np.float64, np.int64, np.int32, np.uint8, np.bool_, np.int16, np.int8]
TORCH_DTYPES = {np.float32: torch.float32, np.float16: torch.float16, np.float64: torch.float64,
                np.int64: torch.int64, np.int32: torch.int32, np.uint8: torch.uint8, np.bool_: torch.bool,
                np.int16: torch.int16, np.int8: torch.int8}


def _array(rng, dtype, shape):
  if dtype == np.bool_:
    values = rng.random(shape) > 0.5
  elif np.issubdtype(dtype, np.integer):
    info = np.iinfo(dtype)
    values = rng.integers(info.min, info.max, size=shape, dtype=dtype, endpoint=True)
  else:
    values = rng.standard_normal(shape)
  return np.asarray(values, dtype=dtype)  # 0-d stays an array, not a numpy scalar


def _sample():
  rng = np.random.default_rng(0)
  shared = rng.standard_normal((3, 4)).astype(np.float32)
  tensors = collections.OrderedDict()
  for i, dtype in enumerate(DTYPES):
    for shape in ((2, 3, 4), (5,), (), (0, 3)):
      tensors[f"t{i}.{len(shape)}.{'x'.join(map(str, shape))}"] = _array(rng, dtype, shape)
  obj = {
      "zeta": 1,  # insertion order, not sorted
      "state_dict": tensors,
      "nested": {"list": [1, -2, 3.5, "s", None, True, False, [shared, (shared,)]], "tuple": (1, 2, 3, 4, 5),
                 "empty": {}, "empty_list": [], "empty_tuple": ()},
      "ints": [0, 255, 256, 65535, 65536, -1, -(2 ** 31), 2 ** 31, 2 ** 63 + 7, -(2 ** 70)],
      "floats": [0.0, -0.0, 1e-300, float("inf"), 3.141592653589793],
      "unicode": "ünïcødé ✓",
      "shared": shared,
      "big_endian": np.arange(6, dtype=">f4").reshape(2, 3),
      "non_contiguous": np.arange(12, dtype=np.float32).reshape(3, 4).T,
      "numpy_scalars": [np.float32(0.5), np.int64(7), np.bool_(True)],
      "alpha": "last",
  }
  return obj


def _assert_same(got, want, where="obj", *, torch_side: bool):
  if isinstance(want, np.ndarray):
    if torch_side:
      assert isinstance(got, torch.Tensor), where
      assert got.dtype == TORCH_DTYPES[want.dtype.type], (where, got.dtype, want.dtype)
      assert tuple(got.shape) == want.shape, where
      got = got.numpy()
    else:
      assert isinstance(got, np.ndarray), where
      assert got.dtype == want.dtype.newbyteorder("="), (where, got.dtype, want.dtype)
      assert got.shape == want.shape, where
    np.testing.assert_array_equal(got, want, err_msg=where)
  elif isinstance(want, dict):
    assert type(got) is type(want), (where, type(got))
    assert list(got) == list(want), where
    for k in want:
      _assert_same(got[k], want[k], f"{where}[{k!r}]", torch_side=torch_side)
  elif isinstance(want, (list, tuple)):
    assert type(got) is type(want) and len(got) == len(want), where
    for i, (g, w) in enumerate(zip(got, want)):
      _assert_same(g, w, f"{where}[{i}]", torch_side=torch_side)
  elif isinstance(want, np.generic):
    assert type(got) is type(want.item()) and got == want.item(), where
  else:
    assert type(got) is type(want) and (got == want or (got != got and want != want)), (where, got, want)
    if isinstance(want, float):
      assert np.copysign(1.0, got) == np.copysign(1.0, want), where


def test_round_trip_through_torch_load(tmp_path):
  obj = _sample()
  path = tmp_path / "sample.pth"
  torch_save.save(obj, path)
  got = torch.load(path, weights_only=True)
  _assert_same(got, obj, torch_side=True)
  # One array object twice is one tensor (one storage), as torch saves one tensor referenced twice.
  assert got["shared"].data_ptr() == got["nested"]["list"][7][0].data_ptr()
  # mmap loading needs the 64-byte storage alignment.
  mapped = torch.load(path, weights_only=True, mmap=True)
  np.testing.assert_array_equal(mapped["state_dict"]["t0.3.2x3x4"].numpy(), obj["state_dict"]["t0.3.2x3x4"])


def test_round_trip_through_our_reader(tmp_path):
  obj = _sample()
  obj["bf16"] = np.array([1.5, -2.25, 3e38], dtype=ml_dtypes.bfloat16)
  path = tmp_path / "sample.pt"
  torch_save.save(obj, path)
  assert convert_io.sniff_format(path) == "torch_zip"
  got = convert_io.load_checkpoint(path)
  bf16 = got.pop("bf16")
  assert bf16.dtype == np.float32
  np.testing.assert_array_equal(bf16, obj.pop("bf16").astype(np.float32))
  _assert_same(got, obj, torch_side=False)
  assert torch.load(path, weights_only=True)["state_dict"]["t0.1.5"].dtype == torch.float32
  sd = convert_io.load_state_dict(path, key="state_dict")
  assert list(sd) == list(obj["state_dict"])


class _Recorder(pickle.Unpickler):
  """Unpickles data.pkl into inert records: globals by name, persistent ids as tuples."""

  def find_class(self, module, name):
    if (module, name) == ("collections", "OrderedDict"):
      return collections.OrderedDict

    def call(*args):
      return ("call", f"{module}.{name}", args)
    call.tag = f"{module}.{name}"
    return call

  def persistent_load(self, pid):
    return ("pid",) + tuple(getattr(x, "tag", x) for x in pid)


def _records(path):
  with zipfile.ZipFile(path) as zf:
    infos = zf.infolist()
    names = [i.filename for i in infos]
    prefix = names[0].split("/")[0]
    pkl = zf.read(f"{prefix}/data.pkl")
    contents = {n.split("/", 1)[1]: zf.read(n) for n in names}
  with open(path, "rb") as f:
    raw = f.read()
  offsets = {}
  for info in infos:
    # Local header: 30 bytes + name + its own extra field (not necessarily the central directory's).
    start = info.header_offset
    name_len = int.from_bytes(raw[start + 26:start + 28], "little")
    extra_len = int.from_bytes(raw[start + 28:start + 30], "little")
    offsets[info.filename.split("/", 1)[1]] = info.header_offset + 30 + name_len + extra_len
  return prefix, [n.split("/", 1)[1] for n in names], contents, _Recorder(io.BytesIO(pkl)).load(), offsets


def test_layout_matches_torch_save(tmp_path):
  rng = np.random.default_rng(1)
  a = rng.standard_normal((2, 3)).astype(np.float32)
  h = np.full((), 1.5, np.float16)
  i = np.arange(5, dtype=np.int64)
  ours, theirs = tmp_path / "ours.pkl", tmp_path / "theirs.pkl"
  torch_save.save({"a": a, "c": collections.OrderedDict(w=a, h=h), "i": i, "meta": [1, 2.5, "x", None, True]}, ours)
  ta = torch.from_numpy(a.copy())
  torch.save({"a": ta, "c": collections.OrderedDict(w=ta, h=torch.from_numpy(h.copy())), "i": torch.from_numpy(i),
              "meta": [1, 2.5, "x", None, True]}, theirs)
  p1, names1, contents1, obj1, offsets1 = _records(ours)
  p2, names2, contents2, obj2, offsets2 = _records(theirs)
  assert (p1, p2) == ("ours", "theirs")  # the file name without its extension
  assert names1 == names2
  for name in (".format_version", ".storage_alignment", "byteorder", "version"):
    assert contents1[name] == contents2[name], name
  assert len(contents1[".data/serialization_id"]) == len(contents2[".data/serialization_id"]) == 40
  for name in names1:
    if name.startswith("data/"):
      assert contents1[name] == contents2[name], name
      assert offsets1[name] % 64 == 0 and offsets2[name] % 64 == 0, name
  assert obj1 == obj2  # same globals, persistent ids, sizes, strides and arguments


def test_deterministic_and_overwrites(tmp_path):
  obj = _sample()
  p1, p2 = tmp_path / "x" / "a.pth", tmp_path / "a.pth"
  torch_save.save(obj, p1)  # missing parent folders are created
  p2.write_bytes(b"old")
  torch_save.save(obj, p2)
  assert p1.read_bytes() == p2.read_bytes()


def test_unsupported_values_write_nothing(tmp_path):
  path = tmp_path / "bad.pth"
  for bad, where in (({"a": {1, 2}}, "obj['a']"), ({"a": [np.zeros(2, np.complex64)]}, "obj['a'][0]"),
                     ({"a": object()}, "obj['a']")):
    with pytest.raises(TypeError) as info:
      torch_save.save(bad, path)
    assert where in str(info.value)
  loop = ([],)
  loop[0].append(loop)
  with pytest.raises(ValueError, match="contains itself"):
    torch_save.save({"t": loop}, path)
  assert os.listdir(tmp_path) == []


def test_recursive_dicts_and_lists(tmp_path):
  """A dict / list that contains itself is written as pickle writes it (memoised before its items)."""
  obj = {"x": [], "w": np.ones(2, np.float32)}
  obj["x"].append(obj)
  path = tmp_path / "loop.pth"
  torch_save.save(obj, path)
  for got in (torch_pickle.load(path), torch.load(path, weights_only=True)):
    assert got["x"][0] is got


def test_failed_write_is_atomic(tmp_path, monkeypatch):
  obj = {"a": np.ones((64, 64), np.float32), "b": np.zeros(10, np.float32), "c": np.arange(3)}
  path = tmp_path / "ckpt.pth"
  calls = []
  real = torch_save._storage_bytes

  def failing(arr):
    calls.append(arr.shape)
    if len(calls) == 2:  # after the first storage was written
      raise OSError("disk full")
    return real(arr)

  monkeypatch.setattr(torch_save, "_storage_bytes", failing)
  with pytest.raises(OSError, match="disk full"):
    torch_save.save(obj, path)
  assert os.listdir(tmp_path) == []  # no file at path, no temporary file

  monkeypatch.setattr(torch_save, "_storage_bytes", real)
  torch_save.save({"old": np.arange(4)}, path)
  before = path.read_bytes()
  calls.clear()
  monkeypatch.setattr(torch_save, "_storage_bytes", failing)
  with pytest.raises(OSError, match="disk full"):
    torch_save.save(obj, path)
  assert path.read_bytes() == before  # the existing file survives
  assert os.listdir(tmp_path) == ["ckpt.pth"]
  np.testing.assert_array_equal(torch_pickle.load(path)["old"], np.arange(4))
