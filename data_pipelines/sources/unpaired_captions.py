"""`data.source = 'unpaired_captions'`: unpaired low / normal-light folders with optional captions (SCUF/GEFU).

The EnlightenGAN layout GEFU trains on: `root/low_dir` (low-light images) and `root/high_dir`
(normal-light images), unrelated and generally of different sizes. Element i holds
low[i mod |low|] and high[perm(i) mod |high|] (`datasets.UnpairedAB`, perm a permutation fixed by the
training seed), so one pass covers every image of the larger folder once.

Per element, each image is transformed on its OWN (GEFU `randomcrop_hflip`): Lanczos resize to
resize x resize, a random crop x crop window, a random flip, with independent draws for 'low' and
'high'. Captions, when given, are GEFU's tab-separated `enlight_low.csv` / `enlight_high.csv`
(`captions.read_captions_csv`: rows `filepath<TAB>title`, matched to the images by file name),
tokenized once on the host when the loader is built (ids cached per file name; the tokenizer itself
never reaches the grain workers), and travel with their image through shuffling and the
skip-on-decode-error fallback.

Fields read from the data section (`data_cfg.get(name, default)`; the default applies only when the
field is ABSENT: `pipeline.default_data_config()` itself sets low_dir='low', high_dir='high',
resize=0, so a config built on it sets these explicitly):

  root          (required) the training folder.
  low_dir       'trainA'  subfolder of low-light images.
  high_dir      'trainB'  subfolder of normal-light images.
  resize        384       if > 0, resize every image to resize x resize (Lanczos) first; 0 = none.
  crop          256       random crop size (reflect-pads smaller images); 0 = none, then resize must
                          be set so that images batch.
  hflip         True      random horizontal flip (p = 1/2), drawn per image.
  vflip         False     random vertical flip (p = 1/2), drawn per image.
  captions_low  None      caption CSV of the low images (GEFU `enlight_low.csv`).
  captions_high None      caption CSV of the normal images (GEFU `enlight_high.csv`).
  tokenizer     None      a CLIP tokenizer folder (vocab.json + merges.txt: an SD-Turbo folder's
                          `tokenizer/`; an SD-Turbo folder itself is accepted too), required with
                          the CSVs; read by `captions.ClipTokenizer` (the authors' AutoTokenizer
                          ids, without importing transformers or jax here).
  caption_image_column 'filepath', caption_text_column 'title'   the CSV header names.
  eval_root     None      evaluation images (directly in this folder, e.g. DICM); when unset, split
                          'test' reads root/'testA' (EnlightenGAN's test folder).
  max_pixels    imageio.DEFAULT_MAX_PIXELS   larger images are skipped.
  worker_count, worker_buffer_size, read_threads, read_buffer_size   as every source (required:
                          `loaders.make_loader` reads them; `default_data_config` has them).

Both CSVs or neither: with both, every image of each folder must have a caption row (else an
`errors.InputError` naming the image and the CSV); with neither, elements carry no caption keys (the
method then drops its caption term). One CSV alone, or CSVs without `tokenizer`, is an
`errors.ConfigError` naming the missing field.

Training elements (batched by `loaders.make_loader`):
  'low', 'high'                          float32 (crop, crop, 3) in [0, 1]
  'low_caption_ids', 'high_caption_ids'  int32 (L,), L = tokenizer.model_max_length (77); captions only
Evaluation (`make_eval_set`): [{'name', 'low': full-size HxWx3 float32, 'high': None}], split 'test'
from eval_root (or root/testA), split 'train' from root/low_dir.
"""

from __future__ import annotations

import logging
import os
import zlib
from typing import Any, Callable, Mapping

import grain
import ml_collections
import numpy as np

from data_pipelines import captions as captions_lib
from data_pipelines import datasets
from data_pipelines import image_sources
from data_pipelines import loaders
from data_pipelines import transforms
from lowlight_jax import errors
from lowlight_jax.io import imageio

log = logging.getLogger(__name__)

DEFAULTS: dict[str, Any] = dict(
    low_dir='trainA', high_dir='trainB', resize=384, crop=256, hflip=True, vflip=False,
    captions_low=None, captions_high=None, tokenizer=None, caption_image_column='filepath',
    caption_text_column='title', eval_root=None, max_pixels=imageio.DEFAULT_MAX_PIXELS)
#: The EnlightenGAN test folder read for split 'test' when data.eval_root is unset.
TEST_DIR = 'testA'
KEYS = ('low', 'high')


