"""Seeded, physically motivated low-light synthesis: well-exposed sRGB photo -> dark, noisy 8-bit.

The model follows what a camera does when it photographs a dim scene, in its linear (raw) domain:

  1. sRGB -> linear with the exact IEC 61966-2-1 transfer function (not a 2.2 power law).
  2. Exposure: the scene delivers k times less light, x = k * linear with k ~ U[k_min, k_max].
  3. Sensor noise, Poisson-Gaussian (Foi et al., "Practical Poissonian-Gaussian noise modeling and
     fitting for single-image raw-data", IEEE TIP 2008): y = a * Poisson(x / a) + N(0, b). `a` is
     the signal level of one photo-electron (1 / a = electrons at full scale, so larger `a` = higher
     ISO, fewer photons) and `b` the read-noise variance, so Var[y | x] = a x + b: noise variance
     grows linearly with the signal. Levels are sampled as in Brooks et al., "Unprocessing Images
     for Learned Raw Denoising", CVPR 2019 (`random_noise_levels` in google-research/unprocessing):
     log a ~ U[log a_min, log a_max] and log b = 2.18 log a + 1.20 + N(0, 0.26^2), the fit of read
     to shot noise across real camera ISOs.
  4. White-balance error: per-channel gains g_c ~ U[1 - c, 1 + c] (a colour cast; scales noise too).
  5. Camera tone tweak: x -> x^gamma with gamma ~ U[gamma_min, gamma_max] (cameras' tone curves
     differ from pure sRGB); (1, 1) disables it.
  6. Clip to [0, 1] (sensor/ISP saturation; this also clips read noise at black, biasing dark pixels
     up exactly as real JPEGs do), linear -> sRGB, quantise to 8 bits like a camera JPEG/PNG.

Lv et al. ("Attention guided low-light image enhancement with a large scale low-light simulation
dataset", IJCV 2021) synthesise training pairs the same way (darkening + Poisson-Gaussian noise).
Not modelled: Bayer mosaicking/demosaicking (noise here is spatially white), JPEG artefacts,
fixed-pattern noise, and banding; low-light-specific extensions of the noise model are in Wei et
al., ELD, CVPR 2020.

Everything is numpy; randomness comes only from the `np.random.Generator` argument, so a seed fully
determines the result (modulo numpy changing a distribution's sampling algorithm, which NEP 19
allows between feature releases; tests pin a checksum to detect it).
"""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True, kw_only=True)
class DegradationConfig:
  """Ranges of the low-light synthesis (see module docstring for the model).

  Attributes:
    exposure_range: (k_min, k_max) of the linear exposure factor k ~ U. Default 0.03..0.2 is 2.3 to
      5 stops under exposure (sRGB mean drops to roughly 20-50%); LOL's low images are darker still
      (k around 0.01), lower k_min to imitate them.
    shot_noise_range: (a_min, a_max), log-uniform, of the Poisson signal level per photo-electron.
      Brooks et al.'s range 1e-4..1.2e-2 (10,000 to 83 electrons at full scale). 0, 0 disables shot
      noise.
    read_noise_slope, read_noise_intercept, read_noise_jitter: log b = slope * log a + intercept +
      N(0, jitter^2) (Brooks et al.: 2.18, 1.20, 0.26). Ignored when shot noise is disabled
      (then read noise is off too).
    color_cast: per-channel gains ~ U[1 - c, 1 + c]; 0 disables.
    tone_gamma_range: (g_min, g_max) of the linear-domain tone tweak x^g; (1, 1) disables.
    quantize_bits: output bit depth (8 like a camera JPEG); 0 keeps float precision.
  """

  exposure_range: tuple[float, float] = (0.03, 0.2)
  shot_noise_range: tuple[float, float] = (1e-4, 1.2e-2)
  read_noise_slope: float = 2.18
  read_noise_intercept: float = 1.20
  read_noise_jitter: float = 0.26
  color_cast: float = 0.1
  tone_gamma_range: tuple[float, float] = (0.9, 1.1)
  quantize_bits: int = 8

  def __post_init__(self):
    # ml_collections hands lists back for tuple fields; normalise so the repr (and hence grain's
    # checkpoint validation, which compares reprs) does not depend on how the config was written.
    for name in ('exposure_range', 'shot_noise_range', 'tone_gamma_range'):
      lo, hi = (float(v) for v in getattr(self, name))
      if lo > hi or lo < 0:
        raise ValueError(f'{name} must satisfy 0 <= lo <= hi, got {(lo, hi)}')
      object.__setattr__(self, name, (lo, hi))
    if self.exposure_range[0] <= 0:
      raise ValueError(f'exposure_range must be positive, got {self.exposure_range}')
    if (self.shot_noise_range[0] == 0) != (self.shot_noise_range[1] == 0):
      raise ValueError(f'shot_noise_range must be both zero (off) or both > 0, got '
                       f'{self.shot_noise_range}')
    if self.tone_gamma_range[0] <= 0:
      raise ValueError(f'tone_gamma_range must be positive, got {self.tone_gamma_range}')
    if not 0 <= self.color_cast < 1:
      raise ValueError(f'color_cast must be in [0, 1), got {self.color_cast}')
    if not 0 <= self.quantize_bits <= 16:
      raise ValueError(f'quantize_bits must be in [0, 16], got {self.quantize_bits}')


