"""Compute one day's partition of a feature view with DuckDB SQL over the raw partitions it needs.

Day D's partition holds, for each entity, its values as of ``D+1 00:00 UTC`` (the
``feature_timestamp``), computed from source rows strictly before that time.

* Event views (source ``raw_events``) read only the partitions of days ``D-lookback+1 .. D``
  (:func:`required_days`); a window of ``w`` days covers ``[D+1-w days, D+1)``. The view has one
  row per entity with at least one event of the view's event types in the lookback; an entity
  silent for the whole lookback has no row (its features are then null at join time).
  ``days_since_last`` features are capped by the lookback: null when there was no such event
  within it (e.g. ``days_since_last_login`` is null after 90 days without a login).
* ``customer_profile`` (source ``customers``, ``lookback_days=None``) reads every ``customers``
  partition up to D, a small table, and keeps the latest record per customer with
  ``updated_at`` before the feature time: one row for every customer known by then.

Output is sorted by entity and float sums use ordered aggregates, so the same inputs always give
the same bytes (and content hash); tables are handed over in one canonical Arrow layout
(:func:`canonical_table`) so the content hash depends on the values only.

:func:`materialize_range` computes many days from one read of the sources (a backfill's single
run); each of its partitions is identical to :func:`materialize_view`'s, which stays the reference.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from mlops_assets.features.pit import duckdb_cursor
from mlops_assets.features.views import FeatureView
from mlops_assets.settings import DataPaths, partitions_start
from mlops_assets.storage import partition_glob, table_hash, write_partition

FEATURES_DIR = "features"
UTC_TS = pa.timestamp("us", tz="UTC")
_ARROW_TYPES = {"int64": pa.int64(), "float64": pa.float64(), "string": pa.string()}


def feature_time(day: str) -> datetime:
    """The feature timestamp of day D's partition: D+1 00:00 UTC."""
    return datetime.combine(date.fromisoformat(day) + timedelta(days=1), datetime.min.time(), tzinfo=UTC)


def required_days(view: FeatureView, day: str, start: str | None = None) -> list[str]:
    """Source partitions (days, ascending) that day ``day`` of ``view`` reads.

    Views with a lookback read ``day-lookback+1 .. day``; views without one read every day from
    ``start`` (default: the project's first partition) to ``day``.
    """
    end = date.fromisoformat(day)
    if view.lookback_days is None:
        first = date.fromisoformat(start or partitions_start())
    else:
        first = end - timedelta(days=view.lookback_days - 1)
    return [(first + timedelta(days=i)).isoformat() for i in range((end - first).days + 1)]


def view_schema(view: FeatureView) -> pa.Schema:
    """Arrow schema of a view's offline partitions."""
    fields = [pa.field(view.entity, pa.string()), pa.field("feature_timestamp", UTC_TS)]
    fields += [pa.field(f.name, _ARROW_TYPES[f.dtype]) for f in view.features]
    return pa.schema(fields)


def feature_table_dir(paths: DataPaths, view_name: str) -> Path:
    """Folder of a view's offline partitions: ``<warehouse>/features/<view>``."""
    return paths.warehouse / FEATURES_DIR / view_name


def feature_partition_dir(paths: DataPaths, view_name: str, day: str) -> Path:
    """Folder of day ``day`` of a view's offline partitions."""
    return feature_table_dir(paths, view_name) / f"date={day}"


def feature_files(
    paths: DataPaths, view_name: str, first_day: str | None = None, last_day: str | None = None
) -> list[str]:
    """The offline Parquet files of a view, in day order; optionally only partitions first_day..last_day."""
    table_dir = feature_table_dir(paths, view_name)
    if not table_dir.is_dir():
        return []
    files = []
    with os.scandir(table_dir) as days:
        wanted = [
            d.path
            for d in days
            if d.name.startswith("date=")
            and d.is_dir()
            and (first_day is None or d.name[5:] >= first_day)
            and (last_day is None or d.name[5:] <= last_day)
        ]
        for day in sorted(wanted):
            with os.scandir(day) as parts:
                files += sorted(p.path for p in parts if p.name.endswith(".parquet"))
    return files


def _ts(value: datetime) -> str:
    return f"TIMESTAMPTZ '{value.isoformat()}'"


