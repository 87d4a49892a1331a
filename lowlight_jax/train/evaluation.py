"""Periodic evaluation: enhance the evaluation images at full size and score them against ground truth.

The same metric functions as `launch.evaluate` are used (`lowlight_jax.metrics.full_reference`), with the
protocol stated explicitly: RGB, data range 1, no border crop, computed on the uint8-quantised output like a
saved PNG.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from lowlight_jax.metrics import full_reference

PyTree = Any


def quantize(x: jax.Array | np.ndarray) -> np.ndarray:
  """torchvision `save_image` quantisation: floor(clip(255 x + 0.5)), as uint8."""
  x = np.asarray(x, np.float32)
  return np.floor(np.clip(x * np.float32(255.0) + np.float32(0.5), 0, 255)).astype(np.uint8)


def image_metrics(pred01: np.ndarray, ref01: np.ndarray) -> dict[str, float]:
  """PSNR/SSIM (RGB, data range 1, no crop) of one HxWx3 prediction against its reference."""
  a = jnp.asarray(pred01, jnp.float32)[None]
  b = jnp.asarray(ref01, jnp.float32)[None]
  return {
      "psnr": float(full_reference.psnr(a, b, data_range=1.0)[0]),
      "ssim": float(full_reference.ssim(a, b, data_range=1.0)[0]),
  }


def evaluate(enhance_fn: Callable[[jax.Array], Mapping[str, jax.Array]],
             eval_set: Sequence[Mapping[str, Any]], *, with_inputs: bool = True
             ) -> tuple[dict[str, float], list[dict[str, Any]]]:
  """Runs `enhance_fn` (jitted; NHWC batch of one) on every eval element.

  Returns:
    (mean metrics {'psnr', 'ssim', 'input_psnr', 'input_ssim'}, per-image records with names, metrics and the
    uint8 output plus any extra output images).
  """
  records = []
  for element in eval_set:
    low = np.asarray(element["low"], np.float32)
    outputs = jax.device_get(enhance_fn(jnp.asarray(low)[None]))
    enhanced = quantize(outputs["enhanced"][0])
    rec: dict[str, Any] = {"name": element["name"], "enhanced": enhanced, "outputs": outputs}
    if element.get("high") is not None:
      high = np.asarray(element["high"], np.float32)
      rec.update(image_metrics(enhanced.astype(np.float32) / 255.0, high))
      if with_inputs:
        rec.update({f"input_{k}": v for k, v in image_metrics(low, high).items()})
    records.append(rec)
  keys = [k for k in ("psnr", "ssim", "input_psnr", "input_ssim") if records and k in records[0]]
  means = {k: float(np.mean([r[k] for r in records])) for k in keys}
  return means, records
