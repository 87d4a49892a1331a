"""`launch.compare`: released weights on a conformance set and the embedded test pairs, one table as JSON /
markdown / HTML with the thumbnails side by side, the protocol as columns, and one-line refusals of bad input."""

import base64
import io
import json
import os
import pathlib
import re
import shutil
import tempfile

import numpy as np
import pytest
from PIL import Image

from lowlight_jax.analysis import compare
from lowlight_jax.io import imageio
from lowlight_jax.metrics import evaluate


@pytest.fixture(scope="module")
def weights(conformance_dir):
  w = conformance_dir / "weights"
  return {"sgz": w / "sgz_epoch99.npz", "zero_dce": w / "zerodce_epoch99.npz"}


@pytest.fixture(scope="module")
def compared(weights, run_module, tmp_path_factory):
  """Released SGZ and Zero-DCE on two images of lowCUT and of the embedded test pairs: the output folder."""
  out = tmp_path_factory.mktemp("compare") / "cmp"
  res = run_module(["launch.compare", "--out", str(out), "--released", f"sgz=sgz:{weights['sgz']}",
                    "--released", f"zdce=zero_dce:{weights['zero_dce']}", "--sets", "lowcut,embedded_test",
                    "--limit", "2", "--timing_reps", "1"])
  assert res.returncode == 0, res.stderr[-3000:]
  return out


def test_released_entries_on_two_sets(compared, conformance_dir):
  out = compared
  result = json.loads((out / "compare.json").read_text())
  rows = {(r["name"], r["set"]): r for r in result["rows"]}
  assert list(rows) == [("input", "lowcut"), ("sgz", "lowcut"), ("zdce", "lowcut"), ("input", "embedded_test"),
                        ("sgz", "embedded_test"), ("zdce", "embedded_test")]
  for (name, set_name), row in rows.items():
    metrics = ("niqe", "brisque") if set_name == "lowcut" else ("psnr", "ssim", "lpips")
    assert all(np.isfinite(row[m]) for m in metrics), row
    assert row["images"] == 2 and row["failed"] == 0
    assert row["protocol_data_range"] == 255 and row["protocol_channel"] == "rgb"
    if name != "input":
      assert row["ms_600x400"] > 0
  assert rows[("sgz", "lowcut")]["params_total"] == rows[("sgz", "lowcut")]["params_trainable"] == 10561
  assert rows[("zdce", "lowcut")]["params_total"] == 79416
  # The enhanced images are the released networks' (SGZ brightens), at the input size.
  first = sorted(evaluate.list_images(conformance_dir / "inputs" / "lowCUT"))[0]
  low = imageio.read_image(conformance_dir / "inputs" / "lowCUT" / f"{first}.png")
  got = imageio.read_image(out / "lowcut" / "sgz" / f"{first}.png")
  assert got.shape == low.shape and got.mean() > low.mean() + 0.05
  # The enhanced images score better than the input against the references.
  assert rows[("sgz", "embedded_test")]["psnr"] > rows[("input", "embedded_test")]["psnr"]

  md = (out / "compare.md").read_text()
  assert "## lowcut (2 images" in md and "| sgz | released | sgz |" in md
  page = (out / "compare.html").read_text()
  # Per image: the input, both entries, and (embedded_test) the reference.
  assert len(re.findall(r'<img src="data:image/jpeg;base64,', page)) == 2 * 3 + 2 * 4
  assert 'alt="reference ' in page and 'alt="zdce ' in page


def test_page_shows_every_thumbnail_in_a_browser(compared, tmp_path):
  """compare.html in headless Chromium: every thumbnail decodes, and the screenshot shows each one where the page
  lays it out, the input, the entries and the reference side by side in one row per image."""
  shot = tmp_path / "compare.png"
  images = _render(compared / "compare.html", shot)
  assert len(images) == 2 * 3 + 2 * 4, [i["alt"] for i in images]
  screenshot = np.asarray(Image.open(shot).convert("RGB"), np.float32) / 255
  rows = {}
  for image in images:
    assert image["complete"] and image["natural_width"] == image["natural_height"] == 160, image["alt"]
    assert image["width"] == image["height"] == 160, image["alt"]
    shown = _crop(screenshot, image)
    assert shown.shape == (160, 160, 3), (image["alt"], shown.shape)  # inside the screenshot
    # What the browser shows is the embedded thumbnail (JPEG decoders differ by a few levels at most).
    assert np.abs(shown - _decode_data_uri(image["src"])).mean() < 0.02, image["alt"]
    rows.setdefault(round(image["y"]), []).append(image)
  # One row per image (2 sets x 2 images), left to right: input, sgz, zdce[, reference].
  assert len(rows) == 4
  for row in rows.values():
    labels = [i["alt"].split()[0] for i in sorted(row, key=lambda i: i["x"])]
    assert labels in (["input", "sgz", "zdce"], ["input", "sgz", "zdce", "reference"]), labels
    # The entries' outputs differ from the input on the screen (SGZ brightens): the check above can fail.
    by_label = {i["alt"].split()[0]: _crop(screenshot, i) for i in row}
    assert by_label["sgz"].mean() > by_label["input"].mean() + 0.03