@dataclasses.dataclass(frozen=True, kw_only=True)
class DegradationParams:
  """One draw of the degradation: exposure k, shot level a, read variance b, gains, gamma."""

  exposure: float
  shot_noise: float
  read_noise: float
  gains: tuple[float, float, float]
  tone_gamma: float


def srgb_to_linear(srgb: np.ndarray) -> np.ndarray:
  """IEC 61966-2-1 sRGB decoding (EOTF), elementwise on [0, 1]."""
  srgb = np.asarray(srgb)
  return np.where(srgb <= 0.04045, srgb / 12.92, ((srgb + 0.055) / 1.055) ** 2.4)


def linear_to_srgb(linear: np.ndarray) -> np.ndarray:
  """IEC 61966-2-1 sRGB encoding, elementwise on [0, 1] (inverse of `srgb_to_linear`)."""
  linear = np.asarray(linear)
  # max() keeps the unused branch of np.where free of NaNs for negative inputs.
  return np.where(linear <= 0.0031308, linear * 12.92,
                  1.055 * np.maximum(linear, 0.0031308) ** (1 / 2.4) - 0.055)


def sample_params(rng: np.random.Generator, cfg: DegradationConfig) -> DegradationParams:
  """Draws one set of degradation parameters (fixed draw order: exposure, noise, gains, gamma)."""
  exposure = rng.uniform(*cfg.exposure_range)
  if cfg.shot_noise_range[1] > 0:
    log_a = rng.uniform(np.log(cfg.shot_noise_range[0]), np.log(cfg.shot_noise_range[1]))
    log_b = (cfg.read_noise_slope * log_a + cfg.read_noise_intercept
             + rng.normal(0.0, cfg.read_noise_jitter))
    shot, read = float(np.exp(log_a)), float(np.exp(log_b))
  else:
    shot, read = 0.0, 0.0
  gains = rng.uniform(1.0 - cfg.color_cast, 1.0 + cfg.color_cast, size=3)
  gamma = rng.uniform(*cfg.tone_gamma_range)
  return DegradationParams(exposure=float(exposure), shot_noise=shot, read_noise=read,
                           gains=tuple(float(g) for g in gains), tone_gamma=float(gamma))


def add_sensor_noise(linear: np.ndarray, rng: np.random.Generator, *, shot_noise: float,
                     read_noise: float) -> np.ndarray:
  """Poisson-Gaussian noise on a linear image: a * Poisson(x / a) + N(0, b); not clipped.

  Args:
    linear: non-negative linear-light signal.
    rng: source of randomness.
    shot_noise: a, signal per photo-electron (0 disables the Poisson part).
    read_noise: b, Gaussian read-noise VARIANCE.

  Returns:
    float64 array with E[y] = x and Var[y] = a x + b.
  """
  x = np.maximum(np.asarray(linear, dtype=np.float64), 0.0)
  y = rng.poisson(x / shot_noise) * shot_noise if shot_noise > 0 else x.copy()
  if read_noise > 0:
    y += rng.normal(0.0, np.sqrt(read_noise), size=x.shape)
  return y


def apply_params(image: np.ndarray, rng: np.random.Generator, params: DegradationParams, *,
                 quantize_bits: int = 8) -> np.ndarray:
  """Degrades a well-exposed sRGB float image with fixed `params`; `rng` drives only the noise."""
  linear = srgb_to_linear(np.clip(np.asarray(image, dtype=np.float64), 0.0, 1.0))
  linear = linear * params.exposure
  linear = add_sensor_noise(linear, rng, shot_noise=params.shot_noise,
                            read_noise=params.read_noise)
  linear = linear * np.asarray(params.gains)
  linear = np.clip(linear, 0.0, 1.0) ** params.tone_gamma
  out = linear_to_srgb(linear)
  if quantize_bits:
    levels = 2**quantize_bits - 1
    out = np.round(out * levels) / levels
  return out.astype(np.float32)


def degrade(image: np.ndarray, rng: np.random.Generator,
            cfg: DegradationConfig = DegradationConfig()) -> np.ndarray:
  """Synthesises a low-light version of `image` (HxWx3 sRGB float in [0, 1]); returns float32.

  The same generator state gives the same output; draw order is parameters first, then noise.
  """
  image = np.asarray(image)
  if image.ndim != 3 or image.shape[-1] != 3:
    raise ValueError(f'degrade expects HxWx3, got shape {image.shape}')
  params = sample_params(rng, cfg)
  return apply_params(image, rng, params, quantize_bits=cfg.quantize_bits)