def _get(data_cfg: ml_collections.ConfigDict, name: str) -> Any:
  return data_cfg.get(name, DEFAULTS[name])


def caption_key(key: str) -> str:
  """The element key of `key`'s caption ids ('low' -> 'low_caption_ids')."""
  return f'{key}_caption_ids'


class CaptionedFolder(image_sources.UnpairedFolder):
  """An `UnpairedFolder` whose elements also hold their image's caption ids under `<key>_caption_ids`.

  The ids are added in `read`, i.e. for the record actually decoded, so they follow the image even
  when a bad file is replaced by the next readable one. `caption_ids` maps file names to int32
  ids; every usable image must have an entry (errors.InputError naming the image and `captions_path`).
  """

  def __init__(self, directory: str | os.PathLike, key: str,
               caption_ids: Mapping[str, np.ndarray] | None = None, *,
               captions_path: str | None = None, field: str = 'captions',
               max_pixels: int = imageio.DEFAULT_MAX_PIXELS, validate: bool = True):
    super().__init__(directory, key=key, max_pixels=max_pixels, validate=validate)
    self.captions_path = captions_path
    self._names = [record[0].name for record in self.paths]
    self._ids: dict[str, np.ndarray] | None = None
    if caption_ids is not None:
      missing = [n for n in self._names if n not in caption_ids]
      if missing:
        more = f' (and {len(missing) - 1} more images)' if len(missing) > 1 else ''
        raise errors.InputError(
            f'{os.path.join(self.directory, missing[0])} has no caption row in {captions_path} '
            f'(data.{field}; rows are matched by file name){more}')
      self._ids = {}
      for n in self._names:
        ids = np.array(caption_ids[n], dtype=np.int32)
        ids.setflags(write=False)
        self._ids[n] = ids
    digest = b''.join(self._ids[n].tobytes() for n in self._names) if self._ids else b''
    self._ids_crc = zlib.crc32(digest)

  def caption_ids(self, index: int) -> np.ndarray | None:
    """Record `index`'s caption ids (None without captions)."""
    return None if self._ids is None else self._ids[self._names[index]]

  def read(self, index: int) -> dict[str, np.ndarray]:
    element = super().read(index)
    if self._ids is not None:
      element[caption_key(self.key)] = self._ids[self._names[index]]
    return element

  def __repr__(self) -> str:
    # Stable across processes and runs with the same files and caption ids (grain compares it on
    # restore); the ids' checksum, not the CSV path, so a moved CSV still resumes.
    ids = 'None' if self._ids is None else f'{self._ids_crc:08x}'
    return (f'CaptionedFolder(directory={self.directory!r}, key={self.key!r}, '
            f'max_pixels={self.max_pixels}, num_records={len(self)}, caption_ids={ids})')


def _caption_config(data_cfg: ml_collections.ConfigDict) -> tuple[str, str, str] | None:
  """(captions_low, captions_high, tokenizer), or None without captions; ConfigError if incomplete."""
  low, high, tokenizer = (_get(data_cfg, f) for f in ('captions_low', 'captions_high', 'tokenizer'))
  if not low and not high:
    return None
  if not (low and high):
    given, absent = ('captions_low', 'captions_high') if low else ('captions_high', 'captions_low')
    raise errors.ConfigError(f'data.{given} is set but data.{absent} is not: give both caption CSVs '
                             '(or neither, to train without captions)')
  if not tokenizer:
    raise errors.ConfigError('data.captions_low/captions_high are set but data.tokenizer is not: '
                             "set it to the SD-Turbo folder's tokenizer/ folder")
  return os.fspath(low), os.fspath(high), os.fspath(tokenizer)


