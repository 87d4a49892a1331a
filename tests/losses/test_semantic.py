"""SGZ label-free focal loss (lowlight_jax/losses/semantic.py)."""

import jax
import jax.numpy as jnp
import numpy as np

from lowlight_jax.losses import semantic


def test_hand_value():
  # p = 3/4 for the argmax class: -(1/4)^2 log(3/4); the second pixel: p = 1/2, -(1/2)^2 log(1/2).
  logits = jnp.asarray([[0.0, np.log(3.0)], [1.0, 1.0]]).reshape(1, 1, 2, 2)
  want = 0.5 * (-(0.25**2) * np.log(0.75) - 0.25 * np.log(0.5))
  np.testing.assert_allclose(np.asarray(semantic.focal_loss(logits)), [want], rtol=1e-6)
  np.testing.assert_allclose(np.asarray(semantic.focal_loss(logits, gamma=0.0, beta=2.0)),
                             [2 * 0.5 * (-np.log(0.75) - np.log(0.5))], rtol=1e-6)


def test_clamp_and_detached_target():
  # A confident pixel: p clamps to 1 - 1e-7 and the loss is ~0, with a zero gradient (clamped).
  confident = jnp.asarray([40.0, 0.0, 0.0]).reshape(1, 1, 1, 3)
  assert float(semantic.focal_loss(confident)[0]) < 1e-12
  grad = jax.jit(jax.grad(lambda v: semantic.focal_loss(v).sum()))(confident)
  assert float(jnp.abs(grad).sum()) == 0.0
  # The gradient flows through p only (target fixed): it matches the fixed-target expression.
  z = jnp.asarray(np.random.default_rng(0).normal(size=(2, 3, 4, 5)).astype(np.float32))
  target = jnp.argmax(z, -1)

  def fixed(v):
    p = jnp.take_along_axis(jax.nn.softmax(v, -1), target[..., None], -1)[..., 0]
    return (-(1 - p)**2 * jnp.log(p)).mean()

  g = jax.jit(jax.grad(lambda v: semantic.focal_loss(v).mean()))(z)
  np.testing.assert_allclose(np.asarray(g), np.asarray(jax.jit(jax.grad(fixed))(z)), atol=1e-7)


def test_matches_authors_focal(conformance_dir):
  io = np.load(conformance_dir / "fixtures/sgz_fpn_head_io.npz")
  logits = jnp.asarray(io["logits_nchw"].transpose(0, 2, 3, 1))
  per_example = semantic.focal_loss(logits, gamma=2.0)
  assert per_example.shape == (2,)
  np.testing.assert_allclose(float(per_example.mean()), float(io["focal_loss_gamma2"]), rtol=1e-5)
