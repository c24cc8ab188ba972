"""Fault battery for the offline store: kill -9 of a real writer at every point of a partition replacement.

Each writer is a forked process that SIGKILLs itself at a named point (``$MLOPS_FAULT_POINT``, see
``mlops_assets.storage.fault_point``); no test waits on a sleep to aim a kill. After each kill the
partition must be readable and be the complete old or the complete new content, a DuckDB glob over
``<root>/warehouse/**/*.parquet`` must succeed, and the next write must recover and leave nothing
behind, with the same bytes as a clean write.
"""

from __future__ import annotations

import errno
import hashlib
import multiprocessing
import os
import signal
import subprocess
import sys
import threading
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import duckdb
import pyarrow as pa
import pytest

from mlops_assets import storage
from mlops_assets.storage import (
    FAULT_ENV,
    PART_FILE,
    STAGING_DIR,
    SWAP_ENV,
    read_partition,
    recover,
    remove_directory,
    staging_root,
    table_hash,
    write_partition,
)

DAY = "2026-01-01"
OLD = pa.table({"customer_id": [f"c{i}" for i in range(3000)], "value": list(range(3000))})
NEW = pa.table({"customer_id": [f"n{i}" for i in range(5000)], "value": [i * 2 for i in range(5000)]})
OTHER = pa.table({"customer_id": ["x1", "x2"], "sessions": [1, 2]})  # a table no writer touches
HASHES = {"old": table_hash(OLD), "new": table_hash(NEW)}
MODES = ["exchange", "rename"]

# The points a replacement passes, in order, and which content a reader must find after a kill there.
POINTS = {
    "exchange": {
        "staging.created": "old",
        "staging.partial": "old",
        "staging.written": "old",
        "staging.synced": "old",
        "swap.done": "new",
        "cleanup.partial": "new",
    },
    "rename": {
        "staging.created": "old",
        "staging.partial": "old",
        "staging.written": "old",
        "staging.synced": "old",
        "swap.intent": "old",
        "swap.retired": "new",  # absent on disk until the next read or write completes it
        "swap.done": "new",
        "cleanup.partial": "new",
    },
}
CASES = [(mode, point, expected) for mode in MODES for point, expected in POINTS[mode].items()]
FORK = multiprocessing.get_context("fork")


def _target(root: Path) -> Path:
    return root / "warehouse" / "raw_events" / f"date={DAY}"


def _tree_digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _glob_count(root: Path) -> int:
    """What a user's plain DuckDB query over the whole warehouse sees (raises on a truncated file)."""
    with duckdb.connect() as con:
        return con.sql(f"select count(*) from read_parquet('{root}/warehouse/**/*.parquet')").fetchall()[0][0]


def _hidden(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob(".*"))


def _world(root: Path, with_old: bool = True) -> Path:
    write_partition(OTHER, root / "warehouse" / "features" / "engagement" / f"date={DAY}")
    if with_old:
        write_partition(OLD, _target(root))
    return _target(root)


def _die_at(point: str, mode: str, action, *args) -> None:
    """Run ``action(*args)`` in a forked writer that kills itself at ``point``; assert it died there."""

    def child() -> None:
        os.environ[FAULT_ENV] = point
        os.environ[SWAP_ENV] = "rename" if mode == "rename" else "auto"
        action(*args)

    proc = FORK.Process(target=child)
    proc.start()
    proc.join(60)
    assert proc.exitcode == -signal.SIGKILL, f"the writer did not reach {point} (exit code {proc.exitcode})"


@pytest.fixture(scope="module")
def clean_write(tmp_path_factory) -> dict[str, str]:
    """The bytes of a clean write of NEW, for comparison after recovery."""
    root = tmp_path_factory.mktemp("clean")
    write_partition(NEW, _target(root))
    return _tree_digest(_target(root))


