"""SCL-LLE contrastive losses: hand-checked values and parity with the released torch formulas."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from lowlight_jax.losses import contrastive as cl


def test_appearance_distance_is_mean_abs_grey_difference():
  a = jnp.zeros((1, 2, 2, 3))
  b = jnp.asarray(np.array([[[0.3, 0.3, 0.3], [0.0, 0.0, 0.6]], [[0.9, 0.0, 0.0], [0.0, 0.0, 0.0]]],
                           np.float32))[None]
  # grey(b) = [[0.3, 0.2], [0.3, 0.0]] -> mean |.| = 0.2
  np.testing.assert_allclose(cl.appearance_distance(a, b), [0.2], rtol=1e-6)


def test_triplet_combination_modes_by_hand():
  d_pos = jnp.asarray([[0.1, 0.5]])
  d_neg = jnp.asarray([[0.2, 0.9]])
  m = 0.3
  # all_pairs: relu of [0.1-0.2, 0.1-0.9, 0.5-0.2, 0.5-0.9] + 0.3 = [0.2, 0, 0.6, 0] -> mean 0.2
  np.testing.assert_allclose(cl.triplet_loss(d_pos, d_neg, margin=m), [0.2], rtol=1e-6)
  # paired: relu([0.1-0.2, 0.5-0.9] + 0.3) = [0.2, 0] -> 0.1
  np.testing.assert_allclose(cl.triplet_loss(d_pos, d_neg, margin=m, combine="paired"), [0.1],
                             rtol=1e-6)
  # mean_distance: relu(0.3 - 0.55 + 0.3) = 0.05
  np.testing.assert_allclose(cl.triplet_loss(d_pos, d_neg, margin=m, combine="mean_distance"),
                             [0.05], rtol=1e-5)
  with pytest.raises(ValueError, match="combine"):
    cl.triplet_loss(d_pos, d_neg, margin=m, combine="max")
  with pytest.raises(ValueError, match="paired"):
    cl.triplet_loss(d_pos, d_neg[:, :1], margin=m, combine="paired")


def test_appearance_triplet_pulls_to_positives_and_pushes_from_negatives():
  rng = np.random.default_rng(0)
  h = jnp.asarray(rng.uniform(0.4, 0.6, (2, 8, 8, 3)), jnp.float32)
  pos = jnp.stack([h, h], axis=1)  # identical positives: d_pos = 0
  far = jnp.ones((2, 2, 8, 8, 3))  # white negatives: d_neg ~ 0.5 > margin
  near = jnp.stack([h + 0.05, h - 0.05], axis=1)  # close negatives: d_neg = 0.05
  np.testing.assert_allclose(cl.appearance_triplet_loss(h, pos, far), [0.0, 0.0], atol=1e-7)
  np.testing.assert_allclose(cl.appearance_triplet_loss(h, pos, near), [0.25, 0.25], rtol=1e-4)
  # Moving the enhanced image towards the positives lowers the loss: the gradient is not zero.
  g = jax.grad(lambda x: cl.appearance_triplet_loss(x, pos + 0.1, near).sum())(h)
  assert float(jnp.abs(g).sum()) > 0


def _torch_gram(x):  # SCL-LLE Myloss.gram, NCHW
  bs, ch, h, w = x.size()
  f = x.view(bs, ch, w * h)
  return f.bmm(f.transpose(1, 2)) / (ch * h * w)


def test_gram_matrix_and_distance_match_released_torch():
  rng = np.random.default_rng(1)
  f1 = rng.normal(size=(1, 6, 5, 8)).astype(np.float32)  # NHWC
  f2 = rng.normal(size=(1, 6, 5, 8)).astype(np.float32)
  g1, g2 = cl.gram_matrix(jnp.asarray(f1)), cl.gram_matrix(jnp.asarray(f2))
  t1 = _torch_gram(torch.from_numpy(f1.transpose(0, 3, 1, 2)).contiguous())
  t2 = _torch_gram(torch.from_numpy(f2.transpose(0, 3, 1, 2)).contiguous())
  np.testing.assert_allclose(g1, t1.numpy(), rtol=1e-5, atol=1e-7)
  # Two layers, MSELoss(reduction='sum') each, summed (released PerceptualLoss with batch 1).
  ref = 2 * torch.nn.functional.mse_loss(t1, t2, reduction="sum").item()
  np.testing.assert_allclose(cl.gram_distance([g1, g1], [g2, g2]), [ref], rtol=1e-5)


def test_gram_triplet_shapes_and_margin():
  rng = np.random.default_rng(2)
  gh = [jnp.asarray(rng.normal(size=(3, 4, 4)), jnp.float32)]
  gp = [jnp.stack([gh[0], gh[0]], axis=1)]  # identical to the enhanced Grams
  gn = [jnp.stack([gh[0] + 1.0, gh[0] - 1.0], axis=1)]  # d = 16 each
  np.testing.assert_allclose(cl.gram_triplet_loss(gh, gp, gn), np.zeros(3), atol=1e-6)
  np.testing.assert_allclose(cl.gram_triplet_loss(gh, gn, gp), np.full(3, 16.04), rtol=1e-5)


def test_feature_retention_matches_torch_mse():
  rng = np.random.default_rng(3)
  a = rng.normal(size=(2, 3, 4, 5)).astype(np.float32)
  b = rng.normal(size=(2, 3, 4, 5)).astype(np.float32)
  ours = cl.feature_retention_loss(jnp.asarray(a), jnp.asarray(b))
  assert ours.shape == (2,)
  ref = torch.nn.functional.mse_loss(torch.from_numpy(a), torch.from_numpy(b)).item()
  np.testing.assert_allclose(float(ours.mean()), ref, rtol=1e-5)
