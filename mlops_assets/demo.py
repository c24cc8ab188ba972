"""`make demo`: an example project's lifecycle on its simulated data, in one process against the local Dagster
instance, told the way the UI shows it afterwards.

Every run is a named job of the code location (``ingestion_job``, ``feature_views_job``, ``retraining_job``,
``batch_scoring_job``, ``drift_report_job``, ``serving_report_job``) tagged with the demo phase and what triggered it.
The backfills of the simulated history and of the new days are launched by the demo, as a person launches a
backfill; every other decision is a tick of the code location's own sensors, evaluated through the Dagster daemon's
code path (:mod:`mlops_assets.daemon_ticks`) and recorded in the instance: the landing sensor finding nothing new,
the online store refreshed by its automation condition, the drift alarm requesting retraining, each canary step
judged on the serving app's prediction log, the prediction log becoming partitions with the A/B report. The
retrained challenger reaches traffic through a canary (``$MLOPS_ROLLOUT=canary``), served by the real serving app
on 127.0.0.1 on the registry's champion and challenger. The example names its simulator in its spec (``demo:``);
nothing here knows its domain."""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import sys
import time
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path

import dagster as dg

from mlops_assets.dayranges import range_tags
from mlops_assets.instance import ensure_dagster_home
from mlops_assets.project import Project
from mlops_assets.settings import DataPaths


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
    serving_port: int | None = None  # the canary's serving app on 127.0.0.1 (None: a free port)


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
PHASE_TAG = "mlops/demo_phase"
TRIGGER_TAG = "mlops/trigger"


def run_job(
    defs: dg.Definitions,
    job: str,
    instance: dg.DagsterInstance,
    *,
    phase: str,
    trigger: str,
    first: str | None = None,
    last: str | None = None,
    run_config: dict | None = None,
) -> dg.ExecuteInProcessResult:
    """One in-process run of a named job (over a partition range when ``first``/``last`` are given; the daily
    assets have single-run backfill policies), tagged with the demo phase and its trigger."""
    tags = {PHASE_TAG: phase, TRIGGER_TAG: trigger}
    if first is not None:
        tags |= range_tags(first, last or first)
    return defs.resolve_job_def(job).execute_in_process(
        instance=instance, tags=tags, run_config={**QUIET, **(run_config or {})}, raise_on_error=False
    )


def materialize_range(
    defs: dg.Definitions, selection: list[str], first: str, last: str, instance: dg.DagsterInstance
) -> dg.ExecuteInProcessResult:
    """One in-process run of the implicit asset job over a partition range (for scripts and tests)."""
    return defs.resolve_implicit_global_asset_job_def().execute_in_process(
        instance=instance,
        asset_selection=[dg.AssetKey(k) for k in selection],
        tags=range_tags(first, last),
        run_config=QUIET,
        raise_on_error=False,
    )


class RunEvents:
    """A run's events read back from the instance, with the part of ``ExecuteInProcessResult``'s API the summaries
    use (for runs a sensor launched)."""

    def __init__(self, instance: dg.DagsterInstance, run_id: str) -> None:
        self.run_id = run_id
        run = instance.get_run_by_id(run_id)
        self.job_name = run.job_name if run else "?"
        self.success = run is not None and run.status == dg.DagsterRunStatus.SUCCESS
        self._mats = [
            e.asset_materialization
            for e in instance.all_logs(run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION)
        ]
        self._checks = [
            e.asset_check_evaluation
            for e in instance.all_logs(run_id, of_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION)
        ]

    def asset_materializations_for_node(self, name: str) -> list[dg.AssetMaterialization]:
        return [m for m in self._mats if m.asset_key == dg.AssetKey(name)]

    def get_asset_check_evaluations(self):
        return list(self._checks)


def _step(name: str, result, started: float) -> bool:
    verdict = "succeeded" if result.success else "FAILED"
    job = getattr(result, "job_name", None) or getattr(getattr(result, "job_def", None), "name", "")
    _say(f"{name}: {job} run {result.run_id[:8]} {verdict} in {time.monotonic() - started:.1f}s")
    return result.success


