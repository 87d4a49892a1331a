"""Reads PyTorch checkpoints (`torch.save` files) without torch and without running their code.

`torch.load` unpickles arbitrary Python: a checkpoint can name any importable callable and have it
called. This reader parses the same two on-disk formats with a restricted `pickle.Unpickler` whose
`find_class` resolves only an explicit allowlist of globals, each mapped to a function of ours that
builds numpy arrays; every other global raises `UnsafeCheckpointError` before anything is called.

Formats (reference: `torch/serialization.py`, torch 1.x-2.x):
  * zip (torch >= 1.6, `_use_new_zipfile_serialization=True`): `<prefix>/data.pkl` with persistent
    ids `('storage', storage_type, key, location, numel)`, raw storages in `<prefix>/data/<key>`, an
    optional `<prefix>/byteorder` record (`little` when absent).
  * legacy stream (torch < 1.6): pickles of the magic number, the protocol version (1001) and
    `sys_info`, then the data pickle with persistent ids `('storage', storage_type, root_key,
    location, numel, view_metadata)`, then a pickled list of storage keys, then each storage as an
    int64 element count followed by the raw little-endian elements.

TorchScript archives (`torch.jit.save`) use the zip layout with a module tree of `__torch__` objects
in `data.pkl`; `convert.torchscript` reads them with this module's unpickler and storages.

Tensors come back as numpy arrays (bfloat16 widened to float32 exactly); `torch.nn.Parameter`
becomes its array. Storage sharing, offsets and strides are honoured (tensors are copied out
contiguously).
"""

import collections
import io
import os
import pickle
import struct
import zipfile
from collections.abc import Mapping
from typing import Any, BinaryIO

import numpy as np

PathLike = str | os.PathLike

_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL = 1001


class UnsafeCheckpointError(pickle.UnpicklingError):
  """The checkpoint names a Python global outside the allowlist (or is malformed on purpose)."""


# --------------------------------------------------------------------------------------------------
# dtypes

# Torch dtype name -> numpy dtype of the raw storage elements. bfloat16 is read as uint16 and
# widened later.
_TORCH_DTYPES = {
    "float32": np.float32, "float": np.float32, "float64": np.float64, "double": np.float64,
    "float16": np.float16, "half": np.float16, "bfloat16": np.uint16,
    "int64": np.int64, "long": np.int64, "int32": np.int32, "int": np.int32,
    "int16": np.int16, "short": np.int16, "int8": np.int8, "uint8": np.uint8, "bool": np.bool_,
    "complex64": np.complex64, "cfloat": np.complex64, "complex128": np.complex128,
    "cdouble": np.complex128, "uint16": np.uint16, "uint32": np.uint32, "uint64": np.uint64,
}
_STORAGE_DTYPES = {
    "FloatStorage": "float32", "DoubleStorage": "float64", "HalfStorage": "float16",
    "BFloat16Storage": "bfloat16", "LongStorage": "int64", "IntStorage": "int32",
    "ShortStorage": "int16", "CharStorage": "int8", "ByteStorage": "uint8", "BoolStorage": "bool",
    "ComplexFloatStorage": "complex64", "ComplexDoubleStorage": "complex128",
    "UntypedStorage": "uint8",
}


class _Tag:
  """A global that pickles may name but neither call nor BUILD."""
  __slots__ = ()

  def __call__(self, *args, **kwargs):
    raise UnsafeCheckpointError(f"checkpoint calls {self!r}, which is only a tag")

  def __setstate__(self, state):
    raise UnsafeCheckpointError(f"BUILD applied to {self!r}")


class _TorchDtype(_Tag):
  """Stand-in for a `torch.<dtype>` global (used by `_rebuild_tensor_v3`)."""
  __slots__ = ("name",)

  def __init__(self, name: str):
    self.name = name

  def __repr__(self):
    return f"torch.{self.name}"


class _StorageType(_Tag):
  """Stand-in for a `torch.*Storage` class; only ever used as a tag in persistent ids."""
  __slots__ = ("dtype_name", "untyped")

  def __init__(self, name: str):
    self.dtype_name = _STORAGE_DTYPES[name]
    self.untyped = name == "UntypedStorage"

  def __repr__(self):
    return f"torch storage type {self.dtype_name}"


