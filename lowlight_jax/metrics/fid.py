"""FID: Heusel et al., "GANs Trained by a Two Time-Scale Update Rule Converge to a Local Nash
Equilibrium" (NeurIPS 2017), with the InceptionV3 of mseitzer/pytorch-fid
`src/pytorch_fid/inception.py`.

The network is torchvision's `Inception3` (Szegedy et al., "Rethinking the Inception Architecture",
CVPR 2016) with pytorch-fid's changes that reproduce the TensorFlow FID graph (`fid_inception_v3`):
`FIDInceptionA/C/E_1` average-pool without counting padding, `FIDInceptionE_2` max-pools its pool
branch, 1008 classes (unused here). Features are the 2048-d pool3 output: bilinear resize to 299x299
(`align_corners=False`, no antialiasing), x -> 2x - 1, blocks 0-3, global average pool.

No registry package ships these weights: pass the `pt_inception-2015-12-05-6726825d.pth` file
pytorch-fid downloads (torchvision key layout, e.g. `Mixed_5b.branch1x1.conv.weight`); parameter
names follow the torch keys (naming rule, docs/CONVENTIONS.md). The Fréchet distance is computed in
float64.
"""

import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from lowlight_jax.convert import io as convert_io
from lowlight_jax.convert import layout

_HIGHEST = jax.lax.Precision.HIGHEST


class BasicConv2d(nn.Module):
  """Conv (no bias) + BatchNorm(eps 1e-3, running statistics) + ReLU."""
  features: int
  kernel: tuple[int, int]
  stride: int = 1
  padding: tuple[int, int] = (0, 0)

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    ph, pw = self.padding
    x = nn.Conv(self.features, self.kernel, strides=(self.stride,) * 2,
                padding=((ph, ph), (pw, pw)), use_bias=False, precision=_HIGHEST, name='conv')(x)
    x = nn.BatchNorm(use_running_average=True, epsilon=1e-3, name='bn')(x)
    return nn.relu(x)


def _avg_pool_same(x: jax.Array) -> jax.Array:
  # FID variant: F.avg_pool2d(x, 3, 1, 1, count_include_pad=False).
  return nn.avg_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)), count_include_pad=False)


def _max_pool_valid(x: jax.Array) -> jax.Array:
  return nn.max_pool(x, (3, 3), strides=(2, 2), padding='VALID')


class FIDInceptionA(nn.Module):
  pool_features: int

  @nn.compact
  def __call__(self, x):
    b1 = BasicConv2d(64, (1, 1), name='branch1x1')(x)
    b5 = BasicConv2d(48, (1, 1), name='branch5x5_1')(x)
    b5 = BasicConv2d(64, (5, 5), padding=(2, 2), name='branch5x5_2')(b5)
    b3 = BasicConv2d(64, (1, 1), name='branch3x3dbl_1')(x)
    b3 = BasicConv2d(96, (3, 3), padding=(1, 1), name='branch3x3dbl_2')(b3)
    b3 = BasicConv2d(96, (3, 3), padding=(1, 1), name='branch3x3dbl_3')(b3)
    bp = BasicConv2d(self.pool_features, (1, 1), name='branch_pool')(_avg_pool_same(x))
    return jnp.concatenate([b1, b5, b3, bp], axis=-1)


class InceptionB(nn.Module):

  @nn.compact
  def __call__(self, x):
    b3 = BasicConv2d(384, (3, 3), stride=2, name='branch3x3')(x)
    bd = BasicConv2d(64, (1, 1), name='branch3x3dbl_1')(x)
    bd = BasicConv2d(96, (3, 3), padding=(1, 1), name='branch3x3dbl_2')(bd)
    bd = BasicConv2d(96, (3, 3), stride=2, name='branch3x3dbl_3')(bd)
    return jnp.concatenate([b3, bd, _max_pool_valid(x)], axis=-1)


