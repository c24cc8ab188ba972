"""`make demo`: the lifecycle on simulated data, in one process against the local Dagster instance."""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from datetime import date, timedelta

import dagster as dg

from mlops_assets.instance import ensure_dagster_home
from mlops_assets.settings import DataPaths, data_paths

RANGE_START_TAG = "dagster/asset_partition_range_start"
RANGE_END_TAG = "dagster/asset_partition_range_end"


@dataclass(frozen=True)
class DemoConfig:
    customers: int = 5000
    days: int = 120
    start: str = "2026-01-01"
    seed: int = 7
    scenarios: tuple[str, ...] = ("quality_incident@day45",)
    fresh: bool = False


def _say(message: str) -> None:
    print(f"[demo] {message}", flush=True)


QUIET = {"loggers": {"console": {"config": {"log_level": "INFO"}}}}


def materialize_range(
    defs: dg.Definitions, selection: list[str], first: str, last: str, instance: dg.DagsterInstance
) -> dg.ExecuteInProcessResult:
    """One in-process run over a partition range (assets have single-run backfill policies)."""
    job = defs.resolve_implicit_global_asset_job_def()
    return job.execute_in_process(
        instance=instance,
        asset_selection=[dg.AssetKey(k) for k in selection],
        tags={RANGE_START_TAG: first, RANGE_END_TAG: last},
        run_config=QUIET,
        raise_on_error=False,
    )


def materialize(
    defs: dg.Definitions, selection: list[str], instance: dg.DagsterInstance, run_config: dict | None = None
) -> dg.ExecuteInProcessResult:
    """One in-process run of unpartitioned assets."""
    job = defs.resolve_implicit_global_asset_job_def()
    return job.execute_in_process(
        instance=instance,
        asset_selection=[dg.AssetKey(k) for k in selection],
        run_config={**QUIET, **(run_config or {})},
        raise_on_error=False,
    )


def _step(name: str, result: dg.ExecuteInProcessResult, started: float) -> bool:
    verdict = "succeeded" if result.success else "FAILED"
    _say(f"{name}: run {result.run_id[:8]} {verdict} in {time.monotonic() - started:.1f}s")
    return result.success


def features_summary(result: dg.ExecuteInProcessResult) -> str:
    [mat] = result.asset_materializations_for_node("training_set")
    meta = mat.metadata
    [online] = result.asset_materializations_for_node("online_features")
    return (
        f"training set: {meta['dagster/row_count'].value:,} label rows, label rate {meta['label_rate'].value:.1%}, "
        f"{meta['time_min'].value} .. {meta['time_max'].value}\n"
        f"online store rows per view: {online.metadata['rows_per_view'].value}"
    )


def ingestion_summary(paths: DataPaths, result: dg.ExecuteInProcessResult) -> str:
    lines = [
        "| table | days | rows read | rows kept | rows quarantined | files quarantined |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    reasons: dict[str, int] = {}
    for table in ("raw_events", "raw_labels", "customers"):
        mats = result.asset_materializations_for_node(table)
        read = sum(m.metadata["rows_read"].value for m in mats)
        kept = sum(m.metadata["rows_kept"].value for m in mats)
        quarantined = sum(m.metadata["rows_quarantined"].value for m in mats)
        files = sum(m.metadata["files_quarantined"].value for m in mats)
        lines.append(f"| {table} | {len(mats)} | {read:,} | {kept:,} | {quarantined:,} | {files} |")
    for manifest in sorted(paths.quarantine.glob("*/date=*/manifest.json")):
        data = json.loads(manifest.read_text())
        for reason, count in data["quarantined_by_reason"].items():
            key = f"{data['table']} {reason}"
            reasons[key] = reasons.get(key, 0) + count
        for f in data["files"]:
            if f["status"] == "quarantined":
                key = f"{data['table']} file: {f['reason'][:60]}"
                reasons[key] = reasons.get(key, 0) + 1
    lines.append("")
    lines.append("Quarantined by reason:")
    lines += [f"  {key}: {count}" for key, count in sorted(reasons.items())] or ["  none"]
    return "\n".join(lines)


def training_summary(result: dg.ExecuteInProcessResult) -> str:
    lines = []
    for mat in result.asset_materializations_for_node("candidate_model"):
        meta = mat.metadata
        cached = " (reused: nothing changed)" if meta.get("cached") and meta["cached"].value else ""
        lines.append(f"candidate: churn-model v{meta['version'].value}{cached}")
    for check in result.get_asset_check_evaluations():
        verdict = "pass" if check.passed else "FAIL"
        lines.append(f"  gate {check.check_name}: {verdict} {check.description or ''}")
    for mat in result.asset_materializations_for_node("promotion"):
        meta = mat.metadata
        lines.append(
            f"champion: v{meta['champion_version'].value} (previous: {meta['previous_champion'].value})"
        )
        lines.append(f"  {meta['reason'].value}")
        lines.append(meta["key_metrics"].value)
    return "\n".join(lines)


def run_demo(config: DemoConfig) -> int:
    """Simulate the churn world and run the lifecycle; print a summary. Returns an exit code."""
    from mlops_assets.definitions import defs
    from mlops_assets.simulate.world import simulate

    started = time.monotonic()
    paths = data_paths()
    home = ensure_dagster_home()
    if config.fresh:
        for folder in (paths.landing, paths.warehouse, paths.quarantine):
            shutil.rmtree(folder, ignore_errors=True)
    _say(f"data folder {paths.root}, Dagster instance {home}")
    _say(
        f"simulating {config.customers} customers x {config.days} days from {config.start} {list(config.scenarios)}"
    )
    summary = simulate(
        out=paths.landing,
        customers=config.customers,
        days=config.days,
        start=config.start,
        seed=config.seed,
        scenarios=config.scenarios,
    )
    _say(f"simulated in {time.monotonic() - started:.1f}s: {summary}")
    first = config.start
    last = (date.fromisoformat(config.start) + timedelta(days=config.days - 1)).isoformat()
    with dg.DagsterInstance.get() as instance:
        t0 = time.monotonic()
        _say(f"ingesting {first}..{last} (one run, single-run backfill)")
        result = materialize_range(defs, ["raw_events", "raw_labels", "customers"], first, last, instance)
        ok = _step("ingestion", result, t0)
        print(ingestion_summary(paths, result), flush=True)
        if not ok:
            _say("a blocking gate failed: see the run in the UI (make ui)")
            return 1

        from mlops_assets.features.views import FEATURE_VIEWS

        t0 = time.monotonic()
        views = [v.name for v in FEATURE_VIEWS]
        _say(f"computing feature views {views} for {first}..{last} (one run)")
        if not _step("feature views", materialize_range(defs, views, first, last, instance), t0):
            return 1
        t0 = time.monotonic()
        result = materialize(defs, ["training_set", "online_features"], instance)
        if not _step("training set + online store", result, t0):
            return 1
        print(features_summary(result), flush=True)

        t0 = time.monotonic()
        _say("training a candidate (MLflow), evaluating it behind the quality gates, promoting it")
        result = materialize(defs, ["candidate_model", "evaluation_report", "promotion"], instance)
        print(training_summary(result), flush=True)
        if not _step("train + evaluate + promote", result, t0):
            _say("a quality gate stopped the promotion: see evaluation_report's checks in the UI")
            return 1
    _say(f"done in {time.monotonic() - started:.1f}s; explore it with `make ui`")
    return 0