class _Storage:
  """A flat buffer of elements; `data` is filled at once (zip) or after the data pickle (legacy)."""
  __slots__ = ("dtype_name", "numel", "data")

  def __init__(self, dtype_name: str, numel: int, data: np.ndarray | None = None):
    self.dtype_name = dtype_name
    self.numel = numel
    self.data = data

  def __setstate__(self, state):
    raise UnsafeCheckpointError("BUILD applied to a storage")


class _LazyTensor:
  """A tensor whose storage may not be read yet; materialised by `_materialise`."""
  __slots__ = ("storage", "offset", "size", "stride", "dtype_name")

  def __init__(self, storage, offset, size, stride, dtype_name):
    if not isinstance(storage, _Storage):
      raise UnsafeCheckpointError(
          f"tensor rebuilt from a non-storage object {type(storage).__name__}")
    self.storage = storage
    self.offset = _as_int(offset, "storage offset")
    self.size = tuple(_as_int(s, "size") for s in size)
    self.stride = tuple(_as_int(s, "stride") for s in stride)
    if len(self.size) != len(self.stride):
      raise UnsafeCheckpointError(f"size {self.size} and stride {self.stride} differ in rank")
    self.dtype_name = dtype_name

  def __setstate__(self, state):
    raise UnsafeCheckpointError("BUILD applied to a tensor")

  def to_numpy(self) -> np.ndarray:
    st = self.storage
    if st.data is None:
      raise pickle.UnpicklingError("tensor storage was never read")
    flat = st.data
    np_dtype = np.dtype(_TORCH_DTYPES[self.dtype_name])
    if st.dtype_name != self.dtype_name:
      # Untyped (v3) or reinterpreted storage: view the raw bytes as the tensor dtype.
      raw = flat.view(np.uint8)
      usable = raw.size - raw.size % np_dtype.itemsize
      flat = raw[:usable].view(np_dtype)
    if any(s < 0 for s in self.size) or any(s < 0 for s in self.stride) or self.offset < 0:
      raise UnsafeCheckpointError("negative size, stride or offset")
    if 0 in self.size:
      out = np.zeros(self.size, np_dtype)
    else:
      last = self.offset + sum((n - 1) * s for n, s in zip(self.size, self.stride))
      if last >= flat.size:
        raise UnsafeCheckpointError(
            f"tensor (offset {self.offset}, size {self.size}, stride {self.stride}) reads past its "
            f"storage of {flat.size} elements")
      base = flat[self.offset:]
      out = np.lib.stride_tricks.as_strided(
          base, shape=self.size, strides=tuple(s * flat.itemsize for s in self.stride),
          writeable=False).copy()
    if self.dtype_name == "bfloat16":
      # bfloat16 is the top half of a float32: widening is exact.
      out = (out.astype(np.uint32) << 16).view(np.float32)
    return out


def _as_int(x: Any, what: str) -> int:
  if isinstance(x, bool) or not isinstance(x, (int, np.integer)):
    raise UnsafeCheckpointError(f"{what} is not an integer: {type(x).__name__}")
  return int(x)


# --------------------------------------------------------------------------------------------------
# Allowlisted callables (our replacements for torch / collections / numpy globals)

def _rebuild_tensor(storage, storage_offset, size, stride):
  return _LazyTensor(storage, storage_offset, size, stride, getattr(storage, "dtype_name", None))


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False,
                       backward_hooks=None, metadata=None):
  del requires_grad, backward_hooks, metadata
  return _rebuild_tensor(storage, storage_offset, size, stride)


def _rebuild_tensor_v3(storage, storage_offset, size, stride, requires_grad, backward_hooks, dtype,
                       metadata=None):
  del requires_grad, backward_hooks, metadata
  if not isinstance(dtype, _TorchDtype):
    raise UnsafeCheckpointError(f"_rebuild_tensor_v3 with dtype {type(dtype).__name__}")
  return _LazyTensor(storage, storage_offset, size, stride, dtype.name)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None, state=None):
  del requires_grad, backward_hooks, state
  if not isinstance(data, _LazyTensor):
    raise UnsafeCheckpointError(f"Parameter wraps a {type(data).__name__}")
  return data


def _ordered_dict(*args):
  return collections.OrderedDict(*args)


def _torch_size(items=()):
  return tuple(_as_int(i, "torch.Size entry") for i in items)


def _torch_device(*args):
  return ":".join(str(a) for a in args)