def _tokenized(captions: Mapping[str, str], tokenize: Callable[[list[str]], np.ndarray],
               cache: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """{file name: ids}, tokenizing each distinct caption once (`cache` is keyed by caption text)."""
  todo = sorted({c for c in captions.values() if c not in cache})
  for text, ids in zip(todo, tokenize(todo)):
    cache[text] = ids
  return {name: cache[text] for name, text in captions.items()}


def make_source(data_cfg: ml_collections.ConfigDict, seed: int = 0) -> datasets.UnpairedAB:
  """The (untransformed) training source: {'low', 'high'} (+ caption ids) at full size."""
  root = data_cfg.get('root')
  low_dir = loaders.folder(root, _get(data_cfg, 'low_dir'), 'root')
  high_dir = loaders.folder(root, _get(data_cfg, 'high_dir'), 'root')
  max_pixels = _get(data_cfg, 'max_pixels')
  config = _caption_config(data_cfg)
  if config is None:
    low = CaptionedFolder(low_dir, 'low', max_pixels=max_pixels)
    high = CaptionedFolder(high_dir, 'high', max_pixels=max_pixels)
    return datasets.UnpairedAB(low, high, seed)
  low_csv, high_csv, tokenizer_path = config
  columns = dict(image_key=_get(data_cfg, 'caption_image_column'),
                 caption_key=_get(data_cfg, 'caption_text_column'))
  # Parse both CSVs before loading the tokenizer, so a bad file fails fast.
  low_captions = captions_lib.read_captions_csv(low_csv, **columns)
  high_captions = captions_lib.read_captions_csv(high_csv, **columns)
  tokenize = captions_lib.load_clip_tokenizer(tokenizer_path)
  folders = []
  cache: dict[str, np.ndarray] = {}
  for key, directory, csv_path, table in (('low', low_dir, low_csv, low_captions),
                                          ('high', high_dir, high_csv, high_captions)):
    # Only the captions of images that are present are tokenized.
    present = {p.name for p in imageio.list_images(directory)}
    needed = {name: text for name, text in table.items() if name in present}
    unused = len(table) - len(needed)
    if unused:
      log.info('unpaired_captions: %d rows of %s name no image in %s', unused, csv_path, directory)
    folders.append(CaptionedFolder(directory, key, _tokenized(needed, tokenize, cache),
                                   captions_path=csv_path, field=f'captions_{key}',
                                   max_pixels=max_pixels))
  return datasets.UnpairedAB(folders[0], folders[1], seed)


def image_transforms(data_cfg: ml_collections.ConfigDict,
                     keys: tuple[str, ...] = KEYS) -> list[Any]:
  """resize -> random crop -> random flip, with independent draws per key (GEFU `randomcrop_hflip`).

  Composed from the shared one-key transforms; each random op draws from the element's generator in
  turn, so 'low' and 'high' get different windows and flips (and may differ in size).
  """
  resize, crop = _get(data_cfg, 'resize'), _get(data_cfg, 'crop')
  hflip, vflip = bool(_get(data_cfg, 'hflip')), bool(_get(data_cfg, 'vflip'))
  if not crop and not resize:
    raise errors.ConfigError('data.crop or data.resize must be > 0: low and normal images differ in '
                             'size and batching needs one')
  ops: list[Any] = []
  for key in keys:
    if resize:
      ops.append(transforms.Resize(size=resize, keys=(key,), method='lanczos'))
  for key in keys:
    if crop:
      ops.append(transforms.RandomCrop(size=crop, keys=(key,)))
  for key in keys:
    if hflip or vflip:
      ops.append(transforms.RandomFlip(keys=(key,), horizontal=hflip, vertical=vflip))
  return ops


def make_train_loader(data_cfg: ml_collections.ConfigDict, *, batch_size: int, seed: int,
                      shard_index: int | None = None,
                      shard_count: int | None = None) -> grain.DataLoader:
  loaders.check_batch_and_shards(batch_size, shard_index, shard_count)
  ops = image_transforms(data_cfg)  # Config errors before any file is read.
  source = make_source(data_cfg, seed)
  return loaders.make_loader(data_cfg, source, ops, batch_size=batch_size, seed=seed,
                             shard_index=shard_index, shard_count=shard_count)


def make_eval_set(data_cfg: ml_collections.ConfigDict, split: str = 'test') -> list[dict[str, Any]]:
  """Full-size low images: split 'test' from eval_root (or root/testA), 'train' from root/low_dir."""
  loaders.check_split(split)
  eval_root, root = _get(data_cfg, 'eval_root'), data_cfg.get('root')
  if split == 'test' and eval_root:
    folder_cfg = dict(eval_root=eval_root, low_dir='')
  elif split == 'test':
    if not root:
      raise ValueError('data.eval_root (or data.root, for root/testA) must be set for a folder '
                       'source')
    folder_cfg = dict(eval_root=root, low_dir=TEST_DIR)
  else:
    folder_cfg = dict(root=root, low_dir=_get(data_cfg, 'low_dir'))
  cfg = ml_collections.ConfigDict({'root': None, 'eval_root': None,
                                   'max_pixels': _get(data_cfg, 'max_pixels'), **folder_cfg})
  return loaders.folder_eval_set(cfg, split, paired=False)
