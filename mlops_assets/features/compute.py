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
the same bytes (and content hash).
"""

from __future__ import annotations

import os
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pandas as pd
import pyarrow as pa

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


def feature_files(paths: DataPaths, view_name: str) -> list[str]:
    """Every offline Parquet file of a view, in day order."""
    table_dir = feature_table_dir(paths, view_name)
    if not table_dir.is_dir():
        return []
    files = []
    with os.scandir(table_dir) as days:
        for day in sorted(d.path for d in days if d.name.startswith("date=") and d.is_dir()):
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
        SELECT {_quote(view.entity)}, {_ts(end)} AS feature_timestamp, {', '.join(exprs)}
        FROM read_parquet([{file_list}])
        WHERE event_timestamp >= {_ts(start)} AND event_timestamp < {_ts(end)}{type_filter}
        GROUP BY {_quote(view.entity)}
        ORDER BY {_quote(view.entity)}
    """


def _snapshot_view_sql(view: FeatureView, files: list[str], day: str) -> str:
    end = feature_time(day)
    exprs = []
    for feat in view.features:
        col = _quote(feat.column or "")
        if feat.aggregation == "days_since":
            expr = f"date_diff('day', CAST({col} AS DATE), DATE '{end.date().isoformat()}')"
        elif feat.aggregation == "latest":
            expr = col
        else:
            raise ValueError(f"aggregation {feat.aggregation!r} is not supported on a snapshot source")
        exprs.append(f"CAST({expr} AS {_duck_type(feat.dtype)}) AS {_quote(feat.name)}")
    file_list = ", ".join(_sql_str(f) for f in files)
    key = _quote(view.entity)
    return f"""
        WITH latest AS (
            SELECT * FROM read_parquet([{file_list}], file_row_number = true)
            WHERE updated_at < {_ts(end)}
            QUALIFY row_number() OVER (
                PARTITION BY {key} ORDER BY updated_at DESC, file_index DESC, file_row_number DESC) = 1
        )
        SELECT {key}, {_ts(end)} AS feature_timestamp, {', '.join(exprs)}
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
    return table.cast(schema)


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
