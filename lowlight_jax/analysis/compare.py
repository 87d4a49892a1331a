"""One comparison of any mix of training runs and released weights on the same test sets, metrics and machine: the
library side of `python -m launch.compare`.

Entries: `Entry(name, kind='run', spec=WORKDIR)` or `Entry(name, kind='released', spec='METHOD:WEIGHTS[:EXTRA...]')`
(EXTRA: skf_drbn / skf_snr the HRNet weights; scuf the SD-Turbo folder, then the CLIP ViT-B/32 image weights).

Test sets (`resolve_set`), each materialised once under `<out>/sets/<name>/` when it is not a folder already:
  dicm | lime | lowcut      the conformance inputs (../shared/conformance/inputs; no references)
  embedded_test             the embedded default data's test split (low + reference pairs)
  paired:LOW_DIR:REF_DIR    a low folder and its references, paired by file stem
  FOLDER                    a folder of images (no references); FOLDER/low + FOLDER/high makes it paired
  video:PATH[:N]            N frames (default 8) spread over a video, e.g. night frames of a surveillance camera
                            (a DMGNIE run enhances them with the background of the camera named by the file,
                            resized to the frames; on sets of no camera its row is the one-line reason)

Every row: {'name', 'set', 'kind', 'method', <metric>: mean value, 'images', 'failed', 'params_total',
'params_trainable', 'ms_600x400', 'protocol_*'}; the set's low-light input itself is the row named 'input'. The
protocol (data range, crop border, PSNR / SSIM channel, size rule) is a column of every row, never a hidden
default. Metrics: PSNR / SSIM / LPIPS where the set has references, NIQE / BRISQUE otherwise (FID with the user's
Inception weights).

A paper's table (`paper_tables`, `launch.compare --preset`): `preset_sets` turns its chosen datasets into sets named
by their keys, and the result's 'preset' block (`paper_tables.table`) leads compare.md and compare.html.
"""

from __future__ import annotations

import dataclasses
import html
import os
import pathlib
import statistics
import time
from typing import Any, Sequence

import numpy as np

from lowlight_jax import errors
from lowlight_jax.analysis import paper_tables
from lowlight_jax.io import atomic_io
from lowlight_jax.io import imageio
from lowlight_jax.metrics import evaluate

CONFORMANCE_SETS = {"dicm": "DICM", "lime": "LIME", "lowcut": "lowCUT"}
DEFAULT_REFERENCE_METRICS = ("psnr", "ssim", "lpips")
DEFAULT_NO_REFERENCE_METRICS = ("niqe", "brisque")
TIMING_SIZE = (400, 600)  # (height, width): "milliseconds per 600x400 image"


@dataclasses.dataclass(frozen=True)
class Entry:
  name: str
  kind: str  # 'run' | 'released'
  spec: str  # WORKDIR | METHOD:WEIGHTS[:EXTRA...]


@dataclasses.dataclass(frozen=True)
class TestSet:
  name: str
  low_dir: str
  ref_dir: str | None
  camera: str | None = None  # video sets: the camera named by the file (DMGNIE backgrounds)


def parse_entry(kind: str, item: str) -> Entry:
  """`NAME=SPEC` (`--run` / `--released`) -> Entry; a bare run folder is named by its basename."""
  flag = f"--{kind}"
  name, eq, spec = item.partition("=")
  if not eq:
    if kind != "run":
      raise errors.ConfigError(f"{flag} {item}: give NAME=METHOD:WEIGHTS[:EXTRA]")
    name, spec = os.path.basename(os.path.normpath(item)), item
  if not name or "/" in name or not spec:
    raise errors.ConfigError(f"{flag} {item}: give NAME={'WORKDIR' if kind == 'run' else 'METHOD:WEIGHTS'}")
  if kind == "run" and not os.path.isdir(spec):
    raise errors.InputError(f"{flag} {item}: {spec} is not a folder")
  if kind == "released":
    from lowlight_jax.inference import enhancers  # pylint: disable=g-import-not-at-top
    parts = spec.split(":")
    if parts[0] not in enhancers.RELEASED_METHODS or len(parts) < 2:
      raise errors.ConfigError(f"{flag} {item}: METHOD:WEIGHTS with METHOD one of "
                               f"{', '.join(enhancers.RELEASED_METHODS)}")
    for path in parts[1:]:
      if not os.path.exists(path):
        raise errors.InputError(f"{flag} {item}: {path} does not exist")
  return Entry(name, kind, spec)