def _sql_str(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _event_view_sql(view: FeatureView, files: list[str], day: str) -> str:
    end = feature_time(day)
    start = end - timedelta(days=view.lookback_days or 0)
    exprs = []
    for feat in view.features:
        cond = []
        if feat.event_type:
            cond.append(f"event_type = {_sql_str(feat.event_type)}")
        if feat.window_days:
            cond.append(f"event_timestamp >= {_ts(end - timedelta(days=feat.window_days))}")
        where = f" FILTER (WHERE {' AND '.join(cond)})" if cond else ""
        col = _quote(feat.column) if feat.column else None
        order = " ORDER BY event_timestamp, event_id"
        if feat.aggregation == "count":
            expr = f"count(*){where}"
        elif feat.aggregation == "sum":
            expr = f"coalesce(sum({col}{order}){where}, 0)"
        elif feat.aggregation == "mean":
            expr = f"avg({col}{order}){where}"
        elif feat.aggregation == "max":
            expr = f"max({col}){where}"
        elif feat.aggregation == "days_since_last":
            expr = f"epoch({_ts(end)} - max(event_timestamp){where}) / 86400.0"
        else:
            raise ValueError(f"aggregation {feat.aggregation!r} is not supported on an event source")
        exprs.append(f"CAST({expr} AS {_duck_type(feat.dtype)}) AS {_quote(feat.name)}")
    types = sorted({f.event_type for f in view.features if f.event_type})
    type_filter = f" AND event_type IN ({', '.join(_sql_str(t) for t in types)})" if types else ""
    file_list = ", ".join(_sql_str(f) for f in files)
    return f"""
        SELECT {_quote(view.entity)}, {_ts(end)} AS feature_timestamp, {", ".join(exprs)}
        FROM read_parquet([{file_list}])
        WHERE event_timestamp >= {_ts(start)} AND event_timestamp < {_ts(end)}{type_filter}
        GROUP BY {_quote(view.entity)}
        ORDER BY {_quote(view.entity)}
    """


def _snapshot_exprs(view: FeatureView, end_sql: str) -> list[str]:
    """The SELECT expressions of a snapshot view's features, ``end_sql`` being the feature day."""
    exprs = []
    for feat in view.features:
        col = _quote(feat.column or "")
        if feat.aggregation == "days_since":
            expr = f"date_diff('day', CAST({col} AS DATE), {end_sql})"
        elif feat.aggregation == "latest":
            expr = col
        else:
            raise ValueError(f"aggregation {feat.aggregation!r} is not supported on a snapshot source")
        exprs.append(f"CAST({expr} AS {_duck_type(feat.dtype)}) AS {_quote(feat.name)}")
    return exprs


def _snapshot_view_sql(view: FeatureView, files: list[str], day: str) -> str:
    end = feature_time(day)
    exprs = _snapshot_exprs(view, f"DATE '{end.date().isoformat()}'")
    file_list = ", ".join(_sql_str(f) for f in files)
    key = _quote(view.entity)
    return f"""
        WITH latest AS (
            SELECT * FROM read_parquet([{file_list}], file_row_number = true)
            WHERE updated_at < {_ts(end)}
            QUALIFY row_number() OVER (
                PARTITION BY {key} ORDER BY updated_at DESC, file_index DESC, file_row_number DESC) = 1
        )
        SELECT {key}, {_ts(end)} AS feature_timestamp, {", ".join(exprs)}
        FROM latest
        ORDER BY {key}
    """


def _duck_type(dtype: str) -> str:
    return {"int64": "BIGINT", "float64": "DOUBLE", "string": "VARCHAR"}[dtype]


def source_files(view: FeatureView, day: str, paths: DataPaths) -> list[str]:
    """The raw Parquet files day ``day`` of ``view`` reads (only the partitions it needs)."""
    table_dir = paths.table_dir(view.source)
    if view.lookback_days is not None:
        return partition_glob(table_dir, required_days(view, day))
    if not table_dir.is_dir():
        return []
    return [str(p) for p in sorted(table_dir.glob("date=*/*.parquet")) if p.parent.name[5:] <= day]


def compute_view_table(view: FeatureView, day: str, paths: DataPaths) -> pa.Table:
    """Day ``day`` of ``view`` as an Arrow table with :func:`view_schema`."""
    date.fromisoformat(day)
    files = source_files(view, day, paths)
    schema = view_schema(view)
    if not files:
        return schema.empty_table()
    sql = (_event_view_sql if view.lookback_days is not None else _snapshot_view_sql)(view, files, day)
    con = duckdb_cursor()
    try:
        table = con.sql(sql).to_arrow_table()
    finally:
        con.close()
    return canonical_table(table.cast(schema))


def compute_view(view: FeatureView, day: str, paths: DataPaths) -> pd.DataFrame:
    """Day ``day`` of ``view``: one row per entity, ``feature_timestamp`` = D+1 00:00 UTC, sorted."""
    return compute_view_table(view, day, paths).to_pandas()


def materialize_view(view: FeatureView, day: str, paths: DataPaths) -> dict:
    """Compute day ``day`` of ``view``, write it atomically to the offline store, return metadata."""
    table = compute_view_table(view, day, paths)
    path = write_partition(table, feature_partition_dir(paths, view.name, day))
    frame = table.to_pandas()
    return {
        "path": str(path),
        "rows": table.num_rows,
        "content_hash": table_hash(table),
        "code_version": view.version(),
        "source_files": len(source_files(view, day, paths)),
        "null_rates": {f: float(frame[f].isna().mean()) if len(frame) else 0.0 for f in view.feature_names},
    }


# --- Range path: many days of a view from one read of its sources ------------------------------
#
# ``materialize_range`` gives, day for day, exactly the tables of ``compute_view_table`` (same rows,
# order, dtypes and bits; the per-day path is the reference). Event views read the raw partitions
# of ``first - lookback + 1 .. last`` once; DuckDB aggregates them per entity per day, and NumPy
# turns the daily grid into every day's windows: counts by cumulative sums (exact integers), maxima
# and last timestamps by sliding maxima (exact), and sums and means by adding each window's events
# one by one in ``(event_timestamp, event_id)`` order, the order and association of the per-day
# ``sum(amount ORDER BY event_timestamp, event_id)`` (so float sums agree to the last bit). A final
# DuckDB projection applies the per-day casts and ``days_since_last`` arithmetic. ``customer_profile``
# keeps, per customer, the running latest record over the days it becomes visible, then expands it
# to every day with a range join. Where that equivalence cannot be shown for the input (a partition
# holding rows of another day, a null entity, a non-float column summed), the range falls back to
# the per-day path.

#: Upper bound of entities x days in one dense NumPy grid (entities are processed in blocks).
RANGE_GRID_CELLS = 4_000_000
#: Most days computed per read of the sources (a pass's outputs are held in memory until written).
RANGE_DAYS_PER_PASS = 184
#: Output rows (entities x days) a pass aims to stay under: many entities give shorter passes.
RANGE_ROWS_PER_PASS = 2_000_000
#: Threads writing the partitions of a range (Parquet encoding and hashing release the GIL).
RANGE_WRITE_THREADS = 2

_INT64_MIN = np.iinfo(np.int64).min


def _day_runs(days: list[str], max_len: int) -> list[list[str]]:
    """Split ascending unique days into runs of consecutive days, each at most ``max_len`` long."""
    runs: list[list[str]] = []
    for day in days:
        if (
            runs
            and len(runs[-1]) < max_len
            and (date.fromisoformat(day) - date.fromisoformat(runs[-1][-1])).days == 1
        ):
            runs[-1].append(day)
        else:
            runs.append([day])
    return runs


def _passes(view: FeatureView, days: list[str], paths: DataPaths) -> list[list[str]]:
    """Runs of consecutive days, each short enough that its output stays near RANGE_ROWS_PER_PASS rows."""
    if not days:
        return []
    files = source_files(view, days[-1], paths)
    entities = 0
    if files and len(days) > 1:  # rows per day: at most the entities in the last day's sources
        con = duckdb_cursor()
        try:
            entities = con.sql(
                f"SELECT approx_count_distinct({_quote(view.entity)}) FROM read_parquet(["
                f"{', '.join(_sql_str(f) for f in files)}])"
            ).fetchall()[0][0]
        finally:
            con.close()
    length = max(1, min(RANGE_DAYS_PER_PASS, RANGE_ROWS_PER_PASS // max(int(entities or 0), 1)))
    return _day_runs(days, length)


def _check_days(days: list[str] | tuple[str, ...]) -> list[str]:
    if isinstance(days, str):
        raise TypeError("days must be a list of 'YYYY-MM-DD' strings, not one string")
    out = sorted(set(days))
    for day in out:
        date.fromisoformat(day)
    return out


def _sliding_max(grid: np.ndarray, start: int, width: int, n: int) -> np.ndarray:
    """``out[:, j] = max(grid[:, start + j : start + j + width])`` for j < n (doubling, exact)."""
    level = grid[:, start : start + n + width - 1]
    span = 1
    while span * 2 <= width:
        level = np.maximum(level[:, :-span], level[:, span:])
        span *= 2
    return np.maximum(level[:, :n], level[:, width - span : width - span + n])


def _window_counts(cumulative: np.ndarray, lookback: int, width: int, n: int) -> np.ndarray:
    """Sum of a daily grid over each output day's window, from its cumulative sums (leading 0 column)."""
    return cumulative[:, lookback : lookback + n] - cumulative[:, lookback - width : lookback - width + n]


def _sequential_sums(values: np.ndarray, lo: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """``sum(values[lo[i] : lo[i] + lengths[i]])`` added strictly left to right from 0.0, for every i."""
    out = np.zeros(lo.shape[0], dtype=np.float64)
    active = np.flatnonzero(lengths > 0)
    if not len(active):
        return out
    order = active[np.argsort(-lengths[active], kind="stable")]
    starts, lens = lo[order], lengths[order]
    acc = np.zeros(len(order), dtype=np.float64)
    # the number of windows still open after step j (lengths are sorted descending)
    still = np.searchsorted(-lens, -np.arange(1, int(lens[0]) + 1), side="right")
    for j, k in enumerate(still):
        acc[:k] += values[starts[:k] + j]
    out[order] = acc
    return out


def _agg_stream_filter(event_type: str | None) -> str:
    return f" FILTER (WHERE event_type = {_sql_str(event_type)})" if event_type else ""


def _files_by_day(table_dir: Path, days: list[str]) -> tuple[list[str], list[int]]:
    files: list[str] = []
    index: list[int] = []
    for i, day in enumerate(days):
        found = partition_glob(table_dir, [day])
        files += found
        index += [i] * len(found)
    return files, index


def _event_aggregates(view: FeatureView) -> tuple[dict[tuple, str], list[tuple[str | None, str]]] | None:
    """Daily aggregates an event view needs (key -> SQL) and its (event type, column) float sums."""
    aggs: dict[tuple, str] = {("n", None): "count(*)"}
    sums: list[tuple[str | None, str]] = []
    for feat in view.features:
        s, col = feat.event_type, feat.column
        if feat.aggregation in ("count", "days_since_last"):
            aggs[("n", s)] = f"count(*){_agg_stream_filter(s)}"
            if feat.aggregation == "days_since_last":
                aggs[("t", s)] = f"max(epoch_us(event_timestamp)){_agg_stream_filter(s)}"
        elif feat.aggregation in ("sum", "mean", "max") and col:
            aggs[("c", s, col)] = f"count({_quote(col)}){_agg_stream_filter(s)}"
            if feat.aggregation == "max":
                aggs[("m", s, col)] = f"max({_quote(col)}){_agg_stream_filter(s)}"
            elif (s, col) not in sums:
                sums.append((s, col))
        else:
            return None  # not an event aggregation: the per-day path raises the error
    return aggs, sums


def _event_range_tables(view: FeatureView, run: list[str], paths: DataPaths) -> dict[str, pa.Table] | None:
    """Every day of a run of consecutive days of an event view; None where only the per-day path is exact."""
    schema = view_schema(view)
    plan = _event_aggregates(view)
    if plan is None:
        return None
    aggs, sums = plan
    lookback = int(view.lookback_days or 0)
    n_out = len(run)
    span0 = date.fromisoformat(run[0]) - timedelta(days=lookback - 1)
    n_span = n_out + lookback - 1
    span_days = [(span0 + timedelta(days=i)).isoformat() for i in range(n_span)]
    files, file_day = _files_by_day(paths.table_dir(view.source), span_days)
    if not files:
        return {day: schema.empty_table() for day in run}
    types = sorted({f.event_type for f in view.features if f.event_type})
    type_filter = f" AND event_type IN ({', '.join(_sql_str(t) for t in types)})" if types else ""
    span_start = feature_time(span_days[0]) - timedelta(days=1)
    file_days = "[" + ", ".join(str(i) for i in file_day) + "]"
    # __d: the row's UTC day on the span; __p: the day of the partition it was read from
    events = f"""
        SELECT *, CAST(CAST(event_timestamp AS DATE) - DATE '{span0.isoformat()}' AS INTEGER) AS __d,
               {file_days}[CAST(file_index AS BIGINT) + 1] AS __p
        FROM read_parquet([{", ".join(_sql_str(f) for f in files)}])
        WHERE event_timestamp >= {_ts(span_start)} AND event_timestamp < {_ts(feature_time(run[-1]))}{type_filter}
    """
    keys = list(aggs)
    select = ", ".join(f"{aggs[k]} AS a{i}" for i, k in enumerate(keys))
    entity = _quote(view.entity)
    con = duckdb_cursor()
    try:
        daily = con.sql(
            f"SELECT {entity} AS k, __d, count(*) FILTER (WHERE __d <> __p) AS misplaced, {select} "
            f"FROM ({events}) GROUP BY ALL"
        ).to_arrow_table()
        streams = {
            (s, col): con.sql(
                f"SELECT {entity} AS k, __d, {_quote(col)} AS v FROM ({events}) "
                f"WHERE {f'event_type = {_sql_str(s)} AND ' if s else ''}{_quote(col)} IS NOT NULL "
                f"ORDER BY k, event_timestamp, event_id"
            ).to_arrow_table()
            for s, col in sums
        }
    finally:
        con.close()
    # per-day windows follow both the partitions read and the timestamps: equal only when every row
    # sits in the partition of its own UTC day (as ingestion writes them); floats only for sums/maxima
    if pc.sum(daily.column("misplaced")).as_py() or daily.column("k").null_count:
        return None
    if any(
        k[0] == "m" and not pa.types.is_float64(daily.schema.field(f"a{i}").type) for i, k in enumerate(keys)
    ):
        return None
    if any(not pa.types.is_float64(t.schema.field("v").type) for t in streams.values()):
        return None
    if daily.num_rows == 0:
        return {day: schema.empty_table() for day in run}

    entities = pc.unique(daily.column("k"))
    entities = entities.take(pc.array_sort_indices(entities))  # DuckDB's ORDER BY: byte order
    ent = pc.index_in(daily.column("k"), value_set=entities).to_numpy(zero_copy_only=False).astype(np.int64)
    day_idx = daily.column("__d").to_numpy(zero_copy_only=False).astype(np.int64)
    cols = {k: daily.column(f"a{i}") for i, k in enumerate(keys)}
    stream_arrays = {}
    for key, tbl in streams.items():
        s_ent = (
            pc.index_in(tbl.column("k"), value_set=entities).to_numpy(zero_copy_only=False).astype(np.int64)
        )
        if np.any(np.diff(s_ent) < 0):
            return None
        stream_arrays[key] = (s_ent, tbl.column("v").to_numpy(zero_copy_only=False))

    n_ent = len(entities)
    block = max(1, RANGE_GRID_CELLS // (n_span + 1))
    order = np.argsort(ent, kind="stable") if n_ent > block else np.arange(len(ent))
    ent_sorted = ent[order]
    parts: list[tuple[np.ndarray, np.ndarray, dict]] = []
    for c0 in range(0, n_ent, block):
        c1 = min(n_ent, c0 + block)
        r0, r1 = np.searchsorted(ent_sorted, [c0, c1])
        rows = order[r0:r1]
        grids = _DailyGrid(
            ent[rows] - c0,
            day_idx[rows],
            c1 - c0,
            n_span,
            {k: v.take(pa.array(rows)) if n_ent > block else v for k, v in cols.items()},
        )
        parts.append(_event_block(view, lookback, n_out, grids, stream_arrays, c0))
    rows_e = np.concatenate([p[0] for p in parts])
    rows_d = np.concatenate([p[1] for p in parts])
    if not len(rows_e):
        return {day: schema.empty_table() for day in run}
    values = {name: pa.concat_arrays([p[2][name] for p in parts]) for name in view.feature_names}
    if len(parts) > 1:  # blocks are each ordered by (day, entity): interleave them
        by_day = np.argsort(rows_d, kind="stable")
        rows_e, rows_d = rows_e[by_day], rows_d[by_day]
        values = {name: arr.take(pa.array(by_day)) for name, arr in values.items()}
    raw = {
        "__d": pa.array(rows_d.astype(np.int32)),
        view.entity: entities.take(pa.array(rows_e)),
        "feature_timestamp": pa.array(_to_us(feature_time(run[0])) + rows_d * 86_400_000_000, UTC_TS),
    }
    raw.update(values)
    return _split_days(view, run, pa.table(raw), _event_projection(view))


def _to_us(value: datetime) -> int:
    delta = value - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


class _DailyGrid:
    """Dense (entity x day) grids of one block's daily aggregates, built on demand."""

    def __init__(self, ent: np.ndarray, day: np.ndarray, n_ent: int, n_span: int, cols: dict) -> None:
        self.ent, self.day, self.n_ent, self.n_span, self.cols = ent, day, n_ent, n_span, cols
        self._cumulative: dict[tuple, np.ndarray] = {}

    def dense(self, key: tuple, fill: float | int, dtype: type) -> np.ndarray:
        out = np.full((self.n_ent, self.n_span), fill, dtype=dtype)
        out[self.ent, self.day] = self.cols[key].fill_null(fill).to_numpy(zero_copy_only=False)
        return out

    def cumulative(self, key: tuple) -> np.ndarray:
        """Counts before each grid day: column k holds the sum over days < k (n_span + 1 columns)."""
        if key not in self._cumulative:
            out = np.zeros((self.n_ent, self.n_span + 1), dtype=np.int64)
            np.cumsum(self.dense(key, 0, np.int64), axis=1, out=out[:, 1:])
            self._cumulative[key] = out
        return self._cumulative[key]


def _event_block(
    view: FeatureView, lookback: int, n_out: int, grids: _DailyGrid, streams: dict, c0: int
) -> tuple[np.ndarray, np.ndarray, dict]:
    """Window aggregates of one block of entities: (entity, day) of each output row and raw columns."""
    present = _window_counts(grids.cumulative(("n", None)), lookback, lookback, n_out) > 0
    rows_d, rows_e = np.nonzero(present.T)  # output rows by day, then entity
    values: dict[str, pa.Array] = {}
    sums: dict[tuple, np.ndarray] = {}
    for feat in view.features:
        s, col, width = feat.event_type, feat.column, feat.window_days or lookback
        if feat.aggregation in ("count", "days_since_last"):
            counts = _window_counts(grids.cumulative(("n", s)), lookback, width, n_out)[rows_e, rows_d]
            if feat.aggregation == "count":
                values[feat.name] = pa.array(counts)
            else:
                last = _sliding_max(
                    grids.dense(("t", s), _INT64_MIN, np.int64), lookback - width, width, n_out
                )
                values[feat.name] = pa.array(last[rows_e, rows_d], UTC_TS, mask=counts == 0)
            continue
        cumulative = grids.cumulative(("c", s, col))
        counts = _window_counts(cumulative, lookback, width, n_out)[rows_e, rows_d]
        if feat.aggregation == "max":
            best = _sliding_max(
                grids.dense(("m", s, col), -np.inf, np.float64), lookback - width, width, n_out
            )
            values[feat.name] = pa.array(best[rows_e, rows_d], pa.float64(), mask=counts == 0)
            continue
        if (s, col, width) not in sums:
            # the stream's events are sorted by (entity, event_timestamp, event_id); a window is the
            # slice from the entity's first event plus its count before the window's first day
            s_ent, s_val = streams[(s, col)]
            first = np.searchsorted(s_ent, c0 + np.arange(grids.n_ent))
            lo = first[rows_e] + cumulative[rows_e, rows_d + lookback - width]
            sums[(s, col, width)] = _sequential_sums(s_val, lo, counts)
        total = sums[(s, col, width)]
        if feat.aggregation == "sum":
            values[feat.name] = pa.array(total)
        else:
            with np.errstate(invalid="ignore", divide="ignore"):
                values[feat.name] = pa.array(total / counts, pa.float64(), mask=counts == 0)
    return rows_e + c0, rows_d, values


def _event_projection(view: FeatureView) -> list[str]:
    exprs = []
    for feat in view.features:
        raw = _quote(feat.name)
        expr = f"epoch(feature_timestamp - {raw}) / 86400.0" if feat.aggregation == "days_since_last" else raw
        exprs.append(f"CAST({expr} AS {_duck_type(feat.dtype)}) AS {raw}")
    return exprs


def _split_days(
    view: FeatureView, run: list[str], raw: pa.Table, exprs: list[str] | None
) -> dict[str, pa.Table]:
    """Cut rows ordered by (``__d``, entity) into one table per day, after the per-day casts in DuckDB."""
    schema = view_schema(view)
    if exprs is not None:
        raw = raw.append_column("__i", pa.array(np.arange(raw.num_rows)))
        con = duckdb_cursor()
        try:
            con.register("__raw", raw)
            raw = con.sql(
                f"SELECT __i, __d, {_quote(view.entity)}, feature_timestamp, {', '.join(exprs)} FROM __raw"
            ).to_arrow_table()
        finally:
            con.close()
        position = raw.column("__i").to_numpy()
        if np.any(np.diff(position) != 1):  # a projection keeps the row order; make sure
            raw = raw.take(pa.array(np.argsort(position)))
        raw = raw.drop_columns(["__i"])
    counts = np.bincount(raw.column("__d").to_numpy(), minlength=len(run))
    table = raw.drop_columns(["__d"]).cast(schema)
    out, offset = {}, 0
    for day, n in zip(run, counts, strict=True):
        out[day] = canonical_table(table.slice(offset, int(n))) if n else schema.empty_table()
        offset += int(n)
    return out


def canonical_table(table: pa.Table) -> pa.Table:
    """The table in one canonical Arrow layout, so that equal values give an equal :func:`table_hash`.

    ``table_hash`` hashes Arrow IPC bytes, which follow the buffers (chunking, a slice's unused bytes,
    the bytes under nulls, the unused bits of the validity bitmap), not only the values. Canonical:
    one chunk per column in exactly-sized buffers starting at offset 0; a validity bitmap only where
    there are nulls, its unused bits set; under a null, NaN in a float column, 0 in another fixed-width
    column, an empty string in a string column. That is the layout DuckDB hands over for a result of
    up to one batch whose null floats come from aggregates, so hashes recorded before are unchanged.
    """
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
    n, typ = len(arr), arr.type
    if pa.types.is_floating(typ) or pa.types.is_integer(typ) or pa.types.is_temporal(typ):
        width = typ.bit_width // 8
        if typ.bit_width % 8 or width not in (1, 2, 4, 8):
            return arr
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
    return arr


def _snapshot_range_tables(view: FeatureView, run: list[str], paths: DataPaths) -> dict[str, pa.Table] | None:
    """Every day of a run of a snapshot view (latest record per entity as of each day's feature time)."""
    all_files = source_files(view, run[-1], paths)
    schema = view_schema(view)
    if not all_files:
        return {day: schema.empty_table() for day in run}
    try:
        exprs = _snapshot_exprs(view, "__end")
    except ValueError:
        return None  # the per-day path raises the error
    first = date.fromisoformat(run[0])
    # a record counts from the later of its partition's day and its own UTC day (per-day: the
    # partition is read from day D on, the record kept once updated_at < D+1 00:00 UTC)
    file_days = [date.fromisoformat(Path(f).parent.name[len("date=") :]) for f in all_files]
    days_list = "[" + ", ".join(str((d - first).days) for d in file_days) + "]"
    key = _quote(view.entity)
    file_list = ", ".join(_sql_str(f) for f in all_files)
    n_out = len(run)
    sql = f"""
        WITH recs AS (
            SELECT *, greatest({days_list}[CAST(file_index AS BIGINT) + 1],
                                CAST(CAST(updated_at AS DATE) - DATE '{first.isoformat()}' AS INTEGER)) AS __e,
                   file_index AS __f, file_row_number AS __r
            FROM read_parquet([{file_list}], file_row_number = true)
            WHERE updated_at < {_ts(feature_time(run[-1]))}
        ),
        steps AS (  -- the best record (latest updated_at, then file, then row) among those visible by __e
            SELECT DISTINCT {key}, __e,
                   max(struct_pack(u := updated_at, f := __f, r := __r)) OVER (
                       PARTITION BY {key} ORDER BY __e
                       RANGE BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS __best
            FROM recs
        ),
        versions AS (
            SELECT {key}, greatest(__e, 0) AS __from,
                   least(coalesce(lead(__e) OVER (PARTITION BY {key} ORDER BY __e), {n_out}), {n_out}) AS __to,
                   __best.f AS __f, __best.r AS __r
            FROM steps
        ),
        expanded AS (
            SELECT v.{key}, CAST(d.__d AS INTEGER) AS __d, v.__f, v.__r
            FROM versions v JOIN range({n_out}) d(__d) ON d.__d >= v.__from AND d.__d < v.__to
        )
        SELECT e.__d, r.*, DATE '{first.isoformat()}' + e.__d + 1 AS __end
        FROM expanded e JOIN recs r ON r.{key} = e.{key} AND r.__f = e.__f AND r.__r = e.__r
    """
    end0 = feature_time(run[0])
    ts = f"{_ts(end0)} + to_days(CAST(__d AS INTEGER))"
    con = duckdb_cursor()
    try:
        if con.sql(f"SELECT count(*) FROM read_parquet([{file_list}]) WHERE {key} IS NULL").fetchall()[0][0]:
            return None
        raw = con.sql(
            f"SELECT __d, {key}, {ts} AS feature_timestamp, {', '.join(exprs)} FROM ({sql})"
        ).to_arrow_table()
    finally:
        con.close()
    if raw.num_rows == 0:
        return {day: schema.empty_table() for day in run}
    keys = raw.column(view.entity)
    entities = pc.unique(keys)
    entities = entities.take(pc.array_sort_indices(entities))  # DuckDB's ORDER BY: byte order
    ent = pc.index_in(keys, value_set=entities).to_numpy(zero_copy_only=False)
    order = np.lexsort((ent, raw.column("__d").to_numpy(zero_copy_only=False)))
    return _split_days(view, run, raw.take(pa.array(order)), None)


def compute_range_tables(view: FeatureView, days: list[str], paths: DataPaths) -> dict[str, pa.Table]:
    """Days ``days`` of ``view``, each exactly the table of :func:`compute_view_table`, from few source reads."""
    out: dict[str, pa.Table] = {}
    for run in _passes(view, _check_days(days), paths):
        out.update(_range_pass(view, run, paths))
    return out


def _range_pass(view: FeatureView, run: list[str], paths: DataPaths) -> dict[str, pa.Table]:
    tables = (_event_range_tables if view.lookback_days is not None else _snapshot_range_tables)(
        view, run, paths
    )
    if tables is None:  # inputs the range path cannot prove equal on: compute day by day
        tables = {day: compute_view_table(view, day, paths) for day in run}
    return tables


def _source_file_counts(view: FeatureView, days: list[str], paths: DataPaths) -> dict[str, int]:
    """How many source files each day's computation reads (``len(source_files(...))``), listed once."""
    table_dir = paths.table_dir(view.source)
    if view.lookback_days is None:
        file_days = [Path(f).parent.name[len("date=") :] for f in source_files(view, days[-1], paths)]
        return {day: sum(1 for d in file_days if d <= day) for day in days}
    lookback = view.lookback_days
    first = date.fromisoformat(days[0]) - timedelta(days=lookback - 1)
    span = [
        (first + timedelta(days=i)).isoformat()
        for i in range((date.fromisoformat(days[-1]) - first).days + 1)
    ]
    per_day = np.array([len(partition_glob(table_dir, [d])) for d in span], dtype=np.int64)
    cumulative = np.concatenate([[0], np.cumsum(per_day)])
    out = {}
    for day in days:
        end = (date.fromisoformat(day) - first).days + 1
        out[day] = int(cumulative[end] - cumulative[end - lookback])
    return out


def _partition_metadata(view: FeatureView, table: pa.Table, path: Path, n_files: int, version: str) -> dict:
    rows = table.num_rows
    null_rates = {}
    for name in view.feature_names:  # as materialize_view: pandas' isna (null or NaN) over the rows
        nulls = pc.sum(pc.is_null(table.column(name), nan_is_null=True)).as_py() if rows else 0
        null_rates[name] = float(nulls / rows) if rows else 0.0
    return {
        "path": str(path),
        "rows": rows,
        "content_hash": table_hash(table),
        "code_version": version,
        "source_files": n_files,
        "null_rates": null_rates,
    }


def materialize_range(
    view: FeatureView,
    days: list[str],
    paths: DataPaths,
    progress: Callable[[str, int, int], None] | None = None,
) -> dict[str, dict]:
    """Compute and atomically write every day of ``days``; per-day metadata as :func:`materialize_view`.

    Each partition equals what :func:`materialize_view` writes for that day (same content hash and
    Parquet bytes), but the sources are read once per run of consecutive days instead of once per day.
    ``progress(day, done, total)`` is called after each partition is written, in day order.
    """
    days = _check_days(days)
    version = view.version()
    out: dict[str, dict] = {}

    def write(item: tuple[str, pa.Table, int]) -> tuple[str, dict]:
        day, table, n_files = item
        path = write_partition(table, feature_partition_dir(paths, view.name, day))
        return day, _partition_metadata(view, table, path, n_files, version)

    with ThreadPoolExecutor(max_workers=RANGE_WRITE_THREADS) as pool:  # Parquet encoding releases the GIL
        for run in _passes(view, days, paths):
            tables = _range_pass(view, run, paths)
            n_files = _source_file_counts(view, run, paths)
            for day, meta in pool.map(write, [(day, tables.pop(day), n_files[day]) for day in run]):
                out[day] = meta
                if progress is not None:
                    progress(day, len(out), len(days))
    return out
