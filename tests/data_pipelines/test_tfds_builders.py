"""TFDS builders: ArrayRecord from fake folders, read back with tfds.data_source into grain."""

import os
import pathlib
import subprocess
import sys

import grain
import numpy as np
import pytest
import tensorflow_datasets as tfds

from data_pipelines import datasets
from data_pipelines import tfds_builders

REPO = pathlib.Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
  """Every builder prepared once from its fake layout: {name: (builder, raw root, data_dir)}."""
  base = tmp_path_factory.mktemp("tfds")
  out = {}
  for name, config in (("lol", None), ("lol_v2_real", None), ("lol_v2_synthetic", None),
                       ("lsrw", None), ("sice", "over"), ("enlightengan", None),
                       ("cityscapes", None), ("npe", None)):
    raw = datasets.write_fake_layout(name, base / "raw" / name, count=2)
    builder = tfds_builders.prepare(name, manual_dir=raw, data_dir=base / "data", config=config)
    out[name] = (builder, raw, base / "data")
  return out


def _by_name(source):
  return {e["name"]: e for e in (source[i] for i in range(len(source)))}


@pytest.mark.parametrize("name, splits", [
    ("lol", {"train": 2, "test": 2}),
    ("lol_v2_real", {"train": 2, "test": 2}),
    ("lol_v2_synthetic", {"train": 2, "test": 2}),
    ("lsrw", {"train": 4, "test": 4}),
    ("sice", {"train": 4, "test": 4}),
    ("enlightengan", {"train_low": 2, "train_high": 3}),
    ("cityscapes", {"train": 2, "validation": 2}),
    ("npe", {"test": 2}),
])
def test_array_records_hold_the_source_images_exactly(built, name, splits):
  builder, raw, data_dir = built[name]
  assert {k: v.num_examples for k, v in builder.info.splits.items()} == splits
  assert list(pathlib.Path(builder.data_dir).glob("*.array_record-*"))
  full_name = builder.name + (f"/{builder.builder_config.name}" if builder.builder_config else "")
  split = next(iter(splits))
  records = tfds.data_source(full_name, data_dir=data_dir, split=split)
  ds = grain.MapDataset.source(records).map(tfds_builders.ToFloat())
  got = _by_name(ds)
  assert len(got) == splits[split]
  if name == "enlightengan":
    src = datasets.make_source(name, raw, "train").a
  elif name == "sice":
    src = datasets.make_source(name, raw, "train", pool="over")
  elif name == "cityscapes":
    src = datasets.make_source(name, raw, "train")
  else:
    src = datasets.make_source(name, raw, split)
  for i, paths in enumerate(src.paths):
    key = pathlib.Path(paths[0]).relative_to(raw).with_suffix("").as_posix()
    want = src[i]
    for k, v in want.items():
      k = "image" if name == "enlightengan" else k
      assert got[key][k].dtype == v.dtype and got[key][k].shape == v.shape
      np.testing.assert_allclose(got[key][k], v, atol=1e-6)


def test_sice_configs_and_test_set_configs_are_separate_datasets(built, tmp_path):
  raw = datasets.write_fake_layout("sice", tmp_path / "sice", count=2)
  normal = tfds_builders.prepare("sice", manual_dir=raw, data_dir=tmp_path / "d", config="normal")
  assert set(normal.info.features.keys()) == {"high", "name"}
  assert normal.info.splits["train"].num_examples == 2
  raw = datasets.write_fake_layout("vv", tmp_path / "vv", count=3)
  vv = tfds_builders.prepare("vv", manual_dir=raw, data_dir=tmp_path / "d")
  assert vv.builder_config.name == "vv" and vv.info.splits["test"].num_examples == 3
  # Preparing again reuses the files (no error, same counts).
  assert tfds_builders.prepare("vv", manual_dir=raw, data_dir=tmp_path / "d").info.splits[
      "test"].num_examples == 3


def test_missing_layout_is_a_clear_error(tmp_path):
  (tmp_path / "empty").mkdir()
  with pytest.raises(FileNotFoundError, match="does not exist or is empty"):
    tfds_builders.prepare("lol", manual_dir=tmp_path / "empty", data_dir=tmp_path / "d")
  (tmp_path / "other" / "images").mkdir(parents=True)
  with pytest.raises(FileNotFoundError, match="no split found"):
    tfds_builders.prepare("lol", manual_dir=tmp_path / "other", data_dir=tmp_path / "d")
  with pytest.raises(KeyError, match="no TFDS builder"):
    tfds_builders.prepare("sid", manual_dir=tmp_path, data_dir=tmp_path / "d")


def test_builds_and_reads_without_tensorflow(tmp_path):
  code = (
      "import sys\n"
      "from data_pipelines import datasets, tfds_builders\n"
      "import tensorflow_datasets as tfds\n"
      f"raw = datasets.write_fake_layout('lol', {os.fspath(tmp_path / 'raw')!r}, count=1)\n"
      f"tfds_builders.prepare('lol', manual_dir=raw, data_dir={os.fspath(tmp_path / 'd')!r})\n"
      f"src = tfds.data_source('lowlight_lol', data_dir={os.fspath(tmp_path / 'd')!r}, "
      "split='test')\n"
      "assert src[0]['low'].shape == (16, 16, 3)\n"
      "print('tensorflow' in sys.modules)\n")
  proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                        timeout=120)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert proc.stdout.strip().splitlines()[-1] == "False"
