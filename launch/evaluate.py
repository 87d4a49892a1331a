r"""Scores enhanced images against references paired by file stem, and with no-reference metrics.

  python -m launch.evaluate --pred DIR [--ref DIR] [--inputs DIR] \
      --metrics psnr,ssim,lpips,niqe,brisque[,lpips_vgg,fid] --out REPORT.json \
      [--html REPORT.html] [--crop-border 0] [--channel rgb|y|grey] \
      [--fid-weights pt_inception-2015-12-05-6726825d.pth]

  # Enhance-and-evaluate a trained run (newest checkpoint, or --step) on its ground truth:
  python -m launch.evaluate --workdir RUN [--data embedded_test|FOLDER] [--out_dir DIR] \
      --metrics psnr,ssim --out REPORT.json [--html REPORT.html]
  # Several runs side by side on the same images (e.g. SKF vs its baseline), with the input as a row:
  python -m launch.evaluate --workdir skf=RUN_A --workdir baseline=RUN_B --metrics psnr,ssim --out REPORT.json

Images are read like every other reader of the project (`lowlight_jax.io.imageio.read_image`: EXIF
orientation applied, the extensions of `imageio.list_images`) and paired by file stem. The JSON holds
per-image values and means keyed by metric name; unreadable files get a per-file error and the run
continues; predictions without a reference and references without a prediction are listed (JSON
`unpaired`, and printed). When nothing pairs with --ref the command fails (exit 2) naming both folders.
LPIPS, NIQE and BRISQUE need the metric assets: `python -m launch.assets fetch`.

Run mode restores the run with `trainer.restore_for_inference`, enhances every image of the data set
at full size with the run's own inference (`trainer.make_enhance_fn`), writes the 8-bit outputs
(torchvision `save_image` rounding), ground truth and inputs as PNG to `--out_dir` (`enhanced/`,
`reference/`, `input/`; a temporary folder, removed afterwards, when not given) and scores them with
`evaluate_folders`. `--data embedded_test` is the embedded test split (the run's degradation
settings when it trained on embedded data); `--data FOLDER` is a paired folder with `low/` and
`high/` subfolders matched by file stem (the run's `data.low_dir` / `data.high_dir` names).

DMGNIE runs (night-to-day, per camera): `--data night_videos` takes `--frames` frames spread over each night video
of the run's video folder (`night_videos:ROOT` another folder of the same cameras), decoded at the run's frame
size, and enhances each with its camera's background (the run's `backgrounds.store`, or its median fallback).
`reference/` holds each frame's day-lit reference where one exists (the synthetic videos: the same frame
re-rendered under daylight, `synthetic_video.daylit_reference`); without references only the no-reference metrics
are scored. FID compares the enhanced frames with `--frames` day frames of each of the same cameras (`day/`), as
the paper scores night-to-day translation (BRISQUE, NIQE, FID, LPIPS):

  python -m launch.evaluate --workdir RUN --data night_videos --metrics lpips,niqe,brisque,fid \
      --fid_weights pt_inception-2015-12-05-6726825d.pth --out REPORT.json --html REPORT.html

Several `--workdir NAME=RUN` flags compare runs: each is enhanced and scored as above (its PNGs under
`--out_dir/NAME`), the low-light inputs are scored against the same references, and the JSON report is
`{"data", "metrics", "input": {"mean", "set"}, "runs": {NAME: run report}}`, printed as one table (the
input, then the runs in flag order). Every run must enhance the same images; --html is single-run only.
"""

import os
import tempfile

from absl import app
from absl import flags

from launch import _common  # Also quiets TensorFlow before jax/clu imports.
from lowlight_jax import errors

_PRED = flags.DEFINE_string("pred", None, "Folder of enhanced images (or give --workdir).")
_WORKDIR = flags.DEFINE_multi_string("workdir", None,
                                      "Run mode: a run directory written by launch.train; repeat as NAME=RUN "
                                      "to compare runs side by side.")
