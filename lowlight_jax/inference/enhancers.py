"""Enhancers (`batch_enhance.Enhancer`) for a training run or for the authors' released weights, with their parameter
counts: what `launch.enhance` runs on files and `launch.compare` on test sets.

  for_run(workdir)                          a launch.train run (newest checkpoint unless `step`)
  for_released(method, weights, ...)        released weights, as the authors' test scripts run them:
      sgz | zero_dce | scl_lle              `inference.released` (SGZ crops to multiples of the scale factor
                                            unless keep_size)
      skf_drbn | skf_snr                    the method's own inference on the released enhancer (+ HRNet weights)
      scuf                                  `inference.scuf.ScufPipeline` on SD-Turbo + the CLIP image tower

`Loaded.params` is {'total', 'trainable'}: every parameter the enhancement reads (frozen towers included), and the
ones training updates (a run: its trained groups; released SGZ / Zero-DCE / SCL-LLE: the whole network; released
SKF: the enhancer; released SCUF: None, its trained part is merged into the towers when loaded).
"""

from __future__ import annotations

import dataclasses
import importlib
import os
from typing import Any

from lowlight_jax import errors
from lowlight_jax.inference import batch_enhance

SKF_METHODS = ("skf_drbn", "skf_snr")
RELEASED_METHODS = ("sgz", "zero_dce", "scl_lle", *SKF_METHODS, "scuf")


@dataclasses.dataclass(frozen=True)
class Loaded:
  """An enhancer and what it is: `method`, parameter counts {'total', 'trainable'}."""
  enhancer: batch_enhance.Enhancer
  method: str
  params: dict[str, int]


def count(tree: Any) -> int:
  import jax  # pylint: disable=g-import-not-at-top
  return int(sum(getattr(x, "size", 0) for x in jax.tree.leaves(tree)))


def _quantized(fn):
  import jax  # pylint: disable=g-import-not-at-top
  from lowlight_jax.train import evaluation  # pylint: disable=g-import-not-at-top
  return lambda batch: evaluation.quantize(jax.device_get(fn(batch)["enhanced"]))


def for_run(workdir: str, step: int | None = None, scale_factor: int | None = None,
            camera: str | None = None, resize_background: bool | None = None) -> Loaded:
  """A launch.train run's enhancer (its method's `enhance` on the restored params and frozen towers).
  `camera` / `resize_background` set DMGNIE's `inference.camera` / `inference.resize_background`."""
  from lowlight_jax.train import run_config  # pylint: disable=g-import-not-at-top
  from lowlight_jax.train import trainer  # pylint: disable=g-import-not-at-top

  config = run_config.load_run_config(workdir)
  if scale_factor is not None:
    config.inference.scale_factor = scale_factor
  if camera is not None:
    config.inference.camera = camera
  if resize_background is not None:
    config.inference.resize_background = resize_background
  setup = trainer.restore_for_inference(config, workdir, step)
  fn = _quantized(trainer.make_enhance_fn(setup)(setup.state, setup.frozen))
  trainable = count(setup.state.params)
  return Loaded(batch_enhance.Enhancer(image_fn=fn, video_fn=fn), config.method,
                {"total": trainable + count(setup.frozen), "trainable": trainable})


