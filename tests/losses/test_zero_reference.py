"""Zero-reference losses (lowlight_jax/losses/zero_reference.py) vs hand values and the authors."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lowlight_jax.losses import zero_reference as zr


def _spa_literal(enh: np.ndarray, low: np.ndarray, patch: int, diagonal: bool) -> np.ndarray:
  """Literal numpy transcription of the released `L_spa8` / `L_spa` (3x3 kernels, zero padding)."""
  kernels = {  # as written in Myloss.py (cross-correlation)
      "left": [[0, 0, 0], [-1, 1, 0], [0, 0, 0]], "right": [[0, 0, 0], [0, 1, -1], [0, 0, 0]],
      "up": [[0, -1, 0], [0, 1, 0], [0, 0, 0]], "down": [[0, 0, 0], [0, 1, 0], [0, -1, 0]],
      "upleft": [[-1, 0, 0], [0, 1, 0], [0, 0, 0]], "upright": [[0, 0, -1], [0, 1, 0], [0, 0, 0]],
      "loleft": [[0, 0, 0], [0, 1, 0], [-1, 0, 0]], "loright": [[0, 0, 0], [0, 1, 0], [0, 0, -1]]}

  def pool(x):
    m = x.mean(-1)
    b, h, w = m.shape
    h, w = h // patch, w // patch
    return m[:, :h * patch, :w * patch].reshape(b, h, patch, w, patch).mean((2, 4))

  def conv(p, k):
    k = np.asarray(k, np.float64)
    padded = np.pad(p, ((0, 0), (1, 1), (1, 1)))
    out = np.zeros_like(p)
    for i in range(3):
      for j in range(3):
        out += k[i, j] * padded[:, i:i + p.shape[1], j:j + p.shape[2]]
    return out

  po, pe = pool(low.astype(np.float64)), pool(enh.astype(np.float64))
  e = 0
  for name, k in kernels.items():
    weight = 1.0 if name in ("left", "right", "up", "down") else (0.5 if diagonal else 0.0)
    e = e + weight * (conv(po, k) - conv(pe, k))**2
  return e.mean(axis=(1, 2))


@pytest.fixture(scope="module")
def authors(conformance_dir):
  io = np.load(conformance_dir / "fixtures/sgz_losses_io.npz")
  nhwc = {k[:-5]: jnp.asarray(v.transpose(0, 2, 3, 1)) for k, v in io.items()}
  expected = json.loads((conformance_dir / "fixtures/sgz_losses_expected.json").read_text())
  return nhwc, expected


def test_tv_hand_value():
  x = jnp.asarray([[0.0, 1.0], [2.0, 4.0]]).reshape(1, 2, 2, 1)
  # dh: (2-0)^2 + (4-1)^2 = 13 over 1*2; dw: 1 + 4 = 5 over 2*1; times 2.
  np.testing.assert_allclose(np.asarray(zr.tv_loss(x)), [2 * (13 / 2 + 5 / 2)], rtol=1e-6)
  two = jnp.concatenate([x, 2 * x])
  np.testing.assert_allclose(np.asarray(zr.tv_loss(two)), [18.0, 72.0], rtol=1e-6)


def test_spa_hand_value():
  # One bright pooled cell in the middle of a 3x3 map (patch 1), dark input: the centre sees 8
  # neighbours (4 + 0.5 * 4 = 6), the 4 adjacent cells see it once (4), the 4 corners diagonally
  # (0.5 * 4 = 2).
  enh = np.zeros((1, 3, 3, 3), np.float32)
  enh[0, 1, 1] = 1.0
  low = np.zeros_like(enh)
  got = zr.spatial_consistency_loss(jnp.asarray(enh), jnp.asarray(low), patch=1)
  np.testing.assert_allclose(np.asarray(got), [12 / 9], rtol=1e-6)
  four = zr.spatial_consistency_loss(jnp.asarray(enh), jnp.asarray(low), patch=1, diagonal=False)
  np.testing.assert_allclose(np.asarray(four), [8 / 9], rtol=1e-6)


@pytest.mark.parametrize("diagonal", [True, False])
def test_spa_matches_literal_kernels(diagonal):
  rng = np.random.default_rng(0)
  enh, low = rng.random((2, 2, 19, 14, 3), dtype=np.float32)  # odd sizes: pooling drops the rest
  got = zr.spatial_consistency_loss(jnp.asarray(enh), jnp.asarray(low), patch=4, diagonal=diagonal)
  np.testing.assert_allclose(np.asarray(got), _spa_literal(enh, low, 4, diagonal), rtol=1e-5)
  # The paper form (|gradients|) is a different number.
  paper = zr.spatial_consistency_loss(jnp.asarray(enh), jnp.asarray(low), diagonal=diagonal,
                                      abs_gradients=True)
  assert np.all(np.abs(np.asarray(paper) - np.asarray(got)) > 1e-4)


def test_color_hand_values():
  means = np.asarray([0.5, 0.3, 0.2], np.float32)
  img = jnp.asarray(np.broadcast_to(means, (1, 4, 5, 3)))
  # released: sqrt(0.2^4 + 0.3^4 + 0.1^4); paper: |0.2| + |0.3| + |0.1| (+ eps^2 inside each root).
  np.testing.assert_allclose(np.asarray(zr.color_constancy_loss(img)), [np.sqrt(0.0098)], rtol=1e-5)
  paper = zr.color_constancy_loss(img, paper_form=True)
  np.testing.assert_allclose(np.asarray(paper), [0.6], rtol=1e-5)
  gray = jnp.full((1, 4, 4, 3), 0.4)
  np.testing.assert_allclose(np.asarray(zr.color_constancy_loss(gray, paper_form=True)), [3e-6],
                             rtol=1e-3)
  # eps = 0 in the released form: the gradient at a gray image is 0, not NaN.
  g = jax.jit(jax.grad(lambda v: zr.color_constancy_loss(v).sum()))(gray)
  assert np.all(np.asarray(g) == 0)


def test_exposure_hand_values():
  img = jnp.full((2, 32, 48, 3), 0.5).at[1].set(0.875)
  np.testing.assert_allclose(np.asarray(zr.exposure_loss(img)), [0.01, 0.075625], rtol=1e-5)
  np.testing.assert_allclose(np.asarray(zr.exposure_loss(img, squared=False)), [0.1, 0.275],
                             rtol=1e-5)
  np.testing.assert_allclose(np.asarray(zr.exposure_loss(img, level=0.25)), [0.0625, 0.390625],
                             rtol=1e-6)
  # Pooling ignores the rows/columns that do not fill a 16 x 16 patch.
  ragged = jnp.full((1, 20, 16, 3), 0.6).at[:, 16:].set(0.0)
  np.testing.assert_allclose(np.asarray(zr.exposure_loss(ragged)), [0.0], atol=1e-12)


def test_reduce():
  v = jnp.asarray([1.0, 2.0, 6.0])
  assert float(zr.reduce(v)) == 3.0
  assert float(zr.reduce(v, reduction="sum")) == 9.0
  assert float(zr.reduce(v, weights=jnp.asarray([1.0, 1.0, 0.0]))) == 1.5
  np.testing.assert_array_equal(np.asarray(zr.reduce(v, reduction="none")), np.asarray(v))
  with pytest.raises(ValueError):
    zr.reduce(v, reduction="max")


def test_matches_authors_values(authors):
  x, want = authors
  tv = zr.tv_loss(x["xr"])
  spa = zr.spatial_consistency_loss(x["enhanced"], x["low"], patch=4)
  col = zr.color_constancy_loss(x["enhanced"])
  exp = zr.exposure_loss(x["enhanced"], patch=16, level=0.6)
  for v in (tv, spa, col, exp):
    assert v.shape == (2,)
  np.testing.assert_allclose(float(tv.mean()), want["tv_raw"], rtol=1e-6)
  np.testing.assert_allclose(float(spa.mean()), want["spa8_patch4_mean"], rtol=1e-5)
  # Differences of nearly equal channel means, raised to the 4th power: float32 summation order of
  # the means alone moves this by ~1e-5 relative (torch is off the float64 value by as much).
  np.testing.assert_allclose(float(col.mean()), want["color_mean"], rtol=1e-4)
  np.testing.assert_allclose(float(exp.mean()), want["exp16_e0.6_mean"], rtol=1e-6)
  total = 1600 * tv.mean() + spa.mean() + 5 * col.mean() + 10 * exp.mean()
  np.testing.assert_allclose(float(total), want["total_without_seg"], rtol=1e-6)
