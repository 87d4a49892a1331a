"""SKF's semantic-guided adversarial (SA) losses: least-squares GAN, global and local terms.

Paper: Wu et al., "Learning Semantic-Aware Knowledge Guidance for Low-Light Image Enhancement",
CVPR 2023, Sec. 3.4, Eqs. 11-14. Reference code:
langmanbusi/Semantic-Aware-Low-Light-Image-Enhancement `DRBN_SKF/src/model/D_Net.py`
(`calculate_loss_D`, `calculate_loss_G`), `SNR_SKF/models/D_Net.py` (`calculate_loss_D` with the
mean over regions), `DRBN_SKF/src/trainer_seg_hist_fuse.py` (how they are called).

Discriminator loss (targets 1 real, 0 fake; squared errors):
  L_D = 0.9 (global_fake + global_real) / 2 + 0.1 (region_fake + region_real) / 2,
global terms on whole images, region terms on images multiplied by the probability maps of the
top classes by total probability mass (`num_regions` = 2), the "worst" region (largest loss) per
term (DRBN) or the mean over regions (SNR, `region_reduction='mean'`). Generator loss:
  L_G = (D(cat(fake, semantic map)) - 1)^2.

The discriminator enters as `d_apply(x) -> (B, 1) scores`, x NHWC with 3 channels (an image or a
masked region) or 3 + K (an image with its semantic map). Each D input is a separate call, as
released, so train-mode BatchNorm normalises every call with its own batch (the released D is
always in train mode). The functions are pure: a method can run the generator once and use its
output in both updates (pass `jax.lax.stop_gradient(fake)` to `discriminator_loss` if it
differentiates with respect to more than D's parameters). All losses are per example, (B,); their
batch mean is the released `MSELoss` value.

Released defects, fixed here, each with a switch that reproduces the released values:
  (a) `released_mask_aliasing`: `max_2_seg = max_1_seg` makes the two region masks one tensor,
      written with the top-1 class map and then overwritten with the top-2 map: both regions are
      the top-2 class, and the top-1 class never reaches the loss.
  (b) `released_global_without_semantics`: the released D update feeds only 3-channel images (its
      `conv1` stem), while `calculate_loss_G` feeds cat(out, seg_map), which the channel dispatch
      sends through `conv0`: the generator's adversarial gradient comes from a stem that the D
      optimiser never trains (random since D's construction). Here the global terms of the D
      update see the image with the semantic map, as the paper's Eq. 13 concatenates them, so the
      generator is judged by the stem D trains. The generator loss is the same in both modes.
  (c) The released trainer rebuilds D and its Adam state at the start of every epoch (so D is
      never older than one epoch and always in train mode). That is the trainer's business, not
      these functions': in this codebase D and its optimiser state persist across epochs; a method
      config switch `released_reinit_every_epoch` is to bring the re-initialisation back.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

DApply = Callable[[jax.Array], jax.Array]
LAMBDA_GLOBAL = 0.9
REGION_REDUCTIONS = ("worst", "mean")


def _sq(scores: jax.Array, target: float) -> jax.Array:
  """Per-example squared error of (B, 1) scores (the terms of `nn.MSELoss`)."""
  scores = scores.astype(jnp.float32)
  return jnp.mean(jnp.square(scores - target), axis=tuple(range(1, scores.ndim)))


def top_class_maps(seg_map: jax.Array, *, num_regions: int = 2,
                   released_mask_aliasing: bool = False) -> tuple[jax.Array, jax.Array]:
  """Probability maps of the classes with the largest total mass, one region per map.

  Args:
    seg_map: (B, H, W, K) softmax map.
    num_regions: R, how many top classes (2 as released).
    released_mask_aliasing: reproduce defect (a): every region gets the LAST (R-th) class's map,
      as the released loop overwrites one aliased tensor.

  Returns:
    (maps (B, H, W, R), classes (B, R) int32), top-1 first. Ranking is by `sum over pixels`; ties go
    to the lower class index (the released argmax-then-zero gives the same order).
  """
  mass = jnp.sum(seg_map.astype(jnp.float32), axis=(1, 2))  # (B, K)
  _, classes = jax.lax.top_k(jax.lax.stop_gradient(mass), num_regions)
  classes = classes.astype(jnp.int32)
  if released_mask_aliasing:
    classes = jnp.repeat(classes[:, -1:], num_regions, axis=1)
  maps = jnp.take_along_axis(seg_map, classes[:, None, None, :], axis=-1)
  return maps, classes


def _with_semantics(images: jax.Array, seg_map: jax.Array) -> jax.Array:
  return jnp.concatenate([images, seg_map.astype(images.dtype)], axis=-1)


def discriminator_loss(d_apply: DApply, real: jax.Array, fake: jax.Array, seg_map: jax.Array, *,
                       real_seg_map: jax.Array | None = None, num_regions: int = 2,
                       region_reduction: str = "worst", lambda_global: float = LAMBDA_GLOBAL,
                       released_mask_aliasing: bool = False,
                       released_global_without_semantics: bool = False,
                       with_aux: bool = False) -> Any:
  """The SA discriminator loss per example.

  Args:
    d_apply: x (B, H, W, 3 or 3 + K) -> (B, 1) scores in (0, 1).
    real: (B, H, W, 3) ground truth.
    fake: (B, H, W, 3) enhanced output (stop its gradient if D's parameters are all you train).
    seg_map: (B, H, W, K) softmax map of the enhanced output (the released trainer segments
      `phr1`); it picks the regions, and joins `fake` in the global term.
    real_seg_map: the map that joins `real` in the global term; defaults to `seg_map` (the
      released trainer computes no map of the ground truth). Unused with
      `released_global_without_semantics`.
    num_regions: number of top classes (2).
    region_reduction: 'worst' (DRBN-SKF: per term, the region with the largest loss) or 'mean'
      (SNR-SKF: the mean over regions).
    lambda_global: weight of the global terms (0.9); the regions get 1 - lambda_global.
    released_mask_aliasing: defect (a), see the module docstring.
    released_global_without_semantics: defect (b): global terms on the plain images.
    with_aux: also return a dict of the D scores, per-region losses and chosen classes.

  Returns:
    (B,) losses, or (losses, aux) with `with_aux`.

  Port note: the released 'worst' chain compares batch-mean losses and picks one region for the
  whole batch (falling through to region 2 on ties); here each example takes its own worst region,
  the paper's "worst patch". With aliased masks both regions are equal and the values coincide.
  """
  if region_reduction not in REGION_REDUCTIONS:
    raise ValueError(f"region_reduction must be one of {REGION_REDUCTIONS}, "
                     f"got {region_reduction!r}")
  if real.shape != fake.shape or fake.shape[:3] != seg_map.shape[:3]:
    raise ValueError(f"shapes differ: real {real.shape}, fake {fake.shape}, seg_map "
                     f"{seg_map.shape}")
  if released_global_without_semantics:
    global_fake_in, global_real_in = fake, real
  else:
    real_map = seg_map if real_seg_map is None else real_seg_map
    global_fake_in, global_real_in = _with_semantics(fake, seg_map), _with_semantics(real, real_map)
  maps, classes = top_class_maps(seg_map, num_regions=num_regions,
                                 released_mask_aliasing=released_mask_aliasing)

  # Released call order: D(fake), D(real), D(fake * m_r) for all r, D(real * m_r) for all r.
  s_fake = d_apply(global_fake_in)
  s_real = d_apply(global_real_in)
  n_calls = 1 if released_mask_aliasing else num_regions  # aliased regions are one region
  s_fake_r = [d_apply(fake * maps[..., r:r + 1].astype(fake.dtype)) for r in range(n_calls)]
  s_real_r = [d_apply(real * maps[..., r:r + 1].astype(real.dtype)) for r in range(n_calls)]
  s_fake_r = jnp.stack(s_fake_r * (num_regions // n_calls), axis=1)  # (B, R, 1)
  s_real_r = jnp.stack(s_real_r * (num_regions // n_calls), axis=1)

  g_fake, g_real = _sq(s_fake, 0.0), _sq(s_real, 1.0)
  r_fake = jnp.square(s_fake_r.astype(jnp.float32) - 0.0).mean(axis=-1)  # (B, R)
  r_real = jnp.square(s_real_r.astype(jnp.float32) - 1.0).mean(axis=-1)
  if region_reduction == "worst":
    l_fake, l_real = r_fake.max(axis=1), r_real.max(axis=1)
  else:
    l_fake, l_real = r_fake.mean(axis=1), r_real.mean(axis=1)
  loss = lambda_global * (g_fake + g_real) / 2 + (1 - lambda_global) * (l_fake + l_real) / 2
  if not with_aux:
    return loss
  aux = {"scores": {"fake": s_fake, "real": s_real, "fake_regions": s_fake_r,
                    "real_regions": s_real_r},
         "global_fake": g_fake, "global_real": g_real, "region_fake": r_fake,
         "region_real": r_real, "classes": classes}
  return loss, aux


def generator_loss(d_apply: DApply, fake: jax.Array, seg_map: jax.Array) -> jax.Array:
  """The SA generator loss per example: (D(cat(fake, seg_map)) - 1)^2.

  Args:
    d_apply: the discriminator (after its update, as released).
    fake: (B, H, W, 3) enhanced output.
    seg_map: (B, H, W, K) its softmax map. The released trainer does not detach it, so the
      generator also receives gradient through the frozen segmentation network; stop it to avoid.

  Returns:
    (B,) losses (the released trainer weighs their mean by 0.1).

  The same in both modes: with `released_global_without_semantics` it is exactly the released
  `calculate_loss_G`, whose `conv0` stem the D loss never trains (defect (b)); without it, the D
  loss trains that stem.
  """
  return _sq(d_apply(_with_semantics(fake, seg_map)), 1.0)
