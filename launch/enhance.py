r"""Enhances images and videos (a file or a folder) with a trained run or with the authors' released weights.

  # A run of launch.train (newest checkpoint; keeps every input's size):
  python -m launch.enhance --workdir DIR --input FILE_OR_DIR --output DIR
  # Released weights (reproduces the authors' test script on images unless --keep-size):
  python -m launch.enhance --method sgz --weights Epoch99.pth --input FILE_OR_DIR --output DIR \
      [--scale-factor 12] [--keep-size]
  # SKF released weights (DRBN-SKF `model_lol.pt`, SNR-SKF `SNR_SKF_LOL.pth`, or their converted files) with the
  # frozen HRNet-W48 PASCAL-Context prior; plain DRBN / SNR checkpoints need no --seg-weights:
  python -m launch.enhance --method skf_drbn|skf_snr --weights ENHANCER.pth --seg-weights HRNET.pth \
      --input FILE_OR_DIR --output DIR
  # SCUF/GEFU released weights on SD-Turbo (images only; the authors' inference.py, one image at a time):
  python -m launch.enhance --method scuf --weights test_model.pkl --sd-turbo SD_TURBO_DIR \
      --clip-image CLIP_VIT_B32.pt --input FILE_OR_DIR --output DIR [--direction a2b|b2a] [--prompt TEXT] \
      [--seed 0]

SKF outputs keep every input's size (edge padding to the network's multiple, cropped back) and are rounded like
torchvision's `save_image`; SNR-SKF runs the authors' two-pass test (segment the input, enhance, segment the
result, enhance again).

SCUF outputs keep every input's size: the image is LANCZOS-resized up to multiples of 8, enhanced in one step
(the illumination image prompt through the CLIP ViT of --clip-image, the prompt through SD-Turbo's text
encoder), quantised by truncation as the authors' ToPILImage, and LANCZOS-resized back. --sd-turbo is the
diffusers folder of stabilityai/sd-turbo; --clip-image OpenAI's ViT-B-32.pt (a TorchScript archive, read
without torch and without running its code) or an OpenAI-layout CLIP state dict (`visual.*` keys). The two noises of the one-step sampler are drawn from
--seed folded with each image's content, so an image's output does not depend on the other inputs.

Images become PNGs with the input's stem (`x.jpg` -> `x.png`). Videos (.mp4, .mov, .mkv, .avi, .webm, ...)
become H.264 MP4s with the input's stem, frame rate and size (always the full size, also for released SGZ),
enhanced `--video-batch` frames at a time; `--frames-dir` writes `<stem>/000000.png ...` instead.

Nothing is lost: before any model is built the output paths are checked, and the command refuses an --output
equal to or inside --input, an output that would replace an input, two inputs that would write the same
output (`x.png` and `x.jpg`), and a non-empty --output folder unless --overwrite (replace existing outputs)
or --skip-existing (skip inputs whose output exists). Every output is written to a temporary file beside it
and renamed when complete. An input that cannot be read, or is too small for the method, is reported by name
and the others are still enhanced; the exit status is then 1. Refusals exit with status 2.
"""

import os
import sys

from absl import app
from absl import flags

from launch import _common

_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory written by launch.train.")
_SKF_METHODS = ("skf_drbn", "skf_snr")
_METHOD = flags.DEFINE_enum("method", None, ["sgz", "zero_dce", "scl_lle", *_SKF_METHODS, "scuf"],
                            "Released-weights mode: method.")
_WEIGHTS = flags.DEFINE_string("weights", None, "Released-weights mode: .pth/.npz/.safetensors or converted file "
                               "(scuf: the authors' test_model.pkl).")
_SD_TURBO = flags.DEFINE_string("sd_turbo", None, "SCUF: the SD-Turbo diffusers folder (unet/, vae/, text_encoder/, "
                                "tokenizer/, scheduler/).")
flags.DEFINE_alias("sd-turbo", "sd_turbo")
_CLIP_IMAGE = flags.DEFINE_string("clip_image", None, "SCUF: OpenAI's CLIP ViT-B-32.pt (TorchScript) or an "
                                  "OpenAI-layout state dict (`visual.*` keys; .pt/.pth/.npz) for the illumination "
                                  "image prompt.")
flags.DEFINE_alias("clip-image", "clip_image")
_DIRECTION = flags.DEFINE_enum("direction", "a2b", ["a2b", "b2a"], "SCUF: a2b lightens (the authors' inference), "
                               "b2a darkens.")
_PROMPT = flags.DEFINE_string("prompt", None, "SCUF: the text prompt (default: GEFU's fixed_prompt_b.txt for a2b, "
                              "its fixed_prompt_a for b2a).")
