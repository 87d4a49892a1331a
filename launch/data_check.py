r"""Iterates a config's training pipeline and prints ONE JSON object describing what it produced.

  lowlight data-check --config sgz:smoke [--config.FIELD=VALUE ...] --num_batches N
  python -m launch.data_check --config configs/sgz.py:smoke [--config.FIELD=VALUE ...] \
      --num_batches N

Builds `config.data` with `data_pipelines.pipeline.make_train_loader` (batch `config.batch_size`,
seed `config.seed`, shard --shard_index of --shard_count), pulls N batches and reports:

  batches, elements, seconds, first_batch_s (includes worker start-up), elements_per_s (after the
  first batch), per key: element shape, dtype, min / max / mean over everything seen, and the files
  the sources skipped, with reasons. Skips are collected from the sources living in this process:
  with `data.worker_count > 0`, files that fail only when decoded inside a worker are logged by that
  worker (stderr) but not listed here; run with `--config.data.worker_count=0` for the full list.

Example (a folder with one broken file):
  python -m launch.data_check --config configs/sgz.py:smoke --config.data.source=unpaired_folder \
      --config.data.root=/data/dark --config.data.low_dir= --num_batches 5
"""

from __future__ import annotations

import json
import time
from typing import Any, Iterator

from absl import app
from absl import flags
import numpy as np

from launch import _common  # (quiet TF/absl logs; the CLI error boundary)
from launch import _config
from lowlight_jax import errors

_CONFIG = _config.DEFINE_config_file(
    "config", None, "Config: a packaged name or a file, with an optional :ARG (sgz:smoke, "
    "configs/sgz.py:smoke).", lock_config=True)
_NUM_BATCHES = flags.DEFINE_integer("num_batches", 10, "Batches to pull.")
_SHARD_INDEX = flags.DEFINE_integer("shard_index", 0, "Which shard to read.")
_SHARD_COUNT = flags.DEFINE_integer("shard_count", 1, "Number of shards (JAX processes).")
flags.mark_flags_as_required(["config"])


def _sources(obj: Any, seen: set[int] | None = None) -> Iterator[Any]:
  """Objects holding a `skipped` list reachable from a DataLoader or grain dataset graph."""
  seen = set() if seen is None else seen
  if obj is None or id(obj) in seen:
    return
  seen.add(id(obj))
  if isinstance(getattr(obj, "skipped", None), list):
    yield obj
  for attr in ("_data_source", "_source", "_parents", "index", "a", "b"):
    child = getattr(obj, attr, None)
    for c in (child if isinstance(child, (list, tuple)) else [child]):
      if c is not None and not isinstance(c, (int, float, str, np.ndarray)):
        yield from _sources(c, seen)


def skipped_files(loader: Any) -> list[dict[str, str]]:
  """[{'path', 'reason'}] from every source of `loader` (deduplicated, in order)."""
  out, seen = [], set()
  for source in _sources(loader):
    for path, reason in source.skipped:
      if (path, reason) not in seen:
        seen.add((path, reason))
        out.append({"path": path, "reason": reason})
  return out


class _Stats:
  """Per-key shape/dtype of one element and running min/max/mean."""

  def __init__(self):
    self.spec: dict[str, dict[str, Any]] = {}

  def add(self, batch: dict[str, Any]) -> None:
    for key, value in batch.items():
      value = np.asarray(value)
      entry = self.spec.setdefault(key, {"shape": list(value.shape[1:]), "dtype": str(value.dtype),
                                         "min": None, "max": None, "_sum": 0.0, "_n": 0})
      if value.dtype.kind in "biuf" and value.size:
        lo, hi = float(value.min()), float(value.max())
        entry["min"] = lo if entry["min"] is None else min(entry["min"], lo)
        entry["max"] = hi if entry["max"] is None else max(entry["max"], hi)
        entry["_sum"] += float(value.sum(dtype=np.float64))
        entry["_n"] += value.size

  def result(self) -> dict[str, dict[str, Any]]:
    out = {}
    for key, e in self.spec.items():
      out[key] = {k: v for k, v in e.items() if not k.startswith("_")}
      out[key]["mean"] = e["_sum"] / e["_n"] if e["_n"] else None
    return out


def check(config, num_batches: int, shard_index: int = 0, shard_count: int = 1) -> dict[str, Any]:
  """Pulls `num_batches` batches of `config.data` and returns the report (see module docstring)."""
  from data_pipelines import pipeline  # pylint: disable=g-import-not-at-top

  if num_batches < 1:
    raise errors.ConfigError(f"--num_batches must be >= 1, got {num_batches}")
  if shard_count < 1 or not 0 <= shard_index < shard_count:
    raise errors.ConfigError(f"--shard_index must be in [0, --shard_count={shard_count}), got {shard_index}")
  start = time.perf_counter()
  loader = pipeline.make_train_loader(config.data, batch_size=config.batch_size, seed=config.seed,
                                      shard_index=shard_index, shard_count=shard_count)
  iterator = iter(loader)
  stats = _Stats()
  elements = 0
  first_done = None
  for i in range(num_batches):
    batch = next(iterator)
    stats.add(batch)
    elements += len(next(iter(batch.values())))
    if i == 0:
      first_done = time.perf_counter()
  end = time.perf_counter()
  per_batch = elements / num_batches
  rest = end - first_done
  report = {
      "source": config.data.get("source"),
      "batch_size": config.batch_size,
      "batches": num_batches,
      "elements": elements,
      "seconds": round(end - start, 4),
      "first_batch_s": round(first_done - start, 4),
      # After the first batch (worker start-up and first file opens are not throughput).
      "elements_per_s": (round(per_batch * (num_batches - 1) / rest, 2)
                         if num_batches > 1 and rest > 0 else round(elements / (end - start), 2)),
      "elements_spec": stats.result(),
  }
  report["skipped"] = skipped_files(loader)
  report["num_skipped"] = len(report["skipped"])
  close = getattr(iterator, "close", None)
  if close is not None:
    close()
  return report


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  report = check(_CONFIG.value, _NUM_BATCHES.value, _SHARD_INDEX.value, _SHARD_COUNT.value)
  print(json.dumps(report))


def run():
  _common.run(main)


if __name__ == "__main__":
  run()
