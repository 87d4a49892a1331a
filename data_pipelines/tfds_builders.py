"""TFDS builders for the folder datasets of `datasets.py`: ArrayRecord files readable by grain.

Each builder reads a folder the user already has (`manual_dir`; nothing is downloaded), decodes
every image with the robust reader of `imageio` (EXIF rotation, 16-bit, grey, alpha, palette, CMYK
handled; bad files skipped and logged by the sources) and stores it as an 8-bit RGB PNG, so
TensorFlow is never needed: tfds without TF cannot encode numpy arrays, but it stores encoded bytes
and decodes them with Pillow. The output is ArrayRecord (`file_format='array_record'`), read back by
`tfds.data_source(name, data_dir=..., split=...)`, which is a grain random-access source.

  builder = tfds_builders.prepare('lol', manual_dir='/data/LOLdataset', data_dir='/data/tfds')
  source = tfds.data_source('lowlight_lol', data_dir='/data/tfds', split='train')
  ds = grain.MapDataset.source(source).map(tfds_builders.ToFloat())  # uint8 -> float32 [0, 1]

Registered names (prefixed: tfds already has a `cityscapes` of its own):
  lowlight_lol, lowlight_lol_v2_real, lowlight_lol_v2_synthetic, lowlight_lsrw,
  lowlight_sice (configs under, over, normal), lowlight_enlightengan (splits train_low, train_high,
  unpaired), lowlight_cityscapes (image + label train ids), lowlight_test_sets (configs dicm, lime,
  mef, npe, vv; split test).
Every example also has 'name' (the source file stem, for tracing results back to files).
Splits whose folders are missing are left out (a LOL copy without eval15 builds 'train' only).
"""

from __future__ import annotations

import dataclasses
import io
import logging
import os
import pathlib
from typing import Any, Iterator

from etils import epath
import grain
import numpy as np
from PIL import Image
import tensorflow_datasets as tfds

from data_pipelines import datasets
from lowlight_jax.io import imageio

log = logging.getLogger(__name__)

_INSTRUCTIONS = """Nothing is downloaded. Pass the folder of the dataset as you obtained it, with
its published layout (see data_pipelines/datasets.py), as `manual_dir`:
  tfds_builders.prepare(NAME, manual_dir=FOLDER, data_dir=OUT)"""


def _png(image: np.ndarray) -> bytes:
  """uint8 HxW or HxWx3 -> PNG bytes."""
  buf = io.BytesIO()
  Image.fromarray(image).save(buf, format='PNG')
  return buf.getvalue()


def _rgb_png(image: np.ndarray) -> bytes:
  """Float [0, 1] RGB (what the sources return) -> 8-bit PNG; exact for 8-bit originals."""
  return _png(np.round(np.clip(image, 0.0, 1.0) * 255.0).astype(np.uint8))


def _relative(path: pathlib.Path, root: pathlib.Path | None) -> pathlib.Path:
  try:
    return path.resolve().relative_to(root.resolve()) if root is not None else path
  except ValueError:
    return path


def _image_feature() -> tfds.features.Image:
  return tfds.features.Image(shape=(None, None, 3), encoding_format='png')


