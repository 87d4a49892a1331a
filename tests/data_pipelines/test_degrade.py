"""Tests for data_pipelines.degrade: sRGB curve, Poisson-Gaussian statistics, seeding, darkening."""

import dataclasses

import numpy as np
import pytest

from data_pipelines import degrade
from data_pipelines import embedded


def _photo():
  return embedded.load_photo('astronaut')[:128, :128]


def test_srgb_transfer_function_values_and_inverse():
  # IEC 61966-2-1 reference points: the linear segment and the 2.4 power segment.
  np.testing.assert_allclose(degrade.srgb_to_linear(np.array([0.0, 0.04, 0.5, 1.0])),
                             [0.0, 0.04 / 12.92, 0.214041, 1.0], rtol=1e-5)
  x = np.linspace(0, 1, 1001)
  np.testing.assert_allclose(degrade.linear_to_srgb(degrade.srgb_to_linear(x)), x, atol=1e-12)


def test_same_seed_same_output_different_seed_different():
  image, cfg = _photo(), degrade.DegradationConfig()
  a = degrade.degrade(image, np.random.default_rng(7), cfg)
  b = degrade.degrade(image, np.random.default_rng(7), cfg)
  c = degrade.degrade(image, np.random.default_rng(8), cfg)
  np.testing.assert_array_equal(a, b)
  assert np.abs(a - c).mean() > 1e-3


def test_output_is_dark_8bit_float32_in_range():
  image = _photo()
  for seed in range(5):
    low = degrade.degrade(image, np.random.default_rng(seed))
    assert low.dtype == np.float32 and low.shape == image.shape
    assert 0.0 <= low.min() and low.max() <= 1.0
    np.testing.assert_allclose(low * 255, np.round(low * 255), atol=1e-4)  # 8-bit levels.
    # k <= 0.2 in linear light is at least 2.3 stops: the sRGB mean drops well below 60%.
    assert 0.05 < low.mean() / image.mean() < 0.6


def test_noise_free_path_is_exactly_the_exposure_model():
  cfg = degrade.DegradationConfig(exposure_range=(0.1, 0.1), shot_noise_range=(0.0, 0.0),
                                  color_cast=0.0, tone_gamma_range=(1.0, 1.0), quantize_bits=0)
  image = _photo()
  low = degrade.degrade(image, np.random.default_rng(0), cfg)
  expected = degrade.linear_to_srgb(0.1 * degrade.srgb_to_linear(image.astype(np.float64)))
  np.testing.assert_allclose(low, expected, atol=1e-6)
  # Darker exposure, darker image (monotone in k).
  darker = dataclasses.replace(cfg, exposure_range=(0.03, 0.03))
  assert degrade.degrade(image, np.random.default_rng(0), darker).mean() < low.mean()


def test_poisson_gaussian_variance_grows_linearly_with_signal():
  rng = np.random.default_rng(0)
  a, b = 0.01, 1e-5
  variances = []
  for level in (0.02, 0.1, 0.4):
    y = degrade.add_sensor_noise(np.full(200_000, level), rng, shot_noise=a, read_noise=b)
    assert abs(y.mean() - level) < 1e-3
    np.testing.assert_allclose(y.var(), a * level + b, rtol=0.03)
    variances.append(y.var())
  assert variances[0] < variances[1] < variances[2]
  # Shot noise is Poisson: the signal arrives in quanta of a.
  y = degrade.add_sensor_noise(np.full(1000, 0.1), rng, shot_noise=a, read_noise=0.0)
  np.testing.assert_allclose(y / a, np.round(y / a), atol=1e-9)


def test_sampled_noise_levels_follow_brooks_ranges():
  cfg = degrade.DegradationConfig()
  rng = np.random.default_rng(0)
  params = [degrade.sample_params(rng, cfg) for _ in range(500)]
  shot = np.array([p.shot_noise for p in params])
  read = np.array([p.read_noise for p in params])
  assert shot.min() >= 1e-4 and shot.max() <= 1.2e-2
  # log b = 2.18 log a + 1.20 + N(0, 0.26): the residual has that spread and no offset.
  resid = np.log(read) - (2.18 * np.log(shot) + 1.20)
  assert abs(resid.mean()) < 0.05 and abs(resid.std() - 0.26) < 0.03
  k = np.array([p.exposure for p in params])
  assert k.min() >= 0.03 and k.max() <= 0.2
  gains = np.array([p.gains for p in params])
  assert gains.min() >= 0.9 and gains.max() <= 1.1 and gains.std() > 0.03


@pytest.mark.parametrize('kwargs', [
    dict(exposure_range=(0.2, 0.1)),
    dict(exposure_range=(0.0, 0.1)),
    dict(shot_noise_range=(0.0, 0.01)),
    dict(color_cast=1.5),
    dict(quantize_bits=32),
])
def test_invalid_config_raises(kwargs):
  with pytest.raises(ValueError):
    degrade.DegradationConfig(**kwargs)


def test_config_is_frozen_keyword_only_and_normalises_lists():
  cfg = degrade.DegradationConfig(exposure_range=[0.05, 0.1])
  assert cfg.exposure_range == (0.05, 0.1)
  assert cfg == degrade.DegradationConfig(exposure_range=(0.05, 0.1))
  with pytest.raises(dataclasses.FrozenInstanceError):
    cfg.color_cast = 0.0
  with pytest.raises(TypeError):
    degrade.DegradationConfig((0.1, 0.2))  # pylint: disable=too-many-function-args
