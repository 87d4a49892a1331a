"""SegBMN's training loss L_BG (DMGNIE Eq. 3) as a pure function.

Paper: "Daytime-memory guided nighttime image enhancement" (DMGNIE; seed
`000_f6de8f8b0015d52c.txt`), Eq. 3: L_BG = ||Y_BG - Y * M||_1 + alpha ||Y_idt - Y||_1. No reference
code is public; the reading of the first term, the reductions and alpha are ours (documented below).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

DEFAULT_ALPHA = 1.0
BACKGROUND_REDUCTIONS = ("mean", "masked_mean")


def background_loss(background: jax.Array, identity: jax.Array, frames: jax.Array,
                    masks: jax.Array, *, alpha: float = DEFAULT_ALPHA,
                    reduction: str = "mean", eps: float = 1e-6
                    ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Eq. 3: masked background L1 plus alpha times the identity (reconstruction) L1.

  background term = mean over (B, K, H, W, 3) of M_j * |Y_BG - Y_j|;
  identity term   = mean over (B, K, H, W, 3) of |Y_idt_j - Y_j|;
  total           = background term + alpha * identity term.

  Port note: Eq. 3 writes ||Y_BG - Y * M||_1, but Y * M stacks K frames while Y_BG is one image,
  and taken literally (Y_BG compared with the zeroed frames) it would pull the background towards
  0 wherever a frame is foreground. We read it as "the background must match every frame where that
  frame is background": the L1 distance to each frame, weighted by that frame's mask.

  Args:
    background: (B, H, W, 3) Y_BG.
    identity: (B, K, H, W, 3) Y_idt.
    frames: (B, K, H, W, 3) Y.
    masks: (B, K, H, W, 1) (or (B, K, H, W)) M, 1 = background.
    alpha: weight of the identity term. 1.0 (default): the paper gives no value; both terms are
      mean L1 distances between [0, 1] images, so equal weight balances them, and the identity
      branch only exists to make the encoder keep the frames' content.
    reduction: of the background term: 'mean' (default: a plain mean over every element, i.e.
      ||.||_1 of the masked difference normalised by its size, as F.l1_loss; foreground pixels count
      as zeros, so clips with more foreground weigh less) or 'masked_mean' (divide by the number of
      background elements instead: the mean error over background pixels only).
    eps: floor of the 'masked_mean' denominator (all-foreground batches give 0, not NaN).

  Returns:
    (total, {'background': background term, 'identity': identity term}), float32 scalars.
  """
  if reduction not in BACKGROUND_REDUCTIONS:
    raise ValueError(f"unknown reduction {reduction!r}; expected one of {BACKGROUND_REDUCTIONS}")
  if masks.ndim == frames.ndim - 1:
    masks = masks[..., None]
  frames = frames.astype(jnp.float32)
  m = masks.astype(jnp.float32)
  diff = m * jnp.abs(background.astype(jnp.float32)[:, None] - frames)
  if reduction == "mean":
    bg = jnp.mean(diff)
  else:
    count = jnp.sum(jnp.broadcast_to(m, diff.shape))
    bg = jnp.sum(diff) / jnp.maximum(count, eps)
  idt = jnp.mean(jnp.abs(identity.astype(jnp.float32) - frames))
  total = bg + alpha * idt
  return total, {"background": bg, "identity": idt}
