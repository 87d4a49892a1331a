"""DMGNIE stage 1: SegBMN trained on K-frame daytime clips of one camera with L_BG (Eq. 3).

Paper: "Daytime-memory guided nighttime image enhancement" (DMGNIE; seed `000_f6de8f8b0015d52c.txt`),
sections "Semantic-guided for Fast Background Modeling" (Eqs. 2-3, Fig. 3) and "Model Optimization"
(stage 1 trains SegBMN alone with Eq. 3). No reference code is public.

One trained group, `segbmn` (`models.segbmn.SegBMN`: a UNet encoder, Eq. 2's masked aggregation per
scale, decoders D_BG and D_idt). Batches are K-frame clips of one camera spread over its daytime
timeline (`data.source = 'video'` with `data.video.clip_frames = K`,
`data_pipelines.video.VideoClipSource`): {'frames': (B, K, H, W, 3), 'camera', 'video', 'frame',
'time'} plus 'masks' (B, K, H, W), 1 = FOREGROUND, with `data.video.with_masks`.

The masks M (1 = background) come from `masks.source`:
  'segmenter'     the paper's M = fseg(Y): a frozen Cityscapes DeepLabV3+ (`models.deeplabv3plus`, the
                  user's weights in `segmenter.weights`); the classes in `segmenter.foreground_classes`
                  (person, rider, car, truck, bus, motorcycle, bicycle) are foreground.
  'ground_truth'  the synthetic videos' true masks (`data.video.with_masks`): the perfect segmenter.
  'motion'        ours (see the port note of `motion_masks`).
Every source is computed INSIDE the jitted step (jnp), on the batch shards of each device: the base
contract gives a method no hook into the data pipeline (`trainer.train_and_evaluate` builds the loader
from `config.data` alone), and this way the masks cost accelerator time, not the host's grain
workers, which are already busy decoding K seeks per clip; nothing crosses devices (each clip's masks
depend on its own K frames).

Loss (Eq. 3, `losses.segbmn.background_loss`): L_BG = background + alpha * identity, both logged
(`segbmn/loss_background`, `segbmn/loss_identity`, with `segbmn/background_fraction`, the mean of M).

Evaluation. The trainer's periodic evaluation enhances single images against paired targets; a
background is a function of many frames and is scored against the video's ground-truth background
(the synthetic `{stem}_background.png`), so it happens here, per video: `evaluate_videos` (and the
CLI `launch.background --eval_gt`) samples frames spread over each video, computes the background with
the run's model and mask source, and scores it (and the temporal median of the same frames, the
baseline) with `train.evaluation.image_metrics` (PSNR / SSIM, RGB, data range 1, on the uint8-quantised
image like a saved PNG). The configs set `eval.every = 0`.

Inference (`enhance`): an (N, H, W, 3) batch is ONE clip of N frames of one camera (any N: Eq. 2 is a
weighted mean over frames); the output 'enhanced' repeats its background N times ('background' holds
it once). A (B, K, H, W, 3) batch is B clips. A run trained on 'ground_truth' masks, which exist only
for synthetic training videos, uses motion masks there.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import pathlib
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from lowlight_jax import errors
from lowlight_jax.losses import segbmn as segbmn_losses
from lowlight_jax.methods import base
from lowlight_jax.models import deeplabv3plus
from lowlight_jax.models import init as init_lib
from lowlight_jax.models import segbmn as segbmn_model

PyTree = Any
log = logging.getLogger(__name__)

MASK_SOURCES = ("segmenter", "ground_truth", "motion")
#: Cityscapes train ids (VainF / SCL-LLE label order): person, rider, car, truck, bus, motorcycle, bicycle.
CITYSCAPES_FOREGROUND = (11, 12, 13, 14, 15, 17, 18)


def dilate(foreground: jax.Array, radius: int) -> jax.Array:
  """Binary dilation of (..., H, W) {0, 1} maps by a (2r+1) x (2r+1) square (a max-pool, zeros outside),
  as `ops.background._dilate`."""
  if radius <= 0:
    return foreground
  size = 2 * int(radius) + 1
  lead = foreground.ndim - 2
  return jax.lax.reduce_window(foreground, jnp.zeros((), foreground.dtype), jax.lax.max,
                               (1,) * lead + (size, size), (1,) * foreground.ndim, "SAME")


def motion_masks(frames: jax.Array, *, threshold: float = 0.1, dilate_radius: int = 2,
                 statistic: str = "median", reduce: str = "max") -> jax.Array:
  """`ops.background.motion_masks` for a batch of clips, in jnp (traced inside the train step).

  Port note: this mask source is ours, not the paper's (DMGNIE segments cars, pedestrians and
  motorcycles with a pre-trained network). A pixel of frame j is foreground where it deviates by more
  than `threshold` from the per-pixel `statistic` over the clip's own K frames, dilated by
  `dilate_radius`. The K frames of a clip are stratified over the camera's whole daytime timeline
  (hours apart on real footage), so a moving object rarely covers a pixel in half of them and the
  per-pixel median is a robust estimate of the background. It misses foreground that stays put across
  the clip (a parked car: the median then IS the car) and flags lasting background changes.

  Args:
    frames: (B, K, H, W, C) in [0, 1].
    threshold, dilate_radius, statistic, reduce: as `ops.background.motion_masks` (threshold, dilate,
      statistic, reduce).

  Returns:
    (B, K, H, W, 1) float32 masks, 1 = background (no gradient).
  """
  x = jax.lax.stop_gradient(frames).astype(jnp.float32)
  if statistic == "median":
    stat = jnp.median(x, axis=1, keepdims=True)
  elif statistic == "mean":
    stat = jnp.mean(x, axis=1, keepdims=True)
  else:
    raise ValueError(f"unknown statistic {statistic!r}; expected 'median' or 'mean'")
  diff = x - stat
  if reduce == "max":
    dev = jnp.max(jnp.abs(diff), axis=-1)
  elif reduce == "luma":
    dev = jnp.abs(diff @ jnp.asarray((0.299, 0.587, 0.114), jnp.float32))
  else:
    raise ValueError(f"unknown reduce {reduce!r}; expected 'max' or 'luma'")
  fg = dilate((dev > threshold).astype(jnp.float32), dilate_radius)
  return (1.0 - fg)[..., None]


class Method(base.BaseMethod):
  """SegBMN (DMGNIE stage 1) on the generic trainer."""

  groups = ("segbmn",)

  def __init__(self, config: ml_collections.ConfigDict):
    super().__init__(config)
    m = config.model
    self.net = segbmn_model.SegBMN(
        features=tuple(m.features), mask_resize=m.mask_resize, weighting=m.weighting,
        empty_fill=m.empty_fill, downsample=m.downsample, upsample=m.upsample, pad_mode=m.pad_mode,
        image_skip=m.get("image_skip", False),
        # Any `config.remat` policy rematerialises every conv block (SegBMN's own `remat`); K frames share one
        # backward pass, so activations, not parameters, fill the memory.
        remat=self.policy.remat != "none", dtype=self.policy.compute_dtype)
    self.mask_source = config.masks.source
    if self.mask_source not in MASK_SOURCES:
      raise errors.ConfigError(f"masks.source: unknown source {self.mask_source!r}; known: {', '.join(MASK_SOURCES)}")
    video = config.data.get("video")
    if self.mask_source == "ground_truth" and not (video is not None and video.with_masks):
      raise errors.ConfigError("masks.source='ground_truth' reads the synthetic videos' masks: set "
                               "--config.data.video.with_masks=True")
    self.use_segmenter = self.mask_source == "segmenter"
    self.inference_towers = ("segmenter",) if self.use_segmenter else ()
    if self.use_segmenter:
      seg = config.segmenter
      self.segmenter = deeplabv3plus.DeepLabV3PlusMobileNet(
          num_classes=seg.num_classes, output_stride=seg.output_stride, repeats=tuple(seg.repeats),
          normalize_input=True, dtype=self.policy.compute_dtype)

  def example_batch(self) -> dict[str, jax.Array]:
    # The parameters depend on neither K nor the frame size: the smallest shapes that every tower accepts.
    return {"frames": jnp.zeros((1, 2, 64, 64, 3), jnp.float32)}

  def init(self, rng: jax.Array, batch: base.Batch) -> base.Variables:
    net_rng, seg_rng = jax.random.split(rng)
    frames = batch["frames"]
    # He-normal kernels (ReLU convs), zero biases, drawn as ONE normal vector (`init.random_variables`): flax's
    # per-leaf initialisers compile for tens of seconds on CPU. The paper gives no initialisation.
    params = init_lib.random_variables(self.net, net_rng, frames,
                                       jnp.ones(frames.shape[:-1] + (1,), jnp.float32))["params"]
    if self.net.image_skip:  # D_BG starts at the pixel-level masked mean (its zero head, see models/segbmn.py).
      head = params["decoder_bg"]["head"]
      params["decoder_bg"]["head"] = {**head, "kernel": jnp.zeros_like(head["kernel"])}
    frozen = {}
    if self.use_segmenter:
      frozen["segmenter"] = init_lib.random_variables(self.segmenter, seg_rng, frames[:, 0])
    return base.Variables(params={"segbmn": params}, model_state={}, frozen=frozen)

  # -- masks ------------------------------------------------------------------------------------------------

  def masks(self, frozen: PyTree, frames: jax.Array, foreground: jax.Array | None = None, *,
            source: str | None = None) -> jax.Array:
    """M (1 = background) of clips (B, K, H, W, 3) -> (B, K, H, W, 1) float32, no gradient.

    `foreground`: the data's ground-truth masks (B, K, H, W), 1 = foreground, used by 'ground_truth'.
    `source` overrides `masks.source` ('segmenter' needs the frozen tower of a segmenter run).
    """
    source = source or self.mask_source
    if source == "ground_truth":
      if foreground is None:
        raise errors.ConfigError("masks.source='ground_truth': the batch has no 'masks' (set "
                                 "data.video.with_masks=True)")
      fg = jnp.asarray(foreground).astype(jnp.float32)
      return jax.lax.stop_gradient(1.0 - (fg[..., None] if fg.ndim == 4 else fg))
    if source == "motion":
      # Port note: this source is ours (the paper segments road users); see `motion_masks`.
      mc = self.config.masks.motion
      return motion_masks(frames, threshold=mc.threshold, dilate_radius=mc.dilate, statistic=mc.statistic,
                          reduce=mc.reduce)
    if source == "segmenter":
      if not self.use_segmenter:
        raise errors.ConfigError("mask source 'segmenter' needs a run trained with masks.source='segmenter'")
      return self.segmenter_masks(frozen, frames)
    raise errors.ConfigError(f"unknown mask source {source!r}; known: {', '.join(MASK_SOURCES)}")

  def segmenter_masks(self, frozen: PyTree, frames: jax.Array) -> jax.Array:
    """The paper's M = fseg(Y): 0 where the frozen DeepLabV3+'s arg-max class is a foreground class."""
    seg = self.config.segmenter
    b, k, h, w, c = frames.shape
    x = jax.lax.stop_gradient(frames).reshape(b * k, h, w, c)
    logits = self.segmenter.apply(frozen["segmenter"], x)["logits"]
    labels = jnp.argmax(logits, axis=-1)
    fg = jnp.isin(labels, jnp.asarray(tuple(seg.foreground_classes), labels.dtype)).astype(jnp.float32)
    fg = dilate(fg, seg.dilate)
    return jax.lax.stop_gradient(1.0 - fg).reshape(b, k, h, w, 1)

  # -- training -----------------------------------------------------------------------------------------------

  def loss(self, group, params, model_state, frozen, batch, rng):
    del group, rng
    frames = batch["frames"].astype(jnp.float32)
    masks = self.masks(frozen, frames, batch.get("masks"))
    out = self.net.apply({"params": params["segbmn"]}, frames, masks)
    lc = self.config.loss
    total, terms = segbmn_losses.background_loss(out["background"], out["identity"], frames, masks,
                                                 alpha=lc.alpha, reduction=lc.reduction)
    metrics = {"loss_background": terms["background"], "loss_identity": terms["identity"],
               "background_fraction": jnp.mean(masks)}
    return total, (metrics, model_state)

  # -- inference ----------------------------------------------------------------------------------------------

  def background(self, params: PyTree, frozen: PyTree, frames: jax.Array,
                 masks: jax.Array | None = None) -> jax.Array:
    """Y_BG of clips (B, K, H, W, 3) in [0, 1] -> (B, H, W, 3).

    `masks` (B, K, H, W[, 1]), 1 = BACKGROUND, replace the run's mask source (e.g. ground truth read
    from a file); None computes them by the run's source ('ground_truth' runs: motion masks, since
    real videos have no ground truth). The identity decoder is dead code here (jit removes it).
    """
    frames = jnp.asarray(frames).astype(jnp.float32)
    if masks is None:
      source = "motion" if self.mask_source == "ground_truth" else self.mask_source
      masks = self.masks(frozen, frames, source=source)
    else:
      masks = jnp.asarray(masks).astype(jnp.float32)
      masks = masks[..., None] if masks.ndim == 4 else masks
    return self.net.apply({"params": params["segbmn"]}, frames, masks)["background"]

  def enhance(self, params, model_state, frozen, images):
    del model_state
    clips = images.ndim == 5
    bg = self.background(params, frozen, images if clips else images[None])
    return {"enhanced": bg if clips else jnp.broadcast_to(bg, images.shape), "background": bg}

  def weight_sources(self) -> list[base.WeightSource]:
    """The segmenter's weights (`segmenter.weights`), when the mask source is 'segmenter'."""
    if not self.use_segmenter:
      return []
    seg = self.config.segmenter
    if not seg.weights:
      if seg.allow_random_weights:
        log.warning("segmenter.weights is not set: the DeepLabV3+ is RANDOM (allow_random_weights; tests only)")
        return []
      raise errors.ConfigError(
          "segmenter.weights is not set: masks.source='segmenter' needs the user's Cityscapes DeepLabV3+ "
          "(MobileNetV2, VainF layout, e.g. best_deeplabv3plus_mobilenet_cityscapes_os16.pth); give "
          "--config.segmenter.weights=FILE or use --config.masks.source=motion")
    from lowlight_jax.convert import deeplab  # Conversion code is only needed when files are given.
    return [base.WeightSource(target=("frozen", "segmenter"), files=(seg.weights,),
                              converter="vainf-deeplabv3plus-v1",
                              convert=lambda abstract: deeplab.load_deeplabv3plus(seg.weights, abstract))]


