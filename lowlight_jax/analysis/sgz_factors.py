"""Inspecting SGZ's enhancement factors: factor maps, curve iterations, histograms, brightness.

Paper: Zheng & Gupta, "Semantic-Guided Zero-Shot Learning for Low-Light Image/Video Enhancement"
(WACV Workshops 2022). Reference code: ShenZheng2000/Semantic-Guided-Low-Light-Image-Enhancement
(`modeling/model.py` `enhance_net_nopool.forward`, `test.py`), commit 94dedc5.

The SGZ pipeline is EFE -> enhancement factor `x_r` (3 channels in (-1, 1), one map shared by all
iterations) -> 8 iterations of the curve `x_t = x_{t-1} + x_r (x_{t-1}^2 - x_{t-1})` (Eq. 1). For
x in (0, 1) the bracket is negative, so a pixel is brightened iff its `x_r < 0`, and the brightening
grows with |x_r| (the paper's Fig. 4: "greater |x_r| indicates a more intense enhancement").

Sec. 3.1 / Fig. 3 of the paper observe that "brighter regions in the low-light image correspond to
lower values in the enhancement factor, and vice versa", i.e. darker regions are enhanced more. With
the released weights `x_r` is negative everywhere, so the observation holds for the enhancement
strength |x_r| (negative correlation with input brightness) and, equivalently, the signed `x_r` is
positively correlated with brightness (dark pixels get the most negative `x_r`).
`factor_brightness_correlation` reports both.

This module is what `notebooks/inspect_enhancement_factors.ipynb` calls; it holds all the logic, the
notebook only plots. Figures are built with `matplotlib.figure.Figure` (no pyplot state), so the
helpers also work headless.
"""

from __future__ import annotations

import os
from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from lowlight_jax.models import sgz as sgz_model

PathLike = str | os.PathLike
# BT.601 luma, as `metrics.full_reference` uses for its 'y' channel (without the 16..235 offset).
LUMA_WEIGHTS = np.array([0.299, 0.587, 0.114], np.float32)


class LoadedSGZ(NamedTuple):
  """An SGZ enhancer ready for `sgz_forward`: `efe_apply(params, x_small) -> x_r_small`."""
  efe_apply: Callable[[Any, jax.Array], jax.Array]
  params: Any
  scale_factor: int


def load_sgz(workdir: PathLike | None = None, weights: PathLike | None = None, *,
             step: int | None = None, scale_factor: int | None = None) -> LoadedSGZ:
  """Loads an SGZ enhancer from a training run or from released weights (exactly one of the two).

  Args:
    workdir: a run directory written by `launch.train` (its `config.json` and Orbax checkpoints);
      the newest checkpoint (or `step`) is restored with `trainer.restore_for_inference`.
    weights: the authors' `Epoch99.pth`, its `.npz`/`.safetensors` conversion or a converted file.
    step: checkpoint step (run mode only).
    scale_factor: EFE downsampling factor; default the run's `inference.scale_factor`, or 12 (the
      authors' test script) for released weights.

  Returns:
    `LoadedSGZ(efe_apply, params, scale_factor)`, unpackable as a 3-tuple.
  """
  if (workdir is None) == (weights is None):
    raise ValueError("give exactly one of workdir (a training run) or weights (released weights)")
  if weights is not None:
    from lowlight_jax.inference import released
    if step is not None:
      raise ValueError("step only applies to a training run (workdir)")
    variables = released.load_released("sgz", weights)
    efe = sgz_model.EnhancementFactorExtractor(precision=jax.lax.Precision.HIGHEST)
    s = released.DEFAULT_SGZ_SCALE if scale_factor is None else int(scale_factor)
    return LoadedSGZ(efe.apply, variables, s)
  # The run-config reader (config.json -> ConfigDict) lives with the CLIs; imported lazily.
  from lowlight_jax.train import run_config as _common
  from lowlight_jax.train import trainer

  config = _common.load_run_config(os.fspath(workdir))
  if config.method != "sgz":
    raise ValueError(f"{workdir} is a {config.method!r} run, not an SGZ run")
  setup = trainer.restore_for_inference(config, os.fspath(workdir), step)
  enhancer = jax.device_get(setup.state.params["enhancer"])
  s = int(config.inference.scale_factor) if scale_factor is None else int(scale_factor)
  return LoadedSGZ(setup.method.efe.apply, {"params": enhancer}, s)


