"""Crash-safe Parquet partition writes, reads and content hashes for the offline store.

Replacing a folder (a partition ``<table>/date=YYYY-MM-DD/``, a quarantine day, the training set)
never leaves a moment in which it is missing (with the Linux exchange; the portable fallback below
has one, which this module's readers wait out), and a writer killed at any point (``kill -9``)
leaves nothing a reader or a ``read_parquet('data/warehouse/**/*.parquet')`` glob can trip on:

* **Staging lives outside the tables.** A writer builds the new folder in a private *slot* of the
  staging area, :func:`staging_root`: ``<data root>/.staging/`` for anything under a folder named
  ``warehouse`` or ``quarantine`` (the nearest such ancestor's parent holds ``.staging``); for a
  folder outside those areas, ``.staging`` beside the folder that contains it (``x/t/date=D`` →
  ``x/.staging``). It must be on the folder's filesystem for the swap to be one rename; when it
  is not (the area is its own mount), the next candidate on the same device is used: ``<area>/.staging``,
  then ``.staging`` inside the folder's parent. The rule needs the target path only.
* **A slot** is ``<staging>/<token>/`` guarded by ``<staging>/<token>.lock``, which its writer
  holds with ``flock`` for as long as it lives (the kernel releases it when the process dies, even
  on SIGKILL). The writer writes the files, ``fsync``s them, then swaps.
* **The swap.** On Linux, ``renameat2(staged, live, RENAME_EXCHANGE)`` (through ctypes) exchanges
  the staged and the live folder in one step: readers see the old folder or the new one, never
  none; the old one, now at the staging path, is deleted with the slot. A live folder that does not
  exist yet is created by a plain rename. Concurrent writers of one folder all succeed; the last
  exchange wins. Where ``renameat2`` or the exchange is unavailable (not Linux, an old libc, a
  filesystem without it) or ``$MLOPS_STORAGE_SWAP=rename``, the **rename-over** fallback runs: the
  writer records an *intent* in its slot (``intent`` = the live path; the staged folder is
  complete and synced), then, holding an exclusive ``flock`` on the table folder, renames the live
  folder into the slot and the staged folder in, and deletes the slot. Between its two renames the
  folder is absent on disk (a raw glob misses it); :func:`read_partition` and :func:`partition_glob`
  finding it absent take the table folder's lock shared, so they wait for a live writer, and
  complete a dead one's replacement.
  :func:`swap_method` says which primitive is used.
* **Recovery.** Every write first runs :func:`recover` on the target's parent: slots whose lock
  is free belong to dead writers and are deleted, except that a dead rename-over writer whose
  intent is recorded and whose live folder is absent is rolled forward (its staged folder renamed
  in); otherwise it is rolled back (the live folder was never touched). Folders left inside table
  folders by the previous implementation (``.<name>.tmp-*`` staging and ``.<name>.old-*`` retired
  folders) are deleted too, on write and, whenever the table folder changed, on read.

:func:`fault_point` is a test-only hook: when ``$MLOPS_FAULT_POINT`` names the point a writer
reaches, the writer SIGKILLs itself there. The points, in order of a replacement:
``staging.created`` (slot locked, staged folder empty), ``staging.partial`` (:func:`write_partition`
only: the Parquet file open without its footer), ``staging.written`` (files written, not synced),
``staging.synced``, ``swap.intent`` and ``swap.retired`` (rename-over only: intent recorded;
live folder moved into the slot, the new one not in yet), ``swap.done`` (new folder live, old one
not deleted), ``cleanup.partial`` (slot deleted, its lock file not), and ``remove.moved``
(:func:`remove_directory`: folder moved into the slot, not deleted).

Readers of a folder that may be replaced should open each file once (:func:`read_partition`
does): ``pq.read_table(path)`` opens a file twice, and a swap between the two opens pairs one
version's footer with the other's pages ("Invalid column metadata"). DuckDB's ``read_parquet``
also opens a file more than once (bind, then scan): a query reading column data while the
partition is replaced can fail ("TProtocolException: Invalid data", "Prefetch registered for
bytes outside file"; measured: ~3% of queries under continuous replacement, no wrong values
seen) and succeeds when retried; ``count(*)``, answered from the footers, never failed in 6,700
such queries. With the exchange no folder is ever missing, so no query fails with "No files found".

POSIX only (``fcntl.flock`` tells live writers from dead ones).
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import hashlib
import os
import re
import shutil
import signal
import sys
import tempfile
import time
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa

# pyarrow.compute and pyarrow.parquet (~0.1 s) are imported where used: the code location imports this module
# to build its definitions and needs neither.

if TYPE_CHECKING:  # pandas is not imported with the Dagster definitions (pyarrow converts frames itself)
    import pandas as pd

PART_FILE = "part-0.parquet"

#: Name of the staging area (see the module docstring for where it lives).
STAGING_DIR = ".staging"
#: Folders of the data root whose tables users glob; the staging area is their parent's ``.staging``.
STORE_AREAS = ("warehouse", "quarantine")
#: Environment variable naming the :func:`fault_point` at which a writer SIGKILLs itself (tests only).
FAULT_ENV = "MLOPS_FAULT_POINT"
#: Environment variable choosing the swap: ``auto`` (default: exchange where available) or ``rename``.
SWAP_ENV = "MLOPS_STORAGE_SWAP"

_STAGED = "new"  # in a slot: the folder being built
_RETIRED = "old"  # in a slot: a live folder moved out (rename-over, remove_directory)
_INTENT = "intent"  # in a slot: the live path a rename-over is replacing
_LEGACY = re.compile(r"^\..+\.(tmp|old)-[A-Za-z0-9_]+$")  # the previous implementation's leftovers
_READ_WAIT_SECONDS = 30.0  # longest a read waits for a live rename-over writer to put its folder in


def fault_point(name: str) -> None:
    """Test-only hook: SIGKILL this process here when ``$MLOPS_FAULT_POINT`` equals ``name``."""
    if os.environ.get(FAULT_ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)


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


# --- canonical layout ----------------------------------------------------------------------------


def canonical_table(table: pa.Table) -> pa.Table:
    """The table in one canonical Arrow layout, so that equal values give an equal :func:`table_hash`.

    ``table_hash`` hashes Arrow IPC bytes, which follow the buffers (chunking, a slice's unused bytes,
    the bytes under nulls, the unused bits of the validity bitmap), not only the values. Canonical:
    one chunk per column in exactly-sized buffers starting at offset 0; a validity bitmap only where
    there are nulls, its unused bits set; under a null, NaN in a float column, 0 in another fixed-width
    column, an empty string in a string column. Other types are rebuilt from their values.
    """
    if table.num_rows == 0:
        return table.schema.empty_table()
    return pa.Table.from_arrays(
        [_canonical_array(c.combine_chunks()) for c in table.columns], schema=table.schema
    )


def _validity_bitmap(arr: pa.Array) -> pa.Buffer | None:
    if arr.null_count == 0:
        return None
    valid = arr.is_valid().to_numpy(zero_copy_only=False)
    padded = np.ones(-(-len(arr) // 8) * 8, dtype=bool)
    padded[: len(arr)] = valid
    return pa.py_buffer(np.packbits(padded, bitorder="little"))


def _canonical_array(arr: pa.Array) -> pa.Array:
    import pyarrow.compute as pc

    n, typ = len(arr), arr.type
    if pa.types.is_floating(typ) or pa.types.is_integer(typ) or pa.types.is_temporal(typ):
        width = typ.bit_width // 8
        if typ.bit_width % 8 or width not in (1, 2, 4, 8):
            return pa.array(arr.to_pylist(), type=typ)
        dtype = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}[width]
        values = np.frombuffer(arr.buffers()[1], dtype=dtype, count=arr.offset + n)[arr.offset :].copy()
        if arr.null_count:
            fill = np.array(np.nan, dtype=f"f{width}").view(dtype) if pa.types.is_floating(typ) else 0
            values[~arr.is_valid().to_numpy(zero_copy_only=False)] = fill
        return pa.Array.from_buffers(typ, n, [_validity_bitmap(arr), pa.py_buffer(values)], arr.null_count)
    if pa.types.is_string(typ) or pa.types.is_binary(typ):
        filled = pc.fill_null(arr, "" if pa.types.is_string(typ) else b"") if arr.null_count else arr
        offsets = np.frombuffer(filled.buffers()[1], dtype=np.int32, count=filled.offset + n + 1)[
            filled.offset :
        ]
        data = filled.buffers()[2]
        first, last = int(offsets[0]), int(offsets[-1])
        body = data.slice(first, last - first) if data is not None else pa.py_buffer(b"")
        return pa.Array.from_buffers(
            typ,
            n,
            [_validity_bitmap(arr), pa.py_buffer(offsets - np.int32(first)), pa.py_buffer(body.to_pybytes())],
            arr.null_count,
        )
    return pa.array(arr.to_pylist(), type=typ)


def parquet_bytes(table: pa.Table) -> bytes:
    """A table as the bytes of a zstd Parquet file (for :func:`write_file_atomic`)."""
    import pyarrow.parquet as pq

    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd")
    return sink.getvalue().to_pybytes()


def frame_hash(frame: pd.DataFrame) -> str:
    """Content hash of a DataFrame (see :func:`table_hash`)."""
    return table_hash(pa.Table.from_pandas(frame, preserve_index=False))


def combine_hashes(hashes: Iterable[str]) -> str:
    digest = hashlib.sha256()
    for value in hashes:
        digest.update(value.encode())
    return digest.hexdigest()


# --- the swap primitive -------------------------------------------------------------------------

_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


def _load_renameat2():  # noqa: ANN202 - a ctypes function or None
    if not sys.platform.startswith("linux"):
        return None
    try:
        function = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):  # libc without the wrapper (glibc < 2.28)
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    function.restype = ctypes.c_int
    return function


_renameat2 = _load_renameat2()


def swap_method() -> str:
    """``"exchange"`` (Linux ``renameat2`` with ``RENAME_EXCHANGE``) or ``"rename"`` (the rename-over fallback).

    A filesystem that refuses the exchange makes that one replacement fall back to rename-over.
    """
    if _renameat2 is None or os.environ.get(SWAP_ENV, "auto") == "rename":
        return "rename"
    return "exchange"


def _exchange(a: Path, b: Path) -> None:
    if _renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code), str(a), None, str(b))


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(folder: Path) -> None:
    for current, _dirs, files in os.walk(folder, topdown=False):
        for name in files:
            _fsync_path(Path(current) / name)
        _fsync_path(Path(current))


# --- the staging area and its slots ---------------------------------------------------------------


def _absolute(path: Path | str) -> Path:
    return Path(os.path.abspath(path))


def _staging_candidates(directory: Path) -> list[Path]:
    parent = directory.parent
    for ancestor in (parent, *parent.parents):
        if ancestor.name in STORE_AREAS:
            return [ancestor.parent / STAGING_DIR, ancestor / STAGING_DIR, parent / STAGING_DIR]
    return [parent.parent / STAGING_DIR, parent / STAGING_DIR]


def _device(path: Path) -> int | None:
    for candidate in (path, path.parent):
        with suppress(OSError):
            return os.stat(candidate).st_dev
    return None


def staging_root(directory: Path | str) -> Path:
    """The staging area used to replace ``directory`` (the rule is in the module docstring)."""
    directory = _absolute(directory)
    device = _device(directory.parent)
    candidates = _staging_candidates(directory)
    for candidate in candidates:
        if _device(candidate) == device:
            return candidate
    return candidates[-1]


def _same_file(fd: int, path: Path) -> bool:
    try:
        on_disk = os.stat(path)
    except FileNotFoundError:
        return False
    held = os.fstat(fd)
    return (held.st_dev, held.st_ino) == (on_disk.st_dev, on_disk.st_ino)


class _Slot:
    """One writer's private folder in the staging area, alive while its lock file is flocked."""

    def __init__(self, root: Path) -> None:
        root.mkdir(parents=True, exist_ok=True)
        while True:
            token = uuid.uuid4().hex
            lock = root / f"{token}.lock"
            fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
            fcntl.flock(fd, fcntl.LOCK_EX)
            if _same_file(fd, lock):  # else a recovery took it for a dead writer's before we locked it
                break
            os.close(fd)
        os.write(fd, f"{os.getpid()}\n".encode())
        self.fd, self.lock, self.dir = fd, lock, root / token
        self.dir.mkdir()

    def release(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)
        fault_point("cleanup.partial")
        with suppress(FileNotFoundError):
            os.unlink(self.lock)
        os.close(self.fd)