# ---------------------------------------------------------------------------------------------------------
# Frames of a video, ground truth, and evaluation (numpy on the host; data_pipelines imported lazily).
# ---------------------------------------------------------------------------------------------------------


def frame_indices(num_frames: int, count: int) -> list[int]:
  """`count` frame indices spread over a video of `num_frames` frames: the centres of `count` equal strata
  (sorted, distinct; all frames when count >= num_frames)."""
  count = max(1, min(int(count), int(num_frames)))
  return sorted({min(num_frames - 1, int((i + 0.5) * num_frames / count)) for i in range(count)})


class NoFramesOfSplitError(ValueError):
  """A video has no frame of the asked split (e.g. no daytime frame for a daytime background)."""


def sample_frames(path: str | os.PathLike, count: int, *, size: tuple[int, int] | None = None,
                  split: str = "all", options: Any = None) -> tuple[np.ndarray, list[int]]:
  """`count` frames spread over the whole video (`frame_indices`), decoded with `data_pipelines.video`
  (container index, one forward seek per frame at most), as float32 (N, H, W, 3) in [0, 1].

  `split` 'day' / 'night' spreads them over that split's frames only, by the project's rule (`VideoIndex`: the
  wall-clock timestamp against `day_hours`, else the median luma; `options`, a `VideoOptions`, sets them), and
  raises `NoFramesOfSplitError` naming the file when it has none.

  `size` = (height, width) resizes in the decoder (area). Frames that fail to decode are skipped with a
  warning. Raises `data_pipelines.video.VideoDecodeError` (naming the file) when the video cannot be
  opened or none of the frames decodes, FileNotFoundError when it does not exist.

  Returns:
    (frames, indices of the decoded frames).
  """
  from data_pipelines import video as video_lib  # pylint: disable=g-import-not-at-top (grain, av)
  path = os.fspath(path)
  info = video_lib.probe_video(path)
  if split == "all":
    wanted = frame_indices(info.num_frames, count)
  else:
    opts = dataclasses.replace(options or video_lib.VideoOptions(), split=split, size=None)
    index = video_lib.VideoIndex([path], opts)
    allowed = [f for seg in index.segments for f in range(seg.start, seg.end)]
    if not allowed:
      rule = (f"{'night' if split == 'day' else 'day'} by its timestamp (day = {opts.day_hours[0]:g}h to "
              f"{opts.day_hours[1]:g}h)" if info.wall_time(0.0) is not None else
              f"{'dark' if split == 'day' else 'bright'} (median luma vs {opts.luma_threshold:g}; no timestamp)")
      raise NoFramesOfSplitError(f"{path}: no {'daytime' if split == 'day' else 'night'} frames (the video is {rule})")
    wanted = [allowed[i] for i in frame_indices(len(allowed), count)]
  decoder = video_lib.FrameDecoder(info, size=size)
  frames, kept, failures = [], [], []
  try:
    for index in wanted:
      try:
        frames.append(video_lib.to_float(decoder.read_frame(index)))
        kept.append(index)
      except video_lib.VideoDecodeError as e:
        failures.append(e.reason)
  finally:
    decoder.close()
  if not frames:
    raise video_lib.VideoDecodeError(path, f"none of {len(failures)} sampled frames decodes "
                                           f"({failures[0] if failures else 'empty'})")
  if failures:
    log.warning("%s: %d of %d sampled frames did not decode (first: %s)", path, len(failures),
                len(failures) + len(frames), failures[0])
  return np.stack(frames), kept