def features_summary(result) -> str:
    lines = []
    for mat in result.asset_materializations_for_node("training_set"):
        meta = mat.metadata
        rate = meta["label_rate"].value if "label_rate" in meta else meta["label_mean"].value
        name = "label rate" if "label_rate" in meta else "label mean"
        lines.append(
            f"training set: {meta['dagster/row_count'].value:,} label rows, {name} {rate:.4g}, "
            f"{meta['time_min'].value} .. {meta['time_max'].value}"
        )
    for online in result.asset_materializations_for_node("online_features"):
        lines.append(f"online store:\n{online.metadata['views'].value}")
    return "\n".join(lines)


def ingestion_summary(paths: DataPaths, result, sources: list[str]) -> str:
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


def training_summary(result) -> str:
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
    for mat in result.asset_materializations_for_node("rollout_state"):
        meta = mat.metadata
        lines.append(f"rollout: {meta['action'].value} ({meta['mode'].value}): {meta['reason'].value}")
    return "\n".join(lines)


def drift_summary(result) -> str:
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
        status = check.metadata.get("status")
        verdict = (
            "not applicable"
            if status is not None and status.value == "not applicable"
            else ("pass" if check.passed else f"FAIL ({check.severity.value})")
        )
        lines.append(f"  check {check.check_name}: {verdict} {(check.description or '')[:160]}")
    return "\n".join(lines)


RUN_LOG = "demo-runs.log"


def tick(daemon, name: str):
    """One recorded tick of a sensor of the code location, printed; the event logs of the runs it launches go to
    ``<DAGSTER_HOME>/demo-runs.log`` (they are in the instance too: every run's page in the UI shows them)."""
    import contextlib

    with open(Path(daemon.instance.root_directory) / RUN_LOG, "a") as log, contextlib.redirect_stderr(log):
        result = daemon.tick(name)
    _say(f"  tick {result.describe()}")
    return result


def launched_runs(instance: dg.DagsterInstance, result) -> list[RunEvents]:
    """The runs a tick launched (each executed before the tick returned)."""
    return [RunEvents(instance, run_id) for run_id in result.run_ids]


def population_rows(project: Project, last: str, max_entities: int) -> tuple[list, dict]:
    """The monitored population on ``last`` and its online feature rows as of the day's end (the canary's traffic)."""
    import math
    from datetime import UTC, datetime

    from mlops_assets.featurestore import FeatureStore
    from mlops_assets.monitoring.daily import current_population

    store = FeatureStore(project)
    key = project.target_entity.join_key
    now = date.fromisoformat(last) + timedelta(days=1)
    ids = current_population(store, last)[:max_entities]
    columns = store.get_online_features_dict(ids, now=datetime(now.year, now.month, now.day, tzinfo=UTC))
    names = [c for c in columns if c != key and "__" not in c]
    rows = {
        str(eid): {
            n: (None if isinstance(columns[n][i], float) and math.isnan(columns[n][i]) else columns[n][i])
            for n in names
        }
        for i, eid in enumerate(columns[key])
    }
    return list(rows), rows


