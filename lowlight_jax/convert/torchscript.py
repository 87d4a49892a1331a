"""Reads the weights of a TorchScript archive (`torch.jit.save`) without torch and without its code.

OpenAI's released CLIP checkpoints (`ViT-B-32.pt`, ...) are TorchScript archives, which
`torch.load` cannot read; `clip.load` does `torch.jit.load(f).state_dict()`. This module returns
that same flat state dict as numpy arrays.

Archive layout (the `data.pkl` format, as written by `torch.jit.save` of torch 2.14 and, as far as
known, since torch 1.4), a zip whose records all sit under one folder `<name>/`:
  * `<name>/data.pkl`: a pickle of the module tree. Each module is an instance of a class named
    `__torch__.<qualified name>` (e.g. `__torch__.torch.nn.modules.linear Linear`, mangled copies
    as `...linear.___torch_mangle_3 Linear`), built by NEWOBJ with no arguments and given, by BUILD,
    a dict of *all* its attributes in slot order: tensors (`torch._utils._rebuild_tensor_v2` over
    persistent ids `('storage', torch.<T>Storage, key, location, numel)`, exactly like
    `torch.save`'s zip format), submodules (nested `__torch__` objects), the `training` flag and
    other plain values (ints, floats, strings, None; lists tagged through
    `torch.jit._pickle.restore_type_tag` / `build_*list`).
  * `<name>/data/<key>`: the raw storages; `<name>/byteorder` (absent in older archives: little).
  * `<name>/code/__torch__/<module path>.py`: the TorchScript source of every class. The pickle
    does not tell parameters, buffers and plain tensor attributes apart; the class definitions do:
    `class Linear(Module):` followed by `__parameters__ = ["weight", "bias", ]` and
    `__buffers__ = [...]`. Only these (non-None) slots are in `state_dict()`, parameters before
    buffers within a module, then the submodules, names joined with '.' (a plain tensor attribute
    is not in it; a buffer registered non-persistent is, since TorchScript does not record that).
    A class without a `__buffers__` line (older writers) has no buffers; one without a definition
    (code/ stripped) counts every tensor attribute as state.
  * `<name>/constants.pkl` (+ `constants/`), `code/*.debug_pkl`, `<name>/version`, `.data/`,
    `extra/`: unused.

Safety: the pickle goes through `torch_pickle`'s restricted unpickler (allowlisted globals only);
`__torch__.*` globals resolve to inert `ScriptObject` subclasses that only record the attribute
dict BUILD gives them, and the `torch.jit._pickle` helpers to identity functions. The `code/`
records are only scanned as text for the `__parameters__` / `__buffers__` lists (parsed with
`ast.literal_eval`); nothing is executed or imported.
"""

from __future__ import annotations

import ast
import os
import pickle
import re
import zipfile
from typing import Any

import numpy as np

from lowlight_jax.convert import torch_pickle
from lowlight_jax.convert.torch_pickle import UnsafeCheckpointError

PathLike = str | os.PathLike

# The zip reader's internals, shared on purpose (same storages, tensors and allowlist).
# pylint: disable=protected-access
_LazyTensor = torch_pickle._LazyTensor
_RestrictedUnpickler = torch_pickle._RestrictedUnpickler
_unpickle_zip_record = torch_pickle._unpickle_zip_record
# pylint: enable=protected-access

_MAX_DEPTH = 256


class ScriptObject:
  """Inert stand-in for an instance of a TorchScript class (`__torch__.*`) read from `data.pkl`.

  `attributes` is the dict that BUILD applied (attribute name -> value, in slot order); `state`
  keeps a BUILD state that is not such a dict (classes with a custom `__getstate__`).
  """
  __slots__ = ("attributes", "state")
  qualified_name = "__torch__"

  def __new__(cls, *args):
    if args:
      raise UnsafeCheckpointError(f"{cls.qualified_name} constructed with arguments")
    self = super().__new__(cls)
    self.attributes = {}
    self.state = None
    return self

  def __init__(self):
    pass

  def __setstate__(self, state):
    if isinstance(state, dict) and all(isinstance(k, str) for k in state):
      self.attributes, self.state = dict(state), None
    else:
      self.attributes, self.state = {}, state

  def __repr__(self):
    return f"<{self.qualified_name} ({len(self.attributes)} attributes)>"


def _identity_list(data=()):
  if not isinstance(data, list):
    raise UnsafeCheckpointError(f"torch.jit._pickle list builder given a {type(data).__name__}")
  return data