@pytest.fixture(params=MODES)
def mode(request, monkeypatch) -> str:
    if request.param == "exchange" and storage._renameat2 is None:
        pytest.skip("renameat2 is not available here")
    monkeypatch.setenv(SWAP_ENV, "rename" if request.param == "rename" else "auto")
    return request.param


def test_this_linux_machine_swaps_by_exchange():
    if not sys.platform.startswith("linux"):
        pytest.skip("Linux only")
    assert storage.swap_method() == "exchange"


@pytest.mark.parametrize(("mode", "point", "expected"), CASES, ids=[f"{m}-{p}" for m, p, _ in CASES])
def test_kill_during_a_replacement_loses_nothing(tmp_path, monkeypatch, clean_write, mode, point, expected):
    """kill -9 at each point of a replacement: old or new partition, readable, a clean glob, full recovery."""
    monkeypatch.setenv(SWAP_ENV, "rename" if mode == "rename" else "auto")
    root = tmp_path / "data"
    target = _world(root)
    _die_at(point, mode, write_partition, NEW, target)

    assert os.listdir(root / STAGING_DIR)  # the kill did leave a slot behind
    if (mode, point) == ("rename", "swap.retired"):
        assert not target.exists()  # the fallback's documented instant; the next read completes it
    else:
        assert target.is_dir()  # on disk, untouched by any recovery yet
    got = read_partition(target)
    assert got is not None and table_hash(got) == HASHES[expected]
    assert _glob_count(root) == len(OLD if expected == "old" else NEW) + len(OTHER)

    write_partition(NEW, target)  # the next write recovers
    assert os.listdir(root / STAGING_DIR) == []
    assert _hidden(root) == [STAGING_DIR]
    assert _tree_digest(target) == clean_write
    assert table_hash(read_partition(target)) == HASHES["new"]
    assert _glob_count(root) == len(NEW) + len(OTHER)


@pytest.mark.parametrize("point", ["staging.partial", "staging.synced", "swap.done"])
def test_kill_during_a_first_write_leaves_no_partition_or_the_new_one(tmp_path, mode, point, clean_write):
    root = tmp_path / "data"
    target = _world(root, with_old=False)
    _die_at(point, mode, write_partition, NEW, target)
    got = read_partition(target)
    if point == "swap.done":
        assert table_hash(got) == HASHES["new"]
    else:
        assert got is None and not target.exists()
    assert _glob_count(root) == (len(NEW) if got is not None else 0) + len(OTHER)
    recover(target.parent)  # what every writer runs first
    assert _hidden(root) == [STAGING_DIR] and os.listdir(root / STAGING_DIR) == []
    write_partition(NEW, target)
    assert _tree_digest(target) == clean_write


def test_a_rename_over_killed_in_its_gap_is_completed_by_the_next_write_of_the_table(tmp_path, monkeypatch):
    """The fallback's one absent instant, made permanent by a kill, ends at the next write of any day of
    the table: its recovery renames the dead writer's complete, synced folder in (roll forward)."""
    monkeypatch.setenv(SWAP_ENV, "rename")
    root = tmp_path / "data"
    target = _world(root)
    _die_at("swap.retired", "rename", write_partition, NEW, target)
    assert not target.exists()
    write_partition(OTHER, root / "warehouse" / "raw_events" / "date=2026-01-02")
    assert table_hash(read_partition(target)) == HASHES["new"]
    assert _glob_count(root) == len(NEW) + 2 * len(OTHER)
    assert os.listdir(root / STAGING_DIR) == []


def test_a_filesystem_that_refuses_the_exchange_falls_back_to_rename_over(tmp_path, monkeypatch):
    def refuse(a, b):
        raise OSError(errno.EINVAL, "exchange not supported here")

    monkeypatch.setattr(storage, "_exchange", refuse)
    monkeypatch.setattr(storage, "swap_method", lambda: "exchange")
    root = tmp_path / "data"
    target = _world(root)
    write_partition(NEW, target)
    assert table_hash(read_partition(target)) == HASHES["new"]
    assert os.listdir(root / STAGING_DIR) == [] and _hidden(root) == [STAGING_DIR]


