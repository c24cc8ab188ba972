"""The FeatureStore facade: historical (point-in-time) and online features, catalog, training sets."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime, timedelta
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from mlops_assets.features import online
from mlops_assets.features.compute import feature_files, materialize_view
from mlops_assets.features.pit import TS_SUFFIX, FeatureSource, assert_no_leakage, point_in_time_join
from mlops_assets.features.views import FEATURE_VIEWS, FeatureView, resolve_features, validate_views
from mlops_assets.settings import data_paths
from mlops_assets.storage import frame_hash, partition_glob, write_partition

LABEL_COLUMNS = ("customer_id", "label_timestamp", "churned")
TRAINING_SET_DIR = "training_set"
_META_KEY = b"mlops_assets.training_set"


class FeatureStore:
    """Features defined once, read point-in-time correct offline and fresh online.

    ``FeatureStore()`` uses the project's data folder (``$MLOPS_DATA_DIR`` or ``<project>/data``).
    """

    def __init__(
        self, data_dir: str | Path | None = None, views: Sequence[FeatureView] = FEATURE_VIEWS
    ) -> None:
        self.paths = data_paths(data_dir)
        self.views = tuple(views)
        validate_views(self.views)
        self._by_name = {v.name: v for v in self.views}
        self._online: online.OnlineStore | None = None

    def get_view(self, name: str) -> FeatureView:
        """The view called ``name``."""
        try:
            return self._by_name[name]
        except KeyError:
            raise KeyError(f"no feature view {name!r}; known: {sorted(self._by_name)}") from None

    def _sources(self, features: list[str] | None, times: pd.Series | None = None) -> list[FeatureSource]:
        """One source per view; with the entity times, only the partitions that can qualify are read.

        Partition D holds rows stamped D+1 00:00 UTC, so a row can join an entity time t only when
        D < t and (with a TTL) D + 1 day >= t - TTL: days outside [min(t) - TTL - 1 day, max(t)] are skipped.
        """
        wanted = resolve_features(features, self.views)
        first = last = None
        if (
            times is not None
            and len(times)
            and pd.api.types.is_datetime64_any_dtype(times)
            and times.notna().all()
        ):
            first, last = times.min(), times.max()
        sources = []
        for name, feats in wanted.items():
            view = self.get_view(name)
            first_day = last_day = None
            if last is not None:
                last_day = last.date().isoformat()
                if view.ttl is not None:
                    first_day = (first - view.ttl - timedelta(days=1)).date().isoformat()
            files = feature_files(self.paths, name, first_day, last_day)
            sources.append(FeatureSource(name, files, feats, ttl=view.ttl, entity=view.entity))
        return sources

    def get_historical_features(
        self,
        entity_df: pd.DataFrame,
        features: list[str] | None = None,
        timestamp_column: str = "event_timestamp",
    ) -> pd.DataFrame:
        """Point-in-time features for each row of ``entity_df`` (``customer_id`` + ``event_timestamp``).

        Returns one row per entity row, in order: ``entity_df``'s columns, then per view its
        requested features and ``<view>__feature_timestamp`` (the time of the joined feature row;
        null when none was within the view's TTL). ``features`` are ``"view:feature"`` strings
        (default: every feature).
        """
        times = entity_df[timestamp_column] if timestamp_column in entity_df.columns else None
        return point_in_time_join(entity_df, self._sources(features, times), event_timestamp=timestamp_column)

    def get_online_features(
        self, entity_ids: Sequence[str], features: list[str] | None = None, now: datetime | None = None
    ) -> pd.DataFrame:
        """Latest served values per entity, with ``<view>__status`` (ok / expired / missing)."""
        return self.online_store().read(list(entity_ids), features, now)

    def get_online_features_dict(
        self, entity_ids: Sequence[str], features: list[str] | None = None, now: datetime | None = None
    ) -> dict[str, list]:
        """Like :meth:`get_online_features` as ``{column: [values]}``: the low-latency path for serving."""
        return self.online_store().read_dict(list(entity_ids), features, now)

    def online_store(self) -> online.OnlineStore:
        """The open online-store reader (for low-latency single lookups)."""
        if self._online is None:
            self._online = online.OnlineStore(self.paths, self.views)
        return self._online

    def list_features(self, search: str | None = None) -> pd.DataFrame:
        """The feature catalog; ``search`` matches feature or view name, tag or owner (case-insensitive)."""
        rows = []
        for view in self.views:
            for feat in view.features:
                rows.append(
                    {
                        "reference": f"{view.name}:{feat.name}",
                        "view": view.name,
                        "feature": feat.name,
                        "dtype": feat.dtype,
                        "aggregation": feat.aggregation,
                        "window_days": feat.window_days,
                        "description": feat.description,
                        "owner": view.owner,
                        "tags": ",".join(dict.fromkeys((*view.tags, *feat.tags))),
                        "ttl": None if view.ttl is None else str(view.ttl),
                        "sensitive": feat.sensitive,
                        "version": view.version(),
                    }
                )
        frame = pd.DataFrame(rows)
        if search:
            needle = search.lower()
            hay = (frame["feature"] + " " + frame["view"] + " " + frame["owner"]).str.lower()
            tag_hit = frame["tags"].map(lambda t: any(needle in tag.lower() for tag in t.split(",") if tag))
            frame = frame[hay.str.contains(needle, regex=False) | tag_hit].reset_index(drop=True)
        return frame

    def build_training_set(
        self, labels_df: pd.DataFrame, features: list[str] | None = None
    ) -> tuple[pd.DataFrame, dict]:
        """Labels joined point-in-time to the features, plus metadata (rows, label rate, nulls, hash).

        ``labels_df`` has ``customer_id``, ``label_timestamp``, ``churned``; every label row is
        kept, in order, even when no feature qualifies.
        """
        missing = [c for c in LABEL_COLUMNS if c not in labels_df.columns]
        if missing:
            raise ValueError(f"labels need columns {list(LABEL_COLUMNS)}; missing {missing}")
        labels = labels_df[list(LABEL_COLUMNS)]
        frame = self.get_historical_features(labels, features, timestamp_column="label_timestamp")
        return frame, self.training_set_metadata(frame)

    def training_set_metadata(self, frame: pd.DataFrame) -> dict:
        """Rows, label rate, per-feature null rates, time range, content hash, leakage count."""
        feature_cols = [c for c in frame.columns if c not in LABEL_COLUMNS and not c.endswith(TS_SUFFIX)]
        ttls = {v.name: v.ttl for v in self.views}
        times = frame["label_timestamp"]
        return {
            "rows": len(frame),
            "label_rate": float(frame["churned"].mean()) if len(frame) else None,
            "null_rates": {c: float(frame[c].isna().mean()) if len(frame) else 0.0 for c in feature_cols},
            "time_min": None if frame.empty else times.min().isoformat(),
            "time_max": None if frame.empty else times.max().isoformat(),
            "content_hash": frame_hash(frame),
            "view_versions": {v.name: v.version() for v in self.views},
            "leakage_violations": len(assert_no_leakage(frame, "label_timestamp", ttls)),
        }

    def materialize(self, day: str, views: Sequence[str] | None = None) -> dict[str, dict]:
        """Compute and write day ``day`` of the given views (default all) to the offline store."""
        names = list(views) if views is not None else [v.name for v in self.views]
        return {name: materialize_view(self.get_view(name), day, self.paths) for name in names}

    def refresh_online(self, now: datetime | None = None) -> dict[str, dict]:
        """Rebuild the online store from the offline store (atomic swap)."""
        return online.refresh(self.views, self.paths, now)

    def load_labels(self, days: Sequence[str] | None = None) -> pd.DataFrame:
        """Label rows from the ``raw_labels`` partitions of ``days`` (default: every partition), in time order."""
        table_dir = self.paths.table_dir("raw_labels")
        if days is None:
            files = [str(p) for p in sorted(table_dir.glob("date=*/*.parquet"))] if table_dir.is_dir() else []
        else:
            files = partition_glob(table_dir, days)
        if not files:
            return pd.DataFrame(
                {
                    "customer_id": pd.Series(dtype="str"),
                    "label_timestamp": pd.Series(dtype="datetime64[us, UTC]"),
                    "churned": pd.Series(dtype="int8"),
                }
            )
        frame = pa.concat_tables([pq.read_table(f) for f in files]).to_pandas()
        return frame.sort_values(["label_timestamp", "customer_id"], kind="stable").reset_index(drop=True)

    def training_set_dir(self) -> Path:
        """Where the training set is stored: ``<warehouse>/training_set``."""
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
            raise FileNotFoundError(f"no training set at {path}; build one first")
        table = pq.read_table(path)
        meta = json.loads((table.schema.metadata or {}).get(_META_KEY, b"{}"))
        return table.to_pandas(), meta