def check_names(entries: Sequence[Entry]) -> None:
  names = [e.name for e in entries]
  dup = sorted({n for n in names if names.count(n) > 1} | ({"input"} & set(names)))
  if dup:
    raise errors.ConfigError(f"entry names must be unique and not 'input': {dup}; use NAME=...")


def shared_dir() -> pathlib.Path:
  """../shared beside the repository (or $LOWLIGHT_SHARED)."""
  default = pathlib.Path(__file__).resolve().parents[2].parent / "shared"
  return pathlib.Path(os.environ.get("LOWLIGHT_SHARED", default))


def _write_pngs(folder: str, items) -> None:
  os.makedirs(folder, exist_ok=True)
  from lowlight_jax.train import evaluation  # pylint: disable=g-import-not-at-top
  for name, img in items:
    imageio.write_png_atomic(os.path.join(folder, f"{name}.png"), evaluation.quantize(img))


def resolve_set(spec: str, out_dir: str, limit: int | None = None) -> TestSet:
  """A `--sets` item -> its folders (see the module doc); materialised sets are written under out_dir/sets."""
  if spec in CONFORMANCE_SETS:
    folder = shared_dir() / "conformance" / "inputs" / CONFORMANCE_SETS[spec]
    if not folder.is_dir():
      raise errors.InputError(f"--sets {spec}: {folder} not found (the conformance data beside the repository; "
                              "set LOWLIGHT_SHARED to its shared/ folder)")
    return _limited(TestSet(spec, str(folder), None), out_dir, limit)
  if spec == "embedded_test":
    from data_pipelines import pipeline  # pylint: disable=g-import-not-at-top
    base = os.path.join(out_dir, "sets", spec)
    elements = pipeline.make_eval_set(pipeline.default_data_config(), split="test")[:limit]
    _write_pngs(os.path.join(base, "low"), ((e["name"], e["low"]) for e in elements))
    _write_pngs(os.path.join(base, "ref"), ((e["name"], e["high"]) for e in elements))
    return TestSet(spec, os.path.join(base, "low"), os.path.join(base, "ref"))
  if spec.startswith("paired:"):
    parts = spec.split(":")
    if len(parts) != 3:
      raise errors.ConfigError(f"--sets {spec}: give paired:LOW_DIR:REF_DIR")
    for folder in parts[1:]:
      if not os.path.isdir(folder):
        raise errors.InputError(f"--sets {spec}: {folder} is not a folder")
    name = os.path.basename(os.path.normpath(parts[1]))
    return _limited(TestSet(f"paired_{name}", parts[1], parts[2]), out_dir, limit)
  if spec.startswith("video:"):
    return _video_set(spec, out_dir, limit)
  if os.path.isdir(spec):
    name = os.path.basename(os.path.normpath(spec))
    low, high = os.path.join(spec, "low"), os.path.join(spec, "high")
    if os.path.isdir(low) and os.path.isdir(high):
      return _limited(TestSet(name, low, high), out_dir, limit)
    return _limited(TestSet(name, spec, None), out_dir, limit)
  raise errors.InputError(f"--sets {spec}: not a known set ({', '.join([*CONFORMANCE_SETS, 'embedded_test'])}), "
                          "paired:LOW:REF, video:PATH[:N] or a folder")


def conformance_sets_here() -> set[str]:
  """The conformance set names (`resolve_set` specs) whose folders this machine has."""
  base = shared_dir() / "conformance" / "inputs"
  return {name for name, folder in CONFORMANCE_SETS.items() if (base / folder).is_dir()}


