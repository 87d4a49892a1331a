"""Folder sources for the standard low-light datasets, by their published folder layouts.

Nothing is downloaded: point `make_source(name, root, split)` at the folder a user already has. Each
source is a grain `RandomAccessDataSource` of dict elements of RGB float32 HxWx3 images in [0, 1]
(labels: int32 HxW) built on `sources.py`: files are checked when the source is constructed and bad
ones are skipped with one warning and listed in `source.skipped` as (path, reason).

  name              layout under `root` (split: folders)                                keys
  lol               train: our485/{low,high}; test: eval15/{low,high}                   low, high
                    (Wei et al., BMVC 2018)
  lol_v2_real       Real_captured/{Train,Test}/{Low,Normal}; low00001.png pairs         low, high
                    normal00001.png (Yang et al., TIP 2021)
  lol_v2_synthetic  Synthetic/{Train,Test}/{Low,Normal}                                 low, high
  lsrw              [Training data/ | Eval/]{Huawei,Nikon}/{low,high} (Hai et al.)      low, high
  sice              [Dataset_Part1/ | Dataset_Part2/]<scene>/<k>.JPG + Label/<scene>.JPG  see below
                    (Cai et al., TIP 2018)
  enlightengan      trainA (low) + trainB (normal), unpaired (Jiang et al., TIP 2021)   low, high
  cityscapes        leftImg8bit/{split}/{city}/*_leftImg8bit.png +                      high, label
                    gtFine/{split}/{city}/*_gtFine_labelTrainIds.png
  dicm, lime, mef,  the images (test only; no ground truth) in root or root/<NAME>      low
  npe, vv

SICE: each scene folder holds an exposure sequence numbered from darkest to brightest.
`pool='under'` (default) pairs every image of the darker half with the scene's label, `pool='over'`
the brighter half (an odd sequence's middle image belongs to neither), `pool='normal'` yields the
labels alone as 'high'. SCL-LLE (Liang et al., AAAI 2022) takes its positives from the labels and
its negatives from the under/over pools of Part1. Split 'train' reads `Dataset_Part1`, 'test'
`Dataset_Part2`, when present.

Cityscapes: the image is the normal-light 'high' (low-light methods darken it on the fly); 'label'
holds train ids (0-18, 255 = ignore). Without `*_labelTrainIds.png` (made by cityscapesScripts), the
raw `*_labelIds.png` are mapped with the official table (`CITYSCAPES_ID_TO_TRAIN_ID`).

EnlightenGAN is unpaired: element i holds trainA[i mod |A|] as 'low' and trainB[perm(i) mod |B|] as
'high' (a fixed, seeded permutation); the two images generally differ in size, so transforms must
crop the keys independently.
"""

from __future__ import annotations

import os
import pathlib
import re
import zlib
from typing import Any, Callable, Sequence

import grain
import numpy as np
from PIL import Image

from lowlight_jax.io import imageio
from data_pipelines import image_sources

PathLike = str | os.PathLike

# cityscapesScripts `labels.py`: id -> trainId (255 = ignore in evaluation). Ids 0..33, plus -1.
CITYSCAPES_ID_TO_TRAIN_ID = {
    7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11, 25: 12,
    26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18}
# The same table as a lookup array over uint8 ids (unknown ids -> 255).
CITYSCAPES_TRAIN_ID_LUT = np.full(256, 255, np.uint8)
for _id, _train in CITYSCAPES_ID_TO_TRAIN_ID.items():
  CITYSCAPES_TRAIN_ID_LUT[_id] = _train


class FileRecords(image_sources._FolderSource):  # pylint: disable=protected-access
  """Records given as explicit tuples of paths, one per key (all images of a record equal in size).

  Port note: `image_sources._FolderSource` holds the validation/skip machinery; its public subclasses
  (`PairedFolder`, `UnpairedFolder`) only build records from ONE folder pair with identical stems,
  which LOL-v2 (low00001/normal00001), LSRW (two cameras) and SICE (scene folders) do not have.
  """

  def __init__(self, records: Sequence[tuple[pathlib.Path, ...]], keys: tuple[str, ...], *,
               name: str, max_pixels: int = imageio.DEFAULT_MAX_PIXELS, validate: bool = True,
               skipped: Sequence[tuple[str, str]] = ()):
    self._keys = tuple(keys)
    self.dataset_name = name
    super().__init__(records, max_pixels=max_pixels, validate=validate, where=name,
                     skipped=skipped)

  def __repr__(self) -> str:
    files = '\n'.join(os.fspath(p) for r in self._records for p in r)
    return (f'FileRecords(name={self.dataset_name!r}, keys={self._keys}, '
            f'max_pixels={self.max_pixels}, num_records={len(self)}, '
            f'files={zlib.crc32(files.encode()):08x})')