class _Namespace:
  """Stand-in for `argparse.Namespace` (hyper-parameters often saved beside the weights)."""

  def __init__(self, **kwargs):
    self.__dict__.update(kwargs)

  def __setstate__(self, state):
    if not isinstance(state, dict):
      raise UnsafeCheckpointError("Namespace state is not a dict")
    self.__dict__.update(state)

  def __repr__(self):
    return f"Namespace({self.__dict__!r})"


class _NumpyDtype:
  """`numpy.dtype(...)` as pickled by numpy; plain (non-object, non-structured) dtypes only."""
  __slots__ = ("dtype",)

  def __init__(self, obj, align=False, copy=False):
    del align, copy
    if not isinstance(obj, str):
      raise UnsafeCheckpointError(f"numpy dtype from {type(obj).__name__}")
    dt = np.dtype(obj)
    if dt.hasobject or dt.fields is not None or dt.subdtype is not None:
      raise UnsafeCheckpointError(f"numpy dtype {dt} is not a plain numeric dtype")
    self.dtype = dt

  def __setstate__(self, state):
    if not isinstance(state, tuple) or len(state) < 2 or state[1] not in ("<", ">", "|", "="):
      raise UnsafeCheckpointError("unexpected numpy dtype state")
    if len(state) > 3 and state[3] is not None:
      raise UnsafeCheckpointError("structured numpy dtypes are not supported")
    if state[1] in "<>":
      self.dtype = self.dtype.newbyteorder(state[1])


class _NumpyArray:
  """`numpy.core.multiarray._reconstruct(ndarray, ...)` + BUILD; becomes an ndarray later."""
  __slots__ = ("value",)

  def __init__(self):
    self.value = None

  def __setstate__(self, state):
    if not isinstance(state, tuple) or len(state) != 5:
      raise UnsafeCheckpointError("unexpected numpy array state")
    _, shape, dtype, fortran, raw = state
    if not isinstance(dtype, _NumpyDtype) or not isinstance(raw, (bytes, bytearray)):
      raise UnsafeCheckpointError("numpy array state must be a plain dtype and raw bytes")
    shape = tuple(_as_int(s, "numpy shape") for s in shape)
    count = int(np.prod(shape, dtype=np.int64))
    arr = np.frombuffer(raw, dtype=dtype.dtype, count=count)
    self.value = arr.reshape(shape, order="F" if fortran else "C").copy()


class _NdarrayTag(_Tag):
  """`numpy.ndarray`, accepted only as `_reconstruct`'s subtype argument.

  Calling the real class would let a pickle allocate arrays of uninitialised memory.
  """
  __slots__ = ()

  def __repr__(self):
    return "numpy.ndarray"


_NDARRAY = _NdarrayTag()


def _np_reconstruct(subtype, shape, dtype):
  del shape, dtype
  if subtype is not _NDARRAY:
    raise UnsafeCheckpointError("numpy _reconstruct of a non-ndarray type")
  return _NumpyArray()


def _np_scalar(dtype, data=None):
  if not isinstance(dtype, _NumpyDtype) or not isinstance(data, (bytes, bytearray)):
    raise UnsafeCheckpointError("numpy scalar must be a plain dtype and raw bytes")
  return np.frombuffer(data, dtype=dtype.dtype, count=1)[0]


def _codecs_encode(text, encoding="utf-8"):
  # Protocol-2 pickles store `bytes` as `_codecs.encode(str, 'latin1')` (numpy scalars and arrays
  # do).
  if not isinstance(text, str) or encoding not in ("latin1", "latin-1", "utf-8", "utf8"):
    raise UnsafeCheckpointError("_codecs.encode with unexpected arguments")
  return text.encode(encoding)


def _build_allowlist() -> dict[tuple[str, str], Any]:
  allowed: dict[tuple[str, str], Any] = {
      ("collections", "OrderedDict"): _ordered_dict,
      ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
      ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
      ("torch._utils", "_rebuild_tensor_v3"): _rebuild_tensor_v3,
      ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
      ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
      ("torch", "Size"): _torch_size,
      ("torch", "device"): _torch_device,
      ("argparse", "Namespace"): _Namespace,
      ("_codecs", "encode"): _codecs_encode,
      ("numpy", "dtype"): _NumpyDtype,
      ("numpy", "ndarray"): _NDARRAY,
  }
  for np_mod in ("numpy.core.multiarray", "numpy._core.multiarray"):
    allowed[(np_mod, "_reconstruct")] = _np_reconstruct
    allowed[(np_mod, "scalar")] = _np_scalar
  for name in _STORAGE_DTYPES:
    for mod in ("torch", "torch.cuda", "torch.storage"):
      allowed[(mod, name)] = _StorageType(name)
  for name in _TORCH_DTYPES:
    allowed[("torch", name)] = _TorchDtype(_canonical_dtype(name))
  return allowed