_SEED = flags.DEFINE_integer("seed", 0, "SCUF: seed of the sampler's noise (folded with each image's content).")
_SCUF_ONLY = ("sd_turbo", "clip_image", "direction", "prompt", "seed")
_SEG_WEIGHTS = flags.DEFINE_string("seg_weights", None, "SKF released mode: the HRNet checkpoint (the authors' "
                                   "HRNet-W48 PASCAL-Context .pth, a plain state dict, or its converted file).")
flags.DEFINE_alias("seg-weights", "seg_weights")
_SEG_VARIANT = flags.DEFINE_enum("seg_variant", "w48", ["w48", "tiny", "mini"],
                                 "SKF released mode: the HRNet of --seg-weights ('tiny', 'mini': small test networks).")
flags.DEFINE_alias("seg-variant", "seg_variant")
_INPUT = flags.DEFINE_string("input", None, "An image or video file, or a folder of images and videos.")
_OUTPUT = flags.DEFINE_string("output", None, "Output folder (new or empty, unless --overwrite/--skip-existing).")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Replace outputs that already exist in --output.")
_SKIP = flags.DEFINE_bool("skip_existing", False, "Skip inputs whose output already exists in --output.")
flags.DEFINE_alias("skip-existing", "skip_existing")
_SCALE = flags.DEFINE_integer("scale_factor", None, "SGZ scale factor (default: the run's config / 12).")
flags.DEFINE_alias("scale-factor", "scale_factor")
_KEEP = flags.DEFINE_bool("keep_size", False, "Released mode: keep full input size instead of the authors' crop "
                          "(videos always keep their size).")
flags.DEFINE_alias("keep-size", "keep_size")
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step to restore (default: newest).")
_CAMERA = flags.DEFINE_string("camera", None, "DMGNIE runs: the camera whose stored background guides every input "
                              "(default: each input's own camera, from its name, e.g. cam03_20240601T220000.mp4).")
_VIDEO_BATCH = flags.DEFINE_integer("video_batch", 8, "Video frames enhanced per call (one compiled shape; "
                                    "memory holds about this many frames).", lower_bound=1)
flags.DEFINE_alias("video-batch", "video_batch")
_FRAMES_DIR = flags.DEFINE_bool("frames_dir", False, "Write each video as PNG frames <output>/<stem>/000000.png "
                                "... instead of an MP4.")
flags.DEFINE_alias("frames-dir", "frames_dir")
_PROGRESS = flags.DEFINE_bool("progress", True, "Show progress bars.")
flags.mark_flags_as_required(["input", "output"])

#: Exit status when some inputs failed (their names are printed) but the others were written.
SOME_FAILED_EXIT = 1


