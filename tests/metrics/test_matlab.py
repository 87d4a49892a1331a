"""MATLAB primitives: imresize vs torch's antialiased bicubic, fspecial, colon, rgb2gray, AGGD."""

import numpy as np
import pytest
from scipy import special
import torch
import torch.nn.functional as F

from lowlight_jax.metrics import matlab


def test_imresize_half_matches_torch_antialiased_bicubic_in_the_interior():
  # Same kernel (Keys a=-0.5 widened by 2 when shrinking) and pixel-centre mapping as MATLAB; torch
  # renormalises the kernel at borders where MATLAB mirrors, so only the interior is compared.
  img = np.random.default_rng(0).random((40, 52))
  ours = matlab.imresize(img, 0.5)
  ref = F.interpolate(torch.from_numpy(img)[None, None], scale_factor=0.5, mode="bicubic",
                      align_corners=False, antialias=True)[0, 0].numpy()
  assert ours.shape == ref.shape == (20, 26)
  np.testing.assert_allclose(ours[3:-3, 3:-3], ref[3:-3, 3:-3], rtol=0, atol=1e-12)
  assert np.abs(ours[0] - ref[0]).max() > 1e-6  # the border rule does differ


def test_imresize_keeps_constants_and_sizes():
  img = np.full((37, 23, 2), 7.25)
  out = matlab.imresize(img, 0.5)
  assert out.shape == (19, 12, 2)  # ceil(0.5 * size)
  np.testing.assert_allclose(out, 7.25, rtol=0, atol=1e-12)
  ramp = np.tile(np.arange(16.0), (8, 1))
  up = matlab.imresize(ramp, 2.0)
  assert up.shape == (16, 32)
  np.testing.assert_allclose(up[:, 6:-6], (np.arange(32.0)[6:-6] - 0.5) / 2 * np.ones((16, 1)),
                             atol=1e-12)


def test_fspecial_equals_the_window_shipped_with_the_niqe_model(metric_assets):
  with np.load(metric_assets["niqe_pris_params.npz"]) as d:
    np.testing.assert_allclose(matlab.fspecial_gaussian(7, 7 / 6), d["gaussian_window"], rtol=0,
                               atol=1e-15)


def test_colon_grid():
  g = matlab.colon(0.2, 0.001, 10.0)
  assert g.shape == (9801,) and g[0] == 0.2 and g[-1] == 10.0
  np.testing.assert_allclose(np.diff(g), 0.001, atol=1e-12)


def test_rgb2gray_rounds_like_matlab_uint8():
  img = np.array([[[10, 200, 30], [255, 255, 255]]], np.uint8)
  grey = matlab.to_grey_255(img, data_range=255.0)
  w = matlab.GREY_WEIGHTS
  np.testing.assert_array_equal(grey, np.floor(img.astype(np.float64) @ w + 0.5))
  assert grey[0, 1] == 255.0
  exact = matlab.to_grey_255(img, data_range=255.0, quantize=False)
  assert exact[0, 0] == pytest.approx(img[0, 0].astype(np.float64) @ w)
  # Float images in [0, 1] give the same numbers as their 8-bit version.
  np.testing.assert_array_equal(matlab.to_grey_255(img / 255.0), grey)


def test_aggd_recovers_generalized_gaussian_parameters():
  rng = np.random.default_rng(1)
  n = 200_000
  for alpha_true in (0.8, 2.0):
    # Symmetric GGD samples: |x|^alpha ~ Gamma(1/alpha).
    mag = rng.gamma(1 / alpha_true, 1.0, n)**(1 / alpha_true)
    x = mag * rng.choice([-1.0, 1.0], n)
    alpha, left, right = (v[0] for v in matlab.estimate_aggd(x[None]))
    assert alpha == pytest.approx(alpha_true, abs=0.03)
    std = np.sqrt(special.gamma(3 / alpha_true) / special.gamma(1 / alpha_true))
    assert left == pytest.approx(std, rel=0.02) and right == pytest.approx(std, rel=0.02)
  shape, sigma = matlab.estimate_ggd(rng.standard_normal((1, n)))
  assert shape[0] == pytest.approx(2.0, abs=0.03) and sigma[0] == pytest.approx(1.0, rel=0.01)
  # No negative values: MATLAB's mean of an empty set is NaN, and min() then picks the first grid
  # point.
  alpha, left, right = matlab.estimate_aggd(np.abs(rng.standard_normal((1, 100))))
  assert np.isnan(left[0]) and alpha[0] == 0.2
