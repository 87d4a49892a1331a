"""`--config` for every CLI: packaged config names (`sgz:smoke`), file paths, and one-line errors.

  --config sgz:smoke              the packaged `configs/sgz.py` with `get_config("smoke")` (found with importlib,
                                  so it works from an installed package outside a clone)
  --config configs/sgz.py:smoke   any file path, as ml_collections' config_flags takes it
  --config.FIELD=VALUE            overrides; an unknown FIELD is one error line naming it

`resolve_spec` does the name -> file resolution; `DEFINE_config_file` is `config_flags.DEFINE_config_file` with it
and with the failures of loading the file, of `get_config(arg)` and of an override raised as
`lowlight_jax.errors.ConfigError` (so `launch._common.run` prints one line and exits 2). `packaged_configs` lists
the packaged configs and the `get_config(arg)` variants each accepts, read without importing them.
"""

from __future__ import annotations

import ast
import importlib.util
import os
import pathlib
import re
import sys
import types
from typing import Any

from absl import flags
from ml_collections import config_dict
from ml_collections.config_flags import config_flags

from lowlight_jax import errors

#: The package holding the packaged configs (`configs/<name>.py`, each with `get_config(arg)`).
CONFIG_PACKAGE = "configs"
SWEEP_PACKAGE = "configs.sweeps"
#: An optional module-level constant of a config file listing its `get_config` args (else the docstring is read).
ARGS_CONSTANT = "CONFIG_ARGS"


def _package_dir(package: str) -> pathlib.Path | None:
  try:
    spec = importlib.util.find_spec(package)
  except (ImportError, ValueError):
    return None
  if spec is None or not spec.submodule_search_locations:
    return None
  return pathlib.Path(list(spec.submodule_search_locations)[0])


def defines(path: pathlib.Path, name: str, kind: type = ast.FunctionDef) -> bool:
  """Whether the module file defines a top-level `name` of `kind` (ast.FunctionDef / ast.ClassDef); read, not
  imported."""
  try:
    tree = ast.parse(path.read_text(encoding="utf-8"))
  except (OSError, SyntaxError, UnicodeDecodeError):
    return False
  return any(isinstance(n, kind) and n.name == name for n in tree.body)


def packaged_names(package: str = CONFIG_PACKAGE, function: str = "get_config") -> dict[str, pathlib.Path]:
  """{name: file} of the modules of `package` that define `function` (read, not imported)."""
  folder = _package_dir(package)
  if folder is None:
    return {}
  return {p.stem: p for p in sorted(folder.glob("*.py")) if not p.stem.startswith("_") and defines(p, function)}


def _at(flag: str | None) -> str:
  """The message prefix naming the flag (none inside absl's parser, which adds `flag --config=VALUE: `)."""
  return f"{flag}: " if flag else ""


def _looks_like_path(head: str) -> bool:
  return head.endswith(".py") or os.sep in head or "/" in head or os.path.exists(head)


def resolve_spec(spec: str, *, package: str = CONFIG_PACKAGE, function: str = "get_config",
                 flag: str | None = "--config") -> tuple[str, str | None]:
  """`NAME[:ARG]` or `PATH[:ARG]` -> (file path, ARG or None).

  A NAME (no `.py`, no slash, not an existing file) is the packaged `<package>/<NAME>.py`; an unknown one is a
  ConfigError listing the known names. A PATH that does not exist is a ConfigError naming it.
  """
  if not spec:
    raise errors.ConfigError(f"{_at(flag)}empty; give a config name (e.g. sgz:smoke) or a file path")
  head, sep, arg = spec.partition(":")
  arg = arg if sep else None
  if _looks_like_path(head):
    if not os.path.isfile(head):
      what = "is a folder, not a file" if os.path.isdir(head) else "not found"
      raise errors.ConfigError(f"{_at(flag)}config file {head} {what}")
    return head, arg
  known = packaged_names(package, function)
  if head not in known:
    example = f"{package.replace('.', '/')}/{next(iter(known), 'NAME')}.py"
    raise errors.ConfigError(f"{_at(flag)}unknown config {head!r}; known: {', '.join(known) or '(none found)'} "
                             f"(or give a file path such as {example})")
  return str(known[head]), arg


def load_module(path: str, module_name: str, flag: str | None = "--config") -> types.ModuleType:
  """Executes a config/sweep file as a module; a failure is a ConfigError naming the file."""
  spec = importlib.util.spec_from_file_location(module_name, path)
  if spec is None or spec.loader is None:
    raise errors.ConfigError(f"{_at(flag)}{path} is not a Python file")
  module = importlib.util.module_from_spec(spec)
  try:
    spec.loader.exec_module(module)
  except Exception as e:  # pylint: disable=broad-except  (the file is the user's)
    raise errors.ConfigError(f"{_at(flag)}loading {path} failed: {type(e).__name__}: {errors.one_line(e)}") from e
  return module


def _call(module: types.ModuleType, function: str, path: str, arg: str | None, flag: str | None) -> Any:
  fn = getattr(module, function, None)
  if not callable(fn):
    raise errors.ConfigError(f"{_at(flag)}{path} defines no {function}(arg)")
  try:
    return fn(arg) if arg is not None else fn()
  except Exception as e:  # pylint: disable=broad-except  (a bad arg, or a broken config file)
    call = f"{function}({arg!r})" if arg is not None else f"{function}()"
    raise errors.ConfigError(f"{_at(flag)}{call} of {path} failed: {type(e).__name__}: {errors.one_line(e)}") from e


