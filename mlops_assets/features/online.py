"""SQLite online store: each view's feature values per entity as of its newest stored day, swapped in atomically.

Each :func:`refresh` builds a complete new database file next to the live one and renames it
over ``<data_root>/online/online_store.db``. A reader keeps its connection open and notices a new
file by its inode, so one read sees either the old refresh or the new one, never half of one.

A read returns each view's values with a status, judged at the request's time (``now``):

* ``fresh``: the view's values are as of a feature time within the view's TTL of ``now``;
* ``expired``: they are older than the TTL: returned as null;
* ``missing``: the entity has no row in that view.
"""

from __future__ import annotations

import json
import os
import sqlite3
import tempfile
import threading
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import pyarrow as pa

from mlops_assets.features.layout import ViewLayout, layouts, select_features
from mlops_assets.settings import DataPaths
from mlops_assets.spec.model import ProjectSpec

DB_NAME = "online_store.db"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_US = datetime(1970, 1, 1, 0, 0, 0, 1, tzinfo=UTC) - _EPOCH
_CHUNK = 5000  # keys per IN (...) query, below SQLite's variable limit
FRESH, EXPIRED, MISSING = "fresh", "expired", "missing"


def online_db_path(paths: DataPaths) -> Path:
    """Where the live online database lives."""
    return paths.online / DB_NAME


def _us(ts: datetime) -> int:
    return (ts - _EPOCH) // _US


def _from_us(value: int | None) -> datetime | None:
    return None if value is None else _EPOCH + value * _US


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _status(row: tuple | None, ttl: float | None, now_us: int) -> str:
    if row is None:
        return MISSING
    if ttl is not None and now_us - row[1] > ttl * 1_000_000:
        return EXPIRED
    return FRESH


def refresh(
    views: Mapping[str, ViewLayout],
    tables: Mapping[str, tuple[datetime | None, pa.Table]],
    paths: DataPaths,
    now: datetime,
) -> dict[str, dict]:
    """Replace the online store with ``tables`` (per view: its feature time and an ``entity`` + features table)."""
    target = online_db_path(paths)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{DB_NAME}.tmp-", dir=target.parent)
    os.close(fd)
    meta: dict[str, dict] = {}
    try:
        con = sqlite3.connect(tmp)
        try:
            con.execute("PRAGMA journal_mode = OFF")
            con.execute("PRAGMA synchronous = OFF")
            con.execute(
                "CREATE TABLE _views (view TEXT PRIMARY KEY, version TEXT, ttl_seconds REAL, "
                "refreshed_at_us INTEGER, feature_time_us INTEGER, rows INTEGER, features TEXT)"
            )
            for name, layout in views.items():
                feature_time, table = tables.get(
                    name, (None, pa.table({"entity": pa.array([], pa.string())}))
                )
                names = layout.feature_names
                cols = ", ".join(_q(f) for f in names)
                con.execute(
                    f"CREATE TABLE {_q('v_' + name)} (entity TEXT PRIMARY KEY, fts INTEGER, {cols}) WITHOUT ROWID"
                )
                fts = _us(feature_time) if feature_time is not None else None
                if table.num_rows:
                    columns = [table.column("entity").to_pylist()] + [
                        table.column(f).to_pylist() for f in names
                    ]
                    rows = ((row[0], fts, *row[1:]) for row in zip(*columns, strict=True))
                    marks = ", ".join("?" * (len(names) + 2))
                    con.executemany(f"INSERT INTO {_q('v_' + name)} VALUES ({marks})", rows)
                ttl = None if layout.view.ttl is None else layout.view.ttl.total_seconds()
                con.execute(
                    "INSERT INTO _views VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (name, layout.version(), ttl, _us(now), fts, table.num_rows, json.dumps(names)),
                )
                meta[name] = {
                    "rows": table.num_rows,
                    "version": layout.version(),
                    "feature_time": feature_time.isoformat() if feature_time else None,
                }
            con.commit()
        finally:
            con.close()
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return meta


