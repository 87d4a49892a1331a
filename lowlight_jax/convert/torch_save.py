"""Writes `torch.save` files without torch: nested containers with numpy arrays as tensors.

The output is what torch >= 1.6 writes by default (`_use_new_zipfile_serialization=True`), so
`torch.load(path, weights_only=True)` reads it, and so does our own reader (`convert.io` /
`convert.torch_pickle`). Layout (checked against torch's own output in tests/convert/test_torch_save.py):

  <archive>/data.pkl                pickle protocol 2 of the object; every tensor is
                                    `torch._utils._rebuild_tensor_v2(storage, 0, size, stride, False,
                                    collections.OrderedDict())` whose storage is the persistent id
                                    `('storage', torch.<Type>Storage, '<key>', 'cpu', numel)`
  <archive>/.format_version         b'1'
  <archive>/.storage_alignment      b'64'
  <archive>/byteorder               b'little'
  <archive>/data/<key>              the storage's raw little-endian elements (one per array)
  <archive>/version                 b'3\\n'
  <archive>/.data/serialization_id  40 decimal digits (here derived from the content, so equal inputs give
                                    byte-identical files)

`<archive>` is the file name without its extension, as torch names it. Records are stored uncompressed and
every storage starts at a multiple of 64 bytes in the file (padding in the local header's extra field, as
torch does), so `torch.load(..., mmap=True)` works too.

Supported values: dict (including OrderedDict; insertion order kept, OrderedDict stays OrderedDict), list,
tuple, str, int, float, bool, None, numpy scalars (written as the Python number), and numpy arrays of
float64 / float32 / float16 / bfloat16 (ml_dtypes) / int64 / int32 / int16 / int8 / uint8 / bool, any
shape including 0-d and empty (written contiguous and little-endian; objects with `__array__`, e.g. jax
arrays, are converted with `np.asarray`). The same array object appearing twice is one tensor (one
storage), as torch saves one tensor referenced twice. Anything else raises TypeError before a file is
created.

The file is written atomically (`io.atomic_io.write_file_atomic`): a temporary file beside `path`, renamed
over it when complete; on any failure no temporary file is left behind and an existing file at `path` is
untouched.
"""

from __future__ import annotations

import collections
import hashlib
import io
import os
import pathlib
import struct
import zipfile
from typing import Any, BinaryIO

import numpy as np

from lowlight_jax.io import atomic_io

PathLike = str | os.PathLike

ALIGNMENT = 64
_CHUNK = 64 << 20  # bytes per write of a storage
_DATE = (1980, 1, 1, 0, 0, 0)

# numpy dtype name -> torch storage class (typed storages, as torch.save names them).
_STORAGE_TYPES = {
    "float64": "DoubleStorage", "float32": "FloatStorage", "float16": "HalfStorage",
    "bfloat16": "BFloat16Storage", "int64": "LongStorage", "int32": "IntStorage",
    "int16": "ShortStorage", "int8": "CharStorage", "uint8": "ByteStorage", "bool": "BoolStorage",
}

# Pickle protocol 2 opcodes used here.
_PROTO, _STOP = b"\x80", b"."
_MARK, _TUPLE, _EMPTY_TUPLE = b"(", b"t", b")"
_TUPLES = {1: b"\x85", 2: b"\x86", 3: b"\x87"}
_EMPTY_DICT, _SETITEMS, _EMPTY_LIST, _APPENDS = b"}", b"u", b"]", b"e"
_NONE, _NEWTRUE, _NEWFALSE = b"N", b"\x88", b"\x89"
_BININT, _BININT1, _BININT2, _LONG1, _LONG4 = b"J", b"K", b"M", b"\x8a", b"\x8b"
_BINFLOAT, _BINUNICODE = b"G", b"X"
_GLOBAL, _REDUCE, _BINPERSID = b"c", b"R", b"Q"
_BINPUT, _LONG_BINPUT, _BINGET, _LONG_BINGET = b"q", b"r", b"h", b"j"
_BATCH = 1000  # items per MARK ... SETITEMS / APPENDS, as pickle batches them


def _storage_type(dtype: np.dtype) -> str | None:
  return _STORAGE_TYPES.get(np.dtype(dtype).name)


def _contiguous_strides(shape: tuple[int, ...]) -> tuple[int, ...]:
  """torch's strides of a contiguous tensor (a size-0 dimension counts as 1)."""
  strides, step = [], 1
  for n in reversed(shape):
    strides.append(step)
    step *= max(n, 1)
  return tuple(reversed(strides))


