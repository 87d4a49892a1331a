"""Training loader and evaluation set built from a data config (grain + numpy).

`data.source = '<name>'` selects the module `data_pipelines.sources.<name>` (a dotted value is a
full module path), which defines `make_train_loader` and `make_eval_set`; this module only looks it
up, so a new source is a new file, not an edit here (see `data_pipelines.sources`). Random-access sources
build their loaders with `loaders.make_loader`, the grain DataLoader pattern of flax
`examples/gemma/input_pipeline_grain.py` and kauldron's `kauldron/data/py/`: source -> (sharded,
shuffled, infinitely repeated) sampler -> per-element transforms -> batch, with each JAX process
reading its own shard and per-process batches in a topology-independent global batch order. The
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
import importlib
import pkgutil
import types
from typing import Any

import ml_collections
from ml_collections import config_dict

from data_pipelines import degrade as degrade_lib
from data_pipelines import loaders
from data_pipelines import sources
from lowlight_jax import errors
from lowlight_jax.io import imageio

# The DataLoader builder every random-access source uses (`loaders.make_loader`), kept here as the
# pipeline's public entry point, and the degradation section of a data config as a dataclass.
make_loader = loaders.make_loader
degradation_config = loaders.degradation_config

_REQUIRED = ('make_train_loader', 'make_eval_set')


def default_data_config() -> ml_collections.ConfigDict:
  """The data section of every experiment config, with its defaults.

  Fields:
    source: a module of `data_pipelines/sources/` (`known_sources()`) or a dotted module path:
      'embedded' (photos shipped in scikit-image/matplotlib, low images synthesised; needs no
      files), 'paired_folder' (root/low_dir + root/high_dir matched by stem, e.g. LOL `our485`),
      'unpaired_folder' (images of root/low_dir only, for zero-reference methods; batches hold
      'low'), 'dataset', 'video'; 'scl' has its own section (`scl_data.default_scl_data_config`).
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


def known_sources() -> list[str]:
  """The names `data.source` accepts without a dot: the modules of `data_pipelines/sources/`."""
  return sorted(m.name for m in pkgutil.iter_modules(sources.__path__)
                if not m.name.startswith('_'))


def source_module(name: Any) -> types.ModuleType:
  """The module serving `data.source = name`: `data_pipelines.sources.<name>`, or `name` if dotted.

  A dotted name ('my_project.data.my_source') is imported as a full module path, so a source can
  live outside this repository. The module must define `make_train_loader(data_cfg, *, batch_size, seed,
  shard_index=None, shard_count=None)` and `make_eval_set(data_cfg, split='test')` (see
  `data_pipelines.sources`). Raises ConfigError naming the value and listing the known sources.
  """
  known = ', '.join(known_sources())
  if not isinstance(name, str) or not all(part.isidentifier() for part in name.split('.')):
    raise errors.ConfigError(f'data.source={name!r} is not a data source name; known sources: '
                             f'{known} (or a dotted module path)')
  target = name if '.' in name else f'{sources.__name__}.{name}'
  try:
    module = importlib.import_module(target)
  except ModuleNotFoundError as e:
    if e.name is None or not (target == e.name or target.startswith(e.name + '.')):
      raise  # The source module exists but one of ITS imports is missing: not a config error.
    raise errors.ConfigError(f'unknown data.source={name!r} (no module {target}); known sources: '
                             f'{known} (or a dotted module path)') from e
  missing = [f for f in _REQUIRED if not callable(getattr(module, f, None))]
  if missing:
    raise errors.ConfigError(
        f'data.source={name!r}: module {target} does not define {", ".join(missing)}')
  return module


def make_train_loader(data_cfg: ml_collections.ConfigDict, *, batch_size: int, seed: int,
                      shard_index: int | None = None,
                      shard_count: int | None = None):
  """An infinite, shuffled, sharded loader of per-process training batches from `data_cfg.source`.

  Args:
    data_cfg: see `default_data_config` (or the source's own section, e.g. `scl_data`).
    batch_size: examples per batch in THIS process (global batch / process count).
    seed: shuffle and augmentation seed (non-negative, 32-bit).
    shard_index, shard_count: this process's shard; both None means jax.process_index() /
      jax.process_count() (grain `ShardByJaxProcess`).

  Returns:
    A grain DataLoader (random-access sources) or IterDataset ('video'); `iter()` of it yields dicts
    of numpy arrays, e.g. float32 (batch_size, H, W, 3) keyed 'low' and 'high' ('low' only for
    unpaired_folder), forever, with a checkpointable iterator. Incomplete batches are dropped.
  """
  return source_module(data_cfg.source).make_train_loader(
      data_cfg, batch_size=batch_size, seed=seed, shard_index=shard_index, shard_count=shard_count)


def make_eval_set(data_cfg: ml_collections.ConfigDict,
                  split: str = 'test') -> list[dict[str, Any]]:
  """The full-resolution evaluation images of `data_cfg.source`, in a fixed order.

  'embedded': the photos of the split with their deterministic synthetic low images (seed 0).
  'paired_folder' / 'unpaired_folder': `eval_root` for split 'test', `root` for 'train'; images that
  fail to decode are skipped with a warning (never duplicated, so metrics average over real pairs).

  Returns:
    [{'name': str, 'low': HxWx3 float32, 'high': HxWx3 float32 or None (unpaired)}].
  """
  return source_module(data_cfg.source).make_eval_set(data_cfg, split)
