"""Enhancing images with the authors' released weights, exactly as their test scripts do.

Methods and the reference scripts reproduced (see ../shared/conformance/MANIFEST.md):
  * `sgz`: SGZ (Zheng & Gupta, WACV-W 2022) `test.py` - crop H, W down to multiples of the scale
    factor (12, hard-coded by the authors), EFE on the 1/12 bilinear downsample, align-corners
    upsample of x_r, 8 curve iterations at full resolution. `keep_size=True` keeps the full input
    size instead (edge pad, see `models.sgz.sgz_forward`).
  * `zero_dce`: Zero-DCE (Guo et al., CVPR 2020) `lowlight_test.py`, full resolution.
  * `scl_lle`: SCL-LLE (Liang et al., AAAI 2022) `lowlight_test.py`, full resolution (same network).

Outputs are the clipped float image and the uint8 image torchvision's `save_image` would write
(floor(clip(255 y + 0.5)), computed in numpy float32 so no fused multiply-add changes the rounding).
"""

import functools
import os
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from lowlight_jax import errors
from lowlight_jax.convert import io as convert_io
from lowlight_jax.convert import layout
from lowlight_jax.convert import weights as convert_weights

PathLike = str | os.PathLike
ENHANCE_METHODS = ("sgz", "zero_dce", "scl_lle")
DEFAULT_SGZ_SCALE = 12  # SGZ test.py: Tester.scale_factor = 12


def load_released(method: str, path: PathLike, *, key: str | None = None) -> dict[str, Any]:
  """Loads `method`'s weights from an original checkpoint or from a converted file.

  Original checkpoints: torch .pth/.pt/.bin (read without torch), .safetensors or .npz.

  Args:
    method: one of `convert.weights.METHODS`.
    path: the weights file; the format is detected from its content.
    key: optional key of the state dict inside a torch checkpoint (see
    `convert.io.load_state_dict`).

  Returns:
    Flax variables (`{'params': ...}`), ready for the model's `apply` and for `enhance_released`.
  """
  if convert_weights.is_converted_file(path):
    variables, meta = convert_weights.load_params(path)
    if not convert_weights.same_architecture(meta["method"], method):
      raise ValueError(f"{path} holds converted {meta['method']!r} weights, not {method!r}")
    # Re-validate against the model (catches stale or hand-edited files).
    return layout.assign(convert_weights.init_shapes(method), variables, strict=True)
  return convert_weights.convert(method, convert_io.load_state_dict(path, key=key))


@functools.lru_cache(maxsize=None)
def _forward_fn(method: str, scale_factor: int, crop: bool):
  """One jitted forward per (method, scale, crop); jax.jit caches an executable per image shape."""
  model = convert_weights.build_model(method, precision=jax.lax.Precision.HIGHEST)
  if method == "sgz":
    from lowlight_jax.models import sgz

    def fwd(variables, x):
      return sgz.sgz_forward(model.apply, variables, x, scale_factor=scale_factor,
                             crop_to_multiple=crop)
  else:
    fwd = model.apply
  return jax.jit(fwd)


def quantize_like_save_image(y: np.ndarray) -> np.ndarray:
  """torchvision `save_image`: `y.mul(255).add_(0.5).clamp_(0, 255).to(uint8)` in float32."""
  y = np.asarray(y, np.float32)
  return np.clip(y * np.float32(255) + np.float32(0.5), 0, 255).astype(np.uint8)


def _sgz_scale(method: str, scale_factor: int | None) -> int:
  if method not in ENHANCE_METHODS:
    raise ValueError(f"enhance_released supports {ENHANCE_METHODS}, not {method!r}")
  if method == "sgz":
    return DEFAULT_SGZ_SCALE if scale_factor is None else int(scale_factor)
  if scale_factor not in (None, 1):
    raise ValueError(f"{method} runs at full resolution; scale_factor is SGZ-only")
  return 1


