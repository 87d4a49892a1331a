"""SKF SCH loss: parity with the authors' hist_loss (values, terms, gradients), edge removal."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lowlight_jax.losses import skf_histogram as sh


def _case(conformance_dir, case):
  d = np.load(conformance_dir / "fixtures" / f"skf_hist_case_{case}_io.npz")
  nhwc = {k: jnp.asarray(d[k].transpose(0, 2, 3, 1)) for k in ("seg_pred", "img1", "img2")}
  return d, nhwc


@pytest.fixture(scope="module")
def reference(conformance_dir):
  return json.loads((conformance_dir / "fixtures" / "skf_hist_loss.json").read_text())


@pytest.mark.parametrize("case", ["a", "b"])
def test_terms_and_losses_match_released(conformance_dir, reference, case):
  d, x = _case(conformance_dir, case)
  k = d["seg_pred"].shape[1]
  labels = sh.class_labels(x["seg_pred"])
  # The argmax class counts the fixture recorded (case b: 1- and 2-pixel classes, empty classes).
  counts = np.stack([np.bincount(np.asarray(l).ravel(), minlength=k) for l in labels])
  np.testing.assert_array_equal(counts,
                                reference["results"][case]["argmax_class_pixel_counts_per_image"])
  terms = sh.semantic_histogram_terms(labels, x["img1"], x["img2"], num_classes=k,
                                      edge_radius=sh.RELEASED_EDGE_RADIUS)
  np.testing.assert_allclose(terms, d["l1_terms_float64"], rtol=0,
                             atol=1e-6 * np.abs(d["l1_terms_float64"]).max())
  assert np.all(np.asarray(terms)[counts == 0] == 0)
  for norm in ("llflow", "drbn"):
    per_example = sh.semantic_histogram_loss(x["seg_pred"], x["img1"], x["img2"],
                                             normalization=norm, edge_radius=0)
    assert per_example.shape == (2,)
    ref = reference["results"][case][norm]
    np.testing.assert_allclose(float(per_example.mean()), ref["loss_float64"], rtol=1e-6)
    np.testing.assert_allclose(float(per_example.mean()), ref["loss_float32"], rtol=1e-6)


@pytest.mark.parametrize("case", ["a", "b"])
def test_gradients_match_released(conformance_dir, case):
  d, x = _case(conformance_dir, case)

  def loss(a, b, norm="llflow"):
    return sh.semantic_histogram_loss(x["seg_pred"], a, b, normalization=norm, edge_radius=0).mean()

  g1, g2 = jax.grad(loss, argnums=(0, 1))(x["img1"], x["img2"])
  for g, key in ((g1, "grad_img1_llflow_f64"), (g2, "grad_img2_llflow_f64")):
    ref = d[key].transpose(0, 2, 3, 1)
    np.testing.assert_allclose(g, ref, rtol=0, atol=1e-5 * np.abs(ref).max())
  # DRBN's normalisation scales the gradient by 1/(3 K).
  g_drbn = jax.grad(lambda a: loss(a, x["img2"], "drbn"))(x["img1"])
  np.testing.assert_allclose(g_drbn, g1 / (3 * 59), rtol=1e-5, atol=1e-12)
  # No gradient reaches the segmentation (hard argmax).
  g_seg = jax.grad(lambda s: sh.semantic_histogram_loss(s, x["img1"], x["img2"]).sum())(
      x["seg_pred"])
  assert float(jnp.abs(g_seg).max()) == 0.0


def test_soft_histogram_counts_pixels():
  vals = jnp.asarray([0.3, 0.3 + 1 / 512, 0.7, 0.0], jnp.float32)[None, :, None]  # (1, 4, 1)
  w = jnp.asarray([[1, 1, 1, 0], [0, 0, 0, 1]], jnp.float32).T[None]  # (1, 4, 2)
  h = np.asarray(sh.soft_histograms(vals, w, bins_per_step=8))[0, :, 0]  # (2, 256)
  # Bins telescope: an interior value adds 1 in all; a value of exactly 0 adds sigmoid(0) = 1/2.
  np.testing.assert_allclose(h.sum(axis=-1), [3.0, 0.5], rtol=1e-5)
  # Mass sits at the value's bin: 0.7 lies in bin 179 (centre 0.7012), 0.3 on the 76/77 edge.
  assert np.argmax(h[0, 150:]) + 150 == 179
  assert h[0, 76] > 0.5 and h[0, 77] > 0.5 and h[0, 0] < 1e-30
  # A value at a bin centre puts 2 sigmoid(0.78125) - 1 in that bin, not 1 (the paper's Eq. 9
  # describes a steeper kernel than slope 400 gives).
  c = jnp.asarray([[[100.5 / 256]]], jnp.float32)
  hc = np.asarray(sh.soft_histograms(c, jnp.ones((1, 1, 1)), bins_per_step=16))[0, 0, 0]
  np.testing.assert_allclose(hc[100], 2 / (1 + np.exp(-0.78125)) - 1, rtol=1e-5)
  # The loop's step size changes nothing.
  rng = np.random.default_rng(0)
  v = jnp.asarray(rng.uniform(size=(2, 30, 3)), jnp.float32)
  ww = jnp.asarray(rng.integers(0, 2, (2, 30, 4)), jnp.float32)
  np.testing.assert_allclose(sh.soft_histograms(v, ww, bins_per_step=4),
                             sh.soft_histograms(v, ww, bins_per_step=256), rtol=1e-5, atol=1e-6)


def test_interior_mask_by_hand():
  labels = np.zeros((1, 5, 8), np.int32)
  labels[0, :, 4:] = 1
  labels[0, 0, 0] = 2  # a lone pixel in the image corner
  m1 = np.asarray(sh.interior_mask(jnp.asarray(labels), 1))[0]
  expected = np.ones((5, 8), bool)
  expected[:, 3:5] = False  # both sides of the vertical boundary
  expected[:2, :2] = False  # the lone pixel and its neighbours
  np.testing.assert_array_equal(m1, expected)
  m2 = np.asarray(sh.interior_mask(jnp.asarray(labels), 2))[0]
  assert not m2[:, 2:6].any() and m2[:, 6:].all() and m2[3:, :2].all() and not m2[:3, :3].any()
  assert np.asarray(sh.interior_mask(jnp.asarray(labels), 0)).all()
  with pytest.raises(ValueError):
    sh.interior_mask(jnp.asarray(labels), -1)


def test_edge_removal_removes_boundary_pixels():
  # Two classes split at column 6 of a 6 x 12 image. Inside each class the output equals the
  # target; the columns next to the boundary differ (as a misclassified fringe would).
  h, w = 6, 12
  labels = np.zeros((1, h, w), np.int32)
  labels[0, :, 6:] = 1
  seg = jnp.asarray(np.eye(2, dtype=np.float32)[labels])  # (1, H, W, 2) one-hot map
  target = np.where(labels[..., None] == 0, 0.2, 0.8).astype(np.float32).repeat(3, -1)
  out = target.copy()
  out[0, :, 5] = 0.55  # the last column of class 0 ...
  out[0, :, 6] = 0.45  # ... and the first of class 1
  out, target = jnp.asarray(out), jnp.asarray(target)
  released = sh.semantic_histogram_loss(seg, out, target, edge_radius=0)
  assert float(released[0]) > 1e-3
  for r in (1, 2):
    assert float(sh.semantic_histogram_loss(seg, out, target, edge_radius=r)[0]) == 0.0
  # Radius 1 still counts pixels two columns from the boundary; radius 2 does not.
  out2 = out.at[0, :, 4].set(0.5)
  assert float(sh.semantic_histogram_loss(seg, out2, target, edge_radius=1)[0]) > 1e-3
  assert float(sh.semantic_histogram_loss(seg, out2, target, edge_radius=2)[0]) == 0.0
  # The default removes boundary pixels, and their gradient is zero.
  assert sh.DEFAULT_EDGE_RADIUS == 2
  g = jax.grad(lambda x: sh.semantic_histogram_loss(seg, x, target).sum())(out2 + 0.01)
  g = np.asarray(g)[0]
  assert np.all(g[:, 4:8] == 0) and np.abs(g[:, :4]).max() > 0 and np.abs(g[:, 8:]).max() > 0


def test_per_example_and_checks():
  rng = np.random.default_rng(3)
  seg = jnp.asarray(rng.normal(size=(2, 8, 8, 5)), jnp.float32)
  a = jnp.asarray(rng.uniform(size=(2, 8, 8, 3)), jnp.float32)
  b = jnp.asarray(rng.uniform(size=(2, 8, 8, 3)), jnp.float32)
  base = sh.semantic_histogram_loss(seg, a, b)
  moved = sh.semantic_histogram_loss(seg, a.at[1].set(b[1]), b)
  assert float(moved[0]) == float(base[0]) and float(moved[1]) == 0.0
  with pytest.raises(ValueError, match="normalization"):
    sh.semantic_histogram_loss(seg, a, b, normalization="mean")
  with pytest.raises(ValueError, match="size"):
    sh.semantic_histogram_loss(seg[:, :4], a, b)
  with pytest.raises(ValueError, match="bins_per_step"):
    sh.semantic_histogram_loss(seg, a, b, bins_per_step=7)


def test_memory_stays_bounded():
  # Compile only: value and gradient at B=4, 256x256, 59 classes.
  spec = lambda *s: jax.ShapeDtypeStruct(s, jnp.float32)  # noqa: E731

  def step(seg, out, gt):
    return jax.value_and_grad(lambda x: sh.semantic_histogram_loss(seg, x, gt).mean())(out)

  compiled = jax.jit(step).lower(spec(4, 256, 256, 59), spec(4, 256, 256, 3),
                                 spec(4, 256, 256, 3)).compile()
  temp = compiled.memory_analysis().temp_size_in_bytes
  assert temp < 400 * 2**20, temp / 2**20  # 303 MiB when written; 47.5 GB if materialised
