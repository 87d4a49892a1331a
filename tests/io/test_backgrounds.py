"""The per-camera background store: paths, atomic save, sized load, and one-line errors naming what is wrong."""

import numpy as np
import pytest

from lowlight_jax import errors
from lowlight_jax.io import backgrounds


def test_save_then_load_round_trips_and_lists_cameras(tmp_path):
  store = tmp_path / "store"
  image = np.random.default_rng(0).random((9, 14, 3)).astype(np.float32)
  path = backgrounds.save(store, "cam03", image, info={"method": "median", "frames": 32})
  assert path == store / "cam03.png" == backgrounds.path_for(store, "cam03")
  loaded = backgrounds.load(store, "cam03", size=(9, 14))
  # Stored as a uint8 PNG (torchvision's rounding): within half a level of the input.
  assert loaded.shape == (9, 14, 3) and np.abs(loaded - image).max() <= 0.5 / 255 + 1e-6
  np.testing.assert_array_equal(loaded, backgrounds.to_uint8(image) / np.float32(255))
  assert backgrounds.load_info(store, "cam03") == {"camera": "cam03", "method": "median", "frames": 32}
  backgrounds.save(store, "site.7", np.zeros((2, 3, 3), np.uint8))  # A dotted id; no sidecar.
  assert backgrounds.cameras(store) == ["cam03", "site.7"] and backgrounds.load_info(store, "site.7") is None
  assert not [p for p in store.iterdir() if p.name.startswith(".")]  # No temporary files left behind.


def test_errors_name_the_camera_store_file_and_sizes(tmp_path):
  store = tmp_path / "store"
  assert backgrounds.cameras(store) == []
  with pytest.raises(errors.InputError, match=r"no background for camera 'cam09' in store .*store \(it is empty"):
    backgrounds.load(store, "cam09")
  backgrounds.save(store, "cam00", np.zeros((8, 12, 3), np.uint8))
  with pytest.raises(backgrounds.BackgroundStoreError, match=r"camera 'cam09' .*\(it has cam00\)"):
    backgrounds.load(store, "cam09")
  with pytest.raises(errors.InputError) as raised:
    backgrounds.load(store, "cam00", size=(9, 12))
  message = str(raised.value)
  assert str(store / "cam00.png") in message and "8x12" in message and "9x12" in message and "\n" not in message
  for bad in ("", "..", "a/b", ".hidden"):
    with pytest.raises(errors.InputError, match="cannot name a background file"):
      backgrounds.path_for(store, bad)
  (store / "cam01.png").write_bytes(b"not a png")
  with pytest.raises(errors.InputError, match=r"cam01\.png cannot be read"):
    backgrounds.load(store, "cam01")