class OnlineStore:
    """Reads the online store; keeps one read-only connection and follows atomic swaps."""

    def __init__(self, paths: DataPaths, spec: ProjectSpec) -> None:
        self.path = online_db_path(paths)
        self.spec = spec
        self.layouts = layouts(spec)
        self._lock = threading.Lock()
        self._con: sqlite3.Connection | None = None
        self._inode: int | None = None
        self._meta: dict[str, tuple[float | None, int, list[str]]] = {}

    def _connection(self) -> sqlite3.Connection | None:
        try:
            inode = os.stat(self.path).st_ino
        except FileNotFoundError:
            return None
        if inode != self._inode or self._con is None:
            if self._con is not None:
                self._con.close()
            con = sqlite3.connect(f"file:{self.path}?mode=ro&immutable=1", uri=True, check_same_thread=False)
            con.execute("PRAGMA mmap_size = 268435456")  # read pages from the mapped file, no syscalls
            self._meta = {
                view: (ttl, refreshed, json.loads(feats))
                for view, ttl, refreshed, feats in con.execute(
                    "SELECT view, ttl_seconds, refreshed_at_us, features FROM _views"
                )
            }
            # if the file was swapped between stat and open, the next read sees a new inode and
            # reopens; each read uses one connection, so it sees one complete refresh
            self._con, self._inode = con, inode
        return self._con

    def views(self) -> dict[str, dict]:
        """Per view of the live refresh: ``refreshed_at`` and ``feature_time`` (UTC datetimes, None without data),
        ``rows`` and ``ttl_seconds``; empty when there is no online store yet."""
        with self._lock:
            con = self._connection()
            if con is None:
                return {}
            rows = con.execute(
                "SELECT view, ttl_seconds, refreshed_at_us, feature_time_us, rows FROM _views"
            ).fetchall()
        return {
            view: {
                "ttl_seconds": ttl,
                "refreshed_at": _from_us(refreshed),
                "feature_time": _from_us(feature_time),
                "rows": count,
            }
            for view, ttl, refreshed, feature_time, count in rows
        }

    def close(self) -> None:
        """Close the connection."""
        with self._lock:
            if self._con is not None:
                self._con.close()
            self._con = None
            self._inode = None

    def lookup(
        self, entity_id: str, wanted: dict[str, list[str]], now: datetime | None = None
    ) -> dict[str, dict]:
        """One entity: ``{view: {"status", "feature_timestamp", "refreshed_at", "values": {...}}}``."""
        return self.lookup_many([entity_id], wanted, now)[0]

    def _snapshot(
        self, entity_ids: Sequence[str], wanted: dict[str, list[str]]
    ) -> dict[str, tuple[float | None, int | None, dict[str, tuple]]]:
        """Per view: (ttl seconds, refreshed-at µs, {entity: row}), all from one refresh."""
        out: dict[str, tuple[float | None, int | None, dict[str, tuple]]] = {}
        with self._lock:
            con = self._connection()
            for view, feats in wanted.items():
                ttl, refreshed, known = self._meta.get(view, (None, None, []))
                found: dict[str, tuple] = {}
                if con is not None and view in self._meta:
                    unknown = [f for f in feats if f not in known]
                    if unknown:
                        raise KeyError(f"online store has no {unknown} in view {view!r}; refresh it")
                    cols = ", ".join(["entity", "fts", *(_q(f) for f in feats)])
                    table = _q("v_" + view)
                    if len(entity_ids) == 1:
                        row = con.execute(
                            f"SELECT {cols} FROM {table} WHERE entity = ?", (entity_ids[0],)
                        ).fetchone()
                        if row is not None:
                            found[row[0]] = row
                    else:
                        unique = list(dict.fromkeys(entity_ids))
                        for start in range(0, len(unique), _CHUNK):
                            chunk = unique[start : start + _CHUNK]
                            marks = ", ".join("?" * len(chunk))
                            rows = con.execute(f"SELECT {cols} FROM {table} WHERE entity IN ({marks})", chunk)
                            found.update({row[0]: row for row in rows.fetchall()})
                out[view] = (ttl, refreshed, found)
        return out

    def lookup_many(
        self, entity_ids: Sequence[str], wanted: dict[str, list[str]], now: datetime | None = None
    ) -> list[dict[str, dict]]:
        """Like :meth:`lookup` for many entities, all read from the same refresh."""
        now_us = _us(now or datetime.now(UTC))
        keys = [str(e) for e in entity_ids]  # stored as text: an int64 key 7 is the row "7"
        out: list[dict[str, dict]] = [{} for _ in keys]
        for view, (ttl, refreshed, found) in self._snapshot(keys, wanted).items():
            feats = wanted[view]
            refreshed_at = _from_us(refreshed)
            for slot, entity in zip(out, keys, strict=True):
                row = found.get(entity)
                status = _status(row, ttl, now_us)
                slot[view] = {
                    "status": status,
                    "feature_timestamp": None if row is None else _from_us(row[1]),
                    "refreshed_at": refreshed_at,
                    "values": dict(zip(feats, row[2:], strict=True))
                    if status == FRESH
                    else dict.fromkeys(feats),
                }
        return out

    def read_dict(
        self, entity_ids: Sequence[str], features: list[str] | None = None, now: datetime | None = None
    ) -> dict[str, list]:
        """Columns as lists (the fast path): the join key, features, ``<view>__status`` / ``__feature_timestamp``."""
        wanted = select_features(self.spec, features)
        keys = {self.layouts[v].entity_key for v in wanted}
        if len(keys) != 1:
            raise ValueError(
                f"the requested features belong to entities with different join keys {sorted(keys)}"
            )
        given = list(entity_ids)
        ids = [str(e) for e in given]  # stored as text; the key column returns the ids as given
        now_us = _us(now or datetime.now(UTC))
        columns: dict[str, list] = {keys.pop(): given}
        stamps: dict[int, datetime | None] = {}  # rows of a view mostly share a few timestamps
        for view, (ttl, _refreshed, found) in self._snapshot(ids, wanted).items():
            rows = [found.get(e) for e in ids]
            limit = None if ttl is None else now_us - ttl * 1_000_000
            statuses = [
                MISSING if row is None else EXPIRED if limit is not None and row[1] < limit else FRESH
                for row in rows
            ]
            for j, feat in enumerate(wanted[view], start=2):
                columns[feat] = [
                    row[j] if st == FRESH else None for row, st in zip(rows, statuses, strict=True)
                ]
            columns[f"{view}__status"] = statuses
            columns[f"{view}__feature_timestamp"] = [
                None if row is None else stamps.get(row[1]) or stamps.setdefault(row[1], _from_us(row[1]))
                for row in rows
            ]
        return columns

    def read(
        self, entity_ids: Sequence[str], features: list[str] | None = None, now: datetime | None = None
    ) -> pd.DataFrame:
        """:meth:`read_dict` as a DataFrame (feature timestamps as UTC datetimes)."""
        columns = self.read_dict(entity_ids, features, now)
        frame = pd.DataFrame(columns)
        for name in columns:
            if name.endswith("__feature_timestamp"):
                frame[name] = pd.Series(columns[name], dtype="datetime64[us, UTC]")
        return frame


def read(
    entity_ids: Sequence[str],
    features: list[str] | None,
    paths: DataPaths,
    spec: ProjectSpec,
    now: datetime | None = None,
) -> pd.DataFrame:
    """One-off read of the online store (opens and closes a connection)."""
    store = OnlineStore(paths, spec)
    try:
        return store.read(entity_ids, features, now)
    finally:
        store.close()