class _FolderBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Shared builder: `_DATASET` names a `datasets.DATASETS` layout; `_SPLITS` maps each tfds split
  to (source split, layout kwargs)."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Initial release.'}
  # Port note: tfds derives `code_path` through `importlib_resources`, a backport that is not
  # installed (and not needed on Python >= 3.9); it only locates an optional checksums file.
  code_path = epath.Path(__file__)
  MANUAL_DOWNLOAD_INSTRUCTIONS = _INSTRUCTIONS
  _DATASET = ''
  _SPLITS: dict[str, tuple[str, dict[str, Any]]] = {'train': ('train', {}), 'test': ('test', {})}
  _KEYS: tuple[str, ...] = ('low', 'high')

  def _features(self) -> dict[str, Any]:
    feats: dict[str, Any] = {k: _image_feature() for k in self._keys()}
    feats['name'] = tfds.features.Text()
    return feats

  def _keys(self) -> tuple[str, ...]:
    return self._KEYS

  def _splits(self) -> dict[str, tuple[str, dict[str, Any]]]:
    return self._SPLITS

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(builder=self, description=self.__doc__,
                                 features=tfds.features.FeaturesDict(self._features()))

  _manual_root: pathlib.Path | None = None

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    root = dl_manager.manual_dir
    self._manual_root = pathlib.Path(root)
    out = {}
    for split, (source_split, kwargs) in self._splits().items():
      try:
        source = datasets.make_source(self._DATASET, os.fspath(root), source_split, **kwargs)
      except (FileNotFoundError, NotADirectoryError) as e:
        log.warning('%s: no %r split: %s', self.name, split, e)
        continue
      out[split] = self._generate_examples(source)
    if not out:
      raise FileNotFoundError(f'{self.name}: no split found under {os.fspath(root)!r}; '
                              f'expected the layout of datasets.{self._DATASET}')
    return out

  def _encode(self, element: dict[str, np.ndarray]) -> dict[str, Any]:
    return {k: _rgb_png(element[k]) for k in self._keys()}

  def _generate_examples(self, source) -> Iterator[tuple[str, dict[str, Any]]]:
    for i in range(len(source)):
      try:
        element = source.read(i)
      except imageio.ImageDecodeError as e:  # Passed the header check, fails to decode.
        log.warning('%s: skipping %r: %s', self.name, e.path, e.reason)
        continue
      record = [pathlib.Path(p) for p in source.paths[i]]
      example = self._encode(element)
      # The first file's path below manual_dir without its suffix ('our485/low/1'); the key joins
      # every file of the record, which is unique.
      example['name'] = _relative(record[0], self._manual_root).with_suffix('').as_posix()
      yield '|'.join(_relative(p, self._manual_root).as_posix() for p in record), example


class LowlightLol(_FolderBuilder):
  """LOL (Wei et al., BMVC 2018): our485 -> train, eval15 -> test; paired low/high."""

  _DATASET = 'lol'


class LowlightLolV2Real(_FolderBuilder):
  """LOL-v2 Real_captured (Yang et al., TIP 2021): Train/Test, Low/Normal pairs."""

  _DATASET = 'lol_v2_real'


class LowlightLolV2Synthetic(_FolderBuilder):
  """LOL-v2 Synthetic (Yang et al., TIP 2021): Train/Test, Low/Normal pairs."""

  _DATASET = 'lol_v2_synthetic'


class LowlightLsrw(_FolderBuilder):
  """LSRW (Hai et al., 2023): Huawei + Nikon pairs; 'Training data' -> train, 'Eval' -> test."""

  _DATASET = 'lsrw'


class LowlightSice(_FolderBuilder):
  """SICE (Cai et al., TIP 2018): Part1 -> train, Part2 -> test; configs pick the exposure pool."""

  _DATASET = 'sice'
  BUILDER_CONFIGS = [
      tfds.core.BuilderConfig(name='under', description='darker half of each sequence + label'),
      tfds.core.BuilderConfig(name='over', description='brighter half of each sequence + label'),
      tfds.core.BuilderConfig(name='normal', description='the labels alone (as high)'),
  ]

  def _keys(self) -> tuple[str, ...]:
    return ('high',) if self.builder_config.name == 'normal' else ('low', 'high')

  def _splits(self):
    pool = {'pool': self.builder_config.name}
    return {'train': ('train', pool), 'test': ('test', pool)}


class LowlightEnlightengan(_FolderBuilder):
  """EnlightenGAN unpaired set (Jiang et al., TIP 2021): trainA -> train_low, trainB -> train_high
  (and testA/testB -> test_low/test_high when present)."""

  _DATASET = 'enlightengan'
  _KEYS = ('image',)

  def _split_generators(self, dl_manager):
    root = pathlib.Path(dl_manager.manual_dir)
    self._manual_root = root
    from data_pipelines import image_sources  # pylint: disable=g-import-not-at-top
    out = {}
    for split, folder in (('train_low', 'trainA'), ('train_high', 'trainB'),
                          ('test_low', 'testA'), ('test_high', 'testB')):
      if (root / folder).is_dir():
        images = image_sources.UnpairedFolder(root / folder, key='image')
        out[split] = self._generate_examples(images)
    if not out:
      raise FileNotFoundError(f'{self.name}: no trainA/trainB under {os.fspath(root)!r}')
    return out


