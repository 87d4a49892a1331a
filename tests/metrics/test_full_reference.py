"""PSNR / SSIM: MATLAB reference values, an independent float64 version, protocol, CLU wrappers."""

import clu.metrics
import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import ndimage

from lowlight_jax.metrics import full_reference as fr


def _ssim_f64(a, b, data_range):
  """SSIM of HWC float64 images: scipy Gaussian (valid part), population statistics."""
  x = np.arange(11) - 5.0
  g = np.exp(-x**2 / 4.5)
  g /= g.sum()
  w = np.outer(g, g)
  c1, c2 = (0.01 * data_range)**2, (0.03 * data_range)**2
  vals = []
  for c in range(a.shape[-1]):
    f = lambda z: ndimage.correlate(z, w, mode="constant")[5:-5, 5:-5]
    p, q = a[..., c], b[..., c]
    mp, mq = f(p), f(q)
    vp, vq, cpq = f(p * p) - mp**2, f(q * q) - mq**2, f(p * q) - mp * mq
    m = (2 * mp * mq + c1) * (2 * cpq + c2) / ((mp**2 + mq**2 + c1) * (vp + vq + c2))
    vals.append(m.mean())
  return float(np.mean(vals))


def test_ssim_matches_matlab_on_grey(reference):
  names = reference["names"]
  dist = np.stack([reference["dist"][n] for n in names]).astype(np.float32)
  ref = np.stack([reference["ref"][n] for n in names]).astype(np.float32)
  fn = jax.jit(lambda a, b: fr.ssim(a, b, data_range=255.0, channel="grey", quantize=True))
  got = np.asarray(fn(dist, ref))
  want = np.array([reference["values"]["ssim_matlab_grey"][n] for n in names])
  np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)
  # The same protocol in [0, 1] units gives the same numbers.
  got01 = np.asarray(fr.ssim(dist / 255, ref / 255, channel="grey", quantize=True))
  np.testing.assert_allclose(got01, got, atol=1e-5, rtol=0)


def test_psnr_matches_reference_on_rgb(reference):
  names = reference["names"]
  for n in names:
    got = float(fr.psnr(reference["dist"][n], reference["ref"][n], data_range=255.0))
    assert abs(got - reference["values"]["psnr_rgb"][n]) <= 1e-2, (n, got)


@pytest.mark.parametrize("channel,crop", [("rgb", 0), ("y", 4), ("grey", 0)])
def test_ssim_psnr_match_float64_implementation(reference, channel, crop):
  a = reference["dist"]["I19"][100:260, 200:400].astype(np.float64) / 255
  b = reference["ref"]["I19"][100:260, 200:400].astype(np.float64) / 255
  ca, cb = (z[crop:-crop, crop:-crop] if crop else z for z in (a, b))
  if channel == "y":
    ca, cb = (z @ np.array([65.481, 128.553, 24.966]) / 255 + 16 / 255 for z in (ca, cb))
  elif channel == "grey":
    w = np.array([0.298936021293775, 0.587043074451121, 0.114020904255103])
    ca, cb = (z @ w for z in (ca, cb))
  ca, cb = (z[..., None] if z.ndim == 2 else z for z in (ca, cb))
  want_ssim = _ssim_f64(ca, cb, 1.0)
  want_psnr = 10 * np.log10(1.0 / np.mean((ca - cb)**2))
  kw = dict(data_range=1.0, crop_border=crop, channel=channel)
  assert abs(float(fr.ssim(a, b, **kw)) - want_ssim) < 2e-5
  assert abs(float(fr.psnr(a, b, **kw)) - want_psnr) < 1e-3


def test_batched_equals_per_image_and_identity(reference):
  names = reference["names"][:3]
  a = np.stack([reference["dist"][n][:64, :96] for n in names]).astype(np.float32) / 255
  b = np.stack([reference["ref"][n][:64, :96] for n in names]).astype(np.float32) / 255
  batched = np.asarray(fr.ssim(a, b))
  single = np.array([float(fr.ssim(a[i], b[i])) for i in range(3)])
  np.testing.assert_allclose(batched, single, rtol=0, atol=1e-6)
  assert batched.shape == (3,)
  np.testing.assert_allclose(np.asarray(fr.ssim(a, a)), 1.0, atol=1e-6)
  assert np.all(np.isinf(np.asarray(fr.psnr(a, a))))


def test_colour_conversions_follow_matlab():
  white = jnp.ones((1, 1, 3))
  black = jnp.zeros((1, 1, 3))
  # rgb2ycbcr: Y in [16, 235]; rgb2gray: white stays white.
  y_white = float(fr.rgb_to_y(white * 255, data_range=255.0)[0, 0, 0])
  assert y_white == pytest.approx(235.0, abs=1e-3)
  assert float(fr.rgb_to_y(black, data_range=255.0)[0, 0, 0]) == pytest.approx(16.0, abs=1e-4)
  assert float(fr.rgb_to_grey(white)[0, 0, 0]) == pytest.approx(1.0, abs=1e-6)
  # Quantisation rounds to the 8-bit grid, halves up (MATLAB), not to even.
  half = jnp.full((1, 1, 3), 2.5)
  assert float(fr.rgb_to_grey(half, data_range=255.0, quantize=True)[0, 0, 0]) == 3.0


def test_protocol_errors():
  with pytest.raises(ValueError, match="shapes differ"):
    fr.psnr(np.zeros((8, 8, 3)), np.zeros((8, 9, 3)))
  with pytest.raises(ValueError, match="at least 11x11"):
    fr.ssim(np.zeros((10, 40, 3)), np.zeros((10, 40, 3)))
  with pytest.raises(ValueError, match="channel"):
    fr.psnr(np.zeros((8, 8, 3)), np.zeros((8, 8, 3)), channel="lab")


@flax.struct.dataclass
class _EvalMetrics(clu.metrics.Collection):
  psnr: fr.psnr_metric(data_range=1.0)
  ssim: fr.ssim_metric(data_range=1.0)


def test_clu_wrappers_average_per_image_values_inside_jit(reference):
  names = reference["names"][:4]
  a = np.stack([reference["dist"][n][:48, :48] for n in names]).astype(np.float32) / 255
  b = np.stack([reference["ref"][n][:48, :48] for n in names]).astype(np.float32) / 255
  mask = np.array([True, True, False, True])

  @jax.jit
  def step(pred, target, mask):
    return _EvalMetrics.single_from_model_output(pred=pred, target=target, mask=mask)

  m = step(a[:2], b[:2], mask[:2]).merge(step(a[2:], b[2:], mask[2:])).compute()
  keep = np.flatnonzero(mask)
  for name, fn in (("psnr", fr.psnr), ("ssim", fr.ssim)):
    assert float(m[name]) == pytest.approx(float(np.mean(np.asarray(fn(a, b))[keep])), rel=1e-5)
