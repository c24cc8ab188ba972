"""Feature-store assets: one daily asset per feature view, the training set, the online store."""

import hashlib
import time
from collections.abc import Callable

import dagster as dg

from mlops_assets.agreement import require_inputs
from mlops_assets.features.layout import ViewLayout, layouts
from mlops_assets.features.pit import assert_no_leakage
from mlops_assets.features.store import FeatureStore
from mlops_assets.features.tiles import (
    FeatureInputError,
    drop_state,
    materialize_days,
    partition_path,
    stored_days,
)
from mlops_assets.ingestion.manifest import manifest_days, partition_fingerprint
from mlops_assets.project import Project
from mlops_assets.resources import DataDirResource, runtime_project
from mlops_assets.settings import DataPaths
from mlops_assets.storage import Rollback, combine_hashes

TRAINING_LOGIC_VERSION = "2"
ONLINE_LOGIC_VERSION = "2"
LEAKAGE_CHECK = "no_feature_after_label"
_DTYPES = {"int64": "int64", "float64": "float64", "string": "string", "bool": "bool"}


def view_column_schema(layout: ViewLayout) -> dg.TableSchema:
    """The view's features with their descriptions, types and tags (the searchable catalog)."""
    columns = [
        dg.TableColumn(
            layout.entity_key,
            str(layout.entity_type),
            description=f"Join key of entity {layout.view.entity}.",
            constraints=dg.TableColumnConstraints(nullable=False),
        )
    ]
    for name, feat in layout.view.features.items():
        window = "lifetime" if feat.window is None else f"{feat.window}d"
        what = (
            f"{feat.agg}({feat.column or '*'}) over {window}"
            if layout.kind == "events"
            else f"{feat.agg}({feat.column})"
        )
        if feat.filter:
            what += f" where {feat.filter}"
        columns.append(
            dg.TableColumn(
                name,
                _DTYPES[layout.dtype(name)],
                description=(feat.description + " — " if feat.description else "") + what,
                tags={t: "" for t in feat.tags},
            )
        )
    return dg.TableSchema(columns=columns)


def source_dep(layout: ViewLayout, project: Project) -> dg.AssetDep:
    """Day D of an event view reads its source's day D; a snapshot view reads every day up to D."""
    if layout.kind == "events":
        return dg.AssetDep(layout.source_name)
    return dg.AssetDep(
        layout.source_name,
        partition_mapping=dg.TimeWindowPartitionMapping(
            start_offset=-(len(project.partition_days()) + 3650),
            end_offset=0,
            allow_nonexistent_upstream_partitions=True,
        ),
    )