def _canonical_dtype(name: str) -> str:
  aliases = {"float": "float32", "double": "float64", "half": "float16", "long": "int64",
             "int": "int32", "short": "int16", "cfloat": "complex64", "cdouble": "complex128"}
  return aliases.get(name, name)


_ALLOWED = _build_allowlist()


class _RestrictedUnpickler(pickle.Unpickler):
  """Resolves globals only from `_ALLOWED`; persistent ids are delegated to `self._persistent`."""

  def __init__(self, file: BinaryIO, persistent=None):
    super().__init__(file, encoding="utf-8")
    self._persistent = persistent

  def find_class(self, module: str, name: str) -> Any:
    try:
      return _ALLOWED[(module, name)]
    except (KeyError, TypeError):
      hint = ""
      if isinstance(module, str) and (module == "__torch__" or module.startswith("__torch__.")):
        hint = (" (a TorchScript archive, as written by torch.jit.save: read its state dict with "
                "lowlight_jax.convert.torchscript.load_state_dict)")
      raise UnsafeCheckpointError(
          f"checkpoint references the global {module}.{name}, which is not on the allowlist of "
          f"lowlight_jax.convert.torch_pickle (refusing to load; nothing was executed){hint}"
      ) from None

  def persistent_load(self, pid: Any) -> Any:
    if self._persistent is None:
      raise UnsafeCheckpointError(f"unexpected persistent id {pid!r:.80}")
    return self._persistent(pid)


# --------------------------------------------------------------------------------------------------
# Materialisation

def _materialise(obj: Any, memo: dict[int, Any] | None = None) -> Any:
  """Replaces lazy tensors / numpy holders by arrays throughout a nested container structure."""
  memo = {} if memo is None else memo
  if id(obj) in memo:
    return memo[id(obj)]
  if isinstance(obj, _LazyTensor):
    out = obj.to_numpy()
  elif isinstance(obj, _NumpyArray):
    if obj.value is None:
      raise UnsafeCheckpointError("numpy array without state")
    out = obj.value
  elif isinstance(obj, _NumpyDtype):
    out = obj.dtype
  elif isinstance(obj, (_Storage, _StorageType, _TorchDtype)):
    out = obj
  elif isinstance(obj, dict):  # dict and OrderedDict (keeps the type, drops `_metadata`)
    out = type(obj)()
    memo[id(obj)] = out
    for k, v in obj.items():
      out[_materialise(k, memo)] = _materialise(v, memo)
    return out
  elif isinstance(obj, list):
    out = []
    memo[id(obj)] = out
    out.extend(_materialise(v, memo) for v in obj)
    return out
  elif isinstance(obj, tuple):
    out = tuple(_materialise(v, memo) for v in obj)
  elif isinstance(obj, (set, frozenset)):
    out = type(obj)(_materialise(v, memo) for v in obj)
  elif isinstance(obj, _Namespace):
    out = _Namespace(**{k: _materialise(v, memo) for k, v in vars(obj).items()})
  else:
    out = obj
  memo[id(obj)] = out
  return out


def _storage_from_pid(pid: Any, expected_len: int) -> tuple[_StorageType, str, int]:
  if not isinstance(pid, tuple) or len(pid) != expected_len:
    raise UnsafeCheckpointError(f"unexpected persistent id {pid!r:.80}")
  typename = pid[0].decode("ascii") if isinstance(pid[0], bytes) else pid[0]
  if typename != "storage":
    raise UnsafeCheckpointError(f"unsupported persistent id type {typename!r} (only storages)")
  storage_type, key = pid[1], pid[2]
  if not isinstance(storage_type, _StorageType):
    raise UnsafeCheckpointError(f"persistent id names a non-storage type {storage_type!r:.80}")
  key = key.decode("ascii") if isinstance(key, bytes) else str(key)
  return storage_type, key, _as_int(pid[4], "storage numel")


# --------------------------------------------------------------------------------------------------
# Zip format

