"""Fixtures for the data pipeline tests: small image folders written on the fly."""

import pathlib

import numpy as np
from PIL import Image
import pytest


def _write(path: pathlib.Path, value: float, size=(8, 8)) -> None:
  """A constant RGB image whose pixel value encodes an index (exact in PNG)."""
  path.parent.mkdir(parents=True, exist_ok=True)
  arr = np.full(size + (3,), round(value * 255), np.uint8)
  Image.fromarray(arr).save(path)


@pytest.fixture
def write_image():
  return _write


@pytest.fixture
def paired_folder(tmp_path):
  """root/{low,high}/NN.png for NN in 00..05: low value (i+1)*10/255, high (i+1)*30/255."""
  root = tmp_path / 'pairs'
  for i in range(6):
    _write(root / 'low' / f'{i:02d}.png', (i + 1) * 10 / 255)
    _write(root / 'high' / f'{i:02d}.png', (i + 1) * 30 / 255)
  return root
