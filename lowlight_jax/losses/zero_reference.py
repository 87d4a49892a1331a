"""Zero-reference losses of Zero-DCE and SGZ, in their released forms (paper forms selectable).

Papers: Guo et al., "Zero-Reference Deep Curve Estimation for Low-Light Image Enhancement"
(CVPR 2020); Zheng & Gupta, "Semantic-Guided Zero-Shot Learning for Low-Light Image/Video
Enhancement" (WACV-W 2022). Reference code:
ShenZheng2000/Semantic-Guided-Low-Light-Image-Enhancement `Myloss.py` (`L_TV`, `L_spa8`, `L_color`,
`L_exp`) and Li-Chongyi/Zero-DCE `Myloss.py` (`L_spa`).

Every loss takes NHWC arrays and returns per-example values of shape (B,); their batch mean equals
the released (batch-reduced) value. `reduce` does the batch reduction. Fixed filters are constants.
"""

import jax
import jax.numpy as jnp

_EPS_PAPER = 1e-6


def reduce(values: jax.Array, *, reduction: str = "mean",
           weights: jax.Array | None = None) -> jax.Array:
  """Reduces per-example losses: 'mean' (weighted mean if `weights`), 'sum' or 'none'."""
  if weights is not None:
    values = values * weights
  if reduction == "none":
    return values
  if reduction == "sum":
    return values.sum()
  if reduction == "mean":
    return values.sum() / weights.sum() if weights is not None else values.mean()
  raise ValueError(f"unknown reduction {reduction!r}")


def _avg_pool(x: jax.Array, patch: int) -> jax.Array:
  """`nn.AvgPool2d(patch)` on (B, H, W): non-overlapping, trailing rows/columns dropped."""
  b, h, w = x.shape
  hh, ww = h // patch, w // patch
  x = x[:, :hh * patch, :ww * patch].reshape(b, hh, patch, ww, patch)
  return x.mean(axis=(2, 4))


def _safe_sqrt(v: jax.Array) -> jax.Array:
  """sqrt with a zero (not NaN) gradient at 0."""
  pos = v > 0
  return jnp.where(pos, jnp.sqrt(jnp.where(pos, v, 1.0)), 0.0)


def tv_loss(x_r: jax.Array) -> jax.Array:
  """Released `L_TV` (before its 1600 weight): `2 * (sum dh^2 / ((H-1) W) + sum dw^2 / (H (W-1)))`.

  Sums run over channels too, and the released value divides the batch sum by B: the per-example
  value here keeps the factor 2 so that its batch mean is the released value.

  Port note: the paper's Eq. 5 normalises by C*H*W and has no factor 2.
  """
  _, h, w, _ = x_r.shape
  dh = jnp.square(x_r[:, 1:] - x_r[:, :-1]).sum(axis=(1, 2, 3))
  dw = jnp.square(x_r[:, :, 1:] - x_r[:, :, :-1]).sum(axis=(1, 2, 3))
  return 2.0 * (dh / ((h - 1) * w) + dw / (h * (w - 1)))


# (dy, dx) offsets of the neighbour each fixed kernel of `L_spa8` subtracts, and their weights.
_ADJACENT = ((0, -1), (0, 1), (-1, 0), (1, 0))  # left, right, up, down
_DIAGONAL = ((-1, -1), (-1, 1), (1, -1), (1, 1))  # upper-left, upper-right, lower-left, lower-right


def _neighbour_differences(p: jax.Array, offsets) -> list[jax.Array]:
  """`p[i, j] - p[i+dy, j+dx]` with zero padding, as the released 3x3 conv kernels (padding 1)."""
  h, w = p.shape[1:]
  padded = jnp.pad(p, ((0, 0), (1, 1), (1, 1)))
  return [p - padded[:, 1 + dy:1 + dy + h, 1 + dx:1 + dx + w] for dy, dx in offsets]


def spatial_consistency_loss(enhanced: jax.Array, low: jax.Array, *, patch: int = 4,
                             diagonal: bool = True, abs_gradients: bool = False) -> jax.Array:
  """Spatial consistency: released SGZ `L_spa8(patch)` (diagonal=True) or Zero-DCE `L_spa` (False).

  Channel means, `patch` x `patch` average pooling, differences to the 4 adjacent (and, with
  `diagonal`, the 4 diagonal neighbours weighted 0.5) with zero padding at the border; the squared
  difference of those gradients between the two images, averaged over the pooled map.

  Port note: the released code squares `D_low - D_enhanced` without absolute values; the paper's
  Eq. 2 squares `|D_enhanced| - |D_low|`. `abs_gradients=True` selects the paper form.
  """
  pe = _avg_pool(enhanced.mean(axis=-1), patch)
  pl = _avg_pool(low.mean(axis=-1), patch)
  offsets = _ADJACENT + (_DIAGONAL if diagonal else ())
  weights = (1.0,) * 4 + (0.5,) * (4 if diagonal else 0)
  total = 0.0
  for wgt, de, dl in zip(weights, _neighbour_differences(pe, offsets),
                         _neighbour_differences(pl, offsets)):
    if abs_gradients:
      de, dl = jnp.abs(de), jnp.abs(dl)
    total = total + wgt * jnp.square(dl - de)
  return total.mean(axis=(1, 2))


def color_constancy_loss(enhanced: jax.Array, *, paper_form: bool = False,
                         eps: float = _EPS_PAPER) -> jax.Array:
  """Colour constancy on the per-image channel means mr, mg, mb.

  Released (`paper_form=False`): `sqrt((mr-mg)^4 + (mr-mb)^4 + (mb-mg)^4)` (the code squares twice;
  its eps is 0, so the sqrt gets a zero gradient at 0 here instead of NaN).
  Paper Eq. 3 (`paper_form=True`): Charbonnier `sum_pairs sqrt((mi - mj)^2 + eps^2)`, eps = 1e-6.
  """
  m = enhanced.mean(axis=(1, 2))
  mr, mg, mb = m[:, 0], m[:, 1], m[:, 2]
  d_rg, d_rb, d_gb = mr - mg, mr - mb, mb - mg
  if paper_form:
    return sum(jnp.sqrt(jnp.square(d) + eps**2) for d in (d_rg, d_rb, d_gb))
  return _safe_sqrt(jnp.square(jnp.square(d_rg)) + jnp.square(jnp.square(d_rb))
                    + jnp.square(jnp.square(d_gb)))


def exposure_loss(enhanced: jax.Array, *, patch: int = 16, level: float = 0.6,
                  squared: bool = True) -> jax.Array:
  """Exposure control: `mean((avgpool_patch(mean_c(Y)) - level)^2)` as released.

  Port note: the paper's Eq. 4 (SGZ "brightness loss") uses |.|, not the square: `squared=False`.
  """
  d = _avg_pool(enhanced.mean(axis=-1), patch) - level
  return (jnp.square(d) if squared else jnp.abs(d)).mean(axis=(1, 2))