def for_released(method: str, weights: str, *, scale_factor: int | None = None, keep_size: bool = False,
                 seg_weights: str | None = None, seg_variant: str = "w48", sd_turbo: str | None = None,
                 clip_image: str | None = None, direction: str = "a2b", prompt: str | None = None,
                 seed: int = 0) -> Loaded:
  """The authors' released weights of `method` (see the module doc); files are checked here, by name."""
  if method not in RELEASED_METHODS:
    raise errors.ConfigError(f"released method {method!r}: choose from {', '.join(RELEASED_METHODS)}")
  for what, path in (("weights", weights), ("seg weights", seg_weights), ("CLIP image weights", clip_image)):
    if path and not os.path.isfile(path):
      raise errors.InputError(f"{method} {what} {path} is not a file")
  if method in SKF_METHODS:
    return _released_skf(method, weights, seg_weights, seg_variant)
  if method == "scuf":
    if not sd_turbo or not clip_image:
      raise errors.ConfigError("released scuf needs the SD-Turbo folder and the CLIP ViT-B/32 image weights")
    if not os.path.isdir(sd_turbo):
      raise errors.InputError(f"SD-Turbo folder {sd_turbo} is not a folder (give the diffusers folder)")
    return _released_scuf(weights, sd_turbo, clip_image, direction, prompt, seed)
  from lowlight_jax.inference import released  # pylint: disable=g-import-not-at-top

  variables = released.load_released(method, weights)
  kwargs = dict(scale_factor=scale_factor)
  image_fn = released.make_enhancer(method, variables, keep_size=keep_size, **kwargs)
  # Videos always keep their size (a cropped video would not match its source frame for frame).
  video_fn = image_fn if keep_size else released.make_enhancer(method, variables, keep_size=True, **kwargs)
  crops = method == "sgz" and not keep_size
  enhancer = batch_enhance.Enhancer(
      image_fn=image_fn, video_fn=video_fn,
      min_size=released.min_input_size(method, keep_size=keep_size, **kwargs),
      size_hint=" (the authors' SGZ pipeline crops to multiples of the scale factor; --keep-size enhances "
                "any size)" if crops else "",
      same_size=not crops)
  n = count(variables)
  return Loaded(enhancer, method, {"total": n, "trainable": n})


def _released_skf(method: str, weights: str, seg_weights: str | None, seg_variant: str) -> Loaded:
  """The method's own inference (`trainer.released_setup`) on released enhancer + HRNet weights."""
  from lowlight_jax.convert import skf as skf_convert  # pylint: disable=g-import-not-at-top
  from lowlight_jax.train import trainer  # pylint: disable=g-import-not-at-top

  config = importlib.import_module(f"configs.{method}").get_config()
  info = skf_convert.released_info("DRBN" if method == "skf_drbn" else "SNR", weights)
  if info["skf"] and not seg_weights:
    raise errors.ConfigError(f"{method} weights {weights} hold SE blocks: give the HRNet weights (--seg-weights)")
  if not info["skf"] and seg_weights:
    print(f"note: {weights} is a baseline network (no SE blocks); the HRNet weights are not used")
  config.init_from = weights
  config.model.skf = info["skf"]
  config.hrnet.variant = seg_variant
  config.hrnet.weights = seg_weights if info["skf"] else None
  config.loss_weights.sch = 0.0  # Inference: no losses, so no discriminator and no HRNet beyond the SE blocks'.
  if "adversarial" in config.loss_weights:
    config.loss_weights.adversarial = 0.0
  if "n_layers" in info:
    config.model.n_layers = info["n_layers"]
  setup = trainer.released_setup(config)
  fn = _quantized(trainer.make_enhance_fn(setup)(setup.state, setup.frozen))
  trainable = count(setup.state.params)
  return Loaded(batch_enhance.Enhancer(image_fn=fn, video_fn=fn), method,
                {"total": trainable + count(setup.frozen), "trainable": trainable})


def _released_scuf(weights: str, sd_turbo: str, clip_image: str, direction: str, prompt: str | None,
                   seed: int) -> Loaded:
  """`inference.scuf.ScufPipeline` on every device (FSDP of the large towers when there are several)."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from lowlight_jax.inference import scuf as scuf_inference  # pylint: disable=g-import-not-at-top

  pipeline = scuf_inference.ScufPipeline.load(sd_turbo, clip_image, weights, direction=direction, prompt=prompt)
  key = jax.random.key(seed)

  def image_fn(batch):
    outs = []
    for x in batch:  # float [0, 1] from io.imageio (uint8 / 255): back to the exact uint8 values
      image = np.clip(np.rint(np.asarray(x, np.float32) * 255.0), 0, 255).astype(np.uint8)
      outs.append(pipeline.enhance_uint8(image, rng=scuf_inference.per_image_key(key, image))["out_uint8"])
    return np.stack(outs)

  def video_fn(batch):  # launch.enhance refuses videos before the model is built.
    raise RuntimeError("released scuf does not enhance videos")

  enhancer = batch_enhance.Enhancer(
      image_fn=image_fn, video_fn=video_fn, min_size=pipeline.min_input_size,
      size_hint=f" (SCUF: one {pipeline.clip_patch_size}x{pipeline.clip_patch_size} CLIP patch after rounding up to "
                "multiples of 8)")
  # The released file's trained part is merged into the towers here: only the total is known.
  return Loaded(enhancer, "scuf", {"total": count(pipeline.params), "trainable": None})
