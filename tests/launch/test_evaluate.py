"""`python -m launch.evaluate` on folders and on a run (--workdir); `evaluate_folders` errors."""

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
from PIL import Image
import pytest

from lowlight_jax.metrics import assets
from lowlight_jax.metrics import evaluate
from lowlight_jax.metrics import full_reference

REPO = pathlib.Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def folders(metrics_reference_dir, tmp_path_factory):
  """pred/ref/inputs folders: three 192x256 crops of the calibration pairs, a corrupt prediction
  with a reference, and a prediction without one."""
  assets.fetch()  # the same call as `python -m launch.assets fetch` (no-op once cached)
  root = tmp_path_factory.mktemp("eval")
  dirs = {k: root / k for k in ("pred", "ref", "inputs")}
  for d in dirs.values():
    d.mkdir()
  for i, name in enumerate(("I04", "I06", "I19")):
    dist = np.asarray(Image.open(metrics_reference_dir / "dist" / f"{name}.png").convert("RGB"))
    ref = np.asarray(Image.open(metrics_reference_dir / "ref" / f"{name}.png").convert("RGB"))
    crop = (slice(96, 288), slice(128, 384))
    Image.fromarray(dist[crop]).save(dirs["pred"] / f"img{i}.png")
    Image.fromarray(ref[crop]).save(dirs["ref"] / f"img{i}.png")
    Image.fromarray((ref[crop] // 4).astype(np.uint8)).save(dirs["inputs"] / f"img{i}.jpg")
  (dirs["pred"] / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
  Image.fromarray(ref[crop]).save(dirs["ref"] / "broken.png")
  Image.fromarray(dist[crop]).save(dirs["pred"] / "extra.png")
  return dirs


def _run(*args, env=None):
  env = {**os.environ, "JAX_PLATFORMS": "cpu", **(env or {})}
  return subprocess.run([sys.executable, "-m", "launch.evaluate", *args], cwd=REPO,
                        capture_output=True, text=True, env=env, timeout=600, check=False)


def test_cli_report(folders, tmp_path):
  out, page = tmp_path / "out" / "report.json", tmp_path / "report.html"
  res = _run("--pred", str(folders["pred"]), "--ref", str(folders["ref"]), "--inputs",
             str(folders["inputs"]), "--metrics", "psnr,ssim,lpips,niqe,brisque", "--out", str(out),
             "--html", str(page))
  assert res.returncode == 0, res.stderr[-3000:]
  report = json.loads(out.read_text())
  metrics = ["psnr", "ssim", "lpips", "niqe", "brisque"]
  assert report["metrics"] == metrics
  assert set(report["images"]) == {"img0", "img1", "img2", "broken", "extra"}
  assert "cannot decode image" in report["images"]["broken"]["error"]
  assert [e["name"] for e in report["errors"]] == ["broken"]
  assert not set(metrics) & set(report["images"]["broken"])
  assert report["unpaired"] == {"pred_only": ["extra"], "ref_only": []}
  assert "unpaired (no reference): 1: extra" in res.stdout
  # The unpaired prediction still gets no-reference scores.
  extra = report["images"]["extra"]
  assert {"niqe", "brisque"} <= set(extra) and "psnr" not in extra
  for m in metrics:
    vals = [r[m] for r in report["images"].values() if m in r]
    assert report["count"][m] == len(vals) == (4 if m in ("niqe", "brisque") else 3)
    assert report["mean"][m] == pytest.approx(np.mean(vals), rel=1e-12)
  pred = np.asarray(Image.open(folders["pred"] / "img2.png"), np.float32)
  ref = np.asarray(Image.open(folders["ref"] / "img2.png"), np.float32)
  assert report["images"]["img2"]["psnr"] == pytest.approx(
      float(full_reference.psnr(pred, ref, data_range=255.0)), abs=1e-5)
  # I04 (img0) is the milder distortion.
  assert report["images"]["img0"]["lpips"] < report["images"]["img2"]["lpips"]
  text = page.read_text()
  assert "<table" in text
  assert text.count("data:image/jpeg;base64,") == 3 * 3 + 1  # input/output/reference x3 + extra
  assert "broken" in text and not list(out.parent.glob(".*.tmp"))


def test_cli_missing_asset_is_a_clear_error(folders, tmp_path):
  res = _run("--pred", str(folders["pred"]), "--metrics", "niqe", "--out", str(tmp_path / "r.json"),
             env={assets.ENV_CACHE: str(tmp_path / "empty")})
  assert res.returncode == 2
  assert "python -m launch.assets fetch" in res.stderr
  assert not (tmp_path / "r.json").exists()


def test_exif_rotated_photo_enhanced_then_scored(tmp_path, conformance_dir, run_module):
  """One reader everywhere: a camera JPEG with EXIF orientation 6 (and its reference, also a rotated JPEG)
  is enhanced upright by launch.enhance and scored upright by launch.evaluate (it used to say 'sizes differ')."""
  rng = np.random.default_rng(0)
  stored = rng.integers(10, 60, (24, 48, 3), dtype=np.uint8)  # 48 wide as stored; 24 wide x 48 high as viewed.
  exif = Image.Exif()
  exif[0x0112] = 6
  for folder, image in (("inputs", stored), ("refs", np.clip(stored.astype(int) * 3, 0, 255).astype(np.uint8))):
    (tmp_path / folder).mkdir()
    Image.fromarray(image).save(tmp_path / folder / "cam.jpg", exif=exif, quality=95)
  enhance = run_module(["launch.enhance", "--method", "sgz", "--weights",
                        str(conformance_dir / "weights" / "sgz_Epoch99.pth"), "--input", str(tmp_path / "inputs"),
                        "--output", str(tmp_path / "out"), "--noprogress"])
  assert enhance.returncode == 0, enhance.stderr[-3000:]
  assert np.asarray(Image.open(tmp_path / "out" / "cam.png")).shape == (48, 24, 3)
  report_path = tmp_path / "report.json"
  res = run_module(["launch.evaluate", "--pred", str(tmp_path / "out"), "--ref", str(tmp_path / "refs"),
                    "--metrics", "psnr,ssim", "--out", str(report_path), "--noprogress"])
  assert res.returncode == 0, res.stderr[-3000:]
  report = json.loads(report_path.read_text())
  assert report["errors"] == [] and report["count"] == {"psnr": 1, "ssim": 1}
  assert 5 < report["images"]["cam"]["psnr"] < 60


def test_nothing_pairs_is_an_error_naming_the_folders(tmp_path, run_module):
  for folder, name in (("pred", "a.png"), ("ref", "b.png")):
    (tmp_path / folder).mkdir()
    Image.new("RGB", (16, 16)).save(tmp_path / folder / name)
  out = tmp_path / "r.json"
  res = run_module(["launch.evaluate", "--pred", str(tmp_path / "pred"), "--ref", str(tmp_path / "ref"),
                    "--metrics", "psnr", "--out", str(out), "--noprogress"])
  assert res.returncode == 2, res.stderr[-3000:]
  line = res.stderr.strip().splitlines()
  assert len(line) == 1 and "Traceback" not in res.stderr
  assert str(tmp_path / "pred") in line[0] and str(tmp_path / "ref") in line[0] and "a.png" in line[0]
  assert not out.exists()
  # An empty predictions folder is the same kind of error.
  (tmp_path / "pred" / "a.png").unlink()
  res = run_module(["launch.evaluate", "--pred", str(tmp_path / "pred"), "--metrics", "niqe", "--out", str(out)])
  assert res.returncode == 2 and "no image files" in res.stderr and not out.exists()


def test_evaluate_folders_errors_and_protocol(folders, tmp_path):
  with pytest.raises(ValueError, match="need reference"):
    evaluate.evaluate_folders(folders["pred"], metrics=["psnr"], progress=False)
  with pytest.raises(ValueError, match="unknown metrics"):
    evaluate.evaluate_folders(folders["pred"], metrics=["psnr", "vif"], progress=False)
  with pytest.raises(ValueError, match="fid needs InceptionV3 weights"):
    evaluate.evaluate_folders(folders["pred"], folders["ref"], metrics=["fid"], progress=False)
  # A reference of another size is a per-image error; cropping applies before scoring.
  ref2 = tmp_path / "ref2"
  ref2.mkdir()
  for p in folders["ref"].iterdir():
    (ref2 / p.name).write_bytes(p.read_bytes())
  Image.new("RGB", (50, 40)).save(ref2 / "img1.png")
  protocol = evaluate.Protocol(crop_border=4, channel="y")
  out = tmp_path / "r.json"
  report = evaluate.evaluate_folders(folders["pred"], ref2, metrics=["psnr", "ssim"],
                                     progress=False, protocol=protocol, out_json=out)
  assert "sizes differ" in report["images"]["img1"]["error"]
  pred = np.asarray(Image.open(folders["pred"] / "img0.png"), np.float32)
  ref = np.asarray(Image.open(folders["ref"] / "img0.png"), np.float32)
  want = full_reference.ssim(pred, ref, data_range=255.0, crop_border=4, channel="y", quantize=True)
  assert report["images"]["img0"]["ssim"] == pytest.approx(float(want), abs=1e-6)
  assert json.loads(out.read_text())["protocol"]["psnr_ssim_channel"] == "y"


def test_fid_is_a_set_level_value(folders, monkeypatch):
  # Plumbing only, with a stand-in feature extractor (tests/metrics/test_fid.py tests the network).
  from lowlight_jax.metrics import fid

  class _MeanColour:

    def __init__(self, variables):
      assert variables == {"stub": True}

    def __call__(self, img):
      return img.reshape(-1, 3).mean(axis=0).astype(np.float64)

  monkeypatch.setattr(fid, "load_variables", lambda path: {"stub": True})
  monkeypatch.setattr(fid, "FeatureExtractor", _MeanColour)
  report = evaluate.evaluate_folders(folders["pred"], folders["ref"], metrics=["fid"],
                                     fid_weights="w.pth", progress=False)
  feats = lambda d, names: np.stack([
      np.asarray(Image.open(d / f"{n}.png").convert("RGB")).reshape(-1, 3).mean(axis=0)
      for n in names
  ])
  want = fid.fid_from_features(feats(folders["pred"], ["extra", "img0", "img1", "img2"]),
                               feats(folders["ref"], ["broken", "img0", "img1", "img2"]))
  assert report["set"]["fid"] == pytest.approx(want, rel=1e-9)
  assert report["mean"] == {} and [e["name"] for e in report["errors"]] == ["broken"]
  # Night-to-day (DMGNIE): FID against another distribution (day frames), no references needed.
  report = evaluate.evaluate_folders(folders["pred"], None, metrics=["fid"], fid_weights="w.pth",
                                     fid_ref_dir=folders["inputs"], progress=False)
  inputs = np.stack([np.asarray(Image.open(folders["inputs"] / f"img{i}.jpg").convert("RGB")).reshape(-1, 3).mean(0)
                     for i in range(3)])
  want = fid.fid_from_features(feats(folders["pred"], ["extra", "img0", "img1", "img2"]), inputs)
  assert report["set"]["fid"] == pytest.approx(want, rel=1e-9) and report["fid_ref_dir"] == str(folders["inputs"])


# --- Run mode: `--workdir RUN --data {embedded_test,FOLDER}` ------------------------------------


def _quiet_env():
  # Subprocesses get one CPU device each, as a user's shell would.
  return {"XLA_FLAGS": "", "TF_CPP_MIN_LOG_LEVEL": "3"}


@pytest.fixture(scope="module")
def smoke_run(conformance_dir, tmp_path_factory):
  """A 4-step SGZ smoke run from the released weights (so its outputs differ from the inputs)."""
  workdir = tmp_path_factory.mktemp("run") / "sgz"
  res = subprocess.run(
      [sys.executable, "-m", "launch.train", "--config", "configs/sgz.py:smoke",
       "--workdir", str(workdir), "--config.loss_weights.semantic=0",
       f"--config.init_from={conformance_dir / 'weights' / 'sgz_epoch99.npz'}"],
      cwd=REPO, capture_output=True, text=True, timeout=600, check=False,
      env={**os.environ, "JAX_PLATFORMS": "cpu", **_quiet_env()})
  assert res.returncode == 0, res.stderr[-3000:]
  return workdir


@pytest.fixture(scope="module")
def embedded_eval(smoke_run, tmp_path_factory):
  root = tmp_path_factory.mktemp("run_eval")
  out, page = root / "report.json", root / "report.html"
  res = _run("--workdir", str(smoke_run), "--data", "embedded_test",
             "--out_dir", str(root / "files"), "--metrics", "psnr,ssim", "--out", str(out),
             "--html", str(page), "--noprogress",
             env=_quiet_env())
  assert res.returncode == 0, res.stderr[-3000:]
  return {"report": json.loads(out.read_text()), "files": root / "files", "html": page,
          "stdout": res.stdout}


def _png(path):
  return np.asarray(Image.open(path).convert("RGB"))


def test_run_mode_on_the_embedded_test_split(smoke_run, embedded_eval):
  from data_pipelines import pipeline

  report, files = embedded_eval["report"], embedded_eval["files"]
  names = [e["name"] for e in pipeline.make_eval_set(pipeline.default_data_config(), split="test")]
  assert sorted(report["images"]) == sorted(names) and report["errors"] == []
  assert report["count"] == {"psnr": len(names), "ssim": len(names)}
  assert f"enhanced {len(names)} image(s) of embedded_test" in embedded_eval["stdout"]
  for name in names:
    pred, ref, low = (_png(files / sub / f"{name}.png")
                      for sub in ("enhanced", "reference", "input"))
    assert pred.shape == ref.shape == low.shape  # Full size, whatever the scale factor divides.
    assert pred.mean() > low.mean() + 5  # The run enhances (brightens) its inputs.
    want = full_reference.psnr(pred.astype(np.float32), ref.astype(np.float32), data_range=255.0)
    assert report["images"][name]["psnr"] == pytest.approx(float(want), abs=1e-5)
  # The trainer's own final evaluation (first test image, same checkpoint) agrees.
  final = json.loads((smoke_run / "final_metrics.json").read_text())
  assert report["images"][names[0]]["psnr"] == pytest.approx(final["eval/psnr"], abs=1e-3)
  assert report["images"][names[0]]["ssim"] == pytest.approx(final["eval/ssim"], abs=1e-4)
  assert embedded_eval["html"].read_text().count("data:image/jpeg;base64,") == 3 * len(names)


def test_run_mode_on_a_paired_folder(smoke_run, embedded_eval, tmp_path):
  # The embedded split's own inputs/references as a LOL-style folder: the same enhanced images.
  files = embedded_eval["files"]
  names = sorted(p.stem for p in (files / "input").iterdir())[:2]
  for sub, src in (("low", "input"), ("high", "reference")):
    (tmp_path / "data" / sub).mkdir(parents=True)
    for name in names:
      data = (files / src / f"{name}.png").read_bytes()
      (tmp_path / "data" / sub / f"{name}.png").write_bytes(data)
  Image.new("RGB", (20, 16)).save(tmp_path / "data" / "low" / "unpaired.png")
  out = tmp_path / "report.json"
  res = _run("--workdir", str(smoke_run), "--data", str(tmp_path / "data"),
             "--out_dir", str(tmp_path / "o"), "--metrics", "psnr", "--out", str(out),
             "--noprogress", env=_quiet_env())
  assert res.returncode == 0, res.stderr[-3000:]
  report = json.loads(out.read_text())
  assert sorted(report["images"]) == names
  for name in names:
    np.testing.assert_array_equal(_png(tmp_path / "o" / "enhanced" / f"{name}.png"),
                                  _png(files / "enhanced" / f"{name}.png"))
    want = embedded_eval["report"]["images"][name]["psnr"]
    assert report["images"][name]["psnr"] == pytest.approx(want, abs=1e-9)


def test_run_mode_errors(smoke_run, embedded_eval, tmp_path):
  res = _run("--workdir", str(smoke_run), "--pred", str(tmp_path),
             "--out", str(tmp_path / "r.json"), env=_quiet_env())
  assert res.returncode != 0 and "either --pred" in res.stderr
  # A used --out_dir would mix stale images into the report: refused before anything is written.
  res = _run("--workdir", str(smoke_run), "--out_dir", str(embedded_eval["files"]),
             "--metrics", "psnr", "--out", str(tmp_path / "r.json"), env=_quiet_env())
  assert res.returncode == 2 and "is not empty" in res.stderr
  assert not (tmp_path / "r.json").exists()


def test_analysis_loads_the_run(smoke_run, embedded_eval):
  """`analysis.load_sgz(workdir=...)` restores the run `launch.evaluate --workdir` enhanced with."""
  from lowlight_jax.analysis import sgz_factors
  from lowlight_jax.train import evaluation

  model = sgz_factors.load_sgz(workdir=smoke_run)
  config = json.loads((smoke_run / "config.json").read_text())
  assert model.scale_factor == config["inference"]["scale_factor"]
  element = sgz_factors.load_eval_images(smoke_run, num_images=1)[0]
  trace = sgz_factors.trace_enhancement(model, element["low"])
  ours = evaluation.quantize(trace["output"]).astype(np.int16)
  cli = _png(embedded_eval["files"] / "enhanced" / f"{element['name']}.png").astype(np.int16)
  # Eager analysis vs. the jitted run inference: at most a rare one-level rounding difference.
  diff = np.abs(ours - cli)
  assert diff.max() <= 1 and np.mean(diff > 0) < 1e-3


def test_runs_side_by_side_with_the_input_row(smoke_run, embedded_eval, tmp_path):
  """Two runs (the smoke run, and a copy of it stopped at its first checkpoint) on the same images: one report
  with the input's scores beside them, each run's own numbers as it scores alone."""
  import shutil

  from lowlight_jax.train import checkpoint as ckpt_lib

  early = tmp_path / "early"
  shutil.copytree(smoke_run, early)
  checkpointer = ckpt_lib.Checkpointer(str(early))
  steps = checkpointer.all_steps()
  checkpointer.close()
  assert len(steps) >= 2
  for step in steps[1:]:
    shutil.rmtree(early / "checkpoints" / str(step))
  out = tmp_path / "compare.json"
  res = _run("--workdir", f"late={smoke_run}", "--workdir", f"early={early}", "--metrics", "psnr,ssim",
             "--out", str(out), "--noprogress", env=_quiet_env())
  assert res.returncode == 0, res.stderr[-3000:]
  report = json.loads(out.read_text())
  assert list(report["runs"]) == ["late", "early"] and report["metrics"] == ["psnr", "ssim"]
  late, early_r = report["runs"]["late"]["mean"], report["runs"]["early"]["mean"]
  assert late == pytest.approx(embedded_eval["report"]["mean"])  # The same numbers as scored alone.
  assert early_r["psnr"] != late["psnr"]
  inputs = report["input"]["mean"]
  assert inputs["psnr"] < late["psnr"]  # The run (from the released weights) improves on its dark inputs.
  table = [line.split() for line in res.stdout.splitlines()]
  rows = {line[0]: line[1:] for line in table if line and line[0] in ("input", "late", "early")}
  assert float(rows["input"][0]) == pytest.approx(inputs["psnr"], abs=1e-4)
  assert float(rows["early"][1]) == pytest.approx(early_r["ssim"], abs=1e-4)
  # Two runs under one name, or --html with several runs, are refused.
  res = _run("--workdir", f"a={smoke_run}", "--workdir", f"a={early}", "--out", str(tmp_path / "x.json"),
             env=_quiet_env())
  assert res.returncode == 2 and "named the same" in res.stderr
  assert not (tmp_path / "x.json").exists()
