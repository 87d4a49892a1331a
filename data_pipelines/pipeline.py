"""Training loader and evaluation set built from a data config (grain + numpy).

Follows the grain DataLoader pattern of flax `examples/gemma/input_pipeline_grain.py` and kauldron's
`kauldron/data/py/`: source -> (sharded, shuffled, infinitely repeated) sampler -> per-element
transforms -> batch, with each JAX process reading its own shard and per-process batches. The
iterator returned by `iter(make_train_loader(...))` is checkpointable: `get_state()`/`set_state()`,
or with Orbax `ocp.args.Composite(data=grain.checkpoint.CheckpointSave(iterator))` /
`CheckpointRestore(iterator)`; a restored iterator yields exactly the batches the original would
have yielded.

Usage:
  cfg = default_data_config()            # or config.data from a configs/*.py get_config
  loader = make_train_loader(cfg, batch_size=8, seed=0)
  batch = next(iter(loader))             # {'low': (8, 256, 256, 3) float32, 'high': ...}
  eval_set = make_eval_set(cfg)          # [{'name', 'low', 'high'}] at full resolution
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any

import grain
import ml_collections
from ml_collections import config_dict

from data_pipelines import degrade as degrade_lib
from lowlight_jax.io import imageio
from data_pipelines import samplers
from data_pipelines import sources
from data_pipelines import transforms

log = logging.getLogger(__name__)

SOURCES = ('embedded', 'paired_folder', 'unpaired_folder', 'dataset', 'video', 'scl')
# Named layouts of `datasets.py` whose elements are 'low'/'high' pairs of equal size.
PAIRED_DATASETS = ('lol', 'lol_v2_real', 'lol_v2_synthetic', 'lsrw')


def default_data_config() -> ml_collections.ConfigDict:
  """The data section of every experiment config, with its defaults.

  Fields:
    source: 'embedded' (photos shipped in scikit-image/matplotlib, low images synthesised; needs no
      files), 'paired_folder' (root/low_dir + root/high_dir matched by stem, e.g. LOL `our485`) or
      'unpaired_folder' (images of root/low_dir only, for zero-reference methods; batches hold
      'low').
    root: training folder for the folder sources (required for them; unused for 'embedded').
    eval_root: evaluation folder with the same layout (e.g. LOL `eval15`); `make_eval_set` of a
      folder source needs it.
    low_dir, high_dir: subfolder names; low_dir '' means root itself (unpaired_folder).
    resize: if > 0, first resize every training image to resize x resize with Lanczos (SGZ: 512);
      0 keeps the original size.
    crop: random crop size (reflect-pads smaller images); 0 = no crop, then `resize` must be set so
      that images can be batched.
    hflip, vflip: random horizontal / vertical flips (p = 1/2 each), same for low and high.
    worker_count: grain worker processes; 0 = transforms run in the training process.
    worker_buffer_size: batches each worker prepares ahead.
    read_threads, read_buffer_size: grain ReadOptions (threads decoding records, records read
      ahead).
    max_pixels: larger images are skipped (decompression-bomb guard; see `imageio.read_image`).
    dataset: for source 'dataset', a name of `datasets.DATASETS` (lol, lol_v2_real, lsrw, sice, enlightengan,
      dicm, ...) read from `root` in its standard layout; `dataset_options` are passed to it (e.g. pool='under').
    video: for source 'video', the `video.default_video_config()` section (frames of a folder of videos,
      or the synthetic surveillance set when video.root is unset).
    degradation: low-light synthesis for 'embedded' (fields of `degrade.DegradationConfig`).
  """
  c = ml_collections.ConfigDict()
  c.source = 'embedded'
  c.root = config_dict.placeholder(str)
  c.eval_root = config_dict.placeholder(str)
  c.low_dir = 'low'
  c.high_dir = 'high'
  c.resize = 0
  c.crop = 256
  c.hflip = True
  c.vflip = False
  c.worker_count = 0
  c.worker_buffer_size = 2
  c.read_threads = 4
  c.read_buffer_size = 16
  c.max_pixels = imageio.DEFAULT_MAX_PIXELS
  c.degradation = ml_collections.ConfigDict(dataclasses.asdict(degrade_lib.DegradationConfig()))
  c.dataset = config_dict.placeholder(str)
  c.dataset_options = ml_collections.ConfigDict()
  from data_pipelines import video  # pylint: disable=g-import-not-at-top
  c.video = video.default_video_config()
  return c


def degradation_config(data_cfg: ml_collections.ConfigDict) -> degrade_lib.DegradationConfig:
  """`data_cfg.degradation` as a DegradationConfig (unknown fields raise TypeError)."""
  return degrade_lib.DegradationConfig(**data_cfg.degradation.to_dict())


def _check_source(data_cfg: ml_collections.ConfigDict) -> None:
  if data_cfg.source not in SOURCES:
    raise ValueError(f'data.source must be one of {SOURCES}, got {data_cfg.source!r}')


def _folder(root: str | None, subdir: str, field: str) -> str:
  if not root:
    raise ValueError(f'data.{field} must be set for a folder source')
  return os.path.join(root, subdir) if subdir else root


def make_train_source(data_cfg: ml_collections.ConfigDict) -> grain.sources.RandomAccessDataSource:
  """The training source named by `data_cfg.source` (embedded: 'high' only, 'low' comes later)."""
  _check_source(data_cfg)
  if data_cfg.source == 'embedded':
    return sources.EmbeddedPairs('train', degradation=None)
  if data_cfg.source == 'paired_folder':
    _folder(data_cfg.root, '', 'root')
    return sources.PairedFolder(data_cfg.root, data_cfg.low_dir, data_cfg.high_dir,
                                max_pixels=data_cfg.max_pixels)
  if data_cfg.source == 'dataset':
    from data_pipelines import datasets  # pylint: disable=g-import-not-at-top
    if not data_cfg.dataset:
      raise ValueError("data.dataset must name a dataset for source 'dataset'")
    _folder(data_cfg.root, '', 'root')
    return datasets.make_source(data_cfg.dataset, data_cfg.root, 'train', max_pixels=data_cfg.max_pixels,
                                **data_cfg.dataset_options.to_dict())
  if data_cfg.source == 'video':
    raise ValueError("source 'video' has no random-access source; use make_train_loader")
  return sources.UnpairedFolder(_folder(data_cfg.root, data_cfg.low_dir, 'root'), key='low',
                                max_pixels=data_cfg.max_pixels)


def make_train_transforms(data_cfg: ml_collections.ConfigDict) -> list[Any]:
  """Per-element transforms: resize -> crop -> flip (-> synthesise 'low' for 'embedded')."""
  _check_source(data_cfg)
  if not data_cfg.crop and not data_cfg.resize:
    raise ValueError('data.crop or data.resize must be > 0: batching needs one image size')
  if data_cfg.source == 'dataset':
    keys = ('low', 'high') if data_cfg.dataset in PAIRED_DATASETS else ('low',)
    if data_cfg.dataset == 'sice':
      keys = ('high',) if data_cfg.dataset_options.get('pool') == 'normal' else ('low', 'high')
    if data_cfg.dataset in ('enlightengan', 'cityscapes'):
      raise ValueError(f"data.dataset={data_cfg.dataset!r} has unpaired/labelled elements: use the method's own "
                       "pipeline (e.g. configs/scl_lle.py) rather than the paired/unpaired image loader")
  else:
    keys = {'embedded': ('high',), 'paired_folder': ('low', 'high'),
            'unpaired_folder': ('low',), 'video': ('image',)}[data_cfg.source]
  ops = []
  if data_cfg.resize:
    ops.append(transforms.Resize(size=data_cfg.resize, keys=keys))
  if data_cfg.crop:
    ops.append(transforms.RandomCrop(size=data_cfg.crop, keys=keys))
  if data_cfg.hflip or data_cfg.vflip:
    ops.append(transforms.RandomFlip(keys=keys, horizontal=data_cfg.hflip,
                                     vertical=data_cfg.vflip))
  if data_cfg.source == 'embedded':
    # After the geometry: noise at crop resolution, fresh per (seed, epoch, photo).
    ops.append(transforms.Degrade(config=degradation_config(data_cfg)))
  return ops


def make_train_loader(data_cfg: ml_collections.ConfigDict, *, batch_size: int, seed: int,
                      shard_index: int | None = None,
                      shard_count: int | None = None) -> grain.DataLoader:
  """An infinite, shuffled, sharded grain DataLoader of per-process training batches.

  Args:
    data_cfg: see `default_data_config`.
    batch_size: examples per batch in THIS process (global batch / process count).
    seed: shuffle and augmentation seed (non-negative, 32-bit).
    shard_index, shard_count: this process's shard; both None means jax.process_index() /
      jax.process_count() (grain `ShardByJaxProcess`).

  Returns:
    A DataLoader; `iter()` of it yields dicts of numpy float32 arrays (batch_size, H, W, 3) keyed
    'low' and 'high' ('low' only for unpaired_folder), forever. Incomplete batches are dropped.
  """
  if data_cfg.source == 'scl':
    from data_pipelines import scl_data  # pylint: disable=g-import-not-at-top
    return scl_data.make_train_loader(data_cfg, batch_size=batch_size, seed=seed,
                                      shard_index=shard_index, shard_count=shard_count)
  if data_cfg.source == 'video':
    from data_pipelines import video  # pylint: disable=g-import-not-at-top
    _check_batch_and_shards(batch_size, shard_index, shard_count)
    # Video frames stream through a grain IterDataset (sequential decoding of shuffled segments); its
    # iterator is checkpointable like the DataLoader's.
    return video.make_train_dataset(data_cfg.video, batch_size=batch_size, seed=seed,
                                    shard_index=shard_index, shard_count=shard_count)
  return make_loader(data_cfg, make_train_source(data_cfg), make_train_transforms(data_cfg),
                     batch_size=batch_size, seed=seed, shard_index=shard_index,
                     shard_count=shard_count)


def _check_batch_and_shards(batch_size: int, shard_index, shard_count) -> None:
  if batch_size <= 0:
    raise ValueError(f'batch_size must be positive, got {batch_size}')
  if (shard_index is None) != (shard_count is None):
    raise ValueError('pass both shard_index and shard_count, or neither')


def make_loader(data_cfg: ml_collections.ConfigDict, source, operations: list[Any], *,
                batch_size: int, seed: int, shard_index: int | None = None,
                shard_count: int | None = None) -> grain.DataLoader:
  """The training DataLoader shared by every random-access source: shards, sampler, batching, workers.

  `operations` are the per-element transforms (a Batch op is appended here); worker and read options
  come from `data_cfg` (see `default_data_config`).
  """
  _check_batch_and_shards(batch_size, shard_index, shard_count)
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


def make_eval_set(data_cfg: ml_collections.ConfigDict,
                  split: str = 'test') -> list[dict[str, Any]]:
  """The full-resolution evaluation images, in a fixed order.

  'embedded': the photos of the split with their deterministic synthetic low images (seed 0).
  'paired_folder' / 'unpaired_folder': `eval_root` for split 'test', `root` for 'train'; images that
  fail to decode are skipped with a warning (never duplicated, so metrics average over real pairs).

  Returns:
    [{'name': str, 'low': HxWx3 float32, 'high': HxWx3 float32 or None (unpaired)}].
  """
  if data_cfg.source == 'scl':
    from data_pipelines import scl_data  # pylint: disable=g-import-not-at-top
    return scl_data.make_eval_set(data_cfg, split)
  _check_source(data_cfg)
  if split not in ('train', 'test'):
    raise ValueError(f"split must be 'train' or 'test', got {split!r}")
  if data_cfg.source == 'embedded':
    src = sources.EmbeddedPairs(split, degradation=degradation_config(data_cfg), seed=0)
    return [dict(name=name, **src[i]) for i, name in enumerate(src.names)]
  field = 'eval_root' if split == 'test' else 'root'
  root = data_cfg.eval_root if split == 'test' else data_cfg.root
  if data_cfg.source == 'paired_folder':
    src = sources.PairedFolder(_folder(root, '', field), data_cfg.low_dir, data_cfg.high_dir,
                               max_pixels=data_cfg.max_pixels)
  else:
    src = sources.UnpairedFolder(_folder(root, data_cfg.low_dir, field), key='low',
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
