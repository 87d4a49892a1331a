"""Metric-test fixtures: the assets (fetched once per machine) and the MATLAB reference pairs."""

import json

import numpy as np
from PIL import Image
import pytest

from lowlight_jax.metrics import assets


@pytest.fixture(scope="session")
def metric_assets():
  """Fetches the assets with the function behind `python -m launch.assets fetch` (default cache)."""
  return assets.fetch()


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
