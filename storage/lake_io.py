"""Small pyarrow helpers for the model stage: read a lake partition, write one atomically, read/write JSON.

The model stage runs as one Python process (no Spark), so it reads Parquet with pyarrow. Lake roots may be local
paths or URIs pyarrow understands (file://, s3://, hdfs://, gs://); writes go to a temporary name first and are
moved into place, so a reader never sees half a file.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Mapping
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from schemas import lake


def filesystem(uri: str) -> tuple[pafs.FileSystem, str]:
    """The pyarrow filesystem and in-filesystem path of a lake path or URI: a local path (or ``file://``) made
    absolute; Hadoop's ``s3a://`` read as pyarrow's ``s3://``."""
    if "://" not in uri or uri.startswith("file://"):
        return pafs.LocalFileSystem(), os.path.abspath(uri.removeprefix("file://"))
    if uri.startswith("s3a://"):
        uri = "s3://" + uri[len("s3a://") :]
    return pafs.FileSystem.from_uri(uri)


def is_local(fs: pafs.FileSystem) -> bool:
    """Whether ``fs`` is this machine's own filesystem (where ``os`` renames and fsync apply)."""
    return isinstance(fs, pafs.LocalFileSystem)


def exists(uri: str, fs: pafs.FileSystem | None = None) -> bool:
    """Whether a lake path or URI exists; with ``fs``, ``uri`` is a path inside that filesystem."""
    fs, path = filesystem(uri) if fs is None else (fs, uri)
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def read_partition(
    root: str, name: str, date: Any, columns: list[str] | None = None, schema: pa.Schema | None = None
) -> pa.Table:
    """One ``dt=`` partition of a lake table (all its part files); FileNotFoundError naming it if absent."""
    uri = lake.partition(root, name, date)
    fs, path = filesystem(uri)
    if not exists(path, fs):
        raise FileNotFoundError(f"{uri} does not exist (has the stage that writes {name} run for {date}?)")
    table = pq.read_table(path, filesystem=fs, columns=columns, schema=schema, partitioning=None)
    return table


def count_rows(uri: str) -> int:
    """Rows of the Parquet files under a path (a partition folder or one file), from their footers: no data read,
    no Spark job."""
    import pyarrow.dataset as pads

    fs, path = filesystem(uri)
    return int(pads.dataset(path, filesystem=fs, format="parquet").count_rows())


def list_partitions(root: str, name: str) -> list[str]:
    """The ``YYYY-MM-DD`` dates that have a partition of the table, oldest first."""
    fs, path = filesystem(lake.table(root, name))
    if not exists(path, fs):
        return []
    infos = fs.get_file_info(pafs.FileSelector(path, recursive=False))
    return sorted(
        i.base_name[3:] for i in infos if i.type == pafs.FileType.Directory and i.base_name.startswith("dt=")
    )


def write_partition(table: pa.Table, root: str, name: str, date: Any, schema: pa.Schema) -> str:
    """Replace ``dt=date`` of a table by one Parquet file, checked against ``schema`` (idempotent reruns)."""
    table = table.select(schema.names).cast(schema)
    uri = lake.partition(root, name, date)
    fs, path = filesystem(uri)
    fs.create_dir(path, recursive=True)
    for info in fs.get_file_info(pafs.FileSelector(path, recursive=False)):
        if info.type == pafs.FileType.File and info.base_name != "part-0.parquet":
            fs.delete_file(info.path)  # a rerun replaces exactly this partition
    temp = f"{path}/.part-0.{uuid.uuid4().hex}.tmp"
    pq.write_table(table, temp, filesystem=fs)
    fs.move(temp, f"{path}/part-0.parquet")
    return uri


def replace_folder(uri: str, files: Mapping[str, bytes]) -> None:
    """Replace a folder by one holding exactly ``files``: they are written into a hidden sibling that is then
    renamed into place, so a reader sees the old files or the new ones (on a local disk the gap between the two
    renames is microseconds; no reader ever sees a partly written file)."""
    fs, path = filesystem(uri)
    parent, name = path.rsplit("/", 1)
    staged, old = f"{parent}/.{name}.tmp-{os.getpid()}", f"{parent}/.{name}.old-{os.getpid()}"
    for leftover in (staged, old):
        if exists(leftover, fs):
            fs.delete_dir(leftover)
    fs.create_dir(staged, recursive=True)
    for file_name, data in files.items():
        with fs.open_output_stream(f"{staged}/{file_name}", compression=None) as out:
            out.write(data)
    if exists(path, fs):
        fs.move(path, old)
    fs.move(staged, path)
    if exists(old, fs):
        fs.delete_dir(old)


def write_text_atomic(uri: str, text: str, fs: pafs.FileSystem | None = None) -> None:
    """Write a small text file via a temporary sibling and a rename (os.replace semantics on local disks)."""
    write_bytes_atomic(uri, text.encode("utf-8"), fs)


def write_bytes_atomic(uri: str, data: bytes, fs: pafs.FileSystem | None = None) -> None:
    """Readers see the old file or the new one, never half; with ``fs``, ``uri`` is a path inside it."""
    fs, path = filesystem(uri) if fs is None else (fs, uri)
    parent = path.rsplit("/", 1)[0]
    fs.create_dir(parent, recursive=True)
    temp = f"{parent}/.{path.rsplit('/', 1)[1]}.{uuid.uuid4().hex}.tmp"
    with fs.open_output_stream(temp, compression=None) as out:
        out.write(data)
    fs.move(temp, path)


def read_bytes(uri: str) -> bytes:
    fs, path = filesystem(uri)
    with fs.open_input_stream(path, compression=None) as stream:
        return bytes(stream.read())


def read_text(uri: str, fs: pafs.FileSystem | None = None) -> str | None:
    """A small text file's content, or None where it does not exist; with ``fs``, ``uri`` is a path in it."""
    fs, path = filesystem(uri) if fs is None else (fs, uri)
    if not exists(path, fs):
        return None
    with fs.open_input_stream(path, compression=None) as stream:
        return stream.read().decode("utf-8")


def append_text(uri: str, line: str) -> None:
    """Append a line (read + rewrite atomically: object stores have no append)."""
    write_text_atomic(uri, (read_text(uri) or "") + line.rstrip("\n") + "\n")


def read_json(uri: str, fs: pafs.FileSystem | None = None) -> Any | None:
    text = read_text(uri, fs)
    return None if text is None else json.loads(text)
