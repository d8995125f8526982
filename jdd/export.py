"""The distilled-set export of every family: one directory, replaced atomically, with a byte manifest.

`W/export/` is written as a whole: the files go to `W/export.new/`, the manifest is written last
(its `files` table holds every file's bytes and sha256), and the new directory then takes the
place of the old one. On Linux the two directories are exchanged in one `renameat2` call;
elsewhere the old one is renamed to `W/export.old/` first, and `recover` (run before every read
or write) finishes or undoes a swap that a kill interrupted. So a run killed at any moment
leaves either the previous complete export or the new complete one, never a mix
(tests/test_faults.py kills an exporting process at random points and checks exactly that with
`verify`). A full disk while the new export is written (ENOSPC) removes the staging directory
and raises `jdd.errors.DiskFull`, saying that the previous export is intact.

    with export.staged(workdir) as out:        # out: the staging directory
      export.save_npy(out, "images", images)
      export.link(out, "soft_labels.npy", labels_path)
      out.manifest = lambda files: {...}       # the family's fields; `files` = entries
    # on leaving the block: manifest.json written last, then the swap

Each family keeps its own manifest fields (classification: per-array shape/dtype/bytes; image-
text: the pair budget; EDGE: the caption annotation) and every manifest gains `export`: the
format name and the table of all files.

With several processes (`jdd.distributed`) process 0 alone writes the export: the others run
the same block on a scratch directory outside the workdir (nothing is linked or saved there)
and wait at a barrier until process 0 has committed it.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator

import numpy as np

from jdd import checkpoint, distributed
from jdd.errors import DiskFull, is_disk_full

FORMAT = "jdd-export/1"
MANIFEST = "manifest.json"


def export_dir(workdir: str) -> str:
  return os.path.join(workdir, "export")


def file_entries(root: str) -> dict[str, dict]:
  """{relative path: {'bytes', 'sha256'}} of every file under `root` but the manifest."""
  out = {}
  for folder, _, names in os.walk(root):
    for name in names:
      path = os.path.join(folder, name)
      rel = os.path.relpath(path, root).replace(os.sep, "/")
      if rel != MANIFEST:
        out[rel] = {"bytes": os.path.getsize(path), "sha256": checkpoint.sha256_file(path)}
  return dict(sorted(out.items()))


def npy_entry(path: str, entry: dict | None = None) -> dict:
  """Shape, dtype and bytes of a .npy file (sha256 from `entry` when already computed)."""
  arr = np.load(path, mmap_mode="r")
  digest = entry["sha256"] if entry else checkpoint.sha256_file(path)
  return {"shape": list(arr.shape), "dtype": str(arr.dtype), "array_bytes": int(arr.nbytes),
          "file_bytes": os.path.getsize(path), "sha256": digest}


def is_complete(directory: str) -> bool:
  return os.path.isfile(os.path.join(directory, MANIFEST))


def read_manifest(directory: str) -> dict:
  return checkpoint.read_json(os.path.join(directory, MANIFEST))


def verify(directory: str) -> list[str]:
  """What is wrong with an export: no manifest, a file missing, extra, or not matching its
  size or sha256 in the manifest's table. Empty when the export is complete."""
  if not is_complete(directory):
    return [f"{os.path.join(directory, MANIFEST)} is missing"]
  table = read_manifest(directory).get("export", {}).get("files", {})
  on_disk = file_entries(directory)
  problems = [f"{name}: missing" for name in sorted(set(table) - set(on_disk))]
  problems += [f"{name}: not in the manifest" for name in sorted(set(on_disk) - set(table))]
  problems += [f"{name}: {on_disk[name]} on disk, {entry} in the manifest"
               for name, entry in table.items()
               if name in on_disk and (on_disk[name]["bytes"], on_disk[name]["sha256"]) !=
               (entry["bytes"], entry["sha256"])]
  return problems


def recover(final: str) -> None:
  """Finishes or undoes a swap that a kill interrupted, and drops an unfinished staging dir."""
  if distributed.is_multiprocess():
    if distributed.is_writer():
      _recover_here(final)
    distributed.barrier(f"recovered {final}")
    return
  _recover_here(final)


