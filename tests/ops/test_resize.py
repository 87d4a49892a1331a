"""PyTorch-semantics resizing (lowlight_jax/ops/resize.py) vs torch.nn.functional.interpolate."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lowlight_jax.ops import resize

_TOL = 5e-7  # float32, values in [0, 1]


def _torch(x: np.ndarray) -> torch.Tensor:
  return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


def _nhwc(y: torch.Tensor) -> np.ndarray:
  return y.numpy().transpose(0, 2, 3, 1)


def _run(fn, x: np.ndarray, *args, **kwargs) -> np.ndarray:
  """fn(x, *args, **kwargs) under jit (one compilation per call instead of one per primitive)."""
  return np.asarray(jax.jit(lambda v: fn(v, *args, **kwargs))(jnp.asarray(x)))


@pytest.fixture(scope="module")
def images():
  rng = np.random.default_rng(0)
  sizes = [(7, 9), (13, 5), (33, 50), (1, 4)]
  return [rng.random((2, h, w, 3), dtype=np.float32) for h, w in sizes]


@pytest.mark.parametrize("align_corners", [False, True])
def test_bilinear_size_matches_torch(images, align_corners):
  for x in images:
    h, w = x.shape[1:3]
    for out in [(5, 11), (17, 3), (1, 1), (h, w), (2 * h + 1, 3 * w + 1)]:
      want = _nhwc(F.interpolate(_torch(x), size=out, mode="bilinear", align_corners=align_corners))
      got = _run(resize.resize_bilinear, x, out, align_corners=align_corners)
      assert got.shape == want.shape
      np.testing.assert_allclose(got, want, atol=_TOL, rtol=0, err_msg=f"{x.shape} -> {out}")


def test_bilinear_large_upsample_matches_torch():
  # Large source coordinates: PyTorch evaluates scale*(d+0.5)-0.5 without float32 rounding of the
  # product; a naive float32 port is off by ~3e-5 here.
  x = np.random.default_rng(1).random((1, 3, 600, 2), dtype=np.float32)
  want = _nhwc(F.interpolate(_torch(x), size=(7, 1801), mode="bilinear", align_corners=False))
  got = _run(resize.resize_bilinear, x, (7, 1801), align_corners=False)
  np.testing.assert_allclose(got, want, atol=_TOL, rtol=0)


def test_bilinear_scale_factor_semantics(images):
  for x in images[:3]:
    for sf in [1 / 12, 1 / 3, 0.7, 2.5]:
      if min(x.shape[1:3]) * sf < 1:
        continue
      want = _nhwc(F.interpolate(_torch(x), scale_factor=sf, mode="bilinear"))
      got = _run(resize.resize_bilinear, x, scale_factor=sf, align_corners=False)
      assert got.shape == want.shape
      np.testing.assert_allclose(got, want, atol=_TOL, rtol=0, err_msg=f"{x.shape} x {sf}")
  # scale_factor=1/3 on 7 rows gives 2 rows sampled at 3d+1, not at the size-based 3.5d+1.25.
  x = images[0]
  by3 = np.asarray(resize.downsample_bilinear_by(jnp.asarray(x), 3))
  sized = np.asarray(resize.resize_bilinear(jnp.asarray(x), (2, 3), align_corners=False))
  assert by3.shape == sized.shape == (2, 2, 3, 3)
  assert np.abs(by3 - sized).max() > 1e-3


def test_downsample_by_12_is_centre_2x2_mean():
  x = np.random.default_rng(2).random((1, 36, 24, 3), dtype=np.float32)
  got = np.asarray(resize.downsample_bilinear_by(jnp.asarray(x), 12))
  blocks = x.reshape(1, 3, 12, 2, 12, 3)[:, :, 5:7, :, 5:7, :]
  np.testing.assert_allclose(got, blocks.mean(axis=(2, 4)), atol=1e-7)


def test_upsample_align_corners_matches_torch(images):
  for x in images:
    for f in [2, 3, 12]:
      want = _nhwc(torch.nn.UpsamplingBilinear2d(scale_factor=f)(_torch(x)))
      got = _run(resize.upsample_bilinear_align_corners, x, f)
      assert got.shape == want.shape
      np.testing.assert_allclose(got, want, atol=_TOL, rtol=0)


def test_nearest_matches_torch_exactly(images):
  for x in images:
    h, w = x.shape[1:3]
    for out in [(5, 11), (17, 3), (2 * h, 2 * w), (h, w), (3 * h - 1, w + 2)]:
      want = _nhwc(F.interpolate(_torch(x), size=out, mode="nearest"))
      got = _run(resize.resize_nearest_torch, x, out)
      np.testing.assert_array_equal(got, want)
    for sf in [0.5, 1.7, 3] if h > 1 else [1.7, 3]:
      want = _nhwc(F.interpolate(_torch(x), scale_factor=sf, mode="nearest"))
      got = _run(resize.resize_nearest_torch, x, scale_factor=sf)
      np.testing.assert_array_equal(got, want)


def test_jit_and_grad():
  x = jnp.asarray(np.random.default_rng(3).random((1, 24, 36, 3), dtype=np.float32))
  down = jax.jit(lambda v: resize.downsample_bilinear_by(v, 12))
  np.testing.assert_array_equal(np.asarray(down(x)),
                                np.asarray(resize.downsample_bilinear_by(x, 12)))
  g = np.asarray(jax.grad(lambda v: resize.downsample_bilinear_by(v, 12).sum())(x))
  # Only the 2x2 centre of each 12x12 block is read, each with weight 1/4.
  assert np.count_nonzero(g) == 2 * 3 * 4 * 3
  np.testing.assert_allclose(g[0, 5:7, 5:7], 0.25)
  gu = jax.grad(lambda v: resize.upsample_bilinear_align_corners(v, 4).sum())(x[:, :3, :3])
  # Total weight is conserved: the sum of the gradient equals the number of output values.
  np.testing.assert_allclose(float(gu.sum()), 12 * 12 * 3, rtol=1e-6)


def test_sgz_conformance_activations(conformance_dir):
  acts = np.load(conformance_dir / "activations/sgz_s12_lowCUT_1.npz")
  x = acts["input_uint8"].astype(np.float32) / 255.0
  np.testing.assert_allclose(np.asarray(resize.downsample_bilinear_by(jnp.asarray(x), 12)),
                             acts["x_down"], atol=1e-6, rtol=0)
  expected = conformance_dir / "expected/sgz_s12/lowCUT"
  lowres = np.load(expected / "1_xr_lowres.npy")
  xr = np.asarray(resize.upsample_bilinear_align_corners(jnp.asarray(lowres), 12))
  want = np.load(expected / "1_xr.npy")
  assert xr.shape == want.shape == (396, 600, 3)
  np.testing.assert_allclose(xr, want, atol=1e-6, rtol=0)
  # align_corners=False would be visibly wrong, so the test discriminates.
  wrong = np.asarray(resize.resize_bilinear(jnp.asarray(lowres), (396, 600), align_corners=False))
  assert np.abs(wrong - want).max() > 1e-3


def test_argument_checks():
  x = jnp.zeros((1, 4, 4, 3))
  with pytest.raises(ValueError):
    resize.resize_bilinear(x, (2, 2), align_corners=False, scale_factor=0.5)
  with pytest.raises(ValueError):
    resize.resize_nearest_torch(x)
