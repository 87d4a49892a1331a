"""Classical background models and motion masks (lowlight_jax.ops.background)."""

import numpy as np
import pytest

from lowlight_jax.ops import background


def _psnr(a, b) -> float:
  mse = np.mean((np.asarray(a, np.float64) - b) ** 2)
  return float(10 * np.log10(1.0 / max(mse, 1e-12)))  # exact recovery reads 120 dB


def _clip_with_blobs(rng, *, k=40, h=24, w=32, size=4, static_fraction=0.0):
  """Textured constant background + one bright moving blob per frame (+ an optional blob that sits
  still in the first `static_fraction` of the frames). Returns (frames, true masks, background)."""
  bg = rng.uniform(0.2, 0.6, (h, w, 3)).astype(np.float32)
  frames = np.repeat(bg[None], k, axis=0)
  masks = np.ones((k, h, w), np.float32)
  for j in range(k):
    if j < int(static_fraction * k):
      frames[j, 5:11, 5:11] = 0.95
      masks[j, 5:11, 5:11] = 0
    y, x = rng.integers(0, h - size), rng.integers(0, w - size)
    frames[j, y:y + size, x:x + size] = 1.0
    masks[j, y:y + size, x:x + size] = 0
  return frames, masks, bg


def test_temporal_median_exact():
  frames = np.array([0.1, 0.9, 0.3, 0.5, 0.2], np.float32).reshape(5, 1, 1, 1)
  frames = np.broadcast_to(frames, (5, 2, 1, 3)).copy()
  frames[:, 1, 0, 2] = [0.0, 1.0, 0.7, 0.6, 0.4]
  out = background.temporal_median(frames)
  assert out.shape == (2, 1, 3)
  np.testing.assert_allclose(out[0, 0], [0.3, 0.3, 0.3], atol=1e-7)
  np.testing.assert_allclose(out[1, 0], [0.3, 0.3, 0.6], atol=1e-7)
  # Even K: mean of the two middle values.
  np.testing.assert_allclose(background.temporal_median(frames[:4])[0, 0, 0], 0.4, atol=1e-7)


def test_masked_median_exact_and_fallback():
  # Three pixels, four frames, one channel.
  values = np.array([[0.1, 0.2, 0.3],
                     [0.9, 0.4, 0.5],
                     [0.8, 0.6, 0.7],
                     [0.7, 0.8, 0.2]], np.float32)
  masks = np.array([[1, 0, 0],
                    [0, 1, 0],
                    [0, 1, 0],
                    [1, 1, 0]], np.float32)  # pixel 2: never background
  frames = values.reshape(4, 1, 3, 1)
  out = background.masked_median(frames, masks.reshape(4, 1, 3))
  # pixel 0: median(0.1, 0.7) = 0.4; pixel 1: median(0.4, 0.6, 0.8) = 0.6;
  # pixel 2: plain median(0.3, 0.5, 0.7, 0.2) = 0.4.
  np.testing.assert_allclose(out.reshape(3), [0.4, 0.6, 0.4], atol=1e-6)
  # A (K, H, W, 1) mask is the same thing; all-background masks give the temporal median.
  np.testing.assert_allclose(background.masked_median(frames, masks.reshape(4, 1, 3, 1)), out)
  np.testing.assert_allclose(background.masked_median(frames, np.ones((4, 1, 3))),
                             background.temporal_median(frames))


def test_ialm_recovers_low_rank_plus_sparse_matrix():
  rng = np.random.default_rng(1)
  m, n, r = 120, 60, 2
  low = rng.normal(size=(m, r)) @ rng.normal(size=(r, n))
  sparse = np.where(rng.random((m, n)) < 0.05, rng.uniform(-5, 5, (m, n)), 0.0)
  l_hat, s_hat, info = background.ialm_rpca(low + sparse)
  assert info["converged"] and info["rank"] == r
  assert np.linalg.norm(l_hat - low) / np.linalg.norm(low) < 1e-4
  assert np.linalg.norm(s_hat - sparse) / np.linalg.norm(sparse) < 1e-4


@pytest.mark.parametrize("layout", ["stacked", "channels"])
def test_rpca_recovers_background_under_moving_blobs(layout):
  frames, _, bg = _clip_with_blobs(np.random.default_rng(0))
  est = background.rpca(frames, layout=layout)
  assert est.shape == bg.shape and est.dtype == np.float32
  assert _psnr(est, bg) > 35
  low, sparse, infos = background.rpca_decompose(frames, layout=layout)
  assert all(i["converged"] for i in infos)
  # The blobs go to the sparse part: large there, ~0 on the background.
  blob = frames > 0.99
  assert np.abs(sparse[blob]).min() > 0.3
  assert np.abs(sparse[~blob]).max() < 0.05


def test_object_static_in_most_frames_defeats_median_not_oracle():
  frames, masks, bg = _clip_with_blobs(np.random.default_rng(0), static_fraction=0.6)
  med = _psnr(background.temporal_median(frames), bg)
  oracle = _psnr(background.masked_median(frames, masks), bg)
  rpca = _psnr(background.rpca(frames), bg)
  # A blob covering a pixel in 60% of the frames IS the median there, and it is not sparse for
  # RPCA either; the masked median with the true masks removes it.
  assert med < 25 and rpca < 25
  assert oracle > 60 and oracle > med + 30


def test_motion_masks_flag_moving_square_only():
  rng = np.random.default_rng(0)
  k, h, w, s, d = 7, 20, 40, 4, 1
  bg = rng.uniform(0.3, 0.5, (h, w, 3)).astype(np.float32)
  frames = np.repeat(bg[None], k, axis=0) + rng.normal(0, 0.005, (k, h, w, 3)).astype(np.float32)
  truth = np.zeros((k, h, w), bool)  # True = foreground
  for j in range(k):
    y, x = 8, 2 + 5 * j
    frames[j, y:y + s, x:x + s] = [0.9, 0.1, 0.1]
    truth[j, y:y + s, x:x + s] = True
  m = background.motion_masks(frames, threshold=0.1, dilate=d)
  assert m.shape == (k, h, w, 1) and m.dtype == np.float32
  m = m[..., 0]
  assert set(np.unique(m)) <= {0.0, 1.0}
  assert np.all(m[truth] == 0)
  # Foreground = the square dilated by d pixels (square structuring element), nothing else.
  expected_fg = np.zeros_like(truth)
  for j in range(k):
    y, x = 8, 2 + 5 * j
    expected_fg[j, y - d:y + s + d, x - d:x + s + d] = True
  np.testing.assert_array_equal(m == 0, expected_fg)
  # No dilation: exactly the square.
  np.testing.assert_array_equal(background.motion_masks(frames, dilate=0)[..., 0] == 0, truth)


def test_motion_masks_miss_an_object_that_never_moves():
  frames = np.full((5, 8, 8, 3), 0.4, np.float32)
  frames[:, 2:5, 2:5] = 0.9  # parked: present, unmoved, in every frame
  np.testing.assert_array_equal(background.motion_masks(frames), 1.0)


def test_motion_masks_luma_ignores_isoluminant_change():
  frames = np.full((5, 6, 6, 3), 0.5, np.float32)
  w = np.asarray(background.LUMA_WEIGHTS, np.float32)
  delta = np.array([0.3, -0.3 * w[0] / w[1], 0.0], np.float32)  # zero luma change
  frames[2, 1:3, 1:3] += delta
  assert np.all(background.motion_masks(frames, dilate=0, reduce="max")[2, 1:3, 1:3] == 0)
  np.testing.assert_array_equal(background.motion_masks(frames, dilate=0, reduce="luma"), 1.0)