@pytest.mark.parametrize("case", ["not_empty", "bad_set", "bad_method", "missing_weights", "same_name",
                                  "metric_needs_refs"])
def test_bad_input_is_one_line(case, weights, run_module, tmp_path):
  out = tmp_path / "out"
  args = ["--released", f"sgz=sgz:{weights['sgz']}", "--sets", "lowcut", "--limit", "1", "--timing_reps", "0"]
  expected = {
      "not_empty": "is not an empty folder",
      "bad_set": "--sets nope: not a known set",
      "bad_method": "METHOD one of",
      "missing_weights": "nope.pth does not exist",
      "same_name": "must be unique",
      "metric_needs_refs": "--metrics psnr need references; set lowcut has none",
  }[case]
  if case == "not_empty":
    out.mkdir()
    (out / "keep.txt").write_text("mine")
  elif case == "bad_set":
    args[3] = "nope"
  elif case == "bad_method":
    args[1] = f"x=retinex:{weights['sgz']}"
  elif case == "missing_weights":
    args[1] = f"x=sgz:{tmp_path / 'nope.pth'}"
  elif case == "same_name":
    args += ["--released", f"sgz=zero_dce:{weights['zero_dce']}"]
  elif case == "metric_needs_refs":
    args += ["--metrics", "psnr"]
  res = run_module(["launch.compare", "--out", str(out), *args])
  assert res.returncode != 0
  assert expected in res.stderr.strip().splitlines()[-1], res.stderr[-2000:]
  assert "Traceback" not in res.stderr
  if case == "not_empty":
    assert (out / "keep.txt").read_text() == "mine" and sorted(p.name for p in out.iterdir()) == ["keep.txt"]


def test_entry_specs():
  assert compare.parse_entry("released", "a=sgz:" + __file__) == compare.Entry("a", "released", "sgz:" + __file__)
  with pytest.raises(Exception, match="NAME=METHOD:WEIGHTS"):
    compare.parse_entry("released", "sgz:" + __file__)


# ---------------------------------------------------------------- the page in a headless browser

