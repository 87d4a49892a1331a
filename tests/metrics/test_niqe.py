"""NIQE against the official MATLAB release's values on the pyiqa calibration images."""

import numpy as np
import pytest

from lowlight_jax.metrics import niqe


@pytest.fixture(scope="module")
def model(metric_assets):
  return niqe.load_model(metric_assets["niqe_pris_params.npz"])


def test_niqe_reproduces_matlab_on_i04(reference, model):
  got = niqe.niqe(reference["dist"]["I04"], data_range=255.0, model=model)
  # The reference notes report I04 reproduced to 1e-12 by a float64 port; 1e-3 is the required
  # accuracy.
  assert abs(got - reference["values"]["niqe_matlab"]["I04"]) < 1e-6


def test_niqe_close_to_matlab_on_the_other_images(reference, model):
  # Loose checks (reference notes): ports land within ~0.02 on I03/I06/I08 and ~0.5 on I19.
  tol = {"I03": 0.05, "I06": 0.05, "I08": 0.05, "I19": 1.0}
  for name, t in tol.items():
    got = niqe.niqe(reference["dist"][name], data_range=255.0, model=model)
    assert abs(got - reference["values"]["niqe_matlab"][name]) < t, (name, got)


def test_niqe_protocol(reference, model):
  img = reference["dist"]["I06"]
  base = niqe.niqe(img, data_range=255.0, model=model)
  assert niqe.niqe(img.astype(np.float32) / 255.0, model=model) == pytest.approx(base, abs=1e-9)
  # The grey channel alone is the same image to NIQE.
  grey = np.floor(img.astype(np.float64) @ np.array([0.298936021293775, 0.587043074451121,
                                                     0.114020904255103]) + 0.5)
  assert niqe.niqe(grey, data_range=255.0, model=model) == pytest.approx(base, abs=1e-9)
  assert niqe.niqe(img, data_range=255.0, channel="y", model=model) != pytest.approx(base, abs=1e-6)
  cropped = niqe.niqe(img, data_range=255.0, crop_border=8, model=model)
  assert cropped == pytest.approx(niqe.niqe(img[8:-8, 8:-8], data_range=255.0, model=model),
                                  abs=1e-12)
  # Noise makes an image less natural.
  noisy = np.clip(img + np.random.default_rng(0).normal(0, 25, img.shape), 0, 255)
  assert niqe.niqe(noisy, data_range=255.0, model=model) > base + 1.0


def test_niqe_rejects_small_images(model):
  with pytest.raises(ValueError, match="at least 96x96"):
    niqe.niqe(np.zeros((80, 300, 3)), model=model)
  with pytest.raises(ValueError, match="two 96x96 blocks"):
    niqe.niqe(np.random.default_rng(0).random((100, 100)), model=model)
