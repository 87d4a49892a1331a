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

The papers' tables as presets (`lowlight_jax/analysis/paper_tables.py`: the numbers as printed, cited):
--preset sgz_table1 (SGZ, LOL / DarkCityScape PSNR SSIM MSE), scl_lle_niqe (SCL-LLE, NIQE on DICM LIME MEF VV NPE),
skf_lol (SKF, LOL / LOL-v2 PSNR SSIM LPIPS NIQE), scuf_lsrw (SCUF, LSRW / LOL-v2 PSNR SSIM LPIPS) or dmgnie_traffic
(DMGNIE, LQ-TLL BRISQUE NIQE FID LPIPS; private data). A preset chooses the sets, metrics and protocol (an explicit
--sets / --metrics / --crop_border / --channel that disagrees is refused) and puts our entries' rows beside the
paper's in compare.json / .md / .html. It runs on the paper data that is here (the DICM and LIME conformance subsets)
or given with --data KEY=PATH (repeatable; PATH/low + PATH/high for paired sets, else a folder of images), and lists
the rest with the --data flag to pass; with none of it (and no entry needed) it writes the paper's table alone.

  python -m launch.compare --out DIR --preset skf_lol --data lol=/data/LOL/eval15 \
      --released skf=skf_drbn:/weights/model_lol.pt:/weights/hrnet_w48_pascal_context.pth
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
_PRESET = flags.DEFINE_string("preset", None, "A paper's table: sgz_table1, scl_lle_niqe, skf_lol, scuf_lsrw or "
                              "dmgnie_traffic (sets, metrics and protocol; see the module doc).")
_DATA = flags.DEFINE_multi_string("data", [], "KEY=PATH: where you have one of the preset's paper datasets.")
flags.mark_flags_as_required(["out"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  _common.setup_logging()
  from lowlight_jax import errors
  from lowlight_jax.analysis import compare
  from lowlight_jax.analysis import paper_tables
  from lowlight_jax.metrics import evaluate

  plan = None
  if _PRESET.value:
    plan = paper_tables.plan(paper_tables.get(_PRESET.value), _DATA.value, compare.conformance_sets_here())
    paper_tables.check_flags(plan, **{f: flags.FLAGS[f].value for f in ("sets", "metrics", "crop_border", "channel")
                                      if flags.FLAGS[f].present})
  elif _DATA.value:
    raise errors.ConfigError(f"--data {_DATA.value[0]}: --data needs --preset")
  entries = [compare.parse_entry("run", r) for r in _RUN.value]
  entries += [compare.parse_entry("released", r) for r in _RELEASED.value]
  if not entries and not plan:
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
  if plan:
    sets = compare.preset_sets(plan, out, _LIMIT.value)
    metrics, protocol = paper_tables.metrics(plan.preset), evaluate.Protocol(**paper_tables.protocol(plan.preset))
  else:
    sets = [compare.resolve_set(s, out, _LIMIT.value) for s in _SETS.value]
    metrics, protocol = _METRICS.value or None, evaluate.Protocol(crop_border=_CROP.value, channel=_CHANNEL.value)
  result = compare.compare(entries, sets, out, metrics=metrics, protocol=protocol, fid_weights=_FID.value,
                           timing_reps=_TIMING.value, authors_crop=_AUTHORS_CROP.value)
  if plan:
    result["preset"] = paper_tables.table(plan, result, [e.name for e in entries], _LIMIT.value)
  paths = compare.write_reports(result, out)
  print(compare.to_markdown(result))
  print("wrote " + ", ".join(paths.values()))


def run():
  _common.run(main)


if __name__ == "__main__":
  run()
