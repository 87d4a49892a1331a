r"""A fixed camera's static background from a video: DMGNIE stage 1 (SegBMN) or a classical model.

  python -m launch.background --video V.mp4 --out BG.png [--method segbmn|median|rpca] [--workdir RUN]
      [--frames N] [--store DIR] [--size WxH] [--masks run|ground_truth|motion] [--step S]
      [--reference BG_gt.png | --eval_gt]

Samples N frames spread over the video's DAYTIME frames (the daytime memory; by the project's day/night rule:
the wall-clock timestamp in the file name or container against 7h-19h, else the median luma; `--split all` takes
every frame), the centres of N equal strata, decoded with `data_pipelines.video` (one forward seek per frame), and
computes the background:
  median  the per-pixel temporal median (`ops.background.temporal_median`; the default without --workdir);
  rpca    the median over frames of the low-rank part of Robust PCA (`ops.background.rpca`, inexact ALM);
  segbmn  the SegBMN of a run of `launch.train --config configs/dmgnie.py:segbmn` (its newest checkpoint, or
          --step), with the masks of the run's `masks.source` (--masks overrides: 'ground_truth' reads the
          synthetic `{stem}_masks.npz` beside the video, 'motion' derives them from the N frames); the default
          with --workdir.

Outputs (at least one): --out writes the PNG; --store DIR writes it as `DIR/<camera>.png` (+ `<camera>.json`:
video, method, frames), camera = `data_pipelines.video.camera_name` of the video (`cam03` for
`cam03_20240601T120000.mp4`), where stage 2 finds a camera's background (`lowlight_jax.io.backgrounds`). Both
are written atomically. With --reference (a ground-truth background PNG) or --eval_gt (the synthetic
`{stem}_background.png` beside the video) PSNR / SSIM are computed on the saved uint8 image, RGB, data range 1
(`train.evaluation.image_metrics`).

Prints one JSON line: {"camera", "method", "frames", "height", "width", "out", "store" [, "psnr", "ssim",
"reference"]}. A video with no readable frame or no daytime frame, a missing run or checkpoint, a reference of
another size: one error line naming it (exit 2).

Frames are used at the video's size unless --size; SegBMN is fully convolutional, but it is best used at the
scale it was trained at (the run's data.video.height/width, or the native size when those are 0).
"""

import json
import os

from absl import app
from absl import flags

from launch import _common

METHODS = ("segbmn", "median", "rpca")
_VIDEO = flags.DEFINE_string("video", None, "The video of one fixed camera (daytime footage for SegBMN).")
_OUT = flags.DEFINE_string("out", None, "The background PNG to write.")
_STORE = flags.DEFINE_string("store", None, "Also (or only) store it as STORE/<camera>.png for stage 2.")
_METHOD = flags.DEFINE_enum("method", None, METHODS, "Background model (default: segbmn with --workdir, else "
                            "median).")
_WORKDIR = flags.DEFINE_string("workdir", None, "segbmn: a run directory of configs/dmgnie.py:segbmn.")
_STEP = flags.DEFINE_integer("step", None, "segbmn: checkpoint step (default: newest).")
_FRAMES = flags.DEFINE_integer("frames", 32, "Frames sampled over the video's daytime frames.", lower_bound=1)
_SPLIT = flags.DEFINE_enum("split", "day", ["day", "all"],
                           "day: only the daytime frames (the daytime memory); all: every frame.")
_SIZE = flags.DEFINE_string("size", None, "WIDTHxHEIGHT to decode frames at (default: the video's size).")
_MASKS = flags.DEFINE_enum("masks", "run", ["run", "ground_truth", "motion"],
                           "segbmn: mask source ('run': the run's masks.source).")
_REFERENCE = flags.DEFINE_string("reference", None, "A ground-truth background PNG: print PSNR / SSIM against it.")
_EVAL_GT = flags.DEFINE_bool("eval_gt", False, "Use the synthetic {stem}_background.png beside the video as "
                             "--reference.")
flags.DEFINE_alias("eval-gt", "eval_gt")
flags.mark_flags_as_required(["video"])


def parse_size(text: str | None):
  """'160x90' -> (height, width) = (90, 160); None -> None."""
  if not text:
    return None
  width, height = _common.parse_size(text)
  return height, width