def run_canary(
    project: Project,
    daemon,
    instance: dg.DagsterInstance,
    last: str,
    *,
    requests_per_round: int = 400,
    max_rounds: int = 80,
    max_entities: int = 10_000,
    seed: int = 0,
    port: int | None = None,
) -> str:
    """Simulated users call the real serving app (the registry's champion and challenger, routed by the rollout
    state) while the canary sensor judges each step on the prediction log; then the serving-log sensor stores the
    log as a prediction_log partition with the A/B report. Returns the rollout's final mode."""
    import numpy as np

    from mlops_assets.serving.app import MappingFeatureSource, ServingConfig, create_app
    from mlops_assets.serving.demo import LocalServer, send_traffic
    from mlops_assets.serving.rollout import RolloutController
    from mlops_assets.serving.routing import MemoryAssignments

    controller = RolloutController(project.paths.root)
    state = controller.state()
    if state.mode != "canary":
        _say(f"no canary to run (rollout mode {state.mode}: {state.reason or 'nothing started'})")
        return state.mode
    key = project.target_entity.join_key
    ids, rows = population_rows(project, last, max_entities)
    _say(
        f"canary of v{state.challenger_version} against champion v{state.champion_version} "
        f"(experiment {state.experiment}): simulated users call the serving app for {len(ids)} entities of the "
        "monitored population; canary_rollout_sensor judges each step on the prediction log"
    )
    config = ServingConfig(
        project=project,
        feature_source=MappingFeatureSource(rows),
        assignments=MemoryAssignments(),
        poll_interval_s=0.5,
    )
    rng = np.random.default_rng(seed)
    sent: dict[str, int] = {}
    with LocalServer(create_app(config), port=port) as server:
        _say(f"serving app on {server.url} (POST /predict, GET /metrics, GET /health)")
        for _ in range(max_rounds):
            step = controller.state()
            for arm, n in send_traffic(server, key, ids, requests_per_round, rng).items():
                sent[arm] = sent.get(arm, 0) + n
            result = daemon.tick("canary_rollout_sensor")
            after = controller.state()
            if result.status == "SUCCESS" or after.mode != "canary" or after.step != step.step:
                latest = instance.get_latest_materialization_event(dg.AssetKey("rollout_state"))
                meta = latest.asset_materialization.metadata if latest else {}
                _say(
                    f"  step {step.step + 1} ({step.challenger_share:.0%} of entities on v{step.challenger_version}): "
                    f"{meta['action'].value if 'action' in meta else result.status}: "
                    f"{meta['reason'].value if 'reason' in meta else result.skip_reason} -> now {after.mode}"
                    + (f" {after.challenger_share:.0%}" if after.mode == "canary" else "")
                )
                if "promotion" in meta and meta["promotion"].value != "not requested":
                    _say(f"  {meta['promotion'].value}")
            if after.mode != "canary":
                break
        else:
            _say(f"the canary did not finish within {max_rounds} rounds of {requests_per_round} requests")
    _say(f"requests answered by arm: {sent}")
    for run in launched_runs(instance, tick(daemon, "serving_log_sensor")):
        _say(f"  {run.job_name} run {run.run_id[:8]} {'succeeded' if run.success else 'FAILED'}")
        for mat in run.asset_materializations_for_node("prediction_log"):
            _say(f"  prediction_log {mat.partition}: {mat.metadata['dagster/row_count'].value} records")
        for mat in run.asset_materializations_for_node("ab_test_report"):
            _say(f"  ab_test_report: {mat.metadata['decision'].value}: {mat.metadata['reason'].value}")
    return controller.state().mode


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
    from mlops_assets.daemon_ticks import (
        LocalDaemon,
        demo_instance,
        project_environment,
        restore_environment,
        set_environment,
    )
    from mlops_assets.project import project_root

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
    # the code location is loaded as the daemon loads it, on this project: partitions end where the landing data ends,
    # steps run in the run's process, sensors may tick every second, a gated challenger goes through a canary
    environment = {
        **project_environment(project.spec_path, paths.root),
        "MLOPS_SENSOR_INTERVAL_S": "1",
        "MLOPS_ROLLOUT": "canary" if config.canary else "direct",
        "MLOPS_EXECUTOR": "in_process",
    }
    saved = set_environment(environment)
    import logging

    logging.getLogger("dagster.daemon").setLevel(logging.WARNING)  # the daemon's own chatter
    try:
        with demo_instance(home) as instance, LocalDaemon(instance, project_root()) as daemon:
            return _phases(project, config, instance, daemon, days, history_days, started)
    finally:
        restore_environment(saved)


