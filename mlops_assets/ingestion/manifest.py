"""The manifest of an ingested source day: what was ingested, by which run, and the partition file it wrote.

``warehouse/_manifests/<table>/<day>.json`` holds the day's landing hash (the sensor's "already done"
test), the content hash of the kept rows (the same ``content_hash`` the run records in Dagster's event
log), the row count, the Dagster run that wrote it and a fingerprint of the partition's files (name ->
size and modification time). Checking the partition on disk is then cheap: only a fingerprint that
differs costs a read and a hash. No Dagster here.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import pyarrow as pa

from mlops_assets.settings import DataPaths
from mlops_assets.storage import canonical_table, read_partition, table_hash, write_file_atomic

#: A fingerprint: Parquet file name -> [size in bytes, modification time in ns].
Fingerprint = dict[str, list[int]]


@dataclass(frozen=True)
class Manifest:
    landing_hash: str
    content_hash: str
    rows: int | None = None
    run_id: str | None = None
    files: Fingerprint | None = None


def content_hash(table: pa.Table) -> str:
    """The content hash of a table as stored: the same for the table written and the table read back
    (Arrow buffers differ between the two; :func:`~mlops_assets.storage.canonical_table` evens them)."""
    return table_hash(canonical_table(table))


def partition_fingerprint(folder: Path) -> Fingerprint | None:
    """Name -> [size, mtime_ns] of the Parquet files of a partition folder; None when it is absent."""
    try:
        names = sorted(n for n in os.listdir(folder) if n.endswith(".parquet"))
    except (FileNotFoundError, NotADirectoryError):
        return None
    out: Fingerprint = {}
    for name in names:
        with contextlib.suppress(FileNotFoundError):
            st = os.stat(Path(folder) / name)
            out[name] = [st.st_size, st.st_mtime_ns]
    return out


def read_manifest(paths: DataPaths, table: str, day: str) -> Manifest | None:
    """The manifest of ``table``'s ``day``, or None when the day was never ingested (or it is unreadable)."""
    try:
        data = json.loads(paths.manifest_path(table, day).read_text())
        return Manifest(
            landing_hash=data["landing_hash"],
            content_hash=data["content_hash"],
            rows=data.get("rows"),
            run_id=data.get("run_id"),
            files=data.get("files"),
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None


def write_manifest(paths: DataPaths, table: str, day: str, manifest: Manifest) -> Path:
    return write_file_atomic(
        json.dumps(asdict(manifest), sort_keys=True).encode(), paths.manifest_path(table, day)
    )


def manifest_days(paths: DataPaths, table: str) -> list[str]:
    """Days of ``table`` that have a manifest, ascending."""
    folder = paths.manifest_path(table, "x").parent
    try:
        return sorted(
            n[: -len(".json")] for n in os.listdir(folder) if n.endswith(".json") and not n.startswith(".")
        )
    except FileNotFoundError:
        return []


def disk_problem(
    folder: Path, expected: str | None, fingerprint: Fingerprint | None
) -> tuple[str, str] | None:
    """(kind, detail) when the partition at ``folder`` is not the content recorded, else None.

    Kinds: ``partition_missing`` (no folder or no Parquet file) and ``partition_changed`` (its content
    hash differs). The files are read and hashed only when their fingerprint differs from the recorded one.
    """
    now = partition_fingerprint(folder)
    if not now:
        return "partition_missing", f"{folder} holds no Parquet file"
    if fingerprint is not None and now == fingerprint:
        return None
    if expected is None:
        return None
    table = read_partition(folder)
    found = content_hash(table) if table is not None else None
    if found != expected:
        return (
            "partition_changed",
            f"{folder}: content hash {str(found)[:12]} on disk, {expected[:12]} recorded",
        )
    return None


@contextlib.contextmanager
def ingestion_lock(paths: DataPaths, table: str) -> Iterator[None]:
    """Exclusive lock of one table's ingestion (held for a whole run): runs of a table take turns, so the
    keys already kept on other days, and each day's previous content, are read from a settled table."""
    folder = paths.manifest_path(table, "x").parent
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".ingestion.lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