def _segbmn_background(workdir: str, step, frames, video: str, indices, masks_flag: str):
  """The background of the N frames by a trained SegBMN run (one clip of N frames)."""
  import jax
  import jax.numpy as jnp
  import numpy as np
  from lowlight_jax import errors
  from lowlight_jax.methods import dmgnie_segbmn
  from lowlight_jax.train import checkpoint as ckpt_lib
  from lowlight_jax.train import trainer

  config = _common.load_run_config(workdir)
  if config.method != "dmgnie_segbmn":
    raise errors.ConfigError(f"--workdir {workdir} is a {config.method!r} run, not a SegBMN run "
                             "(configs/dmgnie.py:segbmn)")
  if not ckpt_lib.is_run_dir(workdir):
    raise errors.CheckpointError(f"--workdir {workdir} has no checkpoints/ folder: has the run saved a step yet?")
  setup = trainer.restore_for_inference(config, workdir, step)
  method = setup.method
  source = method.mask_source if masks_flag == "run" else masks_flag
  masks = None  # Computed in the jitted function by the run's source (motion / segmenter).
  if source == "ground_truth":
    fg = dmgnie_segbmn.ground_truth_foreground(video, indices, frames.shape[1:3])
    if fg is None:
      raise errors.InputError(f"--video {video}: no ground-truth masks beside it "
                              f"({os.path.splitext(os.path.basename(video))[0]}_masks.npz); pass --masks=motion")
    masks = (~fg)[None, ..., None].astype(np.float32)
  elif source == "motion" and method.mask_source != "motion":
    mc = config.masks.motion
    masks = np.asarray(dmgnie_segbmn.motion_masks(jnp.asarray(frames)[None], threshold=mc.threshold,
                                                  dilate_radius=mc.dilate, statistic=mc.statistic, reduce=mc.reduce))
  fn = jax.jit(method.background)
  bg = fn(setup.state.params, setup.frozen, jnp.asarray(frames)[None], None if masks is None else jnp.asarray(masks))
  return np.asarray(jax.device_get(bg))[0], {"step": int(setup.state.step), "mask_source": source}


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  _common.setup_logging()
  import numpy as np
  from data_pipelines import video as video_lib
  from lowlight_jax import errors
  from lowlight_jax.io import backgrounds
  from lowlight_jax.io import imageio
  from lowlight_jax.ops import background as background_ops
  from lowlight_jax.methods import dmgnie_segbmn

  if not _OUT.value and not _STORE.value:
    raise app.UsageError("give --out BG.png and/or --store DIR")
  if _REFERENCE.value and _EVAL_GT.value:
    raise app.UsageError("give --reference or --eval_gt, not both")
  method = _METHOD.value or ("segbmn" if _WORKDIR.value else "median")
  if method == "segbmn" and not _WORKDIR.value:
    raise app.UsageError("--method segbmn needs --workdir (a run of configs/dmgnie.py:segbmn)")
  if method != "segbmn" and (_WORKDIR.value or _STEP.value is not None):
    raise app.UsageError(f"--workdir/--step are for --method segbmn, not {method}")
  if _WORKDIR.value and not os.path.isdir(_WORKDIR.value):
    raise errors.InputError(f"--workdir {_WORKDIR.value} is not a folder (a run directory of launch.train)")
  if _OUT.value and os.path.isdir(_OUT.value):
    raise errors.OutputError(f"--out {_OUT.value} is a folder; give the PNG file to write")
  if _STORE.value and os.path.exists(_STORE.value) and not os.path.isdir(_STORE.value):
    raise errors.OutputError(f"--store {_STORE.value} is a file; give a folder")
  size = parse_size(_SIZE.value)
  video = _VIDEO.value
  if not os.path.isfile(video):
    raise errors.InputError(f"--video {video} is not a file")
  camera = video_lib.camera_name(video)
  if _STORE.value:
    backgrounds.path_for(_STORE.value, camera)  # A camera id that cannot name a file fails before any work.
  reference = _REFERENCE.value
  if _EVAL_GT.value:
    reference = dmgnie_segbmn.ground_truth_paths(video)["background"]
    if reference is None:
      raise errors.InputError(f"--eval_gt: no ground-truth background beside --video {video} "
                              f"({os.path.splitext(os.path.basename(video))[0]}_background.png)")
  ref = imageio.read_image(reference) if reference else None

  try:
    frames, indices = dmgnie_segbmn.sample_frames(video, _FRAMES.value, size=size, split=_SPLIT.value)
  except video_lib.VideoDecodeError as e:
    raise errors.InputError(f"--video {video}: no readable frames ({e.reason})") from e
  except dmgnie_segbmn.NoFramesOfSplitError as e:
    raise errors.InputError(f"--video {e}; camera {camera}'s background is its daytime memory: give its day "
                            "footage (or --split all)") from e
  h, w = frames.shape[1:3]
  if ref is not None and ref.shape[:2] != (h, w):
    raise errors.InputError(f"reference {reference} is {ref.shape[0]}x{ref.shape[1]} (HxW) but the frames are "
                            f"{h}x{w}; give --size {ref.shape[1]}x{ref.shape[0]} or a reference of the frames' size")

  extra = {}
  if method == "median":
    bg = background_ops.temporal_median(frames)
  elif method == "rpca":
    bg = background_ops.rpca(frames)
  else:
    bg, extra = _segbmn_background(_WORKDIR.value, _STEP.value, frames, video, indices, _MASKS.value)
  image = backgrounds.to_uint8(bg)

  report = {"camera": camera, "method": method, "frames": len(indices), "height": h, "width": w,
            "out": _OUT.value, "store": None, **extra}
  if _OUT.value:
    imageio.write_png_atomic(_OUT.value, image)
  if _STORE.value:
    info = {"video": os.path.abspath(video), "method": method, "frames": len(indices), **extra}
    if method == "segbmn":
      info["workdir"] = os.path.abspath(_WORKDIR.value)
    report["store"] = os.fspath(backgrounds.save(_STORE.value, camera, image, info=info))
  if ref is not None:
    metrics = dmgnie_segbmn.background_metrics(image.astype(np.float32) / 255.0, ref)
    report.update({"psnr": round(metrics["psnr"], 4), "ssim": round(metrics["ssim"], 5),
                   "reference": os.fspath(reference)})
  print(json.dumps(report))


def run():
  _common.run(main)


if __name__ == "__main__":
  run()
