"""Import layering: data_pipelines uses only the bottom layer; no two modules import each other.

The bottom layer is `lowlight_jax` (the package itself), `lowlight_jax.io` (`imageio`, `atomic_io`)
and `lowlight_jax.errors`. The graph is read statically from the source (module-level AND
function-local `import` / `from ... import` statements, a `from X import Y` counting as an import of
`X.Y` when that is a module), so a cycle hidden in a function body that no test runs is still found.
"""

from __future__ import annotations

import ast
import json
import os
import pathlib
import subprocess
import sys
import textwrap

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGES = ("lowlight_jax", "data_pipelines", "launch", "configs")
BOTTOM_LAYER = ("lowlight_jax", "lowlight_jax.io", "lowlight_jax.errors")


def _in_bottom_layer(module: str) -> bool:
  return module in BOTTOM_LAYER or module.startswith("lowlight_jax.io.")


def _modules(root: pathlib.Path, packages) -> dict[str, tuple[pathlib.Path, bool]]:
  """{dotted module name: (file, is_package)} for every .py file under root/<package>."""
  out = {}
  for package in packages:
    for path in sorted((root / package).rglob("*.py")):
      parts = list(path.relative_to(root).with_suffix("").parts)
      is_package = parts[-1] == "__init__"
      if is_package:
        parts = parts[:-1]
      out[".".join(parts)] = (path, is_package)
  return out


def import_graph(root: pathlib.Path, packages=PACKAGES) -> dict[str, set[str]]:
  """{module: project modules it imports anywhere in its file}, from the AST (nothing runs)."""
  modules = _modules(root, packages)
  graph = {}
  for name, (path, is_package) in modules.items():
    package = name if is_package else name.rpartition(".")[0]
    targets = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=os.fspath(path))):
      if isinstance(node, ast.Import):
        targets.update(alias.name for alias in node.names)
      elif isinstance(node, ast.ImportFrom):
        if node.level:  # Relative: `from . import x`, `from ..a import b`.
          base = package.split(".")[:len(package.split(".")) - (node.level - 1)]
          module = ".".join(base + ([node.module] if node.module else []))
        else:
          module = node.module
        for alias in node.names:
          submodule = f"{module}.{alias.name}"
          targets.add(submodule if submodule in modules else module)
    resolved = set()
    for target in targets:
      while target and target not in modules:  # `import a.b.func_module_attr` -> the module a.b.
        target = target.rpartition(".")[0]
      if target and target != name:
        resolved.add(target)
    graph[name] = resolved
  return graph


def mutual_pairs(graph: dict[str, set[str]]) -> list[tuple[str, str]]:
  return sorted({tuple(sorted((a, b))) for a, targets in graph.items() for b in targets
                 if a in graph.get(b, ())})


def test_importing_every_data_pipelines_module_loads_only_the_bottom_layer_of_lowlight_jax():
  code = textwrap.dedent("""
      import importlib, json, pkgutil, sys
      import data_pipelines
      names = [m.name for m in pkgutil.walk_packages(data_pipelines.__path__, 'data_pipelines.')]
      for name in names:
        importlib.import_module(name)
      from data_pipelines import pipeline
      pipeline.default_data_config()
      loaded = sorted(m for m in sys.modules if m.split('.')[0] == 'lowlight_jax')
      print(json.dumps({'imported': names, 'lowlight_jax': loaded}))
  """)
  env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3")
  result = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr
  report = json.loads(result.stdout.strip().splitlines()[-1])
  # The walk really covered the package (the pipeline, the loaders and the source registry).
  assert {"data_pipelines.pipeline", "data_pipelines.loaders", "data_pipelines.scl_data",
          "data_pipelines.sources.embedded",
          "data_pipelines.sources.scl"} <= set(report["imported"])
  beyond = [m for m in report["lowlight_jax"] if not _in_bottom_layer(m)]
  assert not beyond, f"data_pipelines loaded lowlight_jax above the bottom layer: {beyond}"
  assert "lowlight_jax.io.imageio" in report["lowlight_jax"]  # The check sees lowlight_jax at all.


def test_data_pipelines_source_names_only_the_bottom_layer_even_in_function_bodies():
  graph = import_graph(REPO_ROOT)
  reaching = {}
  for module, targets in graph.items():
    above = sorted(t for t in targets
                   if t.split(".")[0] == "lowlight_jax" and not _in_bottom_layer(t))
    if module.split(".")[0] == "data_pipelines" and above:
      reaching[module] = above
  assert not reaching, f"data_pipelines importing lowlight_jax above the bottom layer: {reaching}"
  # The bottom layer itself imports nothing else of the project.
  for module in ("lowlight_jax.io.imageio", "lowlight_jax.io.atomic_io", "lowlight_jax.errors"):
    assert all(_in_bottom_layer(t) for t in graph[module]), (module, graph[module])


def test_no_two_project_modules_import_each_other():
  graph = import_graph(REPO_ROOT)
  # The scan sees the whole project, function-local imports included: the trainer's local import of
  # the pipeline and the pipeline's of the loaders are edges.
  assert {"lowlight_jax.train.trainer", "data_pipelines.pipeline", "launch.train",
          "configs.sgz"} <= set(graph)
  assert "data_pipelines.pipeline" in graph["lowlight_jax.train.trainer"]
  assert "data_pipelines.loaders" in graph["data_pipelines.pipeline"]
  pairs = mutual_pairs(graph)
  assert not pairs, "modules importing each other: " + "; ".join(f"{a} <-> {b}" for a, b in pairs)


def test_the_scan_finds_mutual_imports_hidden_in_functions(tmp_path):
  """The shape of the old pipeline <-> scl_data pair: each imports the other inside a function."""
  pkg = tmp_path / "pkg"
  (pkg / "sub").mkdir(parents=True)
  (pkg / "__init__.py").write_text("")
  (pkg / "sub" / "__init__.py").write_text("")
  (pkg / "pipeline.py").write_text(textwrap.dedent("""
      from pkg import base
      def loader():
        from pkg import scl_data  # local
        return scl_data
  """))
  (pkg / "scl_data.py").write_text(textwrap.dedent("""
      import numpy
      from pkg import base
      def make():
        from pkg import pipeline  # local
        return pipeline.loader
  """))
  (pkg / "base.py").write_text("X = 1\n")
  # Relative and dotted forms, and an import of a NAME (not a module) from a package.
  (pkg / "sub" / "a.py").write_text("def f():\n  from . import b\n")
  (pkg / "sub" / "b.py").write_text("def g():\n  import pkg.sub.a\n")
  (pkg / "c.py").write_text("from pkg.base import X\n")
  graph = import_graph(tmp_path, ("pkg",))
  assert graph["pkg.scl_data"] == {"pkg.base", "pkg.pipeline"}  # numpy is not a project module.
  assert graph["pkg.c"] == {"pkg.base"}
  assert mutual_pairs(graph) == [("pkg.pipeline", "pkg.scl_data"), ("pkg.sub.a", "pkg.sub.b")]
