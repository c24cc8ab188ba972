"""Write a feature view's days: tiles of an event view, change rows of a snapshot view, and its state.

Day D of a view reads only partition D of its source (and, for a snapshot view, the entity's state
before D). Its rows are written to ``<warehouse>/features/<view>/date=D/part-0.parquet``.

The view's **state** (``<warehouse>/_state/<view>/``) is the lifetime aggregate of every entity as of
the end of one day H: the fold of all tiles up to H (event views) or the latest row per entity (snapshot
views). Computing day H+1 advances it: day D's state is day D-1's plus day D's rows, so neither a
lifetime feature nor the online store ever rescans history. When days are computed out of order (a
parallel backfill) the state is left alone; a snapshot view then derives the state before D from its
source's earlier partitions, which gives the same rows. No Dagster here.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Callable, Iterable, Iterator
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from mlops_assets.dayranges import consecutive_days
from mlops_assets.features import windows
from mlops_assets.features.exact import dd_add, group_sums
from mlops_assets.features.layout import DAY_COLUMN, RECORD_TS, ViewLayout, day_index, day_text, quote
from mlops_assets.features.pit import duckdb_cursor
from mlops_assets.settings import DataPaths
from mlops_assets.storage import (
    PART_FILE,
    canonical_table,
    parquet_bytes,
    table_hash,
    write_file_atomic,
    write_partition,
)

STATE_FILE = "state.parquet"
STATE_META = "state.json"


class FeatureInputError(RuntimeError):
    """A view's inputs are missing or inconsistent (e.g. source partitions not ingested)."""


