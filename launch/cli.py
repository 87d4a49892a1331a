r"""`lowlight`: one command for every CLI of the package.

  lowlight train --config sgz:smoke --workdir runs/smoke
  lowlight enhance --workdir runs/smoke --input photos/ --output out/
  lowlight evaluate | compare | convert | assets | benchmark | data-check | sweep | demo | make-synthetic-video ...
  lowlight methods            the methods and their packaged configs with the get_config args each accepts
  lowlight --version

`lowlight COMMAND ARGS` is `python -m launch.MODULE ARGS` (the same flags; `lowlight COMMAND --help` lists them).
Every command reports a bad file, flag or config value as one `lowlight COMMAND: error: ...` line and exits 2
(`--verbose` shows the traceback).
"""

from __future__ import annotations

import ast
import importlib
import importlib.metadata
import importlib.util
import pathlib
import sys

DISTRIBUTION = "lowlight-jax"

#: command -> (module, one-line description)
COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("launch.train", "train a method from a config (resumes from the workdir)"),
    "enhance": ("launch.enhance", "enhance an image or folder with a run or released weights"),
    "background": ("launch.background", "a camera's static background from a video (SegBMN run, median or RPCA)"),
    "evaluate": ("launch.evaluate", "score a folder of outputs (PSNR/SSIM/LPIPS/NIQE/BRISQUE/segmentation)"),
    "compare": ("launch.compare", "compare runs and released weights on the same test sets (JSON / markdown / HTML)"),
    "convert": ("launch.convert_weights", "convert released PyTorch weights (no torch needed)"),
    "assets": ("launch.assets", "fetch or list the metric assets (NIQE/BRISQUE/LPIPS parameters)"),
    "benchmark": ("launch.benchmark", "speed figures as JSON"),
    "data-check": ("launch.data_check", "iterate a config's training pipeline and report it as JSON"),
    "sweep": ("launch.sweep", "run (or print) one training per variant of a sweep"),
    "demo": ("launch.demo", "the README demo: train SGZ on the embedded data, enhance, score"),
    "make-synthetic-video": ("launch.make_synthetic_video", "render synthetic day/night surveillance videos"),
}
BUILTINS = {"methods": "list the methods and their packaged configs"}


def version() -> str:
  try:
    return importlib.metadata.version(DISTRIBUTION)
  except importlib.metadata.PackageNotFoundError:
    return "unknown (not installed: pip install -e .)"


def usage() -> str:
  width = max(map(len, [*COMMANDS, *BUILTINS]))
  lines = ["usage: lowlight COMMAND [FLAGS]   (lowlight COMMAND --help for its flags)", "", "commands:"]
  lines += [f"  {name:<{width}}  {text}" for name, (_, text) in COMMANDS.items()]
  lines += [f"  {name:<{width}}  {text}" for name, text in BUILTINS.items()]
  lines += ["", "  --version  print the version"]
  return "\n".join(lines)


def _config_method(path: pathlib.Path) -> str | None:
  """The literal `X.method = "..."` a config file assigns (read, not run)."""
  try:
    tree = ast.parse(path.read_text(encoding="utf-8"))
  except (OSError, SyntaxError, UnicodeDecodeError):
    return None
  for node in ast.walk(tree):
    if (isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Attribute)
        and node.targets[0].attr == "method" and isinstance(node.value, ast.Constant)
        and isinstance(node.value.value, str)):
      return node.value.value
  return None


def methods() -> dict[str, dict[str, list[str]]]:
  """{method: {packaged config name: its get_config args}}, found without importing jax or the methods.

  A method is a module of `lowlight_jax.methods` defining `Method`; a config belongs to the method its
  `config.method = "..."` names (else the method of the same name).
  """
  from launch import _config  # pylint: disable=g-import-not-at-top

  spec = importlib.util.find_spec("lowlight_jax.methods")
  folder = pathlib.Path(list(spec.submodule_search_locations)[0])
  found = {p.stem: {} for p in sorted(folder.glob("*.py"))
           if not p.stem.startswith("_") and _config.defines(p, "Method", ast.ClassDef)}
  for name, path in _config.packaged_names().items():
    method = _config_method(path) or name
    if method in found:
      found[method][name] = _config.config_args(path)
  return found


def print_methods() -> None:
  table = methods()
  width = max([len("method")] + [len(m) for m in table])
  print(f"{'method':<{width}}  configs (lowlight train --config NAME[:ARG])")
  for method, configs in table.items():
    text = "; ".join(f"{name} (args: {', '.join(args) if args else 'none'})" for name, args in configs.items())
    print(f"{method:<{width}}  {text or '(no packaged config)'}")


def main(argv: list[str] | None = None) -> int:
  args = list(sys.argv[1:] if argv is None else argv)
  if not args or args[0] in ("-h", "--help", "help"):
    print(usage(), file=sys.stdout if args else sys.stderr)
    return 0 if args else 2
  command, rest = args[0], args[1:]
  if command == "--version":
    print(f"lowlight {version()}")
    return 0
  if command == "methods":
    if rest:
      print(f"lowlight methods: error: unexpected arguments: {rest}", file=sys.stderr)
      return 2
    print_methods()
    return 0
  if command not in COMMANDS:
    print(f"lowlight: error: unknown command {command!r}; commands: {', '.join([*COMMANDS, *BUILTINS])} "
          "(lowlight --help)", file=sys.stderr)
    return 2
  name = COMMANDS[command][0]
  from launch import _common  # pylint: disable=g-import-not-at-top  (quiets TensorFlow before the command imports)
  module = importlib.import_module(name)
  if any(a in ("-h", "--help", "-help", "--helpshort") for a in rest):
    from absl import flags  # pylint: disable=g-import-not-at-top
    print((module.__doc__ or "").strip() + "\n")
    print(f"flags of lowlight {command} (--helpfull: all flags):")
    print(flags.FLAGS.module_help(name))
    return 0
  # The command's flags (and the `--config.FIELD` overrides) are read from sys.argv; its errors say
  # `lowlight COMMAND: error: ...`. Every command runs behind the one error boundary, whatever its own `run()` does.
  sys.argv = [f"lowlight {command}", *rest]
  _common.run(module.main)
  return 0


def run() -> None:
  """The `lowlight` console script."""
  sys.exit(main())


if __name__ == "__main__":
  run()