def _read_intent(slot_dir: Path) -> Path | None:
    try:
        return Path((slot_dir / _INTENT).read_text())
    except OSError:
        return None


def _finish_dead_slot(root: Path, token: str) -> None:
    """Delete a dead writer's slot, first completing its rename-over if that left the live folder absent."""
    slot_dir = root / token
    target = _read_intent(slot_dir)
    staged = slot_dir / _STAGED
    if target is not None and staged.is_dir() and not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        with _table_lock(target.parent, shared=False), suppress(OSError):
            os.rename(staged, target)  # fails when a newer writer put its folder in meanwhile: that one stays
            _fsync_path(target.parent)
    shutil.rmtree(slot_dir, ignore_errors=True)


def _sweep_staging(root: Path) -> None:
    try:
        names = os.listdir(root)
    except (FileNotFoundError, NotADirectoryError):
        return
    for name in names:
        if name.endswith(".lock"):
            token = name[: -len(".lock")]
            lock = root / name
            try:
                fd = os.open(lock, os.O_RDONLY)  # flock needs no write access to the file
            except OSError:  # gone (its writer finished) or not ours to judge
                continue
            try:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue  # its writer is alive
                if not _same_file(fd, lock):
                    continue  # already recovered
                _finish_dead_slot(root, token)
                with suppress(FileNotFoundError):
                    os.unlink(lock)
            finally:
                os.close(fd)
        elif not (root / f"{name}.lock").exists():  # a slot outlives its lock only if its owner is done
            shutil.rmtree(root / name, ignore_errors=True)


