"""SCL-LLE data: deterministic unpaired pools, Cityscapes layout and label mapping, the loader."""

import numpy as np
import pytest
from PIL import Image

from data_pipelines import scl_data


def _cfg(**overrides):
  cfg = scl_data.default_scl_data_config()
  cfg.crop = cfg.pool_size = 32
  cfg.pairings = 3
  cfg.pseudo_classes = 4
  for k, v in overrides.items():
    cfg[k] = v
  return cfg


@pytest.fixture(scope="module")
def embedded_source():
  return scl_data.make_source(_cfg(), seed=0)


def test_embedded_element_shapes_and_determinism(embedded_source):
  src = embedded_source
  assert len(src) == 3 * src.num_inputs == 18
  e = src[7]
  h, w = e["low"].shape[:2]
  assert e["low"].dtype == np.float32 and e["labels"].dtype == np.int32
  assert e["labels"].shape == (h, w)
  assert e["pos"].shape == (2, 32, 32, 3) and e["neg"].shape == (2, 32, 32, 3)
  assert set(np.unique(e["labels"])) == {0, 1, 2, 3}  # stand-in classes
  again = src[7]
  for k in e:
    np.testing.assert_array_equal(e[k], again[k])
  # The same input in another pairing gets its own gamma and pool draws.
  p7, p1 = src.plan(7), src.plan(1)
  assert p7["input"] == p1["input"] == 1 and (p7["gamma"], p7["pos"]) != (p1["gamma"], p1["pos"])


def test_embedded_pools_are_unpaired_and_negatives_are_exposure_errors(embedded_source):
  src = embedded_source
  for index in range(len(src)):
    p = src.plan(index)
    name = src.names[p["input"]]
    assert name not in p["pos"] and name not in p["neg"]  # unpaired with the input
    assert not set(p["pos"]) & set(p["neg"])  # and with each other (6 photos suffice)
    assert p["neg_stops"][0] <= -2.0 and p["neg_stops"][1] >= 1.5  # one under-, one over-exposed
    assert "hubble_deep_field" not in p["pos"] + p["neg"]  # too dark to be a normal exposure
    assert src.darken_gamma[0] <= p["gamma"] <= src.darken_gamma[1]
  e = src[0]
  # Darkened input; the under-exposed negative is darker and the over-exposed one brighter than
  # positives.
  assert e["neg"][0].mean() < e["pos"].mean() < e["neg"][1].mean()


def test_stand_in_white_balance_and_camera_darkening():
  from data_pipelines import embedded
  from data_pipelines import transforms

  cam = scl_data.make_source(_cfg(), seed=0)
  raw = scl_data.make_source(_cfg(stand_in_white_balance=False, stand_in_darkening="gamma"), seed=0)
  index = 2
  name = cam.names[cam.plan(index)["input"]]
  photo = embedded.load_photo(name)
  balanced = scl_data.grey_world(photo)
  means = balanced.reshape(-1, 3).mean(axis=0)
  assert np.ptp(photo.reshape(-1, 3).mean(axis=0)) > 0.05  # the photos are colour-cast...
  np.testing.assert_allclose(means, means.mean(), atol=0.01)  # ...balanced, channel means agree
  # Pools are balanced too (the same photos and exposures as the raw source, balanced first).
  assert cam.plan(index) == raw.plan(index)
  np.testing.assert_allclose(cam[index]["pos"][0].reshape(-1, 3).mean(axis=0),
                             cam[index]["pos"][0].mean(), atol=0.02)
  # 'gamma': the raw photo to the element's gamma. 'camera': the source keeps the balanced photo
  # and the transforms darken the crop with the camera model (noisy, 8 bits).
  np.testing.assert_allclose(raw[index]["low"], scl_data.darken(photo, raw.plan(index)["gamma"]),
                             atol=1e-6)
  np.testing.assert_array_equal(cam[index]["low"], balanced)
  ops = scl_data.make_train_transforms(_cfg())
  assert not any(isinstance(op, transforms.Degrade) for op in
                 scl_data.make_train_transforms(_cfg(stand_in_darkening="gamma")))
  element = cam[index]
  for op in ops:
    element = op.random_map(element, np.random.default_rng(3))
  crop = element["low"]
  assert crop.shape == (32, 32, 3) and crop.mean() < 0.6 * balanced.mean()
  np.testing.assert_array_equal(np.round(crop * 255) / 255, crop)


