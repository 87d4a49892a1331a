"""SCL-LLE training data: labelled low-light inputs plus unpaired positive and negative pools.

Paper: Liang et al., "Semantically Contrastive Learning for Low-Light Image Enhancement", AAAI 2022.
Reference code: LingLIx/SCL-LLE (commit 408d89a) `train.py`: Cityscapes fine-labelled training
images (random 384 crop, horizontal flip) with their train-id labels; every iteration
`random.sample`s 2 positives from `Contrast/GT/` (SICE Part1 normal exposures) and 2 negatives from
`Contrast/low/` (one under- and one over-exposed image per SICE scene), each resized to 384x384
(Lanczos); positives and negatives are unpaired with the input and with each other.

Element of `SCLSource` (numpy only; grain workers must not import jax):
  'low'    HxWx3 float32 in [0, 1], the darkened input (see Darkening; with the stand-in's camera
           darkening the clean photo, which `make_train_transforms` darkens after the crop);
  'labels' HxW int32 class ids (Cityscapes train ids 0..18, 255 = unlabelled);
  'pos'    (num_pos, S, S, 3) normal-light images of OTHER scenes, S = pool_size;
  'neg'    (num_neg, S, S, 3) under/over-exposed images of other scenes.
Everything about element `index` (which input, its darkening gamma, which pool images; see
`SCLSource.plan`) is drawn from a generator seeded by (seed, index), so it is deterministic. The
source holds `pairings` virtual copies of the input list, each drawing fresh pool images and gammas,
so a run sees new (input, positive, negative) triplets instead of the same ones every epoch. Crops
and flips come later from the sampler's (seed, epoch, record) generator (`transforms.RandomCrop` /
`RandomFlip` on 'low' and 'labels' together).

Inputs (`data.inputs`):
  'cityscapes': `root/leftImg8bit/<split>/<city>/*_leftImg8bit.png` with
    `root/gtFine/<split>/<city>/*_gtFine_labelTrainIds.png` (cityscapesScripts
    `createTrainIdLabelImgs`) or, when absent, `*_gtFine_labelIds.png` mapped to train ids here (as
    VainF's `Cityscapes.encode_target`). Pools: `data.positives_dir`, `data.negatives_dir` (flat
    image folders, e.g. the released `Contrast/GT` and `Contrast/low`).
  'embedded' (default; needs no files): a STAND-IN for the real data, so every config trains out of
    the box. Inputs are the embedded training photographs (`embedded.EMBEDDED_TRAIN`); their
    "labels" are NOT semantic classes but an unsupervised segmentation (SLIC superpixels grouped by
    k-means on mean Lab colour into `data.pseudo_classes` regions, computed once per photo), enough
    to exercise the per-class brightness term; positives are OTHER training photos as they are
    (normal exposure) and negatives synthetic exposures of yet other photos (alternately 2-4 stops
    under and 1.5-3 stops over, in linear light). Photos too dark to pass for a normal exposure
    (mean below `POOL_MIN_MEAN`: the Hubble deep field) are never pool images. Negatives use photos
    distinct from the positives whenever enough photos exist.
    Two stand-in settings bring the embedded photos closer to what the released model was trained
    on (Cityscapes street scenes from a low-end sensor), both measured by fine-tuning the released
    SCL-LLE weights for 300 steps (paper lr 1e-4) and scoring NIQE on the conformance DICM + LIME
    images (released model 3.746):
    - `stand_in_white_balance` (default on): grey-world balance of every embedded photo (inputs and
      pools). The training photos are red-dominated (channel means e.g. astronaut 0.56/0.42/0.38,
      retina 0.62/0.25/0.18; Cityscapes is near neutral), and the colour-constancy term turned
      that into a suppressed red curve: mean output red 0.334 -> 0.204, NIQE 4.03.
    - `stand_in_darkening='camera'` (default): inputs darkened by the camera model of
      `degrade.degrade` (exposure, Poisson-Gaussian sensor noise, 8 bits) instead of a noise-free
      gamma. Noise-free dark inputs teach the curves to lift dark regions as if they had no noise;
      with white balance alone NIQE was 3.90-3.92, with both 3.76 (seeds 0 and 1).
    With `stand_in_darkening='gamma'` the embedded inputs use `darken_gamma` like Cityscapes.

Darkening of Cityscapes inputs: `low = image ** gamma`, gamma ~ U[darken_gamma] per element (the
paper's "standard positive gamma transformation", also used by its Table 4 protocol). The released
Cityscapes loader is not published; the paper only says the brightness was adjusted, so the range
is our choice.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import pathlib
import zlib
from typing import Any, Iterator, Sequence

import grain
import ml_collections
import numpy as np

from data_pipelines import datasets
from data_pipelines import degrade as degrade_lib
from data_pipelines import embedded
from data_pipelines import loaders
from data_pipelines import transforms
from lowlight_jax.io import imageio

log = logging.getLogger(__name__)

INPUTS = ('embedded', 'cityscapes')
STAND_IN_DARKENINGS = ('camera', 'gamma')
POOL_MIN_MEAN = 0.2  # Embedded photos darker than this on average are not used as pool images.
UNDER_STOPS = (2.0, 4.0)  # Embedded stand-in negatives: under-exposure range, in stops.
OVER_STOPS = (1.5, 3.0)  # and over-exposure range.


def default_scl_data_config() -> ml_collections.ConfigDict:
  """The `config.data` section of SCL-LLE (`source='scl'`: `sources/scl.py` serves it from here).

  Fields:
    source: 'scl'.
    inputs: 'embedded' (stand-in, see module docstring) or 'cityscapes'.
    root: Cityscapes root (with `leftImg8bit/` and `gtFine/`); `split` / `eval_split` its splits.
    positives_dir, negatives_dir: pool folders for 'cityscapes' inputs.
    num_pos, num_neg: pool images per element (2 and 2 as released).
    pool_size: pool images are resized (Lanczos, ignoring aspect) to pool_size x pool_size; must
      equal `crop` (the appearance distance compares pixels).
    crop: random crop of the input and its labels; hflip: random horizontal flip of both.
    darken_gamma: (lo, hi) of the input darkening gamma; (1, 1) disables it.
    eval_gamma: fixed darkening gamma of the Cityscapes evaluation images.
    eval_max_images: Cityscapes evaluation images in the trainer's eval set (held in memory).
    pairings: virtual copies of the input list, each with fresh pool draws (see module docstring).
    pseudo_classes: number of stand-in classes of the embedded inputs.
    stand_in_white_balance: grey-world balance the embedded photos (inputs and pools).
    stand_in_darkening: how the embedded inputs are darkened: 'camera' (`degrade.degrade` with
      `degradation`: exposure, Poisson-Gaussian sensor noise, 8 bits) or 'gamma' (`darken_gamma`).
      Cityscapes inputs always use `darken_gamma` (real photos already carry their sensor's noise).
    degradation: fields of `degrade.DegradationConfig` for 'camera'.
    worker_count, worker_buffer_size, read_threads, read_buffer_size, max_pixels: as in
      `data_pipelines.pipeline.default_data_config`.
  """
  c = ml_collections.ConfigDict()
  c.source = 'scl'
  c.inputs = 'embedded'
  c.root = ml_collections.config_dict.placeholder(str)
  c.split = 'train'
  c.eval_split = 'val'
  c.positives_dir = ml_collections.config_dict.placeholder(str)
  c.negatives_dir = ml_collections.config_dict.placeholder(str)
  c.num_pos = 2
  c.num_neg = 2
  c.pool_size = 384
  c.crop = 384
  c.hflip = True
  c.darken_gamma = (1.5, 5.0)
  c.eval_gamma = 4.0
  c.eval_max_images = 8
  c.pairings = 64
  c.pseudo_classes = 6
  c.stand_in_white_balance = True
  c.stand_in_darkening = 'camera'
  c.degradation = ml_collections.ConfigDict(dataclasses.asdict(degrade_lib.DegradationConfig()))
  c.worker_count = 0
  c.worker_buffer_size = 2
  c.read_threads = 4
  c.read_buffer_size = 16
  c.max_pixels = imageio.DEFAULT_MAX_PIXELS
  return c


def darken(image: np.ndarray, gamma: float) -> np.ndarray:
  """Gamma darkening `image ** gamma` (gamma >= 1 darkens), float32."""
  return np.power(np.clip(image, 0.0, 1.0), np.float32(gamma)).astype(np.float32)


def expose(image: np.ndarray, stops: float) -> np.ndarray:
  """Exposure change of an sRGB image by `stops` (< 0: under) in linear light, clipped."""
  linear = degrade_lib.srgb_to_linear(np.clip(image, 0.0, 1.0)) * (2.0 ** stops)
  return degrade_lib.linear_to_srgb(np.clip(linear, 0.0, 1.0)).astype(np.float32)


# ------------------------------------------------------------------------------------------------
# Stand-in labels for the embedded photos.


def grey_world(image: np.ndarray) -> np.ndarray:
  """Grey-world white balance: scale each channel to the image's overall mean (clipped to 1)."""
  means = image.reshape(-1, 3).mean(axis=0)
  gains = means.mean() / np.maximum(means, 1e-6)
  return np.clip(image * gains.astype(np.float32), 0.0, 1.0).astype(np.float32)


def _kmeans(points: np.ndarray, k: int, rng: np.random.Generator, iters: int = 25) -> np.ndarray:
  """Plain k-means (k-means++ seeding): each point's cluster, clusters sorted by first feature."""
  k = min(k, len(points))
  centres = [points[rng.integers(len(points))]]
  for _ in range(1, k):
    d2 = np.min(((points[:, None] - np.asarray(centres)[None]) ** 2).sum(-1), axis=1)
    p = d2 / d2.sum() if d2.sum() > 0 else None
    centres.append(points[rng.choice(len(points), p=p)])
  centres = np.asarray(centres)
  for _ in range(iters):
    assign = np.argmin(((points[:, None] - centres[None]) ** 2).sum(-1), axis=1)
    new = np.array([points[assign == j].mean(0) if np.any(assign == j) else centres[j]
                    for j in range(k)])
    if np.allclose(new, centres):
      break
    centres = new
  # Deterministic class ids: order clusters by lightness (first feature).
  order = np.argsort(np.argsort(centres[:, 0]))
  return order[assign]


def pseudo_labels(image: np.ndarray, num_classes: int = 6, *, seed: int = 0, max_side: int = 256,
                  n_segments: int = 150) -> np.ndarray:
  """Stand-in class map: SLIC superpixels grouped into `num_classes` by k-means on mean Lab colour.

  Computed on a copy downscaled to at most `max_side` pixels, then upsampled (nearest) to the image
  size. Class ids are ordered by region lightness; they carry no semantics across photos.
  """
  from skimage import color, segmentation  # pylint: disable=g-import-not-at-top

  h, w = image.shape[:2]
  scale = min(1.0, max_side / max(h, w))
  small = transforms.resize_image(image, (max(1, round(h * scale)), max(1, round(w * scale))),
                                  'area')
  sp = segmentation.slic(small, n_segments=n_segments, compactness=10, start_label=0)
  lab = color.rgb2lab(small)
  n_sp = sp.max() + 1
  counts = np.bincount(sp.ravel(), minlength=n_sp).astype(np.float64)
  feats = np.stack([np.bincount(sp.ravel(), lab[..., c].ravel(), n_sp) for c in range(3)], -1)
  feats = feats / np.maximum(counts, 1)[:, None]
  present = counts > 0
  cluster = np.zeros(n_sp, np.int32)
  cluster[present] = _kmeans(feats[present], num_classes, np.random.default_rng(seed))
  small_labels = cluster[sp]
  rows = np.minimum((np.arange(h) * small_labels.shape[0]) // h, small_labels.shape[0] - 1)
  cols = np.minimum((np.arange(w) * small_labels.shape[1]) // w, small_labels.shape[1] - 1)
  return small_labels[rows][:, cols].astype(np.int32)


@functools.lru_cache(maxsize=None)
def _stand_in_photo(name: str, white_balance: bool) -> np.ndarray:
  """An embedded photo (grey-world balanced or not), cached per process, READ-ONLY."""
  image = embedded.load_photo(name, copy=False)
  if white_balance:
    image = grey_world(image)
    image.setflags(write=False)
  return image


@functools.lru_cache(maxsize=64)
def _stand_in_pool_image(name: str, white_balance: bool, size: int) -> np.ndarray:
  """An embedded photo resized (Lanczos, ignoring aspect) to size x size, cached, READ-ONLY."""
  image = transforms.resize_image(_stand_in_photo(name, white_balance), (size, size), 'lanczos')
  image = np.asarray(image, np.float32)
  image.setflags(write=False)
  return image


@functools.lru_cache(maxsize=None)
def _embedded_labels(name: str, num_classes: int) -> np.ndarray:
  labels = pseudo_labels(embedded.load_photo(name), num_classes, seed=zlib.crc32(name.encode()))
  labels.setflags(write=False)
  return labels


# ------------------------------------------------------------------------------------------------
# Cityscapes layout.


def list_cityscapes(root: str | os.PathLike, split: str = 'train',
                    cities: Sequence[str] | None = None
                    ) -> list[tuple[pathlib.Path, pathlib.Path, bool]]:
  """(image, label, label_is_train_ids) triples of a Cityscapes-layout folder, sorted.

  Raises:
    FileNotFoundError: no `leftImg8bit/<split>` folder or no image with a label file.
  """
  root = pathlib.Path(root)
  image_root = root / 'leftImg8bit' / split
  if not image_root.is_dir():
    raise FileNotFoundError(f'no Cityscapes images at {os.fspath(image_root)!r}')
  out = []
  for image in sorted(image_root.glob('*/*_leftImg8bit.png')):
    city = image.parent.name
    if cities is not None and city not in cities:
      continue
    stem = image.name[:-len('_leftImg8bit.png')]
    gt = root / 'gtFine' / split / city
    train_ids, ids = gt / f'{stem}_gtFine_labelTrainIds.png', gt / f'{stem}_gtFine_labelIds.png'
    if train_ids.is_file():
      out.append((image, train_ids, True))
    elif ids.is_file():
      out.append((image, ids, False))
    else:
      log.warning('list_cityscapes: no label file for %s; skipped', image)
  if not out:
    raise FileNotFoundError(f'no labelled images under {os.fspath(image_root)!r}')
  return out


def read_labels(path: str | os.PathLike, train_ids: bool,
                max_pixels: int = imageio.DEFAULT_MAX_PIXELS) -> np.ndarray:
  """A label PNG as HxW int32 train ids (label ids are mapped; unknown ids -> 255).

  Raises `imageio.ImageDecodeError` (a ValueError naming the file) for unreadable, oversized or
  multi-channel files.
  """
  labels = datasets.read_label(path, max_pixels=max_pixels)
  if not train_ids:
    labels = datasets.CITYSCAPES_TRAIN_ID_LUT[labels.astype(np.uint8)]
  return labels.astype(np.int32)


# ------------------------------------------------------------------------------------------------
# The source.


def _rng(seed: int, index: int) -> np.random.Generator:
  return np.random.Generator(np.random.Philox(np.random.SeedSequence([seed, index])))


class SCLSource(grain.sources.RandomAccessDataSource):
  """{'low', 'labels', 'pos', 'neg'} elements, deterministic per index (see module docstring).

  Attributes:
    inputs: 'embedded' or 'cityscapes'.
    num_inputs: labelled input images; `len(source) == num_inputs * pairings`.
  """

  def __init__(self, inputs: str = 'embedded', *, root: str | None = None, split: str = 'train',
               positives_dir: str | None = None, negatives_dir: str | None = None, num_pos: int = 2,
               num_neg: int = 2, pool_size: int = 384, darken_gamma: Sequence[float] = (1.5, 5.0),
               pairings: int = 1, pseudo_classes: int = 6, seed: int = 0,
               max_pixels: int = imageio.DEFAULT_MAX_PIXELS, white_balance: bool = False,
               camera_darkening: bool = False):
    if inputs not in INPUTS:
      raise ValueError(f'inputs must be one of {INPUTS}, got {inputs!r}')
    lo, hi = (float(g) for g in darken_gamma)
    if not 0 < lo <= hi:
      raise ValueError(f'darken_gamma must satisfy 0 < lo <= hi, got {(lo, hi)}')
    if num_pos < 1 or num_neg < 1 or pairings < 1 or pool_size < 1:
      raise ValueError('num_pos, num_neg, pairings and pool_size must be positive')
    self.inputs = inputs
    self.num_pos, self.num_neg, self.pool_size = int(num_pos), int(num_neg), int(pool_size)
    self.darken_gamma = (lo, hi)
    self.pairings, self.pseudo_classes, self.seed = int(pairings), int(pseudo_classes), int(seed)
    self.max_pixels = max_pixels
    # Stand-in only (embedded inputs): grey-world balance; with camera darkening the inputs are
    # left clean here and darkened after the crop (`make_train_transforms`).
    self.white_balance = bool(white_balance)
    self.camera_darkening = bool(camera_darkening)
    if inputs == 'embedded':
      self.names = embedded.split_names('train' if split == 'train' else 'test')
      # Pool candidates: photos bright enough to pass for a normal exposure (mean brightness).
      self.pool_names = tuple(n for n in self.names
                              if embedded.load_photo(n, copy=False).mean() >= POOL_MIN_MEAN)
      if len(self.pool_names) < 2:
        raise ValueError('the embedded stand-in needs at least two normally exposed photos')
      self._records: list[Any] = list(self.names)
      self.positives: list[pathlib.Path] = []
      self.negatives: list[pathlib.Path] = []
    else:
      if not root:
        raise ValueError("data.root must be set for inputs='cityscapes'")
      if not positives_dir or not negatives_dir:
        raise ValueError(
            "data.positives_dir and data.negatives_dir must be set for inputs='cityscapes'")
      self._records = list_cityscapes(root, split)
      self.positives = imageio.list_images(positives_dir)
      self.negatives = imageio.list_images(negatives_dir)
      pools = (('positives', self.positives, num_pos), ('negatives', self.negatives, num_neg))
      for kind, pool, n in pools:
        if len(pool) < n:
          raise ValueError(
              f'{kind} pool has {len(pool)} images, fewer than the {n} drawn per element')
    self.num_inputs = len(self._records)

  def __len__(self) -> int:
    return self.num_inputs * self.pairings

  def __repr__(self) -> str:
    # grain compares reprs when restoring a checkpointed iterator: arguments and file lists only.
    files = '|'.join(str(r) for r in self._records + self.positives + self.negatives)
    crc = zlib.crc32(files.encode())
    return (f'SCLSource(inputs={self.inputs!r}, n={self.num_inputs}, pos={len(self.positives)}, '
            f'neg={len(self.negatives)}, files_crc={crc:08x}, num_pos={self.num_pos}, '
            f'num_neg={self.num_neg}, pool_size={self.pool_size}, '
            f'darken_gamma={self.darken_gamma}, pairings={self.pairings}, '
            f'pseudo_classes={self.pseudo_classes}, white_balance={self.white_balance}, '
            f'camera_darkening={self.camera_darkening}, seed={self.seed})')

  def _pool_image(self, image: np.ndarray) -> np.ndarray:
    return transforms.resize_image(image, (self.pool_size, self.pool_size), 'lanczos')

  def _read(self, path: pathlib.Path) -> np.ndarray:
    return imageio.read_image(path, max_pixels=self.max_pixels)

  def plan(self, index: int) -> dict[str, Any]:
    """What element `index` is made of: {'input', 'gamma', 'pos', 'neg'} (+ 'neg_stops').

    Pool entries are photo names ('embedded', which also gives the negatives' exposure changes in
    stops, 'neg_stops') or indices into `positives` / `negatives` ('cityscapes').
    """
    index = int(index)
    if not 0 <= index < len(self):
      raise IndexError(f'index {index} out of range for {len(self)} records')
    rng = _rng(self.seed, index)
    i = index % self.num_inputs
    # Fixed draw order: gamma, then the pool draws.
    out: dict[str, Any] = {'input': i, 'gamma': float(rng.uniform(*self.darken_gamma))}
    if self.inputs == 'embedded':
      others = [n for n in self.pool_names if n != self.names[i]]
      order = [others[j] for j in rng.permutation(len(others))]
      need = self.num_pos + self.num_neg
      if len(order) < need:  # Too few photos to keep every pool image distinct: reuse some.
        order += [others[j] for j in rng.integers(0, len(others), need - len(order))]
      u = rng.uniform(size=self.num_neg)
      under = np.arange(self.num_neg) % 2 == 0  # under, over, under, ...
      stops = np.where(under, -(UNDER_STOPS[0] + u * (UNDER_STOPS[1] - UNDER_STOPS[0])),
                       OVER_STOPS[0] + u * (OVER_STOPS[1] - OVER_STOPS[0]))
      out.update(pos=order[:self.num_pos], neg=order[self.num_pos:need],
                 neg_stops=[float(v) for v in stops])
    else:
      out.update(pos=[int(j) for j in rng.choice(len(self.positives), self.num_pos, replace=False)],
                 neg=[int(j) for j in rng.choice(len(self.negatives), self.num_neg, replace=False)])
    return out

  def __getitem__(self, index: int) -> dict[str, np.ndarray]:
    p = self.plan(index)
    if self.inputs == 'embedded':
      name = self.names[p['input']]
      image = _stand_in_photo(name, self.white_balance)
      labels = np.array(_embedded_labels(name, self.pseudo_classes))
      pos = [_stand_in_pool_image(n, self.white_balance, self.pool_size) for n in p['pos']]
      # Exposure changes are applied at pool size (pixelwise, so nearly what exposing the photo
      # before resizing gives, for a fraction of the cost).
      neg = [expose(_stand_in_pool_image(n, self.white_balance, self.pool_size), st)
             for n, st in zip(p['neg'], p['neg_stops'])]
    else:
      image_path, label_path, train_ids = self._records[p['input']]
      image = self._read(image_path)
      labels = read_labels(label_path, train_ids, self.max_pixels)
      if labels.shape != image.shape[:2]:
        raise ValueError(f'{label_path}: label size {labels.shape} != image size {image.shape[:2]}')
      pos = [self._pool_image(self._read(self.positives[j])) for j in p['pos']]
      neg = [self._pool_image(self._read(self.negatives[j])) for j in p['neg']]
    camera = self.inputs == 'embedded' and self.camera_darkening
    return {
        'low': image if camera else darken(image, p['gamma']),
        'labels': labels.astype(np.int32),
        'pos': np.stack(pos).astype(np.float32),
        'neg': np.stack(neg).astype(np.float32),
    }


def _stand_in_camera(data_cfg: ml_collections.ConfigDict) -> degrade_lib.DegradationConfig | None:
  """The camera model darkening the embedded stand-in inputs, or None for gamma darkening."""
  if data_cfg.stand_in_darkening not in STAND_IN_DARKENINGS:
    raise ValueError(f'data.stand_in_darkening must be one of {STAND_IN_DARKENINGS}, got '
                     f'{data_cfg.stand_in_darkening!r}')
  if data_cfg.stand_in_darkening == 'gamma':
    return None
  return degrade_lib.DegradationConfig(**data_cfg.degradation.to_dict())


def make_source(data_cfg: ml_collections.ConfigDict, *, seed: int = 0) -> SCLSource:
  """The training source described by `data_cfg` (see `default_scl_data_config`)."""
  if data_cfg.crop and data_cfg.pool_size != data_cfg.crop:
    raise ValueError(
        f'data.pool_size ({data_cfg.pool_size}) must equal data.crop ({data_cfg.crop}): the '
        'appearance triplet compares the enhanced crop with the pool images pixel by pixel')
  return SCLSource(data_cfg.inputs, root=data_cfg.root, split=data_cfg.split,
                   positives_dir=data_cfg.positives_dir, negatives_dir=data_cfg.negatives_dir,
                   num_pos=data_cfg.num_pos, num_neg=data_cfg.num_neg, pool_size=data_cfg.pool_size,
                   darken_gamma=tuple(data_cfg.darken_gamma), pairings=data_cfg.pairings,
                   pseudo_classes=data_cfg.pseudo_classes, seed=seed,
                   max_pixels=data_cfg.max_pixels,
                   white_balance=data_cfg.stand_in_white_balance,
                   camera_darkening=_stand_in_camera(data_cfg) is not None)


def make_train_transforms(data_cfg: ml_collections.ConfigDict) -> list[Any]:
  """Crop and flip 'low' and 'labels' together (the pool images are already at pool_size).

  With the stand-in's camera darkening, `transforms.Degrade` then darkens the cropped 'low' (noise
  at the network's input resolution, as a sensor makes it; element generator from the sampler).
  """
  if not data_cfg.crop:
    raise ValueError('data.crop must be > 0: batching needs one image size')
  keys = ('low', 'labels')
  ops: list[Any] = [transforms.RandomCrop(size=data_cfg.crop, keys=keys)]
  if data_cfg.hflip:
    ops.append(transforms.RandomFlip(keys=keys, horizontal=True, vertical=False))
  camera = _stand_in_camera(data_cfg)
  if data_cfg.inputs == 'embedded' and camera is not None:
    ops.append(transforms.Degrade(config=camera, src='low', dst='low'))
  return ops


def make_train_loader(data_cfg: ml_collections.ConfigDict, *, batch_size: int, seed: int,
                      shard_index: int | None = None,
                      shard_count: int | None = None) -> grain.DataLoader:
  """Infinite, shuffled, sharded grain DataLoader of SCL-LLE batches (the pipeline's contract).

  Batches: {'low': (B, crop, crop, 3), 'labels': (B, crop, crop) int32,
  'pos': (B, num_pos, S, S, 3), 'neg': (B, num_neg, S, S, 3)}.
  """
  return loaders.make_loader(data_cfg, make_source(data_cfg, seed=seed), make_train_transforms(data_cfg),
                             batch_size=batch_size, seed=seed, shard_index=shard_index,
                             shard_count=shard_count)


def labelled_set(data_cfg: ml_collections.ConfigDict, split: str | None = None,
                 cities: Sequence[str] | None = None,
                 limit: int | None = None) -> Iterator[dict[str, Any]]:
  """Full-resolution labelled images {'name', 'image', 'labels'} (normal light), lazily.

  'cityscapes': `split` (default `data.eval_split`) of `data.root`, optionally only `cities` (the
  paper's Table 4 uses frankfurt, lindau, munster of val); images are read one at a time.
  'embedded': the test photos with stand-in labels. `limit` caps the number of images.
  """
  if data_cfg.inputs == 'embedded':
    names = embedded.split_names('test')[:limit]
    for n in names:
      yield {'name': n, 'image': embedded.load_photo(n),
             'labels': np.array(_embedded_labels(n, data_cfg.pseudo_classes))}
    return
  records = list_cityscapes(data_cfg.root, split or data_cfg.eval_split, cities)[:limit]
  for image, label, train_ids in records:
    yield {'name': image.name[:-len('_leftImg8bit.png')], 'image': imageio.read_image(image),
           'labels': read_labels(label, train_ids)}


def make_eval_set(data_cfg: ml_collections.ConfigDict, split: str = 'test') -> list[dict[str, Any]]:
  """Evaluation images [{'name', 'low', 'high'}] for the trainer.

  'embedded': the common embedded evaluation set (`loaders.embedded_eval_set`, what source
  'embedded' evaluates on with the default degradation), so numbers compare across methods.
  'cityscapes': the first `eval_max_images` images of `eval_split` darkened with the fixed
  `eval_gamma`, 'high' being the original image.
  """
  if data_cfg.inputs == 'embedded':
    return loaders.embedded_eval_set(split, degrade_lib.DegradationConfig())
  split_name = data_cfg.eval_split if split == 'test' else data_cfg.split
  return [{'name': e['name'], 'low': darken(e['image'], data_cfg.eval_gamma), 'high': e['image']}
          for e in labelled_set(data_cfg, split_name, limit=data_cfg.eval_max_images)]