class FIDInceptionC(nn.Module):
  channels_7x7: int

  @nn.compact
  def __call__(self, x):
    c7 = self.channels_7x7
    b1 = BasicConv2d(192, (1, 1), name='branch1x1')(x)
    b7 = BasicConv2d(c7, (1, 1), name='branch7x7_1')(x)
    b7 = BasicConv2d(c7, (1, 7), padding=(0, 3), name='branch7x7_2')(b7)
    b7 = BasicConv2d(192, (7, 1), padding=(3, 0), name='branch7x7_3')(b7)
    bd = BasicConv2d(c7, (1, 1), name='branch7x7dbl_1')(x)
    bd = BasicConv2d(c7, (7, 1), padding=(3, 0), name='branch7x7dbl_2')(bd)
    bd = BasicConv2d(c7, (1, 7), padding=(0, 3), name='branch7x7dbl_3')(bd)
    bd = BasicConv2d(c7, (7, 1), padding=(3, 0), name='branch7x7dbl_4')(bd)
    bd = BasicConv2d(192, (1, 7), padding=(0, 3), name='branch7x7dbl_5')(bd)
    bp = BasicConv2d(192, (1, 1), name='branch_pool')(_avg_pool_same(x))
    return jnp.concatenate([b1, b7, bd, bp], axis=-1)


class InceptionD(nn.Module):

  @nn.compact
  def __call__(self, x):
    b3 = BasicConv2d(192, (1, 1), name='branch3x3_1')(x)
    b3 = BasicConv2d(320, (3, 3), stride=2, name='branch3x3_2')(b3)
    b7 = BasicConv2d(192, (1, 1), name='branch7x7x3_1')(x)
    b7 = BasicConv2d(192, (1, 7), padding=(0, 3), name='branch7x7x3_2')(b7)
    b7 = BasicConv2d(192, (7, 1), padding=(3, 0), name='branch7x7x3_3')(b7)
    b7 = BasicConv2d(192, (3, 3), stride=2, name='branch7x7x3_4')(b7)
    return jnp.concatenate([b3, b7, _max_pool_valid(x)], axis=-1)


class FIDInceptionE(nn.Module):
  """`FIDInceptionE_1` (pool='avg', Mixed_7b) and `FIDInceptionE_2` (pool='max', Mixed_7c)."""
  pool: str

  @nn.compact
  def __call__(self, x):
    b1 = BasicConv2d(320, (1, 1), name='branch1x1')(x)
    b3 = BasicConv2d(384, (1, 1), name='branch3x3_1')(x)
    b3 = jnp.concatenate([
        BasicConv2d(384, (1, 3), padding=(0, 1), name='branch3x3_2a')(b3),
        BasicConv2d(384, (3, 1), padding=(1, 0), name='branch3x3_2b')(b3)
    ], axis=-1)
    bd = BasicConv2d(448, (1, 1), name='branch3x3dbl_1')(x)
    bd = BasicConv2d(384, (3, 3), padding=(1, 1), name='branch3x3dbl_2')(bd)
    bd = jnp.concatenate([
        BasicConv2d(384, (1, 3), padding=(0, 1), name='branch3x3dbl_3a')(bd),
        BasicConv2d(384, (3, 1), padding=(1, 0), name='branch3x3dbl_3b')(bd)
    ], axis=-1)
    if self.pool == 'avg':
      p = _avg_pool_same(x)
    else:  # The TF graph's 'mixed_10' pool is a max pool (a bug kept for FID compatibility).
      p = nn.max_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)))
    bp = BasicConv2d(192, (1, 1), name='branch_pool')(p)
    return jnp.concatenate([b1, b3, bd, bp], axis=-1)


