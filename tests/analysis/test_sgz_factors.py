"""`lowlight_jax.analysis`: curve iterates, histograms, factor/brightness correlation, figures."""

import io

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image
import pytest
from scipy import stats

from lowlight_jax.analysis import sgz_factors
from lowlight_jax.inference import released as released_lib
from lowlight_jax.models import sgz as sgz_model


@pytest.fixture(scope="module")
def released(conformance_dir):
  return sgz_factors.load_sgz(weights=conformance_dir / "weights" / "sgz_epoch99.npz")


def _conformance_image(conformance_dir, name):
  path = conformance_dir / "inputs" / "lowCUT" / f"{name}.png"
  return np.asarray(Image.open(path).convert("RGB"))


def test_curve_iterations_end_at_apply_curve():
  rng = np.random.default_rng(0)
  x = rng.uniform(0, 1, (2, 9, 7, 3)).astype(np.float32)
  x_r = rng.uniform(-1, 1, (2, 9, 7, 3)).astype(np.float32)
  steps = sgz_factors.curve_iterations(x, x_r)
  assert len(steps) == 8
  want = sgz_model.apply_curve(jnp.asarray(x), jnp.asarray(x_r))
  np.testing.assert_array_equal(steps[-1], np.asarray(want))
  np.testing.assert_allclose(steps[0], x + x_r * (x * x - x), rtol=1e-6, atol=1e-7)
  np.testing.assert_allclose(steps[3], steps[2] + x_r * (steps[2] ** 2 - steps[2]), rtol=1e-6,
                             atol=1e-7)
  three = sgz_factors.curve_iterations(x, x_r, iterations=3)
  assert len(three) == 3
  np.testing.assert_array_equal(three[-1], steps[2])
  # A negative factor brightens every step; a positive one darkens.
  grey = np.full((4, 4, 3), 0.3, np.float32)
  up = sgz_factors.curve_iterations(grey, -0.5 * np.ones_like(grey))
  down = sgz_factors.curve_iterations(grey, 0.5 * np.ones_like(grey))
  assert all(b.mean() > a.mean() for a, b in zip([grey] + up[:-1], up))
  assert all(b.mean() < a.mean() for a, b in zip([grey] + down[:-1], down))


def _grey_ramp(h=40, w=50, seed=0):
  """A grey image with uniformly random brightness: its BT.601 luminance equals the grey level."""
  v = np.random.default_rng(seed).uniform(0, 1, (h, w)).astype(np.float32)
  return np.repeat(v[..., None], 3, axis=-1), v


def test_correlation_of_synthetic_factor_maps():
  image, v = _grey_ramp()
  np.testing.assert_allclose(sgz_factors.luminance(image), v, rtol=1e-6)
  # Darker pixels get a more negative (stronger) factor, linear in brightness.
  linear = -0.4 + 0.3 * v
  c = sgz_factors.factor_brightness_correlation(image, np.repeat(linear[..., None], 3, axis=-1))
  assert c.pearson == pytest.approx(1.0, abs=1e-6) and c.spearman == pytest.approx(1.0, abs=1e-9)
  assert c.magnitude_pearson == pytest.approx(-1.0, abs=1e-6)
  assert c.magnitude_spearman == pytest.approx(-1.0, abs=1e-9)
  assert c.num_pixels == v.size
  # Monotone but nonlinear: Spearman is exactly 1, Pearson below it.
  c = sgz_factors.factor_brightness_correlation(image, -np.exp(-4.0 * v))
  assert c.spearman == pytest.approx(1.0, abs=1e-9)
  assert 0.5 < c.pearson < 1.0 - 1e-3
  # The factor is averaged over channels: opposite-signed channels cancel to zero (undefined).
  f = np.stack([v, -v, np.zeros_like(v)], axis=-1)
  assert np.isnan(sgz_factors.factor_brightness_correlation(image, f).pearson)
  # Signed and magnitude correlations differ when the factor changes sign: |v - 0.5| is
  # uncorrelated with v for a uniform v, while v - 0.5 is perfectly correlated.
  c = sgz_factors.factor_brightness_correlation(image, v - 0.5)
  assert c.pearson == pytest.approx(1.0, abs=1e-6) and abs(c.magnitude_pearson) < 0.1


def test_pearson_spearman_match_scipy():
  rng = np.random.default_rng(1)
  a = rng.normal(size=500)
  b = 0.3 * a + rng.normal(size=500)
  b[::7] = np.round(b[::7])  # Some ties.
  a[::5] = 0.0
  assert sgz_factors.pearson(a, b) == pytest.approx(stats.pearsonr(a, b).statistic, abs=1e-12)
  assert sgz_factors.spearman(a, b) == pytest.approx(stats.spearmanr(a, b).statistic, abs=1e-12)
  with pytest.raises(ValueError, match="same size"):
    sgz_factors.pearson(a, b[:10])


def test_histogram_counts_every_pixel():
  rng = np.random.default_rng(2)
  x = rng.uniform(-0.2, 1.3, (20, 30, 3))
  h = sgz_factors.histogram(x, bins=10)
  assert h.counts.shape == (3, 10) and h.edges.shape == (11,)
  np.testing.assert_array_equal(h.counts.sum(axis=1), [600, 600, 600])
  np.testing.assert_allclose(h.edges, np.linspace(0, 1, 11))
  # Out-of-range values land in the edge bins; in-range bins agree with numpy.
  want = np.histogram(x[..., 1], bins=h.edges)[0]
  np.testing.assert_array_equal(h.counts[1, 1:-1], want[1:-1])
  assert h.counts[1, 0] == want[0] + np.sum(x[..., 1] < 0)
  assert h.counts[1, -1] == want[-1] + np.sum(x[..., 1] > 1)