def preset_sets(plan: paper_tables.Plan, out_dir: str, limit: int | None = None) -> list[TestSet]:
  """A preset's chosen datasets as test sets named by their keys: the set here, or the --data folder (PATH/low +
  PATH/high for paired datasets, else PATH)."""
  sets = []
  for dataset, path in plan.chosen:
    if path is None:
      sets.append(dataclasses.replace(resolve_set(dataset.here, out_dir, limit), name=dataset.key))
      continue
    low, ref = ((os.path.join(path, "low"), os.path.join(path, "high")) if dataset.needs_reference
                else (path, None))
    sets.append(_limited(TestSet(dataset.key, low, ref), out_dir, limit))
  return sets


def _limited(test_set: TestSet, out_dir: str, limit: int | None) -> TestSet:
  """The first `limit` images (by file stem), copied under out_dir/sets; the set itself without a limit."""
  low = evaluate.list_images(test_set.low_dir)
  if not low:
    raise errors.InputError(f"--sets {test_set.name}: no images in {test_set.low_dir}")
  if limit is None or limit >= len(low):
    return test_set
  stems = sorted(low)[:limit]
  base = os.path.join(out_dir, "sets", test_set.name)
  _write_pngs(os.path.join(base, "low"), ((s, imageio.read_image(low[s])) for s in stems))
  ref_dir = None
  if test_set.ref_dir is not None:
    refs = evaluate.list_images(test_set.ref_dir)
    ref_dir = os.path.join(base, "ref")
    _write_pngs(ref_dir, ((s, imageio.read_image(refs[s])) for s in stems if s in refs))
  return dataclasses.replace(test_set, low_dir=os.path.join(base, "low"), ref_dir=ref_dir)


def _video_set(spec: str, out_dir: str, limit: int | None) -> TestSet:
  from data_pipelines import video as video_lib  # pylint: disable=g-import-not-at-top
  from lowlight_jax.methods import dmgnie_segbmn  # pylint: disable=g-import-not-at-top
  parts = spec.split(":")
  path = parts[1] if len(parts) > 1 else ""
  if not os.path.isfile(path):
    raise errors.InputError(f"--sets {spec}: {path or '(none)'} is not a video file")
  try:
    count = int(parts[2]) if len(parts) > 2 else 8
  except ValueError:
    raise errors.ConfigError(f"--sets {spec}: the frame count {parts[2]!r} is not a number") from None
  count = min(count, limit) if limit else count
  frames, indices = dmgnie_segbmn.sample_frames(path, count)
  stem = os.path.splitext(os.path.basename(path))[0]
  name = f"video_{stem}"
  low = os.path.join(out_dir, "sets", name, "low")
  _write_pngs(low, ((f"{stem}_f{i:06d}", f) for f, i in zip(frames, indices)))
  return TestSet(name, low, None, camera=video_lib.camera_name(path))


def load_entry(entry: Entry, *, authors_crop: bool = False, camera: str | None = None):
  """The entry's `enhancers.Loaded`. Released SGZ keeps the input size unless `authors_crop`."""
  from lowlight_jax.inference import enhancers  # pylint: disable=g-import-not-at-top
  if entry.kind == "run":
    from lowlight_jax.train import run_config  # pylint: disable=g-import-not-at-top
    if run_config.load_run_config(entry.spec).method == "dmgnie":
      # A video set's frames need not have the size the run's backgrounds were stored at (a camera's video decoded
      # natively vs the run's data.video size): the camera's background is resized to the frames.
      return enhancers.for_run(entry.spec, camera=camera, resize_background=True)
    return enhancers.for_run(entry.spec)
  method, weights, *extra = entry.spec.split(":")
  kwargs: dict[str, Any] = {"keep_size": not authors_crop}
  if method in enhancers.SKF_METHODS:
    kwargs = {"seg_weights": extra[0] if extra else None}
  elif method == "scuf":
    if len(extra) != 2:
      raise errors.ConfigError(f"--released {entry.name}={entry.spec}: scuf:WEIGHTS:SD_TURBO_DIR:CLIP_IMAGE_WEIGHTS")
    kwargs = {"sd_turbo": extra[0], "clip_image": extra[1]}
  return enhancers.for_released(method, weights, **kwargs)