def test_kill_while_retiring_a_quarantine_leaves_only_a_slot_the_next_write_cleans(tmp_path, mode):
    """``write_day`` retires a day's old quarantine with ``remove_directory``: a kill there loses nothing else."""
    root = tmp_path / "data"
    quarantine = root / "quarantine" / "raw_events" / f"date={DAY}"
    write_partition(OTHER, quarantine, filename="rows.parquet")
    _die_at("remove.moved", mode, remove_directory, quarantine)
    assert not quarantine.exists()
    assert os.listdir(root / STAGING_DIR)
    write_partition(OLD, _target(root))
    assert os.listdir(root / STAGING_DIR) == []
    assert _hidden(root) == [STAGING_DIR]
    assert remove_directory(quarantine) is False  # already gone: not an error


def test_the_fault_hook_reaches_a_fresh_interpreter_through_the_environment(tmp_path):
    """The hook as a user of the battery drives it: an environment variable on a new writer process."""
    root = tmp_path / "data"
    target = _world(root)
    code = (
        "import sys, pyarrow as pa; from mlops_assets.storage import write_partition; "
        "write_partition(pa.table({'customer_id': ['n'], 'value': [1]}), sys.argv[1])"
    )
    env = {**os.environ, FAULT_ENV: "staging.synced"}
    proc = subprocess.run([sys.executable, "-c", code, str(target)], env=env, timeout=120)
    assert proc.returncode == -signal.SIGKILL
    assert table_hash(read_partition(target)) == HASHES["old"]
    assert _glob_count(root) == len(OLD) + len(OTHER)


def _replace_many(target: str, writer: int, times: int, mode: str) -> None:
    os.environ[SWAP_ENV] = "rename" if mode == "rename" else "auto"
    for i in range(times):
        write_partition(OLD if (i + writer) % 2 else NEW, Path(target))


def test_a_reader_never_sees_a_missing_partition_during_many_replacements(tmp_path, mode):
    """Two writer processes replace one partition 2 x 80 times while a reader thread loops over reads.

    With the exchange the folder is never absent on disk: the reader checks the folder, opens the
    Parquet file by path (through one handle) and globs the warehouse with DuckDB, no help from this
    module. With rename-over it reads through ``read_partition``, which waits out the instant between
    the fallback's two renames.
    """
    root = tmp_path / "data"
    target = _world(root)
    writers = [FORK.Process(target=_replace_many, args=(str(target), w, 80, mode)) for w in range(2)]
    for proc in writers:
        proc.start()
    seen: list[str] = []
    errors: list[str] = []
    done = threading.Event()

    def reader() -> None:
        import pyarrow.parquet as pq

        by_hash = {h: name for name, h in HASHES.items()}
        while not done.is_set():
            try:
                if mode == "exchange":
                    if not target.is_dir():
                        errors.append("the partition folder was absent")
                    with pa.OSFile(str(target / PART_FILE)) as handle:  # one open, see storage's docstring
                        table = pq.read_table(handle)
                    if _glob_count(root) not in (len(OLD) + len(OTHER), len(NEW) + len(OTHER)):
                        errors.append("the glob saw a partial warehouse")
                else:
                    table = read_partition(target)
                seen.append(by_hash.get(table_hash(table), "other") if table is not None else "missing")
            except Exception as exc:  # noqa: BLE001 - any failure is the finding
                errors.append(repr(exc))

    thread = threading.Thread(target=reader)
    thread.start()
    for proc in writers:
        proc.join(120)
    done.set()
    thread.join(60)
    assert [proc.exitcode for proc in writers] == [0, 0]
    assert errors == []
    assert seen and set(seen) <= {"old", "new"}, sorted(set(seen))
    assert os.listdir(root / STAGING_DIR) == [] and _hidden(root) == [STAGING_DIR]


