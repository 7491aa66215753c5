"""Intermediate data as Parquet files in a folder: what Ray tasks exchange on a cluster.

With ``compute.intermediates`` set (and ``engine: ray``), the Arrow batches a map sends to its tasks and the
Arrow tables its tasks return travel as Parquet files in that folder instead of through Ray's object store:
the driver writes each input batch as one file and a task reads it; the task writes each Arrow table of its
result as a file and returns only a :class:`ParquetPart` (its address, rows and columns); DuckDB appends a
part to the warehouse with ``read_parquet`` (:meth:`curation.core.warehouse.StagedTables.append`), and a
stage that needs the rows in Python reads them back with :func:`read_part`. The folder is a local path here
and an object-store URI (``s3://bucket/prefix``, ``gs://…``) on a cluster: pyarrow's filesystems write and
read both, and DuckDB reads them with its ``httpfs`` extension.

What the object store then holds is a few hundred bytes per task, so the head node's memory no longer grows
with the batch size or the number of tasks in flight; and nodes exchange data through storage that outlives
any one of them.

Files are written under a temporary name and renamed (on object storage the upload itself is atomic), and a
retried task writes files of its own (names carry a random part), so a worker killed while writing leaves
debris, never a half file that is read. Each map owns one subfolder (``<root>/<map id>.<pid>@<host>``): the driver
deletes a result's files once the stage has taken them and the subfolder when the map ends, and a run
deletes the subfolders of runs that were killed (:func:`sweep`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import socket
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

COMPRESSION = "zstd"
"""Parquet codec of the parts: written and read once each, and zstd at its default level costs little CPU
next to the stages' work while shrinking text several times (less to move between nodes)."""


@dataclass(frozen=True)
class ParquetPart:
    """One Arrow table or record batch stored as a Parquet file: enough to append it or read it back."""

    uri: str
    num_rows: int
    names: tuple[str, ...]
    batch: bool  # a RecordBatch (else a Table) before it was written

    @property
    def column_names(self) -> list[str]:
        return list(self.names)


def _filesystem(uri: str) -> tuple[pafs.FileSystem, str]:
    if "://" in uri:
        return pafs.FileSystem.from_uri(uri)
    return pafs.LocalFileSystem(), os.path.abspath(uri)


def _join(folder: str, name: str) -> str:
    return f"{folder.rstrip('/')}/{name}"


def new_folder(root: str, map_id: str) -> str:
    """The subfolder of one map under ``root``, created now, named ``<map id>.<pid>@<host>`` after the
    process that owns it (:func:`sweep` reads the name: nothing to write first, nothing to race with)."""
    folder = _join(root, f"{map_id}.{os.getpid()}@{socket.gethostname()}")
    filesystem, path = _filesystem(folder)
    filesystem.create_dir(path, recursive=True)
    return folder


def _owner_gone(name: str) -> bool:
    """Whether the process that named a map folder ``<map id>.<pid>@<host>`` is no longer running here (a
    folder of another host, or of a name this module did not make, is not ours to judge)."""
    _, _, owner = name.partition(".")
    pid, _, host = owner.partition("@")
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        return False
    return False


def write_part(data: pa.Table | pa.RecordBatch, folder: str, name: str) -> ParquetPart:
    """``data`` as ``<folder>/<name>-<random>.parquet``, complete or absent."""
    table = pa.Table.from_batches([data]) if isinstance(data, pa.RecordBatch) else data
    uri = _join(folder, f"{name}-{uuid.uuid4().hex[:12]}.parquet")
    filesystem, path = _filesystem(uri)
    if isinstance(filesystem, pafs.LocalFileSystem):
        temporary = f"{path}.tmp"
        pq.write_table(table, temporary, filesystem=filesystem, compression=COMPRESSION)
        filesystem.move(temporary, path)
    else:  # an object store's PUT is atomic: the object exists whole or not at all
        pq.write_table(table, path, filesystem=filesystem, compression=COMPRESSION)
    return ParquetPart(uri, table.num_rows, tuple(table.schema.names), isinstance(data, pa.RecordBatch))


def read_part(part: ParquetPart) -> pa.Table | pa.RecordBatch:
    """The Arrow data a part was written from (a RecordBatch if it was one)."""
    filesystem, path = _filesystem(part.uri)
    table = pq.read_table(path, filesystem=filesystem)
    if not part.batch:
        return table
    batches = table.combine_chunks().to_batches()
    return batches[0] if batches else pa.RecordBatch.from_pylist([], schema=table.schema)