def _lit(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def view_dir(paths: DataPaths, view: str) -> Path:
    return paths.features / view


def partition_path(paths: DataPaths, view: str, day: str) -> Path:
    return view_dir(paths, view) / f"date={day}"


def stored_days(paths: DataPaths, view: str) -> list[str]:
    """Days of ``view`` written to the offline store, ascending."""
    folder = view_dir(paths, view)
    try:
        entries = list(os.scandir(folder))
    except (FileNotFoundError, NotADirectoryError):
        return []
    # plain strings and os.path: a read of the newest day lists every stored day, so this is per-day cost
    return sorted(
        e.name[5:]
        for e in entries
        if e.name.startswith("date=") and os.path.isfile(os.path.join(e.path, PART_FILE))
    )


def view_files(paths: DataPaths, view: str, days: Iterable[str]) -> dict[str, str]:
    """day -> Parquet file of the view's rows, for the given days that are stored."""
    out = {}
    for day in days:
        path = partition_path(paths, view, day) / PART_FILE
        if path.is_file():
            out[day] = str(path)
    return out


def source_files(paths: DataPaths, source: str, days: Iterable[str]) -> dict[str, list[str]]:
    """day -> the source table's Parquet files of that day (an empty list when none were ingested)."""
    out = {}
    for day in days:
        folder = paths.partition_dir(source, day)
        out[day] = sorted(str(p) for p in folder.glob("*.parquet")) if folder.is_dir() else []
    return out


def ingested_days(paths: DataPaths, source: str, days: Iterable[str]) -> set[str]:
    """Days whose ingestion was recorded (a manifest exists), whether or not rows were kept."""
    return {
        d for d in days if paths.manifest_path(source, d).is_file() or paths.partition_dir(source, d).is_dir()
    }


# ---------------------------------------------------------------------------------------------- tiles


def _records_sql(layout: ViewLayout, files: dict[str, list[str]]) -> str:
    """The view's source records of the given days with their partition day ``__day`` and order ``__r``."""
    all_files = [f for fs in files.values() for f in fs]
    file_day = [d for d, fs in files.items() for _ in fs]
    day_list = "[" + ", ".join(f"DATE {_lit(d)}" for d in file_day) + "]"
    where = f"{quote(layout.entity_key)} IS NOT NULL"
    if layout.view.filter:
        where += f" AND ({layout.view.filter})"
    return (
        f"SELECT *, {day_list}[CAST(file_index AS BIGINT) + 1] AS __day, "
        f"CAST(file_index AS BIGINT) * 4294967296 + CAST(file_row_number AS BIGINT) AS __r "
        f"FROM read_parquet([{', '.join(_lit(f) for f in all_files)}], file_row_number = true) WHERE {where}"
    )


def _measure_exprs(layout: ViewLayout) -> list[str]:
    ts = quote(layout.source.timestamp)
    exprs = []
    for m in layout.measures:
        col = quote(m.column) if m.column else None
        cond = m.condition or "TRUE"
        when = f"({cond}) AND {col} IS NOT NULL" if col else cond
        exprs.append(f"count({col or '*'}) FILTER (WHERE {cond}) AS {m.col('n')}")
        for part in m.parts:
            if part in ("min", "max"):
                exprs.append(f"{part}(CAST({col} AS DOUBLE)) FILTER (WHERE {when}) AS {m.col(part)}")
            elif part == "first":
                exprs.append(f"min({ts}) FILTER (WHERE {when}) AS {m.col('first_ts')}")
            elif part == "last":
                exprs.append(f"max({ts}) FILTER (WHERE {when}) AS {m.col('last_ts')}")
            elif part == "value":
                key = f"struct_pack(t := {ts}, r := __r)"
                exprs.append(f"arg_max({col}, {key}) FILTER (WHERE {when}) AS {m.col('value')}")
                exprs.append(f"struct_extract(max({key}) FILTER (WHERE {when}), 't') AS {m.col('value_ts')}")
            elif part == "distinct":
                exprs.append(
                    f"list_sort(list_distinct(list(CAST({col} AS VARCHAR)) FILTER (WHERE {when}))) "
                    f"AS {m.col('distinct')}"
                )
    return exprs


def event_tiles(layout: ViewLayout, files: dict[str, list[str]]) -> dict[str, pa.Table]:
    """Tiles of every given day (one read of the source partitions), each in the layout's canonical form."""
    schema = layout.schema
    days = list(files)
    if not any(files.values()):
        return {d: schema.empty_table() for d in days}
    key = quote(layout.entity_key)
    records = _records_sql(layout, {d: fs for d, fs in files.items() if fs})
    con = duckdb_cursor()
    try:
        con.execute(f"CREATE TEMP TABLE __records AS {records}")
        tiles = con.sql(
            f"SELECT {key}, __day AS {DAY_COLUMN}, {', '.join(_measure_exprs(layout))} "
            f"FROM __records GROUP BY ALL ORDER BY {DAY_COLUMN}, {key}"
        ).to_arrow_table()
        for m in layout.measures:
            if "sum" not in m.parts:
                continue
            cond = m.condition or "TRUE"
            stream = con.sql(
                f"SELECT CAST({quote(m.column)} AS DOUBLE) AS v FROM __records "
                f"WHERE ({cond}) AND {quote(m.column)} IS NOT NULL ORDER BY __day, {key}, __r"
            ).to_arrow_table()
            counts = tiles.column(m.col("n")).to_numpy(zero_copy_only=False)
            values = stream.column("v").to_numpy(zero_copy_only=False)
            if int(counts.sum()) != len(values):
                raise AssertionError(f"{layout.name}: measure {m.prefix} counts do not match its values")
            hi = np.zeros(len(counts))
            lo = np.zeros(len(counts))
            present = counts > 0
            hi[present], lo[present] = group_sums(values, counts[present])
            tiles = tiles.append_column(m.col("sum_hi"), pa.array(hi)).append_column(
                m.col("sum_lo"), pa.array(lo)
            )
        con.execute("DROP TABLE __records")
    finally:
        con.close()
    tiles = tiles.select(schema.names).cast(schema)
    return _split_by_day(tiles, days, schema)


def _split_by_day(table: pa.Table, days: list[str], schema: pa.Schema) -> dict[str, pa.Table]:
    """Rows ordered by day cut into one canonical table per day."""
    day_values = pc.cast(table.column(DAY_COLUMN), pa.string()).to_numpy(zero_copy_only=False)
    out = {}
    for day in days:
        lo, hi = np.searchsorted(day_values, [day, day + "~"])
        out[day] = canonical_table(table.slice(int(lo), int(hi - lo))) if hi > lo else schema.empty_table()
    return out


# ------------------------------------------------------------------------------------- snapshot views


def _latest_per_entity_sql(layout: ViewLayout, records: str, by_day: bool) -> str:
    key = quote(layout.entity_key)
    ts = quote(layout.source.timestamp)
    cols = ", ".join(quote(c) for c in layout.snapshot_columns)
    partition = f"{key}, __day" if by_day else key
    return (
        f"SELECT {key}, __day AS {DAY_COLUMN}, {ts} AS {RECORD_TS}, {cols} FROM ({records}) "
        f"QUALIFY row_number() OVER (PARTITION BY {partition} ORDER BY {ts} DESC, __r DESC) = 1"
    )


def snapshot_changes(
    layout: ViewLayout, files: dict[str, list[str]], prior: pa.Table | None
) -> tuple[dict[str, pa.Table], pa.Table]:
    """Change rows of each given day (consecutive, ascending) and the state after the last one.

    ``prior`` is the latest row per entity before the first day (None: no entity known yet). A day's row
    for an entity is kept when its latest record of the day differs from the entity's state before it
    in any stored column (nulls compare equal).
    """
    schema = layout.schema
    state = prior if prior is not None else schema.empty_table()
    days = list(files)
    out: dict[str, pa.Table] = {}
    if not any(files.values()):
        return {d: schema.empty_table() for d in days}, state
    key = quote(layout.entity_key)
    cols = list(layout.snapshot_columns)
    con = duckdb_cursor()
    try:
        latest = con.sql(
            _latest_per_entity_sql(
                layout, _records_sql(layout, {d: fs for d, fs in files.items() if fs}), True
            )
            + f" ORDER BY {DAY_COLUMN}, {key}"
        ).to_arrow_table()
        latest = latest.select(schema.names).cast(schema)
        by_day = _split_by_day(latest, days, schema)
        differs = " OR ".join(f"s.{quote(c)} IS DISTINCT FROM d.{quote(c)}" for c in cols) or "FALSE"
        for day in days:
            rows = by_day[day]
            if rows.num_rows == 0:
                out[day] = rows
                continue
            con.register("__day_rows", rows)
            con.register("__state", state)
            changed = con.sql(
                f"SELECT d.* FROM __day_rows d LEFT JOIN __state s ON s.{key} = d.{key} "
                f"WHERE s.{key} IS NULL OR {differs} ORDER BY d.{key}"
            ).to_arrow_table()
            state = con.sql(
                f"SELECT * FROM __state s WHERE NOT EXISTS (SELECT 1 FROM __day_rows d WHERE d.{key} = s.{key}) "
                f"UNION ALL SELECT * FROM __day_rows ORDER BY {key}"
            ).to_arrow_table()
            con.unregister("__day_rows")
            con.unregister("__state")
            out[day] = canonical_table(changed.cast(schema)) if changed.num_rows else schema.empty_table()
            state = state.cast(schema)
    finally:
        con.close()
    return out, canonical_table(state)


def snapshot_state_from_source(layout: ViewLayout, paths: DataPaths, before: str, start: str) -> pa.Table:
    """The latest record per entity in the source partitions of ``start`` .. the day before ``before``."""
    schema = layout.schema
    first, last = date.fromisoformat(start), date.fromisoformat(before) - timedelta(days=1)
    days = [(first + timedelta(days=i)).isoformat() for i in range((last - first).days + 1)]
    files = {d: fs for d, fs in source_files(paths, layout.source_name, days).items() if fs}
    if not files:
        return schema.empty_table()
    key = quote(layout.entity_key)
    con = duckdb_cursor()
    try:
        table = con.sql(
            _latest_per_entity_sql(layout, _records_sql(layout, files), False) + f" ORDER BY {key}"
        ).to_arrow_table()
    finally:
        con.close()
    return canonical_table(table.select(schema.names).cast(schema))


# ---------------------------------------------------------------------------------------------- state


def state_dir(paths: DataPaths, view: str) -> Path:
    return paths.warehouse / "_state" / view


@contextlib.contextmanager
def _state_lock(paths: DataPaths, view: str) -> Iterator[None]:
    folder = state_dir(paths, view)
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def read_state(paths: DataPaths, layout: ViewLayout) -> tuple[str | None, pa.Table | None, dict]:
    """(day the state is as of, the state table, its record) — (None, None, {}) without a valid state."""
    folder = state_dir(paths, layout.name)
    try:
        meta = json.loads((folder / STATE_META).read_text())
    except (OSError, ValueError):
        return None, None, {}
    if meta.get("version") != layout.version() or not (folder / STATE_FILE).is_file():
        return None, None, {}
    try:  # hashed in the form it was written in (Parquet names a list's item 'element': cast back)
        table = canonical_table(pq.read_table(folder / STATE_FILE).cast(layout.schema))
    except (OSError, ValueError, pa.ArrowInvalid):
        return None, None, {}
    if table_hash(table) != meta.get("content_hash"):
        return None, None, {}
    return meta["day"], table, meta


def _write_state(
    paths: DataPaths, layout: ViewLayout, day: str, table: pa.Table, tile_hashes: dict[str, str]
) -> None:
    folder = state_dir(paths, layout.name)
    write_file_atomic(parquet_bytes(table), folder / STATE_FILE, durable=False)
    meta = {"day": day, "version": layout.version(), "content_hash": table_hash(table), "tiles": tile_hashes}
    write_file_atomic(json.dumps(meta, sort_keys=True).encode(), folder / STATE_META, durable=False)


def _drop_state(paths: DataPaths, view: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        (state_dir(paths, view) / STATE_META).unlink()
    windows.drop(state_dir(paths, view))


def drop_state(paths: DataPaths, view: str) -> None:
    """Forget the view's state (a cache: the next read that needs it rebuilds it from the stored days)."""
    with _state_lock(paths, view):
        _drop_state(paths, view)


def event_state_schema(layout: ViewLayout) -> pa.Schema:
    """An event view's state: per entity, the tiles' lifetime fold, plus the day of its last tile."""
    return layout.schema


def fold_event_state(layout: ViewLayout, state: pa.Table, tiles: pa.Table) -> pa.Table:
    """``state`` (lifetime fold up to some day) plus the tiles of the next day, per entity."""
    schema = layout.schema
    if tiles.num_rows == 0:
        return state
    if state.num_rows == 0:
        return canonical_table(tiles)
    key = layout.entity_key
    s_keys = state.column(key)
    t_keys = tiles.column(key)
    position = (
        pc.fill_null(pc.index_in(t_keys, value_set=s_keys), -1)
        .to_numpy(zero_copy_only=False)
        .astype(np.int64)
    )
    old_rows = position[position >= 0]
    old = state.take(pa.array(old_rows))
    new_idx = np.flatnonzero(position >= 0)
    cur = tiles.take(pa.array(new_idx))
    merged = {name: cur.column(name) for name in schema.names}
    for m in layout.measures:
        n_old = old.column(m.col("n")).to_numpy(zero_copy_only=False)
        n_new = cur.column(m.col("n")).to_numpy(zero_copy_only=False)
        merged[m.col("n")] = pa.array(n_old + n_new)
        for part in m.parts:
            if part == "sum":
                hi, lo = dd_add(
                    _f(old, m.col("sum_hi")),
                    _f(old, m.col("sum_lo")),
                    _f(cur, m.col("sum_hi")),
                    _f(cur, m.col("sum_lo")),
                )
                merged[m.col("sum_hi")], merged[m.col("sum_lo")] = pa.array(hi), pa.array(lo)
            elif part in ("min", "max"):
                fn = np.fmin if part == "min" else np.fmax
                a, b = _f(old, m.col(part), np.nan), _f(cur, m.col(part), np.nan)
                value = fn(a, b)
                merged[m.col(part)] = pa.array(value, mask=np.isnan(value))
            elif part == "first":
                merged[m.col("first_ts")] = pc.coalesce(
                    old.column(m.col("first_ts")), cur.column(m.col("first_ts"))
                )
            elif part == "last":
                merged[m.col("last_ts")] = pc.coalesce(
                    cur.column(m.col("last_ts")), old.column(m.col("last_ts"))
                )
            elif part == "value":
                has_new = pc.is_valid(cur.column(m.col("value_ts")))
                for col in ("value", "value_ts"):
                    merged[m.col(col)] = pc.if_else(has_new, cur.column(m.col(col)), old.column(m.col(col)))
            elif part == "distinct":
                merged[m.col("distinct")] = pa.array(
                    [
                        sorted(set(a or ()) | set(b or ()))
                        for a, b in zip(
                            old.column(m.col("distinct")).to_pylist(),
                            cur.column(m.col("distinct")).to_pylist(),
                            strict=True,
                        )
                    ],
                    pa.list_(pa.string()),
                )
    updated = pa.table({n: merged[n] for n in schema.names}).cast(schema)
    fresh = tiles.take(pa.array(np.flatnonzero(position < 0)))
    keep = np.ones(state.num_rows, dtype=bool)
    keep[old_rows] = False
    result = pa.concat_tables([state.filter(pa.array(keep)), updated, fresh])
    return canonical_table(result.take(pc.sort_indices(result, sort_keys=[(key, "ascending")])))


def _f(table: pa.Table, name: str, fill: float = 0.0) -> np.ndarray:
    return table.column(name).fill_null(fill).to_numpy(zero_copy_only=False).astype(np.float64)


def build_event_state(paths: DataPaths, layout: ViewLayout, until: str) -> pa.Table:
    """The fold of every stored tile of the view up to and including ``until`` (the slow, exact path)."""
    state = layout.schema.empty_table()
    days = [d for d in stored_days(paths, layout.name) if d <= until]
    for day in days:
        state = fold_event_state(
            layout, state, pq.read_table(partition_path(paths, layout.name, day) / PART_FILE)
        )
    return state


# ------------------------------------------------------------------------------------------ materialize


#: Most days computed from one read of the source (their tiles are held in memory until written).
DAYS_PER_PASS = 64


def _partition_metadata(
    layout: ViewLayout, day: str, table: pa.Table, source_rows: int | None, path: Path
) -> dict:
    return {
        "path": str(path),
        "rows": table.num_rows,
        "entities": len(pc.unique(table.column(layout.entity_key))) if table.num_rows else 0,
        "content_hash": table_hash(table),
        "code_version": layout.version(),
        "source_files": source_rows,
    }


def materialize_days(
    layout: ViewLayout,
    paths: DataPaths,
    days: list[str],
    start: str,
    progress: Callable[[str, int, int], None] | None = None,
) -> dict[str, dict]:
    """Compute and atomically write each day of ``days`` for one view; per-day metadata.

    ``start`` is the first partition day of the project (a snapshot view's state before it is empty).
    Source days that were never ingested are an error naming them (a day ingested with no rows is fine);
    for a snapshot view these include every earlier day from ``start``, since a day's change rows are
    relative to the latest record of each entity before it.
    """
    days = sorted(set(days))
    for day in days:
        date.fromisoformat(day)
    files_all = source_files(paths, layout.source_name, days)
    missing = [d for d in days if not files_all[d] and d not in ingested_days(paths, layout.source_name, [d])]
    earlier: list[str] = []
    if layout.kind == "snapshot" and days and days[-1] > start:
        first, last = date.fromisoformat(start), date.fromisoformat(days[-1])
        history = [(first + timedelta(days=i)).isoformat() for i in range((last - first).days)]
        wanted = set(days)
        before = [d for d in history if d not in wanted]
        earlier = sorted(set(before) - ingested_days(paths, layout.source_name, before))
    if missing or earlier:
        gaps = sorted({*missing, *earlier})
        shown = ", ".join(gaps[:5]) + (" ..." if len(gaps) > 5 else "")
        why = " (a snapshot view's day depends on every earlier day of its source)" if earlier else ""
        raise FeatureInputError(
            f"feature view {layout.name}: source {layout.source_name} has no ingested partition for "
            f"{len(gaps)} day(s) ({shown}){why}; materialize {layout.source_name} for them first"
        )
    out: dict[str, dict] = {}
    for run in consecutive_days(days):
        for i in range(0, len(run), DAYS_PER_PASS):
            chunk = run[i : i + DAYS_PER_PASS]
            files = {d: files_all[d] for d in chunk}
            if layout.kind == "snapshot":
                tables = _snapshot_pass(layout, paths, files, start)
            else:
                tables = event_tiles(layout, files)
            with _state_lock(paths, layout.name) if layout.kind == "events" else contextlib.nullcontext():
                states = _PassStates(paths, layout) if layout.kind == "events" else None
                for day in chunk:
                    table = tables[day]
                    path = write_partition(table, partition_path(paths, layout.name, day))
                    out[day] = _partition_metadata(layout, day, table, len(files[day]), path)
                    if states is not None:
                        _advance_event_state(states, day, table, out[day]["content_hash"])
                        _advance_window_states(states, day, table, out[day]["content_hash"], start)
                    if progress is not None:
                        progress(day, len(out), len(days))
                if states is not None:
                    states.flush()
    return out


class _PassStates:
    """An event view's states over one pass of consecutive days, read once and written once at its end.

    The pass holds the view's state lock from its first day to its flush, so no other process reads or writes
    the states meanwhile: advancing them in memory and writing the last day's gives the same files as writing
    every day's. A process stopped mid-pass leaves the states of the day before the pass, which are valid (the
    next day folds forward through the stored days, or rebuilds them from the tiles).
    """

    def __init__(self, paths: DataPaths, layout: ViewLayout) -> None:
        self.paths, self.layout, self.root = paths, layout, state_dir(paths, layout.name)
        self._event: tuple[str | None, pa.Table | None, dict] | None = None
        self._windows: dict[int, tuple[windows.WindowState | None, dict]] = {}
        self._dirty_event = False
        self._dirty_windows: set[int] = set()

    def event(self) -> tuple[str | None, pa.Table | None, dict]:
        if self._event is None:
            self._event = read_state(self.paths, self.layout)
        return self._event

    def set_event(self, day: str, table: pa.Table, tile_hashes: dict[str, str]) -> None:
        table = canonical_table(table.cast(self.layout.schema))  # as read_state would return it
        self._event, self._dirty_event = (day, table, {"tiles": tile_hashes}), True

    def window(self, window: int) -> tuple[windows.WindowState | None, dict]:
        if window not in self._windows:
            self._windows[window] = windows.read(self.root, self.layout, window)
        return self._windows[window]

    def set_window(self, state: windows.WindowState, tile_hashes: dict[str, str]) -> None:
        state = windows.as_read(self.layout, state)
        self._windows[state.window] = (state, {"tiles": windows.recent_tiles(tile_hashes, state.window)})
        self._dirty_windows.add(state.window)

    def drop_window(self, window: int) -> None:
        windows.drop(self.root, window)
        self._windows[window] = (None, {})
        self._dirty_windows.discard(window)

    def drop_all(self) -> None:
        _drop_state(self.paths, self.layout.name)
        self._event, self._dirty_event = (None, None, {}), False
        self._windows = {w: (None, {}) for w in self.layout.windows}
        self._dirty_windows.clear()

    def flush(self) -> None:
        if self._dirty_event and self._event is not None:
            day, table, meta = self._event
            _write_state(self.paths, self.layout, day, table, meta["tiles"])
        for window in sorted(self._dirty_windows):
            state, meta = self._windows[window]
            windows.write(self.root, self.layout, state, meta["tiles"])
        self._dirty_event, self._dirty_windows = False, set()


def _snapshot_pass(
    layout: ViewLayout, paths: DataPaths, files: dict[str, list[str]], start: str
) -> dict[str, pa.Table]:
    first = next(iter(files))
    with _state_lock(paths, layout.name):
        state_day, state, _ = read_state(paths, layout)
    previous = (date.fromisoformat(first) - timedelta(days=1)).isoformat()
    if first <= start:
        prior = layout.schema.empty_table()
    elif state_day == previous and state is not None:
        prior = state
    else:
        prior = snapshot_state_from_source(layout, paths, first, start)
    tables, after = snapshot_changes(layout, files, prior)
    last = list(files)[-1]
    with _state_lock(paths, layout.name):
        current_day, _, _ = read_state(paths, layout)
        if current_day is None or current_day <= last:
            _write_state(paths, layout, last, after, {})
        else:  # a re-run of past days: the later state may depend on them; derived again when needed
            _drop_state(paths, layout.name)
    return tables


def _advance_event_state(states: _PassStates, day: str, tiles: pa.Table, content_hash: str) -> None:
    """Fold a just-written day into the view's state when it is the state's next day.

    A day after a gap leaves the state alone (it is rebuilt, or folded forward, by the read that needs
    it); a re-run of a folded day whose content changed drops the state.
    """
    layout = states.layout
    state_day, state, meta = states.event()
    previous = (date.fromisoformat(day) - timedelta(days=1)).isoformat()
    recorded = meta.get("tiles", {})
    if state_day is None:
        if not any(d < day for d in stored_days(states.paths, layout.name)):
            states.set_event(day, tiles, {day: content_hash})  # set_event lays it out canonically
    elif state_day == previous:
        folded = fold_event_state(layout, state, tiles)
        states.set_event(day, folded, {**_recent(recorded), day: content_hash})
    elif day <= state_day and recorded.get(day) != content_hash:
        states.drop_all()


def _stored_tiles(paths: DataPaths, layout: ViewLayout, day: int) -> pa.Table:
    """The stored tiles of a day (no rows when the day is before the first or was never written)."""
    path = partition_path(paths, layout.name, day_text(day)) / PART_FILE
    return pq.read_table(path) if path.is_file() else layout.schema.empty_table()


def _advance_window_states(
    states: _PassStates, day: str, tiles: pa.Table, content_hash: str, start: str
) -> None:
    """Bring each window state of the view to a just-written day (see :mod:`.windows`).

    The state of the day before advances by one day; an older state catches up when every day between
    is stored; a missing state is built from the stored tiles of the window when this is the newest
    stored day (the next day after a backfill or a re-run), else left to the day that is. A re-run of a
    day inside the window that changed its content drops the state.
    """
    paths, layout = states.paths, states.layout
    d = day_index(day)
    stored: set[str] | None = None  # listed only when a state catches up or is built
    for window in layout.windows:
        state, meta = states.window(window)
        recorded = dict(meta.get("tiles", {})) if state is not None else {}
        if state is not None and d <= state.day:
            if d <= state.day - window or recorded.get(day) == content_hash:
                continue
            states.drop_window(window)
            state, recorded = None, {}
        if state is None or state.day < d - 1:
            stored = set(stored_days(paths, layout.name)) if stored is None else stored
        if state is not None and (
            state.day == d - 1 or all(day_text(x) in stored for x in range(state.day + 1, d))
        ):
            x = state.day + 1
        elif state is None and (not any(x < day for x in stored) or max(stored) == day):
            x = max(day_index(start), d - window + 1)
            state = windows.empty(layout, window, x - 1)
        else:
            continue
        while x <= d or (stored is not None and day_text(x) in stored):  # on through stored days
            new = tiles if x == d else _stored_tiles(paths, layout, x)
            leaving = day_text(x - window)
            old = (
                _stored_tiles(paths, layout, x - window)
                if leaving in recorded
                else layout.schema.empty_table()
            )
            state = windows.advance(layout, state, new, old)
            recorded[day_text(x)] = content_hash if x == d else table_hash(canonical_table(new))
            x += 1
        states.set_window(state, recorded)


def window_state_rows(paths: DataPaths, layout: ViewLayout, window: int, day: str) -> pa.Table | None:
    """The window state's per-entity rows as of the end of ``day`` (None: no current state; read the tiles)."""
    return windows.read_main(state_dir(paths, layout.name), layout, window, day)


def _recent(recorded: dict[str, str], keep: int = 400) -> dict[str, str]:
    """The content hashes of the last folded days (enough to notice a re-run of a recent day that changed)."""
    return dict(sorted(recorded.items())[-keep:])


def event_state_at(paths: DataPaths, layout: ViewLayout, day: str) -> pa.Table:
    """The view's lifetime fold as of the end of ``day``: the stored state when it is that day's, else rebuilt."""
    with _state_lock(paths, layout.name):
        state_day, state, _ = read_state(paths, layout)
    if state_day == day and state is not None:
        return state
    if state_day is not None and state is not None and state_day < day:
        days = [d for d in stored_days(paths, layout.name) if state_day < d <= day]
        for d in days:
            state = fold_event_state(
                layout, state, pq.read_table(partition_path(paths, layout.name, d) / PART_FILE)
            )
        return state
    return build_event_state(paths, layout, day)
