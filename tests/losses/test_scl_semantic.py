"""SCL-LLE semantic losses: per-image brightness consistency, released variant, cross-entropy."""

import jax
import jax.numpy as jnp
import numpy as np
import torch

from lowlight_jax.losses import scl_semantic as ss


def _grey(values):
  v = jnp.asarray(values, jnp.float32)
  return jnp.repeat(v[..., None], 3, axis=-1)


def test_brightness_consistency_by_hand():
  img = _grey([[[0.1, 0.3], [0.5, 0.5]]])  # (1, 2, 2, 3)
  labels = jnp.asarray([[[0, 0], [1, 255]]])
  # class 0: mean 0.2, deviations 0.01 + 0.01; class 1: one pixel, 0; ignored pixel: nothing. / (H W
  # = 4)
  np.testing.assert_allclose(ss.semantic_brightness_consistency(img, labels), [0.005], rtol=1e-5)
  # Constant brightness within every class -> 0.
  flat = _grey([[[0.2, 0.2], [0.7, 0.9]]])
  np.testing.assert_allclose(
      ss.semantic_brightness_consistency(flat, jnp.asarray([[[3, 3], [1, 2]]])), [0.0], atol=1e-9)


def test_brightness_consistency_is_per_image_and_differentiable():
  rng = np.random.default_rng(0)
  img = jnp.asarray(rng.uniform(size=(2, 6, 6, 3)), jnp.float32)
  labels = jnp.asarray(rng.integers(0, 3, (2, 6, 6)))
  other = labels.at[1].set(jnp.asarray(rng.integers(0, 3, (6, 6))))
  a = ss.semantic_brightness_consistency(img, labels, num_classes=3)
  b = ss.semantic_brightness_consistency(img, other, num_classes=3)
  assert a.shape == (2,)
  # Image 1's labels do not touch image 0's loss.
  assert float(a[0]) == float(b[0]) and float(a[1]) != float(b[1])
  # The released form broadcasts every label map over every image: image 1's labels change the whole
  # value.
  ra = ss.released_semantic_brightness(img, labels)
  rb = ss.released_semantic_brightness(img, other)
  assert float(ra) != float(rb)
  g = jax.grad(lambda x: ss.semantic_brightness_consistency(x, labels, num_classes=3).sum())(img)
  assert float(jnp.abs(g).max()) > 0


def _torch_segexp(x, y):
  """SCL-LLE Myloss.L_segexp.forward (without .cuda())."""
  b, c, h, w = x.shape
  x = torch.mean(x, 1, keepdim=True)
  a1 = torch.zeros(b, h, w)
  d = 0
  for i in range(35):
    a2 = torch.where(y == i, x, a1)
    d2 = torch.mean(a2)
    a2 = torch.where(a2 == 0, d2, a2)
    d3 = torch.mean(torch.pow(a2 - torch.FloatTensor([d2]), 2))
    d = d + d3
  return d


def test_released_semantic_brightness_matches_authors_code():
  rng = np.random.default_rng(1)
  x = rng.uniform(size=(2, 3, 5, 7)).astype(np.float32)
  y = rng.choice([0, 1, 7, 18, 255], size=(2, 5, 7)).astype(np.int64)
  ref = _torch_segexp(torch.from_numpy(x), torch.from_numpy(y)).item()
  ours = ss.released_semantic_brightness(jnp.asarray(x.transpose(0, 2, 3, 1)), jnp.asarray(y))
  np.testing.assert_allclose(float(ours), ref, rtol=1e-5)


def test_cross_entropy_matches_torch_and_ignores_255():
  rng = np.random.default_rng(2)
  logits = rng.normal(size=(1, 4, 5, 19)).astype(np.float32)
  labels = rng.integers(0, 19, (1, 4, 5))
  labels[0, 0, :3] = 255
  ref = torch.nn.CrossEntropyLoss(ignore_index=255)(
      torch.from_numpy(logits.transpose(0, 3, 1, 2)), torch.from_numpy(labels)).item()
  ours = ss.segmentation_cross_entropy(jnp.asarray(logits), jnp.asarray(labels))
  np.testing.assert_allclose(ours, [ref], rtol=1e-5)
  # Only ignored pixels: 0, not NaN; and the ignored pixels' logits get no gradient.
  unlabelled = jnp.full((1, 4, 5), 255)
  assert float(ss.segmentation_cross_entropy(jnp.asarray(logits), unlabelled)[0]) == 0.0
  g = jax.grad(lambda z: ss.segmentation_cross_entropy(z, jnp.asarray(labels)).sum())(
      jnp.asarray(logits))
  assert float(jnp.abs(g[0, 0, :3]).max()) == 0.0 and float(jnp.abs(g[0, 1]).max()) > 0
