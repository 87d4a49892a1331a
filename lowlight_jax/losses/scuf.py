"""SCUF/GEFU training losses as pure functions (the released `src/train.py` terms).

Reference code: wangsen99/GEFU (commit 5d28e53) `src/train.py` (the objective), `src/my_utils/enhancer.py`
(`RetinexNet.enhance_loss`), torchmetrics' `structural_similarity_index_measure` (the reflectance SSIM) and
`torch.nn.CosineSimilarity(dim=1, eps=1e-7)` (caption consistency).

  * `l1`, `mse`: `F.l1_loss` / `F.mse_loss` (mean over every element).
  * `ssim_torchmetrics`: torchmetrics' functional SSIM with its defaults: 11x11 Gaussian window (sigma 1.5),
    K1 0.01, K2 0.03, `data_range=None` = max(pred range, target range) over the WHOLE batch tensor, reflect
    padding followed by cropping the padded border (so only windows inside the image count), mean over every
    element. Unlike `losses.ssim` (pytorch_ssim: zero padding, data range 1).
  * `caption_consistency`: 1 - mean over (batch, h, w) of the cosine similarity along the channel axis of two
    NCHW latents (torch's `CosineSimilarity(dim=1, eps=1e-7)`: x.y / max(|x| |y|, eps)).
  * `reflectance`: L1 + (1 - SSIM) of a predicted reflectance against the frozen DecomNet's, and the
    cross-direction term `enhance_loss(R_1, R_2) = MSE(R_1, stop_gradient(R_2))`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

SSIM_K1, SSIM_K2 = 0.01, 0.03
COSINE_EPS = 1e-7


def l1(x: jax.Array, y: jax.Array) -> jax.Array:
  return jnp.mean(jnp.abs(x.astype(jnp.float32) - y.astype(jnp.float32)))


def mse(x: jax.Array, y: jax.Array) -> jax.Array:
  return jnp.mean(jnp.square(x.astype(jnp.float32) - y.astype(jnp.float32)))


def _gaussian(size: int = 11, sigma: float = 1.5) -> np.ndarray:
  d = np.arange((1 - size) / 2, (1 + size) / 2, 1.0, dtype=np.float64)
  g = np.exp(-((d / sigma) ** 2) / 2)
  return (g / g.sum()).astype(np.float32)


def _valid_filter(x: jax.Array, g: np.ndarray) -> jax.Array:
  """Separable depthwise Gaussian filter, 'valid' (NHWC)."""
  c = x.shape[-1]
  k = len(g)
  kh = jnp.asarray(g).reshape(k, 1, 1, 1) * jnp.ones((1, 1, 1, c), x.dtype)
  kw = jnp.asarray(g).reshape(1, k, 1, 1) * jnp.ones((1, 1, 1, c), x.dtype)
  dn = ("NHWC", "HWIO", "NHWC")
  hp = jax.lax.Precision.HIGHEST
  x = jax.lax.conv_general_dilated(x, kh, (1, 1), "VALID", dimension_numbers=dn, feature_group_count=c, precision=hp)
  return jax.lax.conv_general_dilated(x, kw, (1, 1), "VALID", dimension_numbers=dn, feature_group_count=c,
                                      precision=hp)


def ssim_torchmetrics(pred: jax.Array, target: jax.Array, *, kernel_size: int = 11, sigma: float = 1.5
                      ) -> jax.Array:
  """Mean SSIM of NHWC batches as torchmetrics computes it with its defaults (see the module doc); a scalar."""
  x, y = pred.astype(jnp.float32), target.astype(jnp.float32)
  if x.shape[1] < kernel_size or x.shape[2] < kernel_size:
    raise ValueError(f"SSIM needs images of at least {kernel_size}x{kernel_size}, got {x.shape[1]}x{x.shape[2]}")
  data_range = jnp.maximum(jnp.max(x) - jnp.min(x), jnp.max(y) - jnp.min(y))
  c1, c2 = (SSIM_K1 * data_range) ** 2, (SSIM_K2 * data_range) ** 2
  g = _gaussian(kernel_size, sigma)
  mu_x, mu_y = _valid_filter(x, g), _valid_filter(y, g)
  sxx = _valid_filter(x * x, g) - mu_x ** 2
  syy = _valid_filter(y * y, g) - mu_y ** 2
  sxy = _valid_filter(x * y, g) - mu_x * mu_y
  m = ((2 * mu_x * mu_y + c1) * (2 * sxy + c2)) / ((mu_x ** 2 + mu_y ** 2 + c1) * (sxx + syy + c2))
  return jnp.mean(m)


def caption_consistency(latent: jax.Array, caption_latent: jax.Array) -> jax.Array:
  """1 - mean cosine similarity along the channel axis (axis 1, NCHW) of two latents; a scalar."""
  x, y = latent.astype(jnp.float32), caption_latent.astype(jnp.float32)
  dot = jnp.sum(x * y, axis=1)
  norms = jnp.sqrt(jnp.sum(x * x, axis=1) * jnp.sum(y * y, axis=1))
  return 1.0 - jnp.mean(dot / jnp.maximum(norms, COSINE_EPS))


def reflectance(pred: jax.Array, teacher: jax.Array) -> jax.Array:
  """L1 + (1 - SSIM) of a predicted reflectance (NHWC, (0, 1)) against the frozen DecomNet's (no gradient)."""
  teacher = jax.lax.stop_gradient(teacher)
  return l1(pred, teacher) + (1.0 - ssim_torchmetrics(pred, teacher))


def cross_direction_reflectance(r_first: jax.Array, r_second: jax.Array) -> jax.Array:
  """`RetinexNet.enhance_loss(R_1, R_2)`: MSE(R_1, R_2.detach())."""
  return mse(r_first, jax.lax.stop_gradient(r_second))
