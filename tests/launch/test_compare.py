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
