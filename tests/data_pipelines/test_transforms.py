"""Tests for data_pipelines.transforms: one geometry for all keys, reflect pad, Lanczos resize."""

import dataclasses

import numpy as np
import pytest

from data_pipelines import degrade
from data_pipelines import transforms


def _pair(h=20, w=30, seed=0):
  image = np.random.default_rng(seed).random((h, w, 3), dtype=np.float32)
  # 'low' is a different array with the same content: equal outputs prove equal geometry.
  return {'low': image.copy(), 'high': image, 'name': 'x'}


def _find_window(big, small):
  h, w = small.shape[:2]
  hits = [(t, l) for t in range(big.shape[0] - h + 1) for l in range(big.shape[1] - w + 1)
          if np.array_equal(big[t:t + h, l:l + w], small)]
  return hits


def test_random_crop_same_window_for_all_keys_and_varies():
  element = _pair()
  crop = transforms.RandomCrop(size=(8, 12), keys=('low', 'high'))
  offsets = set()
  for seed in range(20):
    out = crop.random_map(element, np.random.default_rng(seed))
    assert out['low'].shape == (8, 12, 3)
    np.testing.assert_array_equal(out['low'], out['high'])
    hits = _find_window(element['high'], out['high'])
    assert len(hits) == 1
    offsets.add(hits[0])
    assert out['name'] == 'x'  # Other keys pass through.
  assert len(offsets) > 10


def test_random_crop_reflect_pads_small_images():
  ramp = np.arange(4, dtype=np.float32)[None, :, None].repeat(3, 0).repeat(3, 2)  # 3x4x3
  out = transforms.RandomCrop(size=(3, 8), keys=('high',)).random_map(
      {'high': ramp}, np.random.default_rng(0))
  # Width 4 -> 8: two reflected columns each side (BORDER_REFLECT_101), no zeros invented.
  np.testing.assert_array_equal(out['high'][0, :, 0], [2, 1, 0, 1, 2, 3, 2, 1])


def test_center_crop():
  element = _pair(10, 12)
  out = transforms.CenterCrop(size=4).map(element)
  np.testing.assert_array_equal(out['low'], element['high'][3:7, 4:8])
  np.testing.assert_array_equal(out['low'], out['high'])


def test_random_flip_same_for_all_keys_and_both_outcomes():
  element = _pair(5, 6)
  flip = transforms.RandomFlip(keys=('low', 'high'), horizontal=True, vertical=True)
  seen = set()
  for seed in range(40):
    out = flip.random_map(element, np.random.default_rng(seed))
    np.testing.assert_array_equal(out['low'], out['high'])
    h = np.array_equal(out['high'], element['high'][:, ::-1]) or np.array_equal(
        out['high'], element['high'][::-1, ::-1])
    v = np.array_equal(out['high'], element['high'][::-1]) or np.array_equal(
        out['high'], element['high'][::-1, ::-1])
    seen.add((h, v))
  assert seen == {(False, False), (True, False), (False, True), (True, True)}
  only_h = transforms.RandomFlip(keys=('high',))
  for seed in range(10):
    out = only_h.random_map(element, np.random.default_rng(seed))['high']
    assert np.array_equal(out, element['high']) or np.array_equal(out, element['high'][:, ::-1])


def test_resize_lanczos_shape_range_and_alignment():
  element = _pair(40, 60)
  out = transforms.Resize(size=16, keys=('low', 'high')).map(element)
  assert out['low'].shape == (16, 16, 3) and out['low'].dtype == np.float32
  np.testing.assert_array_equal(out['low'], out['high'])
  assert out['low'].min() >= 0.0 and out['low'].max() <= 1.0  # Lanczos ringing clipped.
  flat = {'high': np.full((40, 60, 3), 0.3, np.float32)}
  np.testing.assert_allclose(transforms.Resize(size=(7, 9), keys=('high',)).map(flat)['high'],
                             0.3, atol=1e-6)
  # Downscaling by 2 with Lanczos approximately averages 2x2 blocks on a smooth image.
  smooth = np.linspace(0, 1, 64, dtype=np.float32)[None, :, None].repeat(64, 0).repeat(3, 2)
  half = transforms.resize_image(smooth, (32, 32))
  np.testing.assert_allclose(half[10, 5:27, 0], smooth[20, 10:54:2, 0] + 0.5 / 63, atol=2e-3)
  with pytest.raises(ValueError):
    transforms.Resize(size=8, method='magic')


def test_mismatched_or_missing_keys_raise():
  element = {'low': np.zeros((8, 8, 3), np.float32), 'high': np.zeros((8, 9, 3), np.float32)}
  with pytest.raises(ValueError, match='differ in size'):
    transforms.RandomCrop(size=4).random_map(element, np.random.default_rng(0))
  with pytest.raises(KeyError, match='high'):
    transforms.RandomFlip().random_map({'low': element['low']}, np.random.default_rng(0))


def test_degrade_transform_synthesises_low_from_high():
  element = {'high': np.full((16, 16, 3), 0.6, np.float32)}
  t = transforms.Degrade(config=degrade.DegradationConfig())
  out = t.random_map(element, np.random.default_rng(0))
  assert set(out) == {'low', 'high'} and out['low'].shape == (16, 16, 3)
  assert out['low'].mean() < 0.5 * out['high'].mean()
  np.testing.assert_array_equal(out['low'], t.random_map(element, np.random.default_rng(0))['low'])


def test_transforms_are_frozen_keyword_only_dataclasses():
  crop = transforms.RandomCrop(size=[4, 6], keys=['high'])
  assert crop.size == (4, 6) and crop.keys == ('high',)
  assert crop == transforms.RandomCrop(size=(4, 6), keys=('high',))
  with pytest.raises(dataclasses.FrozenInstanceError):
    crop.size = 3
  with pytest.raises(TypeError):
    transforms.RandomCrop(4)  # pylint: disable=too-many-function-args
