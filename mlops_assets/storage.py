"""Atomic Parquet partition writes, reads and content hashes for the offline store."""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

PART_FILE = "part-0.parquet"


def table_hash(table: pa.Table) -> str:
    """SHA-256 of a table's logical content: schema and values, independent of file encoding."""
    digest = hashlib.sha256()
    digest.update(str(table.schema.remove_metadata()).encode())
    for batch in table.combine_chunks().to_batches(max_chunksize=65536):
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, batch.schema) as writer:
            writer.write_batch(batch)
        digest.update(sink.getvalue().to_pybytes())
    digest.update(str(table.num_rows).encode())
    return digest.hexdigest()


def frame_hash(frame: pd.DataFrame) -> str:
    """Content hash of a DataFrame (see :func:`table_hash`)."""
    return table_hash(pa.Table.from_pandas(frame, preserve_index=False))


def combine_hashes(hashes: Iterable[str]) -> str:
    digest = hashlib.sha256()
    for value in hashes:
        digest.update(value.encode())
    return digest.hexdigest()


@contextmanager
def atomic_directory(directory: Path) -> Iterator[Path]:
    """Yield a staging folder; on success it replaces ``directory`` in one rename.

    A reader sees the old folder, the new one, or (for the instant between the two renames of a
    replacement) none, never half of one; on error the old folder is left untouched and the staging
    folder is removed. Concurrent writers of the same
    folder (two runs of one partition) all succeed; the last one to swap its folder in wins.
    """
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}.tmp-", dir=directory.parent))
    try:
        yield staging
        while True:
            try:
                os.replace(staging, directory)  # a rename onto an absent (or empty) folder
                break
            except OSError as exc:
                if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                    raise
            retired = directory.parent / f".{directory.name}.old-{uuid.uuid4().hex}"
            try:
                os.replace(directory, retired)
            except FileNotFoundError:  # another writer retired it first
                continue
            shutil.rmtree(retired, ignore_errors=True)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def write_partition(table: pa.Table | pd.DataFrame, directory: Path, filename: str = PART_FILE) -> Path:
    """Replace ``directory`` with one holding ``filename`` (Parquet), atomically."""
    if isinstance(table, pd.DataFrame):
        table = pa.Table.from_pandas(table, preserve_index=False)
    with atomic_directory(directory) as staging:
        pq.write_table(table, staging / filename, compression="zstd")
    return Path(directory) / filename


def write_file_atomic(data: bytes, path: Path) -> Path:
    """Write bytes to ``path`` through a temporary name and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def read_partition(directory: Path) -> pa.Table | None:
    """Read one partition folder; ``None`` when it has not been written."""
    directory = Path(directory)
    files = sorted(directory.glob("*.parquet")) if directory.is_dir() else []
    if not files:
        return None
    return pa.concat_tables([pq.read_table(f) for f in files])


def partition_glob(table_dir: Path, days: Iterable[str]) -> list[str]:
    """Parquet file paths of the given days that exist, for DuckDB's ``read_parquet``."""
    paths = []
    for day in days:
        part = Path(table_dir) / f"date={day}"
        paths.extend(str(p) for p in sorted(part.glob("*.parquet")))
    return paths