def load_eval_images(workdir: PathLike | None = None, num_images: int | None = None
                     ) -> list[dict[str, Any]]:
  """Evaluation images [{'name', 'low', 'high'}] of a run's data config, or the embedded test set.

  Without `workdir` (e.g. released weights) this is the embedded test split (photos shipped with
  scikit-image/matplotlib, deterministically degraded). `num_images` keeps the first ones.
  """
  from data_pipelines import pipeline  # The library core does not need grain.
  if workdir is None:
    data_cfg = pipeline.default_data_config()
  else:
    from lowlight_jax.train import run_config as _common
    data_cfg = _common.load_run_config(os.fspath(workdir)).data
  images = pipeline.make_eval_set(data_cfg, split="test")
  return images if num_images is None else images[:int(num_images)]


def to_float_image(image: Any) -> np.ndarray:
  """(H, W, 3) uint8 (divided by 255, as the authors' scripts do) or float -> float32."""
  img = np.asarray(image)
  if img.ndim != 3 or img.shape[-1] != 3:
    raise ValueError(f"expected an (H, W, 3) RGB image, got shape {img.shape}")
  if img.dtype == np.uint8:
    return img.astype(np.float32) / np.float32(255)
  return img.astype(np.float32)


def luminance(image: Any) -> np.ndarray:
  """BT.601 luma 0.299 R + 0.587 G + 0.114 B of an (..., 3) image in [0, 1]."""
  return np.asarray(image, np.float32) @ LUMA_WEIGHTS


def curve_iterations(x: Any, x_r: Any, iterations: int = 8) -> list[np.ndarray]:
  """Every iterate x_1 .. x_T of the SGZ curve (unclipped); the last is `models.sgz.apply_curve`.

  Args:
    x: the input image(s), (..., 3) in [0, 1].
    x_r: the enhancement factor, broadcastable to `x` (the full-resolution map of `sgz_forward`).
    iterations: T (8 as released).
  """
  x = jnp.asarray(x, jnp.float32)
  x_r = jnp.asarray(x_r, jnp.float32)
  out = []
  for _ in range(int(iterations)):
    # The same expression as `apply_curve`, so the last iterate matches it bit for bit.
    x = x + x_r * (x * x - x)
    out.append(np.asarray(x))
  return out


def trace_enhancement(model: LoadedSGZ | tuple, image: Any, *, iterations: int = 8,
                      crop_to_multiple: bool = False) -> dict[str, Any]:
  """Runs SGZ on one image and keeps every intermediate.

  Args:
    model: `(efe_apply, params, scale_factor)`, e.g. from `load_sgz`.
    image: (H, W, 3) uint8 or float in [0, 1].
    iterations: curve iterations (8 as released).
    crop_to_multiple: False (default): keep H x W, as `launch.enhance --workdir` does; True: crop
      to multiples of the scale factor as the authors' `test.py` does (see `sgz_forward`).

  Returns:
    dict of numpy arrays without the batch axis: `input` (the image the curve is applied to),
    `factor` (full-resolution x_r), `factor_lowres` (the EFE output), `iterations` (list of the
    T unclipped iterates), `enhanced` (the unclipped last iterate) and `output` (clipped to [0, 1]).
  """
  efe_apply, params, scale_factor = model
  x = to_float_image(image)
  out = sgz_model.sgz_forward(efe_apply, params, jnp.asarray(x)[None], scale_factor=scale_factor,
                              crop_to_multiple=crop_to_multiple, iterations=iterations)
  factor = np.asarray(out["factor"])[0]
  x = x[:factor.shape[0], :factor.shape[1]]
  steps = curve_iterations(x, factor, iterations)
  return {
      "input": x,
      "factor": factor,
      "factor_lowres": np.asarray(out["factor_lowres"])[0],
      "iterations": steps,
      "enhanced": np.asarray(out["enhanced"])[0],
      "output": np.clip(np.asarray(out["enhanced"])[0], 0.0, 1.0),
  }


class Histogram(NamedTuple):
  """Per-channel histogram: `counts` (C, bins) int64 and the shared bin `edges` (bins + 1,)."""
  counts: np.ndarray
  edges: np.ndarray


