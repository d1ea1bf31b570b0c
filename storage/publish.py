"""The atomic publish of a lake table's partition, and the readers consumers use.

A checked staging folder gets its manifest as ``_PUBLISHING.json`` and becomes ``<table>/dt=D`` in one
step (:func:`move_into_place`); then the manifest is renamed to ``_PUBLISHED.json`` (:func:`complete`) and
``<table>/_LATEST`` moves forward (:func:`write_pointer`). A partition holding ``_PUBLISHING.json`` alone is a
publication killed after its move: :func:`recover` completes it before anything else touches the partition,
so a copy swapped out of ``dt=D`` always carries ``_PUBLISHED.json`` and is never taken for a fresh staging
copy. Consumers read the newest complete partition with :func:`read_latest`. The publish stage
(``jobs/publish.py``) decides what to publish; this module only moves and reads.

- ``dt=D`` absent (the nightly case): ``rename(staging, dt=D)``, atomic on POSIX and HDFS.
- ``dt=D`` present (a rerun): on Linux ``renameat2(RENAME_EXCHANGE)`` swaps the two folders atomically, then the
  old copy (now at the staging path) is deleted. Where the exchange is unsupported, the old folder is renamed
  aside to ``<table>/_previous/dt=D`` first; for the microseconds between the two renames ``dt=D`` is absent
  (never partial), and a crash there is repaired by the next publish (:func:`recover`), while :func:`read_latest`
  falls back to the aside copy.

Filesystems: local paths use ``os`` renames (guarantees above). Other URIs go through ``pyarrow.fs``: ``move`` is
an atomic rename on HDFS; on S3/GCS a directory move is a copy + delete (not atomic): there, consumers must go
through ``_LATEST`` via :func:`read_latest`, which is written last.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
from typing import Any

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.fs as pafs

from schemas import lake
from storage import lake_io

SUCCESS = "_SUCCESS"
MANIFEST = "_PUBLISHED.json"
# the manifest while it travels with the data, until the publication is complete
PENDING = "_PUBLISHING.json"
PREVIOUS = "_previous"
# a staging folder holding only this: the score job decided not to stage the table for the date (the reason is in
# it); publish records that and leaves the table as it is
SKIPPED = "_SKIPPED.json"
# test hook: kill this process at a named step, as a crash or an OOM-kill would (see tests/test_publish.py)
CRASH_ENV = "RECFLOW_PUBLISH_CRASH_AT"
CRASH_POINTS = (
    "after_verify",
    "before_rename",
    "after_exchange",
    "between_renames",
    "after_move",
    "before_pointer",
)


def crash_point(name: str) -> None:
    if name not in CRASH_POINTS:  # the tests kill at each listed point: an unlisted one would go untested
        raise ValueError(f"unknown crash point {name!r}")
    if os.environ.get(CRASH_ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)


# ---- the one-step move --------------------------------------------------------------------------------------
_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _exchange(a: str, b: str) -> bool:
    """Atomically swap two paths (Linux renameat2 RENAME_EXCHANGE); False where unsupported."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    errno = ctypes.get_errno()
    if errno in (22, 38, 95):  # EINVAL, ENOSYS, EOPNOTSUPP: this filesystem cannot exchange
        return False
    raise OSError(errno, os.strerror(errno), a)


def aside_path(table_path: str, partition: str) -> str:
    return f"{table_path}/{PREVIOUS}/{partition}"


def recover(fs: pafs.FileSystem, table_path: str, partition: str) -> dict[str, Any] | None:
    """Repairs a publish killed part-way: the aside copy goes back if dt=D is missing (killed between the two
    renames), and a dt=D that moved in without its ``_PUBLISHED.json`` is completed. Returns the manifest of
    the publication it completed, if any."""
    aside, final = aside_path(table_path, partition), f"{table_path}/{partition}"
    if lake_io.exists(aside, fs):
        if lake_io.exists(final, fs):
            fs.delete_dir(aside)  # the new copy made it in: the aside one is garbage
        else:
            fs.move(aside, final)
    return complete(fs, final) if lake_io.exists(final, fs) else None


def complete(fs: pafs.FileSystem, folder: str) -> dict[str, Any] | None:
    """Turns the ``_PUBLISHING.json`` that moved in with the data into ``_PUBLISHED.json`` (one rename);
    returns that manifest, or None when there was nothing to complete."""
    pending, manifest = f"{folder}/{PENDING}", f"{folder}/{MANIFEST}"
    content: dict[str, Any] | None = lake_io.read_json(pending, fs)
    if content is None:
        return None
    if lake_io.exists(manifest, fs):  # a non-atomic move (object stores) was killed half-way: it is done
        fs.delete_file(pending)
    else:
        fs.move(pending, manifest)
    return content


def move_into_place(fs: pafs.FileSystem, local: bool, staging: str, table_path: str, partition: str) -> None:
    final = f"{table_path}/{partition}"
    fs.create_dir(table_path, recursive=True)
    if not lake_io.exists(final, fs):
        crash_point("before_rename")
        if local:
            os.rename(staging, final)
        else:
            fs.move(staging, final)
        return
    if local and _exchange(staging, final):
        crash_point("after_exchange")
        shutil.rmtree(staging)  # now the old copy
        return
    aside = aside_path(table_path, partition)
    fs.create_dir(f"{table_path}/{PREVIOUS}", recursive=True)
    fs.move(final, aside)
    crash_point("between_renames")
    fs.move(staging, final)
    fs.delete_dir(aside)


# ---- the latest pointer -----------------------------------------------------------------------------------------
def read_pointer(fs: pafs.FileSystem, pointer: str) -> str | None:
    return (lake_io.read_text(pointer, fs) or "").strip() or None


def write_pointer(fs: pafs.FileSystem, pointer: str, partition: str) -> None:
    """Point ``_LATEST`` at ``partition`` unless it already names a later date (a backfill does not take it
    back); readers see the old line or the new one, never a torn one."""
    current = read_pointer(fs, pointer)
    if current is not None and current > partition:  # "dt=YYYY-MM-DD" compares by date
        return
    lake_io.write_text_atomic(pointer, f"{partition}\n", fs)


def read_manifest(fs: pafs.FileSystem, folder: str) -> dict[str, Any] | None:
    """A published partition's ``_PUBLISHED.json``, or None where it has none."""
    manifest: dict[str, Any] | None = lake_io.read_json(f"{folder}/{MANIFEST}", fs)
    return manifest


def latest_partition(root: str, name: str) -> str:
    """The path of the newest published partition of ``name`` (from ``_LATEST``)."""
    fs, _ = lake_io.filesystem(lake.table(root, name))
    partition = read_pointer(fs, lake_io.filesystem(lake.latest_pointer(root, name))[1])
    if partition is None:
        raise FileNotFoundError(f"{lake.table(root, name)} has no publication yet (no _LATEST)")
    return f"{lake.table(root, name)}/{partition}"


def read_latest(root: str, name: str = lake.RECOMMENDATIONS) -> pa.Table:
    """The newest published partition of an output table, complete (files starting with _ or . are skipped)."""
    path = latest_partition(root, name)
    fs, inner = lake_io.filesystem(path)
    if not lake_io.exists(inner, fs):  # a publish died between its two renames: read the copy set aside
        table_path, partition = inner.rsplit("/", 1)
        inner = aside_path(table_path, partition)
    return ds.dataset(inner, filesystem=fs, format="parquet").to_table()