def read_label(path: PathLike, *, max_pixels: int = imageio.DEFAULT_MAX_PIXELS) -> np.ndarray:
  """A single-channel label map (PNG 'L', 'P', 'I', 'I;16') as its raw integer values, int32 HxW.

  Never converted to RGB (a palette index is the class). Raises imageio.ImageDecodeError.
  """
  if os.path.getsize(path) == 0:
    raise imageio.ImageDecodeError(path, 'empty file (0 bytes)')
  try:
    with Image.open(path) as im:
      if im.width * im.height > max_pixels:
        raise imageio.ImageDecodeError(
            path, f'{im.width}x{im.height} exceeds max_pixels={max_pixels}')
      if im.mode not in ('L', 'P', 'I', 'I;16', 'I;16B', 'I;16L'):
        raise imageio.ImageDecodeError(
            path, f'label map must be single-channel, got mode {im.mode}')
      im.load()
      return np.asarray(im).astype(np.int32)
  except imageio.ImageDecodeError:
    raise
  except (OSError, ValueError, SyntaxError, EOFError) as e:
    raise imageio.ImageDecodeError(path, f'{type(e).__name__}: {e}') from e


class SegmentationRecords(FileRecords):
  """(image, label map) records: {'high': RGB float32, 'label': int32 HxW}; `id_lut` remaps ids."""

  def __init__(self, records, *, name: str, id_lut: np.ndarray | None = None, **kwargs):
    self.id_lut = id_lut
    super().__init__(records, ('high', 'label'), name=name, **kwargs)

  def read(self, index: int) -> dict[str, np.ndarray]:
    image_path, label_path = self._records[index]
    image = imageio.read_image(image_path, max_pixels=self.max_pixels)
    label = read_label(label_path, max_pixels=self.max_pixels)
    if self.id_lut is not None:
      label = self.id_lut[np.clip(label, 0, 255)].astype(np.int32)
    if image.shape[:2] != label.shape:
      raise imageio.ImageDecodeError(label_path,
                                     f'label {label.shape} does not match image {image.shape[:2]}')
    return {'high': image, 'label': label}


class UnpairedAB(grain.sources.RandomAccessDataSource):
  """Two unrelated image folders as one source: {'low': A[i mod |A|], 'high': B[perm(i) mod |B|]}.

  `perm` is a permutation of B fixed by `seed`, so record i is the same in every process and epoch.
  """

  def __init__(self, a: image_sources.UnpairedFolder, b: image_sources.UnpairedFolder, seed: int = 0):
    self.a, self.b, self.seed = a, b, seed
    self._perm = np.random.Generator(np.random.Philox(seed)).permutation(len(b))

  @property
  def skipped(self) -> list[tuple[str, str]]:
    return self.a.skipped + self.b.skipped

  def __len__(self) -> int:
    return max(len(self.a), len(self.b))

  def __getitem__(self, i: int) -> dict[str, np.ndarray]:
    i = int(i)
    return {**self.a[i % len(self.a)], **self.b[int(self._perm[i % len(self.b)])]}

  def __repr__(self) -> str:
    return f'UnpairedAB(a={self.a!r}, b={self.b!r}, seed={self.seed})'


# ---------------------------------------------------------------------------------------------
# Layouts.
# ---------------------------------------------------------------------------------------------


def _subdir(root: pathlib.Path, *names: str) -> pathlib.Path:
  """root/names..., matching each component case-insensitively (dataset zips vary in case)."""
  path = root
  for name in names:
    exact = path / name
    if exact.is_dir():
      path = exact
      continue
    matches = [p for p in path.iterdir() if p.is_dir() and p.name.lower() == name.lower()] \
        if path.is_dir() else []
    if not matches:
      raise FileNotFoundError(f'expected folder {os.fspath(exact)!r} (dataset layout); not found')
    path = matches[0]
  return path


