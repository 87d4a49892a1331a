"""Shared set-up for the launch scripts: quiet logs, one error boundary, config loading from a run directory."""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # clu's writer imports TensorFlow.

import logging  # noqa: E402
import re  # noqa: E402
import sys  # noqa: E402
from typing import Callable, Sequence  # noqa: E402

from absl import app  # noqa: E402
from absl import flags  # noqa: E402

from lowlight_jax import errors  # noqa: E402

flags.DEFINE_bool("verbose", False, "Show the full traceback of an expected error (missing file, bad config key, "
                  "wrong checkpoint) instead of one line.")

#: Exit status of an expected user error (as for a usage error: the command line or its inputs need fixing).
USER_ERROR_EXIT = 2


def setup_logging() -> None:
  """Our own INFO lines (lowlight_jax, data_pipelines); libraries (Orbax, grain, jax) at WARNING."""
  from absl import logging as absl_logging
  absl_logging.set_verbosity(absl_logging.WARNING)
  for name in ("lowlight_jax", "data_pipelines", "launch"):
    logging.getLogger(name).setLevel(logging.INFO)


def _verbose(argv: Sequence[str]) -> bool:
  if flags.FLAGS.is_parsed():
    return bool(flags.FLAGS.verbose)
  return any(a in ("--verbose", "--verbose=true", "--verbose=True", "--verbose=1") for a in argv)


def fail(message: str) -> None:
  """Prints one `error:` line and exits with USER_ERROR_EXIT."""
  prog = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "lowlight"
  print(f"{prog}: error: {message}", file=sys.stderr)
  sys.exit(USER_ERROR_EXIT)


def parse_size(text: str, flag: str = "--size", *, even: bool = False) -> tuple[int, int]:
  """'640x360' (WIDTHxHEIGHT) -> (640, 360); one-line ConfigError naming `flag` otherwise."""
  try:
    width, height = (int(v) for v in text.lower().split("x"))
  except ValueError:
    raise errors.ConfigError(f"{flag} {text}: expected WIDTHxHEIGHT, e.g. 640x360") from None
  if width < 1 or height < 1:
    raise errors.ConfigError(f"{flag} {text}: width and height must be positive")
  if even and (width % 2 or height % 2):
    raise errors.ConfigError(f"{flag} {text}: width and height must be even")
  return width, height


def check_workdir(workdir: str, flag: str = "--workdir") -> None:
  """OutputError when `workdir` (or a parent of it) is an existing file: a run directory must be a folder."""
  target = os.path.abspath(workdir)
  path = target
  while True:
    if os.path.exists(path) and not os.path.isdir(path):
      where = "is a file" if path == target else f"is inside {path}, which is a file"
      raise errors.OutputError(f"{flag} {workdir} {where}; give a run directory (new, or one to resume)")
    parent = os.path.dirname(path)
    if parent == path:
      return
    path = parent


def _config_flag_error() -> str | None:
  """A `config_flags.DEFINE_config_file` flag whose file failed to load (config_flags defers that error until the
  config is first used; we report it at parse time)."""
  from ml_collections.config_flags import config_flags
  for name in list(flags.FLAGS):
    flag = flags.FLAGS[name]
    error_config = config_flags._ErrorConfig  # pylint: disable=protected-access
    if config_flags.is_config_flag(flag) and isinstance(flag.value, error_config):
      return f"--{name}: {errors.one_line(flag.value._error)}"  # pylint: disable=protected-access
  return None


def _parse_flags(argv: list[str]) -> list[str]:
  """absl flag parsing where every failure (unknown flag, bad value, missing or broken config file, unknown
  `--config.FIELD`) is one line naming the flag; `--verbose` re-raises."""
  try:
    rest = flags.FLAGS(argv)
  except Exception as e:  # Any exception while parsing the command line is caused by the command line.
    if _verbose(argv):
      raise
    if isinstance(e, flags.Error):
      lines = [line.strip() for line in str(e).splitlines() if line.strip()]
      if any(line.startswith("Traceback (most recent call last)") for line in lines):
        # config_flags folds get_config's traceback into the message: keep the flag and the final exception.
        fail(f"{lines[0]} {lines[-1]} (--verbose shows the traceback)")
      cause = e.__cause__ or e.__context__
      fail(errors.one_line(e) if isinstance(cause, errors.UserError) else f"{errors.one_line(e)} (see --helpfull)")
    if isinstance(e, errors.EXPECTED):
      fail(errors.one_line(e))
    if isinstance(e, (AttributeError, KeyError)):  # A plain config_flags override of a field that does not exist.
      overrides = [a.split("=", 1)[0] for a in argv[1:] if re.match(r"^--?\w+\.", a)]
      fail(f"unknown config field {errors.one_line(e)} in {' '.join(overrides)}")
    fail(f"parsing the command line failed: {type(e).__name__}: {errors.one_line(e)}")
  problem = _config_flag_error()
  if problem:
    if _verbose(argv):
      raise errors.ConfigError(problem)
    fail(problem)
  return rest


def run(main: Callable[[list[str]], object], argv: list[str] | None = None) -> None:
  """`absl.app.run(main)` behind the one error boundary of every CLI.

  Expected errors (`lowlight_jax.errors.EXPECTED`: our UserError family and the OS's missing-file errors), flag
  parsing failures (unknown flag, bad value, a `--config` file that is missing or whose get_config raises, an
  unknown `--config.FIELD`) and `app.UsageError` print one line naming the file, key or flag and exit 2;
  `--verbose` shows the traceback. Anything else is a bug and keeps its traceback.
  """

  def guarded(args):
    try:
      return main(args)
    except errors.EXPECTED as e:
      if flags.FLAGS.verbose:
        raise
      fail(errors.one_line(e))
    except app.UsageError as e:  # Wrong positional arguments or flag combination: one line too.
      if flags.FLAGS.verbose:
        raise
      fail(f"{errors.one_line(e)} (see --help)")

  app.run(guarded, argv=argv, flags_parser=_parse_flags)


# The run-config helpers live in the library (the analysis notebook needs them too).
from lowlight_jax.train.run_config import CONFIG_FILE, load_run_config, save_run_config  # noqa: E402,F401
