"""Point-in-time join of entity rows to feature rows, and a leakage check.

For each entity row ``(entity key, event_timestamp)`` and each feature source, the joined
feature row is the latest one of that entity with

    event_timestamp - ttl <= feature_timestamp <= event_timestamp

(both ends inclusive; no lower bound when ``ttl`` is None). Rules users rely on:

* every entity row is kept, in input order; duplicate entity rows stay separate rows;
* when no feature row qualifies (none yet, or the latest is older than the TTL) the features
  and ``<source>__feature_timestamp`` are null;
* ties (several rows of one entity with the same ``feature_timestamp``) are broken
  deterministically: the greatest ``created`` column wins when the source names one, then the
  row that comes last in the source (later file, then later row: "last write wins");
* times are compared at microsecond precision (DuckDB ``TIMESTAMPTZ``).

One DuckDB ``ASOF LEFT JOIN`` per source, on a struct key ``(timestamp, tie-breakers)`` so the
tie rule costs no extra pass.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import timedelta

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa

UTC_TS = pa.timestamp("us", tz="UTC")
TS_SUFFIX = "__feature_timestamp"
_BIG = "9223372036854775807::BIGINT"


@dataclass(frozen=True)
class FeatureSource:
    """Feature rows of one view to join: a DataFrame/Arrow table or a list of Parquet files."""

    name: str
    data: pd.DataFrame | pa.Table | Sequence[str]
    features: Sequence[str]
    ttl: timedelta | None = None
    entity: str = "entity_id"
    timestamp: str = "feature_timestamp"
    created: str | None = None  # optional tie-breaker column (greatest wins)
    output_names: Sequence[str] = field(default_factory=tuple)  # rename features in the output

    @property
    def timestamp_column(self) -> str:
        return f"{self.name}{TS_SUFFIX}"

    @property
    def out_features(self) -> list[str]:
        return list(self.output_names) if self.output_names else list(self.features)


_BASE: tuple[int, duckdb.DuckDBPyConnection] | None = None
_BASE_LOCK = threading.Lock()


def duckdb_cursor() -> duckdb.DuckDBPyConnection:
    """A fresh cursor on a per-process in-memory DuckDB (connecting costs tens of ms; a cursor does not)."""
    global _BASE
    with _BASE_LOCK:
        if _BASE is None or _BASE[0] != os.getpid():
            con = duckdb.connect()
            con.execute("SET GLOBAL TimeZone = 'UTC'")
            _BASE = (os.getpid(), con)
        cursor = _BASE[1].cursor()
    cursor.execute("SET TimeZone = 'UTC'")
    return cursor


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _lit(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _utc_us(column: pa.ChunkedArray | pa.Array, what: str) -> pa.ChunkedArray | pa.Array:
    typ = column.type
    if not pa.types.is_timestamp(typ) or typ.tz is None:
        raise ValueError(f"{what} must be a UTC-aware timestamp column, got {typ}")
    try:
        return column.cast(UTC_TS)
    except pa.ArrowInvalid as err:
        raise ValueError(f"{what} has sub-microsecond values; times are compared in microseconds") from err


def _entity_table(entity_df: pd.DataFrame, entity: str, event_timestamp: str) -> pa.Table:
    missing = [c for c in (entity, event_timestamp) if c not in entity_df.columns]
    if missing:
        raise ValueError(f"entity_df needs columns {entity!r} and {event_timestamp!r}; missing {missing}")
    table = pa.Table.from_pandas(entity_df[[entity, event_timestamp]], preserve_index=False)
    return pa.table(
        {
            "__key": table.column(entity).cast(pa.string()),
            "__ts": _utc_us(table.column(event_timestamp), f"entity_df[{event_timestamp!r}]"),
            "__row": pa.array(np.arange(len(entity_df), dtype=np.int64)),
        }
    )


def _source_relation(con: duckdb.DuckDBPyConnection, src: FeatureSource, alias: str) -> tuple[str, str]:
    """SQL of the source's rows with a ``__k`` tie-aware key, and the matching entity key."""
    cols = [src.entity, src.timestamp, *src.features] + ([src.created] if src.created else [])
    if isinstance(src.data, pd.DataFrame | pa.Table):
        data = src.data
        table = (
            pa.Table.from_pandas(data[cols], preserve_index=False)
            if isinstance(data, pd.DataFrame)
            else data.select(cols)
        )
        table = table.set_column(1, src.timestamp, _utc_us(table.column(1), f"{src.name}.{src.timestamp}"))
        table = table.append_column("__rn", pa.array(np.arange(table.num_rows, dtype=np.int64)))
        con.register(f"{alias}_data", table)
        scan = f"{alias}_data"
        order_fields = ["'r': __rn"]
    else:
        files = list(src.data)
        if not files:
            return "", ""
        scan = f"read_parquet([{', '.join(_lit(f) for f in files)}], file_row_number = true)"
        # one BIGINT: file position in the high bits, row in the file in the low 32 bits
        order_fields = ["'r': CAST(file_index AS BIGINT) * 4294967296 + CAST(file_row_number AS BIGINT)"]
    ts = _q(src.timestamp)
    key_fields = [f"'t': {ts}"]
    ent_fields = ["'t': __ts"]
    if src.created:
        key_fields.append(f"'c': CAST({_q(src.created)} AS TIMESTAMPTZ)")
        ent_fields.append("'c': 'infinity'::TIMESTAMPTZ")
    key_fields += order_fields
    ent_fields.append(f"'r': {_BIG}")
    select = ", ".join(
        [f"CAST({_q(src.entity)} AS VARCHAR) AS __key", f"{ts} AS __fts"]
        + [f"{_q(f)} AS {_q(f'__f{i}')}" for i, f in enumerate(src.features)]
    )
    sql = (
        f"SELECT {select}, {{{', '.join(key_fields)}}} AS __k FROM {scan} "
        f"WHERE {_q(src.entity)} IS NOT NULL AND {ts} IS NOT NULL"
    )
    ent_key = f"CASE WHEN __ts IS NULL THEN NULL ELSE {{{', '.join(ent_fields)}}} END"
    return sql, ent_key