def test_bad_stand_in_darkening_names_the_key():
  with pytest.raises(ValueError, match="stand_in_darkening"):
    scl_data.make_source(_cfg(stand_in_darkening="night"))


def _write_png(path, array):
  path.parent.mkdir(parents=True, exist_ok=True)
  Image.fromarray(array).save(path)


def test_cityscapes_layout_label_ids_are_mapped_to_train_ids(tmp_path):
  rng = np.random.default_rng(0)
  image = rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)
  ids = np.zeros((40, 48), np.uint8)  # 0 = unlabeled -> 255
  ids[:10] = 7  # road -> 0
  ids[10:20] = 26  # car -> 13
  ids[20:30] = 33  # bicycle -> 18
  _write_png(tmp_path / "cs/leftImg8bit/train/aachen/aachen_000000_000019_leftImg8bit.png", image)
  _write_png(tmp_path / "cs/gtFine/train/aachen/aachen_000000_000019_gtFine_labelIds.png", ids)
  for i in range(3):
    _write_png(tmp_path / f"pos/{i}.png", np.full((20, 30, 3), 120 + i, np.uint8))
    _write_png(tmp_path / f"neg/{i}.png", np.full((25, 20, 3), 10 + 100 * i, np.uint8))
  cfg = _cfg(inputs="cityscapes", root=str(tmp_path / "cs"), positives_dir=str(tmp_path / "pos"),
             negatives_dir=str(tmp_path / "neg"), darken_gamma=(2.0, 2.0), pairings=1)
  src = scl_data.make_source(cfg, seed=3)
  assert len(src) == 1
  e = src[0]
  assert e["labels"].shape == (40, 48)
  np.testing.assert_array_equal(np.unique(e["labels"][:10]), [0])
  np.testing.assert_array_equal(np.unique(e["labels"][10:20]), [13])
  np.testing.assert_array_equal(np.unique(e["labels"][20:30]), [18])
  np.testing.assert_array_equal(np.unique(e["labels"][30:]), [255])
  np.testing.assert_allclose(e["low"], (image / 255.0) ** 2, atol=1e-6)  # gamma 2 darkening
  assert e["pos"].shape == (2, 32, 32, 3) and e["neg"].shape == (2, 32, 32, 3)
  assert len({round(float(x.mean()) * 255) for x in e["pos"]}) == 2  # two distinct positives
  # Train-id label files, when present, are used as they are.
  _write_png(tmp_path / "cs/gtFine/train/aachen/aachen_000000_000019_gtFine_labelTrainIds.png",
             np.full((40, 48), 5, np.uint8))
  np.testing.assert_array_equal(np.unique(scl_data.make_source(cfg, seed=3)[0]["labels"]), [5])
  with pytest.raises(ValueError, match="pool_size"):
    scl_data.make_source(_cfg(pool_size=48))


def test_loader_batches_crops_with_aligned_labels():
  loader = scl_data.make_train_loader(_cfg(), batch_size=3, seed=0, shard_index=0, shard_count=1)
  it = iter(loader)
  batch = next(it)
  assert batch["low"].shape == (3, 32, 32, 3) and batch["labels"].shape == (3, 32, 32)
  assert batch["pos"].shape == (3, 2, 32, 32, 3) and batch["neg"].shape == (3, 2, 32, 32, 3)
  assert batch["labels"].dtype == np.int32
  assert batch["labels"].min() >= 0 and batch["labels"].max() < 4
  # A restored iterator continues with exactly the same batches.
  state = it.get_state()
  expected = next(it)
  it2 = iter(scl_data.make_train_loader(_cfg(), batch_size=3, seed=0, shard_index=0, shard_count=1))
  it2.set_state(state)
  got = next(it2)
  for k in expected:
    np.testing.assert_array_equal(expected[k], got[k])


def test_pseudo_labels_follow_regions():
  image = np.zeros((60, 80, 3), np.float32)
  image[:, 40:] = [0.9, 0.9, 0.2]
  image[30:, :40] = [0.1, 0.2, 0.8]
  labels = scl_data.pseudo_labels(image, num_classes=3)
  assert labels.shape == (60, 80)
  # Three flat regions -> three classes, each region one class.
  for region in (labels[:30, :40], labels[:, 40:], labels[30:, :40]):
    assert len(np.unique(region[2:-2, 2:-2])) == 1
  assert len({labels[5, 5], labels[5, 70], labels[50, 5]}) == 3