class InceptionV3(nn.Module):
  """pytorch-fid `InceptionV3(output_blocks=[3])`: NHWC images in [0, 1] -> (N, 2048) pool3
  features.

  Attributes:
    resize_input: bilinearly resize to 299x299 first (pytorch-fid's default). `FeatureExtractor`
      resizes outside the jitted network instead, so that one compiled network serves every image
      size.
  """
  resize_input: bool = True

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = jnp.asarray(x, jnp.float32)
    if self.resize_input:
      x = resize_299(x)
    x = 2 * x - 1
    # block 0
    x = BasicConv2d(32, (3, 3), stride=2, name='Conv2d_1a_3x3')(x)
    x = BasicConv2d(32, (3, 3), name='Conv2d_2a_3x3')(x)
    x = BasicConv2d(64, (3, 3), padding=(1, 1), name='Conv2d_2b_3x3')(x)
    x = _max_pool_valid(x)
    # block 1
    x = BasicConv2d(80, (1, 1), name='Conv2d_3b_1x1')(x)
    x = BasicConv2d(192, (3, 3), name='Conv2d_4a_3x3')(x)
    x = _max_pool_valid(x)
    # block 2
    x = FIDInceptionA(32, name='Mixed_5b')(x)
    x = FIDInceptionA(64, name='Mixed_5c')(x)
    x = FIDInceptionA(64, name='Mixed_5d')(x)
    x = InceptionB(name='Mixed_6a')(x)
    x = FIDInceptionC(128, name='Mixed_6b')(x)
    x = FIDInceptionC(160, name='Mixed_6c')(x)
    x = FIDInceptionC(160, name='Mixed_6d')(x)
    x = FIDInceptionC(192, name='Mixed_6e')(x)
    # block 3
    x = InceptionD(name='Mixed_7a')(x)
    x = FIDInceptionE('avg', name='Mixed_7b')(x)
    x = FIDInceptionE('max', name='Mixed_7c')(x)
    return jnp.mean(x, axis=(1, 2))


def resize_299(x: jax.Array) -> jax.Array:
  """`F.interpolate(x, (299, 299), mode='bilinear', align_corners=False)` on NHWC (no antialias)."""
  n, _, _, c = x.shape
  return jax.image.resize(x, (n, 299, 299, c), method='linear', antialias=False)


def from_torch_state_dict(state_dict: dict[str, np.ndarray]) -> dict:
  """Variables from a torchvision-layout Inception3 state dict; `fc` and `AuxLogits` are dropped."""
  sd = {k: v for k, v in state_dict.items() if not k.startswith(('fc.', 'AuxLogits.'))}
  x = jax.ShapeDtypeStruct((1, 299, 299, 3), jnp.float32)
  target = jax.eval_shape(InceptionV3(resize_input=False).init, jax.random.key(0), x)
  return layout.assign(target, layout.torch_to_flax(sd))


def load_variables(path: str | os.PathLike) -> dict:
  """Loads pt_inception-2015-12-05 .pth (or .npz / .safetensors, same keys) as Flax variables."""
  return from_torch_state_dict(convert_io.load_state_dict(path))


class FeatureExtractor:
  """Pool3 features of single images of any size: resize to 299 eagerly, one jitted network."""

  def __init__(self, variables: dict):
    self.variables = jax.device_put(variables)
    self._net = jax.jit(InceptionV3(resize_input=False).apply)

  def __call__(self, img: np.ndarray, data_range: float = 255.0) -> np.ndarray:
    x = jnp.asarray(img, jnp.float32)[None] / data_range
    return np.asarray(self._net(self.variables, resize_299(x))[0], np.float64)


def statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Mean and (unbiased, as numpy `cov`) covariance of (N, D) features, float64."""
  f = np.asarray(features, np.float64)
  if f.ndim != 2 or f.shape[0] < 2:
    raise ValueError(f'need (N >= 2, D) features, got shape {f.shape}')
  return f.mean(axis=0), np.cov(f, rowvar=False)


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray,
                     sigma2: np.ndarray) -> float:
  """|mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^{1/2}) in float64.

  Port note: pytorch-fid takes `scipy.linalg.sqrtm(S1 @ S2)` (adding 1e-6 I when it is singular,
  dropping a small imaginary part). For covariance matrices tr((S1 S2)^{1/2}) equals the sum of
  square roots of the eigenvalues of the symmetric PSD matrix S1^{1/2} S2 S1^{1/2}, which needs
  neither fallback.
  """
  mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
  s1, s2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
  if mu1.shape != mu2.shape or s1.shape != s2.shape:
    raise ValueError('the two statistics have different dimensions')
  w, v = np.linalg.eigh((s1 + s1.T) / 2)
  s1_half = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
  m = s1_half @ s2 @ s1_half
  ev = np.linalg.eigvalsh((m + m.T) / 2)
  tr_covmean = np.sum(np.sqrt(np.clip(ev, 0, None)))
  diff = mu1 - mu2
  return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * tr_covmean)


def fid_from_features(features1: np.ndarray, features2: np.ndarray) -> float:
  """FID between two sets of (N, 2048) pool3 features."""
  return frechet_distance(*statistics(features1), *statistics(features2))
