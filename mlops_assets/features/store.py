"""The FeatureStore facade: historical (point-in-time) and online features, catalog, training sets.

Shaped like Feast's: ``get_historical_features(entity_df)``, ``get_online_features(ids)``,
``list_features()``, over the views of a project spec. Values are computed from the views' stored
tiles when read (:mod:`mlops_assets.features.aggregate`). No Dagster here.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from mlops_assets.features import online
from mlops_assets.features.aggregate import ViewValues, event_features, features_from_fold, snapshot_features
from mlops_assets.features.layout import ViewLayout, layouts, select_features
from mlops_assets.features.layout import day_index as _day_index
from mlops_assets.features.layout import day_text as _day_text
from mlops_assets.features.pit import TS_SUFFIX, assert_no_leakage
from mlops_assets.features.tiles import (
    FeatureInputError,
    event_state_at,
    materialize_days,
    read_state,
    snapshot_state_from_source,
    stored_days,
    view_files,
    window_state_rows,
)
from mlops_assets.project import Project
from mlops_assets.storage import frame_hash, partition_glob, write_partition

TRAINING_SET_DIR = "training_set"
_META_KEY = b"mlops_assets.training_set"
_DAY_US = 86_400_000_000


class FeatureDataMissing(FeatureInputError):
    """A read needs days of a view that are not in the offline store."""


def _feature_days(times: pd.Series, what: str) -> np.ndarray:
    """The feature day (index of the UTC midnight at or before each time) of UTC-aware times."""
    if not isinstance(times.dtype, pd.DatetimeTZDtype):
        raise ValueError(f"{what} must be a UTC-aware timestamp column, got {times.dtype}")
    if times.isna().any():
        raise ValueError(f"{what} has null times; every row needs the time its features are read at")
    us = times.dt.tz_convert("UTC").astype("datetime64[us, UTC]").astype("int64").to_numpy()
    return np.floor_divide(us, _DAY_US)


class FeatureStore:
    """Features of a project's views, read point-in-time correct offline and fresh online."""

    def __init__(self, project: Project) -> None:
        self.project = project
        self.paths = project.paths
        self.spec = project.spec
        self.layouts: dict[str, ViewLayout] = layouts(project.spec)
        self._online: online.OnlineStore | None = None
        # (view, day) -> (identity of the file read, its rows): a rewritten day is a new file, read again
        self._tiles: dict[tuple[str, str], tuple[tuple[int, int, int], pa.Table]] = {}
        self._entities: dict[tuple[str, str, str], set] = {}

    # ------------------------------------------------------------------ catalog

    def layout(self, name: str) -> ViewLayout:
        try:
            return self.layouts[name]
        except KeyError:
            raise KeyError(f"no feature view {name!r}; known: {sorted(self.layouts)}") from None

    def list_features(self, search: str | None = None) -> pd.DataFrame:
        """The feature catalog; ``search`` matches feature or view name, tag or owner (case-insensitive)."""
        rows = []
        for name, layout in self.layouts.items():
            view = layout.view
            for fname, feat in view.features.items():
                rows.append(
                    {
                        "reference": f"{name}:{fname}",
                        "view": name,
                        "feature": fname,
                        "dtype": layout.dtype(fname),
                        "aggregation": feat.agg,
                        "window": "lifetime" if feat.window is None else f"{feat.window}d",
                        "column": feat.column or "",
                        "filter": " AND ".join(f for f in (view.filter, feat.filter) if f),
                        "description": feat.description or view.description,
                        "owner": view.owner,
                        "tags": ",".join(dict.fromkeys((*view.tags, *feat.tags))),
                        "ttl": "none" if view.ttl is None else str(view.ttl),
                        "sensitive": feat.sensitive,
                        "entity": view.entity,
                        "source": view.source,
                        "version": layout.version(),
                    }
                )
        frame = pd.DataFrame(rows)
        if search and not frame.empty:
            needle = search.lower()
            hay = (
                frame["feature"] + " " + frame["view"] + " " + frame["owner"] + " " + frame["description"]
            ).str.lower()
            tag_hit = frame["tags"].map(lambda t: any(needle in tag.lower() for tag in t.split(",") if tag))
            frame = frame[hay.str.contains(needle, regex=False) | tag_hit].reset_index(drop=True)
        return frame

    # ------------------------------------------------------------------ offline store

    def materialize(self, days: str | Sequence[str], views: Sequence[str] | None = None) -> dict[str, dict]:
        """Compute and write the given days of the given views (default all); per view, per-day metadata."""
        days = [days] if isinstance(days, str) else list(days)
        names = list(views) if views is not None else list(self.layouts)
        start = self.spec.partitions.start.isoformat()
        return {n: materialize_days(self.layout(n), self.paths, days, start) for n in names}

    def _read_days(self, layout: ViewLayout, days: list[str]) -> pa.Table:
        files = view_files(self.paths, layout.name, days)
        # a re-materialized day is a new file (swapped in whole): a long-lived store must not keep the old one
        identities = {}
        for day in days:
            st = os.stat(files[day])
            identities[day] = (st.st_ino, st.st_mtime_ns, st.st_size)
        unread = [
            day
            for day in days
            if (cached := self._tiles.get((layout.name, day))) is None or cached[0] != identities[day]
        ]
        # many small files: read a few at a time (Parquet decoding releases the GIL)
        with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
            tables = pool.map(lambda day: pq.read_table(files[day], use_threads=False), unread)
            for day, table in zip(unread, tables, strict=True):
                self._tiles[(layout.name, day)] = (identities[day], table.cast(layout.schema))
        parts = [self._tiles[(layout.name, day)][1] for day in days]
        return pa.concat_tables(parts) if parts else layout.schema.empty_table()

    def _needed_days(
        self, layout: ViewLayout, features: list[str], first_q: int, last_q: int
    ) -> tuple[int, int]:
        """Day indexes ``lo .. hi`` of the stored rows a read with feature days ``first_q .. last_q`` needs."""
        start = _day_index(self.spec.partitions.start)
        windows = [layout.feature(f).window for f in features]
        if layout.kind == "snapshot" or any(w is None for w in windows):
            lo = start
        else:
            lo = max(start, first_q - max(windows))
        return lo, last_q - 1

    def _check_stored(self, layout: ViewLayout, lo: int, hi: int, stored: set[str]) -> None:
        missing = [_day_text(d) for d in range(lo, hi + 1) if _day_text(d) not in stored]
        if missing:
            shown = ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else "")
            raise FeatureDataMissing(
                f"feature view {layout.name}: {len(missing)} day(s) needed by this read are not in the offline "
                f"store ({shown}); materialize {layout.name} for them first"
            )

    def _view_values(
        self,
        layout: ViewLayout,
        keys: pa.Array,
        q_days: np.ndarray,
        features: list[str],
        stored: set[str] | None = None,
    ) -> ViewValues:
        """Values of one view; the stored state stands in for every older tile when all queries share a day.

        ``stored``: the view's stored days, when the caller has just listed them."""
        lo, hi = self._needed_days(layout, features, int(q_days.min()), int(q_days.max()))
        stored = set(stored_days(self.paths, layout.name)) if stored is None else stored
        self._check_stored(layout, lo, hi, stored)
        if layout.kind == "snapshot":
            if len(np.unique(q_days)) == 1:
                state_day, state, _ = read_state(self.paths, layout)
                if state_day == _day_text(hi) and state is not None:
                    return snapshot_features(layout, state, keys, q_days, features)
            return snapshot_features(
                layout,
                self._read_days(layout, [_day_text(d) for d in range(lo, hi + 1)]),
                keys,
                q_days,
                features,
            )
        if len(np.unique(q_days)) == 1:
            return self._values_of_one_day(layout, keys, int(q_days[0]), features)
        tiles = self._read_days(layout, [_day_text(d) for d in range(lo, hi + 1)])
        return event_features(layout, tiles, keys, q_days, features)

    def _values_of_one_day(
        self, layout: ViewLayout, keys: pa.Array, q: int, features: list[str]
    ) -> ViewValues:
        """An event view's values at one feature day: the lifetime state and each window's state stand in
        for the tiles they fold; features without a current state are read from the tiles."""
        day = _day_text(q - 1)
        values: dict[str, pa.Array] = {}
        found = np.zeros(len(keys), dtype=bool)
        rest: list[str] = []
        by_window: dict[int | None, list[str]] = {}
        for f in features:
            by_window.setdefault(layout.feature(f).window, []).append(f)
        for window, names in by_window.items():
            if window is None:
                state_day, fold, _ = read_state(self.paths, layout)
                if state_day is None or state_day > day:
                    fold = None
                elif state_day < day:  # folded forward over the days since (not written back)
                    fold = event_state_at(self.paths, layout, day)
            else:
                fold = window_state_rows(self.paths, layout, window, day)
            if fold is None:
                rest += names
                continue
            part = features_from_fold(layout, fold, keys, q, names)
            values.update(part.columns)
            found |= part.found
        if rest:
            start = _day_index(self.spec.partitions.start)
            windows = [layout.feature(f).window for f in rest]
            lo = start if None in windows else max(start, q - max(windows))
            part = event_features(
                layout,
                self._read_days(layout, [_day_text(d) for d in range(lo, q)]),
                keys,
                np.full(len(keys), q),
                rest,
            )
            values.update(part.columns)
            found |= part.found
        return ViewValues({f: values[f] for f in features}, found)

    def _entity_keys(self, frame: pd.DataFrame, column: str, layout: ViewLayout) -> pa.Array:
        values = frame[column]
        if values.isna().any():
            raise ValueError(f"entity column {column!r} has null keys")
        try:
            return pa.array(
                values.astype(str) if pa.types.is_string(layout.entity_type) else values,
                type=layout.entity_type,
            )
        except (pa.ArrowInvalid, pa.ArrowTypeError, ValueError) as exc:
            raise ValueError(
                f"entity column {column!r} cannot be read as {layout.entity_type}: {exc}"
            ) from None

    def get_historical_features(
        self,
        entity_df: pd.DataFrame,
        features: list[str] | None = None,
        timestamp_column: str = "event_timestamp",
    ) -> pd.DataFrame:
        """Point-in-time features for each row of ``entity_df`` (the views' join key + ``timestamp_column``).

        A row gets, per view, the values as of the UTC midnight at or before its time, from records before
        that midnight, and ``<view>__feature_timestamp`` (that midnight; null when the entity had no row of
        the view yet, or the view's newest day is older than its TTL at the row's time). Every row is
        kept, in order; duplicates stay separate rows. ``features`` are ``"view:feature"`` references
        (default: every feature).
        """
        wanted = select_features(self.spec, features)
        if timestamp_column not in entity_df.columns:
            raise ValueError(
                f"entity_df needs a {timestamp_column!r} column; it has {list(entity_df.columns)}"
            )
        out = entity_df.reset_index(drop=True)
        pieces = [out]
        if out.empty:
            for vname, feats in wanted.items():
                layout = self.layout(vname)
                pieces.append(
                    pd.DataFrame({f: pd.Series(dtype=_pandas_dtype(layout.dtype(f))) for f in feats})
                )
                pieces.append(pd.DataFrame({f"{vname}{TS_SUFFIX}": pd.Series(dtype="datetime64[us, UTC]")}))
            return pd.concat(pieces, axis=1)
        times = out[timestamp_column]
        q_all = _feature_days(times, f"entity_df[{timestamp_column!r}]")
        time_us = times.dt.tz_convert("UTC").astype("datetime64[us, UTC]").astype("int64").to_numpy()
        for vname, feats in wanted.items():
            layout = self.layout(vname)
            if layout.entity_key not in out.columns:
                raise ValueError(
                    f"entity_df needs the join key {layout.entity_key!r} of view {vname!r}; it has {list(out.columns)}"
                )
            keys = self._entity_keys(out, layout.entity_key, layout)
            stored = stored_days(self.paths, vname)
            if not stored:
                raise FeatureDataMissing(
                    f"feature view {vname} has no days in the offline store; materialize it first"
                )
            newest = _day_index(stored[-1]) + 1
            q = np.minimum(q_all, newest)  # the newest feature time the store can answer
            values = self._view_values(layout, keys, q, feats, set(stored))
            ft_us = q * _DAY_US
            stale = np.zeros(len(q), dtype=bool)
            if layout.view.ttl is not None:  # the newest stored day is older than the TTL at the row's time
                stale = (time_us - ft_us) > int(layout.view.ttl / timedelta(microseconds=1))
            frame = {}
            for f in feats:
                column = values.columns[f]
                if stale.any():
                    column = pc.if_else(pa.array(stale), pa.nulls(len(column), column.type), column)
                frame[f] = column.to_pandas()
            joined = values.found & ~stale
            frame[f"{vname}{TS_SUFFIX}"] = pd.Series(
                pd.to_datetime(np.where(joined, ft_us, 0), unit="us", utc=True), dtype="datetime64[us, UTC]"
            ).where(joined, pd.NaT)
            pieces.append(pd.DataFrame(frame, index=out.index))
        return pd.concat(pieces, axis=1)

    def features_at(self, day: str, entity_ids: Sequence, features: list[str] | None = None) -> pd.DataFrame:
        """Every given entity's features as of the end of ``day`` (D+1 00:00 UTC): a population's snapshot."""
        feature_time = pd.Timestamp(date.fromisoformat(day) + timedelta(days=1), tz="UTC")
        key = self._single_key(features)
        frame = pd.DataFrame({key: list(entity_ids), "event_timestamp": feature_time})
        return self.get_historical_features(frame, features)

    def _single_key(self, features: list[str] | None) -> str:
        keys = {self.layout(v).entity_key for v in select_features(self.spec, features)}
        if len(keys) != 1:
            raise ValueError(
                f"the requested features belong to entities with different join keys {sorted(keys)}"
            )
        return keys.pop()

    def entities_of_days(self, source: str, key: str, days: Sequence[str]) -> list[set]:
        """The distinct ``key`` values of each of the source's day partitions (read once per store, then cached)."""
        from mlops_assets.features.tiles import source_files

        out = []
        for day, files in source_files(self.paths, source, days).items():
            cache_key = (source, key, day)
            if cache_key not in self._entities:
                found: set = set()
                for f in files:
                    found.update(pc.unique(pq.read_table(f, columns=[key]).column(key)).to_pylist())
                self._entities[cache_key] = found
            out.append(self._entities[cache_key])
        return out

    def known_entities(self, view: str, day: str) -> pa.Array:
        """Entities with a row of ``view`` up to the end of ``day``."""
        layout = self.layout(view)
        if layout.kind == "snapshot":
            state_day, state, _ = read_state(self.paths, layout)
            if state_day != day or state is None:
                state = snapshot_state_from_source(
                    layout,
                    self.paths,
                    (date.fromisoformat(day) + timedelta(days=1)).isoformat(),
                    self.spec.partitions.start.isoformat(),
                )
            return state.column(layout.entity_key).combine_chunks()
        return event_state_at(self.paths, layout, day).column(layout.entity_key).combine_chunks()

    # ------------------------------------------------------------------ online store

    def refresh_online(self, now: datetime | None = None) -> dict[str, dict]:
        """Rebuild the online store: each view's values for every known entity as of its newest stored day."""
        tables = {}
        for name, layout in self.layouts.items():
            stored = stored_days(self.paths, name)
            if not stored:
                tables[name] = (None, pa.table({"entity": pa.array([], pa.string())}))
                continue
            day = stored[-1]
            ids = self.known_entities(name, day)
            feature_time = pd.Timestamp(date.fromisoformat(day) + timedelta(days=1), tz="UTC")
            q = np.full(len(ids), _day_index(day) + 1, dtype=np.int64)
            values = (
                self._view_values(layout, ids, q, list(layout.view.features), set(stored))
                if len(ids)
                else None
            )
            columns = {"entity": pc.cast(ids, pa.string())}
            for f in layout.view.features:
                columns[f] = (
                    values.columns[f] if values is not None else pa.array([], _arrow(layout.dtype(f)))
                )
            tables[name] = (feature_time.to_pydatetime(), pa.table(columns))
        return online.refresh(self.layouts, tables, self.paths, now or datetime.now(UTC))

    def online_store(self) -> online.OnlineStore:
        if self._online is None:
            self._online = online.OnlineStore(self.paths, self.spec)
        return self._online

    def get_online_features(
        self, entity_ids: Sequence, features: list[str] | None = None, now: datetime | None = None
    ) -> pd.DataFrame:
        """Latest served values per entity, with ``<view>__status`` (fresh / expired / missing) and ``__feature_timestamp``."""
        return self.online_store().read(list(entity_ids), features, now)

    def get_online_features_dict(
        self, entity_ids: Sequence, features: list[str] | None = None, now: datetime | None = None
    ) -> dict[str, list]:
        return self.online_store().read_dict(list(entity_ids), features, now)

    # ------------------------------------------------------------------ labels and training sets

    @property
    def label_columns(self) -> tuple[str, str, str]:
        """(entity key, the time features are read at, target column) of the project's labels."""
        target = self.project.spec.target
        if target is None:
            raise ValueError(f"spec {self.spec.name!r} declares no target")
        return self.project.target_entity.join_key, self.project.target_timestamp, target.column

    @property
    def observed_column(self) -> str:
        """When each label became known: the labels source's timestamp (the same as the feature time, or later)."""
        return self.project.source(self.project.spec.target.source).timestamp

    def load_labels(self, days: Sequence[str] | None = None) -> pd.DataFrame:
        """Label rows of the target's source (the partitions of ``days``, default all), in time order."""
        key, ts, column = self.label_columns
        source = self.spec.target.source
        table_dir = self.paths.table_dir(source)
        if days is None:
            files = [str(p) for p in sorted(table_dir.glob("date=*/*.parquet"))] if table_dir.is_dir() else []
        else:
            files = partition_glob(table_dir, days)
        contract = self.project.contract(source)
        wanted = list(dict.fromkeys([key, ts, column, self.observed_column]))
        if not files:
            return contract.schema.empty_table().select(wanted).to_pandas()
        frame = pa.concat_tables([pq.read_table(f, columns=wanted) for f in files]).to_pandas()
        return frame.sort_values([ts, key], kind="stable").reset_index(drop=True)

    def build_training_set(
        self, labels_df: pd.DataFrame | None = None, features: list[str] | None = None
    ) -> tuple[pd.DataFrame, dict]:
        """Labels joined point-in-time to the features, plus metadata (rows, label rate, nulls, hash)."""
        key, ts, column = self.label_columns
        labels = self.load_labels() if labels_df is None else labels_df
        wanted = list(dict.fromkeys([key, ts, column, self.observed_column]))
        missing = [c for c in wanted if c not in labels.columns]
        if missing:
            raise ValueError(f"labels need columns {wanted}; missing {missing}")
        frame = self.get_historical_features(labels[wanted], features, timestamp_column=ts)
        return frame, self.training_set_metadata(frame)

    def training_set_metadata(self, frame: pd.DataFrame) -> dict:
        """Rows, label rate (or mean), per-feature null rates, time range, content hash, leakage count."""
        key, ts, column = self.label_columns
        feature_cols = [
            c
            for c in frame.columns
            if c not in (key, ts, column, self.observed_column) and not c.endswith(TS_SUFFIX)
        ]
        ttls = {n: v.view.ttl for n, v in self.layouts.items()}
        times = frame[ts]
        target = pd.to_numeric(frame[column], errors="coerce") if len(frame) else pd.Series(dtype=float)
        empty_views = [
            v
            for v in self.layouts
            if f"{v}{TS_SUFFIX}" in frame.columns and len(frame) and frame[f"{v}{TS_SUFFIX}"].isna().all()
        ]
        return {
            "rows": len(frame),
            "label_rate": float(target.mean()) if len(frame) else None,
            "null_rates": {c: float(frame[c].isna().mean()) if len(frame) else 0.0 for c in feature_cols},
            "time_min": None if frame.empty else times.min().isoformat(),
            "time_max": None if frame.empty else times.max().isoformat(),
            "content_hash": frame_hash(frame),
            "view_versions": {n: v.version() for n, v in self.layouts.items()},
            "leakage_violations": len(assert_no_leakage(frame, ts, ttls)),
            "views_without_rows": empty_views,
        }

    def training_set_dir(self) -> Path:
        return self.paths.warehouse / TRAINING_SET_DIR

    def write_training_set(self, frame: pd.DataFrame, metadata: dict) -> Path:
        """Write the training set atomically, its metadata inside the Parquet file's schema."""
        table = pa.Table.from_pandas(frame, preserve_index=False)
        table = table.replace_schema_metadata(
            {**(table.schema.metadata or {}), _META_KEY: json.dumps(metadata, default=str).encode()}
        )
        return write_partition(table, self.training_set_dir())

    def read_training_set(self) -> tuple[pd.DataFrame, dict]:
        """The stored training set and its metadata."""
        path = self.training_set_dir() / "part-0.parquet"
        if not path.exists():
            raise FileNotFoundError(f"no training set at {path}; materialize training_set first")
        table = pq.read_table(path)
        meta = json.loads((table.schema.metadata or {}).get(_META_KEY, b"{}"))
        return table.to_pandas(), meta


def _arrow(dtype: str) -> pa.DataType:
    return {"int64": pa.int64(), "float64": pa.float64(), "string": pa.string(), "bool": pa.bool_()}[dtype]


def _pandas_dtype(dtype: str) -> str:
    return {"int64": "int64", "float64": "float64", "string": "object", "bool": "bool"}[dtype]