class LowlightCityscapes(_FolderBuilder):
  """Cityscapes fine (Cordts et al., CVPR 2016): leftImg8bit image + gtFine label train ids."""

  _DATASET = 'cityscapes'
  _SPLITS = {'train': ('train', {}), 'validation': ('val', {})}

  def _features(self):
    return {'high': _image_feature(),
            'label': tfds.features.Image(shape=(None, None, 1), encoding_format='png'),
            'name': tfds.features.Text()}

  def _encode(self, element):
    return {'high': _rgb_png(element['high']),
            'label': _png(element['label'].astype(np.uint8))}  # 'L' PNG, decoded as HxWx1.


class LowlightTestSets(_FolderBuilder):
  """Unpaired low-light test sets: DICM, LIME, MEF, NPE, VV (one config each; split 'test')."""

  BUILDER_CONFIGS = [tfds.core.BuilderConfig(name=n) for n in ('dicm', 'lime', 'mef', 'npe', 'vv')]
  _KEYS = ('low',)
  _SPLITS = {'test': ('test', {})}

  @property
  def _DATASET(self):  # pylint: disable=invalid-name
    return self.builder_config.name


BUILDERS = {
    'lol': LowlightLol,
    'lol_v2_real': LowlightLolV2Real,
    'lol_v2_synthetic': LowlightLolV2Synthetic,
    'lsrw': LowlightLsrw,
    'sice': LowlightSice,
    'enlightengan': LowlightEnlightengan,
    'cityscapes': LowlightCityscapes,
    **{n: LowlightTestSets for n in ('dicm', 'lime', 'mef', 'npe', 'vv')},
}


def prepare(name: str, *, manual_dir: str | os.PathLike, data_dir: str | os.PathLike,
            config: str | None = None) -> tfds.core.DatasetBuilder:
  """Builds (or reuses) the ArrayRecord files of dataset `name` from `manual_dir` into `data_dir`.

  `config` picks a builder config (SICE pool); for the test sets the name is the config. Returns the
  builder; read with `tfds.data_source(builder.name + '/' + config, ...)` or
  `builder.as_data_source(split)`.
  """
  if name not in BUILDERS:
    raise KeyError(f'no TFDS builder for {name!r}; known: {sorted(BUILDERS)}')
  manual = pathlib.Path(manual_dir)
  if not manual.is_dir() or not any(manual.iterdir()):
    raise FileNotFoundError(f'manual_dir {os.fspath(manual)!r} does not exist or is empty; it must '
                            f'hold the {name} folders (see datasets.py)')
  cls = BUILDERS[name]
  if cls is LowlightTestSets:
    config = name
  kwargs = {'config': config} if config else {}
  builder = cls(data_dir=os.fspath(data_dir), file_format='array_record', **kwargs)
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
      manual_dir=os.fspath(manual_dir)))
  return builder


@dataclasses.dataclass(frozen=True)
class ToFloat(grain.transforms.Map):
  """Decoded TFDS examples -> the library's layout: RGB uint8 images to float32 in [0, 1]; 'label'
  (HxWx1 uint8) to int32 HxW; 'name' bytes to str."""

  def map(self, element: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for k, v in element.items():
      if k == 'label':
        out[k] = np.asarray(v)[..., 0].astype(np.int32)
      elif k == 'name':
        out[k] = v.decode() if isinstance(v, bytes) else v
      elif isinstance(v, np.ndarray) and v.dtype == np.uint8:
        out[k] = v.astype(np.float32) * np.float32(1 / 255)
      else:
        out[k] = v
    return out
