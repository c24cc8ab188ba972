"""Running window state of an event view: per window length, each entity's fold of the tiles inside it.

A ``w``-day window read at feature day ``q`` covers the tiles of days ``q-w .. q-1``
(:mod:`.aggregate`). Read from the tiles, its cost grows with ``w``: a 365-day window reads every tile
of a year. The **window state** as of day H holds, per entity with a tile in ``H-w+1 .. H``, one row
of the view's tile schema that folds those tiles, so a read at ``q = H+1`` reads one row per entity,
whatever the window. Advancing it to H+1 adds the tiles of H+1 and takes out those of H+1-w:

* counts and exact sums subtract (double-double; a sum with no record left is exactly 0);
* the last record and the latest value stay the newest tile's, and are cleared when the measure has no
  record left in the window (the newest tile with a record is then the one that left);
* a minimum or maximum keeps, per entity, the tile values that can still become the window's extreme
  (a monotonic queue: a value is dropped once a later one is at least as extreme, or its day leaves);
* the first record keeps every tile's first time in the window;
* a distinct count keeps each value with the last day it was seen; the value leaves with that day.

Those per-entity lists are the state's *queues* (rows ``k, d, v``: entity, tile day, value). Only the
parts the window's own features read are kept; the others are null. An entity leaves the state with its
last tile in the window. The state folder holds one Parquet file per table and ``state.json`` (the day,
the view's version, each file's content hash, the folded tiles' hashes); a file that does not match it
makes the state invalid, and a read then uses the tiles. No Dagster here.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from mlops_assets.features.exact import dd_add, dd_sub
from mlops_assets.features.layout import DAY_COLUMN, ViewLayout, day_index, day_text
from mlops_assets.features.pit import duckdb_cursor
from mlops_assets.ingestion.schema import UTC_TS
from mlops_assets.storage import canonical_table, parquet_bytes, table_hash, write_file_atomic

TILES = "__tiles"  # per entity: how many of its tiles are inside the window
META = "state.json"
MAIN = "main"

#: Queue parts: the reduction over a queue; how a day's values meet its entries (a join) and which met entries
#: stay (a max keeps the values above the new one: the others can never be the maximum again).
_QUEUES = {
    "max": ("max(v)", "n.k = a.k", "a.v > n.v"),
    "min": ("min(v)", "n.k = a.k", "a.v < n.v"),
    "first": ("arg_min(v, d)", None, None),
    "distinct": ("list_sort(list(v))", "n.k = a.k AND n.v = a.v", "FALSE"),
}


def _tile_column(measure, part: str) -> str:
    return measure.col("first_ts") if part == "first" else measure.col(part)


def _queue_type(part: str) -> pa.DataType:
    if part == "first":
        return UTC_TS
    return pa.string() if part == "distinct" else pa.float64()


def main_schema(layout: ViewLayout) -> pa.Schema:
    return layout.schema.append(pa.field(TILES, pa.int64()))


@dataclass(frozen=True)
class WindowState:
    """The fold of one view's tiles of days ``day-window+1 .. day`` (day indexes since 1970-01-01)."""

    window: int
    day: int
    main: pa.Table  # one row per entity with a tile in the window: the tile schema plus TILES
    queues: dict[str, pa.Table]  # "m<i>_<part>" -> rows (k, d, v)


def queue_names(layout: ViewLayout, window: int) -> dict[str, tuple]:
    """name -> (measure, part) of every queue the window's features need."""
    kept = layout.window_parts(window)
    out = {}
    for m in layout.measures:
        for part in kept.get(m.index, ()):
            if part in _QUEUES:
                out[f"{m.prefix}_{part}"] = (m, part)
    return out


def _queue_schema(layout: ViewLayout, part: str) -> pa.Schema:
    return pa.schema([("k", layout.entity_type), ("d", pa.int32()), ("v", _queue_type(part))])


def empty(layout: ViewLayout, window: int, day: int) -> WindowState:
    queues = {
        name: _queue_schema(layout, part).empty_table()
        for name, (_, part) in queue_names(layout, window).items()
    }
    return WindowState(window, day, main_schema(layout).empty_table(), queues)


def _rows(keys: pa.Array, table: pa.Table, key: str) -> np.ndarray:
    """For each key, its row in ``table`` (-1 when absent); the table's keys are unique."""
    if table.num_rows == 0:
        return np.full(len(keys), -1, dtype=np.int64)
    found = pc.index_in(keys, value_set=table.column(key).combine_chunks())
    return pc.fill_null(found, -1).to_numpy(zero_copy_only=False).astype(np.int64)


def _numbers(table: pa.Table, name: str, rows: np.ndarray, dtype) -> np.ndarray:
    out = np.zeros(len(rows), dtype=dtype)
    present = rows >= 0
    if present.any():
        values = table.column(name).fill_null(0).to_numpy(zero_copy_only=False).astype(dtype)
        out[present] = values[rows[present]]
    return out


