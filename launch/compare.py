r"""Compares training runs and released weights on the same test sets, metrics and machine; writes one table as
compare.json, compare.md and compare.html (thumbnails side by side).

  python -m launch.compare --out DIR \
      --released sgz=sgz:/weights/sgz_Epoch99.pth --released zero_dce=zero_dce:/weights/Epoch99.pth \
      --released scl_lle=scl_lle:/weights/SCL-LLE.pth \
      --released skf=skf_drbn:/weights/model_lol.pt:/weights/hrnet_w48_pascal_context.pth \
      --released scuf=scuf:/weights/test_model.pkl:/weights/sd-turbo:/weights/ViT-B-32.pt \
      --run mine=runs/sgz \
      [--sets dicm,lime,lowcut,embedded_test,paired:LOW:REF,FOLDER,video:night.mp4:16] [--limit N] \
      [--metrics psnr,ssim,lpips | niqe,brisque] [--fid_weights pt_inception-2015-12-05.pth] \
      [--crop_border 0] [--channel rgb|y] [--timing_reps 3] [--authors_crop]

Sets, entries and the JSON layout: `lowlight_jax/analysis/compare.py`. Metrics default to PSNR / SSIM / LPIPS on
sets with references and NIQE / BRISQUE on the others. Milliseconds per 600x400 image: the median of
--timing_reps calls after one warm-up, on this machine's default device. Released SGZ keeps the input size
(edge padding) unless --authors_crop (the authors' test.py crops to multiples of 12). --out must be new or empty.
"""

import os

from absl import app
from absl import flags

from launch import _common

_RUN = flags.DEFINE_multi_string("run", [], "NAME=WORKDIR: a launch.train run (newest checkpoint).")
_RELEASED = flags.DEFINE_multi_string("released", [], "NAME=METHOD:WEIGHTS[:EXTRA...]: released weights "
                                      "(skf_*: + HRNet weights; scuf: + SD-Turbo folder + CLIP image weights).")
_SETS = flags.DEFINE_list("sets", ["dicm", "lime"], "Test sets (see the module doc).")
_OUT = flags.DEFINE_string("out", None, "Output folder (new or empty).")
_LIMIT = flags.DEFINE_integer("limit", None, "At most this many images per set.", lower_bound=1)
_METRICS = flags.DEFINE_list("metrics", [], "Metrics for every set (default: by whether the set has references).")
_FID = flags.DEFINE_string("fid_weights", None, "InceptionV3 pt_inception-2015-12-05 .pth: adds FID.")
_CROP = flags.DEFINE_integer("crop_border", 0, "Pixels cropped from each side before scoring.", lower_bound=0)
_CHANNEL = flags.DEFINE_enum("channel", "rgb", ["rgb", "y", "grey"], "PSNR / SSIM channel.")
_TIMING = flags.DEFINE_integer("timing_reps", 3, "Timed calls per entry on a 600x400 image (0: no timing).",
                               lower_bound=0)
_AUTHORS_CROP = flags.DEFINE_bool("authors_crop", False, "Released SGZ: crop to multiples of 12 like test.py.")
flags.mark_flags_as_required(["out"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  _common.setup_logging()
  from lowlight_jax import errors
  from lowlight_jax.analysis import compare
  from lowlight_jax.metrics import evaluate

  entries = [compare.parse_entry("run", r) for r in _RUN.value]
  entries += [compare.parse_entry("released", r) for r in _RELEASED.value]
  if not entries:
    raise app.UsageError("give at least one --run NAME=WORKDIR or --released NAME=METHOD:WEIGHTS")
  compare.check_names(entries)
  unknown = [m for m in _METRICS.value if m not in evaluate.METRICS]
  if unknown:
    raise errors.ConfigError(f"--metrics: unknown {unknown}; choose from {', '.join(evaluate.METRICS)}")
  if _FID.value and not os.path.isfile(_FID.value):
    raise errors.InputError(f"--fid_weights {_FID.value} is not a file")
  out = _OUT.value
  if os.path.exists(out) and (not os.path.isdir(out) or os.listdir(out)):
    raise errors.OutputError(f"--out {out} exists and is not an empty folder (earlier results would be mixed in); "
                             "choose a new folder")
  os.makedirs(out, exist_ok=True)
  sets = [compare.resolve_set(s, out, _LIMIT.value) for s in _SETS.value]
  result = compare.compare(entries, sets, out, metrics=_METRICS.value or None,
                           protocol=evaluate.Protocol(crop_border=_CROP.value, channel=_CHANNEL.value),
                           fid_weights=_FID.value, timing_reps=_TIMING.value, authors_crop=_AUTHORS_CROP.value)
  paths = compare.write_reports(result, out)
  print(compare.to_markdown(result))
  print("wrote " + ", ".join(paths.values()))


def run():
  _common.run(main)


if __name__ == "__main__":
  run()
