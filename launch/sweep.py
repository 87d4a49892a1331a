r"""Runs a config sweep: every variant as a local `launch.train` subprocess, then one results table.

  lowlight sweep --config sgz[:ARG] --sweep sgz_loss_ablation --workdir-root DIR [--parallel N] [--dry-run]
  python -m launch.sweep --config configs/sgz.py[:ARG] --sweep configs/sweeps/FILE.py[:ARG] \
      --workdir-root DIR [--parallel N] [--dry-run] [--multihost]

`--config` and `--sweep` take a packaged name (`sgz:smoke`; a sweep of configs/sweeps/) or a file path. The config,
the sweep and every field a variant or `--set` overrides are checked before anything runs; a problem is one error
line (exit 2).

--dry-run prints one launch command per variant (with `--distributed` under --multihost, for a cluster scheduler
that starts one process per host) and runs nothing. Otherwise results (each run's final_metrics.json) are collected
into DIR/results.csv and DIR/results.md.
"""

import csv
import json
import os
import shlex
import subprocess
import sys
import time

from absl import app
from absl import flags

from launch import _common
from launch import _config
from lowlight_jax import errors
from lowlight_jax.io import atomic_io

_CONFIG = flags.DEFINE_string("config", None, "Base config: a packaged name or a file, with an optional :ARG "
                              "(sgz:smoke, configs/sgz.py:smoke).")
_SWEEP = flags.DEFINE_string("sweep", None, "Sweep defining get_sweep(arg): a name in configs/sweeps/ or a file, "
                             "with an optional :ARG.")
_ROOT = flags.DEFINE_string("workdir_root", None, "One sub-directory per variant is created here.")
flags.DEFINE_alias("workdir-root", "workdir_root")
_PARALLEL = flags.DEFINE_integer("parallel", 1, "Variants run at once (local subprocesses).")
_DRY = flags.DEFINE_bool("dry_run", False, "Print the commands only.")
flags.DEFINE_alias("dry-run", "dry_run")
_MULTIHOST = flags.DEFINE_bool("multihost", False, "Add --distributed to printed/run commands.")
_EXTRA = flags.DEFINE_multi_string("set", [], "Extra FIELD=VALUE overrides applied to every variant.")
flags.mark_flags_as_required(["config", "sweep", "workdir_root"])


def load_sweep(spec: str) -> list[dict]:
  """The variants of `--sweep` (ConfigError naming the file on any problem)."""
  return _config.load_sweep(spec, flag="--sweep")


def check_fields(config_spec: str, variants: list[dict], extra=()) -> None:
  """ConfigError naming the first field a variant or `--set` overrides that the config does not have."""
  config = _config.load_config(config_spec, flag="--config")
  for i, overrides in enumerate(variants):
    for field in overrides:
      problem = _config.field_problem(config, field)
      if problem:
        raise errors.ConfigError(f"--sweep variant {i} ({overrides}): {problem}")
  for item in extra:
    field, eq, _ = item.partition("=")
    if not eq:
      raise errors.ConfigError(f"--set {item}: expected FIELD=VALUE")
    problem = _config.field_problem(config, field)
    if problem:
      raise errors.ConfigError(f"--set {item}: {problem}")


def _format(value) -> str:
  if isinstance(value, (tuple, list)):
    return "(" + ",".join(_format(v) for v in value) + ("," if len(value) == 1 else "") + ")"
  return str(value)


def commands(config: str, variants: list[dict], root: str, *, multihost: bool, extra=()) -> list[tuple[str, list[str]]]:
  from lowlight_jax.train import sweeps
  out = []
  seen = set()
  for i, overrides in enumerate(variants):
    name = f"{i:03d}_{sweeps.variant_name(overrides)}"[:120]
    if name in seen:
      raise errors.ConfigError(f"--sweep: duplicate variant {overrides}")
    seen.add(name)
    cmd = [sys.executable, "-m", "launch.train", f"--config={config}", f"--workdir={os.path.join(root, name)}"]
    cmd += [f"--config.{k}={_format(v)}" for k, v in overrides.items()]
    cmd += [f"--config.{e}" for e in extra]
    if multihost:
      cmd.append("--distributed")
    out.append((name, cmd))
  return out


def run_all(cmds, root: str, parallel: int) -> dict[str, int]:
  pending, running, codes = list(cmds), {}, {}
  while pending or running:
    while pending and len(running) < max(1, parallel):
      name, cmd = pending.pop(0)
      os.makedirs(os.path.join(root, name), exist_ok=True)
      log = open(os.path.join(root, name, "train.log"), "w")
      running[name] = (subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT), log)
      print(f"started {name}", flush=True)
    for name, (proc, log) in list(running.items()):
      if proc.poll() is not None:
        log.close()
        codes[name] = proc.returncode
        del running[name]
        print(f"finished {name}: exit {proc.returncode}", flush=True)
    time.sleep(0.5)
  return codes


def collect(root: str, cmds, variants, codes) -> list[dict]:
  rows = []
  for (name, _), overrides in zip(cmds, variants):
    row = {"run": name, "exit": codes.get(name), **{k: _format(v) for k, v in overrides.items()}}
    path = os.path.join(root, name, "final_metrics.json")
    if os.path.exists(path):
      with open(path) as f:
        row.update(json.load(f))
    rows.append(row)
  columns = []
  for row in rows:
    columns += [k for k in row if k not in columns]
  def write_csv(f):
    writer = csv.DictWriter(f, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
  atomic_io.write_file_atomic(os.path.join(root, "results.csv"), write_csv, binary=False)
  fmt = lambda v: f"{v:.4g}" if isinstance(v, float) else ("" if v is None else str(v))
  lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
  lines += ["| " + " | ".join(fmt(r.get(c)) for c in columns) + " |" for r in rows]
  with open(os.path.join(root, "results.md"), "w") as f:
    f.write("\n".join(lines) + "\n")
  return rows


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if _PARALLEL.value < 1:
    raise errors.ConfigError(f"--parallel must be >= 1, got {_PARALLEL.value}")
  if os.path.exists(_ROOT.value) and not os.path.isdir(_ROOT.value):
    raise errors.OutputError(f"--workdir-root {_ROOT.value} is a file; give a folder")
  variants = load_sweep(_SWEEP.value)
  check_fields(_CONFIG.value, variants, _EXTRA.value)
  cmds = commands(_CONFIG.value, variants, _ROOT.value, multihost=_MULTIHOST.value, extra=_EXTRA.value)
  if _DRY.value:
    for _, cmd in cmds:
      print(shlex.join(["python"] + cmd[1:]))
    return
  codes = run_all(cmds, _ROOT.value, _PARALLEL.value)
  rows = collect(_ROOT.value, cmds, variants, codes)
  with open(os.path.join(_ROOT.value, "results.md")) as f:
    print(f.read())
  failed = [r["run"] for r in rows if r["exit"] != 0]
  if failed:
    print(f"{len(failed)} run(s) failed: {failed} (see their train.log)")
    sys.exit(1)


def run():
  _common.run(main)


if __name__ == "__main__":
  run()