_DATA = flags.DEFINE_string("data", "embedded_test",
                            "Run mode: 'embedded_test', a paired FOLDER with low/ and high/, or (DMGNIE runs) "
                            "'night_videos' / 'night_videos:ROOT'.")
_FRAMES = flags.DEFINE_integer("frames", 8, "--data night_videos: frames per night (and day) video.")
_OUT_DIR = flags.DEFINE_string("out_dir", None,
                               "Run mode: keep the enhanced/, reference/ and input/ PNGs here.")
flags.DEFINE_alias("out-dir", "out_dir")
_STEP = flags.DEFINE_integer("step", None, "Run mode: checkpoint step (default: newest).")
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
_TASK = flags.DEFINE_enum("task", "quality", ["quality", "segmentation"],
                          "quality: image-quality metrics. segmentation: SCL-LLE paper Table 4 protocol on a "
                          "run (--workdir): darken labelled images with each gamma, enhance, segment with the "
                          "run's frozen DeepLabV3+, report mIoU of input vs. enhanced.")
_GAMMAS = flags.DEFINE_list("gammas", ["1", "2", "6", "10"], "Segmentation task: darkening gammas.")
_LIMIT = flags.DEFINE_integer("limit", None, "Segmentation task: at most this many labelled images.")
flags.mark_flags_as_required(["out"])


def _run_data_config(config, data: str):
  """The data config whose 'test' split `--data` names (see the module docstring)."""
  from data_pipelines import pipeline

  if data == "embedded_test":
    if config.data.get("source") == "embedded":
      return config.data
    return pipeline.default_data_config()
  if not os.path.isdir(data):
    raise errors.InputError(f"--data must be 'embedded_test' or a folder; {data!r} is neither")
  cfg = pipeline.default_data_config()
  cfg.source = "paired_folder"
  cfg.eval_root = data
  cfg.low_dir = config.data.get("low_dir", "low")
  cfg.high_dir = config.data.get("high_dir", "high")
  return cfg


NIGHT_VIDEOS = "night_videos"


def _output_dirs(out_dir: str, keys=(("pred", "enhanced"), ("ref", "reference"), ("inputs", "input"))
                 ) -> dict[str, str]:
  dirs = {k: os.path.join(out_dir, sub) for k, sub in keys}
  for d in dirs.values():
    if os.path.isdir(d) and os.listdir(d):
      raise errors.OutputError(f"--out_dir: {d} is not empty (stale images would be scored); choose a new "
                               "--out_dir")
  return dirs


def enhance_night_videos(workdir: str, data: str, out_dir: str, step: int | None = None, frames: int = 8
                         ) -> dict[str, str | None]:
  """`--data night_videos[:ROOT]` for a DMGNIE run (module docstring): writes enhanced/, input/, reference/ (where
  day-lit references exist) and day/ PNGs; returns them keyed 'pred', 'inputs', 'ref' and 'day' (None when empty)."""
  import jax
  from lowlight_jax.io import imageio
  from lowlight_jax.methods import dmgnie
  from lowlight_jax.train import evaluation
  from lowlight_jax.train import trainer

  config = _common.load_run_config(workdir)
  if config.method != "dmgnie":
    raise errors.InputError(f"--data {data}: night videos are scored for DMGNIE runs (camera backgrounds); "
                            f"{workdir} is a {config.method} run")
  root = data.partition(":")[2] or None
  if root is not None and not os.path.isdir(root):
    raise errors.InputError(f"--data {data}: {root} is not a folder")
  dirs = _output_dirs(out_dir, (("pred", "enhanced"), ("ref", "reference"), ("inputs", "input"), ("day", "day")))
  test = dmgnie.night_test_frames(config, root, frames_per_video=frames)
  cameras = sorted({e["camera"] for e in test})
  day = dmgnie.day_test_frames(config, root, frames_per_video=frames, cameras=cameras)
  for d in dirs.values():
    os.makedirs(d, exist_ok=True)
  write = lambda key, name, img: imageio.write_png_atomic(os.path.join(dirs[key], f"{name}.png"),
                                                          evaluation.quantize(img))
  for camera in cameras:
    cam_config = _common.load_run_config(workdir)
    cam_config.inference.camera = camera
    setup = trainer.restore_for_inference(cam_config, workdir, step)
    enhance = trainer.make_enhance_fn(setup)(setup.state, setup.frozen)
    for element in (e for e in test if e["camera"] == camera):
      write("pred", element["name"], jax.device_get(enhance(element["low"][None])["enhanced"][0]))
      write("inputs", element["name"], element["low"])
      if element["high"] is not None:
        write("ref", element["name"], element["high"])
  for element in day:
    write("day", element["name"], element["image"])
  print(f"enhanced {len(test)} night frame(s) of {len(cameras)} camera(s) with {workdir}; "
        f"{sum(e['high'] is not None for e in test)} with a day-lit reference; {len(day)} day frame(s) for FID")
  return {k: (d if os.listdir(d) else None) for k, d in dirs.items()}