def _split_dir(split: str, mapping: dict[str, str]) -> str:
  if split not in mapping:
    raise ValueError(f'split must be one of {sorted(mapping)}, got {split!r}')
  return mapping[split]


_PREFIX_RE = re.compile(r'^(low|normal|high)[_-]?', re.IGNORECASE)


def _pairs_by_normalised_stem(low_dir: pathlib.Path, high_dir: pathlib.Path,
                              skipped: list[tuple[str, str]]) -> list[tuple[pathlib.Path, ...]]:
  """Pairs files whose stems agree once a leading low/normal/high tag is removed."""
  def by_stem(d):
    out: dict[str, list[pathlib.Path]] = {}
    for p in imageio.list_images(d):
      out.setdefault(_PREFIX_RE.sub('', p.stem), []).append(p)
    for stem, ps in out.items():
      if len(ps) > 1:
        skipped.extend((os.fspath(p), f'ambiguous stem {stem!r}') for p in ps)
    return {s: ps[0] for s, ps in out.items() if len(ps) == 1}
  low, high = by_stem(low_dir), by_stem(high_dir)
  for s in sorted(low.keys() ^ high.keys()):
    p = low.get(s) or high.get(s)
    skipped.append((os.fspath(p), 'no partner image'))
  return [(low[s], high[s]) for s in sorted(low.keys() & high.keys())]


def lol(root: PathLike, split: str = 'train', **kwargs) -> image_sources.PairedFolder:
  sub = _split_dir(split, {'train': 'our485', 'test': 'eval15'})
  return image_sources.PairedFolder(_subdir(pathlib.Path(root), sub), 'low', 'high', **kwargs)


def _lol_v2(kind: str) -> Callable[..., FileRecords]:
  def build(root: PathLike, split: str = 'train', **kwargs) -> FileRecords:
    sub = _split_dir(split, {'train': 'Train', 'test': 'Test'})
    base = _subdir(pathlib.Path(root), kind, sub)
    skipped: list[tuple[str, str]] = []
    records = _pairs_by_normalised_stem(_subdir(base, 'Low'), _subdir(base, 'Normal'), skipped)
    return FileRecords(records, ('low', 'high'), name=f'lol_v2_{kind.lower()}/{split}',
                       skipped=skipped, **kwargs)
  return build


def lsrw(root: PathLike, split: str = 'train', camera: str | None = None, **kwargs) -> FileRecords:
  """Both cameras (or one: camera='Huawei'/'Nikon'); stems are unique within a camera only."""
  root = pathlib.Path(root)
  sub = _split_dir(split, {'train': 'Training data', 'test': 'Eval'})
  try:
    base = _subdir(root, sub)
  except FileNotFoundError:
    base = root  # A root that already is the split folder.
  skipped: list[tuple[str, str]] = []
  records = []
  for cam in ([camera] if camera else ['Huawei', 'Nikon']):
    records += _pairs_by_normalised_stem(_subdir(base, cam, 'low'), _subdir(base, cam, 'high'),
                                         skipped)
  return FileRecords(records, ('low', 'high'), name=f'lsrw/{split}', skipped=skipped, **kwargs)


def _natural_key(p: pathlib.Path) -> list[Any]:
  return [int(t) if t.isdigit() else t.lower() for t in re.split(r'(\d+)', p.stem)]


