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
    scenarios: tuple[str, ...] = ("quality_incident@day45", "covariate_drift@day95", "concept_drift@day95")
    fresh: bool = False
    history_days: int = 90  # phase 1 trains on these days; the rest arrives later as new data
    model_type: str = "hist_gradient_boosting"  # or logistic_regression, random_forest
    monitor_days_before: int = 5  # drift days shown before the new data, as a baseline


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


def drift_summary(result: dg.ExecuteInProcessResult) -> str:
    """One line per day: drift share, drifted features, estimated and realized accuracy."""
    lines = [
        "| day | drift share | drifted features | est. accuracy | realized accuracy (labels) |",
        "|---|---:|---|---:|---:|",
    ]

    def fmt(meta, key):
        return f"{meta[key].value:.3f}" if key in meta else "-"

    for mat in sorted(result.asset_materializations_for_node("drift_report"), key=lambda m: m.partition):
        meta = mat.metadata
        if "drift_share" not in meta:
            lines.append(
                f"| {mat.partition} | - | {meta['status'].value if 'status' in meta else ''} | - | - |"
            )
            continue
        drifted = ", ".join(meta["drifted_features"].value[:4]) + (
            " ..." if len(meta["drifted_features"].value) > 4 else ""
        )
        labels = meta["realized_labels"].value if "realized_labels" in meta else 0
        lines.append(
            f"| {mat.partition} | {meta['drift_share'].value:.2f} | {drifted or 'none'} | "
            f"{fmt(meta, 'estimated_accuracy')} | {fmt(meta, 'realized_accuracy')} ({labels}) |"
        )
    for check in result.get_asset_check_evaluations():
        verdict = "pass" if check.passed else f"FAIL ({check.severity.value})"
        lines.append(f"  check {check.check_name}: {verdict} {(check.description or '')[:160]}")
    return "\n".join(lines)


def request_drift_retraining(defs: dg.Definitions, instance: dg.DagsterInstance) -> list[dg.RunRequest]:
    """Evaluate the drift sensor once, as the daemon would, and return its run requests."""
    sensor = defs.get_sensor_def("drift_retraining_sensor")
    result = sensor(dg.build_sensor_context(instance=instance, definitions=defs))
    return list(result.run_requests or []) if isinstance(result, dg.SensorResult) else list(result or [])


def run_canary(paths: DataPaths, last: str, customers: int = 10_000) -> None:
    """Canary of the new champion against the previous one on simulated traffic through the real app."""
    import math
    from datetime import UTC, datetime

    import pandas as pd

    from mlops_assets.featurestore import FeatureStore
    from mlops_assets.serving.demo import canary_demo
    from mlops_assets.serving.rollout import Guardrails
    from mlops_assets.training import registry
    from mlops_assets.training.tracking import TrackingConfig, client_for

    tracking = TrackingConfig.for_data_root(paths.root)
    client = client_for(tracking)
    champion = registry.load_model_by_alias(client, registry.CHAMPION, model_name=tracking.model_name)
    previous = registry.alias_version(client, registry.PREVIOUS_CHAMPION, tracking.model_name)
    if previous is None:
        _say("no previous champion to run a canary against")
        return
    baseline = registry.load_model_version(client, previous.version, model_name=tracking.model_name)
    store = FeatureStore(paths.root)
    now = date.fromisoformat(last) + timedelta(days=1)
    profile = pd.read_parquet(paths.warehouse / "features" / "customer_profile" / f"date={last}")
    # the traffic comes from active customers (events in the last week), the population the model is
    # trained and evaluated on: churned customers get no labels and make no requests
    active: set[str] = set()
    for k in range(7):
        day_dir = paths.warehouse / "raw_events" / f"date={date.fromisoformat(last) - timedelta(days=k)}"
        if day_dir.exists():
            active |= set(pd.read_parquet(day_dir, columns=["customer_id"])["customer_id"].astype(str))
    ids = [c for c in profile["customer_id"].astype(str) if c in active][:customers]
    ids = ids or profile["customer_id"].head(customers).tolist()
    columns = store.get_online_features_dict(ids, now=datetime(now.year, now.month, now.day, tzinfo=UTC))
    names = [c for c in columns if c != "customer_id" and "__" not in c]
    rows = {
        cid: {
            n: (None if isinstance(columns[n][i], float) and math.isnan(columns[n][i]) else columns[n][i])
            for n in names
        }
        for i, cid in enumerate(columns["customer_id"])
    }
    # the new champion's reference score distribution: its scores on its own evaluation holdout
    from mlops_assets.training.train import churn_scores, model_inputs, registered_result, time_split

    trained = registered_result(client, champion.version, model_name=tracking.model_name)
    params = client.get_run(trained.run_id).data.params
    training_set, _ = store.read_training_set()
    _, holdout = time_split(training_set, float(params.get("holdout_fraction", 0.2)))
    reference = churn_scores(
        champion.model, model_inputs(holdout, trained.numeric_features, trained.categorical_features)
    )
    _say(
        f"canary: v{champion.version} (new) against v{baseline.version} (previous) on {len(rows)} simulated customers; "
        f"score guardrails against v{champion.version}'s {len(reference):,} holdout scores "
        f"(mean {reference.mean():.3f})"
    )
    decisions = canary_demo(
        paths.serving / "canary-demo",
        baseline.model,
        champion.model,
        rows,
        printer=lambda m: _say("  " + m),
        challenger_reference_scores=reference,
        # PSI over 10 bins on ~100 scores is mostly noise on a skewed score distribution: judge 300
        # scores, from every active customer (at 5% the challenger sees only 1 in 20 of them)
        requests_per_step=500,
        guardrails=Guardrails(min_requests=300, min_error_requests=10, min_distribution_samples=300),
    )
    if decisions and decisions[-1].action == "rollback":
        record = registry.rollback(
            client, f"canary guardrail broke: {decisions[-1].reason}", model_name=tracking.model_name
        )
        _say(f"registry rolled back: champion is v{record.version} again ({record.reason})")