def _recover_here(final: str) -> None:
  new, old = final + ".new", final + ".old"
  if not os.path.exists(final) and os.path.exists(old):
    os.rename(new if is_complete(new) else old, final)
  for leftover in (new, old):
    if os.path.exists(leftover):
      shutil.rmtree(leftover)


_RENAME_EXCHANGE = 2


def _exchange(a: str, b: str) -> bool:
  """Atomically swaps two paths (Linux renameat2); False where that is unavailable."""
  try:
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    fn = libc.renameat2
  except (OSError, AttributeError):
    return False
  at_fdcwd = -100
  rc = fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), _RENAME_EXCHANGE)
  if rc == 0:
    return True
  err = ctypes.get_errno()
  if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):
    return False
  raise OSError(err, os.strerror(err), a)


def _fsync_tree(root: str) -> None:
  for folder, _, names in os.walk(root):
    for name in names:
      with open(os.path.join(folder, name), "rb") as f:
        os.fsync(f.fileno())
    _fsync_dir(folder)


def _fsync_dir(path: str) -> None:
  fd = os.open(path, os.O_RDONLY)
  try:
    os.fsync(fd)
  finally:
    os.close(fd)


def commit(staging: str, final: str) -> None:
  """Puts the complete `staging` directory in the place of `final` (see the module docstring)."""
  _fsync_tree(staging)
  parent = os.path.dirname(os.path.abspath(final))
  if os.path.exists(final) and _exchange(staging, final):
    _fsync_dir(parent)
    shutil.rmtree(staging)   # it now holds the previous export
    return
  old = final + ".old"
  if os.path.exists(final):
    os.rename(final, old)
  os.rename(staging, final)
  _fsync_dir(parent)
  if os.path.exists(old):
    shutil.rmtree(old)


class Staging(str):
  """The staging directory's path; assign `manifest` a function (file entries -> manifest)."""
  manifest: Callable[[dict], dict] | None = None


@contextlib.contextmanager
def staged(workdir: str, name: str = "export") -> Iterator[Staging]:
  """Yields an empty staging directory; on a clean exit writes the manifest and commits it."""
  final = os.path.join(workdir, name)
  recover(final)
  if not distributed.is_writer():
    scratch = tempfile.mkdtemp(prefix="jdd-export-not-written-")
    try:
      yield Staging(scratch)
    finally:
      shutil.rmtree(scratch, ignore_errors=True)
    distributed.barrier(f"committed {final}")
    return
  out = Staging(final + ".new")
  os.makedirs(out)
  try:
    yield out
    entries = file_entries(out)
    manifest = dict(out.manifest(entries)) if out.manifest is not None else {}
    manifest["export"] = {"format": FORMAT, "files": entries,
                          "total_bytes": int(sum(e["bytes"] for e in entries.values()))}
    checkpoint.write_bytes_here(os.path.join(out, MANIFEST), (json.dumps(
        manifest, indent=2, sort_keys=True, default=checkpoint.json_default) + "\n").encode())
    commit(out, final)
  except BaseException as e:
    shutil.rmtree(out, ignore_errors=True)
    if is_disk_full(e):
      kept = (f"the previous export in {final} is intact" if is_complete(final)
              else "no earlier export existed")
      raise DiskFull(f"disk full while writing the export in {out}; it was removed and {kept}. "
                     "Free space on that disk and rerun the same command (finished stages are "
                     "kept, so only the export is redone).", out) from e
    raise
  distributed.barrier(f"committed {final}")


def save_npy(directory: str, name: str, array) -> str:
  path = os.path.join(directory, name if name.endswith(".npy") else f"{name}.npy")
  np.save(path, np.asarray(array), allow_pickle=False)
  return path


def save_json(directory: str, name: str, obj) -> str:
  path = os.path.join(directory, name)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w") as f:
    f.write(json.dumps(obj, indent=2, sort_keys=True, default=checkpoint.json_default) + "\n")
  return path


def link(directory: str, name: str, source: str) -> str:
  """Places an existing file in the export: a hard link where possible (no copy of large soft
  labels), else a copy. Stage outputs are written once and never modified, so sharing the
  inode is safe."""
  path = os.path.join(directory, name)
  if not distributed.is_writer():
    return path   # process 0 writes the export; a scratch copy would be a waste
  os.makedirs(os.path.dirname(path), exist_ok=True)
  try:
    os.link(source, path)
  except OSError:
    shutil.copyfile(source, path)
  return path