def _take(table: pa.Table, name: str, rows: np.ndarray) -> pa.Array:
    column = table.column(name).combine_chunks()
    present = rows >= 0
    if not present.any():
        return pa.nulls(len(rows), column.type)
    taken = column.take(pa.array(np.where(present, rows, 0)))
    return pc.if_else(pa.array(present), taken, pa.nulls(len(rows), column.type))


def _incoming(layout: ViewLayout, tiles: pa.Table, measure, part: str) -> pa.Table:
    """The (k, v) pairs a day's tiles push on a queue (non-null values; a distinct list unnested)."""
    keys = tiles.column(layout.entity_key).combine_chunks()
    values = tiles.column(_tile_column(measure, part)).combine_chunks()
    if part == "distinct":
        parents = pc.list_parent_indices(values)
        return pa.table({"k": keys.take(parents), "v": pc.list_flatten(values)})
    valid = pc.is_valid(values)
    return pa.table({"k": keys.filter(valid), "v": values.filter(valid)})


def advance(layout: ViewLayout, state: WindowState, new: pa.Table, old: pa.Table) -> WindowState:
    """The state one day later: ``new`` are the tiles of day ``state.day + 1``, ``old`` those of the day
    that leaves the window (``state.day + 1 - window``; empty when it was never folded in)."""
    schema = main_schema(layout)
    new = new.select(layout.schema.names).cast(layout.schema)
    old = old.select(layout.schema.names).cast(layout.schema)
    day, key, s = state.day + 1, layout.entity_key, state.main
    expire = day - state.window  # queue entries of this day or earlier leave
    both = pa.chunked_array(s.column(key).chunks + new.column(key).chunks, type=layout.entity_type)
    keys = pc.unique(both.combine_chunks())
    keys = keys.take(pc.sort_indices(keys))
    ps, pn, po = _rows(keys, s, key), _rows(keys, new, key), _rows(keys, old, key)
    cols: dict[str, pa.Array] = {
        key: keys,
        DAY_COLUMN: pa.array(np.full(len(keys), day, dtype=np.int32), pa.date32()),
        TILES: pa.array(_numbers(s, TILES, ps, np.int64) + (pn >= 0) - (po >= 0)),
    }
    kept = layout.window_parts(state.window)
    queues = {}
    con = duckdb_cursor()
    try:
        for m in layout.measures:
            n = (
                _numbers(s, m.col("n"), ps, np.int64)
                + _numbers(new, m.col("n"), pn, np.int64)
                - _numbers(old, m.col("n"), po, np.int64)
            )
            cols[m.col("n")] = pa.array(n)
            none = pa.array(n == 0)
            for part in m.parts:
                names = {
                    "sum": ("sum_hi", "sum_lo"),
                    "first": ("first_ts",),
                    "last": ("last_ts",),
                    "value": ("value", "value_ts"),
                }.get(part, (part,))
                if part not in kept.get(m.index, ()):
                    for c in names:
                        cols[m.col(c)] = pa.nulls(len(keys), schema.field(m.col(c)).type)
                elif part == "sum":
                    hi, lo = dd_add(
                        *(_numbers(s, m.col(c), ps, np.float64) for c in names),
                        *(_numbers(new, m.col(c), pn, np.float64) for c in names),
                    )
                    hi, lo = dd_sub(hi, lo, *(_numbers(old, m.col(c), po, np.float64) for c in names))
                    cols[m.col("sum_hi")] = pa.array(np.where(n == 0, 0.0, hi))
                    cols[m.col("sum_lo")] = pa.array(np.where(n == 0, 0.0, lo))
                elif part in ("last", "value"):
                    newer = pc.is_valid(_take(new, m.col(names[-1]), pn))
                    for c in names:
                        pick = pc.if_else(newer, _take(new, m.col(c), pn), _take(s, m.col(c), ps))
                        cols[m.col(c)] = pc.if_else(none, pa.nulls(len(keys), pick.type), pick)
                else:
                    name = f"{m.prefix}_{part}"
                    queue = _push(con, state.queues[name], _incoming(layout, new, m, part), part, day, expire)
                    queues[name] = queue
                    cols[m.col(names[0])] = _front(con, queue, keys, part)
    finally:
        con.close()
    main = pa.table({f.name: cols[f.name] for f in schema}).cast(schema)
    main = main.filter(pc.greater(main.column(TILES), 0))
    return WindowState(state.window, day, canonical_table(main), queues)


