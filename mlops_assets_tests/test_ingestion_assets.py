"""Ingestion assets in Dagster: per-partition metadata, blocking gates, ranges in one run, and a schema check that
names every entry of the landing folder it did not read."""

from __future__ import annotations

import dagster as dg
import pandas as pd

from mlops_assets.ingestion.assets import QUARANTINE_CHECK, SCHEMA_CHECK, build_ingestion_assets
from mlops_assets.partitions import daily_partitions
from mlops_assets.project import Project
from mlops_assets.resources import DataDirResource
from mlops_assets_tests.conftest import RANGE_END_TAG, RANGE_START_TAG, events_frame, write_events

DAYS = ["2026-01-01", "2026-01-02", "2026-01-03"]


def _assets(project: Project) -> tuple[dg.AssetsDefinition, dg.AssetsDefinition]:
    """The raw_events asset of the project (partitions end at the last landing day) and a downstream stand-in."""
    partitions = daily_partitions(project)
    [raw_events] = [
        a for a in build_ingestion_assets(project, partitions) if a.key == dg.AssetKey("raw_events")
    ]

    @dg.asset(deps=["raw_events"], partitions_def=partitions, backfill_policy=dg.BackfillPolicy.single_run())
    def downstream_of_events() -> None:
        """Stands in for a feature view: it must never run on data that failed a gate."""

    return raw_events, downstream_of_events


def _run(project: Project, *, days=DAYS, downstream: bool = False, run_config=None):
    raw_events, downstream_of_events = _assets(project)
    return dg.materialize(
        [raw_events, downstream_of_events] if downstream else [raw_events],
        instance=dg.DagsterInstance.ephemeral(),
        resources={"data": DataDirResource(root=str(project.paths.root))},
        tags={RANGE_START_TAG: days[0], RANGE_END_TAG: days[-1]},
        run_config=run_config,
        raise_on_error=False,
    )


def _checks(result):
    return {e.check_name: e for e in result.get_asset_check_evaluations()}


def test_a_range_is_one_run_with_exact_metadata_per_day(churn):
    for i, day in enumerate(DAYS):
        frame = events_frame(day, n=30 + i)
        if day == "2026-01-02":
            frame.loc[0, "amount"] = -3.0
        write_events(churn.paths, day, frame)
    result = _run(churn)
    assert result.success
    mats = {m.partition: m for m in result.asset_materializations_for_node("raw_events")}
    assert sorted(mats) == DAYS
    for i, day in enumerate(DAYS):
        meta = mats[day].metadata
        assert meta["rows_read"].value == 30 + i
        assert meta["rows_read"].value == meta["rows_kept"].value + meta["rows_quarantined"].value
        assert meta["dagster/row_count"].value == meta["rows_kept"].value
        stored = pd.read_parquet(churn.paths.partition_dir("raw_events", day))
        assert len(stored) == meta["rows_kept"].value
    assert mats["2026-01-02"].metadata["rows_quarantined"].value == 1
    assert "below_minimum:amount" in mats["2026-01-02"].metadata["quarantined_by_reason"].value
    checks = _checks(result)
    assert checks[SCHEMA_CHECK].passed and checks[QUARANTINE_CHECK].passed


def test_quarantine_gate_stops_downstream_in_the_same_run(churn):
    for day in DAYS:
        frame = events_frame(day, n=40)
        if day == "2026-01-03":
            frame.loc[:3, "customer_id"] = None  # 4 of 40 = 10% > 5%
        write_events(churn.paths, day, frame)
    result = _run(churn, downstream=True)
    assert not result.success
    check = _checks(result)[QUARANTINE_CHECK]
    assert not check.passed and check.severity == dg.AssetCheckSeverity.ERROR
    assert "2026-01-03" in check.description and "10.00%" in check.description
    assert result.asset_materializations_for_node("downstream_of_events") == []


def test_quarantine_threshold_is_run_config(churn):
    frame = events_frame(DAYS[0], n=40)
    frame.loc[:3, "customer_id"] = None
    write_events(churn.paths, DAYS[0], frame)
    config = {"ops": {"raw_events": {"config": {"max_quarantine_rate": 0.2}}}}
    result = _run(churn, days=DAYS[:1], downstream=True, run_config=config)
    assert result.success
    assert _checks(result)[QUARANTINE_CHECK].passed
    assert len(result.asset_materializations_for_node("downstream_of_events")) == 1


