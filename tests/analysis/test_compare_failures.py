"""`compare.compare` keeps going when one entry cannot run on a set: that entry's row says why, and every other
entry and set is still enhanced and scored (a long comparison is not thrown away for one entry)."""

import numpy as np
import pytest

from lowlight_jax import errors
from lowlight_jax.analysis import compare
from lowlight_jax.metrics import evaluate


@pytest.mark.parametrize("where", ["load", "enhance"])
def test_an_entry_that_cannot_run_on_a_set_is_a_row_not_an_abort(where, conformance_dir, tmp_path, monkeypatch):
  weights = conformance_dir / "weights" / "sgz_epoch99.npz"
  entries = [compare.Entry("broken", "released", f"sgz:{weights}"), compare.Entry("sgz", "released", f"sgz:{weights}")]
  real_load, real_enhance = compare.load_entry, compare._enhance_folder  # pylint: disable=protected-access
  message = "enhance needs the images' camera: set inference.camera"

  def load(entry, **kwargs):
    if entry.name == "broken" and where == "load":
      raise errors.ConfigError(message)
    return real_load(entry, **kwargs)

  def enhance(enhancer, low_dir, out):  # a ConfigError raised by the enhancer itself (run_plan lets it through)
    if out.endswith("broken") and where == "enhance":
      raise errors.ConfigError(message)
    return real_enhance(enhancer, low_dir, out)

  monkeypatch.setattr(compare, "load_entry", load)
  monkeypatch.setattr(compare, "_enhance_folder", enhance)
  sets = [compare.resolve_set("lowcut", str(tmp_path), limit=2)]
  result = compare.compare(entries, sets, str(tmp_path), timing_reps=0)
  rows = {r["name"]: r for r in result["rows"]}
  assert list(rows) == ["input", "broken", "sgz"]
  assert rows["broken"]["images"] == 0 and rows["broken"]["failed"] == 2
  assert rows["broken"]["error"] == message
  assert rows["broken"]["method"] == (None if where == "load" else "sgz")
  assert rows["sgz"]["images"] == 2 and rows["sgz"]["failed"] == 0 and np.isfinite(rows["sgz"]["niqe"])
  assert result["failed"] == [{"name": "broken", "set": "lowcut", "image": None,
                               "error": "enhance needs the images' camera: set inference.camera"}]
  md = compare.to_markdown(result)
  assert "- broken: no image enhanced: enhance needs the images' camera" in md
  assert "- broken / lowcut / every image: enhance needs" in md
  assert len(evaluate.list_images(tmp_path / "lowcut" / "sgz")) == 2


def test_an_enhancer_that_cannot_be_timed_is_still_scored(conformance_dir, tmp_path, monkeypatch):
  weights = conformance_dir / "weights" / "sgz_epoch99.npz"

  def timing(enhancer, reps):
    raise errors.InputError("its background is 88x160 (HxW) but the image is 400x600")

  monkeypatch.setattr(compare, "time_enhancer", timing)
  sets = [compare.resolve_set("lowcut", str(tmp_path), limit=1)]
  result = compare.compare([compare.Entry("sgz", "released", f"sgz:{weights}")], sets, str(tmp_path))
  row = result["rows"][1]
  assert row["ms_600x400"] is None and row["images"] == 1 and "88x160" in row["timing_error"]
  assert "- sgz: not timed at 600x400: its background is 88x160" in compare.to_markdown(result)
