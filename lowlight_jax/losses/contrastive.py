"""SCL-LLE's contrastive triplets with unpaired positives/negatives, and VGG feature retention.

Paper: Liang et al., "Semantically Contrastive Learning for Low-Light Image Enhancement", AAAI 2022,
Eqs. 2-5 (contrastive brightness restoration) and Eq. 8 (feature retention).
Reference code: LingLIx/SCL-LLE (commit 408d89a) `Myloss.py` (`L_con`, `gram`, `PerceptualLoss`,
`perception_loss`) and `train.py` (how they are combined).

Two triplets compare the enhanced image I_H with normal-light positives I_P and under/over-exposed
negatives I_N that come from OTHER scenes (unpaired with I_H and with each other):
  appearance: d = mean |grey(a) - grey(b)| (grey = channel mean), margin beta = 0.3;
  Gram:       d = sum over VGG-16 relu1_2 and relu2_2 of sum((G(a) - G(b))^2), G = F^T F / (C H W),
              margin alpha = 0.04;
  L = max(d(I_H, I_P) - d(I_H, I_N) + margin, 0).

Several positives / negatives per image (`combine`): the paper's triplet has ONE positive and ONE
negative ("a particular case of the contrastive loss when the number of the positive and negative
samples is one") and pairs each positive with "a couple of negative samples". The default
`combine='all_pairs'` therefore forms one Eq.-5 triplet for every (positive, negative) pair of an
image and averages them. `'paired'` uses the k-th positive with the k-th negative only, and
`'mean_distance'` averages the distances before the hinge.

Port note: the released train.py pairs enhanced image i with the i-th sampled positive and negative,
but takes the hinge of BATCH-averaged distances (`max(mean_i d(H_i, P_i) - mean_i d(H_i, N_i) + m,
0)`); our losses are per example (hinge per image), which the trainer averages over the batch.

All functions are pure, take NHWC arrays and return per-example values of shape (B,).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp

APPEARANCE_MARGIN = 0.3
GRAM_MARGIN = 0.04
GRAM_LAYERS = ("relu1_2", "relu2_2")
RETENTION_LAYER = "relu4_3"
COMBINE_MODES = ("all_pairs", "paired", "mean_distance")


def grey(x: jax.Array) -> jax.Array:
  """Channel mean (the released `torch.mean(x, 1)`): (..., H, W, C) -> (..., H, W)."""
  return jnp.mean(x, axis=-1)


def appearance_distance(a: jax.Array, b: jax.Array) -> jax.Array:
  """`L_con`: mean |grey(a) - grey(b)| over the image; (..., H, W, C) -> (...)."""
  if a.shape[-3:-1] != b.shape[-3:-1]:
    raise ValueError(f"appearance distance needs equal image sizes, got {a.shape} and {b.shape}")
  return jnp.mean(jnp.abs(grey(a) - grey(b)), axis=(-2, -1))


def gram_matrix(features: jax.Array, *, precision=jax.lax.Precision.HIGHEST) -> jax.Array:
  """Released `gram`: F F^T / (C H W) per image; (..., H, W, C) -> (..., C, C), float32."""
  f = features.astype(jnp.float32)
  h, w, c = f.shape[-3:]
  f = f.reshape(f.shape[:-3] + (h * w, c))
  return jnp.einsum("...pc,...pd->...cd", f, f, precision=precision) / (c * h * w)


def gram_distance(grams_a: Sequence[jax.Array], grams_b: Sequence[jax.Array]) -> jax.Array:
  """Sum over layers of the summed squared Gram differences (`MSELoss(reduction='sum')`)."""
  if len(grams_a) != len(grams_b):
    raise ValueError(f"need the same layers, got {len(grams_a)} and {len(grams_b)}")
  return sum(jnp.sum(jnp.square(ga - gb), axis=(-2, -1)) for ga, gb in zip(grams_a, grams_b))


def triplet_loss(d_pos: jax.Array, d_neg: jax.Array, *, margin: float, combine: str = "all_pairs"
                 ) -> jax.Array:
  """Triplet hinge over K positive and L negative distances per example.

  Args:
    d_pos: (B, K) distances d(I_H, I_P_k).
    d_neg: (B, L) distances d(I_H, I_N_l).
    margin: the triplet margin.
    combine: 'all_pairs' (mean over all K*L triplets), 'paired' (k-th with k-th, needs K == L) or
      'mean_distance' (hinge of the mean distances); see the module docstring.

  Returns:
    (B,) losses.
  """
  if d_pos.ndim != 2 or d_neg.ndim != 2:
    raise ValueError(f"expected (B, K) and (B, L) distances, got {d_pos.shape} and {d_neg.shape}")
  if combine == "all_pairs":
    return jnp.mean(jax.nn.relu(d_pos[:, :, None] - d_neg[:, None, :] + margin), axis=(1, 2))
  if combine == "paired":
    if d_pos.shape != d_neg.shape:
      raise ValueError(
          f"'paired' needs as many positives as negatives, got {d_pos.shape} and {d_neg.shape}")
    return jnp.mean(jax.nn.relu(d_pos - d_neg + margin), axis=1)
  if combine == "mean_distance":
    return jax.nn.relu(jnp.mean(d_pos, axis=1) - jnp.mean(d_neg, axis=1) + margin)
  raise ValueError(f"combine must be one of {COMBINE_MODES}, got {combine!r}")


def appearance_triplet_loss(enhanced: jax.Array, positives: jax.Array, negatives: jax.Array, *,
                            margin: float = APPEARANCE_MARGIN,
                            combine: str = "all_pairs") -> jax.Array:
  """Appearance triplet on grey maps.

  Args:
    enhanced: (B, H, W, 3) I_H.
    positives: (B, K, H, W, 3) normal-light images (unpaired).
    negatives: (B, L, H, W, 3) under/over-exposed images (unpaired).
    margin: beta (0.3 in the paper and the released code).
    combine: see `triplet_loss`.

  Returns:
    (B,) losses.
  """
  d_pos = appearance_distance(enhanced[:, None], positives)
  d_neg = appearance_distance(enhanced[:, None], negatives)
  return triplet_loss(d_pos, d_neg, margin=margin, combine=combine)


def gram_triplet_loss(enhanced_grams: Sequence[jax.Array], positive_grams: Sequence[jax.Array],
                      negative_grams: Sequence[jax.Array], *, margin: float = GRAM_MARGIN,
                      combine: str = "all_pairs") -> jax.Array:
  """Gram (texture) triplet from precomputed Gram matrices, one entry per VGG layer.

  Args:
    enhanced_grams: per layer (B, C, C).
    positive_grams: per layer (B, K, C, C).
    negative_grams: per layer (B, L, C, C).
    margin: alpha (0.04).
    combine: see `triplet_loss`.

  Returns:
    (B,) losses.
  """
  eg = [g[:, None] for g in enhanced_grams]
  d_pos = gram_distance(eg, positive_grams)
  d_neg = gram_distance(eg, negative_grams)
  return triplet_loss(d_pos, d_neg, margin=margin, combine=combine)


def feature_retention_loss(features_input: jax.Array, features_enhanced: jax.Array) -> jax.Array:
  """Eq. 8 / released `perception_loss`: per-example MSE between VGG relu4_3 maps."""
  d = features_input.astype(jnp.float32) - features_enhanced.astype(jnp.float32)
  return jnp.mean(jnp.square(d), axis=tuple(range(1, d.ndim)))