def enhance_run(workdir: str, data: str, out_dir: str, step: int | None = None, frames: int = 8
                ) -> dict[str, str | None]:
  """Enhances `data`'s test images with a run; writes enhanced/, reference/ and input/ PNGs.

  Returns the three folders keyed 'pred', 'ref' and 'inputs' (and 'day' for `--data night_videos`, whose 'ref'
  may be None). They must be new or empty.
  """
  if data == NIGHT_VIDEOS or data.startswith(NIGHT_VIDEOS + ":"):
    return enhance_night_videos(workdir, data, out_dir, step, frames)
  import jax
  import numpy as np
  from data_pipelines import pipeline
  from lowlight_jax.io import imageio
  from lowlight_jax.train import evaluation
  from lowlight_jax.train import trainer

  config = _common.load_run_config(workdir)
  dirs = _output_dirs(out_dir)
  eval_set = pipeline.make_eval_set(_run_data_config(config, data), split="test")
  if not eval_set:
    raise errors.InputError(f"--data: no images to evaluate in {data!r}")
  missing = [e["name"] for e in eval_set if e.get("high") is None]
  if missing:
    raise errors.InputError(f"--data: no ground truth for {missing[:5]} in {data!r}")
  setup = trainer.restore_for_inference(config, workdir, step)
  enhance = trainer.make_enhance_fn(setup)(setup.state, setup.frozen)
  for d in dirs.values():
    os.makedirs(d, exist_ok=True)
  for element in eval_set:
    low = np.asarray(element["low"], np.float32)
    out = jax.device_get(enhance(low[None])["enhanced"][0])
    for key, img in (("pred", out), ("ref", element["high"]), ("inputs", low)):
      path = os.path.join(dirs[key], f"{element['name']}.png")
      imageio.write_png_atomic(path, evaluation.quantize(img))
  print(f"enhanced {len(eval_set)} image(s) of {data} with {workdir}")
  return dirs


def parse_workdirs(items: list[str]) -> list[tuple[str, str]]:
  """`--workdir` values -> [(name, run directory)]: `NAME=RUN`, or a bare `RUN` named by its folder."""
  out = []
  for item in items:
    name, eq, path = item.partition("=")
    if not eq or "/" in name or not name:
      name, path = os.path.basename(os.path.normpath(item)), item
    if not os.path.isdir(path):
      raise errors.InputError(f"--workdir {item}: {path} is not a folder")
    out.append((name, path))
  names = [n for n, _ in out]
  if len(set(names)) != len(names):
    raise errors.ConfigError(f"--workdir: two runs are named the same ({names}); use NAME=RUN")
  return out