def _unpickle_zip_record(zf: zipfile.ZipFile, path: PathLike, record: str,
                         unpickler: type[_RestrictedUnpickler] = _RestrictedUnpickler) -> Any:
  """Unpickles `<prefix>data.pkl`-style `record` of an open torch zip; tensors stay lazy.

  Persistent ids name storages in `<prefix>data/<key>` (`<prefix>` = the record's folder); the
  `<prefix>byteorder` record is honoured. `unpickler` (a `_RestrictedUnpickler`, possibly with a
  wider `find_class`) resolves the globals. Also used by `convert.torchscript`.
  """
  names = set(zf.namelist())
  prefix = record[:record.rfind("/") + 1]
  byteorder = "little"
  if prefix + "byteorder" in names:
    byteorder = zf.read(prefix + "byteorder").decode("ascii").strip()
    if byteorder not in ("little", "big"):
      raise pickle.UnpicklingError(f"{path}: unknown byteorder {byteorder!r}")
  storages: dict[str, _Storage] = {}

  def persistent(pid):
    storage_type, key, numel = _storage_from_pid(pid, 5)
    if key in storages:
      return storages[key]
    dtype = np.dtype(_TORCH_DTYPES[storage_type.dtype_name])
    storage_record = f"{prefix}data/{key}"
    if storage_record not in names:
      raise pickle.UnpicklingError(f"{path}: missing storage record {storage_record}")
    raw = zf.read(storage_record)
    if len(raw) < numel * dtype.itemsize:
      raise pickle.UnpicklingError(f"{path}: storage {key} holds {len(raw)} bytes, expected "
                                   f"{numel * dtype.itemsize}")
    data = np.frombuffer(raw, dtype=dtype.newbyteorder("<" if byteorder == "little" else ">"),
                         count=numel)
    storages[key] = _Storage(storage_type.dtype_name, numel, data.astype(dtype.newbyteorder("=")))
    return storages[key]

  with zf.open(record) as f:
    return unpickler(io.BytesIO(f.read()), persistent).load()


def _load_zip(path: PathLike) -> Any:
  with zipfile.ZipFile(path) as zf:
    pkl = [n for n in zf.namelist() if n == "data.pkl" or n.endswith("/data.pkl")]
    if len(pkl) != 1:
      raise pickle.UnpicklingError(f"{path}: not a torch zip checkpoint (no unique data.pkl)")
    obj = _unpickle_zip_record(zf, path, pkl[0])
  return _materialise(obj)


# --------------------------------------------------------------------------------------------------
# Legacy (pre-1.6) stream format

def _load_legacy(f: BinaryIO) -> Any:
  magic = _RestrictedUnpickler(f).load()
  if magic != _LEGACY_MAGIC:
    raise pickle.UnpicklingError("not a torch checkpoint (bad magic number)")
  protocol = _RestrictedUnpickler(f).load()
  if protocol != _LEGACY_PROTOCOL:
    raise pickle.UnpicklingError(f"unsupported legacy torch protocol version {protocol!r}")
  # sys_info (endianness, type sizes): torch writes storages little-endian whatever it says.
  _RestrictedUnpickler(f).load()
  storages: dict[str, _Storage] = {}

  def persistent(pid):
    storage_type, root_key, numel = _storage_from_pid(pid, 6)
    view = pid[5]
    if root_key not in storages:
      storages[root_key] = _Storage(storage_type.dtype_name, numel)
    root = storages[root_key]
    if view is not None:
      # Storage views (torch < 0.4): a slice of the root storage, resolved after the data is read.
      view_key, offset, size = view
      view_key = view_key.decode("ascii") if isinstance(view_key, bytes) else str(view_key)
      if view_key not in storages:
        st = _Storage(storage_type.dtype_name, _as_int(size, "view size"))
        st.data = (root, _as_int(offset, "view offset"))  # type: ignore[assignment]
        storages[view_key] = st
      return storages[view_key]
    return root

  obj = _RestrictedUnpickler(f, persistent).load()
  keys = _RestrictedUnpickler(f).load()
  if not isinstance(keys, list):
    raise UnsafeCheckpointError("legacy storage key list is not a list")
  for key in keys:
    key = key.decode("ascii") if isinstance(key, bytes) else str(key)
    if key not in storages:
      raise pickle.UnpicklingError(f"storage key {key!r} not referenced by the data pickle")
    st = storages[key]
    dtype = np.dtype(_TORCH_DTYPES[st.dtype_name]).newbyteorder("<")
    header = f.read(8)
    if len(header) != 8:
      raise pickle.UnpicklingError("truncated legacy checkpoint (storage header)")
    (numel,) = struct.unpack("<q", header)
    if numel != st.numel:
      raise pickle.UnpicklingError(f"storage {key}: {numel} elements on disk, {st.numel} declared")
    raw = f.read(numel * dtype.itemsize)
    if len(raw) != numel * dtype.itemsize:
      raise pickle.UnpicklingError(f"truncated legacy checkpoint (storage {key})")
    st.data = np.frombuffer(raw, dtype=dtype).astype(dtype.newbyteorder("="))
  for st in storages.values():
    if isinstance(st.data, tuple):
      root, offset = st.data
      if root.data is None or offset + st.numel > root.data.size:
        raise UnsafeCheckpointError("storage view outside its root storage")
      st.data = root.data[offset:offset + st.numel]
  return _materialise(obj)