_swept: dict[str, int] = {}  # table folder -> its mtime when its legacy leftovers were last cleaned


def _sweep_legacy(table_dir: Path) -> None:
    try:
        entries = list(os.scandir(table_dir))
    except OSError:
        return
    for entry in entries:
        if _LEGACY.match(entry.name) and entry.is_dir(follow_symlinks=False):
            shutil.rmtree(entry.path, ignore_errors=True)
    with suppress(OSError):
        _swept[str(table_dir)] = os.stat(table_dir).st_mtime_ns


def _sweep_legacy_if_changed(table_dir: Path) -> None:
    try:
        mtime = os.stat(table_dir).st_mtime_ns
    except OSError:
        return
    if _swept.get(str(table_dir)) != mtime:
        _sweep_legacy(table_dir)


def recover(table_dir: Path | str) -> None:
    """Clean up after interrupted writes of the folders in ``table_dir`` (every write calls this).

    Dead writers' slots in the staging area are deleted (a rename-over that left its live folder
    absent is completed first), and the previous implementation's ``.<name>.tmp-*`` / ``.<name>.old-*``
    folders inside ``table_dir`` are deleted. Live writers are left alone.
    """
    table_dir = _absolute(table_dir)
    probe = table_dir / "_"
    for root in dict.fromkeys([staging_root(probe), *_staging_candidates(probe)]):
        _sweep_staging(root)
    _sweep_legacy(table_dir)


