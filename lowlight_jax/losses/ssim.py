"""SSIM as a training loss, as `pytorch_ssim.SSIM` computes it (DRBN / DRBN-SKF's reconstruction loss).

Reference: Po-Hsun-Su/pytorch-ssim `pytorch_ssim/__init__.py` as vendored by DRBN_SKF (`src/loss/pytorch_ssim`):
an 11x11 Gaussian window (sigma 1.5), per channel, zero padding of 5 (the SSIM map keeps the image size, unlike
the evaluation SSIM of `lowlight_jax.metrics.full_reference`, which uses valid filtering), C1 = 0.01^2,
C2 = 0.03^2, mean over the map. The released class returns the NEGATIVE mean SSIM (`-ssim` in their fork); here
`ssim_loss` returns 1 - SSIM per example, which has the same gradient and reads as a loss (>= 0).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

C1 = 0.01 ** 2
C2 = 0.03 ** 2


def _window(size: int = 11, sigma: float = 1.5) -> np.ndarray:
  x = np.arange(size, dtype=np.float64) - size // 2
  g = np.exp(-(x ** 2) / (2 * sigma ** 2))
  g = g / g.sum()
  return np.outer(g, g).astype(np.float32)


def _filter(x: jax.Array, window: np.ndarray) -> jax.Array:
  """Depthwise 'same' convolution with zero padding (NHWC)."""
  c = x.shape[-1]
  k = jnp.asarray(window)[:, :, None, None] * jnp.ones((1, 1, 1, c), x.dtype)
  pad = window.shape[0] // 2
  return jax.lax.conv_general_dilated(x, k, (1, 1), ((pad, pad), (pad, pad)),
                                      dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=c,
                                      precision=jax.lax.Precision.HIGHEST)


def ssim(x: jax.Array, y: jax.Array, window_size: int = 11, sigma: float = 1.5) -> jax.Array:
  """Per-example mean SSIM (B,) of NHWC images in [0, 1], `pytorch_ssim` style."""
  x, y = x.astype(jnp.float32), y.astype(jnp.float32)
  w = _window(window_size, sigma)
  mu_x, mu_y = _filter(x, w), _filter(y, w)
  sxx = _filter(x * x, w) - mu_x ** 2
  syy = _filter(y * y, w) - mu_y ** 2
  sxy = _filter(x * y, w) - mu_x * mu_y
  m = ((2 * mu_x * mu_y + C1) * (2 * sxy + C2)) / ((mu_x ** 2 + mu_y ** 2 + C1) * (sxx + syy + C2))
  return jnp.mean(m, axis=(1, 2, 3))


def ssim_loss(x: jax.Array, y: jax.Array) -> jax.Array:
  """1 - SSIM per example (B,)."""
  return 1.0 - ssim(x, y)