# --------------------------------------------------------------------------------------------------
# Public API

def is_torch_zip(path: PathLike) -> bool:
  """Whether `path` is a zip archive holding a `data.pkl` (torch >= 1.6 checkpoint)."""
  if not zipfile.is_zipfile(path):
    return False
  with zipfile.ZipFile(path) as zf:
    return any(n == "data.pkl" or n.endswith("/data.pkl") for n in zf.namelist())


def is_torch_legacy(path: PathLike) -> bool:
  """Whether `path` starts with a pickled integer (the legacy torch.save magic number header)."""
  with open(path, "rb") as f:
    head = f.read(16)
  # protocol 2 PROTO opcode, then LONG1 with 10 bytes: the magic number 0x1950a86a20f9469cfc6c.
  return head[:4] == b"\x80\x02\x8a\x0a" and int.from_bytes(head[4:14], "little") == _LEGACY_MAGIC


def load(path: PathLike) -> Any:
  """Loads a `torch.save` file (zip or legacy format) into plain Python containers and numpy arrays.

  Raises:
    UnsafeCheckpointError: the pickle names a global outside the allowlist (nothing is executed).
    pickle.UnpicklingError: the file is not a (supported) torch checkpoint.
  """
  if zipfile.is_zipfile(path):
    return _load_zip(path)
  with open(path, "rb") as f:
    if f.read(1) != b"\x80":
      raise pickle.UnpicklingError(f"{path}: neither a torch zip archive nor a pickle stream "
                                   "(the pre-0.4 tar format is not supported)")
    f.seek(0)
    return _load_legacy(f)


_WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "params_ema", "params", "net",
                 "network", "generator", "module")


def _is_state_dict(obj: Any) -> bool:
  return (isinstance(obj, Mapping) and len(obj) > 0 and all(isinstance(k, str) for k in obj)
          and all(isinstance(v, np.ndarray) for v in obj.values()))


def extract_state_dict(obj: Any, *, key: str | None = None, strip_prefixes=("module.",)
                       ) -> dict[str, np.ndarray]:
  """Finds the state dict inside a loaded checkpoint and normalises its keys.

  Args:
    obj: output of `load` (or any nested mapping).
    key: if given, `obj[key]` is taken (dotted paths allowed, e.g. `"ema.state_dict"`); otherwise
      common wrapper keys (`state_dict`, `model`, `params_ema`, `params`, `net`, ...) are unwrapped
      until a flat name -> array mapping is found.
    strip_prefixes: key prefixes removed when every key carries them (`module.` from
      DataParallel).

  Returns:
    An ordered `dict[str, np.ndarray]`.
  """
  if key is not None:
    for part in key.split("."):
      obj = obj[part]
  for _ in range(8):
    if _is_state_dict(obj):
      break
    if not isinstance(obj, Mapping):
      raise ValueError(f"no state dict found (got {type(obj).__name__})")
    nxt = next((obj[k] for k in _WRAPPER_KEYS if k in obj and isinstance(obj[k], Mapping)), None)
    if nxt is None:
      arrays = {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, np.ndarray)}
      if not arrays:
        raise ValueError(f"no state dict found among keys {list(obj)[:10]}")
      obj = arrays
      break
    obj = nxt
  out = dict(obj)
  for prefix in strip_prefixes:
    if out and all(k.startswith(prefix) for k in out):
      out = {k[len(prefix):]: v for k, v in out.items()}
  return out


__all__ = ["UnsafeCheckpointError", "load", "extract_state_dict", "is_torch_zip", "is_torch_legacy"]