def histogram(a: Any, *, bins: int = 64,
              value_range: tuple[float, float] = (0.0, 1.0)) -> Histogram:
  """Per-channel histogram of an (..., C) array over `value_range`.

  Values outside the range are clipped into it (counted in the first / last bin), so every pixel is
  counted: the unclipped curve iterates may exceed 1.
  """
  a = np.asarray(a, np.float64)
  lo, hi = float(value_range[0]), float(value_range[1])
  edges = np.linspace(lo, hi, int(bins) + 1)
  flat = np.clip(a.reshape(-1, a.shape[-1]), lo, hi)
  counts = np.stack([np.histogram(flat[:, c], bins=edges)[0] for c in range(flat.shape[1])])
  return Histogram(counts, edges)


def trace_histograms(trace: dict[str, Any], *, bins: int = 64) -> dict[str, Histogram]:
  """Histograms of a `trace_enhancement` result, in display order.

  Keys: `input`, `factor`, `factor_lowres`, `iteration_1` .. `iteration_T` and `output`. Images
  are binned over [0, 1]; both factor maps over the full-resolution factor's own [min, max] (a
  trained x_r occupies a narrow part of the tanh range (-1, 1)), so their bins are comparable.
  """
  hists = {"input": histogram(trace["input"], bins=bins)}
  lo, hi = float(np.min(trace["factor"])), float(np.max(trace["factor"]))
  if hi - lo < 1e-6:
    lo, hi = lo - 1e-3, hi + 1e-3
  for key in ("factor", "factor_lowres"):
    hists[key] = histogram(trace[key], bins=bins, value_range=(lo, hi))
  for i, step in enumerate(trace["iterations"], start=1):
    hists[f"iteration_{i}"] = histogram(step, bins=bins)
  hists["output"] = histogram(trace["output"], bins=bins)
  return hists


class FactorCorrelation(NamedTuple):
  """Correlations between the per-pixel channel-mean factor and input luminance.

  `pearson` / `spearman`: of the signed factor mean(x_r). `magnitude_pearson` /
  `magnitude_spearman`: of the enhancement strength |mean(x_r)| (the paper's Fig. 3 claim is that
  this is negative). `num_pixels`: how many pixels were used.
  """
  pearson: float
  spearman: float
  magnitude_pearson: float
  magnitude_spearman: float
  num_pixels: int


def pearson(a: Any, b: Any) -> float:
  """Pearson correlation of two equally sized arrays (NaN if either is constant)."""
  a = np.asarray(a, np.float64).ravel()
  b = np.asarray(b, np.float64).ravel()
  if a.shape != b.shape or a.size < 2:
    raise ValueError(f"need two arrays of the same size >= 2, got {a.shape} and {b.shape}")
  a = a - a.mean()
  b = b - b.mean()
  denom = np.sqrt(np.dot(a, a) * np.dot(b, b))
  return float(np.dot(a, b) / denom) if denom > 0 else float("nan")


def spearman(a: Any, b: Any) -> float:
  """Spearman rank correlation (ties get their average rank, as `scipy.stats.spearmanr`)."""
  from scipy import stats
  return pearson(stats.rankdata(np.asarray(a).ravel()), stats.rankdata(np.asarray(b).ravel()))


def factor_brightness_correlation(image: Any, factor: Any) -> FactorCorrelation:
  """How the enhancement factor follows input brightness (the paper's Fig. 3 observation).

  Args:
    image: (H, W, 3) input in [0, 1] (or uint8).
    factor: (H, W, 3) or (H, W) full-resolution x_r, aligned with `image` (a larger image is cropped
      to the factor's size, as `trace_enhancement` with cropping does).
  """
  f = np.asarray(factor, np.float32)
  if f.ndim == 3:
    f = f.mean(axis=-1)
  x = to_float_image(image)[:f.shape[0], :f.shape[1]]
  if x.shape[:2] != f.shape:
    raise ValueError(f"factor {f.shape} is larger than the image {x.shape[:2]}")
  lum = luminance(x)
  return FactorCorrelation(pearson(f, lum), spearman(f, lum), pearson(np.abs(f), lum),
                           spearman(np.abs(f), lum), int(f.size))


def scatter_sample(image: Any, factor: Any, *, max_points: int = 4000, seed: int = 0
                   ) -> tuple[np.ndarray, np.ndarray]:
  """A fixed random subset of (luminance, channel-mean factor) pixel pairs, for scatter plots."""
  f = np.asarray(factor, np.float32)
  f = f.mean(axis=-1) if f.ndim == 3 else f
  lum = luminance(to_float_image(image)[:f.shape[0], :f.shape[1]]).ravel()
  f = f.ravel()
  if f.size > max_points:
    idx = np.random.default_rng(seed).choice(f.size, size=max_points, replace=False)
    lum, f = lum[idx], f[idx]
  return lum, f


