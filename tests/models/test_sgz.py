"""SGZ EFE/RIE/pipeline (lowlight_jax/models/sgz.py) vs the authors' released weights/outputs."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image
import pytest
import torch

from lowlight_jax.convert import layout
from lowlight_jax.models import sgz

_EFE = sgz.EnhancementFactorExtractor()


def _read(path) -> np.ndarray:
  return np.asarray(Image.open(path), dtype=np.float32) / 255.0


@pytest.fixture(scope="module")
def random_init():
  return jax.jit(_EFE.init)(jax.random.key(1), jnp.zeros((1, 8, 8, 3)))


@pytest.fixture(scope="module")
def released(conformance_dir):
  target = jax.eval_shape(_EFE.init, jax.random.key(0), jnp.zeros((1, 8, 8, 3)))
  sd = dict(np.load(conformance_dir / "weights/sgz_epoch99.npz"))
  return layout.assign(target, layout.torch_to_flax(sd))  # strict: every key and shape must match


@functools.cache
def _forward(scale_factor: int, crop_to_multiple: bool = True):
  return jax.jit(functools.partial(sgz.sgz_forward, _EFE.apply, scale_factor=scale_factor,
                                   crop_to_multiple=crop_to_multiple))


def test_param_count_names_and_init(random_init):
  variables = random_init
  leaves = jax.tree.leaves(variables)
  assert sum(v.size for v in leaves) == 10_561
  keys = set(layout.flax_to_torch(variables))
  assert "e_conv1.depth_conv.weight" in keys and "e_conv7.point_conv.bias" in keys
  assert len(keys) == 28
  assert variables["params"]["e_conv5"]["depth_conv"]["kernel"].shape == (3, 3, 1, 64)
  kernels = np.concatenate([np.ravel(v) for k, v in layout.flax_to_torch(variables).items()
                            if k.endswith("weight")])
  assert abs(kernels.std() - 0.02) < 0.002


def test_apply_curve_matches_numpy():
  rng = np.random.default_rng(0)
  x = rng.random((2, 5, 7, 3), dtype=np.float32)
  r = rng.uniform(-1, 1, (2, 5, 7, 3)).astype(np.float32)
  want = x.astype(np.float64)
  for _ in range(8):
    want = want + r * (want**2 - want)
  got = np.asarray(jax.jit(sgz.apply_curve)(jnp.asarray(x), jnp.asarray(r)))
  np.testing.assert_allclose(got, want, atol=1e-6)
  np.testing.assert_allclose(np.asarray(sgz.apply_curve(jnp.asarray(x), jnp.asarray(r), 1)),
                             x + r * (x * x - x), atol=1e-7)


def test_released_scale12_lowcut1(conformance_dir, released):
  x = _read(conformance_dir / "inputs/lowCUT/1.png")
  out = _forward(12)(released, jnp.asarray(x[None]))
  exp = conformance_dir / "expected/sgz_s12/lowCUT"
  enhanced = np.asarray(out["enhanced"][0])
  np.testing.assert_allclose(np.clip(enhanced, 0, 1), np.load(exp / "1.npy"), atol=1e-5, rtol=0)
  np.testing.assert_allclose(np.asarray(out["factor"][0]), np.load(exp / "1_xr.npy"), atol=1e-5,
                             rtol=0)
  np.testing.assert_allclose(np.asarray(out["factor_lowres"][0]), np.load(exp / "1_xr_lowres.npy"),
                             atol=1e-5, rtol=0)
  png = np.asarray(Image.open(exp / "1.png")).astype(int)
  q = np.asarray(sgz.quantize_like_save_image(out["enhanced"][0])).astype(int)
  assert q.shape == png.shape and np.abs(q - png).max() <= 1
  assert np.count_nonzero(q != png) <= 1e-4 * q.size


def test_layer_activations_match(conformance_dir, released):
  acts = np.load(conformance_dir / "activations/sgz_s12_lowCUT_1.npz")
  _, state = _EFE.apply(released, jnp.asarray(acts["x_down"]), capture_intermediates=True)
  inter = state["intermediates"]
  # Stored conv outputs are pre-activation; e_conv3..5 have (near-)denormal weights, hence atol.
  for layer in ("e_conv1", "e_conv2", "e_conv5", "e_conv6", "e_conv7"):
    for part in ("depth_conv", "point_conv"):
      got = np.asarray(inter[layer][part]["__call__"][0])
      np.testing.assert_allclose(got, acts[f"{layer}.{part}"], atol=1e-5, rtol=0, err_msg=layer)


def test_released_scale1_lowcut1(conformance_dir, released):
  x = _read(conformance_dir / "inputs/lowCUT/1.png")
  out = _forward(1)(released, jnp.asarray(x[None]))
  exp = conformance_dir / "expected/sgz_s1/lowCUT"
  np.testing.assert_allclose(np.clip(np.asarray(out["enhanced"][0]), 0, 1), np.load(exp / "1.npy"),
                             atol=1e-5, rtol=0)
  np.testing.assert_allclose(np.asarray(out["factor"][0]), np.load(exp / "1_xr.npy"), atol=1e-5,
                             rtol=0)
  png = np.asarray(Image.open(exp / "1.png")).astype(int)
  q = np.asarray(sgz.quantize_like_save_image(out["enhanced"][0])).astype(int)
  assert np.abs(q - png).max() <= 1 and np.count_nonzero(q != png) <= 1e-4 * q.size


def test_released_scale12_lime1_png_with_crop(conformance_dir, released):
  x = _read(conformance_dir / "inputs/LIME/1.png")
  assert x.shape[0] % 12 != 0  # 680 rows: the released script crops to 672
  out = _forward(12)(released, jnp.asarray(x[None]))
  png = np.asarray(Image.open(conformance_dir / "expected/sgz_s12/LIME/1.png")).astype(int)
  q = np.asarray(sgz.quantize_like_save_image(out["enhanced"][0])).astype(int)
  assert q.shape == png.shape == (x.shape[0] // 12 * 12, x.shape[1] // 12 * 12, 3)
  assert np.abs(q - png).max() <= 1 and np.count_nonzero(q != png) <= 1e-4 * q.size


def test_keep_size_mode(released):
  rng = np.random.default_rng(2)
  odd = jnp.asarray(rng.random((2, 37, 53, 3), dtype=np.float32) * 0.3)
  kept = _forward(12, False)(released, odd)
  assert kept["enhanced"].shape == kept["factor"].shape == (2, 37, 53, 3)
  assert kept["factor_lowres"].shape == (2, 4, 5, 3)
  cropped = _forward(12)(released, odd)
  assert cropped["enhanced"].shape == (2, 36, 48, 3)
  # The curve is applied to the uncropped input with the factor map's own values.
  np.testing.assert_allclose(np.asarray(kept["enhanced"]),
                             np.asarray(sgz.apply_curve(odd, kept["factor"])), atol=1e-6)
  # For multiples of s both modes are the released pipeline.
  even = odd[:, :36, :48]
  a, b = _forward(12, False)(released, even), _forward(12)(released, even)
  np.testing.assert_allclose(np.asarray(a["enhanced"]), np.asarray(b["enhanced"]), atol=1e-7)


def test_grad_through_pipeline(random_init):
  variables = random_init
  x = jnp.asarray(np.random.default_rng(4).random((1, 24, 36, 3), dtype=np.float32))

  def loss(v):
    return sgz.sgz_forward(_EFE.apply, v, x, scale_factor=12)["enhanced"].mean()

  g = jax.jit(jax.grad(loss))(variables)
  norms = [float(jnp.abs(t).sum()) for t in jax.tree.leaves(g)]
  assert all(np.isfinite(norms)) and norms[-1] > 0


def test_quantize_like_save_image_matches_torch():
  rng = np.random.default_rng(5)
  halves = (np.arange(256, dtype=np.float32) + 0.5) / 255  # values next to the rounding points
  y = np.concatenate([rng.uniform(-0.1, 1.1, 10_000).astype(np.float32), halves,
                      np.nextafter(halves, 0), np.nextafter(halves, 1)])
  want = torch.from_numpy(y.copy()).mul(255).add_(0.5).clamp_(0, 255).to(torch.uint8).numpy()
  got = np.asarray(sgz.quantize_like_save_image(jnp.asarray(y)))
  assert got.dtype == np.uint8
  np.testing.assert_array_equal(got, want)
  # The probe discriminates: round-half-even (jnp.round) disagrees with save_image on some values.
  assert np.any(np.round(np.clip(y * np.float32(255), 0, 255)).astype(np.uint8) != want)


def _reference_dsc(x, dk, db, pk, pb):
  """Depthwise 3x3 + pointwise 1x1 as XLA convolutions, differentiated by JAX (the hand-written VJPs' reference)."""
  conv = functools.partial(jax.lax.conv_general_dilated, window_strides=(1, 1),
                           dimension_numbers=("NHWC", "HWIO", "NHWC"), precision=jax.lax.Precision.HIGHEST)
  d = conv(x, dk, padding=((1, 1), (1, 1)), feature_group_count=x.shape[-1]) + db
  return conv(d, pk, padding=((0, 0), (0, 0))) + pb


@pytest.mark.parametrize("hw", [(37, 29), (32, 20)])  # 37 rows: not a multiple of the 16-row bands.
def test_hand_written_gradients_match_autodiff_of_convolutions(hw):
  rng = np.random.default_rng(7)
  c, o = 5, 4
  x = jnp.asarray(rng.normal(size=(2, *hw, c)).astype(np.float32))
  dk, db = jnp.asarray(rng.normal(size=(3, 3, 1, c)).astype(np.float32)), jnp.asarray(rng.normal(size=(c,)).astype(np.float32))
  pk, pb = jnp.asarray(rng.normal(size=(1, 1, c, o)).astype(np.float32)), jnp.asarray(rng.normal(size=(o,)).astype(np.float32))
  variables = {"params": {"depth_conv": {"kernel": dk, "bias": db}, "point_conv": {"kernel": pk, "bias": pb}}}
  module = sgz.DepthwiseSeparableConv(o)
  cot = jnp.asarray(rng.normal(size=(2, *hw, o)).astype(np.float32))
  ours = jax.jit(jax.grad(lambda v, x: jnp.sum(module.apply(v, x) * cot), argnums=(0, 1)))(variables, x)
  ref = jax.jit(jax.grad(lambda a, x: jnp.sum(_reference_dsc(x, *a) * cot), argnums=(0, 1)))((dk, db, pk, pb), x)
  got = ours[0]["params"]
  for name, a, b in (("x", ours[1], ref[1]), ("depth kernel", got["depth_conv"]["kernel"], ref[0][0]),
                     ("depth bias", got["depth_conv"]["bias"], ref[0][1]),
                     ("point kernel", got["point_conv"]["kernel"], ref[0][2]),
                     ("point bias", got["point_conv"]["bias"], ref[0][3])):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-5, atol=2e-4, err_msg=name)


def test_banded_and_plain_kernel_gradients_agree_bf16():
  """Both kernel-gradient paths (CPU bands, accelerator one pass) accumulate in float32, bf16 inputs included."""
  rng = np.random.default_rng(8)
  x = jnp.asarray(rng.uniform(size=(2, 40, 24, 6)).astype(np.float32))
  g = jnp.asarray(rng.normal(size=(2, 40, 24, 6)).astype(np.float32))
  xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  exact = np.stack([np.sum(np.asarray(xp)[:, i:i + 40, j:j + 24] * np.asarray(g), (0, 1, 2), dtype=np.float64)
                    for i in range(3) for j in range(3)]).reshape(3, 3, 6)
  for fn in (sgz._depthwise_kernel_grad_plain, sgz._depthwise_kernel_grad_banded):
    np.testing.assert_allclose(np.asarray(fn(xp, g)), exact, rtol=1e-5, atol=1e-4)
    low = fn(xp.astype(jnp.bfloat16), g.astype(jnp.bfloat16))
    assert low.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(low), exact, rtol=0, atol=0.3)  # bf16-rounded inputs: up to 0.15 here.