def time_enhancer(enhancer, reps: int = 3, size: tuple[int, int] = TIMING_SIZE) -> float | None:
  """Median milliseconds of `enhancer.image_fn` on one size[0] x size[1] image, after one warm-up (compile)."""
  if reps < 1:
    return None
  image = np.random.default_rng(0).uniform(0, 0.3, (1, *size, 3)).astype(np.float32)
  np.asarray(enhancer.image_fn(image))
  times = []
  for _ in range(reps):
    t0 = time.perf_counter()
    np.asarray(enhancer.image_fn(image))
    times.append((time.perf_counter() - t0) * 1e3)
  return float(statistics.median(times))


def protocol_columns(protocol: evaluate.Protocol, authors_crop: bool) -> dict[str, Any]:
  return {"protocol_data_range": 255, "protocol_crop_border": protocol.crop_border,
          "protocol_channel": protocol.channel,
          "protocol_size": ("outputs at the input size; released SGZ crops to multiples of its scale factor "
                            "(the authors' test.py)") if authors_crop else "outputs at the input size"}


def _enhance_folder(enhancer, low_dir: str, out: str) -> tuple[int, list[dict[str, str]]]:
  """`batch_enhance.run_plan` over the set's images into `out` -> (images written, [{'image', 'error'}])."""
  from lowlight_jax.inference import batch_enhance  # pylint: disable=g-import-not-at-top
  jobs = [batch_enhance.Job(str(src), batch_enhance.output_path(str(src), out), "image")
          for _, src in sorted(evaluate.list_images(low_dir).items())]
  report = batch_enhance.run_plan(enhancer, batch_enhance.Plan(output_dir=out, jobs=jobs, replace=True),
                                  progress=False)
  failed = [{"image": os.path.splitext(os.path.basename(path))[0], "error": reason} for path, reason in report.failed]
  return len(report.written), failed


def _means(report: dict[str, Any]) -> dict[str, Any]:
  return {**report["mean"], **report.get("set", {})}