def _write_the_same_partition(target: str, writer: int, times: int, mode: str) -> list[str]:
    os.environ[SWAP_ENV] = "rename" if mode == "rename" else "auto"
    errors = []
    for _ in range(times):
        try:
            write_partition(pa.table({"writer": [writer] * 1000}), Path(target))
        except Exception as exc:  # noqa: BLE001 - any failure is the finding
            errors.append(repr(exc))
    return errors


def test_concurrent_writers_of_one_partition_all_succeed_and_the_last_swap_wins(tmp_path, mode):
    root = tmp_path / "data"
    target = _target(root)
    # spawned, not forked: a fork of a test process holding Arrow's thread pools (a pytest-xdist worker) can
    # deadlock. An executor, not multiprocessing.Pool: its exit stops the workers by a sentinel and waits for them,
    # where Pool's exit SIGTERMs them and once hung ten minutes in waitpid on a worker that never exited.
    with ProcessPoolExecutor(4, mp_context=multiprocessing.get_context("spawn")) as pool:
        jobs = [pool.submit(_write_the_same_partition, str(target), w, 40, mode) for w in range(4)]
        results = [job.result(timeout=180) for job in jobs]
    assert [e for errors in results for e in errors] == []
    assert [p.name for p in target.iterdir()] == [PART_FILE]
    assert read_partition(target).column("writer").unique().to_pylist() in [[w] for w in range(4)]
    assert os.listdir(root / STAGING_DIR) == [] and _hidden(root) == [STAGING_DIR]


def test_leftovers_of_the_previous_implementation_are_cleaned_on_read_and_write(tmp_path):
    """``.date=*.tmp-*`` staging and ``.date=*.old-*`` retired folders inside table folders, some with
    truncated Parquet, broke a plain glob; the next read or write of the table deletes them."""
    root = tmp_path / "data"
    _world(root)
    engagement = root / "warehouse" / "features" / "engagement"
    raw_events = root / "warehouse" / "raw_events"
    (engagement / ".date=2026-01-02.tmp-k3x9_q1z").mkdir()
    (engagement / ".date=2026-01-02.tmp-k3x9_q1z" / PART_FILE).write_bytes(b"PAR1 truncated")
    (engagement / f".date={DAY}.old-0f3c9a7be2d44c5b9d6e1f2a3b4c5d6e").mkdir()
    (raw_events / ".date=2026-01-03.tmp-abcdefgh").mkdir()
    (raw_events / ".date=2026-01-03.tmp-abcdefgh" / PART_FILE).write_bytes(b"PAR1 trunc")
    in_flight = raw_events / ".manifest.json.tmp-z8y7x6w5"  # a live write_file_atomic temp file: kept
    in_flight.write_bytes(b"{}")
    with pytest.raises(duckdb.Error, match="(?i)magic bytes|too small"):
        _glob_count(root)

    assert table_hash(read_partition(engagement / f"date={DAY}")) == table_hash(OTHER)  # a read cleans
    assert [p.name for p in engagement.iterdir()] == [f"date={DAY}"]
    write_partition(NEW, _target(root))  # a write cleans
    assert sorted(p.name for p in raw_events.iterdir()) == [in_flight.name, f"date={DAY}"]
    assert _glob_count(root) == len(NEW) + len(OTHER)


def test_the_staging_area_is_outside_every_table_and_derived_from_the_path_alone(tmp_path):
    root = tmp_path / "data"
    assert staging_root(root / "warehouse" / "raw_events" / f"date={DAY}") == root / STAGING_DIR
    assert staging_root(root / "warehouse" / "features" / "engagement" / f"date={DAY}") == root / STAGING_DIR
    assert staging_root(root / "warehouse" / "training_set") == root / STAGING_DIR
    assert staging_root(root / "quarantine" / "raw_events" / f"date={DAY}") == root / STAGING_DIR
    assert staging_root(tmp_path / "raw_events" / f"date={DAY}") == tmp_path / STAGING_DIR
    storage.fault_point("a point nobody named")  # without $MLOPS_FAULT_POINT the hook does nothing
