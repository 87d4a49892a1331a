"""grain random-access image sources: embedded photos, paired folders (LOL-style), unpaired folders.

Every source returns dict elements of RGB float32 HxWx3 images in [0, 1] and has a `__repr__` that
depends only on its construction arguments and file list: grain compares `repr(source)` when
restoring a checkpointed iterator (`DataLoader.set_state`), so it must not change while a run is
going.

Bad files never crash a run. Folder sources check every file cheaply when constructed (header, size
limit and Pillow's `verify()`, no pixel decoding) and drop failures; files that pass but fail to
decode later (typically a truncated JPEG, whose header is intact) are skipped at read time by
returning the next readable record instead. Each bad file is logged ONCE as a warning naming the
file and the reason, and listed in `source.skipped` as (path, reason) (per process: grain workers
keep their own lists).
"""

from __future__ import annotations

import logging
import os
import pathlib
import threading
from typing import Any, Sequence

import grain
import numpy as np

from data_pipelines import degrade as degrade_lib
from data_pipelines import embedded
from lowlight_jax.io import imageio

log = logging.getLogger(__name__)


class EmbeddedPairs(grain.sources.RandomAccessDataSource):
  """The photos of `embedded.EMBEDDED_TRAIN` / `EMBEDDED_TEST` as {'low', 'high'} elements.

  `low` is degraded with a generator fixed by (seed, photo name) (`embedded.degraded_photo`), so
  element i is the same forever; seed 0 is the canonical test set. With `degradation=None` elements
  hold only 'high': the training pipeline then crops first and synthesises 'low' per epoch with
  `transforms.Degrade` (fresh noise every epoch, generated at crop resolution).
  """

  def __init__(self, split: str = 'train',
               degradation: degrade_lib.DegradationConfig | None = degrade_lib.DegradationConfig(),
               seed: int = 0):
    self.split = split
    self.names = embedded.split_names(split)
    self.degradation = degradation
    self.seed = seed

  def __len__(self) -> int:
    return len(self.names)

  def __getitem__(self, index: int) -> dict[str, np.ndarray]:
    name = self.names[index]
    # A read-only view of the per-process cache: transforms always produce new arrays.
    element = {'high': embedded.load_photo(name, copy=False)}
    if self.degradation is not None:
      element['low'] = embedded.degraded_photo(name, self.degradation, self.seed)
    return element

  def __repr__(self) -> str:
    return (f'EmbeddedPairs(split={self.split!r}, names={self.names!r}, '
            f'degradation={self.degradation!r}, seed={self.seed})')


class _FolderSource(grain.sources.RandomAccessDataSource):
  """Shared machinery: records are tuples of paths, one per key, validated up front."""

  _keys: tuple[str, ...]

  def __init__(self, records: Sequence[tuple[pathlib.Path, ...]], *, max_pixels: int,
               validate: bool, where: str, skipped: Sequence[tuple[str, str]] = ()):
    self.max_pixels = max_pixels
    self.skipped: list[tuple[str, str]] = list(skipped)
    self._failed: set[int] = set()
    self._lock = threading.Lock()
    self._records = [r for r in records if not validate or self._validate(r)]
    if not self._records:
      detail = f' ({len(self.skipped)} unreadable files skipped)' if self.skipped else ''
      raise ValueError(f'{type(self).__name__}: no usable images in {where}{detail}')

  def _skip(self, path: os.PathLike | str, reason: str) -> None:
    log.warning('%s: skipping %r: %s', type(self).__name__, os.fspath(path), reason)
    self.skipped.append((os.fspath(path), reason))

  def _validate(self, record: tuple[pathlib.Path, ...]) -> bool:
    sizes = []
    for path in record:
      try:
        sizes.append(imageio.verify_image(path, max_pixels=self.max_pixels))
      except imageio.ImageDecodeError as e:
        self._skip(path, e.reason)
        return False
    if len(set(sizes)) > 1:
      self._skip(record[0], f'size mismatch with its pair: {dict(zip(map(str, record), sizes))}')
      return False
    return True

  def __len__(self) -> int:
    return len(self._records)

  @property
  def paths(self) -> list[tuple[pathlib.Path, ...]]:
    """The usable records (path per key), in index order."""
    return list(self._records)

  def name(self, index: int) -> str:
    """The record's file stem (the name shared by a low/high pair)."""
    return self._records[index][0].stem

  def read(self, index: int) -> dict[str, np.ndarray]:
    """Decodes record `index` without fallback; raises imageio.ImageDecodeError on a bad file."""
    record = self._records[index]
    images = [imageio.read_image(p, max_pixels=self.max_pixels) for p in record]
    if len({im.shape for im in images}) > 1:
      raise imageio.ImageDecodeError(
          record[0], f'decoded size differs from its pair: {[im.shape for im in images]}')
    return dict(zip(self._keys, images))

  def __getitem__(self, index: int) -> dict[str, np.ndarray]:
    n = len(self._records)
    index = int(index)
    # Deterministic fallback: the next readable record, so a checkpointed iterator replays
    # identically.
    for offset in range(n):
      i = (index + offset) % n
      if i in self._failed:
        continue
      try:
        return self.read(i)
      except imageio.ImageDecodeError as e:
        with self._lock:
          if i not in self._failed:
            self._failed.add(i)
            self._skip(e.path, e.reason + ' (at read time)')
    raise RuntimeError(f'{self!r}: no record could be decoded; see skipped={self.skipped}')

  # A threading.Lock cannot be pickled into grain worker processes: recreate it there.
  def __getstate__(self) -> dict[str, Any]:
    state = self.__dict__.copy()
    del state['_lock']
    return state

  def __setstate__(self, state: dict[str, Any]) -> None:
    self.__dict__.update(state)
    self._lock = threading.Lock()


