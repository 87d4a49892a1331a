r"""Enhances an image or a folder with a trained run or with the authors' released weights.

  # A run of launch.train (newest checkpoint; keeps every input's size):
  python -m launch.enhance --workdir DIR --input FILE_OR_DIR --output DIR
  # Released weights (reproduces the authors' test script unless --keep-size):
  python -m launch.enhance --method sgz --weights Epoch99.pth --input FILE_OR_DIR --output DIR \
      [--scale-factor 12] [--keep-size]

Outputs are PNGs with the input's file name. Unreadable inputs are reported by name and skipped.
"""

import sys

from absl import app
from absl import flags

from launch import _common  # noqa: F401  (quiet TensorFlow before jax/clu imports)

_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory written by launch.train.")
_METHOD = flags.DEFINE_enum("method", None, ["sgz", "zero_dce", "scl_lle"], "Released-weights mode: method.")
_WEIGHTS = flags.DEFINE_string("weights", None, "Released-weights mode: .pth/.npz/.safetensors or converted file.")
_INPUT = flags.DEFINE_string("input", None, "An image file or a folder of images.")
_OUTPUT = flags.DEFINE_string("output", None, "Output folder.")
_SCALE = flags.DEFINE_integer("scale_factor", None, "SGZ scale factor (default: the run's config / 12).")
flags.DEFINE_alias("scale-factor", "scale_factor")
_KEEP = flags.DEFINE_bool("keep_size", False, "Released mode: keep full input size instead of the authors' crop.")
flags.DEFINE_alias("keep-size", "keep_size")
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step to restore (default: newest).")
flags.mark_flags_as_required(["input", "output"])


def _run_enhancer(workdir: str, step, scale_factor):
  import jax
  from lowlight_jax.train import evaluation, trainer

  config = _common.load_run_config(workdir)
  if scale_factor is not None:
    config.inference.scale_factor = scale_factor
  setup = trainer.restore_for_inference(config, workdir, step)
  fn = trainer.make_enhance_fn(setup)(setup.state, setup.frozen)
  return lambda image: evaluation.quantize(jax.device_get(fn(image[None])["enhanced"][0]))


def _released_enhancer(method: str, weights: str, scale_factor, keep_size: bool):
  from lowlight_jax.inference import released

  variables = released.load_released(method, weights)
  kwargs = {} if scale_factor is None else {"scale_factor": scale_factor}
  return lambda image: released.enhance_released(method, variables, image, keep_size=keep_size, **kwargs)["uint8"]


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  from launch import _common as _launch_common
  _launch_common.setup_logging()  # Orbax/grain INFO lines would drown the report.
  from lowlight_jax.inference import batch_enhance

  if (_WORKDIR.value is None) == (_METHOD.value is None):
    raise app.UsageError("give either --workdir (a trained run) or --method with --weights (released weights)")
  if _WORKDIR.value is not None:
    enhance_one = _run_enhancer(_WORKDIR.value, _STEP.value, _SCALE.value)
  else:
    if not _WEIGHTS.value:
      raise app.UsageError("--method needs --weights")
    enhance_one = _released_enhancer(_METHOD.value, _WEIGHTS.value, _SCALE.value, _KEEP.value)
  inputs = batch_enhance.collect_inputs(_INPUT.value)
  same_size = _WORKDIR.value is not None or _KEEP.value or _METHOD.value != "sgz"
  report = batch_enhance.enhance_paths(enhance_one, inputs, _OUTPUT.value, same_size=same_size)
  print(f"wrote {len(report.written)} image(s) to {_OUTPUT.value}; {len(report.failed)} failed")
  for path, reason in report.failed:
    print(f"  failed: {path}: {reason}")
  if not report.written:
    sys.exit(1)


def run():
  app.run(main)


if __name__ == "__main__":
  run()
