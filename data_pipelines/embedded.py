"""The embedded default dataset: real photographs that ship inside installed packages.

Nothing can be downloaded at run time, yet every config must train and evaluate out of the box, so
the default data are the colour photographs inside the scikit-image wheel (`skimage/data/`, CC0 /
public domain per `skimage.data`'s docstrings) and matplotlib's
`mpl-data/sample_data/grace_hopper.jpg`. They are the "normal-light" targets; low-light inputs are
synthesised with `degrade.degrade`.

Split BY SOURCE PHOTO: a test photo is never seen in training, not even as a crop. The two
motorcycle images are a stereo pair of one scene, so they sit together (in train).

  train: astronaut, rocket, motorcycle_left, motorcycle_right, hubble_deep_field, retina
  test:  chelsea, coffee, grace_hopper

The test photos are ordinary indoor/portrait scenes of three kinds (animal, still life, person),
which is what low-light enhancement is judged on. Greyscale photos in the wheel (camera, coins,
moon, grass, ...) are deliberately left out: replicated to RGB they have R = G = B, which makes the
colour-constancy losses of the zero-reference methods trivially zero and would teach the networks to
desaturate.

Test low images are degraded with a seed derived from the photo NAME alone (`photo_rng`, seed 0), so
they are identical on every machine and every run. Training pairs are degraded on the fly in the
pipeline (`transforms.Degrade`) with a generator derived from (seed, epoch, photo index), so every
epoch sees new noise and exposure.
"""

from __future__ import annotations

import functools
import os
import pathlib
import zlib

import numpy as np

from data_pipelines import degrade as degrade_lib
from lowlight_jax.io import imageio

EMBEDDED_TRAIN: tuple[str, ...] = (
    'astronaut', 'rocket', 'motorcycle_left', 'motorcycle_right', 'hubble_deep_field', 'retina')
EMBEDDED_TEST: tuple[str, ...] = ('chelsea', 'coffee', 'grace_hopper')

_SKIMAGE_FILES = {
    'astronaut': 'astronaut.png',
    'chelsea': 'chelsea.png',
    'coffee': 'coffee.png',
    'rocket': 'rocket.jpg',
    'motorcycle_left': 'motorcycle_left.png',
    'motorcycle_right': 'motorcycle_right.png',
    'hubble_deep_field': 'hubble_deep_field.jpg',
    'retina': 'retina.jpg',
}


def photo_path(name: str) -> pathlib.Path:
  """Path of an embedded photo inside its installed package (never downloaded)."""
  if name == 'grace_hopper':
    import matplotlib  # pylint: disable=g-import-not-at-top

    path = pathlib.Path(matplotlib.get_data_path()) / 'sample_data' / 'grace_hopper.jpg'
  elif name in _SKIMAGE_FILES:
    import skimage  # pylint: disable=g-import-not-at-top

    path = pathlib.Path(skimage.__file__).parent / 'data' / _SKIMAGE_FILES[name]
  else:
    raise KeyError(f'unknown embedded photo {name!r}; known: {EMBEDDED_TRAIN + EMBEDDED_TEST}')
  if not path.is_file():
    raise FileNotFoundError(f'embedded photo {name!r} missing at {os.fspath(path)!r}; is the '
                            'package installed from its wheel?')
  return path


@functools.lru_cache(maxsize=None)
def _cached_photo(name: str) -> np.ndarray:
  # Per process (grain workers each hold their own, ~50 MB for the train photos). Read-only, so the
  # training source can hand out views without copying whole photos for every crop.
  image = imageio.read_image(photo_path(name))
  image.setflags(write=False)
  return image


def load_photo(name: str, *, copy: bool = True) -> np.ndarray:
  """An embedded photo as RGB float32 HxWx3 in [0, 1].

  Args:
    name: one of EMBEDDED_TRAIN + EMBEDDED_TEST.
    copy: False returns the cached READ-ONLY array (no per-call copy of the whole photo).
  """
  image = _cached_photo(name)
  return image.copy() if copy else image


def split_names(split: str) -> tuple[str, ...]:
  """Photo names of 'train' or 'test'."""
  if split == 'train':
    return EMBEDDED_TRAIN
  if split == 'test':
    return EMBEDDED_TEST
  raise ValueError(f"split must be 'train' or 'test', got {split!r}")


def photo_rng(name: str, seed: int = 0) -> np.random.Generator:
  """Generator for a photo's fixed degradation: from (seed, CRC-32 of the name).

  CRC-32 rather than `hash()`, which is salted per Python process. Seed 0 defines the canonical test
  set.
  """
  seq = np.random.SeedSequence([seed, zlib.crc32(name.encode('utf-8'))])
  return np.random.Generator(np.random.Philox(seq))


def degraded_photo(name: str,
                   cfg: degrade_lib.DegradationConfig = degrade_lib.DegradationConfig(),
                   seed: int = 0) -> np.ndarray:
  """The deterministic low-light version of a photo (seed 0: the one used for evaluation)."""
  return degrade_lib.degrade(load_photo(name), photo_rng(name, seed), cfg)
