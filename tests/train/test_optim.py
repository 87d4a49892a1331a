"""The optimizer recipe matches PyTorch's clip_grad_norm_ + Adam(weight_decay=coupled L2)."""

import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from lowlight_jax.train import optim


def _torch_like_adam(p, grads, *, lr, wd, clip, b1=0.9, b2=0.999, eps=1e-8, clip_first=True):
  """torch: clip_grad_norm_(clip) then Adam(weight_decay=wd), i.e. L2 added to the clipped gradient."""
  m = np.zeros_like(p)
  v = np.zeros_like(p)
  for t, g in enumerate(grads, start=1):
    if not clip_first:
      g = g + wd * p
    norm = np.sqrt(np.sum(g * g))
    g = g * (clip / norm) if norm > clip else g
    if clip_first:
      g = g + wd * p
    m = b1 * m + (1 - b1) * g
    v = b2 * v + (1 - b2) * g * g
    p = p - lr * (m / (1 - b1**t)) / (np.sqrt(v / (1 - b2**t)) + eps)
  return p


def test_coupled_l2_adam_with_clipping_matches_torch_formula():
  cfg = ml_collections.ConfigDict(dict(optimizer="adam", lr=1e-2, weight_decay=0.5, decoupled=False,
                                       clip_norm=0.1, schedule="constant"))
  tx = optim.make_optimizer(cfg, 10)
  rng = np.random.default_rng(0)
  p0 = rng.normal(size=5).astype(np.float64)
  grads = [rng.normal(size=5) for _ in range(4)]
  p, state = jnp.asarray(p0, jnp.float32), tx.init(jnp.asarray(p0, jnp.float32))
  for g in grads:
    updates, state = tx.update(jnp.asarray(g, jnp.float32), state, p)
    p = optax.apply_updates(p, updates)
  want = _torch_like_adam(p0, grads, lr=1e-2, wd=0.5, clip=0.1)
  np.testing.assert_allclose(np.asarray(p), want, rtol=1e-5, atol=1e-6)
  # Decaying before clipping (a plausible mistake) gives a measurably different trajectory.
  wrong = _torch_like_adam(p0, grads, lr=1e-2, wd=0.5, clip=0.1, clip_first=False)
  assert np.max(np.abs(wrong - want)) > 1e-4


def test_unknown_optimizer_is_named():
  cfg = ml_collections.ConfigDict(dict(optimizer="lamb2", lr=1e-3))
  with pytest.raises(ValueError, match="lamb2"):
    optim.make_optimizer(cfg, 10)


def test_linear_decay_is_cyclegans_linear_policy_per_step():
  """CycleGAN's 'linear' policy (constant for the first half, then linearly to zero), per step."""
  cfg = ml_collections.ConfigDict(dict(lr=2e-4, schedule="linear_decay", decay_start=0.5))
  sched = optim.make_schedule(cfg, 100)
  got = np.array([float(sched(s)) for s in (0, 49, 50, 75, 99, 100)])
  np.testing.assert_allclose(got, [2e-4, 2e-4, 2e-4, 1e-4, 2e-4 / 50, 0.0], rtol=1e-6, atol=1e-12)
  with pytest.raises(ValueError, match="decay_start=1.0"):
    optim.make_schedule(ml_collections.ConfigDict(dict(lr=1.0, schedule="linear_decay", decay_start=1.0)), 10)
