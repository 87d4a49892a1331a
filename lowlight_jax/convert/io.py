"""Loading state dicts from the files users have: torch `.pth`/`.pt`/`.bin`, `.safetensors`, `.npz`.

The format is recognised from the file's content, not its name:
  * zip archive with a `data.pkl` -> torch >= 1.6 checkpoint (`torch_pickle`, no code is executed);
  * other zip archive -> numpy `.npz` (loaded with `allow_pickle=False`);
  * pickle stream starting with torch's magic number -> legacy (pre-1.6) torch checkpoint;
  * 8-byte little-endian header length followed by a JSON object -> safetensors.

safetensors is parsed here (format: u64 header size N, N bytes of JSON `{name: {dtype, shape,
data_offsets}, "__metadata__": {...}}`, then the raw little-endian buffer), so the `safetensors`
package is not a dependency.
"""

import json
import os
import struct
import zipfile
from typing import Any

import numpy as np

from lowlight_jax.convert import torch_pickle

PathLike = str | os.PathLike

_SAFETENSORS_DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": np.uint16,
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8,
    "U64": np.uint64, "U32": np.uint32, "U16": np.uint16, "U8": np.uint8, "BOOL": np.bool_,
}
_MAX_SAFETENSORS_HEADER = 100 * 1024 * 1024


def sniff_format(path: PathLike) -> str:
  """One of 'torch_zip', 'npz', 'torch_legacy', 'safetensors'; raises ValueError otherwise."""
  if zipfile.is_zipfile(path):
    return "torch_zip" if torch_pickle.is_torch_zip(path) else "npz"
  if torch_pickle.is_torch_legacy(path):
    return "torch_legacy"
  with open(path, "rb") as f:
    head = f.read(9)
  if len(head) == 9 and head[8:9] == b"{":
    (n,) = struct.unpack("<Q", head[:8])
    if 0 < n <= min(_MAX_SAFETENSORS_HEADER, os.path.getsize(path) - 8):
      return "safetensors"
  raise ValueError(f"{path}: unrecognised checkpoint format (expected a torch .pth/.bin, "
                   ".safetensors or .npz file)")


def load_safetensors(path: PathLike) -> tuple[dict[str, np.ndarray], dict[str, str]]:
  """Reads a .safetensors file -> (tensors in file order, `__metadata__`); BF16 becomes float32."""
  size = os.path.getsize(path)
  with open(path, "rb") as f:
    (n,) = struct.unpack("<Q", f.read(8))
    if n > min(_MAX_SAFETENSORS_HEADER, size - 8):
      raise ValueError(f"{path}: bad safetensors header length {n}")
    header = json.loads(f.read(n))
  if not isinstance(header, dict):
    raise ValueError(f"{path}: safetensors header is not a JSON object")
  metadata = header.pop("__metadata__", None) or {}
  buf = np.memmap(path, dtype=np.uint8, mode="r", offset=8 + n, shape=(size - 8 - n,)) \
      if size > 8 + n else np.zeros((0,), np.uint8)
  out = {}
  for name, info in header.items():
    dt = info.get("dtype")
    if dt not in _SAFETENSORS_DTYPES:
      raise ValueError(f"{path}: tensor {name!r} has unsupported dtype {dt!r}")
    dtype = np.dtype(_SAFETENSORS_DTYPES[dt]).newbyteorder("<")
    shape = tuple(int(s) for s in info["shape"])
    begin, end = (int(o) for o in info["data_offsets"])
    count = int(np.prod(shape, dtype=np.int64))
    if not 0 <= begin <= end <= buf.size or end - begin != count * dtype.itemsize:
      raise ValueError(f"{path}: tensor {name!r} has inconsistent data_offsets {begin, end} for "
                       f"shape {shape} {dt}")
    arr = np.frombuffer(buf[begin:end].tobytes(), dtype=dtype).astype(dtype.newbyteorder("="))
    arr = arr.reshape(shape)
    if dt == "BF16":
      arr = (arr.astype(np.uint32) << 16).view(np.float32)
    out[name] = arr
  # Offsets define the on-disk order, which is what writers iterate; keep it.
  order = sorted(out, key=lambda k: int(header[k]["data_offsets"][0]))
  return {k: out[k] for k in order}, dict(metadata)


def load_npz(path: PathLike) -> dict[str, np.ndarray]:
  with np.load(path, allow_pickle=False) as data:
    return {k: data[k] for k in data.files}


def load_checkpoint(path: PathLike) -> Any:
  """Loads any supported file into containers of numpy arrays (torch files keep their nesting)."""
  fmt = sniff_format(path)
  if fmt in ("torch_zip", "torch_legacy"):
    return torch_pickle.load(path)
  if fmt == "npz":
    return load_npz(path)
  return load_safetensors(path)[0]


def load_state_dict(path: PathLike, *, key: str | None = None) -> dict[str, np.ndarray]:
  """Loads a flat `{torch_key: np.ndarray}` state dict from a torch, safetensors or npz file.

  Args:
    path: the file; its format is detected from the content.
    key: optional (dotted) key of the state dict inside a torch checkpoint; by default common
    wrappers
      (`state_dict`, `model`, `params_ema`, ...) are unwrapped and a `module.` prefix is stripped.

  Returns:
    The state dict, keys in file order.

  Raises:
    torch_pickle.UnsafeCheckpointError: a torch pickle names a global outside the allowlist.
    ValueError: unknown format or no state dict found.
  """
  return torch_pickle.extract_state_dict(load_checkpoint(path), key=key)
