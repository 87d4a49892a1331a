r"""Scores enhanced images against references paired by file stem, and with no-reference metrics.

  python -m launch.evaluate --pred DIR [--ref DIR] [--inputs DIR] \
      --metrics psnr,ssim,lpips,niqe,brisque[,lpips_vgg,fid] --out REPORT.json \
      [--html REPORT.html] [--crop-border 0] [--channel rgb|y|grey] \
      [--fid-weights pt_inception-2015-12-05-6726825d.pth]

The JSON holds per-image values and means keyed by metric name; unreadable files get a per-file
error and the run continues. LPIPS, NIQE and BRISQUE need the metric assets:
`python -m launch.assets fetch`.
"""

import sys

from absl import app
from absl import flags

from launch import _common  # noqa: F401  (quiet TensorFlow before jax/clu imports)

_PRED = flags.DEFINE_string("pred", None, "Folder of enhanced images.")
_REF = flags.DEFINE_string("ref", None, "Folder of reference images (paired by file stem).")
_INPUTS = flags.DEFINE_string("inputs", None, "Folder of low-light inputs, for the HTML grid only.")
_METRICS = flags.DEFINE_list("metrics", ["psnr", "ssim", "lpips", "niqe", "brisque"],
                             "Metrics to compute.")
_OUT = flags.DEFINE_string("out", None, "JSON report path (written atomically).")
_HTML = flags.DEFINE_string("html", None, "HTML report path.")
_CROP = flags.DEFINE_integer("crop_border", 0, "Pixels cropped from each side before scoring.")
flags.DEFINE_alias("crop-border", "crop_border")
_CHANNEL = flags.DEFINE_enum("channel", "rgb", ["rgb", "y", "grey"], "PSNR/SSIM channel.")
_FID_WEIGHTS = flags.DEFINE_string("fid_weights", None,
                                   "pytorch-fid InceptionV3 weights (.pth) for fid.")
flags.DEFINE_alias("fid-weights", "fid_weights")
_GRID = flags.DEFINE_integer("grid_limit", 24, "Images shown in the HTML crop grid.")
_PROGRESS = flags.DEFINE_bool("progress", True, "Show a progress bar.")
flags.mark_flags_as_required(["pred", "out"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  from lowlight_jax import assets
  from lowlight_jax.metrics import evaluate

  try:
    report = evaluate.evaluate_folders(
        _PRED.value, _REF.value, metrics=_METRICS.value, input_dir=_INPUTS.value,
        protocol=evaluate.Protocol(crop_border=_CROP.value, channel=_CHANNEL.value),
        out_json=_OUT.value, out_html=_HTML.value, fid_weights=_FID_WEIGHTS.value,
        grid_limit=_GRID.value, progress=_PROGRESS.value)
  except (assets.AssetMissingError, ValueError, FileNotFoundError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  means = ", ".join(f"{k}={v:.4f}" for k, v in report["mean"].items() if v is not None)
  sets = ", ".join(f"{k}={v:.4f}" for k, v in report["set"].items() if v is not None)
  print(f"{len(report['images'])} image(s): {means}{'; ' + sets if sets else ''}")
  for err in report["errors"]:
    print(f"  error: {err['name']}: {err['error']}")
  print(f"wrote {_OUT.value}" + (f" and {_HTML.value}" if _HTML.value else ""))


def run():
  app.run(main)


if __name__ == "__main__":
  run()