# ----------------------------------------------------------------------------------------------
# Figures (matplotlib.figure.Figure, no pyplot state). In a notebook: `display(fig)`.


def _figure(figsize):
  from matplotlib.figure import Figure
  return Figure(figsize=figsize, layout="constrained")


def _show_image(ax, img, title):
  ax.imshow(np.clip(np.asarray(img, np.float32), 0.0, 1.0))
  ax.set_title(title, fontsize=9)
  ax.set_axis_off()


def _show_factor(fig, ax, factor, title):
  f = np.asarray(factor, np.float32)
  im = ax.imshow(f.mean(axis=-1) if f.ndim == 3 else f, cmap="viridis")
  ax.set_title(title, fontsize=9)
  ax.set_axis_off()
  fig.colorbar(im, ax=ax, shrink=0.8)


def plot_factor_panel(trace: dict[str, Any], title: str | None = None):
  """Input, factor map (channel mean, full-res and EFE resolution), output, and every iteration.

  Returns a `matplotlib.figure.Figure`: row 1 input / x_r / low-res x_r / output, then the T
  (clipped for display) curve iterates, four per row.
  """
  steps = trace["iterations"]
  cols = 4
  rows = 1 + -(-len(steps) // cols)
  fig = _figure((3.2 * cols, 2.6 * rows))
  axes = fig.subplots(rows, cols, squeeze=False)
  _show_image(axes[0, 0], trace["input"], "input")
  _show_factor(fig, axes[0, 1], trace["factor"], "enhancement factor x_r (channel mean)")
  h, w = np.shape(trace["factor_lowres"])[:2]
  _show_factor(fig, axes[0, 2], trace["factor_lowres"], f"x_r at EFE resolution ({h}x{w})")
  _show_image(axes[0, 3], trace["output"], "output")
  for i in range(cols * (rows - 1)):
    ax = axes[1 + i // cols, i % cols]
    if i < len(steps):
      _show_image(ax, steps[i], f"iteration {i + 1}")
    else:
      ax.set_axis_off()
  if title:
    fig.suptitle(title)
  return fig


def plot_histograms(hists: dict[str, Histogram], title: str | None = None,
                    keys: Sequence[str] | None = None):
  """One subplot per histogram (R, G, B lines), e.g. of `trace_histograms`; returns a Figure."""
  keys = list(hists) if keys is None else list(keys)
  cols = 4
  rows = -(-len(keys) // cols)
  fig = _figure((3.2 * cols, 2.2 * rows))
  axes = fig.subplots(rows, cols, squeeze=False)
  colours = ("tab:red", "tab:green", "tab:blue")
  for i, ax in enumerate(axes.ravel()):
    if i >= len(keys):
      ax.set_axis_off()
      continue
    counts, edges = hists[keys[i]]
    centres = (edges[:-1] + edges[1:]) / 2
    for c in range(counts.shape[0]):
      ax.plot(centres, counts[c], color=colours[c % 3], lw=1)
    ax.set_title(keys[i], fontsize=9)
    ax.set_yscale("log")
    ax.tick_params(labelsize=7)
  if title:
    fig.suptitle(title)
  return fig


def plot_brightness_scatter(trace: dict[str, Any], corr: FactorCorrelation | None = None, *,
                            max_points: int = 4000, title: str | None = None):
  """Scatter of the channel-mean factor against input luminance, with the correlations as text."""
  corr = factor_brightness_correlation(trace["input"], trace["factor"]) if corr is None else corr
  lum, f = scatter_sample(trace["input"], trace["factor"], max_points=max_points)
  fig = _figure((5.0, 4.0))
  ax = fig.subplots()
  ax.scatter(lum, f, s=2, alpha=0.3)
  ax.set_xlabel("input luminance (BT.601)")
  ax.set_ylabel("enhancement factor x_r (channel mean)")
  ax.set_title(f"{title or 'factor vs. brightness'}\n"
               f"x_r: Pearson {corr.pearson:+.3f}, Spearman {corr.spearman:+.3f}\n"
               f"|x_r|: Pearson {corr.magnitude_pearson:+.3f}, "
               f"Spearman {corr.magnitude_spearman:+.3f}",
               fontsize=9)
  return fig
