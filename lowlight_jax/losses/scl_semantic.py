"""SCL-LLE's semantic losses: brightness consistency within classes; segmentation cross-entropy.

Paper: Liang et al., "Semantically Contrastive Learning for Low-Light Image Enhancement", AAAI 2022,
Eqs. 6-7.
Reference code: LingLIx/SCL-LLE (commit 408d89a) `Myloss.py::L_segexp` and `train.py` (the
cross-entropy of the frozen DeepLabV3+ on the enhanced image).

L_sc = sum_s sum_{i in class s} (B_i - B_s)^2 - sum_s p_s log q_s, with B the brightness (channel
mean) of the enhanced image, B_s the mean brightness of class s (ground-truth labels), and q the
segmentation network's prediction on the enhanced image.

What we implement (per image, per class, with gradient through B_s; normalised by the image's pixel
count so the term has the scale of the released mean) and what the released code does (selectable
with `released_semantic_brightness`, see that function) differ; see the `# Port note:`s below.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

IGNORE_INDEX = 255
# `for i in range(35)` in L_segexp: the Cityscapes label ids, although the labels are train ids.
RELEASED_LABEL_RANGE = 35


def brightness(x: jax.Array) -> jax.Array:
  """Per-pixel brightness: channel mean (released `torch.mean(x, 1)`); (B, H, W, C) -> (B, H, W)."""
  return jnp.mean(x.astype(jnp.float32), axis=-1)


def semantic_brightness_consistency(enhanced: jax.Array, labels: jax.Array, *,
                                    num_classes: int = 19,
                                    ignore_index: int = IGNORE_INDEX) -> jax.Array:
  """Eqs. 6-7, first term, per image: squared deviations from the class-mean brightness, summed.

  Args:
    enhanced: (B, H, W, 3) enhanced image.
    labels: (B, H, W) integer class ids in [0, num_classes); `ignore_index` (and any other id
      outside that range) marks unlabelled pixels, which belong to no class.
    num_classes: number of classes.
    ignore_index: unlabelled id.

  Returns:
    (B,) losses: sum_s sum_{i in s} (B_i - B_s)^2 / (H W).

  Port note: the class means B_s are computed per image and keep their gradient (the paper's Eq. 6).
  The released `L_segexp` detaches them, takes "the mean" over ALL pixels (class pixels plus zeros)
  instead of the class, and broadcasts every label map over every image of the batch; see
  `released_semantic_brightness`. The paper's Eq. 7 is an unnormalised sum; dividing by H*W keeps
  the released mean's scale (weight 1).
  """
  del ignore_index  # Anything outside [0, num_classes) is unlabelled.
  b = brightness(enhanced)
  h, w = b.shape[1:]
  onehot = (labels[..., None] == jnp.arange(num_classes)).astype(jnp.float32)  # (B, H, W, S)
  counts = onehot.sum(axis=(1, 2))
  sums = jnp.einsum("bhw,bhws->bs", b, onehot, precision=jax.lax.Precision.HIGHEST)
  means = sums / jnp.maximum(counts, 1.0)
  pixel_mean = jnp.einsum("bhws,bs->bhw", onehot, means, precision=jax.lax.Precision.HIGHEST)
  labelled = onehot.sum(axis=-1)  # 1 for pixels of some class, 0 otherwise
  return jnp.sum(labelled * jnp.square(b - pixel_mean), axis=(1, 2)) / (h * w)


def released_semantic_brightness(enhanced: jax.Array, labels: jax.Array, *,
                                 num_label_ids: int = RELEASED_LABEL_RANGE) -> jax.Array:
  """The released `L_segexp(enhanced, labels)`, bug for bug; returns a scalar for the whole batch.

  For each id i < 35: `a2 = where(y == i, x, 0)` with x (B,1,H,W) and y (B,H,W), which BROADCASTS to
  (B, B, H, W) (image j's brightness under image k's labels); `d2 = mean(a2)` over everything, i.e.
  the class SUM divided by all B*B*H*W entries (not the class mean), and used detached; zeros
  (non-class pixels, and class pixels of brightness exactly 0) are replaced by d2; `d += mean((a2 -
  d2)^2)`.
  """
  x = brightness(enhanced)[:, None]  # (B, 1, H, W)
  y = labels[None]  # (1, B, H, W) as torch broadcasts (B, H, W) against (B, 1, H, W)
  total = jnp.zeros((), jnp.float32)
  for i in range(num_label_ids):
    a2 = jnp.where(y == i, x, 0.0)
    d2 = jax.lax.stop_gradient(jnp.mean(a2))
    a2 = jnp.where(a2 == 0, d2, a2)
    total = total + jnp.mean(jnp.square(a2 - d2))
  return total


def segmentation_cross_entropy(logits: jax.Array, labels: jax.Array, *,
                               ignore_index: int = IGNORE_INDEX) -> jax.Array:
  """Pixel-wise softmax cross-entropy per image, averaged over its labelled pixels (0 if none).

  Args:
    logits: (B, H, W, S) segmentation logits of the enhanced image.
    labels: (B, H, W) ids in [0, S) or `ignore_index`.
    ignore_index: unlabelled id (255 for Cityscapes train ids).

  Returns:
    (B,) losses.

  Port note: torch's `CrossEntropyLoss(ignore_index=255)` in the released train.py averages over the
    labelled
  pixels of the whole batch; per image, then the batch mean, weighs images equally instead.
  """
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  valid = (labels != ignore_index) & (labels >= 0) & (labels < logits.shape[-1])
  safe = jnp.where(valid, labels, 0)
  nll = -jnp.take_along_axis(logp, safe[..., None], axis=-1)[..., 0]
  count = valid.sum(axis=(1, 2))
  return jnp.where(valid, nll, 0.0).sum(axis=(1, 2)) / jnp.maximum(count, 1)