def test_schema_gate_fails_on_missing_columns(churn):
    write_events(churn.paths, DAYS[0], events_frame(DAYS[0]).drop(columns=["customer_id"]))
    result = _run(churn, days=DAYS[:1], downstream=True)
    assert not result.success
    check = _checks(result)[SCHEMA_CHECK]
    assert not check.passed and "missing required columns customer_id" in check.description
    assert result.asset_materializations_for_node("downstream_of_events") == []


def test_entries_of_the_landing_folder_that_are_not_dated_files_are_named_in_the_schema_warnings(churn):
    source = churn.source("raw_events").model_copy(update={"pattern": "events_*"})
    project = Project(
        churn.spec.model_copy(update={"sources": {**churn.spec.sources, "raw_events": source}}),
        churn.paths,
        churn.spec_path,
    )
    write_events(project.paths, DAYS[0])
    landing = project.landing_dir("raw_events")
    (landing / "events_latest.parquet").write_bytes(b"no day in the name")
    (landing / "events_archive").mkdir()  # a sub-folder
    (landing / "events_archive" / f"events_{DAYS[0]}.parquet").write_bytes(
        b"not read: landing is not recursive"
    )
    (landing / f"orders_{DAYS[0]}.parquet").write_bytes(b"does not match the source's pattern")
    (landing / f".events_{DAYS[0]}.parquet.tmp").write_bytes(b"a writer's temporary file")
    result = _run(project, days=DAYS[:1], downstream=True)
    assert result.success  # warnings do not block: the day's good file is ingested and downstream runs
    assert len(result.asset_materializations_for_node("downstream_of_events")) == 1
    [mat] = result.asset_materializations_for_node("raw_events")
    assert mat.metadata["rows_kept"].value == 40 and mat.metadata["files_quarantined"].value == 0
    check = _checks(result)[SCHEMA_CHECK]
    assert not check.passed and check.severity == dg.AssetCheckSeverity.WARN
    warnings = check.metadata["warnings"].value
    lines = [line for line in warnings.splitlines() if line.strip()]
    named = {
        name: [line for line in lines if f" {name}:" in line]
        for name in ("events_latest.parquet", "events_archive", f"orders_{DAYS[0]}.parquet")
    }
    assert all(len(found) == 1 for found in named.values()), warnings
    assert "YYYY-MM-DD" in named["events_latest.parquet"][0]
    assert "folder" in named["events_archive"][0]
    assert "'events_*'" in named[f"orders_{DAYS[0]}.parquet"][0]
    assert ".tmp" not in warnings  # hidden names are a writer's work in progress, not forgotten files
    assert len(lines) == 3
    assert "3 warning(s)" in check.description


def test_single_partition_data_version_is_the_content_hash_and_stable(churn):
    write_events(churn.paths, DAYS[0])
    versions = []
    for _ in range(2):
        result = _run(churn, days=DAYS[:1])
        [mat] = result.asset_materializations_for_node("raw_events")
        versions.append((mat.tags["dagster/data_version"], mat.metadata["content_hash"].value))
    assert versions[0] == versions[1]
    assert versions[0][0] == versions[0][1]
    write_events(churn.paths, DAYS[0], events_frame(DAYS[0], n=41))
    [mat] = _run(churn, days=DAYS[:1]).asset_materializations_for_node("raw_events")
    assert mat.tags["dagster/data_version"] != versions[0][0]  # new content, new version


def test_every_source_of_the_spec_is_an_asset_with_both_gates(churn):
    partitions = daily_partitions(churn)
    assets = build_ingestion_assets(churn, partitions)
    assert sorted(a.key.to_user_string() for a in assets) == sorted(churn.spec.sources)
    for asset in assets:
        assert {spec.name for spec in asset.check_specs} == {SCHEMA_CHECK, QUARANTINE_CHECK}
        assert all(spec.blocking for spec in asset.check_specs)
        source = churn.source(asset.key.to_user_string())
        schema = asset.metadata_by_key[asset.key]["dagster/column_schema"]
        assert [c.name for c in schema.columns] == list(source.columns)