def build_feature_view_asset(
    project: Project, layout: ViewLayout, partitions: dg.PartitionsDefinition
) -> dg.AssetsDefinition:
    """A daily-partitioned asset writing one view's tiles (or change rows) into the offline store."""
    view = layout.view
    stored = (
        "tiles: one row per entity with records on the day"
        if layout.kind == "events"
        else ("change rows: one row per entity whose latest record changed on the day")
    )

    @dg.asset(
        name=layout.name,
        group_name="features",
        description=(view.description or f"Features of {view.entity} from {view.source}.")
        + f" Stores {stored}.",
        partitions_def=partitions,
        backfill_policy=dg.BackfillPolicy.single_run(),
        code_version=layout.version(),
        deps=[source_dep(layout, project)],
        owners=[f"team:{view.owner}"] if view.owner else None,
        tags={t: "" for t in view.tags},
        kinds={"duckdb", "parquet"},
        metadata={
            "dagster/column_schema": view_column_schema(layout),
            "entity": view.entity,
            "filter": view.filter or "none",
            "ttl": "none" if view.ttl is None else str(view.ttl),
            "offline_path": f"warehouse/features/{layout.name}/date=YYYY-MM-DD/",
        },
    )
    def _view(context: dg.AssetExecutionContext, data: DataDirResource) -> dg.MaterializeResult:
        paths = runtime_project(project, data).paths
        days = list(context.partition_keys)
        started = time.monotonic()
        step = max(1, len(days) // 10)

        def progress(day: str, done: int, total: int) -> None:
            if done % step == 0 or done == total:
                context.log.info(
                    f"{layout.name}: {done}/{total} days written (last {day}), {time.monotonic() - started:.1f}s"
                )

        last = days[-1]
        source_days = days if layout.kind == "events" else [d for d in project.partition_days() if d <= last]
        require_inputs(
            context,
            paths,
            sources={layout.source_name: source_days},
            step=f"feature view {layout.name} {days[0]}" + (f"..{last}" if len(days) > 1 else ""),
        )
        metas = _materialize_or_restore(context, layout, paths, days, project, progress)
        for day in days:
            meta = metas[day]
            context.add_asset_metadata(
                {
                    "dagster/row_count": meta["rows"],
                    "entities": meta["entities"],
                    "content_hash": meta["content_hash"],
                    "source_files": meta["source_files"],
                    "partition_files": dg.MetadataValue.json(
                        partition_fingerprint(partition_path(paths, layout.name, day)) or {}
                    ),
                },
                partition_key=day,
            )
        empty = [d for d in days if metas[d]["rows"] == 0]
        if empty:
            context.log.warning(
                f"{layout.name}: {len(empty)} of {len(days)} day(s) have no record of source {layout.source_name} "
                f"passing the view's filter (first: {empty[0]})"
            )
        hashes = [metas[d]["content_hash"] for d in days]
        return dg.MaterializeResult(
            data_version=dg.DataVersion(hashes[0] if len(hashes) == 1 else combine_hashes(hashes))
        )

    return _view


def _materialize_or_restore(
    context: dg.AssetExecutionContext,
    layout: ViewLayout,
    paths: DataPaths,
    days: list[str],
    project: Project,
    progress: Callable[[str, int, int], None],
) -> dict[str, dict]:
    """Write the view's days; if that fails, put back every day already written (and drop the view's state,
    a cache rebuilt from the tiles), so nothing the run did not record stays on disk."""
    rollback = Rollback()
    try:
        for day in days:
            rollback.save(partition_path(paths, layout.name, day))
        try:
            return materialize_days(layout, paths, days, project.spec.partitions.start.isoformat(), progress)
        except BaseException as exc:
            written = [p.name.removeprefix("date=") for p in rollback.changed()]
            restored, problems = rollback.restore()
            if written:
                drop_state(paths, layout.name)
                context.log.error(
                    f"{layout.name}: failed ({type(exc).__name__}: {exc}); {len(restored)} of the {len(written)} "
                    f"day(s) it had written were restored to their previous content"
                    + (
                        f"; NOT restored (run `mlops reconcile`): {'; '.join(problems[:5])}"
                        if problems
                        else ""
                    )
                )
            if isinstance(exc, FeatureInputError):
                raise dg.Failure(str(exc)) from exc
            raise
    finally:
        rollback.close()


def require_store_inputs(
    context: dg.AssetExecutionContext, project: Project, sources: list[str], until: str | None, step: str
) -> None:
    """Fail unless every stored day (up to ``until``) of the given sources and of every view agrees with
    the materializations Dagster recorded (see :func:`mlops_assets.agreement.require_inputs`)."""
    paths = project.paths
    source_days = {
        s: [d for d in manifest_days(paths, s) if until is None or d <= until] for s in dict.fromkeys(sources)
    }
    views = {
        v: (
            lambda day, v=v: partition_path(paths, v, day),
            [d for d in stored_days(paths, v) if until is None or d <= until],
        )
        for v in project.view_names
    }
    require_inputs(context, paths, sources=source_days, views=views, step=step)


def _versions(project: Project) -> str:
    """What reading the views returns depends on: their stored definitions and their TTLs."""
    joined = "".join(v.read_version() for v in layouts(project.spec).values())
    return hashlib.sha256(joined.encode()).hexdigest()[:12]


def build_training_set_asset(project: Project) -> dg.AssetsDefinition:
    target = project.spec.target
    ts = project.target_timestamp

    @dg.asset(
        name="training_set",
        group_name="features",
        description=f"Every label of {target.source}.{target.column} joined point-in-time to every feature view "
        "(values as of the UTC midnight before the label, within each view's TTL); no label row is dropped.",
        deps=[*project.view_names, target.source],
        code_version=f"training-set-v{TRAINING_LOGIC_VERSION}-{_versions(project)}",
        kinds={"duckdb", "parquet"},
        metadata={"path": "warehouse/training_set/part-0.parquet"},
        check_specs=[
            dg.AssetCheckSpec(
                LEAKAGE_CHECK,
                asset="training_set",
                blocking=True,
                description="No feature row is later than its label (nor older than its view's TTL).",
            )
        ],
    )
    def training_set(context: dg.AssetExecutionContext, data: DataDirResource) -> dg.MaterializeResult:
        current = runtime_project(project, data)
        require_store_inputs(context, current, [target.source], None, "training_set")
        store = FeatureStore(current)
        try:
            frame, meta = store.build_training_set()
        except FeatureInputError as exc:
            raise dg.Failure(str(exc)) from exc
        if meta["rows"] == 0:
            raise dg.Failure(f"no label rows in {target.source}; ingest its landing files first")
        store.write_training_set(frame, meta)
        for view in meta["views_without_rows"]:
            context.log.warning(
                f"feature view {view} has no row for any label (source {project.view(view).source} holds no "
                "matching records before the labels): its features carry no information"
            )
        violations = assert_no_leakage(frame, ts, {n: v.view.ttl for n, v in store.layouts.items()})
        null_table = "| feature | null rate |\n|---|---:|\n" + "\n".join(
            f"| {k} | {v:.3f} |" for k, v in sorted(meta["null_rates"].items(), key=lambda kv: -kv[1])
        )
        return dg.MaterializeResult(
            data_version=dg.DataVersion(meta["content_hash"]),
            metadata={
                "dagster/row_count": meta["rows"],
                "label_rate" if target.task == "binary_classification" else "label_mean": round(
                    meta["label_rate"], 4
                ),
                "time_min": meta["time_min"] or "",
                "time_max": meta["time_max"] or "",
                "content_hash": meta["content_hash"],
                "views_without_rows": dg.MetadataValue.json(meta["views_without_rows"]),
                "null_rates": dg.MetadataValue.md(null_table),
            },
            check_results=[
                dg.AssetCheckResult(
                    check_name=LEAKAGE_CHECK,
                    passed=not violations,
                    description=f"{len(violations)} point-in-time violation(s) in {len(frame)} rows",
                    metadata={
                        "violations": len(violations),
                        "first": dg.MetadataValue.json(
                            [{k: str(v) for k, v in x.items()} for x in violations[:5]]
                        ),
                    },
                )
            ],
        )

    return training_set


def build_online_asset(project: Project) -> dg.AssetsDefinition:
    @dg.asset(
        name="online_features",
        group_name="features",
        description="Each view's feature values for every known entity as of its newest stored day, in the "
        "SQLite online store, swapped in atomically.",
        deps=project.view_names,
        code_version=f"online-v{ONLINE_LOGIC_VERSION}-{_versions(project)}",
        kinds={"sqlite"},
        automation_condition=dg.AutomationCondition.eager(),
        metadata={"path": "online/online_store.db"},
    )
    def online_features(context: dg.AssetExecutionContext, data: DataDirResource) -> dg.MaterializeResult:
        store = FeatureStore(runtime_project(project, data))
        meta = store.refresh_online()
        lines = ["| view | entities | feature time |", "|---|---:|---|"]
        lines += [f"| {k} | {v['rows']} | {v['feature_time'] or 'no data'} |" for k, v in meta.items()]
        for view, item in meta.items():
            if item["feature_time"] is None:
                context.log.warning(
                    f"online store: view {view} has no stored day; its features read as missing"
                )
        return dg.MaterializeResult(
            data_version=dg.DataVersion(
                combine_hashes(
                    f"{k}:{v['rows']}:{v['version']}:{v['feature_time']}" for k, v in sorted(meta.items())
                )
            ),
            metadata={"views": dg.MetadataValue.md("\n".join(lines))},
        )

    return online_features


def build_feature_assets(project: Project, partitions: dg.PartitionsDefinition) -> list[dg.AssetsDefinition]:
    views = [
        build_feature_view_asset(project, layout, partitions) for layout in layouts(project.spec).values()
    ]
    assets = [*views]
    if project.view_names:
        assets.append(build_online_asset(project))
        if project.spec.target is not None:
            assets.append(build_training_set_asset(project))
    return assets
