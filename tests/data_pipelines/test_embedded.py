"""Tests for the embedded dataset: split by photo, loading from packages, fixed test degradation."""

import hashlib

import numpy as np
import pytest

from data_pipelines import degrade
from data_pipelines import embedded
from data_pipelines import image_sources


def test_split_is_disjoint_by_photo_and_by_content():
  assert not set(embedded.EMBEDDED_TRAIN) & set(embedded.EMBEDDED_TEST)
  assert len(set(embedded.EMBEDDED_TRAIN)) == len(embedded.EMBEDDED_TRAIN) == 6
  assert set(embedded.EMBEDDED_TEST) == {'chelsea', 'coffee', 'grace_hopper'}
  # Stereo pair of one scene: both on the same side.
  assert {'motorcycle_left', 'motorcycle_right'} <= set(embedded.EMBEDDED_TRAIN)
  paths = [embedded.photo_path(n) for n in embedded.EMBEDDED_TRAIN + embedded.EMBEDDED_TEST]
  assert len(set(paths)) == len(paths)
  digests = {n: hashlib.sha256(embedded.load_photo(n).tobytes()).hexdigest()
             for n in embedded.EMBEDDED_TRAIN + embedded.EMBEDDED_TEST}
  assert len(set(digests.values())) == len(digests)


def test_training_source_only_serves_train_photos():
  src = image_sources.EmbeddedPairs('train', degradation=None)
  assert src.names == embedded.EMBEDDED_TRAIN
  test_shapes = {embedded.load_photo(n).shape for n in embedded.EMBEDDED_TEST}
  for i in range(len(src)):
    element = src[i]
    assert set(element) == {'high'}
    assert element['high'].shape not in test_shapes


@pytest.mark.parametrize('name,shape', [
    ('chelsea', (300, 451, 3)), ('coffee', (400, 600, 3)), ('grace_hopper', (600, 512, 3)),
    ('astronaut', (512, 512, 3)), ('retina', (1411, 1411, 3)),
])
def test_photos_load_as_rgb_float(name, shape):
  image = embedded.load_photo(name)
  assert image.shape == shape and image.dtype == np.float32
  assert 0.0 <= image.min() and image.max() <= 1.0 and image.std() > 0.05
  assert embedded.photo_path(name).is_file()


def test_load_photo_returns_independent_arrays():
  a = embedded.load_photo('chelsea')
  a[:] = 0
  assert embedded.load_photo('chelsea').mean() > 0.1


def test_unknown_photo_and_split_raise():
  with pytest.raises(KeyError):
    embedded.photo_path('lena')
  with pytest.raises(ValueError):
    embedded.split_names('val')


# sum of the uint8 levels of the canonical test lows (seed 0, default DegradationConfig). A change
# means the test set changed (degradation model, defaults, or numpy's sampling algorithms): eval
# numbers before and after are then not comparable. Slack covers last-ulp libm differences between
# CPUs.
_PINNED_LEVEL_SUMS = {'chelsea': 16390397, 'coffee': 23329863}


@pytest.mark.parametrize('name', sorted(_PINNED_LEVEL_SUMS))
def test_test_split_degradation_is_pinned(name):
  low = embedded.degraded_photo(name)
  levels = np.round(low * 255).astype(np.int64)
  assert abs(int(levels.sum()) - _PINNED_LEVEL_SUMS[name]) <= 50
  np.testing.assert_array_equal(low, embedded.degraded_photo(name))


def test_test_pairs_match_fixed_degradation_and_seed_matters():
  cfg = degrade.DegradationConfig()
  src = image_sources.EmbeddedPairs('test', degradation=cfg, seed=0)
  element = src[1]
  assert src.names[1] == 'coffee'
  np.testing.assert_array_equal(element['low'], embedded.degraded_photo('coffee', cfg))
  np.testing.assert_array_equal(element['high'], embedded.load_photo('coffee'))
  other = image_sources.EmbeddedPairs('test', degradation=cfg, seed=1)[1]['low']
  assert np.abs(other - element['low']).mean() > 1e-3
