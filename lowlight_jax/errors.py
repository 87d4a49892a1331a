"""Errors that are the user's to fix (a missing file, a bad config key, a checkpoint that does not fit).

Every CLI catches these at one boundary (`launch._common.run`), prints one line naming the file, key or flag and
exits 2; `--verbose` shows the traceback instead. Library code raises the most specific subclass; anything else
that escapes a CLI is a bug and keeps its traceback.
"""

from __future__ import annotations


class UserError(Exception):
  """Base of expected user errors; the message names the file, key or flag and says what to do."""


class ConfigError(UserError, ValueError):
  """A config file, field, argument or value that cannot be used."""


class InputError(UserError, ValueError):
  """An input file or folder that cannot be used (unreadable, too small, colliding outputs, ...)."""


class OutputError(UserError, ValueError):
  """An output location that would lose data (inside the input, not empty, a file where a folder is needed)."""


class CheckpointError(UserError, ValueError):
  """A run directory or checkpoint that does not fit the config it is restored with."""


class WeightsError(UserError, ValueError):
  """A weights file whose contents do not fit the model it is loaded into."""


#: What the CLI boundary reports as one line: our own errors and the OS's file errors.
EXPECTED: tuple[type[BaseException], ...] = (UserError, FileNotFoundError, NotADirectoryError, IsADirectoryError,
                                             PermissionError, FileExistsError)


def one_line(error: BaseException) -> str:
  """The error as one line: its message with newlines folded (a FileNotFoundError keeps its file name)."""
  text = str(error) or type(error).__name__
  return " ".join(part.strip() for part in text.splitlines() if part.strip())