def ground_truth_paths(path: str | os.PathLike) -> dict[str, pathlib.Path | None]:
  """The synthetic ground truth beside a video (`data_pipelines.synthetic_video`): {'background':
  `{stem}_background.png`, 'masks': `{stem}_masks.npz`}, each None when absent."""
  p = pathlib.Path(path)
  out = {}
  for key, suffix in (("background", "_background.png"), ("masks", "_masks.npz")):
    f = p.with_name(p.stem + suffix)
    out[key] = f if f.is_file() else None
  return out


def ground_truth_foreground(path: str | os.PathLike, indices: Sequence[int], hw: tuple[int, int]
                            ) -> np.ndarray | None:
  """The synthetic foreground masks (N, H, W) bool (1 = foreground) of these frames, resized to `hw`
  (nearest, as `VideoClipSource`), or None when the video has no `{stem}_masks.npz`."""
  from data_pipelines import synthetic_video  # pylint: disable=g-import-not-at-top
  mask_path = ground_truth_paths(path)["masks"]
  if mask_path is None:
    return None
  masks = synthetic_video.read_masks(mask_path, list(indices))
  if masks.shape[1:] != tuple(hw):
    rows = (np.arange(hw[0]) * masks.shape[1] // hw[0])[:, None]
    cols = (np.arange(hw[1]) * masks.shape[2] // hw[1])[None, :]
    masks = masks[:, rows, cols]
  return masks.astype(bool)


def background_metrics(background: np.ndarray, reference: np.ndarray) -> dict[str, float]:
  """PSNR / SSIM of an (H, W, 3) background in [0, 1] against the reference, on the uint8-quantised
  background (like the saved PNG): `train.evaluation.image_metrics` (RGB, data range 1, no crop)."""
  from lowlight_jax.train import evaluation  # pylint: disable=g-import-not-at-top (train imports methods)
  quantised = evaluation.quantize(background).astype(np.float32) / 255.0
  return evaluation.image_metrics(quantised, np.asarray(reference, np.float32))


def evaluate_videos(method: Method, params: PyTree, frozen: PyTree, videos: Sequence[str | os.PathLike], *,
                    num_frames: int = 32) -> dict[str, Any]:
  """Background quality per video against its ground-truth `{stem}_background.png` (videos without one
  are skipped), with the temporal median of the same frames as the baseline.

  For each video: `num_frames` frames spread over it at its native size; the background from the run's
  model and mask source (`Method.background`); PSNR / SSIM of both (`background_metrics`).

  Returns:
    {'videos': {name: {'psnr', 'ssim', 'median_psnr', 'median_ssim'}}, and the means of those four keys}.
  """
  from lowlight_jax.io import imageio  # pylint: disable=g-import-not-at-top
  from lowlight_jax.ops import background as background_ops  # pylint: disable=g-import-not-at-top
  fn = jax.jit(method.background)
  per_video = {}
  for video in videos:
    reference = ground_truth_paths(video)["background"]
    if reference is None:
      continue
    frames, _ = sample_frames(video, num_frames, split="day")  # As `launch.background` samples them.
    ref = imageio.read_image(reference)
    bg = np.asarray(jax.device_get(fn(params, frozen, jnp.asarray(frames)[None])))[0]
    rec = background_metrics(bg, ref)
    rec.update({f"median_{k}": v for k, v in
                background_metrics(background_ops.temporal_median(frames), ref).items()})
    per_video[pathlib.Path(video).name] = rec
  keys = ("psnr", "ssim", "median_psnr", "median_ssim")
  means = {k: float(np.mean([r[k] for r in per_video.values()])) for k in keys} if per_video else {}
  return {"videos": per_video, **means}


def day_videos(config: ml_collections.ConfigDict) -> list[str]:
  """The videos of `config.data.video` (its root, or the synthetic default set) that hold daytime segments."""
  from data_pipelines import synthetic_video  # pylint: disable=g-import-not-at-top
  from data_pipelines import video as video_lib  # pylint: disable=g-import-not-at-top
  vc = config.data.video
  root = vc.root or os.fspath(synthetic_video.default_video_dir())
  options = dataclasses.replace(video_lib.options_from_config(vc), split="day", size=None)
  index = video_lib.VideoIndex(root, options)
  return sorted({index.videos[s.video].path for s in index.segments})
