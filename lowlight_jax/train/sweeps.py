"""Sweep building blocks: axes of config overrides combined by product or zip.

A sweep file (`configs/sweeps/*.py`) defines `get_sweep(arg=None) -> list[dict]`, each dict mapping dotted config
fields to values, e.g. `product(axis('seed', [0, 1]), axis('optim.enhancer.lr', [1e-4, 1e-3]))`.
"""

from __future__ import annotations

import itertools
from typing import Any, Iterable, Sequence


def axis(field: str, values: Iterable[Any]) -> list[dict[str, Any]]:
  """One field over several values."""
  return [{field: v} for v in values]


def product(*axes: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
  """Cartesian product of axes; later axes vary fastest."""
  out = []
  for combo in itertools.product(*axes):
    merged: dict[str, Any] = {}
    for part in combo:
      merged.update(part)
    out.append(merged)
  return out


def zipit(*axes: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
  """Element-wise combination of equally long axes."""
  lengths = {len(a) for a in axes}
  if len(lengths) > 1:
    raise ValueError(f"zipit: axes have different lengths {sorted(lengths)}")
  out = []
  for combo in zip(*axes):
    merged: dict[str, Any] = {}
    for part in combo:
      merged.update(part)
    out.append(merged)
  return out


def variant_name(overrides: dict[str, Any]) -> str:
  """A directory-safe name such as 'loss_weights.tv=0,seed=1'."""
  if not overrides:
    return "base"
  parts = [f"{k}={v}" for k, v in overrides.items()]
  name = ",".join(parts)
  return "".join(c if c.isalnum() or c in "._=,-" else "_" for c in name)
