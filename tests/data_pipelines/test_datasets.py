"""Standard dataset layouts: pairing, pools, labels, unpaired sets, errors, bad files."""

import os

import grain
import numpy as np
import pytest
from PIL import Image

from data_pipelines import datasets

TEST_ONLY = ("dicm", "lime", "mef", "npe", "vv")


def _splits(name):
  if name in TEST_ONLY:
    return ("test",)
  if name == "cityscapes":
    return ("train", "val")
  if name == "enlightengan":
    return ("train",)
  return ("train", "test")


@pytest.mark.parametrize("name", sorted(datasets.DATASETS))
def test_every_layout_builds_a_source_of_rgb_float_images(tmp_path, name):
  root = datasets.write_fake_layout(name, tmp_path / name, count=3)
  expected_len = {"lsrw": 6, "sice": 6, "enlightengan": 4}.get(name, 3)
  for split in _splits(name):
    source = datasets.make_source(name, root, split)
    assert len(source) == expected_len, (name, split)
    assert source.skipped == []
    element = grain.MapDataset.source(source)[len(source) - 1]
    for key, value in element.items():
      if key == "label":
        assert value.dtype == np.int32 and value.shape == (16, 16)
      else:
        assert value.dtype == np.float32 and value.ndim == 3 and value.shape[-1] == 3
        assert 0.0 <= value.min() and value.max() <= 1.0
    if {"low", "high"} <= element.keys() and name not in ("enlightengan", "sice"):
      # The fake pairs are low = round(high / 4): a wrong pairing would break this.
      np.testing.assert_allclose(element["low"], np.round(element["high"] * 255 / 4) / 255,
                                 atol=1e-6)
    assert repr(source) == repr(datasets.make_source(name, root, split))  # Stable for grain.


def test_lol_v2_real_pairs_low_and_normal_prefixed_names(tmp_path):
  root = datasets.write_fake_layout("lol_v2_real", tmp_path)
  source = datasets.make_source("lol_v2_real", root, "test")
  assert [(p[0].name, p[1].name) for p in source.paths] == [
      (f"low{k:05d}.png", f"normal{k:05d}.png") for k in (1, 2, 3)]


def test_sice_pools_split_each_sequence_by_exposure(tmp_path):
  root = datasets.write_fake_layout("sice", tmp_path, count=2)
  under = datasets.make_source("sice", root, "train", pool="under")
  over = datasets.make_source("sice", root, "train", pool="over")
  normal = datasets.make_source("sice", root, "train", pool="normal")
  # Five exposures per scene: 1-2 under, 4-5 over, 3 (the middle) in neither.
  assert [(p[0].parent.name, p[0].stem, p[1].stem) for p in under.paths] == [
      ("1", "1", "1"), ("1", "2", "1"), ("2", "1", "2"), ("2", "2", "2")]
  assert [p[0].stem for p in over.paths] == ["4", "5", "4", "5"]
  assert [p[0].parent.name for p in normal.paths] == ["Label", "Label"]
  assert set(normal[0]) == {"high"}
  assert under[0]["low"].mean() < under[0]["high"].mean() < over[0]["low"].mean()
  # Part2 is the test split.
  assert all("Dataset_Part2" in str(p[0]) for p in datasets.make_source("sice", root, "test").paths)


def test_cityscapes_labels_are_raw_train_ids_and_label_ids_are_mapped(tmp_path):
  root = datasets.write_fake_layout("cityscapes", tmp_path, count=2)
  source = datasets.make_source("cityscapes", root, "val")
  element = source[0]
  assert element["label"][0].tolist() == [255] * 16
  assert set(np.unique(element["label"][1:])) <= set(range(19))
  # A copy with only raw labelIds: mapped through the official id -> trainId table.
  for p in (root / "gtFine" / "val").rglob("*_labelTrainIds.png"):
    ids = np.zeros((16, 16), np.uint8)
    ids[:, :4], ids[:, 4:8], ids[:, 8:12], ids[:, 12:] = 7, 26, 33, 3  # road, car, bicycle, void.
    Image.fromarray(ids, mode="L").save(str(p).replace("_labelTrainIds", "_labelIds"))
    p.unlink()
  mapped = datasets.make_source("cityscapes", root, "val")[0]["label"]
  assert mapped[0].tolist() == [0] * 4 + [13] * 4 + [18] * 4 + [255] * 4


def test_enlightengan_is_unpaired_and_covers_both_folders(tmp_path):
  root = datasets.write_fake_layout("enlightengan", tmp_path, count=3)
  source = datasets.make_source("enlightengan", root, "train", seed=1)
  elements = [source[i] for i in range(len(source))]
  assert len(elements) == 4 and all(e["low"].shape == (16, 16, 3) for e in elements)
  assert all(e["high"].shape == (20, 18, 3) for e in elements)
  # Every trainB image is used once per pass.
  assert len({e["high"].tobytes() for e in elements}) == 4


def test_test_sets_accept_the_folder_itself_or_its_parent(tmp_path):
  root = datasets.write_fake_layout("lime", tmp_path, count=2)
  via_parent = datasets.make_source("lime", root, "test")
  direct = datasets.make_source("lime", root / "LIME", "test")
  assert len(via_parent) == len(direct) == 2 and set(direct[0]) == {"low"}
  with pytest.raises(ValueError, match="split"):
    datasets.make_source("lime", root, "train")


def test_errors_name_the_problem(tmp_path):
  with pytest.raises(KeyError, match="unknown dataset"):
    datasets.make_source("lol3", tmp_path)
  with pytest.raises(FileNotFoundError, match="our485"):
    datasets.make_source("lol", tmp_path, "train")
  with pytest.raises(ValueError, match="split"):
    datasets.make_source("lol", tmp_path, "validation")


def test_bad_and_unpartnered_files_are_skipped_and_listed(tmp_path):
  root = datasets.write_fake_layout("lol_v2_synthetic", tmp_path, count=3)
  low = root / "Synthetic" / "Train" / "Low"
  (low / "r0001.png").write_bytes(b"")  # Zero bytes: its pair is dropped.
  Image.new("RGB", (16, 16)).save(low / "extra.png")  # No partner.
  source = datasets.make_source("lol_v2_synthetic", root, "train")
  assert len(source) == 2
  reasons = dict(source.skipped)
  assert "empty" in reasons[os.fspath(low / "r0001.png")]
  assert reasons[os.fspath(low / "extra.png")] == "no partner image"
