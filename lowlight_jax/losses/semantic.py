"""Semantic losses driven by a frozen segmentation network.

Paper: Zheng & Gupta, "Semantic-Guided Zero-Shot Learning for Low-Light Image/Video Enhancement"
(WACV-W 2022), Eq. 6. Reference code: ShenZheng2000/Semantic-Guided-Low-Light-Image-Enhancement
`modeling/fpn.py` (`FocalLoss`, `get_NoGT_target`) and `train.py` (`get_seg_loss`).
"""

import jax
import jax.numpy as jnp

_EPS = 1e-7


def focal_loss(logits: jax.Array, *, gamma: float = 2.0, beta: float = 1.0) -> jax.Array:
  """Label-free focal loss of SGZ: per-example mean over pixels of `-beta (1 - p)^gamma log p`.

  The target is the network's own argmax (detached, as `get_NoGT_target(...).data`), `p` its softmax
  probability, clamped to [1e-7, 1 - 1e-7] as released (the clamp also zeroes the gradient outside).

  Args:
    logits: (B, H, W, K) class logits (NHWC; any spatial size).
    gamma: focusing exponent (2 in SGZ).
    beta: weight (1 in SGZ).

  Returns:
    (B,) per-example losses; their mean equals the released `FocalLoss(gamma)` value.
  """
  logits = logits.astype(jnp.float32)
  target = jax.lax.stop_gradient(jnp.argmax(logits, axis=-1))
  probs = jax.nn.softmax(logits, axis=-1)
  p = jnp.take_along_axis(probs, target[..., None], axis=-1)[..., 0]
  p = jnp.clip(p, _EPS, 1.0 - _EPS)
  loss = -beta * jnp.power(1.0 - p, gamma) * jnp.log(p)
  return loss.reshape(loss.shape[0], -1).mean(axis=1)
