"""Ingestion assets in Dagster: per-partition metadata, blocking gates, ranges in one run."""

from __future__ import annotations

import dagster as dg
import pandas as pd

from mlops_assets.demo import RANGE_END_TAG, RANGE_START_TAG
from mlops_assets.ingestion.assets import QUARANTINE_CHECK, SCHEMA_CHECK, ingestion_assets
from mlops_assets.partitions import daily_partitions
from mlops_assets.resources import DataDirResource
from mlops_assets_tests.conftest import events_frame, write_events

DAYS = ["2026-01-01", "2026-01-02", "2026-01-03"]
raw_events = next(a for a in ingestion_assets if a.key == dg.AssetKey("raw_events"))


@dg.asset(
    deps=["raw_events"], partitions_def=daily_partitions, backfill_policy=dg.BackfillPolicy.single_run()
)
def downstream_of_events() -> None:
    """Stands in for a feature view: it must never run on data that failed a gate."""


def _run(paths, *, days=DAYS, assets=(raw_events,), run_config=None):
    return dg.materialize(
        list(assets),
        instance=dg.DagsterInstance.ephemeral(),
        resources={"data": DataDirResource(root=str(paths.root))},
        tags={RANGE_START_TAG: days[0], RANGE_END_TAG: days[-1]},
        run_config=run_config,
        raise_on_error=False,
    )


def _checks(result):
    return {e.check_name: e for e in result.get_asset_check_evaluations()}


def test_a_range_is_one_run_with_exact_metadata_per_day(data_dir):
    for i, day in enumerate(DAYS):
        frame = events_frame(day, n=30 + i)
        if day == "2026-01-02":
            frame.loc[0, "amount"] = -3.0
        write_events(data_dir, day, frame)
    result = _run(data_dir)
    assert result.success
    mats = {m.partition: m for m in result.asset_materializations_for_node("raw_events")}
    assert sorted(mats) == DAYS
    for i, day in enumerate(DAYS):
        meta = mats[day].metadata
        assert meta["rows_read"].value == 30 + i
        assert meta["rows_read"].value == meta["rows_kept"].value + meta["rows_quarantined"].value
        assert meta["dagster/row_count"].value == meta["rows_kept"].value
        stored = pd.read_parquet(data_dir.partition_dir("raw_events", day))
        assert len(stored) == meta["rows_kept"].value
    assert mats["2026-01-02"].metadata["rows_quarantined"].value == 1
    assert "below_minimum:amount" in mats["2026-01-02"].metadata["quarantined_by_reason"].value
    checks = _checks(result)
    assert checks[SCHEMA_CHECK].passed and checks[QUARANTINE_CHECK].passed


def test_quarantine_gate_stops_downstream_in_the_same_run(data_dir):
    for day in DAYS:
        frame = events_frame(day, n=40)
        if day == "2026-01-03":
            frame.loc[:3, "customer_id"] = None  # 4 of 40 = 10% > 5%
        write_events(data_dir, day, frame)
    result = _run(data_dir, assets=(raw_events, downstream_of_events))
    assert not result.success
    check = _checks(result)[QUARANTINE_CHECK]
    assert not check.passed and check.severity == dg.AssetCheckSeverity.ERROR
    assert "2026-01-03" in check.description and "10.00%" in check.description
    assert result.asset_materializations_for_node("downstream_of_events") == []


def test_quarantine_threshold_is_run_config(data_dir):
    frame = events_frame(DAYS[0], n=40)
    frame.loc[:3, "customer_id"] = None
    write_events(data_dir, DAYS[0], frame)
    config = {"ops": {"raw_events": {"config": {"max_quarantine_rate": 0.2}}}}
    result = _run(data_dir, days=DAYS[:1], assets=(raw_events, downstream_of_events), run_config=config)
    assert result.success
    assert _checks(result)[QUARANTINE_CHECK].passed


def test_schema_gate_fails_on_missing_columns(data_dir):
    write_events(data_dir, DAYS[0], events_frame(DAYS[0]).drop(columns=["customer_id"]))
    result = _run(data_dir, days=DAYS[:1], assets=(raw_events, downstream_of_events))
    assert not result.success
    check = _checks(result)[SCHEMA_CHECK]
    assert not check.passed and "missing required columns customer_id" in check.description
    assert result.asset_materializations_for_node("downstream_of_events") == []


def test_single_partition_data_version_is_the_content_hash_and_stable(data_dir):
    write_events(data_dir, DAYS[0])
    versions = []
    for _ in range(2):
        result = _run(data_dir, days=DAYS[:1])
        [mat] = result.asset_materializations_for_node("raw_events")
        versions.append((mat.tags["dagster/data_version"], mat.metadata["content_hash"].value))
    assert versions[0] == versions[1]
    assert versions[0][0] == versions[0][1]