def _day(start: str, offset: int) -> str:
    return (date.fromisoformat(start) + timedelta(days=offset)).isoformat()


def run_demo(config: DemoConfig) -> int:
    """Simulate the churn world and run the lifecycle in phases; print what happened. Returns an exit code."""
    from mlops_assets.definitions import defs
    from mlops_assets.features.views import FEATURE_VIEWS
    from mlops_assets.simulate.world import simulate

    started = time.monotonic()
    paths = data_paths()
    home = ensure_dagster_home()
    if config.fresh:
        for folder in (
            paths.landing,
            paths.warehouse,
            paths.quarantine,
            paths.online,
            paths.mlflow,
            paths.serving,
            paths.reports,
            paths.alerts,
        ):
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
    first, last = config.start, _day(config.start, config.days - 1)
    history_end = _day(config.start, min(config.history_days, config.days) - 1)
    views = [v.name for v in FEATURE_VIEWS]
    with dg.DagsterInstance.get() as instance:

        def ingest_and_features(a: str, b: str) -> bool:
            t0 = time.monotonic()
            _say(f"ingesting {a}..{b} (one run, single-run backfill)")
            result = materialize_range(defs, ["raw_events", "raw_labels", "customers"], a, b, instance)
            ok = _step("ingestion", result, t0)
            print(ingestion_summary(paths, result), flush=True)
            if not ok:
                _say("a blocking gate failed: see the run in the UI (make ui)")
                return False
            t0 = time.monotonic()
            _say(f"computing feature views {views} for {a}..{b} (one run)")
            return _step("feature views", materialize_range(defs, views, a, b, instance), t0)

        _say(f"== phase 1: history {first}..{history_end}: ingest, features, train, gate, promote")
        if not ingest_and_features(first, history_end):
            return 1
        t0 = time.monotonic()
        result = materialize(defs, ["training_set", "online_features"], instance)
        if not _step("training set + online store", result, t0):
            return 1
        print(features_summary(result), flush=True)
        t0 = time.monotonic()
        training_config = {"ops": {"candidate_model": {"config": {"model_type": config.model_type}}}}
        result = materialize(
            defs, ["candidate_model", "evaluation_report", "promotion"], instance, training_config
        )
        print(training_summary(result), flush=True)
        if not _step("train + evaluate + promote", result, t0):
            _say("a quality gate stopped the promotion: see evaluation_report's checks in the UI")
            return 1

        if history_end < last:
            new_first = _day(history_end, 1)
            _say(f"== phase 2: new data {new_first}..{last} arrives; monitor it against the champion")
            if not ingest_and_features(new_first, last):
                return 1
            t0 = time.monotonic()
            _step("online store refresh", materialize(defs, ["online_features"], instance), t0)
            t0 = time.monotonic()
            result = materialize_range(defs, ["batch_predictions"], new_first, last, instance)
            if _step(f"batch scoring {new_first}..{last} by the champion", result, t0):
                scored = [
                    m.metadata["dagster/row_count"].value
                    for m in result.asset_materializations_for_node("batch_predictions")
                ]
                _say(
                    f"scored {sum(scored):,} customer-days ({min(scored):,}..{max(scored):,} active customers a day)"
                )
            monitor_first = _day(history_end, 1 - config.monitor_days_before)
            t0 = time.monotonic()
            result = materialize_range(defs, ["drift_report"], monitor_first, last, instance)
            _step(f"drift report {monitor_first}..{last}", result, t0)
            print(drift_summary(result), flush=True)

            _say("== phase 3: retraining triggered by the drift sensor")
            requests = request_drift_retraining(defs, instance)
            if not requests:
                _say("the drift sensor requested no retraining (no ERROR check failed)")
            for request in requests[:1]:
                _say(
                    f"drift_retraining_sensor requested retraining_job: {request.tags.get('mlops/trigger_reason', '')}"
                )
                t0 = time.monotonic()
                result = defs.get_job_def("retraining_job").execute_in_process(
                    instance=instance,
                    tags=request.tags,
                    run_config={**QUIET, **(request.run_config or {})},
                    raise_on_error=False,
                )
                print(training_summary(result), flush=True)
                promoted = _step("retraining", result, t0) and any(
                    m.metadata["moved"].value for m in result.asset_materializations_for_node("promotion")
                )
                if promoted:
                    _say("== phase 4: canary rollout of the new champion on simulated traffic")
                    run_canary(paths, last)
                else:
                    _say("the retrained model did not pass every gate: the champion stays")
    _say(f"done in {time.monotonic() - started:.1f}s; explore it with `make ui`")
    return 0