def _restore_type_tag(value, type_str=None):
  del type_str
  return value


_JIT_PICKLE = {"build_intlist": _identity_list, "build_doublelist": _identity_list,
               "build_boollist": _identity_list, "build_tensorlist": _identity_list,
               "restore_type_tag": _restore_type_tag}


def _is_torch_module_name(module: Any) -> bool:
  return isinstance(module, str) and (module == "__torch__" or module.startswith("__torch__."))


class _ScriptUnpickler(_RestrictedUnpickler):
  """The restricted unpickler plus `__torch__.*` classes (inert), `torch.jit._pickle` helpers."""

  def __init__(self, file, persistent=None):
    super().__init__(file, persistent)
    self._classes: dict[str, type[ScriptObject]] = {}

  def find_class(self, module: str, name: str) -> Any:
    if _is_torch_module_name(module):
      if not (isinstance(name, str) and name.isidentifier()
              and all(part.isidentifier() for part in module.split("."))):
        raise UnsafeCheckpointError(f"malformed TorchScript class name {module!r:.80} "
                                    f"{name!r:.80}")
      qualified = f"{module}.{name}"
      if qualified not in self._classes:
        self._classes[qualified] = type(name, (ScriptObject,),
                                        {"__slots__": (), "qualified_name": qualified})
      return self._classes[qualified]
    if module == "torch.jit._pickle" and name in _JIT_PICKLE:
      return _JIT_PICKLE[name]
    return super().find_class(module, name)


# --------------------------------------------------------------------------------------------------
# Archive structure


def _script_prefix(names: list[str]) -> str | None:
  """The `<name>/` folder of a TorchScript archive's records, or None if `names` is not one."""
  for n in names:
    if n == "constants.pkl" or n.endswith("/constants.pkl"):
      return n[:-len("constants.pkl")]
  for n in names:
    if n.startswith("code/"):
      return ""
    i = n.find("/code/")
    if i >= 0:
      return n[:i + 1]
  return None


def is_torchscript(path: PathLike) -> bool:
  """Whether `path` is a zip archive laid out by `torch.jit.save`: a `code/` folder or a
  `constants.pkl` beside `data.pkl` (or beside the `model.json` of pre-1.4 archives)."""
  try:
    if not zipfile.is_zipfile(path):
      return False
    with zipfile.ZipFile(path) as zf:
      names = set(zf.namelist())
  except (OSError, zipfile.BadZipFile):
    return False
  prefix = _script_prefix(sorted(names))
  return prefix is not None and (prefix + "data.pkl" in names or prefix + "model.json" in names)


class _ClassInfo:
  __slots__ = ("is_module", "parameters", "buffers")

  def __init__(self, is_module: bool):
    self.is_module = is_module
    self.parameters: list[str] | None = None
    self.buffers: list[str] | None = None


_CLASS_RE = re.compile(r"class\s+([A-Za-z_]\w*)\s*(?:\(\s*([\w.]*)\s*\))?\s*:")
_SLOTS_RE = re.compile(r"\s+(__parameters__|__buffers__)\s*=\s*(\[.*\])\s*$")


def _parse_code(text: str, module: str, path: PathLike, record: str,
                out: dict[str, _ClassInfo]) -> None:
  """Records `class X(Module):` headers and their `__parameters__` / `__buffers__` lists."""
  current: _ClassInfo | None = None
  for line in text.splitlines():
    if not line.strip():
      continue
    if not line[0].isspace():  # a top-level statement: a new class, or the end of one
      m = _CLASS_RE.match(line)
      current = None
      if m:
        current = _ClassInfo(is_module=m.group(2) == "Module")
        out[f"{module}.{m.group(1)}"] = current
      continue
    if current is None:
      continue
    if line.lstrip().startswith("def "):  # methods follow the attribute declarations
      current = None
      continue
    m = _SLOTS_RE.match(line)
    if m:
      try:
        names = ast.literal_eval(m.group(2))
      except (ValueError, SyntaxError):
        names = None
      if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise pickle.UnpicklingError(f"{path}: {record}: unreadable {m.group(1)} list")
      if m.group(1) == "__parameters__":
        current.parameters = names
      else:
        current.buffers = names


def _class_infos(zf: zipfile.ZipFile, prefix: str, path: PathLike) -> dict[str, _ClassInfo]:
  code = prefix + "code/"
  out: dict[str, _ClassInfo] = {}
  for record in zf.namelist():
    if not (record.startswith(code) and record.endswith(".py")):
      continue
    module = record[len(code):-len(".py")].replace("/", ".")
    _parse_code(zf.read(record).decode("utf-8", errors="replace"), module, path, record, out)
  return out


