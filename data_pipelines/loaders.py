"""Building blocks shared by the data sources: the training DataLoader, image transforms, eval sets.

Every `data_pipelines/sources/<name>.py` module (what `config.data.source = '<name>'` selects, see
`data_pipelines.sources`) builds its loader and evaluation set from these, so all random-access
sources get the same sharding, the same topology-independent global batch order
(`samplers.GlobalBatchSampler`), the same worker/read options and the same skip-on-decode-error
evaluation sets. This module sits below the sources and below `pipeline`: it imports neither.

Follows the grain DataLoader pattern of flax `examples/gemma/input_pipeline_grain.py` and kauldron's
`kauldron/data/py/`: source -> (sharded, shuffled, infinitely repeated) sampler -> per-element
transforms -> batch, with each JAX process reading its own shard and per-process batches.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Sequence

import grain
import ml_collections

from data_pipelines import degrade as degrade_lib
from data_pipelines import image_sources
from data_pipelines import samplers
from data_pipelines import transforms
from lowlight_jax.io import imageio

log = logging.getLogger(__name__)


def check_batch_and_shards(batch_size: int, shard_index: int | None,
                           shard_count: int | None) -> None:
  """ValueError for a non-positive batch size or only one of shard_index / shard_count."""
  if batch_size <= 0:
    raise ValueError(f'batch_size must be positive, got {batch_size}')
  if (shard_index is None) != (shard_count is None):
    raise ValueError('pass both shard_index and shard_count, or neither')


def make_loader(data_cfg: ml_collections.ConfigDict, source, operations: list[Any], *,
                batch_size: int, seed: int, shard_index: int | None = None,
                shard_count: int | None = None) -> grain.DataLoader:
  """The training DataLoader shared by every random-access source: shards, sampler, batching, workers.

  `operations` are the per-element transforms (a Batch op is appended here); worker and read options
  come from `data_cfg` (see `pipeline.default_data_config`). Shards default to
  jax.process_index()/process_count() (grain `ShardByJaxProcess`, read in the main process only).
  """
  check_batch_and_shards(batch_size, shard_index, shard_count)
  if shard_index is None:
    # Reads jax.process_index()/process_count() here, in the main process only.
    shard_options = grain.sharding.ShardByJaxProcess(drop_remainder=False)
  else:
    # No drop_remainder: with infinite epochs uneven shards cost nothing, dropped records would.
    shard_options = grain.sharding.ShardOptions(shard_index=shard_index, shard_count=shard_count,
                                                drop_remainder=False)
  operations = list(operations) + [grain.transforms.Batch(batch_size=batch_size, drop_remainder=True)]
  return grain.DataLoader(
      data_source=source,
      sampler=_sampler(len(source), shard_options, seed, batch_size),
      operations=operations,
      worker_count=data_cfg.worker_count,
      worker_buffer_size=data_cfg.worker_buffer_size,
      shard_options=shard_options,
      read_options=grain.ReadOptions(num_threads=data_cfg.read_threads,
                                     prefetch_buffer_size=data_cfg.read_buffer_size),
  )


def _sampler(num_records: int, shard_options, seed: int, batch_size: int):
  """Global-batch order (topology independent) when the shards are JAX processes, as in training."""
  if isinstance(shard_options, grain.sharding.ShardByJaxProcess) or shard_options.shard_count > 1:
    options = grain.sharding.ShardOptions(shard_options.shard_index, shard_options.shard_count,
                                          drop_remainder=False)
    return samplers.GlobalBatchSampler(num_records, options, seed, batch_size)
  return samplers.EpochSeededSampler(num_records, shard_options, seed)


def degradation_config(data_cfg: ml_collections.ConfigDict) -> degrade_lib.DegradationConfig:
  """`data_cfg.degradation` as a DegradationConfig (unknown fields raise TypeError)."""
  return degrade_lib.DegradationConfig(**data_cfg.degradation.to_dict())


def folder(root: str | None, subdir: str, field: str) -> str:
  """root/subdir (root itself for subdir ''); ValueError naming `data.<field>` if root is unset."""
  if not root:
    raise ValueError(f'data.{field} must be set for a folder source')
  return os.path.join(root, subdir) if subdir else root


def image_transforms(data_cfg: ml_collections.ConfigDict, keys: Sequence[str], *,
                     degradation: degrade_lib.DegradationConfig | None = None) -> list[Any]:
  """Per-element transforms of `keys`: resize -> crop -> flip (-> synthesise 'low' from 'high').

  `data_cfg.resize`, `crop`, `hflip`, `vflip` as in `pipeline.default_data_config`; with
  `degradation`, `transforms.Degrade` runs last (noise at crop resolution, fresh per (seed, epoch,
  record)).
  """
  if not data_cfg.crop and not data_cfg.resize:
    raise ValueError('data.crop or data.resize must be > 0: batching needs one image size')
  keys = tuple(keys)
  ops: list[Any] = []
  if data_cfg.resize:
    ops.append(transforms.Resize(size=data_cfg.resize, keys=keys))
  if data_cfg.crop:
    ops.append(transforms.RandomCrop(size=data_cfg.crop, keys=keys))
  if data_cfg.hflip or data_cfg.vflip:
    ops.append(transforms.RandomFlip(keys=keys, horizontal=data_cfg.hflip,
                                     vertical=data_cfg.vflip))
  if degradation is not None:
    # After the geometry: noise at crop resolution, fresh per (seed, epoch, photo).
    ops.append(transforms.Degrade(config=degradation))
  return ops


def check_split(split: str) -> None:
  if split not in ('train', 'test'):
    raise ValueError(f"split must be 'train' or 'test', got {split!r}")


def embedded_eval_set(
    split: str = 'test',
    degradation: degrade_lib.DegradationConfig | None = None) -> list[dict[str, Any]]:
  """The embedded photos of `split` with their deterministic synthetic low images (seed 0).

  `degradation` None means the default `DegradationConfig()`. Every method's embedded evaluation
  uses this one set, so numbers compare across methods.
  """
  check_split(split)
  degradation = degradation or degrade_lib.DegradationConfig()
  src = image_sources.EmbeddedPairs(split, degradation=degradation, seed=0)
  return [dict(name=name, **src[i]) for i, name in enumerate(src.names)]


def folder_eval_set(data_cfg: ml_collections.ConfigDict, split: str = 'test', *,
                    paired: bool) -> list[dict[str, Any]]:
  """Full-resolution images of a folder: `eval_root` for split 'test', `root` for 'train'.

  paired: root/low_dir + root/high_dir matched by stem; else the images of root/low_dir ('high'
  None). Images that fail to decode are skipped with a warning (never duplicated, so metrics
  average over real pairs).
  """
  check_split(split)
  field = 'eval_root' if split == 'test' else 'root'
  root = data_cfg.eval_root if split == 'test' else data_cfg.root
  if paired:
    src = image_sources.PairedFolder(folder(root, '', field), data_cfg.low_dir, data_cfg.high_dir,
                               max_pixels=data_cfg.max_pixels)
  else:
    src = image_sources.UnpairedFolder(folder(root, data_cfg.low_dir, field), key='low',
                                 max_pixels=data_cfg.max_pixels)
  out = []
  for i in range(len(src)):
    try:
      element = src.read(i)
    except imageio.ImageDecodeError as e:
      log.warning('make_eval_set: skipping %r: %s', e.path, e.reason)
      continue
    out.append({'name': src.name(i), 'low': element['low'], 'high': element.get('high')})
  return out