class _Pickler:
  """Emits the protocol-2 pickle of `data.pkl` and collects the storages it references."""

  def __init__(self):
    self._out = io.BytesIO()
    self._memo: dict[Any, int] = {}
    self._keep: list[Any] = []  # objects whose id() is a memo key stay alive
    self._active: set[int] = set()
    self.storages: list[tuple[str, np.ndarray]] = []

  def dumps(self, obj: Any) -> bytes:
    self._out.write(_PROTO + b"\x02")
    self._save(obj, "obj")
    self._out.write(_STOP)
    return self._out.getvalue()

  # ---------------------------------------------------------------------------------------- memo

  def _put(self, key: Any) -> None:
    index = len(self._memo)
    self._memo[key] = index
    w = self._out.write
    w(_BINPUT + bytes([index]) if index < 256 else _LONG_BINPUT + struct.pack("<I", index))

  def _get(self, key: Any) -> bool:
    index = self._memo.get(key)
    if index is None:
      return False
    w = self._out.write
    w(_BINGET + bytes([index]) if index < 256 else _LONG_BINGET + struct.pack("<I", index))
    return True

  def _global(self, module: str, name: str) -> None:
    key = ("global", module, name)
    if not self._get(key):
      self._out.write(_GLOBAL + f"{module}\n{name}\n".encode("ascii"))
      self._put(key)

  # -------------------------------------------------------------------------------------- values

  def _save(self, obj: Any, where: str) -> None:
    w = self._out.write
    if obj is None:
      w(_NONE)
    elif isinstance(obj, (bool, np.bool_)):
      w(_NEWTRUE if obj else _NEWFALSE)
    elif isinstance(obj, (int, np.integer)):
      self._int(int(obj))
    elif isinstance(obj, (float, np.floating)):
      w(_BINFLOAT + struct.pack(">d", float(obj)))
    elif isinstance(obj, str):
      data = obj.encode("utf-8", "surrogatepass")
      w(_BINUNICODE + struct.pack("<I", len(data)) + data)
    elif isinstance(obj, dict):
      self._dict(obj, where)
    elif isinstance(obj, list):
      self._list(obj, where)
    elif isinstance(obj, tuple):
      self._tuple(obj, where)
    elif isinstance(obj, np.ndarray) or (hasattr(obj, "__array__") and hasattr(obj, "shape")
                                         and hasattr(obj, "dtype") and not isinstance(obj, np.generic)):
      self._tensor(obj, where)
    else:
      raise TypeError(f"torch_save: {where} is a {type(obj).__module__}.{type(obj).__qualname__}; supported: dict, "
                      "list, tuple, str, int, float, bool, None and numpy arrays")

  def _int(self, x: int) -> None:
    w = self._out.write
    if 0 <= x < 256:
      w(_BININT1 + bytes([x]))
    elif 0 <= x < 65536:
      w(_BININT2 + struct.pack("<H", x))
    elif -(1 << 31) <= x < (1 << 31):
      w(_BININT + struct.pack("<i", x))
    else:
      data = x.to_bytes((x.bit_length() >> 3) + 1, "little", signed=True)
      w((_LONG1 + bytes([len(data)]) if len(data) < 256 else _LONG4 + struct.pack("<i", len(data))) + data)

  def _enter(self, obj: Any, where: str) -> None:
    if id(obj) in self._active:
      raise ValueError(f"torch_save: {where} contains itself")
    self._active.add(id(obj))

  def _dict(self, obj: dict, where: str) -> None:
    if self._get(("obj", id(obj))):
      return
    self._enter(obj, where)
    if isinstance(obj, collections.OrderedDict):
      self._global("collections", "OrderedDict")
      self._out.write(_EMPTY_TUPLE + _REDUCE)
    elif type(obj) is dict:
      self._out.write(_EMPTY_DICT)
    else:
      raise TypeError(f"torch_save: {where} is a {type(obj).__qualname__}; only dict and OrderedDict are supported")
    self._put(("obj", id(obj)))
    self._keep.append(obj)
    items = list(obj.items())
    for start in range(0, len(items), _BATCH):
      self._out.write(_MARK)
      for key, value in items[start:start + _BATCH]:
        if not isinstance(key, (str, int, float, bool, type(None), tuple)):
          raise TypeError(f"torch_save: {where} has a key of type {type(key).__qualname__}")
        self._save(key, f"{where} key")
        self._save(value, f"{where}[{key!r}]")
      self._out.write(_SETITEMS)
    self._active.discard(id(obj))

  def _list(self, obj: list, where: str) -> None:
    if self._get(("obj", id(obj))):
      return
    self._enter(obj, where)
    self._out.write(_EMPTY_LIST)
    self._put(("obj", id(obj)))
    self._keep.append(obj)
    for start in range(0, len(obj), _BATCH):
      self._out.write(_MARK)
      for i, value in enumerate(obj[start:start + _BATCH], start):
        self._save(value, f"{where}[{i}]")
      self._out.write(_APPENDS)
    self._active.discard(id(obj))

  def _tuple(self, obj: tuple, where: str) -> None:
    self._enter(obj, where)
    if not obj:
      self._out.write(_EMPTY_TUPLE)
    elif len(obj) <= 3:
      for i, value in enumerate(obj):
        self._save(value, f"{where}[{i}]")
      self._out.write(_TUPLES[len(obj)])
    else:
      self._out.write(_MARK)
      for i, value in enumerate(obj):
        self._save(value, f"{where}[{i}]")
      self._out.write(_TUPLE)
    self._active.discard(id(obj))

  def _small_tuple(self, values: tuple[int, ...]) -> None:
    self._tuple(tuple(int(v) for v in values), "shape")

  def _tensor(self, obj: Any, where: str) -> None:
    if self._get(("obj", id(obj))):
      return
    arr = np.asarray(obj)
    name = _storage_type(arr.dtype)
    if name is None:
      raise TypeError(f"torch_save: {where} is an array of dtype {arr.dtype}; supported: "
                      f"{', '.join(_STORAGE_TYPES)}")
    if arr.dtype.byteorder == ">":
      arr = arr.astype(arr.dtype.newbyteorder("<"))
    if not arr.flags.c_contiguous:
      arr = arr.copy(order="C")  # (np.ascontiguousarray would make a 0-d array 1-d)
    key = str(len(self.storages))
    self.storages.append((key, arr))
    w = self._out.write
    self._global("torch._utils", "_rebuild_tensor_v2")
    w(_MARK)
    # The storage: persistent id ('storage', torch.<Type>Storage, key, 'cpu', numel).
    w(_MARK)
    self._save("storage", "pid")
    self._global("torch", name)
    self._save(key, "pid")
    self._save("cpu", "pid")
    self._int(int(arr.size))
    w(_TUPLE + _BINPERSID)
    self._int(0)  # storage offset
    self._small_tuple(arr.shape)
    self._small_tuple(_contiguous_strides(arr.shape))
    w(_NEWFALSE)  # requires_grad
    self._global("collections", "OrderedDict")  # backward hooks
    w(_EMPTY_TUPLE + _REDUCE)
    w(_TUPLE + _REDUCE)
    self._put(("obj", id(obj)))
    self._keep.append(obj)