_INSTALL = "apt-get install chromium (Debian's package), or set LOWLIGHT_CHROMIUM to a Chromium binary"
# Chromium on a closed network: no background connections, no first-run work (see the machine notes).
_CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def _chromium() -> str:
  """The Chromium binary; skips the test (fails it when LOWLIGHT_REQUIRE_BROWSER is set) when there is none."""
  path = os.environ.get("LOWLIGHT_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
  if path and os.access(path, os.X_OK):
    return path
  message = f"no Chromium for the browser test: {_INSTALL}"
  if os.environ.get("LOWLIGHT_REQUIRE_BROWSER"):
    pytest.fail(message)
  pytest.skip(message)


def _render(page_path: os.PathLike, screenshot: os.PathLike, width: int = 1400) -> list[dict]:
  """Loads `page_path` in headless Chromium, writes a full-page PNG screenshot, and returns every <img> on the page:
  {"alt", "src", "complete", "natural_width", "natural_height", "x", "y", "width", "height"} (page CSS pixels,
  device scale 1, so they index the screenshot)."""
  from playwright.sync_api import sync_playwright  # pylint: disable=g-import-not-at-top

  binary = _chromium()
  with tempfile.TemporaryDirectory() as profile, sync_playwright() as p:
    context = p.chromium.launch_persistent_context(profile, executable_path=binary, args=_CHROMIUM_ARGS, headless=True,
                                                   viewport={"width": width, "height": 900},
                                                   device_scale_factor=1)
    try:
      page = context.new_page()
      page.goto(pathlib.Path(page_path).resolve().as_uri(), wait_until="load")
      images = page.evaluate("""() => Array.from(document.images).map(i => {
        const r = i.getBoundingClientRect();
        return {alt: i.alt, src: i.src, complete: i.complete, natural_width: i.naturalWidth,
                natural_height: i.naturalHeight, x: r.left + window.scrollX, y: r.top + window.scrollY,
                width: r.width, height: r.height};
      })""")
      page.screenshot(path=os.fspath(screenshot), full_page=True)
    finally:
      context.close()
  return images


def _decode_data_uri(src: str) -> np.ndarray:
  """An <img> data URI's picture as float RGB in [0, 1]."""
  _, payload = src.split(",", 1)
  return np.asarray(Image.open(io.BytesIO(base64.b64decode(payload))).convert("RGB"), np.float32) / 255


def _crop(screenshot: np.ndarray, image: dict) -> np.ndarray:
  """The screenshot's pixels under one <img> (its bounding box, rounded to whole pixels)."""
  x, y = int(round(image["x"])), int(round(image["y"]))
  return screenshot[y:y + int(round(image["height"])), x:x + int(round(image["width"]))]


# ---------------------------------------------------------------- the papers' tables (--preset)

def _preset_run(run_module, out, *args):
  res = run_module(["launch.compare", "--out", str(out), *args, "--limit", "1", "--timing_reps", "0"])
  assert res.returncode == 0, res.stderr[-3000:]
  preset = json.loads((out / "compare.json").read_text())["preset"]
  return res, preset, (out / "compare.md").read_text(), (out / "compare.html").read_text()


def _rows_of(preset, source):
  return {r["name"]: r for r in preset["rows"] if r["source"] == source}


def test_preset_scl_lle_niqe_on_the_sets_here(weights, run_module, tmp_path):
  """DICM and LIME are here (conformance subsets): ours beside the paper's NIQE; MEF, VV, NPE listed missing."""
  res, preset, md, page = _preset_run(run_module, tmp_path / "out", "--preset", "scl_lle_niqe",
                                      "--released", f"sgz=sgz:{weights['sgz']}")
  result = json.loads((tmp_path / "out" / "compare.json").read_text())
  assert [s["name"] for s in result["sets"]] == ["dicm", "lime"] and result["sets"][0]["metrics"] == ["niqe"]
  assert preset["name"] == "scl_lle_niqe" and preset["citation"]["table"] == "Table 1"
  assert _rows_of(preset, "paper")["Ours"]["dicm/niqe"] == 3.51
  ours = _rows_of(preset, "ours")
  assert list(ours) == ["input", "sgz"] and ours["sgz"]["entry"] == "sgz"
  by_set = {r["set"]: r for r in result["rows"] if r["name"] == "sgz"}
  for key in ("dicm", "lime"):
    assert np.isfinite(ours["sgz"][f"{key}/niqe"]) and ours["sgz"][f"{key}/niqe"] == by_set[key]["niqe"]
  assert all(ours["sgz"][f"{k}/niqe"] is None for k in ("mef", "vv", "npe")) and ours["sgz"]["average/niqe"] is None
  assert [(m["key"], m["how"]) for m in preset["missing"]] == [("mef", "--data mef=PATH"), ("vv", "--data vv=PATH"),
                                                               ("npe", "--data npe=PATH")]
  row = next(line for line in md.splitlines() if line.startswith("| sgz | ours: sgz |"))
  assert row.split(" | ")[2] == f"{ours['sgz']['dicm/niqe']:.2f}" and row.split(" | ")[6] == "—"
  assert md.index("| **Ours** | paper: the method | 3.51 |") < md.index("| sgz | ours: sgz |")
  for line in ("- mef: MEF low-light images", "Pass `--data vv=PATH`.", "Pass `--data npe=PATH`."):
    assert line in md and line in res.stdout, line
  assert '<table class="paper">' in page and "--data npe=PATH" in page


def test_preset_skf_lol_on_given_data(weights, run_module, conformance_dir, tmp_path):
  """--data lol=FOLDER (low/ + high/): PSNR / SSIM / LPIPS / NIQE of ours beside the paper's; LOL-v2 missing."""
  lol = tmp_path / "LOL"
  for sub in ("low", "high"):
    (lol / sub).mkdir(parents=True)
  for stem, path in sorted(evaluate.list_images(conformance_dir / "inputs" / "LIME").items())[:2]:
    low = imageio.read_image(path)[:192, :192]  # two 96x96 NIQE blocks at least
    Image.fromarray(np.uint8(low * 255 + 0.5)).save(lol / "low" / f"{stem}.png")
    Image.fromarray(np.uint8(np.clip(low * 3, 0, 1) * 255 + 0.5)).save(lol / "high" / f"{stem}.png")
  _, preset, md, _ = _preset_run(run_module, tmp_path / "out", "--preset", "skf_lol", "--data", f"lol={lol}",
                                 "--released", f"sgz=sgz:{weights['sgz']}")
  ours = _rows_of(preset, "ours")["sgz"]
  for metric in ("psnr", "ssim", "lpips", "niqe"):
    assert np.isfinite(ours[f"lol/{metric}"]), metric
    assert ours[f"lol_v2/{metric}"] is None
  assert ours["params_m"] == pytest.approx(0.010561)
  assert preset["used"] == [{"key": "lol", "images": 1, "source": f"--data lol={lol}"}]
  assert [m["key"] for m in preset["missing"]] == ["lol_v2"]
  assert _rows_of(preset, "paper")["DRBN-SKF(Ours)"]["lol/psnr"] == 22.837 and preset["ours_row"] == "DRBN-SKF(Ours)"
  assert f"| sgz | ours: sgz | {ours['lol/psnr']:.3f} | {ours['lol/ssim']:.3f} | {ours['lol/lpips']:.3f} |" in md


def test_preset_without_its_data_writes_the_papers_table(weights, run_module, tmp_path):
  """DMGNIE's data is private: the paper's table, our entry without values, and what it would need; exit 0."""
  out = tmp_path / "out"
  res, preset, md, page = _preset_run(run_module, out, "--preset", "dmgnie_traffic",
                                      "--released", f"sgz=sgz:{weights['sgz']}")
  assert sorted(p.name for p in out.iterdir()) == ["compare.html", "compare.json", "compare.md"]
  assert _rows_of(preset, "paper")["Ours"]["lq_tll_qd/lpips"] == 42.961 and len(_rows_of(preset, "paper")) == 18
  ours = _rows_of(preset, "ours")
  assert list(ours) == ["sgz"] and all(ours["sgz"][c["id"]] is None for c in preset["columns"])
  assert [m["key"] for m in preset["missing"]] == ["lq_tll_qd", "lq_tll_sz", "lq_tell"]
  assert "| sgz | ours: sgz | — | — |" in md and "| **Ours** | paper: the method | 31.422 | 22.473 |" in md
  for key in ("lq_tll_qd", "lq_tll_sz", "lq_tell"):
    assert f"Pass `--data {key}=PATH`." in res.stdout and f"--data {key}=PATH" in page


@pytest.mark.parametrize("case", ["bad_preset", "bad_data_key", "missing_data_path", "contradicting_metrics",
                                  "data_without_preset"])
def test_preset_bad_input_is_one_line(case, weights, run_module, tmp_path):
  out = tmp_path / "out"
  args, expected = {
      "bad_preset": (["--preset", "nope"], "--preset nope: unknown; choose from sgz_table1, scl_lle_niqe, skf_lol, "
                     "scuf_lsrw, dmgnie_traffic"),
      "bad_data_key": (["--preset", "skf_lol", "--data", f"lsrw={tmp_path}"],
                       "preset skf_lol has no dataset 'lsrw'; choose from lol, lol_v2"),
      "missing_data_path": (["--preset", "skf_lol", "--data", f"lol={tmp_path / 'LOL'}"],
                            f"--data lol={tmp_path / 'LOL'}: {tmp_path / 'LOL'} does not exist"),
      "contradicting_metrics": (["--preset", "scl_lle_niqe", "--metrics", "psnr,ssim"],
                                "--metrics psnr,ssim: preset scl_lle_niqe uses niqe (the paper's table)"),
      "data_without_preset": (["--data", f"lol={tmp_path}"], "--data needs --preset"),
  }[case]
  res = run_module(["launch.compare", "--out", str(out), "--released", f"sgz=sgz:{weights['sgz']}", *args,
                    "--limit", "1", "--timing_reps", "0"])
  assert res.returncode != 0
  assert expected in res.stderr.strip().splitlines()[-1], res.stderr[-2000:]
  assert "Traceback" not in res.stderr
  assert not out.exists()
