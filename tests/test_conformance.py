"""Conformance with the authors' own PyTorch outputs (../shared/conformance, see its MANIFEST.md).

Every case starts from the ORIGINAL released `.pth` file, read by our torch-free reader, converted,
and run through `lowlight_jax.inference` (or the DecomNet model): uint8 outputs must be within 1 LSB
of the authors' PNGs on every pixel (with only a handful of flipped values), float outputs within
1e-4 of their `.npy`. The measured flip counts and max errors are printed (`pytest -s`) and attached
as junit properties.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from lowlight_jax.inference import released
from lowlight_jax.models import retinexnet

WEIGHTS = {"sgz": "sgz_Epoch99.pth", "zero_dce": "zerodce_Epoch99.pth", "scl_lle": "SCL-LLE.pth",
           "retinexnet_decom": "retinexnet_decomp.pth"}
# expected/<dir> -> (method, scale factor)
PIPELINES = {"sgz_s12": ("sgz", 12), "sgz_s1": ("sgz", 1), "zerodce": ("zero_dce", None),
             "scl_lle": ("scl_lle", None)}
# SGZ at scale 12 is cheap (the EFE runs at 1/12 resolution): every image with a reference, incl.
# the 2304x1728 Dark7. The full-resolution networks cost seconds per image on 2 CPU cores: a subset
# that covers lowCUT, DICM (both orientations) and LIME, different per method.
CASES = (
    [("sgz_s12", n) for n in ["lowCUT/1", "lowCUT/22", "lowCUT/23", "lowCUT/55", "lowCUT/79",
                              "DICM/01", "DICM/12", "DICM/30", "LIME/1", "LIME/2", "LIME/3",
                              "Samples/Dark7"]]
    + [("zerodce", n) for n in ["lowCUT/1", "lowCUT/22", "DICM/01", "DICM/12", "LIME/3"]]
    + [("scl_lle", n) for n in ["lowCUT/1", "lowCUT/79", "DICM/01", "LIME/2", "LIME/3"]]
    + [("sgz_s1", n) for n in ["lowCUT/1", "LIME/3"]])
# MANIFEST tolerance guidance: a correct float32 port flips at most ~16 of ~1e6 values per image.
MAX_FLIP_FRACTION = 5e-5


@functools.lru_cache(maxsize=None)
def _variables(conformance_dir, method):
  return released.load_released(method, conformance_dir / "weights" / WEIGHTS[method])


def _read_png(path) -> np.ndarray:
  return np.asarray(Image.open(path))


def _input(conformance_dir, name) -> np.ndarray:
  return _read_png(conformance_dir / "inputs" / f"{name}.png").astype(np.float32) / np.float32(255)


def _enhance(conformance_dir, pipeline, name):
  if name == "lowCUT/1":  # shared by the PNG and the float tests
    return _enhance_cached(conformance_dir, pipeline, name)
  method, scale = PIPELINES[pipeline]
  return released.enhance_released(method, _variables(conformance_dir, method),
                                    _input(conformance_dir, name), scale_factor=scale)


@functools.lru_cache(maxsize=None)
def _enhance_cached(conformance_dir, pipeline, name):
  method, scale = PIPELINES[pipeline]
  return released.enhance_released(method, _variables(conformance_dir, method),
                                    _input(conformance_dir, name), scale_factor=scale,
                                    return_aux=True)


@pytest.mark.parametrize("pipeline,name", CASES)
def test_png_within_one_lsb(conformance_dir, record_property, pipeline, name):
  out = _enhance(conformance_dir, pipeline, name)
  ref = _read_png(conformance_dir / "expected" / pipeline / f"{name}.png")
  assert out["uint8"].shape == ref.shape and out["uint8"].dtype == np.uint8
  diff = np.abs(out["uint8"].astype(np.int16) - ref.astype(np.int16))
  flips = int(np.count_nonzero(diff))
  record_property("flipped_values", flips)
  print(f"\n{pipeline}/{name}: {flips} of {diff.size} uint8 values differ, "
        f"max {int(diff.max())} LSB")
  assert diff.max() <= 1
  assert flips <= MAX_FLIP_FRACTION * diff.size


@pytest.mark.parametrize("pipeline", list(PIPELINES))
def test_float_output(conformance_dir, record_property, pipeline):
  method, scale = PIPELINES[pipeline]
  out = _enhance(conformance_dir, pipeline, "lowCUT/1")
  ref = np.load(conformance_dir / "expected" / pipeline / "lowCUT/1.npy")
  assert out["enhanced"].shape == ref.shape
  err = float(np.max(np.abs(out["enhanced"] - ref)))
  record_property("max_abs_err", err)
  print(f"\n{pipeline}/lowCUT/1: max abs err {err:.3g}")
  assert err <= 1e-4
  if method == "sgz":
    # The enhancement factor x_r (full resolution, and before upsampling at scale 12).
    for key, suffix in [("factor", "_xr"), ("factor_lowres", "_xr_lowres")]:
      path = conformance_dir / "expected" / pipeline / f"lowCUT/1{suffix}.npy"
      if suffix == "_xr_lowres" and scale == 1:
        continue  # stored only for scale 12 (at scale 1 it equals x_r)
      got = out["aux"][key]
      xr_ref = np.load(path)
      assert got.shape == xr_ref.shape, key
      xr_err = float(np.max(np.abs(got - xr_ref)))
      print(f"{pipeline}/lowCUT/1 {key}: max abs err {xr_err:.3g}")
      assert xr_err <= 1e-4, key


def test_retinexnet_decomnet(conformance_dir, record_property):
  """R and L on lowCUT/1, checked on two corner windows that together touch all four image borders.

  The receptive field has radius 10 (9x9 conv + six 3x3 convs), so away from a window's inner edges
  the window's output equals the full image's exactly; this keeps the test ~6x cheaper than the full
  image.
  """
  variables = _variables(conformance_dir, "retinexnet_decom")
  x = _input(conformance_dir, "lowCUT/1")
  h, w = x.shape[:2]
  model = retinexnet.RetinexNet(precision=jax.lax.Precision.HIGHEST)
  apply = jax.jit(model.apply)
  size, radius = 128, 10
  refs = {k: np.load(conformance_dir / "expected" / "retinexnet_decomnet" / f"lowCUT/1_{k}.npy")
          for k in ("R", "L")}
  assert refs["R"].shape == (h, w, 3) and refs["L"].shape == (h, w, 1)
  errs = {"R": 0.0, "L": 0.0}
  for top, left in [(0, 0), (h - size, w - size)]:
    out = apply(variables, jnp.asarray(x[top:top + size, left:left + size])[None])
    # Valid region: drop `radius` pixels along window edges that are not image borders.
    r0 = 0 if top == 0 else radius
    r1 = size if top + size == h else size - radius
    c0 = 0 if left == 0 else radius
    c1 = size if left + size == w else size - radius
    for key in ("R", "L"):
      got = np.asarray(out[key][0])[r0:r1, c0:c1]
      ref = refs[key][top + r0:top + r1, left + c0:left + c1]
      errs[key] = max(errs[key], float(np.max(np.abs(got - ref))))
  for key, err in errs.items():
    record_property(f"max_abs_err_{key}", err)
    print(f"\nretinexnet_decomnet/lowCUT/1 {key}: max abs err {err:.3g}")
    assert err <= 1e-4, key