# ------------------------------------------------------------------------------------------- archive


def _archive_name(path: pathlib.Path) -> str:
  """torch's record prefix: the file name without its (last) extension."""
  return os.path.splitext(path.name)[0] or "archive"


def _write_record(zf: zipfile.ZipFile, f: BinaryIO, name: str, data: Any, nbytes: int,
                  digest: Any = None) -> None:
  """One uncompressed member whose data starts at a multiple of ALIGNMENT bytes in the file."""
  info = zipfile.ZipInfo(name, date_time=_DATE)
  info.compress_type = zipfile.ZIP_STORED
  info.file_size = nbytes
  zip64 = nbytes * 1.05 > zipfile.ZIP64_LIMIT  # what ZipFile._open_to_write decides
  header = 30 + len(name.encode("utf-8")) + (20 if zip64 else 0)
  pad = -(f.tell() + header + 4) % ALIGNMENT  # the padding field's own 4-byte header included
  info.extra = struct.pack("<HH", 0x4246, pad) + b"Z" * pad  # 'FB' padding field, as torch writes
  with zf.open(info, "w") as out:
    view = memoryview(data).cast("B") if nbytes else b""
    for start in range(0, nbytes, _CHUNK):
      chunk = view[start:start + _CHUNK]
      out.write(chunk)
      if digest is not None:
        digest.update(chunk)


def _storage_bytes(arr: np.ndarray) -> memoryview:
  return memoryview(arr.reshape(-1).view(np.uint8)) if arr.size else memoryview(b"")


def _write_archive(f: BinaryIO, prefix: str, pkl: bytes, storages: list[tuple[str, np.ndarray]]) -> None:
  digest = hashlib.sha256(pkl)
  with zipfile.ZipFile(f, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
    _write_record(zf, f, f"{prefix}/data.pkl", pkl, len(pkl))
    for name, value in ((".format_version", b"1"), (".storage_alignment", str(ALIGNMENT).encode()),
                        ("byteorder", b"little")):
      _write_record(zf, f, f"{prefix}/{name}", value, len(value))
    for key, arr in storages:
      data = _storage_bytes(arr)
      _write_record(zf, f, f"{prefix}/data/{key}", data, data.nbytes, digest)
    _write_record(zf, f, f"{prefix}/version", b"3\n", 2)
    serialization_id = str(int.from_bytes(digest.digest()[:16], "little")).zfill(40)[-40:].encode()
    _write_record(zf, f, f"{prefix}/.data/serialization_id", serialization_id, len(serialization_id))


def dumps_pickle(obj: Any) -> tuple[bytes, list[tuple[str, np.ndarray]]]:
  """(data.pkl bytes, [(storage key, contiguous little-endian array)]) of `obj`; TypeError if unsupported."""
  pickler = _Pickler()
  return pickler.dumps(obj), pickler.storages


def save(obj: Any, path: PathLike) -> None:
  """Writes `obj` to `path` as `torch.save(obj, path)` would (zip format), atomically, without torch.

  Raises:
    TypeError: `obj` holds a value of an unsupported type or dtype (named by where it sits); no file is written.
    ValueError: a container contains itself.
  """
  path = pathlib.Path(path)
  pkl, storages = dumps_pickle(obj)
  prefix = _archive_name(path)
  atomic_io.write_file_atomic(path, lambda f: _write_archive(f, prefix, pkl, storages))


__all__ = ["save", "dumps_pickle", "ALIGNMENT"]
