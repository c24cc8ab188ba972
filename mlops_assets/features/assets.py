"""Feature-store assets: one daily asset per feature view, the training set, the online store."""

import hashlib
import time

import dagster as dg

from mlops_assets.features.compute import materialize_range
from mlops_assets.features.pit import assert_no_leakage
from mlops_assets.features.store import FeatureStore
from mlops_assets.features.views import FEATURE_VIEWS, FeatureView
from mlops_assets.partitions import daily_partitions
from mlops_assets.resources import DataDirResource
from mlops_assets.storage import combine_hashes

TRAINING_LOGIC_VERSION = "1"
ONLINE_LOGIC_VERSION = "1"
LEAKAGE_CHECK = "no_feature_after_label"
_DTYPES = {"int64": "int64", "float64": "float64", "string": "string"}


def view_column_schema(view: FeatureView) -> dg.TableSchema:
    """The view's columns with per-feature descriptions (the searchable catalog)."""
    columns = [
        dg.TableColumn(
            view.entity,
            "string",
            description="Entity key.",
            constraints=dg.TableColumnConstraints(nullable=False, unique=True),
        ),
        dg.TableColumn(
            "feature_timestamp",
            "timestamp[us, UTC]",
            description="When the values are as of: D+1 00:00 UTC for partition D.",
        ),
    ]
    columns += [
        dg.TableColumn(f.name, _DTYPES[f.dtype], description=f.description, tags={t: "" for t in f.tags})
        for f in view.features
    ]
    return dg.TableSchema(columns=columns)


def source_dep(view: FeatureView) -> dg.AssetDep:
    """The view's source table with a lookback partition mapping (all days up to D without a lookback)."""
    offset = -(view.lookback_days - 1) if view.lookback_days is not None else -3650
    return dg.AssetDep(
        view.source,
        partition_mapping=dg.TimeWindowPartitionMapping(
            start_offset=offset, end_offset=0, allow_nonexistent_upstream_partitions=True
        ),
    )


def build_feature_view_asset(view: FeatureView) -> dg.AssetsDefinition:
    """A daily-partitioned asset computing one feature view into the offline store."""

    @dg.asset(
        name=view.name,
        group_name="features",
        description=view.description,
        partitions_def=daily_partitions,
        backfill_policy=dg.BackfillPolicy.single_run(),
        code_version=view.version(),
        deps=[source_dep(view)],
        owners=[f"team:{view.owner}"],
        tags={t: "" for t in view.tags},
        kinds={"duckdb", "parquet"},
        metadata={
            "dagster/column_schema": view_column_schema(view),
            "ttl": "none" if view.ttl is None else str(view.ttl),
            "lookback_days": view.lookback_days if view.lookback_days is not None else "all",
            "offline_path": f"data/warehouse/features/{view.name}/date=YYYY-MM-DD/",
        },
    )
    def _view(context: dg.AssetExecutionContext, data: DataDirResource) -> dg.MaterializeResult:
        days = list(context.partition_keys)
        started = time.monotonic()
        step = max(1, len(days) // 10)

        def progress(day: str, done: int, total: int) -> None:
            if done % step == 0 or done == total:
                context.log.info(
                    f"{view.name}: {done}/{total} days written (last {day}), "
                    f"{time.monotonic() - started:.1f}s"
                )

        # one read of the sources for the whole range; each partition equals the per-day computation
        metas = materialize_range(view, days, data.paths, progress=progress)
        hashes = []
        for day in days:
            meta = metas[day]
            hashes.append(meta["content_hash"])
            context.add_asset_metadata(
                {
                    "dagster/row_count": meta["rows"],
                    "content_hash": meta["content_hash"],
                    "source_files": meta["source_files"],
                    "null_rates": dg.MetadataValue.json(meta["null_rates"]),
                },
                partition_key=day,
            )
        version = hashes[0] if len(hashes) == 1 else combine_hashes(hashes)
        return dg.MaterializeResult(data_version=dg.DataVersion(version))

    return _view


feature_view_assets = [build_feature_view_asset(v) for v in FEATURE_VIEWS]
_ALL_VERSIONS = hashlib.sha256("".join(v.version() for v in FEATURE_VIEWS).encode()).hexdigest()[:12]


@dg.asset(
    group_name="features",
    description="Every label joined point-in-time to every feature view (within each view's TTL); "
    "no label row is dropped.",
    deps=[*(v.name for v in FEATURE_VIEWS), "raw_labels"],
    code_version=f"training-set-v{TRAINING_LOGIC_VERSION}-{_ALL_VERSIONS}",
    kinds={"duckdb", "parquet"},
    metadata={"path": "data/warehouse/training_set/part-0.parquet"},
    check_specs=[
        dg.AssetCheckSpec(
            LEAKAGE_CHECK,
            asset="training_set",
            blocking=True,
            description="No feature row is later than its label (nor older than its view's TTL).",
        )
    ],
)
def training_set(data: DataDirResource) -> dg.MaterializeResult:
    """Build and store the training set with its metadata."""
    store = FeatureStore(data.paths.root)
    frame, meta = store.build_training_set(store.load_labels())
    store.write_training_set(frame, meta)
    violations = assert_no_leakage(frame, "label_timestamp", {v.name: v.ttl for v in store.views})
    return dg.MaterializeResult(
        data_version=dg.DataVersion(meta["content_hash"]),
        metadata={
            "dagster/row_count": meta["rows"],
            "label_rate": meta["label_rate"],
            "time_min": meta["time_min"] or "",
            "time_max": meta["time_max"] or "",
            "content_hash": meta["content_hash"],
            "null_rates": dg.MetadataValue.json(meta["null_rates"]),
        },
        check_results=[
            dg.AssetCheckResult(
                check_name=LEAKAGE_CHECK,
                passed=not violations,
                metadata={
                    "violations": len(violations),
                    "first": dg.MetadataValue.json(
                        [{k: str(v) for k, v in x.items()} for x in violations[:5]]
                    ),
                },
            )
        ],
    )


@dg.asset(
    group_name="features",
    description="Latest feature row per customer per view in the SQLite online store, swapped in atomically.",
    deps=[v.name for v in FEATURE_VIEWS],
    code_version=f"online-v{ONLINE_LOGIC_VERSION}-{_ALL_VERSIONS}",
    kinds={"sqlite"},
    automation_condition=dg.AutomationCondition.eager(),
    metadata={"path": "data/online/online_store.db"},
)
def online_features(data: DataDirResource) -> dg.MaterializeResult:
    """Refresh the online store from the offline partitions."""
    store = FeatureStore(data.paths.root)
    meta = store.refresh_online()
    return dg.MaterializeResult(
        data_version=dg.DataVersion(
            combine_hashes(f"{k}:{v['rows']}:{v['version']}" for k, v in sorted(meta.items()))
        ),
        metadata={"rows_per_view": dg.MetadataValue.json({k: v["rows"] for k, v in meta.items()})},
    )


feature_assets = [*feature_view_assets, training_set, online_features]
