"""NIQE: Mittal, Soundararajan and Bovik, "Making a 'Completely Blind' Image Quality Analyzer" (SPL
2013).

A port of the official MATLAB release (`niqe.m`, `computequality.m`, `computefeature.m`,
`estimateaggdparam.m` from live.ece.utexas.edu niqe_release), cross-read with BasicSR
`basicsr/metrics/niqe.py`, in float64 numpy (the score is ill-conditioned on small images):

  1. grey image (MATLAB `rgb2gray`, rounded for 8-bit data), cropped to whole 96x96 blocks;
  2. at two scales (the second from MATLAB `imresize(im, 0.5)`, bicubic antialiased), MSCN
     coefficients with a 7x7 Gaussian (sigma 7/6, replicate border) and, per block (96 px, then 48
     px), 18 AGGD features: the coefficients' shape and mean spread, and shape, mean, left/right
     spreads of the products with four circularly shifted neighbours;
  3. a multivariate Gaussian fitted to the block features (NaN-rows dropped) against the pristine
     model: sqrt((mu_p - mu_d)^T pinv((cov_p + cov_d) / 2) (mu_p - mu_d)).

Lower is better. On the pyiqa calibration image I04 this reproduces the MATLAB score to ~1e-12.
"""

import dataclasses
import functools
import os

import numpy as np
from scipy import ndimage
from scipy import special

from lowlight_jax.metrics import assets
from lowlight_jax.metrics import matlab

BLOCK = 96


@dataclasses.dataclass(frozen=True)
class NiqeModel:
  """The pristine multivariate Gaussian: mean (36,) and covariance (36, 36)."""
  mu: np.ndarray
  cov: np.ndarray


def load_model(path: str | os.PathLike | None = None) -> NiqeModel:
  """Reads `niqe_pris_params.npz` (default: the cached asset, see `lowlight_jax.metrics.assets`)."""
  if path is None:
    return _default_model()
  with np.load(path, allow_pickle=False) as d:
    return NiqeModel(mu=np.asarray(d['mu_pris_param'], np.float64).reshape(-1),
                     cov=np.asarray(d['cov_pris_param'], np.float64))


@functools.cache
def _default_model() -> NiqeModel:
  return load_model(assets.asset_path('niqe_pris_params.npz'))


def _mscn(im: np.ndarray) -> np.ndarray:
  """Mean-subtracted contrast-normalised coefficients (`imfilter(..., 'replicate')`)."""
  window = matlab.fspecial_gaussian(7, 7.0 / 6.0)
  mu = ndimage.correlate(im, window, mode='nearest')
  sigma = np.sqrt(np.abs(ndimage.correlate(im * im, window, mode='nearest') - mu * mu))
  return (im - mu) / (sigma + 1)


def _aggd_betas(vec: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """NIQE's `estimateaggdparam`: the shape and the left/right scale parameters (beta)."""
  alpha, left_std, right_std = matlab.estimate_aggd(vec)
  with np.errstate(invalid='ignore'):
    ratio = np.sqrt(special.gamma(1 / alpha) / special.gamma(3 / alpha))
  return alpha, left_std * ratio, right_std * ratio


def _block_features(structdis: np.ndarray, block: int) -> np.ndarray:
  """`blkproc(structdis, [block block], @computefeature)`: (num_blocks, 18), any block order."""
  h, w = structdis.shape
  blocks = structdis.reshape(h // block, block, w // block, block).transpose(0, 2, 1, 3)
  blocks = blocks.reshape(-1, block, block)
  n = blocks.shape[0]
  alpha, betal, betar = _aggd_betas(blocks.reshape(n, -1))
  feats = [alpha, (betal + betar) / 2]
  # MATLAB circshift(x, [dr dc]) == np.roll(x, (dr, dc)); it wraps within the block.
  for shift in ((0, 1), (1, 0), (1, 1), (1, -1)):
    pair = blocks * np.roll(blocks, shift, axis=(1, 2))
    alpha, betal, betar = _aggd_betas(pair.reshape(n, -1))
    with np.errstate(invalid='ignore'):
      mean = (betar - betal) * (special.gamma(2 / alpha) / special.gamma(1 / alpha))
    feats += [alpha, mean, betal, betar]
  return np.stack(feats, axis=1)


def niqe_features(grey: np.ndarray) -> np.ndarray:
  """Per-block NIQE features (num_blocks, 36) of a float64 grey image in [0, 255]."""
  h, w = grey.shape
  rows, cols = h // BLOCK, w // BLOCK
  if rows * cols == 0:
    raise ValueError(f'NIQE needs an image of at least {BLOCK}x{BLOCK} pixels, got {h}x{w}')
  im = grey[:rows * BLOCK, :cols * BLOCK]
  feats = []
  for scale in (1, 2):
    feats.append(_block_features(_mscn(im), BLOCK // scale))
    if scale == 1:
      im = matlab.imresize(im, 0.5)
  return np.concatenate(feats, axis=1)


def niqe_from_features(feats: np.ndarray, model: NiqeModel) -> float:
  """The distance between the fitted MVG of block features and the pristine model."""
  mu_d = np.nanmean(feats, axis=0)
  valid = feats[~np.isnan(feats).any(axis=1)]
  if valid.shape[0] < 2:
    raise ValueError('NIQE needs at least two 96x96 blocks with finite features '
                     f'(got {valid.shape[0]} of {feats.shape[0]}); the image is too small or flat')
  cov_d = np.cov(valid, rowvar=False)
  d = model.mu - mu_d
  cov = (model.cov + cov_d) / 2
  # MATLAB pinv's tolerance: max(size) * norm(A) * eps.
  inv = np.linalg.pinv(cov, rcond=max(cov.shape) * np.finfo(np.float64).eps)
  return float(np.sqrt(d @ inv @ d))


def niqe(img: np.ndarray, *, data_range: float = 1.0, crop_border: int = 0, channel: str = 'grey',
         quantize: bool = True, model: NiqeModel | None = None) -> float:
  """NIQE of one image (lower is better).

  Args:
    img: HW or HWC (RGB or grey) image in [0, data_range]; 255 for uint8 arrays.
    data_range: value of white.
    crop_border: pixels removed from each side first.
    channel: 'grey' (MATLAB `rgb2gray`, the official protocol) or 'y' (BT.601 luma, BasicSR's
      default).
    quantize: treat the image as 8-bit data (round RGB to integers and the grey channel as MATLAB's
      uint8 `rgb2gray` does). This is the official protocol on saved images.
    model: pristine parameters; default: the cached `niqe_pris_params.npz` asset.
  """
  img = np.asarray(img)
  if crop_border:
    img = img[crop_border:-crop_border, crop_border:-crop_border]
  grey = matlab.to_grey_255(img, data_range=data_range, channel=channel, quantize=quantize)
  return niqe_from_features(niqe_features(grey), model if model is not None else load_model())
