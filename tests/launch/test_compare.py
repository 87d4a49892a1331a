"""`launch.compare`: released weights on a conformance set and the embedded test pairs, one table as JSON /
markdown / HTML with the thumbnails side by side, the protocol as columns, and one-line refusals of bad input."""

import json
import re

import numpy as np
import pytest

from lowlight_jax.analysis import compare
from lowlight_jax.io import imageio
from lowlight_jax.metrics import evaluate


@pytest.fixture(scope="module")
def weights(conformance_dir):
  w = conformance_dir / "weights"
  return {"sgz": w / "sgz_epoch99.npz", "zero_dce": w / "zerodce_epoch99.npz"}


def test_released_entries_on_two_sets(weights, conformance_dir, run_module, tmp_path):
  out = tmp_path / "cmp"
  res = run_module(["launch.compare", "--out", str(out), "--released", f"sgz=sgz:{weights['sgz']}",
                    "--released", f"zdce=zero_dce:{weights['zero_dce']}", "--sets", "lowcut,embedded_test",
                    "--limit", "2", "--timing_reps", "1"])
  assert res.returncode == 0, res.stderr[-3000:]
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