def min_input_size(method: str, *, scale_factor: int | None = None, keep_size: bool = False) -> int:
  """Smallest height and width `method` enhances: the scale factor for SGZ's released crop (which
  crops down to multiples of it), else 1 (`keep_size` pads instead of cropping)."""
  s = _sgz_scale(method, scale_factor)
  return s if method == "sgz" and not keep_size else 1


def make_enhancer(method: str, variables: Any, *, scale_factor: int | None = None,
                  keep_size: bool = False) -> Callable[[np.ndarray], np.ndarray]:
  """Batched released-weights enhancement: (B, H, W, 3) float in [0, 1] -> (B, h, w, 3) uint8.

  The same jitted forward and `save_image` rounding as `enhance_released`; (h, w) as there. One
  compilation per input shape, so feed fixed-size batches (video frames) to compile once.
  """
  s = _sgz_scale(method, scale_factor)
  fn = _forward_fn(method, s, method == "sgz" and not keep_size)
  smallest = min_input_size(method, scale_factor=scale_factor, keep_size=keep_size)

  def enhance(batch: np.ndarray) -> np.ndarray:
    x = np.asarray(batch)
    if x.ndim != 4 or x.shape[-1] != 3:
      raise ValueError(f"expected a (B, H, W, 3) RGB batch, got shape {x.shape}")
    if min(x.shape[1:3]) < smallest:
      raise errors.InputError(
          f"image {x.shape[2]}x{x.shape[1]} is smaller than SGZ's scale factor {s}, which the authors' "
          "pipeline crops to multiples of (keep_size / --keep-size enhances any size)")
    x = x.astype(np.float32) / np.float32(255) if x.dtype == np.uint8 else x.astype(np.float32)
    y = np.asarray(jax.device_get(fn(variables, jnp.asarray(x))["enhanced"]))
    return quantize_like_save_image(y)

  return enhance


def enhance_released(method: str, variables: Any, image: np.ndarray, *,
                     scale_factor: int | None = None, keep_size: bool = False,
                     return_aux: bool = False) -> dict[str, Any]:
  """Enhances one image with released weights.

  Args:
    method: `sgz`, `zero_dce` or `scl_lle`.
    variables: from `load_released`.
    image: (H, W, 3) RGB, float in [0, 1] (uint8 is divided by 255 like the authors' scripts).
    scale_factor: SGZ only; default 12 as in the authors' test script (1 = the training resolution).
    keep_size: SGZ only; keep H x W instead of cropping down to multiples of the scale factor.
    return_aux: also return `aux`, the model's other outputs without the batch axis (SGZ: `factor`,
      `factor_lowres`; DCE-Net: `curves`, `enhanced_4`) and the unclipped `enhanced`.

  Returns:
    dict(enhanced=(h, w, 3) float32 clipped to [0, 1], uint8=(h, w, 3) uint8[, aux]), where (h, w)
    is the input size, or for SGZ without `keep_size` the size cropped down to multiples of the
    scale factor.
  """
  s = _sgz_scale(method, scale_factor)
  img = np.asarray(image)
  if img.ndim != 3 or img.shape[-1] != 3:
    raise ValueError(f"expected an (H, W, 3) RGB image, got shape {img.shape}")
  if img.dtype == np.uint8:
    img = img.astype(np.float32) / np.float32(255)
  img = img.astype(np.float32)
  crop = method == "sgz" and not keep_size
  if crop and min(img.shape[:2]) < s:
    raise errors.InputError(f"image {img.shape[1]}x{img.shape[0]} is smaller than SGZ's scale factor {s}, "
                            "which the authors' pipeline crops to multiples of (keep_size enhances any size)")
  fn = _forward_fn(method, s, crop)
  out = fn(variables, jnp.asarray(img)[None])
  y = np.asarray(jax.device_get(out["enhanced"]))[0]
  result = {"enhanced": np.clip(y, 0.0, 1.0), "uint8": quantize_like_save_image(y)}
  if return_aux:
    result["aux"] = {k: np.asarray(v)[0] for k, v in jax.device_get(out).items()}
  return result