def load_config(spec: str, *, flag: str | None = "--config", lock: bool = False,
                module_name: str = "config_config") -> Any:
  """The config of `spec` (`sgz:smoke`, `configs/sgz.py:smoke`, ...), errors as ConfigError."""
  path, arg = resolve_spec(spec, flag=flag)
  config = _call(load_module(path, module_name, flag), "get_config", path, arg, flag)
  if config is None:
    raise errors.ConfigError(f"{_at(flag)}get_config of {path} returned None")
  if lock and hasattr(config, "lock"):
    config.lock()
  return config


def load_sweep(spec: str, *, flag: str | None = "--sweep") -> list[dict]:
  """The variants of a sweep file (`configs/sweeps/FILE.py[:ARG]` or a packaged sweep name)."""
  path, arg = resolve_spec(spec, package=SWEEP_PACKAGE, function="get_sweep", flag=flag)
  variants = _call(load_module(path, "_sweep", flag), "get_sweep", path, arg, flag)
  if not variants:
    raise errors.ConfigError(f"{_at(flag)}sweep file {path} produced no variants")
  return [dict(v) for v in variants]


class _Parser(config_flags.ConfigFileFlagParser):
  """config_flags' file parser with name resolution and ConfigError on every failure (none deferred)."""

  def parse(self, path):
    config = load_config(path, flag=None, module_name=f"{self.name}_config")
    if self._lock_config:
      config_flags._LockConfig(config)  # pylint: disable=protected-access
    return config


def field_problem(config: Any, field: str) -> str | None:
  """Why `field` (a dotted path) is not in `config`, or None if it is."""
  node, walked = config, []
  for part in field.split("."):
    keys = None
    if isinstance(node, (config_dict.ConfigDict, dict)):
      keys = list(node.keys())
      if part not in keys:
        where = "the config" if not walked else f"config.{'.'.join(walked)}"
        return f"unknown config field {field!r}: {where} has no {part!r} (it has: {', '.join(map(str, keys))})"
      node = node[part]
    elif isinstance(node, (list, tuple)) and part.isdigit() and int(part) < len(node):
      node = node[int(part)]
    elif hasattr(node, part):
      node = getattr(node, part)
    else:
      return f"unknown config field {field!r}: config.{'.'.join(walked)} is a {type(node).__name__}, not a group"
    walked.append(part)
  return None


class _Flag(config_flags._ConfigFlag):  # pylint: disable=protected-access
  """A config flag whose unknown `--config.FIELD` is a ConfigError naming FIELD and the fields that exist."""

  def _parse(self, argument):
    try:
      return super()._parse(argument)
    except (AttributeError, KeyError, IndexError, TypeError) as e:
      config = super(config_flags._ConfigFlag, self)._parse(argument)  # pylint: disable=protected-access,bad-super-call
      for field in self._GetOverrides(self._GetArgv()):
        problem = field_problem(config, field)
        if problem:
          raise errors.ConfigError(f"--{self.name}.{field}: {problem}") from e
      raise errors.ConfigError(f"--{self.name} overrides: {type(e).__name__}: {errors.one_line(e)}") from e


def DEFINE_config_file(name: str = "config", default: str | None = None,  # pylint: disable=invalid-name
                       help_string: str = "Config: a packaged name (sgz, scl_lle) or a file path, optionally "
                       "with :ARG (sgz:smoke, configs/sgz.py:smoke).",
                       flag_values: flags.FlagValues = flags.FLAGS, lock_config: bool = True) -> flags.FlagHolder:
  """`config_flags.DEFINE_config_file` with `resolve_spec` and one-line (ConfigError) failures."""
  flag = _Flag(parser=_Parser(name=name, lock_config=lock_config), serializer=flags.ArgumentSerializer(),
               name=name, default=default, help_string=help_string, flag_values=flag_values)
  # Registered as the caller's flag (as absl's own DEFINE_* do), so `--help` lists it with the CLI's flags.
  module = sys._getframe(1).f_globals.get("__name__", __name__)  # pylint: disable=protected-access
  if module == "__main__":
    module = sys.argv[0]
  return flags.DEFINE_flag(flag, flag_values, module_name=module)


def config_args(path: str | os.PathLike) -> list[str]:
  """The `get_config(arg)` variants a config file documents, read without importing it.

  `CONFIG_ARGS = ("smoke", "demo", ...)` at module level if the file defines it; otherwise the entries of the
  docstring's `Args` block (lines indented by two spaces under a line starting with `Args`).
  """
  tree = ast.parse(pathlib.Path(path).read_text(encoding="utf-8"))
  for node in tree.body:
    if (isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == ARGS_CONSTANT
                                             for t in node.targets)):
      try:
        return [str(a) for a in ast.literal_eval(node.value)]
      except ValueError:
        break
  doc = ast.get_docstring(tree) or ""
  out, inside = [], False
  for line in doc.splitlines():
    if re.match(r"^Args\b", line):
      inside = True
      continue
    if inside:
      if not line.strip():
        if out:
          break
        continue
      m = re.match(r"^  (\S+)", line)
      if m:
        out.append(m.group(1))
      elif not line.startswith("   "):
        break
  return out


def packaged_configs() -> dict[str, list[str]]:
  """{packaged config name: its documented get_config args}."""
  return {name: config_args(path) for name, path in packaged_names().items()}
