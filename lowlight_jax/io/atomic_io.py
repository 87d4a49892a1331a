"""Atomic file writes: readers see the old file or the complete new one, never a half-written file.

Every writer of run artefacts (configs, metrics, reports, manifests, PNGs) goes through
`write_file_atomic`: the content goes to a uniquely named temporary file in the destination folder
(same filesystem), is flushed and fsync'ed, gets the permissions a plain `open()` would give (mkstemp
creates 0600 files), and is renamed over the destination with `os.replace`, which is atomic on POSIX
and Windows. On any error the temporary file is removed and the old destination is untouched.
Standard library only, so grain workers and CLIs can use it without importing jax.
"""

from __future__ import annotations

import json
import os
import pathlib
import tempfile
from typing import IO, Any, Callable

PathLike = str | os.PathLike


def write_file_atomic(path: PathLike, write: Callable[[IO], Any], *, binary: bool = True) -> None:
  """Calls `write(f)` on a temporary file beside `path`, then renames it over `path`.

  Missing parent folders are created.
  """
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f'.{path.name}.', suffix='.tmp')
  try:
    text = {} if binary else {'encoding': 'utf-8', 'newline': ''}  # Bytes as given, on every OS.
    with os.fdopen(fd, 'wb' if binary else 'w', **text) as f:
      write(f)
      f.flush()
      os.fsync(f.fileno())
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.unlink(tmp)
    raise


def write_text_atomic(path: PathLike, text: str) -> None:
  write_file_atomic(path, lambda f: f.write(text), binary=False)


def write_json_atomic(path: PathLike, obj: Any, *, indent: int = 2, allow_nan: bool = True) -> None:
  write_text_atomic(path, json.dumps(obj, indent=indent, allow_nan=allow_nan) + '\n')
