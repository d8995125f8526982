"""One run per workdir: `W/.lock`, held with `fcntl.flock` for the whole run.

Two processes writing one workdir would interleave checkpoints, stage markers and exports, and
resume could then mix the halves of two runs. `hold(workdir)` takes an exclusive, non-blocking
flock on `W/.lock` and writes the holder (pid, host, start time, command) into it; a second
process fails at once with `WorkdirBusy`, naming the holder.

The kernel drops a flock when its process dies, however it dies (kill -9 included), so a lock
file left behind by a dead run never blocks: the file's content is only a note for the message.
(flock is advisory and per open file: it works on local filesystems and on NFS v4 with lock
support.)

A run that stops before writing anything (a missing dataset, say) leaves no trace: when `hold`
created the workdir and it still holds only the lock, both are removed on the way out.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import json
import os
import socket
import sys
from collections.abc import Iterator

from jdd.errors import WorkdirBusy

LOCK_NAME = ".lock"


def lock_path(workdir: str) -> str:
  return os.path.join(workdir, LOCK_NAME)


def _holder_note() -> dict:
  return {"pid": os.getpid(), "host": socket.gethostname(),
          "started": datetime.datetime.now().isoformat(timespec="seconds"),
          "command": " ".join(sys.argv)}


def _describe(raw: bytes) -> str:
  try:
    note = json.loads(raw.decode())
    return (f"pid {note['pid']} on host {note['host']}, started {note['started']}"
            f" ({note.get('command') or 'no command line'})")
  except (ValueError, KeyError, TypeError, UnicodeDecodeError):
    return "a process that has not written its note yet"


@contextlib.contextmanager
def hold(workdir: str) -> Iterator[str]:
  """Holds `W/.lock` for the block; raises `WorkdirBusy` if a live process holds it."""
  created = not os.path.exists(workdir)
  os.makedirs(workdir, exist_ok=True)
  path = lock_path(workdir)
  fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
  try:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except OSError:
    raw = os.pread(fd, 4096, 0)
    os.close(fd)
    raise WorkdirBusy(
        f"workdir {workdir} is in use by another jdd run: {_describe(raw)}. Wait for it to "
        f"finish (or stop it), or give this run another --workdir. (The lock is {path}; the "
        "kernel releases it when that process exits.)") from None
  try:
    os.ftruncate(fd, 0)
    os.pwrite(fd, (json.dumps(_holder_note()) + "\n").encode(), 0)
    yield path
  finally:
    if created and os.listdir(workdir) == [LOCK_NAME]:
      # Nothing was written: leave no empty workdir behind (still holding the lock).
      os.unlink(path)
      with contextlib.suppress(OSError):
        os.rmdir(workdir)
    os.close(fd)   # releases the flock
