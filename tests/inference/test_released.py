"""lowlight_jax.inference: released-weights enhancement API (sizes, input types, argument checks)."""

import numpy as np
import pytest

from lowlight_jax.inference import released


@pytest.fixture(scope="module")
def sgz_variables(conformance_dir):
  # The .npz copy (torch names and layouts) goes through the same converter as the .pth.
  return released.load_released("sgz", conformance_dir / "weights" / "sgz_epoch99.npz")


def test_sgz_crop_and_keep_size(sgz_variables):
  rng = np.random.default_rng(0)
  img = rng.random((30, 41, 3), dtype=np.float32) * 0.3
  cropped = released.enhance_released("sgz", sgz_variables, img)
  assert cropped["uint8"].shape == (24, 36, 3) and cropped["enhanced"].shape == (24, 36, 3)
  kept = released.enhance_released("sgz", sgz_variables, img, keep_size=True)
  assert kept["uint8"].shape == (30, 41, 3)
  assert kept["enhanced"].min() >= 0 and kept["enhanced"].max() <= 1
  # Brightening is the point: the curve raises dark pixels.
  assert kept["enhanced"].mean() > img.mean() + 0.05
  # On a multiple of 12 both modes are the released pipeline.
  a = released.enhance_released("sgz", sgz_variables, img[:24, :36])
  b = released.enhance_released("sgz", sgz_variables, img[:24, :36], keep_size=True)
  np.testing.assert_array_equal(a["uint8"], b["uint8"])
  s1 = released.enhance_released("sgz", sgz_variables, img, scale_factor=1)
  assert s1["uint8"].shape == (30, 41, 3)


def test_uint8_input_and_quantisation(sgz_variables):
  img8 = np.random.default_rng(1).integers(0, 80, (24, 24, 3), dtype=np.uint8)
  a = released.enhance_released("sgz", sgz_variables, img8)
  b = released.enhance_released("sgz", sgz_variables, img8.astype(np.float32) / np.float32(255))
  np.testing.assert_array_equal(a["uint8"], b["uint8"])
  # save_image rounds half up (floor(255 y + 0.5)), unlike np.round's half-to-even.
  y = np.array([0.5 / 255, 2.5 / 255, 1.0, 1.2, -0.1], np.float32)
  np.testing.assert_array_equal(released.quantize_like_save_image(y), [1, 3, 255, 255, 0])


def test_argument_checks(sgz_variables):
  with pytest.raises(ValueError, match="supports"):
    released.enhance_released("retinexnet_decom", sgz_variables, np.zeros((8, 8, 3)))
  with pytest.raises(ValueError, match="SGZ-only"):
    released.enhance_released("zero_dce", sgz_variables, np.zeros((8, 8, 3)), scale_factor=12)
  with pytest.raises(ValueError, match="RGB"):
    released.enhance_released("sgz", sgz_variables, np.zeros((24, 24)))


def test_batched_enhancer_matches_single_images_and_reports_too_small(sgz_variables):
  from lowlight_jax import errors

  rng = np.random.default_rng(2)
  batch = rng.random((3, 26, 30, 3), dtype=np.float32) * 0.3
  fn = released.make_enhancer("sgz", sgz_variables, keep_size=True)
  out = fn(batch)
  assert out.dtype == np.uint8 and out.shape == (3, 26, 30, 3)
  for image, got in zip(batch, out):
    np.testing.assert_array_equal(got, released.enhance_released("sgz", sgz_variables, image, keep_size=True)["uint8"])
  assert released.make_enhancer("sgz", sgz_variables)(batch).shape == (3, 24, 24, 3)  # The authors' crop.
  assert released.min_input_size("sgz") == 12 and released.min_input_size("sgz", keep_size=True) == 1
  assert released.min_input_size("sgz", scale_factor=4) == 4 and released.min_input_size("zero_dce") == 1
  tiny = np.zeros((1, 1, 3), np.float32)
  with pytest.raises(errors.InputError, match="1x1 is smaller than SGZ's scale factor 12"):
    released.enhance_released("sgz", sgz_variables, tiny)
  with pytest.raises(errors.InputError, match="smaller than"):
    released.make_enhancer("sgz", sgz_variables)(tiny[None])
  assert released.enhance_released("sgz", sgz_variables, tiny, keep_size=True)["uint8"].shape == (1, 1, 3)