def sice(root: PathLike, split: str = 'train', pool: str = 'under', **kwargs) -> FileRecords:
  """SICE pools (module docstring): 'under'/'over' -> {'low', 'high'}; 'normal' -> {'high'}."""
  if pool not in ('under', 'over', 'normal'):
    raise ValueError(f"pool must be 'under', 'over' or 'normal', got {pool!r}")
  root = pathlib.Path(root)
  part = _split_dir(split, {'train': 'Dataset_Part1', 'test': 'Dataset_Part2'})
  try:
    base = _subdir(root, part)
  except FileNotFoundError:
    base = root
  label_dir = _subdir(base, 'Label')
  labels = {p.stem: p for p in imageio.list_images(label_dir)}
  skipped: list[tuple[str, str]] = []
  records = []
  scenes = sorted((d for d in base.iterdir() if d.is_dir() and d != label_dir
                   and not d.name.startswith('.')), key=_natural_key)
  for scene in scenes:
    label = labels.get(scene.name)
    if label is None:
      skipped.append((os.fspath(scene), 'scene has no label image'))
      continue
    if pool == 'normal':
      records.append((label,))
      continue
    seq = sorted(imageio.list_images(scene), key=_natural_key)
    half = len(seq) // 2
    chosen = seq[:half] if pool == 'under' else seq[len(seq) - half:]
    records += [(p, label) for p in chosen]
  keys = ('high',) if pool == 'normal' else ('low', 'high')
  return FileRecords(records, keys, name=f'sice/{split}/{pool}', skipped=skipped, **kwargs)


def enlightengan(root: PathLike, split: str = 'train', seed: int = 0, **kwargs) -> UnpairedAB:
  root = pathlib.Path(root)
  prefix = _split_dir(split, {'train': 'train', 'test': 'test'})
  a = image_sources.UnpairedFolder(_subdir(root, prefix + 'A'), key='low', **kwargs)
  b = image_sources.UnpairedFolder(_subdir(root, prefix + 'B'), key='high', **kwargs)
  return UnpairedAB(a, b, seed)


def cityscapes(root: PathLike, split: str = 'train', **kwargs) -> SegmentationRecords:
  """Fine annotations; `split` is Cityscapes' own: train, val or test (test labels: all ignore)."""
  if split not in ('train', 'val', 'test'):
    raise ValueError(f"split must be 'train', 'val' or 'test', got {split!r}")
  root = pathlib.Path(root)
  images = _subdir(root, 'leftImg8bit', split)
  labels = _subdir(root, 'gtFine', split)
  skipped: list[tuple[str, str]] = []
  records = []
  lut = None
  for city in sorted(d for d in images.iterdir() if d.is_dir()):
    for img in sorted(city.glob('*_leftImg8bit.png')):
      stem = img.name[:-len('_leftImg8bit.png')]
      train_ids = labels / city.name / f'{stem}_gtFine_labelTrainIds.png'
      ids = labels / city.name / f'{stem}_gtFine_labelIds.png'
      if train_ids.is_file():
        records.append((img, train_ids))
      elif ids.is_file():
        records.append((img, ids))
      else:
        skipped.append((os.fspath(img), 'no gtFine label file'))
  kinds = {r[1].name.endswith('_labelIds.png') for r in records}
  if kinds == {True}:
    lut = CITYSCAPES_TRAIN_ID_LUT  # Raw ids only: map them to train ids.
  elif len(kinds) > 1:
    raise ValueError(f'{os.fspath(labels)!r} mixes labelIds and labelTrainIds files; '
                     'generate trainIds for all (cityscapesScripts createTrainIdLabelImgs)')
  return SegmentationRecords(records, name=f'cityscapes/{split}', id_lut=lut, skipped=skipped,
                             **kwargs)


def _test_folder(name: str) -> Callable[..., image_sources.UnpairedFolder]:
  def build(root: PathLike, split: str = 'test', **kwargs) -> image_sources.UnpairedFolder:
    _split_dir(split, {'test': 'test'})
    root = pathlib.Path(root)
    folder = root if imageio.list_images(root) else _subdir(root, name.upper())
    return image_sources.UnpairedFolder(folder, key='low', **kwargs)
  return build


DATASETS: dict[str, Callable[..., grain.sources.RandomAccessDataSource]] = {
    'lol': lol,
    'lol_v2_real': _lol_v2('Real_captured'),
    'lol_v2_synthetic': _lol_v2('Synthetic'),
    'lsrw': lsrw,
    'sice': sice,
    'enlightengan': enlightengan,
    'cityscapes': cityscapes,
    **{n: _test_folder(n) for n in ('dicm', 'lime', 'mef', 'npe', 'vv')},
}