def scoring_kwargs(dirs: dict, evaluate_kwargs: dict) -> dict:
  """`evaluate_kwargs` for the folders `enhance_run` wrote: FID against `day/` where there is one, and without
  references (night videos of real cameras) only the no-reference and set-level metrics."""
  from lowlight_jax.metrics import evaluate

  out = dict(evaluate_kwargs)
  if dirs.get("day"):
    out["fid_ref_dir"] = dirs["day"]
  if dirs.get("ref") is None and "day" in dirs:
    dropped = [m for m in out["metrics"] if m in evaluate.FULL_REFERENCE]
    if dropped:
      print(f"no day-lit references for these frames: {', '.join(dropped)} not scored")
    out["metrics"] = [m for m in out["metrics"] if m not in evaluate.FULL_REFERENCE]
  return out


def compare_runs(runs: list[tuple[str, str]], data: str, out_dir: str, step: int | None, evaluate_kwargs: dict,
                 frames: int = 8) -> dict:
  """Enhances and scores every run on the same images, and the inputs against the same references."""
  from lowlight_jax.metrics import evaluate

  reports, images, first = {}, None, None
  for name, workdir in runs:
    dirs = enhance_run(workdir, data, os.path.join(out_dir, name), step, frames)
    names = sorted(os.listdir(dirs["inputs"]))
    if images is not None and names != images:
      raise errors.InputError(f"--workdir {name}={workdir} enhanced other images than {runs[0][0]} (different "
                              "data settings); compare runs on a shared --data FOLDER")
    images, first = names, first or dirs
    reports[name] = evaluate.evaluate_folders(dirs["pred"], dirs["ref"], input_dir=dirs["inputs"],
                                              **scoring_kwargs(dirs, evaluate_kwargs))
  inputs = evaluate.evaluate_folders(first["inputs"], first["ref"], **scoring_kwargs(first, evaluate_kwargs))
  return {"data": data, "metrics": list(scoring_kwargs(first, evaluate_kwargs)["metrics"]),
          "input": {"mean": inputs["mean"], "set": inputs["set"]}, "runs": reports}


def _print_table(report: dict) -> None:
  metrics = [m for m in report["metrics"] if m != "fid"] + (["fid"] if "fid" in report["metrics"] else [])
  rows = [("input", {**report["input"]["mean"], **report["input"]["set"]})]
  rows += [(name, {**r["mean"], **r["set"]}) for name, r in report["runs"].items()]
  width = max(len(n) for n, _ in rows)
  print(f"{'':{width}}  " + "  ".join(f"{m:>8}" for m in metrics))
  for name, values in rows:
    cells = [f"{values[m]:8.4f}" if values.get(m) is not None else f"{'-':>8}" for m in metrics]
    print(f"{name:{width}}  " + "  ".join(cells))