@contextmanager
def _table_lock(table_dir: Path, shared: bool, wait: float | None = None) -> Iterator[bool]:
    """``flock`` on the table folder itself: rename-over writers hold it exclusively across their two
    renames, readers of an absent folder take it shared. Yields whether it was taken (``wait`` seconds)."""
    try:
        fd = os.open(table_dir, os.O_RDONLY)
    except OSError:
        yield False
        return
    try:
        mode = fcntl.LOCK_SH if shared else fcntl.LOCK_EX
        deadline = None if wait is None else time.monotonic() + wait
        while True:
            try:
                fcntl.flock(fd, mode | (fcntl.LOCK_NB if deadline is not None else 0))
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    yield False
                    return
                time.sleep(0.001)
        yield True
    finally:
        os.close(fd)  # releases the lock


def _dead_replacement_of(directory: Path) -> bool:
    """For an absent ``directory``: complete a rename-over of it whose writer died; whether one was found."""
    found = False
    for root in dict.fromkeys([staging_root(directory), *_staging_candidates(directory)]):
        try:
            names = os.listdir(root)
        except OSError:
            continue
        if any(not n.endswith(".lock") and _read_intent(root / n) == directory for n in names):
            found = True
            with suppress(OSError):  # a reader without write access cannot complete it
                _sweep_staging(root)
    return found