class PairedFolder(_FolderSource):
  """{'low', 'high'} pairs from `root/low_dir` and `root/high_dir`, matched by file stem.

  `low/0001.png` pairs with `high/0001.jpg` (LOL layout: `our485/{low,high}`, `eval15/{low,high}`).
  Files without a partner are left out with one summary warning and listed in `unmatched`; a stem
  that occurs twice in one folder (a.png and a.jpg) is ambiguous: skipped, with a warning.
  """

  _keys = ('low', 'high')

  def __init__(self, root: str | os.PathLike, low_dir: str = 'low', high_dir: str = 'high', *,
               max_pixels: int = imageio.DEFAULT_MAX_PIXELS, validate: bool = True):
    self.root = os.fspath(root)
    self.low_dir, self.high_dir = low_dir, high_dir
    ambiguous = []
    low = _by_stem(pathlib.Path(root) / low_dir, ambiguous)
    high = _by_stem(pathlib.Path(root) / high_dir, ambiguous)
    self.unmatched = sorted([p for s, p in low.items() if s not in high]
                            + [p for s, p in high.items() if s not in low])
    if self.unmatched:
      shown = ', '.join(os.fspath(p) for p in self.unmatched[:5])
      more = f' and {len(self.unmatched) - 5} more' if len(self.unmatched) > 5 else ''
      log.warning('PairedFolder: %d files in %r have no partner: %s%s', len(self.unmatched),
                  self.root, shown, more)
    records = [(low[s], high[s]) for s in sorted(low.keys() & high.keys())]
    super().__init__(records, max_pixels=max_pixels, validate=validate, skipped=ambiguous,
                     where=f'{os.fspath(pathlib.Path(root) / low_dir)!r} + {high_dir!r}')

  def __repr__(self) -> str:
    return (f'PairedFolder(root={self.root!r}, low_dir={self.low_dir!r}, '
            f'high_dir={self.high_dir!r}, max_pixels={self.max_pixels}, num_records={len(self)})')


def _by_stem(directory: pathlib.Path,
             ambiguous: list[tuple[str, str]]) -> dict[str, pathlib.Path]:
  """Images of `directory` by stem; files sharing a stem are logged and appended to `ambiguous`."""
  by_stem: dict[str, list[pathlib.Path]] = {}
  for p in imageio.list_images(directory):
    by_stem.setdefault(p.stem, []).append(p)
  for stem, paths in by_stem.items():
    if len(paths) > 1:
      for p in paths:
        log.warning('PairedFolder: skipping %r: ambiguous stem %r', os.fspath(p), stem)
        ambiguous.append((os.fspath(p), f'ambiguous stem {stem!r}'))
  return {stem: paths[0] for stem, paths in by_stem.items() if len(paths) == 1}


class UnpairedFolder(_FolderSource):
  """Single images from one folder as {key: image} (zero-reference training, inference)."""

  def __init__(self, directory: str | os.PathLike, key: str = 'low', *,
               max_pixels: int = imageio.DEFAULT_MAX_PIXELS, validate: bool = True):
    self.directory = os.fspath(directory)
    self.key = key
    self._keys = (key,)
    records = [(p,) for p in imageio.list_images(directory)]
    super().__init__(records, max_pixels=max_pixels, validate=validate,
                     where=repr(self.directory))

  def __repr__(self) -> str:
    return (f'UnpairedFolder(directory={self.directory!r}, key={self.key!r}, '
            f'max_pixels={self.max_pixels}, num_records={len(self)})')