# --------------------------------------------------------------------------------------------------
# State dict


def _state_dict(root: Any, infos: dict[str, _ClassInfo], path: PathLike
                ) -> dict[str, np.ndarray]:
  if not isinstance(root, ScriptObject):
    raise pickle.UnpicklingError(f"{path}: data.pkl holds a {type(root).__name__}, not a "
                                 "TorchScript module")
  out: dict[str, np.ndarray] = {}
  on_path: set[int] = set()

  def tensor(value: Any, key: str) -> np.ndarray:
    if not isinstance(value, _LazyTensor):
      raise pickle.UnpicklingError(f"{path}: {key} is a {type(value).__name__}, not a tensor")
    return value.to_numpy()

  def visit(obj: ScriptObject, prefix: str, depth: int) -> None:
    if depth > _MAX_DEPTH or id(obj) in on_path:
      raise UnsafeCheckpointError(f"{path}: module tree too deep or cyclic at {prefix!r:.200}")
    on_path.add(id(obj))
    attrs = obj.attributes
    info = infos.get(obj.qualified_name)
    if info is None or info.parameters is None:
      # No class definition (code/ stripped): every tensor attribute counts as state.
      state = [n for n, v in attrs.items() if isinstance(v, _LazyTensor)]
    else:
      params, buffers = set(info.parameters), set(info.buffers or ())
      state = [n for n in attrs if n in params] + [n for n in attrs if n in buffers]
      listed = [n for n in info.parameters + (info.buffers or []) if n not in attrs]
      if listed:
        raise pickle.UnpicklingError(f"{path}: {obj.qualified_name} declares {listed[0]!r} but "
                                     "the pickle does not set it")
    for name in state:
      if attrs[name] is not None:  # optional parameters (e.g. a bias of None) are not state
        out[prefix + name] = tensor(attrs[name], prefix + name)
    for name, value in attrs.items():
      if isinstance(value, ScriptObject):
        child = infos.get(value.qualified_name)
        if child is None or child.is_module:
          visit(value, f"{prefix}{name}.", depth + 1)
    on_path.discard(id(obj))

  visit(root, "", 0)
  return out


def _load_tree(path: PathLike) -> tuple[ScriptObject, dict[str, _ClassInfo]]:
  """The root module of `data.pkl` as `ScriptObject`s (tensors still lazy) and the class table."""
  try:
    with zipfile.ZipFile(path) as zf:
      names = zf.namelist()
      prefix = _script_prefix(names)
      if prefix is None:
        raise pickle.UnpicklingError(f"{path}: not a TorchScript archive (no code/ or "
                                     "constants.pkl)")
      record = prefix + "data.pkl"
      if record not in names:
        hint = " (a pre-1.4 archive with model.json?)" if prefix + "model.json" in names else ""
        raise pickle.UnpicklingError(f"{path}: TorchScript archive without {record}{hint}")
      try:
        root = _unpickle_zip_record(zf, path, record, _ScriptUnpickler)
      except pickle.UnpicklingError:
        raise
      except (ValueError, TypeError, KeyError, IndexError, AttributeError, EOFError) as e:
        raise pickle.UnpicklingError(f"{path}: malformed {record}: {type(e).__name__}: {e}"
                                     ) from e
      infos = _class_infos(zf, prefix, path)
  except zipfile.BadZipFile as e:
    raise pickle.UnpicklingError(f"{path}: damaged zip archive: {e}") from e
  return root, infos


def load_state_dict(path: PathLike) -> dict[str, np.ndarray]:
  """`torch.jit.load(path).state_dict()` as `{name: np.ndarray}`, read without torch.

  Parameters and buffers of every module (None-valued ones skipped), module by module in slot
  order, names joined with '.'; dtypes as stored (fp16 stays fp16, bfloat16 widened to float32).

  Raises:
    torch_pickle.UnsafeCheckpointError: `data.pkl` names a global outside the allowlist (nothing
      is executed), or its module tree is cyclic.
    pickle.UnpicklingError: not a (readable) TorchScript archive.
    OSError: unreadable file (FileNotFoundError for a missing one).
  """
  root, infos = _load_tree(path)
  return _state_dict(root, infos, path)


__all__ = ["ScriptObject", "is_torchscript", "load_state_dict"]