def make_source(name: str, root: PathLike, split: str = 'train',
                **kwargs) -> grain.sources.RandomAccessDataSource:
  """The source of dataset `name` (see the module table) under `root` for `split`.

  kwargs go to the layout function (e.g. `pool` for SICE, `camera` for LSRW, `max_pixels`,
  `validate`). Raises KeyError for an unknown name, FileNotFoundError naming a missing folder.
  """
  if name not in DATASETS:
    raise KeyError(f'unknown dataset {name!r}; known: {sorted(DATASETS)}')
  return DATASETS[name](root, split, **kwargs)


# ---------------------------------------------------------------------------------------------
# Tiny fake copies of the layouts (tests, docs, smoke runs).
# ---------------------------------------------------------------------------------------------


def write_fake_layout(name: str, root: PathLike, *, size: int = 16, count: int = 3,
                      seed: int = 0) -> pathlib.Path:
  """Writes `count` random size x size images per folder in dataset `name`'s layout under `root`.

  Paired datasets get low = round(0.25 * high) so tests can check pairing; SICE sequences have 5
  exposures brightening with their number; Cityscapes labels are train ids 0..18 plus 255.
  """
  rng = np.random.default_rng(seed)
  root = pathlib.Path(root)

  def save(path: pathlib.Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, quality=95) if path.suffix.lower() in ('.jpg', '.jpeg') \
        else Image.fromarray(array).save(path)

  def rand(h: int = size, w: int = size) -> np.ndarray:
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)

  def pairs(low_dir, high_dir, low_name, high_name, ext='.png'):
    for k in range(count):
      high = rand()
      save(low_dir / f'{low_name(k)}{ext}', np.round(high * 0.25).astype(np.uint8))
      save(high_dir / f'{high_name(k)}{ext}', high)

  same = lambda k: f'{k + 1}'
  if name == 'lol':
    for sub in ('our485', 'eval15'):
      pairs(root / sub / 'low', root / sub / 'high', same, same)
  elif name in ('lol_v2_real', 'lol_v2_synthetic'):
    kind = 'Real_captured' if name == 'lol_v2_real' else 'Synthetic'
    for sub in ('Train', 'Test'):
      base = root / kind / sub
      if kind == 'Real_captured':
        pairs(base / 'Low', base / 'Normal', lambda k: f'low{k + 1:05d}',
              lambda k: f'normal{k + 1:05d}')
      else:
        pairs(base / 'Low', base / 'Normal', lambda k: f'r{k:04d}', lambda k: f'r{k:04d}')
  elif name == 'lsrw':
    for sub in ('Training data', 'Eval'):
      for cam in ('Huawei', 'Nikon'):
        # PNG: the pairing check needs exact values (JPEG would blur the 0.25 relation).
        pairs(root / sub / cam / 'low', root / sub / cam / 'high', same, same)
  elif name == 'sice':
    for part in ('Dataset_Part1', 'Dataset_Part2'):
      for scene in range(1, count + 1):
        base = rand().astype(np.float32)
        for k in range(1, 6):
          exposure = np.clip(base * k / 3, 0, 255).astype(np.uint8)
          save(root / part / str(scene) / f'{k}.png', exposure)
        save(root / part / 'Label' / f'{scene}.png', base.astype(np.uint8))
  elif name == 'enlightengan':
    for k in range(count):
      save(root / 'trainA' / f'a{k}.png', rand())
    for k in range(count + 1):
      save(root / 'trainB' / f'b{k}.png', rand(size + 4, size + 2))
  elif name == 'cityscapes':
    for split in ('train', 'val'):
      for k in range(count):
        stem = f'aachen_{k:06d}_000019'
        save(root / 'leftImg8bit' / split / 'aachen' / f'{stem}_leftImg8bit.png', rand())
        label = rng.integers(0, 19, (size, size)).astype(np.uint8)
        label[0, :] = 255
        path = root / 'gtFine' / split / 'aachen' / f'{stem}_gtFine_labelTrainIds.png'
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(label, mode='L').save(path)
  elif name in ('dicm', 'lime', 'mef', 'npe', 'vv'):
    for k in range(count):
      save(root / name.upper() / f'{k + 1:02d}.png', rand())
  else:
    raise KeyError(f'unknown dataset {name!r}; known: {sorted(DATASETS)}')
  return root
