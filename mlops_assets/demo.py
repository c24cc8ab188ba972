"""`make demo`: an example project's lifecycle on its simulated data, in one process against the local Dagster
instance. The example names its simulator in its spec (``demo:``); nothing here knows its domain."""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import sys
import time
from dataclasses import dataclass
from datetime import date, timedelta

import dagster as dg

from mlops_assets.instance import ensure_dagster_home
from mlops_assets.project import Project
from mlops_assets.settings import DataPaths

RANGE_START_TAG = "dagster/asset_partition_range_start"
RANGE_END_TAG = "dagster/asset_partition_range_end"


@dataclass(frozen=True)
class DemoConfig:
    """Overrides of the spec's `demo:` section (None keeps the spec's value)."""

    size: int | None = None
    days: int | None = None
    seed: int | None = None
    scenarios: tuple[str, ...] | None = None
    history_days: int | None = None
    fresh: bool = False
    model_type: str | None = None  # another estimator than the spec's
    monitor_days_before: int = 5  # drift days shown before the new data, as a baseline
    canary: bool = True


def load_simulator(project: Project):
    """The example's ``simulate`` function (a package folder or a .py file named in ``demo.simulator``)."""
    demo = project.spec.demo
    if demo is None:
        raise ValueError(f"spec {project.name!r} has no `demo:` section naming a simulator")
    path = project.resolve_path(demo.simulator)
    init = path / "__init__.py" if path.is_dir() else path
    if not init.is_file():
        raise FileNotFoundError(f"demo.simulator: {path} is neither a package folder nor a Python file")
    name = f"mlops_example_{project.name}_simulator"
    spec = importlib.util.spec_from_file_location(
        name, init, submodule_search_locations=[str(path)] if path.is_dir() else None
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module.simulate


def scaled_scenarios(
    scenarios: tuple[str, ...], days: int, spec_days: int
) -> tuple[tuple[str, ...], list[str]]:
    """Scenario start days ``@dayN`` scaled to a shorter or longer run (and what was changed, for the log)."""
    if days == spec_days:
        return scenarios, []
    out, notes = [], []
    for item in scenarios:
        match = re.match(r"^(.*)@day(\d+)$", item)
        if match:
            scaled = max(1, min(days - 1, round(int(match.group(2)) * days / spec_days)))
            out.append(f"{match.group(1)}@day{scaled}")
            notes.append(f"{item} -> {out[-1]}")
        else:
            out.append(item)
    return tuple(out), notes


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
    rate = meta["label_rate"].value if "label_rate" in meta else meta["label_mean"].value
    name = "label rate" if "label_rate" in meta else "label mean"
    return (
        f"training set: {meta['dagster/row_count'].value:,} label rows, {name} {rate:.4g}, "
        f"{meta['time_min'].value} .. {meta['time_max'].value}\n"
        f"online store:\n{online.metadata['views'].value}"
    )


def ingestion_summary(paths: DataPaths, result: dg.ExecuteInProcessResult, sources: list[str]) -> str:
    lines = [
        "| table | days | rows read | rows kept | rows quarantined | files quarantined |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    reasons: dict[str, int] = {}
    for table in sources:
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
        lines.append(f"candidate: {meta['model_uri'].value}{cached}")
    for mat in result.asset_materializations_for_node("evaluation_report"):
        lines.append(mat.metadata["gates"].value)
    for mat in result.asset_materializations_for_node("promotion"):
        meta = mat.metadata
        lines.append(
            f"champion: v{meta['champion_version'].value} (previous: {meta['previous_champion'].value})"
        )
        lines.append(f"  {meta['reason'].value}")
    return "\n".join(lines)


def drift_summary(result: dg.ExecuteInProcessResult) -> str:
    """One line per day: drift share, drifted features, estimated and realized accuracy."""
    lines = [
        "| day | drift share | drifted features | est. accuracy | realized accuracy or MAE (labels) |",
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
            f"{fmt(meta, 'estimated_accuracy')} | {fmt(meta, 'realized_accuracy' if 'realized_mae' not in meta else 'realized_mae')} ({labels}) |"
        )
    for check in result.get_asset_check_evaluations():
        verdict = "pass" if check.passed else f"FAIL ({check.severity.value})"
        lines.append(f"  check {check.check_name}: {verdict} {(check.description or '')[:160]}")
    return "\n".join(lines)


def request_drift_retraining(defs: dg.Definitions, instance: dg.DagsterInstance) -> list[dg.RunRequest]:
    """Evaluate the drift sensor once, as the daemon would, and return its run requests."""
    sensor = defs.resolve_sensor_def("drift_retraining_sensor")
    result = sensor(dg.build_sensor_context(instance=instance, definitions=defs))
    return list(result.run_requests or []) if isinstance(result, dg.SensorResult) else list(result or [])


def run_canary(project: Project, last: str, max_entities: int = 10_000) -> None:
    """Canary of the new champion against the previous one on simulated traffic through the real app."""
    import math
    from datetime import UTC, datetime

    from mlops_assets.featurestore import FeatureStore
    from mlops_assets.monitoring.daily import current_population
    from mlops_assets.serving.demo import canary_demo
    from mlops_assets.serving.rollout import Guardrails
    from mlops_assets.training import registry
    from mlops_assets.training.task import ModelTask
    from mlops_assets.training.tracking import TrackingConfig, client_for
    from mlops_assets.training.train import model_inputs, predict_scores, registered_result, time_split

    tracking = TrackingConfig.for_project(project)
    client = client_for(tracking)
    champion = registry.load_model_by_alias(client, registry.CHAMPION, model_name=tracking.model_name)
    previous = registry.alias_version(client, registry.PREVIOUS_CHAMPION, tracking.model_name)
    if previous is None:
        _say("no previous champion to run a canary against")
        return
    baseline = registry.load_model_version(client, previous.version, model_name=tracking.model_name)
    store = FeatureStore(project)
    task = ModelTask.from_project(project)
    now = date.fromisoformat(last) + timedelta(days=1)
    # the traffic comes from the monitored population: the entities the model scores
    ids = current_population(store, last)[:max_entities]
    columns = store.get_online_features_dict(ids, now=datetime(now.year, now.month, now.day, tzinfo=UTC))
    key = task.entity
    names = [c for c in columns if c != key and "__" not in c]
    rows = {
        str(eid): {
            n: (None if isinstance(columns[n][i], float) and math.isnan(columns[n][i]) else columns[n][i])
            for n in names
        }
        for i, eid in enumerate(columns[key])
    }
    # the new champion's reference score distribution: its scores on its own evaluation holdout
    trained = registered_result(client, tracking.model_name, champion.version)
    params = client.get_run(trained.run_id).data.params
    training_set, _ = store.read_training_set()
    _, holdout = time_split(
        task.trainable(training_set), float(params.get("holdout_fraction", 0.2)), task.time, task.entity
    )
    reference = predict_scores(
        champion.model, model_inputs(holdout, trained.numeric_features, trained.categorical_features)
    )
    _say(
        f"canary: v{champion.version} (new) against v{baseline.version} (previous) on {len(rows)} entities of the "
        f"monitored population; score guardrails against v{champion.version}'s {len(reference):,} holdout scores "
        f"(mean {reference.mean():.3f})"
    )
    decisions = canary_demo(
        project.paths.serving / "canary-demo",
        baseline.model,
        champion.model,
        rows,
        key=key,
        printer=lambda m: _say("  " + m),
        challenger_reference_scores=reference,
        # PSI over 10 bins on ~100 scores is mostly noise on a skewed score distribution: judge 300
        # scores per step, from every entity (at 5% the challenger sees only 1 in 20 of them)
        requests_per_step=500,
        max_batches_per_step=60,
        guardrails=Guardrails(
            min_requests=min(300, 3 * len(rows)),
            min_error_requests=10,
            min_distribution_samples=min(300, 3 * len(rows)),
        ),
    )
    if decisions and decisions[-1].action == "rollback":
        record = registry.rollback(
            client,
            f"canary guardrail broke: {decisions[-1].reason}",
            model_name=tracking.model_name,
            history_path=registry.default_history_path(project.paths.root),
        )
        _say(f"registry rolled back: champion is v{record.version} again ({record.reason})")


def _day(start: str, offset: int) -> str:
    return (date.fromisoformat(start) + timedelta(days=offset)).isoformat()


def fresh_data(paths: DataPaths) -> None:
    """Remove every runtime folder of the data root (the Dagster instance keeps its history)."""
    for folder in (
        paths.landing,
        paths.warehouse,
        paths.quarantine,
        paths.online,
        paths.mlflow,
        paths.serving,
        paths.reports,
        paths.alerts,
        paths.root / ".staging",
    ):
        shutil.rmtree(folder, ignore_errors=True)


def run_demo(project: Project, config: DemoConfig) -> int:
    """Simulate the example's world and run the lifecycle in phases; print what happened. Returns an exit code."""
    from mlops_assets.component import build_definitions

    demo = project.spec.demo
    if demo is None:
        _say(f"spec {project.spec_path or project.name} has no `demo:` section: nothing to simulate")
        return 2
    started = time.monotonic()
    paths = project.paths
    home = ensure_dagster_home()
    if config.fresh:
        fresh_data(paths)
    days = config.days or demo.days
    size = config.size or demo.size
    seed = demo.seed if config.seed is None else config.seed
    history_days = min(config.history_days or round(demo.history_days * days / demo.days), days)
    scenarios = config.scenarios if config.scenarios is not None else demo.scenarios
    if config.scenarios is None:
        scenarios, notes = scaled_scenarios(tuple(scenarios), days, demo.days)
        if notes:
            _say(f"{days} days instead of the spec's {demo.days}: scenario days scaled ({'; '.join(notes)})")
    start = project.spec.partitions.start.isoformat()
    _say(f"project {project.name} ({project.spec_path}); data folder {paths.root}, Dagster instance {home}")
    _say(f"simulating {size} entities x {days} days from {start} {list(scenarios)}")
    simulate = load_simulator(project)
    summary = simulate(paths.landing, days=days, start=start, seed=seed, size=size, scenarios=scenarios)
    _say(f"simulated in {time.monotonic() - started:.1f}s: {summary}")
    project = Project(
        project.spec, paths, project.spec_path
    )  # partitions end where the new landing data ends
    defs = build_definitions(project)
    first, last = start, _day(start, days - 1)
    history_end = _day(start, history_days - 1)
    sources, views = list(project.spec.sources), project.view_names
    training_run_config = (
        {"ops": {"candidate_model": {"config": {"model_type": config.model_type}}}}
        if config.model_type
        else None
    )
    with dg.DagsterInstance.get() as instance:

        def ingest_and_features(a: str, b: str) -> bool:
            t0 = time.monotonic()
            _say(f"ingesting {a}..{b} (one run, single-run backfill)")
            result = materialize_range(defs, sources, a, b, instance)
            ok = _step("ingestion", result, t0)
            print(ingestion_summary(paths, result, sources), flush=True)
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
        result = materialize(
            defs, ["candidate_model", "evaluation_report", "promotion"], instance, training_run_config
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
                _say(f"scored {sum(scored):,} entity-days ({min(scored):,}..{max(scored):,} a day)")
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
                result = defs.resolve_job_def("retraining_job").execute_in_process(
                    instance=instance,
                    tags=request.tags,
                    run_config={**QUIET, **(request.run_config or {})},
                    raise_on_error=False,
                )
                print(training_summary(result), flush=True)
                promoted = _step("retraining", result, t0) and any(
                    m.metadata["moved"].value for m in result.asset_materializations_for_node("promotion")
                )
                if promoted and config.canary:
                    _say("== phase 4: canary rollout of the new champion on simulated traffic")
                    run_canary(project, last)
                elif not promoted:
                    _say("the retrained model did not pass every gate: the champion stays")
    _say(f"done in {time.monotonic() - started:.1f}s; explore it with `make ui`")
    return 0