def _phases(
    project: Project, config: DemoConfig, instance, daemon, days: int, history_days: int, started
) -> int:
    import importlib

    defs = importlib.import_module("mlops_assets.definitions").defs  # the definitions the daemon ticks
    paths = project.paths
    start = project.spec.partitions.start.isoformat()
    first, last = start, _day(start, days - 1)
    history_end = _day(start, history_days - 1)
    sources = list(project.spec.sources)
    training_run_config = (
        {"ops": {"candidate_model": {"config": {"model_type": config.model_type}}}}
        if config.model_type
        else None
    )

    def ingest_and_features(a: str, b: str, phase: str, trigger: str) -> bool:
        t0 = time.monotonic()
        _say(f"ingesting {a}..{b} (ingestion_job, one run: single-run backfill)")
        result = run_job(defs, "ingestion_job", instance, phase=phase, trigger=trigger, first=a, last=b)
        ok = _step("ingestion", result, t0)
        print(ingestion_summary(paths, result, sources), flush=True)
        if not ok:
            _say("a blocking gate failed: see the run in the UI (make ui)")
            return False
        t0 = time.monotonic()
        _say(f"computing feature views {project.view_names} for {a}..{b} (feature_views_job, one run)")
        result = run_job(defs, "feature_views_job", instance, phase=phase, trigger=trigger, first=a, last=b)
        if not _step("feature views", result, t0):
            return False
        if b == last:  # every landing file is ingested now: the landing sensor finds nothing to request
            tick(daemon, "landing_files_sensor")
        t0 = time.monotonic()
        refreshed = launched_runs(instance, tick(daemon, "features_automation_sensor"))
        for run in refreshed:
            _step("online store refresh (automation condition)", run, t0)
            print(features_summary(run), flush=True)
        if refreshed:
            # the daemon's next tick sees the refresh as handled; a tick that saw it together with the next days'
            # updates would drop those updates (Dagster resets `since_last_handled` when both arrive in one tick)
            tick(daemon, "features_automation_sensor")
        return True

    # an automation condition reacts to what changed since its sensor's previous tick: a first tick sets the baseline
    tick(daemon, "features_automation_sensor")
    phase = "1-history"
    _say(f"== phase 1: history {first}..{history_end}: backfill, features, train, gate, promote")
    if not ingest_and_features(first, history_end, phase, "backfill"):
        return 1
    t0 = time.monotonic()
    result = run_job(
        defs, "retraining_job", instance, phase=phase, trigger="initial", run_config=training_run_config
    )
    print(features_summary(result), flush=True)
    print(training_summary(result), flush=True)
    if not _step("train + evaluate + promote", result, t0):
        _say("a quality gate stopped the promotion: see evaluation_report's checks in the UI")
        return 1
    tick(daemon, "first_champion_sensor")  # a champion exists now: the bootstrap sensor stands down

    if history_end >= last:
        _say(f"done in {time.monotonic() - started:.1f}s; explore it with `make ui`")
        return 0
    new_first = _day(history_end, 1)
    phase = "2-new-data"
    _say(f"== phase 2: new data {new_first}..{last} arrives; score it and monitor it against the champion")
    if not ingest_and_features(new_first, last, phase, "new_landing_data"):
        return 1
    t0 = time.monotonic()
    result = run_job(
        defs,
        "batch_scoring_job",
        instance,
        phase=phase,
        trigger="new_landing_data",
        first=new_first,
        last=last,
    )
    if _step(f"batch scoring {new_first}..{last} by the champion", result, t0):
        scored = [
            m.metadata["dagster/row_count"].value
            for m in result.asset_materializations_for_node("batch_predictions")
        ]
        _say(f"scored {sum(scored):,} entity-days ({min(scored):,}..{max(scored):,} a day)")
    monitor_first = _day(history_end, 1 - config.monitor_days_before)
    t0 = time.monotonic()
    result = run_job(
        defs,
        "drift_report_job",
        instance,
        phase=phase,
        trigger="new_landing_data",
        first=monitor_first,
        last=last,
    )
    _step(f"drift report {monitor_first}..{last}", result, t0)
    print(drift_summary(result), flush=True)

    _say("== phase 3: retraining triggered by the drift sensor")
    t0 = time.monotonic()
    alarm = tick(daemon, "drift_retraining_sensor")
    retrained = launched_runs(instance, alarm)
    if not retrained:
        _say("the drift sensor requested no retraining (no ERROR check failed)")
    for run in retrained:
        _say(
            f"drift_retraining_sensor launched {run.job_name}: {instance.get_run_by_id(run.run_id).tags.get('mlops/trigger_reason', '')}"
        )
        print(training_summary(run), flush=True)
        if not _step("retraining", run, t0):
            _say("the retrained model did not pass every gate: the champion stays")
            for alert in launched_runs(instance, tick(daemon, "quality_gate_alert_sensor")):
                _say(f"  {alert.job_name} {alert.run_id[:8]}")
    if retrained and retrained[-1].success and config.canary:
        _say("== phase 4: canary rollout of the retrained challenger on simulated traffic")
        run_canary(project, daemon, instance, last, port=config.serving_port)
    _say(f"done in {time.monotonic() - started:.1f}s; explore it with `make ui`")
    return 0
