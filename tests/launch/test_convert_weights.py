"""The convert_weights CLI: a released .pth becomes a converted file that loads identically."""

import subprocess
import sys

import jax
import numpy as np
import pytest

from lowlight_jax.inference import released
from lowlight_jax.convert import weights

REPO = __import__("pathlib").Path(__file__).resolve().parents[2]


def _cli(*args):
  return subprocess.run([sys.executable, "-m", "launch.convert_weights", *args], cwd=REPO,
                        capture_output=True, text=True, timeout=300)


def test_cli_converts_legacy_pth(conformance_dir, tmp_path):
  src = conformance_dir / "weights" / "zerodce_Epoch99.pth"
  out = tmp_path / "sub" / "zero_dce.msgpack"
  res = _cli("--method", "zero_dce", "--input", str(src), "--output", str(out))
  assert res.returncode == 0, res.stderr[-2000:]
  assert "79,416 parameters" in res.stdout
  # The atomic write left no temporary file behind.
  assert not [p for p in out.parent.iterdir() if p.name.startswith(".tmp")]
  assert weights.is_converted_file(out)
  variables, meta = weights.load_params(out)
  assert meta["method"] == "zero_dce" and meta["source_name"] == "zerodce_Epoch99.pth"
  assert meta["source_sha256"] == weights.file_sha256(src)
  # Bit-identical to converting in-process from the original file.
  direct = released.load_released("zero_dce", src)
  via_file = released.load_released("zero_dce", out)
  for a, b in zip(jax.tree.leaves(direct), jax.tree.leaves(via_file)):
    np.testing.assert_array_equal(np.asarray(a).view(np.uint32), np.asarray(b).view(np.uint32))
  # scl_lle shares the architecture; sgz does not.
  released.load_released("scl_lle", out)
  with pytest.raises(ValueError, match="not 'sgz'"):
    released.load_released("sgz", out)


def test_cli_rejects_wrong_method(conformance_dir, tmp_path):
  out = tmp_path / "x.msgpack"
  src = conformance_dir / "weights" / "sgz_Epoch99.pth"
  res = _cli("--method", "retinexnet_decom", "--input", str(src), "--output", str(out))
  assert res.returncode != 0
  assert "missing keys" in res.stderr and "DecomNet.net1_conv0.weight" in res.stderr
  assert not out.exists()