def point_in_time_join(
    entity_df: pd.DataFrame,
    sources: Sequence[FeatureSource],
    entity: str = "entity_id",
    event_timestamp: str = "event_timestamp",
) -> pd.DataFrame:
    """Join each entity row to each source's latest feature row within the TTL (see module doc).

    Returns ``entity_df``'s columns (index reset) followed by, per source, its features and
    ``<source>__feature_timestamp``; one row per entity row, in input order.
    """
    names = [n for s in sources for n in (*s.out_features, s.timestamp_column)]
    clash = sorted({n for n in names if names.count(n) > 1} | (set(names) & set(entity_df.columns)))
    if clash:
        raise ValueError(f"output column names collide: {clash}")
    con = duckdb_cursor()
    try:
        con.register("__entities", _entity_table(entity_df, entity, event_timestamp))
        joins: list[str] = []
        ent_keys: list[str] = []
        out_cols: list[str] = []
        empty: set[int] = set()
        for i, src in enumerate(sources):
            alias = f"s{i}"
            sql, ent_key = _source_relation(con, src, alias)
            if not sql:
                empty.add(i)
                continue
            joins.append(
                f"ASOF LEFT JOIN ({sql}) {alias} ON e.__key = {alias}.__key AND e.__k{i} >= {alias}.__k"
            )
            ent_keys.append(f", {ent_key} AS __k{i}")
            if src.ttl is None:
                ok = "TRUE"
            else:
                us = int(src.ttl / timedelta(microseconds=1))
                ok = f"{alias}.__fts >= e.__ts - to_microseconds({us})"
            out_cols += [
                f"CASE WHEN {ok} THEN {alias}.{_q(f'__f{j}')} END AS {_q(out)}"
                for j, out in enumerate(src.out_features)
            ]
            out_cols.append(f"CASE WHEN {ok} THEN {alias}.__fts END AS {_q(src.timestamp_column)}")
        query = (
            f"SELECT {', '.join(['e.__row', *out_cols])} "
            f"FROM (SELECT *{''.join(ent_keys)} FROM __entities) e {' '.join(joins)}"
        )
        result = con.sql(query).to_arrow_table()
    finally:
        con.close()
    # back to input order: __row is a permutation of 0..n-1, so invert it (cheaper than a SQL sort)
    rows = result.column("__row").to_numpy()
    order = np.empty_like(rows)
    order[rows] = np.arange(len(rows), dtype=rows.dtype)
    out = entity_df.reset_index(drop=True)
    frame = result.take(order).to_pandas()
    frame.index = out.index
    pieces = [out]
    for i, src in enumerate(sources):
        if i in empty:
            blank = {f: pd.Series([None] * len(out), index=out.index, dtype=object) for f in src.out_features}
            blank[src.timestamp_column] = pd.Series(pd.NaT, index=out.index, dtype="datetime64[us, UTC]")
            pieces.append(pd.DataFrame(blank))
        else:
            pieces.append(frame[[*src.out_features, src.timestamp_column]])
    return pd.concat(pieces, axis=1)


def assert_no_leakage(
    training_set: pd.DataFrame,
    label_time: str,
    ttls: dict[str, timedelta | None] | None = None,
) -> list[dict]:
    """Violations of point-in-time correctness in a joined set; empty when there are none.

    A violation is a row whose ``<view>__feature_timestamp`` is later than its label timestamp
    (future data leaked into the row) or, when ``ttls`` is given, older than the view's TTL.
    """
    if label_time not in training_set.columns:
        raise ValueError(f"training set has no {label_time!r} column")
    labels = pd.to_datetime(training_set[label_time], utc=True)
    violations: list[dict] = []
    for col in [c for c in training_set.columns if c.endswith(TS_SUFFIX)]:
        view = col[: -len(TS_SUFFIX)]
        fts = pd.to_datetime(training_set[col], utc=True)
        checks = [("feature_after_label", (fts > labels).to_numpy(dtype=bool))]
        ttl = (ttls or {}).get(view)
        if ttl is not None:
            checks.append(("feature_older_than_ttl", (fts < labels - ttl).to_numpy(dtype=bool)))
        for kind, mask in checks:
            for pos in np.flatnonzero(mask):
                violations.append(
                    {
                        "row": int(pos),
                        "view": view,
                        "kind": kind,
                        "feature_timestamp": fts.iloc[pos],
                        "label_time": labels.iloc[pos],
                    }
                )
    return violations
