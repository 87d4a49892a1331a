"""Metric-test fixtures: the assets (from the cache that `scripts/test.sh` fills) and the MATLAB reference pairs."""

import json

import numpy as np
from PIL import Image
import pytest

from lowlight_jax.metrics import assets


@pytest.fixture(scope="session")
def metric_assets():
  """{name: path} of every asset in the cache (`$LOWLIGHT_ASSETS` or ~/.cache/lowlight_jax/assets).

  The test command fetches them before pytest (`scripts/test.sh` runs `python -m launch.assets fetch`); an empty
  cache is an error naming that command, never a silent download or a skip.
  """
  paths = {name: assets.asset_path(name) for name in assets.ASSETS}
  for name, path in paths.items():
    if assets.sha256_file(path) != assets.ASSETS[name].sha256:
      raise assets.AssetFetchError(f"{path} is corrupt (sha256 mismatch); re-run `{assets.FETCH_COMMAND}`")
  return paths


@pytest.fixture(scope="session")
def reference(metrics_reference_dir):
  """{'values': reference_values.json, 'dist'/'ref': {name: uint8 HWC}, 'names': [...]}."""
  values = json.loads((metrics_reference_dir / "reference_values.json").read_text())
  names = sorted(values["images"])
  load = lambda rel: np.asarray(Image.open(metrics_reference_dir / rel).convert("RGB"))
  return {
      "values": values,
      "names": names,
      "dist": {n: load(values["images"][n]["dist"]) for n in names},
      "ref": {n: load(values["images"][n]["ref"]) for n in names},
  }
