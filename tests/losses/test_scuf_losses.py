"""SCUF's loss functions against PyTorch re-creations of the released terms (torchmetrics' SSIM algorithm with its
defaults, `torch.nn.CosineSimilarity(dim=1, eps=1e-7)`, `F.l1_loss` / `F.mse_loss`)."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lowlight_jax.losses import scuf as scuf_losses


def _torchmetrics_ssim(preds, target):
  """torchmetrics.functional.structural_similarity_index_measure with its defaults, re-created: Gaussian 11 / 1.5,
  data_range = max of the two tensors' ranges, reflect padding, crop of the padded border, mean of everything."""
  data_range = max(float(preds.max() - preds.min()), float(target.max() - target.min()))
  c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
  k, sigma, ch = 11, 1.5, preds.shape[1]
  d = torch.arange((1 - k) / 2, (1 + k) / 2, 1.0, dtype=torch.float64)
  g = torch.exp(-((d / sigma) ** 2) / 2)
  g = (g / g.sum()).float()
  kernel = (g[:, None] @ g[None, :]).expand(ch, 1, k, k)
  pad = (k - 1) // 2
  p = F.pad(preds, (pad,) * 4, mode="reflect")
  t = F.pad(target, (pad,) * 4, mode="reflect")
  out = F.conv2d(torch.cat([p, t, p * p, t * t, p * t]), kernel, groups=ch)
  n = preds.shape[0]
  mu_p, mu_t, pp, tt, pt = (out[i * n:(i + 1) * n] for i in range(5))
  s_pp, s_tt, s_pt = pp - mu_p ** 2, tt - mu_t ** 2, pt - mu_p * mu_t
  ssim = ((2 * mu_p * mu_t + c1) * (2 * s_pt + c2)) / ((mu_p ** 2 + mu_t ** 2 + c1) * (s_pp + s_tt + c2))
  return ssim[..., pad:-pad, pad:-pad].mean()


@pytest.mark.parametrize("shape", [(2, 3, 32, 40), (1, 3, 17, 23)])
def test_ssim_matches_torchmetrics_algorithm(shape):
  rng = np.random.default_rng(0)
  a = rng.uniform(0.1, 0.9, shape).astype(np.float32)
  b = np.clip(a + rng.normal(0, 0.1, shape), 0, 1).astype(np.float32)
  ref = float(_torchmetrics_ssim(torch.from_numpy(a), torch.from_numpy(b)))
  ours = float(scuf_losses.ssim_torchmetrics(np.transpose(a, (0, 2, 3, 1)), np.transpose(b, (0, 2, 3, 1))))
  assert abs(ours - ref) < 1e-5, (ours, ref)
  assert abs(float(scuf_losses.ssim_torchmetrics(np.transpose(a, (0, 2, 3, 1)), np.transpose(a, (0, 2, 3, 1))))
             - 1.0) < 1e-5
  with pytest.raises(ValueError, match="at least 11x11"):
    scuf_losses.ssim_torchmetrics(np.zeros((1, 8, 8, 3)), np.zeros((1, 8, 8, 3)))


def test_caption_consistency_and_elementwise_terms_match_torch():
  rng = np.random.default_rng(1)
  x = rng.normal(size=(2, 4, 5, 6)).astype(np.float32)
  y = rng.normal(size=(2, 4, 5, 6)).astype(np.float32)
  ref = 1.0 - torch.nn.CosineSimilarity(dim=1, eps=1e-7)(torch.from_numpy(x), torch.from_numpy(y)).mean()
  assert abs(float(scuf_losses.caption_consistency(x, y)) - float(ref)) < 1e-6
  assert abs(float(scuf_losses.caption_consistency(x, x))) < 1e-6
  assert abs(float(scuf_losses.l1(x, y)) - float(F.l1_loss(torch.from_numpy(x), torch.from_numpy(y)))) < 1e-6
  assert abs(float(scuf_losses.mse(x, y)) - float(F.mse_loss(torch.from_numpy(x), torch.from_numpy(y)))) < 1e-5


def test_reflectance_terms_stop_the_teacher_and_the_second_prediction():
  import jax
  import jax.numpy as jnp
  rng = np.random.default_rng(2)
  r1, r2, teacher = (jnp.asarray(rng.uniform(0.1, 0.9, (1, 16, 16, 3)), jnp.float32) for _ in range(3))
  g_teacher = jax.grad(lambda t: scuf_losses.reflectance(r1, t))(teacher)
  assert float(jnp.max(jnp.abs(g_teacher))) == 0.0
  g1, g2 = jax.grad(scuf_losses.cross_direction_reflectance, argnums=(0, 1))(r1, r2)
  assert float(jnp.max(jnp.abs(g2))) == 0.0 and float(jnp.max(jnp.abs(g1))) > 0
  assert abs(float(scuf_losses.cross_direction_reflectance(r1, r2)) - float(jnp.mean((r1 - r2) ** 2))) < 1e-7