def _await_folder(directory: Path) -> bool:
    """Whether ``directory`` exists, after waiting out a rename-over of it (or completing a dead one's).

    A rename-over writer holds its table folder's lock between retiring the live folder and renaming
    the new one in, so an absent folder seen under the shared lock is really absent.
    """
    if directory.is_dir():
        return True
    with _table_lock(directory.parent, shared=True, wait=_READ_WAIT_SECONDS):
        if directory.is_dir():
            return True
    return _dead_replacement_of(directory) and directory.is_dir()


# --- writes -------------------------------------------------------------------------------------


def _swap_in(staged: Path, target: Path, slot: _Slot) -> None:
    """Put ``staged`` at ``target``; afterwards whatever was live is inside the slot."""
    if swap_method() == "exchange":
        while True:
            try:
                _exchange(staged, target)
                return
            except OSError as exc:
                if exc.errno in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
                    break  # this filesystem cannot exchange: rename-over
                if exc.errno != errno.ENOENT:
                    raise
            try:
                os.rename(staged, target)  # nothing live yet
                return
            except OSError as exc:
                if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                    raise  # else another writer put its folder in first: exchange with it
    _rename_over(staged, target, slot)


def _rename_over(staged: Path, target: Path, slot: _Slot) -> None:
    intent = slot.dir / _INTENT
    intent.with_suffix(".tmp").write_text(str(target))
    _fsync_path(intent.with_suffix(".tmp"))
    os.rename(intent.with_suffix(".tmp"), intent)
    _fsync_path(slot.dir)
    fault_point("swap.intent")
    retired = slot.dir / _RETIRED
    with _table_lock(target.parent, shared=False):  # readers of the absent folder wait for the lock
        while True:
            try:
                os.rename(staged, target)
                return
            except OSError as exc:
                if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                    raise
            shutil.rmtree(retired, ignore_errors=True)  # what an earlier turn of this loop retired
            try:
                os.rename(target, retired)
            except FileNotFoundError:  # another writer retired it first
                continue
            fault_point("swap.retired")