def segmentation_task(workdir: str, step, gammas, limit, out: str) -> dict:
  """Enhance-then-segment mIoU per gamma for an SCL-LLE run; JSON written atomically to `out`."""
  from data_pipelines import scl_data
  from lowlight_jax.metrics import segmentation
  from lowlight_jax.io import atomic_io
  from lowlight_jax.train import run_config
  from lowlight_jax.train import trainer

  config = run_config.load_run_config(workdir)
  setup = trainer.restore_for_inference(config, workdir, step, towers_needed=("deeplab",))
  if not hasattr(setup.method, "segment"):
    raise errors.ConfigError(f"run {workdir} ({config.method}) has no segmentation network; --task segmentation "
                     "needs an SCL-LLE run")
  enhance, segment = segmentation.method_fns(setup.method, setup.state.params, setup.frozen,
                                                  setup.state.model_state)
  result = segmentation.evaluate_segmentation(
      enhance, segment, scl_data.labelled_set(config.data, limit=limit), gammas=[float(g) for g in gammas],
      num_classes=config.segmentation.num_classes)
  report = {"task": "segmentation", "workdir": workdir, "metric": "mIoU", **result}
  atomic_io.write_json_atomic(out, report)
  return report


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  from launch import _common as _launch_common
  _launch_common.setup_logging()  # Orbax/grain INFO lines would drown the report.
  workdirs = _WORKDIR.value or []
  if _TASK.value == "segmentation":
    if len(workdirs) != 1 or _OUT.value is None:
      raise app.UsageError("--task segmentation needs one --workdir (an SCL-LLE run) and --out")
    report = segmentation_task(workdirs[0], _STEP.value, _GAMMAS.value, _LIMIT.value, _OUT.value)
    for key, value in report.items():
      if key.startswith("gamma_"):
        print(f"{key}: mIoU input {value['input']:.4f} -> enhanced {value['enhanced']:.4f}")
    print(f"wrote {_OUT.value}")
    return
  if (_PRED.value is None) == (not workdirs):
    raise app.UsageError(
        "give either --pred (a folder of enhanced images) or --workdir (a trained run)")
  if workdirs and (_REF.value or _INPUTS.value):
    raise app.UsageError(
        "--workdir takes its references and inputs from --data; drop --ref/--inputs")
  if len(workdirs) > 1 and _HTML.value:
    raise app.UsageError("--html shows one run; drop it when comparing several --workdir runs")
  from lowlight_jax.metrics import evaluate

  if len(workdirs) > 1:
    from lowlight_jax.io import atomic_io
    runs = parse_workdirs(workdirs)
    kwargs = dict(metrics=_METRICS.value, protocol=evaluate.Protocol(crop_border=_CROP.value, channel=_CHANNEL.value),
                  fid_weights=_FID_WEIGHTS.value, progress=_PROGRESS.value)
    with tempfile.TemporaryDirectory(prefix="lowlight_eval_") as tmp:
      report = compare_runs(runs, _DATA.value, _OUT_DIR.value or tmp, _STEP.value, kwargs, _FRAMES.value)
    atomic_io.write_json_atomic(_OUT.value, report)
    _print_table(report)
    print(f"wrote {_OUT.value}")
    return

  # Expected errors (missing asset or folder, nothing pairs, unknown metric) are one line, exit 2
  # (launch._common.run).
  with tempfile.TemporaryDirectory(prefix="lowlight_eval_") as tmp:
    if workdirs:
      dirs = enhance_run(parse_workdirs(workdirs)[0][1], _DATA.value, _OUT_DIR.value or tmp, _STEP.value,
                         _FRAMES.value)
    else:
      dirs = {"pred": _PRED.value, "ref": _REF.value, "inputs": _INPUTS.value}
    kwargs = scoring_kwargs(dirs, dict(
        metrics=_METRICS.value, protocol=evaluate.Protocol(crop_border=_CROP.value, channel=_CHANNEL.value),
        fid_weights=_FID_WEIGHTS.value, progress=_PROGRESS.value))
    report = evaluate.evaluate_folders(dirs["pred"], dirs["ref"], input_dir=dirs["inputs"], out_json=_OUT.value,
                                       out_html=_HTML.value, grid_limit=_GRID.value, **kwargs)
  means = ", ".join(f"{k}={v:.4f}" for k, v in report["mean"].items() if v is not None)
  sets = ", ".join(f"{k}={v:.4f}" for k, v in report["set"].items() if v is not None)
  print(f"{len(report['images'])} image(s): {means}{'; ' + sets if sets else ''}")
  for err in report["errors"]:
    print(f"  error: {err['name']}: {err['error']}")
  for key, where in (("pred_only", "no reference"), ("ref_only", "no prediction")):
    names = report["unpaired"][key]
    if names:
      print(f"  unpaired ({where}): {len(names)}: {', '.join(names)}")
  print(f"wrote {_OUT.value}" + (f" and {_HTML.value}" if _HTML.value else ""))


def run():
  _common.run(main)


if __name__ == "__main__":
  run()