def _push(con, queue: pa.Table, incoming: pa.Table, part: str, day: int, expire: int) -> pa.Table:
    con.register("__queue", queue)
    con.register("__incoming", incoming)
    try:
        _, meet, stays = _QUEUES[part]
        kept = (
            f"SELECT a.k, a.d, a.v FROM __queue a LEFT JOIN __incoming n ON {meet} "
            f"WHERE a.d > {expire} AND (n.k IS NULL OR {stays})"
            if meet
            else f"SELECT k, d, v FROM __queue WHERE d > {expire}"
        )
        table = con.sql(
            f"{kept} UNION ALL SELECT k, CAST({day} AS INTEGER) AS d, v FROM __incoming"
        ).to_arrow_table()
    finally:
        con.unregister("__queue")
        con.unregister("__incoming")
    return canonical_table(table.cast(queue.schema))


def _front(con, queue: pa.Table, keys: pa.Array, part: str) -> pa.Array:
    """Per key, the queue's reduction (the window's min, max, first time or sorted distinct values)."""
    con.register("__queue", queue)
    try:
        fronts = con.sql(f"SELECT k, {_QUEUES[part][0]} AS v FROM __queue GROUP BY k").to_arrow_table()
    finally:
        con.unregister("__queue")
    return _take(fronts, "v", _rows(keys, fronts, "k"))


# ------------------------------------------------------------------------------------------ storage


def folder(state_root: Path, window: int) -> Path:
    return state_root / f"window-{window}d"


def _meta(path: Path, layout: ViewLayout, window: int) -> dict:
    try:
        meta = json.loads((path / META).read_text())
    except (OSError, ValueError):
        return {}
    if meta.get("version") != layout.version() or meta.get("window") != window:
        return {}
    return meta


def _read_table(path: Path, name: str, meta: dict, schema: pa.Schema) -> pa.Table | None:
    try:  # Parquet names a list's item 'element': cast back to the schema it was hashed in
        table = canonical_table(pq.read_table(path / f"{name}.parquet").cast(schema))
    except (OSError, ValueError, pa.ArrowInvalid):
        return None
    return table if table_hash(table) == meta["files"].get(name) else None


def read(state_root: Path, layout: ViewLayout, window: int) -> tuple[WindowState | None, dict]:
    """The stored state and its record, or (None, the record or {}) when there is no valid one."""
    path = folder(state_root, window)
    meta = _meta(path, layout, window)
    if not meta:
        return None, {}
    main = _read_table(path, MAIN, meta, main_schema(layout))
    queues = {
        name: _read_table(path, name, meta, _queue_schema(layout, part))
        for name, (_, part) in queue_names(layout, window).items()
    }
    if main is None or any(q is None for q in queues.values()):
        return None, meta
    return WindowState(window, day_index(meta["day"]), main, queues), meta


def read_main(state_root: Path, layout: ViewLayout, window: int, day: str) -> pa.Table | None:
    """The state's per-entity rows when the stored state is that of ``day`` (None otherwise)."""
    path = folder(state_root, window)
    meta = _meta(path, layout, window)
    if not meta or meta.get("day") != day:
        return None
    return _read_table(path, MAIN, meta, main_schema(layout))


def write(state_root: Path, layout: ViewLayout, state: WindowState, tile_hashes: dict[str, str]) -> None:
    """Write every table, then the record naming them (a reader sees the old state, or none, until then)."""
    path = folder(state_root, state.window)
    files = {MAIN: state.main, **state.queues}
    for name, table in files.items():
        write_file_atomic(parquet_bytes(table), path / f"{name}.parquet", durable=False)
    meta = {
        "day": day_text(state.day),
        "window": state.window,
        "version": layout.version(),
        "files": {name: table_hash(table) for name, table in files.items()},
        "tiles": recent_tiles(tile_hashes, state.window),
    }
    write_file_atomic(json.dumps(meta, sort_keys=True).encode(), path / META, durable=False)


def recent_tiles(tile_hashes: dict[str, str], window: int) -> dict[str, str]:
    """The folded tiles' hashes a state keeps: its window's days and the one before."""
    return dict(sorted(tile_hashes.items())[-(window + 1) :])


def as_read(layout: ViewLayout, state: WindowState) -> WindowState:
    """A state's tables as :func:`read` returns them after :func:`write` (schema and canonical layout)."""
    queues = queue_names(layout, state.window)
    return WindowState(
        state.window,
        state.day,
        canonical_table(state.main.cast(main_schema(layout))),
        {
            name: canonical_table(t.cast(_queue_schema(layout, queues[name][1])))
            for name, t in state.queues.items()
        },
    )


def drop(state_root: Path, window: int | None = None) -> None:
    """Forget a window state of a view, or all of them (rebuilt from the tiles when a next day needs it)."""
    for path in [folder(state_root, window)] if window is not None else state_root.glob("window-*d"):
        with contextlib.suppress(FileNotFoundError):
            (path / META).unlink()


__all__ = ["WindowState", "advance", "as_read", "drop", "empty", "read", "read_main", "recent_tiles", "write"]