def delete_part(part: ParquetPart) -> None:
    filesystem, path = _filesystem(part.uri)
    with contextlib.suppress(FileNotFoundError):
        filesystem.delete_file(path)


def delete_folder(folder: str) -> None:
    filesystem, path = _filesystem(folder)
    with contextlib.suppress(FileNotFoundError):
        filesystem.delete_dir(path)


def _fields(value: Any) -> list[tuple[Any, Any]] | None:
    """(key, item) pairs of a container whose items may be parts or Arrow data, None for anything else."""
    if isinstance(value, tuple | list):
        return list(enumerate(value))
    if dataclasses.is_dataclass(value) and not isinstance(value, type | ParquetPart):
        return [(f.name, getattr(value, f.name)) for f in dataclasses.fields(value)]
    return None


def _rebuild(value: Any, changed: dict[Any, Any]) -> Any:
    if not changed:
        return value
    if isinstance(value, tuple | list):
        items = [changed.get(i, item) for i, item in enumerate(value)]
        return type(value)(items) if isinstance(value, list) or type(value) is tuple else type(value)(*items)
    return dataclasses.replace(value, **changed)


def _replaced(value: Any, kinds: tuple[type, ...], change: Callable[[Any, Any], Any]) -> Any:
    """``value`` with each of its items of ``kinds`` — itself (key None), or an item of a tuple, list or
    dataclass (its index or field name) — replaced by ``change(key, item)``: the one walk of :func:`spill`,
    :func:`load` and :func:`owned`."""
    if isinstance(value, kinds):
        return change(None, value)
    fields = _fields(value)
    if fields is None:
        return value
    return _rebuild(value, {k: change(k, v) for k, v in fields if isinstance(v, kinds)})


def spill(value: Any, folder: str, name: str) -> Any:
    """``value`` with every Arrow table or batch in it — itself, or an item of a tuple, list or dataclass —
    written to ``folder`` and replaced by its :class:`ParquetPart`."""

    def written(key: Any, data: pa.Table | pa.RecordBatch) -> ParquetPart:
        return write_part(data, folder, name if key is None else f"{name}-{key}")

    return _replaced(value, (pa.Table, pa.RecordBatch), written)


def load(value: Any) -> Any:
    """The inverse of :func:`spill`: every part in ``value`` (at the same places) read back into Arrow."""
    return _replaced(value, (ParquetPart,), lambda _, part: read_part(part))


def _owned(data: pa.Table | pa.RecordBatch) -> pa.Table | pa.RecordBatch:
    """``data`` in memory of this process: one copy through Arrow IPC."""
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, data.schema) as writer:
        writer.write(data)
    reader = pa.ipc.open_stream(sink.getvalue())
    if isinstance(data, pa.Table):
        return reader.read_all()
    return reader.read_next_batch()


def _owned_any(item: Any) -> Any:
    if isinstance(item, pa.Table | pa.RecordBatch):
        return _owned(item)
    if isinstance(item, pa.Array):
        return _owned(pa.record_batch([item], names=["values"])).column(0)
    if isinstance(item, np.ndarray):
        return item.copy()
    return item


_BUFFERED = (pa.Table, pa.RecordBatch, pa.Array, np.ndarray)


def owned(value: Any) -> Any:
    """``value`` with every Arrow table, batch or array and numpy array in it (itself, or an item of a
    tuple, list or dataclass) copied into this
    process's memory. What ``ray.get`` returns is read in place from the object store, and an object stays
    pinned there while anything built on its buffers lives: a stage that keeps a few results (ingest gathers
    20,000 rows per insert) would otherwise fill the store and make Ray spill every new task's input to
    disk and read it back."""
    return _replaced(value, _BUFFERED, lambda _, item: _owned_any(item))


def parts_in(value: Any) -> list[ParquetPart]:
    """The parts :func:`spill` put into ``value``."""
    if isinstance(value, ParquetPart):
        return [value]
    return [v for _, v in _fields(value) or [] if isinstance(v, ParquetPart)]


def sweep(root: str | None) -> list[str]:
    """Delete the map folders under a local ``root`` left by processes of this host that are gone (a run
    killed mid-map); the deleted folders are returned. On object storage, leftovers are the job of the
    bucket's lifecycle rule (the README says which)."""
    if root is None or "://" in root or not os.path.isdir(root):
        return []
    removed = []
    for entry in sorted(os.scandir(root), key=lambda e: e.name):
        if entry.is_dir(follow_symlinks=False) and _owner_gone(entry.name):
            delete_folder(entry.path)
            removed.append(entry.path)
    return removed