@contextmanager
def atomic_directory(directory: Path) -> Iterator[Path]:
    """Yield a staging folder; on success it replaces ``directory`` in one atomic swap.

    A reader sees the old folder or the new one, never none and never half of one (with the
    rename-over fallback, readers through this module wait out the instant between its two
    renames; see :func:`swap_method`). The staging folder lives outside the table folder
    (:func:`staging_root`) and its files are fsynced before the swap. On error the old folder is
    left untouched and the staging folder is removed. Concurrent writers of the same folder (two
    runs of one partition) all succeed; the last one to swap its folder in wins.
    """
    directory = _absolute(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    recover(directory.parent)
    slot = _Slot(staging_root(directory))
    try:
        staged = slot.dir / _STAGED
        staged.mkdir()
        fault_point("staging.created")
        yield staged
        fault_point("staging.written")
        _fsync_tree(staged)
        fault_point("staging.synced")
        _swap_in(staged, directory, slot)
        _fsync_path(directory.parent)
        fault_point("swap.done")
    finally:
        slot.release()


def remove_directory(directory: Path) -> bool:
    """Delete ``directory`` as one rename out of the table (into a staging slot), then the slot.

    Readers see the whole folder or none of it; a kill leaves only a slot that the next write
    cleans. Returns whether this call removed it (``False`` when it was absent or another writer
    removed it first, which is not an error).
    """
    directory = _absolute(directory)
    if not directory.exists():
        return False
    recover(directory.parent)
    slot = _Slot(staging_root(directory))
    try:
        try:
            os.rename(directory, slot.dir / _RETIRED)
        except FileNotFoundError:
            return False
        _fsync_path(directory.parent)
        fault_point("remove.moved")
        return True
    finally:
        slot.release()


def write_partition(table: pa.Table | pd.DataFrame, directory: Path, filename: str = PART_FILE) -> Path:
    """Replace ``directory`` with one holding ``filename`` (Parquet), atomically."""
    import pyarrow.parquet as pq

    if not isinstance(table, pa.Table):
        table = pa.Table.from_pandas(table, preserve_index=False)
    with atomic_directory(directory) as staging:
        with pq.ParquetWriter(staging / filename, table.schema, compression="zstd") as writer:
            writer.write_table(table)
            fault_point("staging.partial")
    return Path(directory) / filename


def write_file_atomic(data: bytes, path: Path, *, durable: bool = True) -> Path:
    """Write bytes to ``path`` through a temporary name, an fsync and a rename.

    ``durable=False`` skips the fsyncs: for caches whose readers check a content hash (a file lost or
    torn by a power cut is then rebuilt, not trusted); readers still see the old file or the new one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            if durable:
                os.fsync(handle.fileno())
        os.replace(tmp, path)
        if durable:
            with suppress(OSError):
                _fsync_path(path.parent)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


# --- reads --------------------------------------------------------------------------------------


def _read_file_once(path: Path) -> pa.Table:
    import pyarrow.parquet as pq

    # One open file: ``pq.read_table(path)`` opens a file twice (metadata, then data), and a swap
    # between the two opens would pair one version's footer with the other's pages.
    with pa.OSFile(str(path)) as handle:
        return pq.read_table(handle)


_READ_ATTEMPTS = 1000  # a read retries while replacements keep swapping the folder under it


def _version(directory: Path) -> tuple[int, int] | None:
    """Identity of the folder now at ``directory`` (every replacement puts a new folder there)."""
    try:
        st = os.stat(directory)
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino


def _parquet_names(directory: Path) -> tuple[tuple[int, int] | None, list[str]]:
    """The Parquet file names of one version of ``directory``; ``(None, [])`` when it is absent."""
    for _ in range(_READ_ATTEMPTS):
        if not _await_folder(directory):
            return None, []
        version = _version(directory)
        try:
            names = sorted(n for n in os.listdir(directory) if n.endswith(".parquet"))
        except FileNotFoundError:  # swapped out by a rename-over between the two calls
            continue
        if version is not None and _version(directory) == version:
            return version, names
    raise RuntimeError(f"{directory} kept changing while being listed")


def read_partition(directory: Path) -> pa.Table | None:
    """Read one partition folder; ``None`` when it has not been written.

    All files come from one version of the folder, each read through one open handle; a
    replacement swapping the folder mid-read makes the read start over.
    """
    directory = _absolute(directory)
    _sweep_legacy_if_changed(directory.parent)
    for _ in range(_READ_ATTEMPTS):
        version, names = _parquet_names(directory)
        if not names:
            return None
        try:
            tables = [_read_file_once(directory / name) for name in names]
        except FileNotFoundError:  # a replacement swapped the folder between listing and reading
            continue
        if len(names) == 1 or _version(directory) == version:
            return pa.concat_tables(tables)
    raise RuntimeError(f"{directory} kept changing while being read")


def partition_glob(table_dir: Path, days: Iterable[str]) -> list[str]:
    """Parquet file paths of the given days that exist, for DuckDB's ``read_parquet``."""
    table_dir = Path(table_dir)
    _sweep_legacy_if_changed(_absolute(table_dir))
    paths = []
    for day in days:
        part = table_dir / f"date={day}"
        paths.extend(str(part / name) for name in _parquet_names(_absolute(part))[1])
    return paths


# --- rollback of a step's replacements ----------------------------------------------------------


def _identity(path: Path) -> tuple[int, int] | None:
    """Which folder or file is now at ``path`` (every replacement puts a new one there); None when absent."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino


def _link_tree(source: Path, target: Path) -> None:
    """Recreate ``source``'s files under ``target`` as hard links (a copy where linking is impossible)."""
    for current, dirs, files in os.walk(source):
        here = target / Path(current).relative_to(source)
        for name in dirs:
            (here / name).mkdir(exist_ok=True)
        for name in files:
            try:
                os.link(Path(current) / name, here / name)
            except OSError:
                shutil.copy2(Path(current) / name, here / name)


class Rollback:
    """Keeps what a step is about to replace, to put it back if the step fails.

    :meth:`save` before replacing a folder (a partition) or a file (a manifest) keeps hard links to its
    files in a private slot of the staging area: no data is copied, so saving works on a full disk, and
    the old content survives its replacement. :meth:`wrote` after the replacement records what this step
    put there. :meth:`restore` puts every saved path this step changed back as it was (a folder that did
    not exist is removed), each with the same atomic swap as a write, except a path another writer
    replaced after this step (theirs stays). The slot goes with :meth:`close`; a killed step cannot roll
    back (its slot is swept by the next write), which is what reconciling manifests with the event log is for.
    """

    def __init__(self) -> None:
        self._slot: _Slot | None = None
        self._saved: dict[Path, tuple[str, Path | None, tuple[int, int] | None]] = {}
        self._wrote: dict[Path, tuple[int, int] | None] = {}

    def save(self, path: Path | str) -> None:
        """Keep the current content of ``path`` (once per path: the first save wins)."""
        path = _absolute(path)
        if path in self._saved:
            return
        if self._slot is None:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._slot = _Slot(staging_root(path))
        backup = self._slot.dir / str(len(self._saved))
        before = _identity(path)
        if path.is_dir():
            backup.mkdir()
            _link_tree(path, backup)
            self._saved[path] = ("dir", backup, before)
        elif path.is_file():
            try:
                os.link(path, backup)
            except OSError:
                shutil.copy2(path, backup)
            self._saved[path] = ("file", backup, before)
        else:
            self._saved[path] = ("absent", None, None)

    def wrote(self, path: Path | str) -> None:
        """Record that this step has just replaced (or removed) ``path``."""
        self._wrote[_absolute(path)] = _identity(_absolute(path))

    def changed(self) -> list[Path]:
        """Saved paths whose content this step replaced (and nobody replaced after it)."""
        out = []
        for path, (_, _, before) in self._saved.items():
            now = _identity(path)
            if now == before:
                continue
            if path in self._wrote and now != self._wrote[path]:
                continue  # another writer replaced it after this step did: theirs stays
            out.append(path)
        return out

    def restore(self) -> tuple[list[Path], list[str]]:
        """Put back every path :meth:`changed` lists; (paths restored, problems of those that could not be)."""
        restored, problems = [], []
        for path in reversed(self.changed()):
            kind, backup, _ = self._saved[path]
            try:
                if kind == "dir":
                    with atomic_directory(path) as staging:
                        _link_tree(backup, staging)
                elif kind == "file":
                    tmp = path.with_name(f".{path.name}.rollback-{uuid.uuid4().hex}")
                    os.link(backup, tmp)
                    os.replace(tmp, path)
                    with suppress(OSError):
                        _fsync_path(path.parent)
                elif path.is_dir():
                    remove_directory(path)
                else:
                    with suppress(FileNotFoundError):
                        os.unlink(path)
                restored.append(path)
            except OSError as exc:
                problems.append(f"{path}: {exc}")
        return restored, problems

    def close(self) -> None:
        if self._slot is not None:
            self._slot.release()
            self._slot = None
