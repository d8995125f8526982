"""The errors a user can act on, and the exit status the command line gives each.

A run stops for two kinds of reasons that are not bugs, and the user should see one clear
message for each instead of a traceback (`python -m jdd.main --debug` or JDD_DEBUG=1 still
shows the traceback):

    status 2   the input cannot work: a config field, a variant, a missing dataset or weights
               folder, a workdir that another run holds (`ConfigError`, `WorkdirBusy`,
               `jdd.data.DatasetNotFoundError`, ...)
    status 1   the machine failed the run: the disk filled up (`DiskFull`), no checkpoint of a
               stage can be restored (`CheckpointError`). What was complete before stays intact,
               and the same command resumes once the cause is fixed.

`ConfigError` is a ValueError and `DiskFull` an OSError (errno ENOSPC), so code that catches
the builtin kinds keeps working.
"""

from __future__ import annotations

import contextlib
import errno
import os
import sys


class JddError(Exception):
  """An error whose message is the whole story (printed without a traceback)."""
  exit_status = 1


class ConfigError(JddError, ValueError):
  """A config (or command-line) value that cannot work; the message names the field, the
  value and what would be valid."""
  exit_status = 2

  @classmethod
  def field(cls, path: str, value, valid: str, why: str = "") -> "ConfigError":
    """`path=value: why; valid: valid` (the one format every field check uses)."""
    return cls(f"{path}={value!r}: {why + '; ' if why else ''}valid: {valid}")


class MissingFile(ConfigError, FileNotFoundError):
  """A file or folder the config names is not there (a FileNotFoundError too)."""


class WorkdirBusy(JddError):
  """Another live process holds the workdir's lock."""
  exit_status = 2


class CheckpointError(JddError):
  """No checkpoint of a stage can be restored; the message names the files."""


class DiskFull(JddError, OSError):
  """ENOSPC while writing; the message says what stayed intact."""

  def __init__(self, message: str, filename: str | None = None):
    OSError.__init__(self, errno.ENOSPC, message, filename)
    self.message = message

  def __str__(self) -> str:
    return self.message


def is_disk_full(exc: BaseException) -> bool:
  """True when `exc` (or what caused it) is ENOSPC: an OSError with that errno, or the
  message of a library that wraps it (Orbax and TensorStore report 'No space left on device'
  inside a ValueError)."""
  seen = set()
  while exc is not None and id(exc) not in seen:
    seen.add(id(exc))
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
      return True
    text = str(exc)
    if "No space left on device" in text or "os_error_code='28'" in text:
      return True
    exc = exc.__cause__ or exc.__context__
  return False


def exit_status(exc: BaseException) -> int | None:
  """The command line's exit status for `exc`; None for a bug (shown with its traceback)."""
  from jdd.data.classification import DatasetNotFoundError
  if isinstance(exc, JddError):
    return exc.exit_status
  if isinstance(exc, DatasetNotFoundError):
    return 2
  if is_disk_full(exc):
    return 1
  return None


def debug_requested(argv=None) -> bool:
  """`--debug` on the command line (looked up by hand: it may be the flags that failed) or
  JDD_DEBUG set to anything but '' / '0'."""
  if os.environ.get("JDD_DEBUG", "") not in ("", "0"):
    return True
  return any(a in ("--debug", "--debug=true", "--debug=True", "--debug=1")
             for a in (argv if argv is not None else sys.argv))


def exit_with(message: str, status: int):
  sys.stdout.flush()
  sys.stderr.write(f"jdd: error: {message}\n")
  sys.stderr.flush()
  sys.exit(status)


@contextlib.contextmanager
def reported(debug: bool = False):
  """Turns the errors a user can act on into one message and an exit status (see the module
  docstring); a bug keeps its traceback, and `debug` keeps every traceback."""
  try:
    yield
  except KeyboardInterrupt:
    if debug or debug_requested():
      raise
    exit_with("interrupted; the same command resumes from the last checkpoint", 130)
  except Exception as e:
    status = exit_status(e)
    if status is None or debug or debug_requested():
      raise
    hint = "" if status == 2 else " (--debug shows the traceback)"
    exit_with(f"{e}{hint}", status)