def compare(entries: Sequence[Entry], sets: Sequence[TestSet], out_dir: str, *,
            metrics: Sequence[str] | None = None, protocol: evaluate.Protocol = evaluate.Protocol(),
            fid_weights: str | None = None, timing_reps: int = 3, authors_crop: bool = False,
            progress: bool = False) -> dict[str, Any]:
  """Enhances every set with every entry, scores them and returns {'rows', 'sets', 'entries', 'failed'} (see the
  module doc; rows by set: the input first, then the entries in order); writes nothing but the enhanced images
  (`write_reports` writes the tables). Each entry is built (and compiled) once, DMGNIE runs once per camera, and
  one entry's networks are held at a time."""
  check_names(entries)
  proto = protocol_columns(protocol, authors_crop)
  scoring, set_info, by_set, failed, loaded_info = {}, [], {}, [], {}
  for test_set in sets:
    set_metrics = list(metrics) if metrics else list(
        DEFAULT_REFERENCE_METRICS if test_set.ref_dir else DEFAULT_NO_REFERENCE_METRICS)
    if fid_weights and "fid" not in set_metrics:
      set_metrics.append("fid")
    if not test_set.ref_dir:
      missing = [m for m in set_metrics if m in evaluate.FULL_REFERENCE or m == "fid"]
      if missing:
        raise errors.ConfigError(f"--metrics {','.join(missing)} need references; set {test_set.name} has none")
    scoring[test_set.name] = dict(metrics=set_metrics, protocol=protocol, fid_weights=fid_weights,
                                  progress=progress)
    set_info.append({"name": test_set.name, "low_dir": test_set.low_dir, "ref_dir": test_set.ref_dir,
                     "metrics": set_metrics, "images": len(evaluate.list_images(test_set.low_dir))})
    inp = evaluate.evaluate_folders(test_set.low_dir, test_set.ref_dir, **scoring[test_set.name])
    by_set[test_set.name] = [{"name": "input", "set": test_set.name, "kind": "input", "method": None,
                              **_means(inp), "images": len(inp["images"]), "failed": len(inp["errors"]),
                              "params_total": None, "params_trainable": None, "ms_600x400": None, **proto}]
  for entry in entries:
    loaded, ms, timing_error = {}, None, None
    for test_set in sets:
      pred = os.path.join(out_dir, test_set.name, entry.name)
      try:
        if test_set.camera not in loaded:
          loaded.clear()  # one build at a time
          loaded[test_set.camera] = load_entry(entry, authors_crop=authors_crop, camera=test_set.camera)
        this = loaded[test_set.camera]
        if ms is None and timing_error is None:
          try:
            ms = time_enhancer(this.enhancer, timing_reps)
          except errors.UserError as e:  # e.g. a DMGNIE camera's background is not 600x400: no timing, no abort
            timing_error = errors.one_line(e)
        # A ConfigError from the enhancer (it applies to every image) ends this entry's set, not the comparison.
        done, bad = _enhance_folder(this.enhancer, test_set.low_dir, pred)
      except errors.UserError as e:
        # This entry cannot run on this set (e.g. a DMGNIE run on photos of no camera): its row says why, and the
        # other entries and sets go on (an hour of enhancing is not thrown away for one entry).
        message = errors.one_line(e)
        count = len(evaluate.list_images(test_set.low_dir))
        failed.append({"name": entry.name, "set": test_set.name, "image": None, "error": message})
        built = loaded.get(test_set.camera)
        by_set[test_set.name].append({"name": entry.name, "set": test_set.name, "kind": entry.kind,
                                      "method": built.method if built else None, "images": 0, "failed": count,
                                      "error": message, "params_total": built.params["total"] if built else None,
                                      "params_trainable": built.params["trainable"] if built else None,
                                      "ms_600x400": None, **proto})
        continue
      loaded_info[entry.name] = {"kind": entry.kind, "spec": entry.spec, "method": this.method,
                                 "params": this.params}
      failed += [{"name": entry.name, "set": test_set.name, **b} for b in bad]
      row = {"name": entry.name, "set": test_set.name, "kind": entry.kind, "method": this.method}
      if done:
        rep = evaluate.evaluate_folders(pred, test_set.ref_dir, input_dir=test_set.low_dir,
                                        **scoring[test_set.name])
        row.update(_means(rep))
      row.update(images=done, failed=len(bad), params_total=this.params["total"],
                 params_trainable=this.params["trainable"], ms_600x400=ms, **proto)
      if timing_error:
        row["timing_error"] = timing_error
      if bad and not done:
        row["error"] = bad[0]["error"]
      by_set[test_set.name].append(row)
  rows = [row for test_set in sets for row in by_set[test_set.name]]
  return {"rows": rows, "sets": set_info, "entries": loaded_info, "failed": failed}


# -- reports -------------------------------------------------------------------------------------------------------

def _metric_columns(result: dict[str, Any], set_name: str) -> list[str]:
  for s in result["sets"]:
    if s["name"] == set_name:
      return list(s["metrics"])
  return []


def _cell(v: Any) -> str:
  if v is None:
    return "-"
  if isinstance(v, float):
    return f"{v:.4f}" if abs(v) < 1000 else f"{v:.1f}"
  return str(v)