def _run_dmgnie(plan):
  """A DMGNIE run: the inputs of each camera (`--camera`, else each input's own, from its name) are enhanced with
  that camera's stored background, one restored enhancer per camera."""
  import dataclasses  # pylint: disable=g-import-not-at-top
  from data_pipelines import video  # pylint: disable=g-import-not-at-top
  from lowlight_jax.inference import batch_enhance  # pylint: disable=g-import-not-at-top
  from lowlight_jax.inference import enhancers  # pylint: disable=g-import-not-at-top

  groups: dict[str, list] = {}
  for job in plan.jobs:
    groups.setdefault(_CAMERA.value or video.camera_name(job.src), []).append(job)
  total = None
  for camera, jobs in groups.items():
    print(f"  camera {camera}: {len(jobs)} input(s)")
    enhancer = enhancers.for_run(_WORKDIR.value, _STEP.value, _SCALE.value, camera).enhancer
    part = batch_enhance.run_plan(enhancer, dataclasses.replace(plan, jobs=jobs, skipped=[]),
                                  video_batch=_VIDEO_BATCH.value, progress=_PROGRESS.value)
    total = part if total is None else dataclasses.replace(
        total, **{f.name: getattr(total, f.name) + getattr(part, f.name) for f in dataclasses.fields(total)})
  return dataclasses.replace(total, skipped=[job.src for job in plan.skipped])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  _common.setup_logging()  # Orbax/grain INFO lines would drown the report.
  from lowlight_jax import errors
  from lowlight_jax.inference import batch_enhance  # No jax: the checks below run before anything heavy.

  if (_WORKDIR.value is None) == (_METHOD.value is None):
    raise app.UsageError("give either --workdir (a trained run) or --method with --weights (released weights)")
  if _WORKDIR.value is None and not _WEIGHTS.value:
    raise app.UsageError("--method needs --weights")
  if _WEIGHTS.value and not os.path.isfile(_WEIGHTS.value):
    raise errors.InputError(f"--weights {_WEIGHTS.value} is not a file")
  if _SEG_WEIGHTS.value and _METHOD.value not in _SKF_METHODS:
    raise app.UsageError(f"--seg-weights is for --method {' or '.join(_SKF_METHODS)}")
  if _SEG_WEIGHTS.value and not os.path.isfile(_SEG_WEIGHTS.value):
    raise errors.InputError(f"--seg-weights {_SEG_WEIGHTS.value} is not a file")
  if _WORKDIR.value is not None and not os.path.isdir(_WORKDIR.value):
    raise errors.InputError(f"--workdir {_WORKDIR.value} is not a folder")
  scuf = _METHOD.value == "scuf"
  if not scuf:
    given = [name for name in _SCUF_ONLY if flags.FLAGS[name].present]
    if given:
      raise app.UsageError(f"--{given[0].replace('_', '-')} is for --method scuf")
  else:
    for flag, value in (("--sd-turbo", _SD_TURBO.value), ("--clip-image", _CLIP_IMAGE.value)):
      if not value:
        raise app.UsageError(f"--method scuf needs {flag}")
    if not os.path.isdir(_SD_TURBO.value):
      what = "is not a folder" if os.path.exists(_SD_TURBO.value) else "does not exist"
      raise errors.InputError(f"--sd-turbo {_SD_TURBO.value} {what} (give the SD-Turbo diffusers folder)")
    if not os.path.isfile(_CLIP_IMAGE.value):
      raise errors.InputError(f"--clip-image {_CLIP_IMAGE.value} is not a file")

  # Every input/output check happens here, before a model is built or anything is compiled.
  plan = batch_enhance.plan_outputs(_INPUT.value, _OUTPUT.value, overwrite=_OVERWRITE.value,
                                    skip_existing=_SKIP.value, frames_dir=_FRAMES_DIR.value)
  for job in plan.skipped:
    print(f"  skipped (output exists): {job.src}")
  videos = [job.src for job in plan.jobs if job.kind != "image"]
  if scuf and videos:
    more = f" and {len(videos) - 1} more" if len(videos) > 1 else ""
    raise errors.InputError(f"--method scuf enhances images only, not the video {videos[0]}{more}; give images")
  if not plan.jobs:
    print(f"nothing to do: all {len(plan.skipped)} output(s) exist in {_OUTPUT.value}")
    return
  # The run's config is read after the output checks (a bad --output is refused before the run is read).
  dmgnie = _WORKDIR.value is not None and _common.load_run_config(_WORKDIR.value).method == "dmgnie"
  if _CAMERA.value is not None and not dmgnie:
    raise app.UsageError("--camera is for --workdir runs of DMGNIE (method 'dmgnie'), whose inputs need their "
                         "camera's background")

  if dmgnie:
    report = _run_dmgnie(plan)
  else:
    from lowlight_jax.inference import enhancers
    if _WORKDIR.value is not None:
      loaded = enhancers.for_run(_WORKDIR.value, _STEP.value, _SCALE.value)
    elif _METHOD.value in _SKF_METHODS:
      try:
        loaded = enhancers.for_released(_METHOD.value, _WEIGHTS.value, seg_weights=_SEG_WEIGHTS.value,
                                        seg_variant=_SEG_VARIANT.value)
      except errors.ConfigError as e:
        raise app.UsageError(str(e)) from None
    else:
      loaded = enhancers.for_released(_METHOD.value, _WEIGHTS.value, scale_factor=_SCALE.value,
                                      keep_size=_KEEP.value, sd_turbo=_SD_TURBO.value, clip_image=_CLIP_IMAGE.value,
                                      direction=_DIRECTION.value, prompt=_PROMPT.value, seed=_SEED.value)
    enhancer = loaded.enhancer
  if not dmgnie:
    report = batch_enhance.run_plan(enhancer, plan, video_batch=_VIDEO_BATCH.value, progress=_PROGRESS.value)

  written = [f"{len(report.written) - report.videos} image(s)"] if len(report.written) > report.videos else []
  if report.videos:
    written.append(f"{report.videos} video(s) ({report.frames} frames)")
  print(f"wrote {' and '.join(written) or 'nothing'} to {_OUTPUT.value}; {len(report.skipped)} skipped; "
        f"{len(report.failed)} failed")
  for path, reason in report.failed:
    print(f"  failed: {path}: {reason}")
  if report.failed:
    sys.exit(SOME_FAILED_EXIT)


def run():
  _common.run(main)


if __name__ == "__main__":
  run()