def test_load_released_and_trace_match_the_official_pipeline(released, conformance_dir):
  assert released.scale_factor == released_lib.DEFAULT_SGZ_SCALE
  want = released_lib.load_released("sgz", conformance_dir / "weights" / "sgz_epoch99.npz")
  jax.tree.map(np.testing.assert_array_equal, released.params, want)
  image = _conformance_image(conformance_dir, "1")
  expected = conformance_dir / "expected" / "sgz_s12" / "lowCUT"
  trace = sgz_factors.trace_enhancement(released, image, crop_to_multiple=True)
  h, w = image.shape[0] // 12 * 12, image.shape[1] // 12 * 12
  assert trace["input"].shape == trace["factor"].shape == (h, w, 3)
  assert trace["factor_lowres"].shape == (h // 12, w // 12, 3)
  np.testing.assert_allclose(trace["factor"], np.load(expected / "1_xr.npy"), atol=2e-6)
  np.testing.assert_allclose(trace["factor_lowres"], np.load(expected / "1_xr_lowres.npy"),
                             atol=2e-6)
  np.testing.assert_allclose(trace["enhanced"], np.load(expected / "1.npy"), atol=2e-6)
  assert len(trace["iterations"]) == 8
  np.testing.assert_allclose(trace["iterations"][-1], trace["enhanced"], atol=1e-6)
  np.testing.assert_array_equal(trace["output"], np.clip(trace["enhanced"], 0, 1))
  # Keeping the size: same factor where the crop applies, full-size maps.
  full = sgz_factors.trace_enhancement(released, image)
  assert full["factor"].shape == image.shape
  hists = sgz_factors.trace_histograms(full, bins=32)
  assert list(hists) == (["input", "factor", "factor_lowres"]
                         + [f"iteration_{i}" for i in range(1, 9)] + ["output"])
  for hist in hists.values():
    assert hist.counts.shape == (3, 32)
  np.testing.assert_array_equal(hists["factor"].counts.sum(axis=1),
                                [image.shape[0] * image.shape[1]] * 3)


def test_released_factor_is_stronger_where_the_input_is_dark(released, conformance_dir):
  """The paper (Sec. 3.1, Fig. 3): brighter input regions get lower enhancement-factor values.

  The released x_r is negative (it brightens), so "lower" holds for the enhancement strength |x_r|:
  negative correlation with input luminance, and the signed x_r correlates positively.
  """
  expected = conformance_dir / "expected" / "sgz_s12" / "lowCUT"
  image = _conformance_image(conformance_dir, "1")
  official = sgz_factors.factor_brightness_correlation(image, np.load(expected / "1_xr.npy"))
  assert official.magnitude_pearson < 0 and official.magnitude_spearman < 0
  assert official.pearson > 0 and official.spearman > 0
  for name in ("1", "22", "55", "79"):
    image = _conformance_image(conformance_dir, name)
    trace = sgz_factors.trace_enhancement(released, image, crop_to_multiple=True)
    assert np.all(trace["factor"] < 0), name
    c = sgz_factors.factor_brightness_correlation(trace["input"], trace["factor"])
    assert c.magnitude_pearson < 0 and c.magnitude_spearman < 0, (name, c)
    if name == "1":
      assert c.pearson == pytest.approx(official.pearson, abs=1e-5)
      assert c.spearman == pytest.approx(official.spearman, abs=1e-3)


def test_load_sgz_arguments(tmp_path, conformance_dir):
  # Loading a real run directory is tested with the launch.train smoke run in
  # tests/launch/test_evaluate.py (test_analysis_loads_the_run).
  weights = conformance_dir / "weights" / "sgz_epoch99.npz"
  assert sgz_factors.load_sgz(weights=weights, scale_factor=4).scale_factor == 4
  with pytest.raises(ValueError, match="exactly one"):
    sgz_factors.load_sgz()
  with pytest.raises(ValueError, match="exactly one"):
    sgz_factors.load_sgz(workdir=tmp_path, weights=weights)
  with pytest.raises(ValueError, match="step only applies"):
    sgz_factors.load_sgz(weights=weights, step=3)
  with pytest.raises(FileNotFoundError, match="config.json"):
    sgz_factors.load_sgz(workdir=tmp_path / "missing")


def test_eval_images_and_figures(released):
  images = sgz_factors.load_eval_images(num_images=1)
  assert len(images) == 1 and {"name", "low", "high"} <= set(images[0])
  low = images[0]["low"][:60, :84]
  trace = sgz_factors.trace_enhancement(released, low)
  panel = sgz_factors.plot_factor_panel(trace, title="t")
  shown = [ax for ax in panel.axes if ax.images]
  assert len(shown) == 4 + 8  # input, factor, low-res factor, output, 8 iterations (+ colorbars)
  hists = sgz_factors.trace_histograms(trace, bins=16)
  hfig = sgz_factors.plot_histograms(hists)
  plotted = [ax for ax in hfig.axes if ax.lines]
  assert len(plotted) == len(hists) and all(len(ax.lines) == 3 for ax in plotted)
  corr = sgz_factors.factor_brightness_correlation(trace["input"], trace["factor"])
  sfig = sgz_factors.plot_brightness_scatter(trace, corr)
  assert f"{corr.pearson:+.3f}" in sfig.axes[0].get_title()
  lum, f = sgz_factors.scatter_sample(trace["input"], trace["factor"], max_points=100)
  assert lum.shape == f.shape == (100,)
  for fig in (panel, hfig, sfig):
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=30)
    assert buf.getvalue().startswith(b"\x89PNG")
