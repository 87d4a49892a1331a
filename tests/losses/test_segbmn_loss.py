"""SegBMN loss L_BG (DMGNIE Eq. 3, lowlight_jax.losses.segbmn)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lowlight_jax.losses import segbmn


def _inputs():
  # B = 1, K = 2, H = 1, W = 2; every channel of a pixel equal, for hand arithmetic.
  background = np.array([0.5, 0.2], np.float32).reshape(1, 1, 2, 1) * np.ones((1, 1, 1, 3))
  frames = np.array([[0.7, 0.9],    # frame 0
                     [0.4, 0.2]],   # frame 1
                    np.float32).reshape(1, 2, 1, 2, 1) * np.ones((1, 1, 1, 1, 3))
  masks = np.array([[1, 0],
                    [1, 1]], np.float32).reshape(1, 2, 1, 2, 1)
  identity = frames + np.array([0.1, -0.3], np.float32).reshape(1, 2, 1, 1, 1)
  return (jnp.asarray(background, jnp.float32), jnp.asarray(identity, jnp.float32),
          jnp.asarray(frames, jnp.float32), jnp.asarray(masks))


def test_known_value_mean_reduction():
  background, identity, frames, masks = _inputs()
  total, terms = segbmn.background_loss(background, identity, frames, masks, alpha=0.5)
  # M * |Y_BG - Y_j| per (frame, pixel): frame 0: |0.5-0.7|*1, |0.2-0.9|*0 (foreground);
  # frame 1: |0.5-0.4|*1, |0.2-0.2|*1. Mean over 4 positions (x 3 equal channels).
  bg = (0.2 + 0.0 + 0.1 + 0.0) / 4
  idt = (0.1 + 0.1 + 0.3 + 0.3) / 4
  np.testing.assert_allclose(terms["background"], bg, atol=1e-6)
  np.testing.assert_allclose(terms["identity"], idt, atol=1e-6)
  np.testing.assert_allclose(total, bg + 0.5 * idt, atol=1e-6)
  # Default alpha is 1.
  total_default, _ = segbmn.background_loss(background, identity, frames, masks)
  np.testing.assert_allclose(total_default, bg + idt, atol=1e-6)


def test_masked_mean_reduction_and_3d_masks():
  background, identity, frames, masks = _inputs()
  _, terms = segbmn.background_loss(background, identity, frames, masks[..., 0],
                                    reduction="masked_mean")
  np.testing.assert_allclose(terms["background"], (0.2 + 0.1 + 0.0) / 3, atol=1e-6)
  _, empty = segbmn.background_loss(background, identity, frames, jnp.zeros_like(masks),
                                    reduction="masked_mean")
  assert float(empty["background"]) == 0.0


def test_foreground_content_has_no_influence():
  background, identity, frames, masks = _inputs()

  def bg_term(b, f):
    return segbmn.background_loss(b, identity, f, masks)[1]["background"]

  # Frame 0's foreground pixel (0.9) may be anything: neither the value nor the gradient changes.
  other = frames.at[0, 0, 0, 1].set(0.0)
  np.testing.assert_allclose(bg_term(background, other), bg_term(background, frames), atol=1e-7)
  np.testing.assert_allclose(jax.grad(bg_term)(background, other),
                             jax.grad(bg_term)(background, frames), atol=1e-7)
  # A background equal to every frame where that frame is background costs nothing, although
  # frame 0 is foreground at pixel 1 (the literal |Y_BG - Y*M| would charge |0.2 - 0| there).
  target = jnp.asarray(np.array([0.6, 0.2], np.float32).reshape(1, 1, 2, 1) * np.ones((1, 1, 1, 3)))
  frames_bg = frames.at[0, :, 0, 0].set(0.6)
  _, terms = segbmn.background_loss(target, frames_bg, frames_bg, masks)
  assert float(terms["background"]) == 0.0 and float(terms["identity"]) == 0.0


def test_unknown_reduction():
  with pytest.raises(ValueError):
    segbmn.background_loss(*_inputs(), reduction="sum")