def to_markdown(result: dict[str, Any]) -> str:
  lines = ["# lowlight-jax comparison", ""]
  if "preset" in result:
    lines += [paper_tables.to_markdown(result["preset"])]
  for s in result["sets"]:
    metrics = _metric_columns(result, s["name"])
    cols = ["name", "kind", "method", *metrics, "images", "failed", "params_total", "params_trainable",
            "ms_600x400"]
    lines += [f"## {s['name']} ({s['images']} images; references: {'yes' if s['ref_dir'] else 'no'})", "",
              "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    notes = []
    for row in (r for r in result["rows"] if r["set"] == s["name"]):
      lines.append("| " + " | ".join(_cell(row.get(c)) for c in cols) + " |")
      if row.get("error"):
        notes.append(f"- {row['name']}: no image enhanced: {row['error']}")
      if row.get("timing_error"):
        notes.append(f"- {row['name']}: not timed at 600x400: {row['timing_error']}")
    lines += [""] + (notes + [""] if notes else [])
  first = result["rows"][0] if result["rows"] else {}
  if first:
    lines += ["Protocol: " + ", ".join(f"{k[len('protocol_'):]} = {v}" for k, v in first.items()
                                        if k.startswith("protocol_")), ""]
  if result["failed"]:
    lines += ["Failed images:", ""] + [f"- {f['name']} / {f['set']} / {f['image'] or 'every image'}: {f['error']}"
                                        for f in result["failed"]] + [""]
  return "\n".join(lines)


def to_html(result: dict[str, Any], out_dir: str, thumbnails_per_set: int = 6) -> str:
  """The tables, then per set a grid: one row per image, the input, every entry's output and the reference side
  by side (centre-crop thumbnails embedded as data URIs: the page is one self-contained file)."""
  parts = []
  for s in result["sets"]:
    metrics = _metric_columns(result, s["name"])
    cols = ["name", "kind", "method", *metrics, "params_total", "params_trainable", "ms_600x400"]
    head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_cell(r.get(c)))}</td>" for c in cols) + "</tr>"
                   for r in result["rows"] if r["set"] == s["name"])
    names = [r["name"] for r in result["rows"] if r["set"] == s["name"] and r["kind"] != "input"]
    grid = []
    refs = evaluate.list_images(s["ref_dir"]) if s["ref_dir"] else {}
    for stem, src in sorted(evaluate.list_images(s["low_dir"]).items())[:thumbnails_per_set]:
      cells = [("input", src)] + [(n, os.path.join(out_dir, s["name"], n, f"{stem}.png")) for n in names]
      if stem in refs:
        cells.append(("reference", refs[stem]))
      figs = []
      for label, path in cells:
        if not os.path.exists(path):
          figs.append(f'<figure class="missing"><div>failed</div><figcaption>{html.escape(label)}</figcaption>'
                      "</figure>")
          continue
        uri = evaluate.thumbnail(evaluate.read_rgb8(path))
        figs.append(f'<figure><img src="{uri}" alt="{html.escape(label)} {html.escape(stem)}">'
                    f"<figcaption>{html.escape(label)}</figcaption></figure>")
      grid.append(f'<div class="row"><h3>{html.escape(stem)}</h3>{"".join(figs)}</div>')
    parts.append(f"<h2>{html.escape(s['name'])}</h2><table><tr>{head}</tr>{body}</table>"
                 f'<div class="grid">{"".join(grid)}</div>')
  first = result["rows"][0] if result["rows"] else {}
  protocol = "; ".join(f"{k[len('protocol_'):]}: {v}" for k, v in first.items() if k.startswith("protocol_"))
  return f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>lowlight-jax comparison</title>
<style>
body {{ font-family: sans-serif; margin: 1.5em; }}
table {{ border-collapse: collapse; margin-bottom: 1em; }}
td, th {{ border: 1px solid #ccc; padding: 2px 8px; text-align: right; }}
.row {{ display: flex; gap: 8px; align-items: flex-start; }}
.row h3 {{ width: 8em; font-size: 0.9em; }}
figure {{ margin: 0; text-align: center; font-size: 0.8em; }}
tr.ours {{ background: #eef; }} tr.method {{ font-weight: bold; }}
figure.missing div {{ width: 160px; height: 160px; background: #eee; line-height: 160px; color: #b00; }}
</style></head><body>
<h1>lowlight-jax comparison</h1>
<p>{html.escape(protocol)}</p>
{paper_tables.to_html(result["preset"]) if "preset" in result else ""}
{chr(10).join(parts)}
</body></html>
"""


def write_reports(result: dict[str, Any], out_dir: str) -> dict[str, str]:
  """compare.json, compare.md and compare.html in out_dir (each written atomically)."""
  paths = {k: os.path.join(out_dir, f"compare.{k}") for k in ("json", "md", "html")}
  atomic_io.write_json_atomic(paths["json"], result, indent=1, allow_nan=False)
  atomic_io.write_text_atomic(paths["md"], to_markdown(result))
  atomic_io.write_text_atomic(paths["html"], to_html(result, out_dir))
  return paths
