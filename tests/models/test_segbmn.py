"""SegBMN (DMGNIE stage 1): Eq. 2 aggregation, mask pyramid, and network properties."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lowlight_jax.models import init, segbmn

SMALL = (4, 8, 16)  # L = 3: sizes are padded to multiples of 4


def test_masked_aggregate_exact_weighted_averages():
  # B = 1, K = 2, h = 1, w = 4, C = 2.
  f0 = np.array([[1.0, 10.0], [2.0, 20.0], [3.0, 30.0], [4.0, 40.0]], np.float32)
  f1 = np.array([[5.0, 50.0], [6.0, 60.0], [7.0, 70.0], [8.0, 80.0]], np.float32)
  features = jnp.asarray(np.stack([f0, f1])[None, :, None])  # (1, 2, 1, 4, 2)
  m = np.array([[1.0, 1.0, 0.0, 0.5],
                [1.0, 0.0, 0.0, 1.0]], np.float32)
  masks = jnp.asarray(m[None, :, None, :, None])
  out = segbmn.masked_aggregate(features, masks)
  assert out.shape == (1, 1, 4, 2)
  expected = np.stack([
      (f0[0] + f1[0]) / 2,                  # both background: plain mean
      f0[1],                                # only frame 0 is background
      (f0[2] + f1[2]) / 2,                  # nobody: empty_fill='mean', the unmasked mean
      (0.25 * f0[3] + 1.0 * f1[3]) / 1.5,   # Eq. 2 as printed: M_j^2 / sum M_i
  ])
  np.testing.assert_allclose(np.asarray(out[0, 0]), expected, rtol=1e-6)
  out_mean = segbmn.masked_aggregate(features, masks, weighting="mean", empty_fill="zero")
  expected[2] = 0.0
  expected[3] = (0.5 * f0[3] + 1.0 * f1[3]) / 1.5
  np.testing.assert_allclose(np.asarray(out_mean[0, 0]), expected, rtol=1e-6)


@pytest.mark.parametrize("weighting", segbmn.WEIGHTINGS)
@pytest.mark.parametrize("empty_fill", segbmn.EMPTY_FILLS)
def test_masked_aggregate_gradients_finite(weighting, empty_fill):
  rng = np.random.default_rng(0)
  features = jnp.asarray(rng.normal(size=(2, 3, 4, 5, 6)), jnp.float32)
  masks = jnp.asarray((rng.random((2, 3, 4, 5, 1)) > 0.6).astype(np.float32))
  masks = masks.at[:, :, 0, 0].set(0.0)  # a position every frame masks
  assert float(masks.sum(axis=1).min()) == 0.0

  def loss(f, m):
    return jnp.sum(segbmn.masked_aggregate(f, m, weighting=weighting, empty_fill=empty_fill) ** 2)

  value = loss(features, masks)
  g_f, g_m = jax.grad(loss, argnums=(0, 1))(features, masks)
  assert np.isfinite(float(value))
  assert np.all(np.isfinite(np.asarray(g_f))) and np.all(np.isfinite(np.asarray(g_m)))
  # Where a frame is foreground (and someone else is background), its features get no gradient.
  fg = np.asarray((masks == 0) & (masks.sum(axis=1, keepdims=True) > 0))[..., 0]
  assert np.all(np.asarray(g_f)[fg] == 0)


def test_mask_pyramid_area_and_min():
  m = np.ones((1, 4, 4, 1), np.float32)
  m[0, 0, 0] = 0
  m[0, 3, 2:] = 0
  area = segbmn.mask_pyramid(jnp.asarray(m), 3, mode="area")
  mins = segbmn.mask_pyramid(jnp.asarray(m), 3, mode="min")
  assert [a.shape for a in area] == [(1, 4, 4, 1), (1, 2, 2, 1), (1, 1, 1, 1)]
  np.testing.assert_allclose(area[1][0, ..., 0], [[0.75, 1.0], [1.0, 0.5]])
  np.testing.assert_allclose(area[2][0, 0, 0, 0], 13 / 16)
  np.testing.assert_array_equal(mins[1][0, ..., 0], [[0.0, 1.0], [1.0, 0.0]])
  assert float(mins[2][0, 0, 0, 0]) == 0.0


def _data(b=2, k=3, h=13, w=10, seed=0):
  rng = np.random.default_rng(seed)
  frames = rng.random((b, k, h, w, 3)).astype(np.float32)
  masks = (rng.random((b, k, h, w, 1)) > 0.3).astype(np.float32)
  masks[:, :, :3, :3] = 0  # every frame foreground there: exercises the empty fill
  return jnp.asarray(frames), jnp.asarray(masks)


@pytest.fixture(scope="module")
def model_and_params():
  model = segbmn.SegBMN(features=SMALL)
  frames, masks = _data()
  # One normal draw cut into the kernels (He-normal): a jitted flax init compiles for ~20 s on CPU.
  return model, init.random_variables(model, jax.random.key(0), frames, masks)


def test_shapes_padding_and_gradients(model_and_params):
  model, variables = model_and_params
  frames, masks = _data()  # 13 x 10: not multiples of 2**(L-1) = 4
  out = jax.jit(model.apply)(variables, frames, masks)
  assert out["background"].shape == (2, 13, 10, 3)
  assert out["identity"].shape == (2, 3, 13, 10, 3)
  for v in out.values():
    assert v.dtype == jnp.float32 and bool(jnp.all((v > 0) & (v < 1)))
  assert set(variables["params"]) == {"encoder", "decoder_bg", "decoder_idt"}

  def loss(params, frames):
    o = model.apply({"params": params}, frames, masks)
    return jnp.mean(o["background"]) + jnp.mean(o["identity"] ** 2)

  g_p, g_x = jax.jit(jax.grad(loss, argnums=(0, 1)))(variables["params"], frames)
  leaves = jax.tree.leaves(g_p) + [g_x]
  assert all(np.all(np.isfinite(np.asarray(leaf))) for leaf in leaves)
  for name in ("encoder", "decoder_bg", "decoder_idt"):
    assert any(float(jnp.abs(leaf).max()) > 0 for leaf in jax.tree.leaves(g_p[name])), name


def test_background_is_permutation_invariant(model_and_params):
  model, variables = model_and_params
  frames, masks = _data(seed=1)
  perm = np.array([2, 0, 1])
  apply = jax.jit(model.apply)
  a = apply(variables, frames, masks)
  b = apply(variables, frames[:, perm], masks[:, perm])
  np.testing.assert_allclose(np.asarray(b["background"]), np.asarray(a["background"]), atol=1e-6)
  np.testing.assert_allclose(np.asarray(b["identity"]), np.asarray(a["identity"])[:, perm],
                             atol=1e-6)
  # ... while the order-free background does depend on the frames' content.
  c = apply(variables, frames[:, :, ::-1], masks)
  assert float(jnp.abs(c["background"] - a["background"]).max()) > 1e-4


def test_fully_foreground_frame_has_no_influence(model_and_params):
  model, variables = model_and_params
  frames, masks = _data(seed=2)
  # Frame 0 all background, frame 2 all foreground.
  masks = masks.at[:, 0].set(1.0).at[:, 2].set(0.0)
  apply = jax.jit(model.apply)
  a = apply(variables, frames, masks)
  changed = frames.at[:, 2].set(1.0 - frames[:, 2])
  b = apply(variables, changed, masks)
  np.testing.assert_array_equal(np.asarray(b["background"]), np.asarray(a["background"]))
  # The same change in a frame that is background somewhere does move the background.
  changed_1 = frames.at[:, 1].set(1.0 - frames[:, 1])
  c = apply(variables, changed_1, masks)
  assert float(jnp.abs(c["background"] - a["background"]).max()) > 1e-4


def test_remat_changes_nothing_but_memory(model_and_params):
  model, variables = model_and_params
  frames, masks = _data()
  remat = segbmn.SegBMN(features=SMALL, remat=True)
  assert (jax.tree.structure(jax.eval_shape(remat.init, jax.random.key(0), frames, masks))
          == jax.tree.structure(variables))

  def loss(m, p):
    return jnp.mean(m.apply(p, frames, masks)["background"])

  g0 = jax.jit(jax.grad(lambda p: loss(model, p)))(variables)
  g1 = jax.jit(jax.grad(lambda p: loss(remat, p)))(variables)
  for x, y in zip(jax.tree.leaves(g0), jax.tree.leaves(g1)):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=1e-6)


@pytest.mark.parametrize("options", [
    dict(downsample="conv", upsample="transpose", mask_resize="min", weighting="mean"),
    dict(downsample="avgpool", empty_fill="zero"),
])
def test_variants_shapes(options):
  frames, masks = _data(b=1, k=2, h=9, w=17)
  model = segbmn.SegBMN(features=SMALL, **options)
  variables = jax.eval_shape(model.init, jax.random.key(0), frames, masks)
  out = jax.eval_shape(model.apply, variables, frames, masks)
  assert out["background"].shape == (1, 9, 17, 3)
  assert out["identity"].shape == (1, 2, 9, 17, 3)


def test_default_parameter_count_and_bad_options():
  model = segbmn.SegBMN()
  frames = jnp.zeros((1, 2, 16, 16, 3))
  masks = jnp.ones((1, 2, 16, 16, 1))
  variables = jax.eval_shape(model.init, jax.random.key(0), frames, masks)
  counts = {k: sum(int(np.prod(x.shape)) for x in jax.tree.leaves(v))
            for k, v in variables["params"].items()}
  assert counts == {"encoder": 1_172_256, "decoder_bg": 968_451, "decoder_idt": 968_451}
  with pytest.raises(ValueError):
    jax.eval_shape(segbmn.SegBMN(mask_resize="bilinear").init, jax.random.key(0), frames, masks)
  with pytest.raises(ValueError):
    jax.eval_shape(model.init, jax.random.key(0), frames, masks[..., 0])


def test_image_skip_starts_at_the_pixel_level_masked_mean_and_trains():
  model = segbmn.SegBMN(features=SMALL, image_skip=True)
  frames, masks = _data()
  variables = model.init(jax.random.key(1), frames, masks)  # flax's init: the skip head's kernel is zero
  assert not np.any(np.asarray(variables["params"]["decoder_bg"]["head"]["kernel"]))
  out = jax.jit(model.apply)(variables, frames, masks)
  expected = segbmn.masked_aggregate(frames, masks)  # binary masks: the masked mean of the K frames' pixels
  expected = np.clip(np.asarray(expected), segbmn.BASE_EPS, 1 - segbmn.BASE_EPS)
  np.testing.assert_allclose(out["background"], expected, atol=1e-5)
  # The head learns: its gradient is non-zero at the start, and after one step the output moves.
  grads = jax.grad(lambda p: jnp.mean(jnp.abs(model.apply({"params": p}, frames, masks)["background"] - 0.5)))(
      variables["params"])
  assert np.any(np.asarray(grads["decoder_bg"]["head"]["kernel"]))
