"""The drift_report asset, its checks, the drift retraining sensor and the weekly schedule, on small data."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta

import dagster as dg
import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from mlops_assets.features.store import FeatureStore
from mlops_assets.monitoring import daily
from mlops_assets.monitoring import definitions as monitoring_definitions
from mlops_assets.monitoring.assets import build_drift_asset
from mlops_assets.monitoring.schedules import (
    DEFAULT_RETRAIN_CRON,
    RETRAIN_CRON_ENV,
    build_retraining_schedule,
)
from mlops_assets.monitoring.sensors import drift_retraining_sensor
from mlops_assets.partitions import daily_partitions
from mlops_assets.project import Project
from mlops_assets.resources import DataDirResource
from mlops_assets.storage import read_partition, write_partition
from mlops_assets.training import registry
from mlops_assets.training.resources import MlflowResource
from mlops_assets.training.task import ModelTask
from mlops_assets.training.tracking import TrackingConfig, client_for
from mlops_assets.training.train import TrainConfig, TrainResult, train_and_log
from mlops_assets_tests.conftest import CHURN_SPEC, definitions, ingest_days, write_events

# The small world holds 2026-01-01..2026-02-14; its events from DRIFTED_FROM on are rewritten with drift.
NO_DRIFT_DAY, DRIFTED_FROM, DRIFT_DAY, DRIFT_DAY_2 = "2026-02-09", "2026-02-10", "2026-02-12", "2026-02-14"
# the reference: the days before the drift (the rewritten days lie inside the champion's training window)
REFERENCE_PERIOD = "2026-01-08..2026-02-08"


def day_range(first: str, last: str) -> list[str]:
    start, end = date.fromisoformat(first), date.fromisoformat(last)
    return [(start + timedelta(days=i)).isoformat() for i in range((end - start).days + 1)]


def train_champion(project: Project, model_type: str = "logistic_regression") -> TrainResult:
    """Build the project's training set, train a model on it and promote it to champion."""
    store = FeatureStore(project)
    frame, meta = store.build_training_set()
    store.write_training_set(frame, meta)
    task = ModelTask.from_project(project)
    tracking = TrackingConfig.for_project(project)
    trained = train_and_log(
        frame,
        task,
        TrainConfig.from_task(task, model_type=model_type, hyperparameters={}),  # the spec's are for its own
        tracking=tracking,
        importance_repeats=1,
    )
    registry.promote(
        client_for(tracking),
        trained.version,
        "test champion",
        model_name=project.model_name,
        history_path=registry.default_history_path(project.paths.root),
    )
    return trained


def inject_event_drift(project: Project, days: list[str]) -> None:
    """On ``days`` customers log in a tenth as often, pay five times as much per order and open two support
    tickets a day: the stored raw events of those days are rewritten and the event views recomputed."""
    rng = np.random.default_rng(0)
    for day in days:
        directory = project.paths.partition_dir("raw_events", day)
        table = read_partition(directory)
        events = table.to_pandas()
        logins = events["event_type"] == "login"
        events = events.loc[~logins | (rng.random(len(events)) < 0.1)].copy()
        events["amount"] = events["amount"] * 5.0
        active = events["customer_id"].unique()
        tickets = pd.DataFrame(
            {
                "event_id": [f"{day}-drift-{i}" for i in range(2 * len(active))],
                "customer_id": np.repeat(active, 2),
                "event_timestamp": pd.Timestamp(day, tz="UTC") + pd.Timedelta(hours=12),
                "event_type": "support_ticket",
                "amount": np.nan,
            }
        )
        frame = pd.concat([events, tickets], ignore_index=True)
        write_partition(pa.Table.from_pandas(frame, schema=table.schema, preserve_index=False), directory)
    views = [v for v in project.view_names if project.view(v).source == "raw_events"]
    FeatureStore(project).materialize(days, views)


def monitored_population(project: Project, day: str) -> int:
    """Customers with a raw event within the spec's ``active_within`` days up to ``day`` (the churn spec's
    monitored population: active in the last week)."""
    window = project.spec.monitoring.population.active_within
    first = max(date.fromisoformat(day) - timedelta(days=window - 1), date(2026, 1, 1)).isoformat()
    ids: set[str] = set()
    for d in day_range(first, day):
        directory = project.paths.partition_dir("raw_events", d)
        if directory.exists():
            ids.update(pd.read_parquet(directory)["customer_id"])
    return len(ids)


def labels_in_window(project: Project, source: str, day: str, window: int = 7) -> int:
    """Label rows stored in the ``window`` daily partitions of ``source`` up to ``day``."""
    first = (date.fromisoformat(day) - timedelta(days=window - 1)).isoformat()
    return sum(
        len(pd.read_parquet(project.paths.partition_dir(source, d)))
        for d in day_range(first, day)
        if project.paths.partition_dir(source, d).exists()
    )


def resources(project: Project) -> dict:
    data = DataDirResource(root=str(project.paths.root))
    mlflow = MlflowResource(data=data, model_name=project.model_name, experiment_name=project.name)
    return {"data": data, "mlflow": mlflow}


def run_day(
    project: Project, asset, day: str, instance: dg.DagsterInstance, **config
) -> dg.ExecuteInJobResult:
    return dg.materialize(
        [asset],
        partition_key=day,
        resources=resources(project),
        instance=instance,
        run_config={"ops": {"drift_report": {"config": config}}},
    )


@pytest.mark.slow
def test_drift_report_no_drift_vs_injected_drift_and_retraining_sensor(small_world, isolated_mlflow_env):
    project = small_world
    trained = train_champion(project)  # on the world before any drift
    inject_event_drift(project, day_range(DRIFTED_FROM, DRIFT_DAY_2))
    asset = build_drift_asset(project, daily_partitions(project))
    with dg.instance_for_test() as instance:  # run-sharded SQLite event log, as under `dagster dev`
        drift_and_sensor(project, asset, trained, instance)


def drift_and_sensor(project: Project, asset, trained: TrainResult, instance: dg.DagsterInstance) -> None:
    paths = project.paths
    calm = run_day(project, asset, NO_DRIFT_DAY, instance, min_labels=50, reference_period=REFERENCE_PERIOD)
    checks = {c.check_name: c for c in calm.get_asset_check_evaluations()}
    assert checks[daily.DATASET_DRIFT_CHECK].passed
    assert checks[daily.ESTIMATED_PERFORMANCE_CHECK].passed
    realized = checks[daily.REALIZED_PERFORMANCE_CHECK]
    assert realized.passed and not realized.metadata["skipped"].value, realized.description
    meta = calm.asset_materializations_for_node("drift_report")[0].metadata
    assert meta["champion_version"].value == trained.version
    assert meta["dagster/row_count"].value == monitored_population(project, NO_DRIFT_DAY)
    assert meta["realized_labels"].value == labels_in_window(project, "raw_labels", NO_DRIFT_DAY) >= 50
    assert "| feature |" in meta["report"].value
    # the bands are stated: mean + 3 sd of the reference period's daily chunks, each against the rest
    rule = checks[daily.FEATURE_DRIFT_CHECK].metadata["details"].value["band_rule"]
    assert rule == "mean ± 3 sd of the reference chunks" and meta["band_rule"].value == rule
    assert meta["reference_days"].value == REFERENCE_PERIOD
    assert "drift_report_" in meta["report_html"].value
    # sensor: passing checks request nothing
    context = dg.build_sensor_context(instance=instance)
    first = drift_retraining_sensor(context)
    assert not first.run_requests

    bad = run_day(
        project, asset, DRIFT_DAY, instance, histograms="drifted", reference_period=REFERENCE_PERIOD
    )
    checks = {c.check_name: c for c in bad.get_asset_check_evaluations()}
    share = checks[daily.DATASET_DRIFT_CHECK]
    assert not share.passed and share.severity == dg.AssetCheckSeverity.ERROR
    assert not checks[daily.FEATURE_DRIFT_CHECK].passed
    assert checks[daily.FEATURE_DRIFT_CHECK].severity == dg.AssetCheckSeverity.WARN
    meta = bad.asset_materializations_for_node("drift_report")[0].metadata
    drifted_features = set(meta["drifted_features"].value)
    assert {"logins_7d", "tickets_7d", "avg_order_value_30d"} <= drifted_features
    assert meta["worst_features"].value[0] in drifted_features  # worst first
    assert "data:image/png;base64," in meta["histograms"].value
    saved = sorted(p.name for p in paths.reports.glob(f"drift_report_{DRIFT_DAY}*"))
    assert f"drift_report_{DRIFT_DAY}.md" in saved and f"drift_report_{DRIFT_DAY}_logins_7d.png" in saved
    assert f"drift_report_{DRIFT_DAY}.html" in saved and (paths.reports / "drift_trend.png").exists()
    # plots of the flagged features (and the scores) only
    prefix = f"drift_report_{DRIFT_DAY}_"
    plotted = {n.removeprefix(prefix).removesuffix(".png") for n in saved if n.endswith(".png")}
    assert "logins_7d" in plotted and plotted <= drifted_features | {"prediction"}
    alerts = [json.loads(line) for line in (paths.alerts / "alerts.jsonl").read_text().splitlines()]
    assert alerts[-1]["kind"] == "model_degradation" and DRIFT_DAY in alerts[-1]["title"]

    # one failed evaluation -> exactly one retraining run, tagged with why
    result = drift_retraining_sensor(dg.build_sensor_context(instance=instance, cursor=first.cursor))
    assert len(result.run_requests) == 1
    request = result.run_requests[0]
    assert request.tags["mlops/trigger"] == "drift"
    assert daily.DATASET_DRIFT_CHECK in request.tags["mlops/trigger_reason"]
    assert request.run_key == f"drift-episode:champion-v{trained.version}:{DRIFT_DAY}"
    assert request.tags["mlops/drift_episode"] == request.run_key
    again = drift_retraining_sensor(dg.build_sensor_context(instance=instance, cursor=result.cursor))
    assert not again.run_requests

    # two days later the same drift fails the checks again: the same episode, no second retraining
    second = run_day(
        project, asset, DRIFT_DAY_2, instance, histograms="none", reference_period=REFERENCE_PERIOD
    )
    assert not {c.check_name: c for c in second.get_asset_check_evaluations()}[
        daily.DATASET_DRIFT_CHECK
    ].passed
    later = drift_retraining_sensor(dg.build_sensor_context(instance=instance, cursor=result.cursor))
    assert not later.run_requests and "episode" in later.skip_reason.skip_message


@pytest.mark.slow  # creating the MLflow store the resource sets up costs most of its 5-9 s
def test_drift_report_without_champion_says_so(churn, isolated_mlflow_env):
    write_events(churn.paths, NO_DRIFT_DAY)  # a landing day, so that the day is a partition
    asset = build_drift_asset(churn, daily_partitions(churn))
    result = run_day(churn, asset, NO_DRIFT_DAY, dg.DagsterInstance.ephemeral())
    meta = result.asset_materializations_for_node("drift_report")[0].metadata
    assert meta["status"].value == "no champion" and "champion" in meta["message"].value
    checks = result.get_asset_check_evaluations()
    assert {c.check_name for c in checks} == set(daily.CHECK_NAMES)
    assert all(c.passed and c.metadata["skipped"].value for c in checks)
    assert all("no champion" in c.description for c in checks)


@pytest.mark.slow
def test_drift_report_of_a_regression_champion_reports_realized_mae(bikes, isolated_mlflow_env):
    """The bikes example: realized MAE against the training-time holdout MAE, no CBPE estimate."""
    from sklearn.metrics import mean_absolute_error

    from examples.bikes.simulator import simulate

    # 40 days: the spec's 28-day warm-up leaves two label days to train on, a week of labels to monitor
    simulate(bikes.paths.landing, days=40, start="2026-03-01", seed=2, size=15, scenarios=())
    days = bikes.partition_days()
    ingest_days(bikes, bikes.spec.sources, days)
    FeatureStore(bikes).materialize(days)
    trained = train_champion(bikes, model_type="linear_regression")
    day = days[-1]
    asset = build_drift_asset(bikes, daily_partitions(bikes))
    result = run_day(bikes, asset, day, dg.DagsterInstance.ephemeral(), min_labels=20)
    assert result.success
    meta = result.asset_materializations_for_node("drift_report")[0].metadata
    assert meta["champion_version"].value == trained.version
    classification = {"estimated_accuracy", "estimated_roc_auc", "realized_accuracy", "realized_roc_auc"}
    assert not classification & set(meta)
    assert meta["training_mae"].value == pytest.approx(trained.metrics["holdout_mae"])
    # the realized MAE is the champion's mean absolute error on the labels observed in the last 7 days,
    # joined to their features as the training set joins them
    frame, _ = FeatureStore(bikes).read_training_set()
    window = set(day_range((date.fromisoformat(day) - timedelta(days=6)).isoformat(), day))
    rows = frame.loc[frame["observed_at"].dt.strftime("%Y-%m-%d").isin(window)]
    assert meta["realized_labels"].value == len(rows) == labels_in_window(bikes, "demand", day) >= 20
    features = [*trained.numeric_features, *trained.categorical_features]
    expected = mean_absolute_error(rows["trips_next_7d"], trained.model.predict(rows[features]))
    assert meta["realized_mae"].value == pytest.approx(expected, rel=1e-9)
    assert "| mae |" in meta["report"].value
    checks = {c.check_name: c for c in result.get_asset_check_evaluations()}
    estimated = checks[daily.ESTIMATED_PERFORMANCE_CHECK]
    assert estimated.passed and estimated.metadata["skipped"].value
    realized = checks[daily.REALIZED_PERFORMANCE_CHECK]
    assert not realized.metadata["skipped"].value
    assert set(realized.metadata["details"].value["drops"]) == {"mae"}


@pytest.fixture(scope="module")
def churn_defs(tmp_path_factory) -> dg.Definitions:
    """The churn example's definitions (built once: building them costs seconds), with the default cron."""
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv(RETRAIN_CRON_ENV, raising=False)
        yield definitions(Project.load(CHURN_SPEC, tmp_path_factory.mktemp("defs") / "data"))


def test_weekly_schedule_requests_retraining_job_with_tags(churn_defs, churn, monkeypatch):
    repo = churn_defs.get_repository_def()
    schedule = repo.get_schedule_def("weekly_retraining_schedule")
    assert schedule.job_name == "retraining_job" and repo.has_job("retraining_job")
    assert schedule.default_status == dg.DefaultScheduleStatus.RUNNING
    assert schedule.cron_schedule == DEFAULT_RETRAIN_CRON
    tick = datetime(2026, 3, 2, 3, 0, tzinfo=UTC)
    with dg.instance_for_test() as instance:
        request = schedule.evaluate_tick(
            dg.build_schedule_context(instance=instance, scheduled_execution_time=tick)
        )
    (run,) = request.run_requests
    assert run.tags["mlops/trigger"] == "schedule" and tick.isoformat() in run.tags["mlops/trigger_reason"]
    assert run.run_key == f"schedule:{tick.isoformat()}"

    # the cron comes from $MLOPS_RETRAIN_CRON when the definitions load
    assert build_retraining_schedule({RETRAIN_CRON_ENV: "0 6 * * *"}).cron_schedule == "0 6 * * *"
    assert build_retraining_schedule({}).cron_schedule == DEFAULT_RETRAIN_CRON
    monkeypatch.setenv(RETRAIN_CRON_ENV, "0 6 * * *")
    (loaded,) = monitoring_definitions.build_defs(churn, daily_partitions(churn)).schedules
    assert loaded.cron_schedule == "0 6 * * *"


def test_triggers_are_on_by_default_and_targets_do_not_overlap(churn_defs, churn):
    repo = churn_defs.get_repository_def()
    drift_sensor = repo.get_sensor_def("drift_retraining_sensor")
    new_data = repo.get_sensor_def("new_data_automation_sensor")
    assert drift_sensor.default_status == dg.DefaultSensorStatus.RUNNING
    assert drift_sensor.job_name == "retraining_job"
    assert new_data.default_status == dg.DefaultSensorStatus.RUNNING
    assert new_data.run_tags["mlops/trigger"] == "new_data"
    graph = repo.asset_graph
    mine = new_data.asset_selection.resolve(graph)
    views = {dg.AssetKey(v) for v in churn.view_names}
    # ... and the daily batch predictions (in the live replay nothing else materializes them)
    assert {
        dg.AssetKey("training_set"),
        dg.AssetKey("drift_report"),
        dg.AssetKey("batch_predictions"),
        *views,
    } <= mine
    others = [
        s
        for s in repo.sensor_defs
        if isinstance(s, dg.AutomationConditionSensorDefinition) and s.name != new_data.name
    ]
    for sensor in others:
        assert not (sensor.asset_selection.resolve(graph) & mine), sensor.name


def test_auc_standard_error_matches_monte_carlo():
    """Hanley-McNeil's AUC standard error (used to judge drops) against the spread of simulated AUCs."""
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    n_pos, n_neg, aucs = 40, 160, []
    for _ in range(1000):
        scores = np.concatenate([rng.normal(1.2, 1.0, n_pos), rng.normal(0.0, 1.0, n_neg)])
        aucs.append(roc_auc_score(np.r_[np.ones(n_pos), np.zeros(n_neg)], scores))
    mean, spread = float(np.mean(aucs)), float(np.std(aucs))
    # Hanley-McNeil assumes exponential score distributions; on binormal scores it errs on the large side
    # (fewer false decay alarms), by well under a quarter
    se = daily.metric_standard_error("roc_auc", mean, n_pos + n_neg, n_pos)
    assert 0.95 * spread <= se <= 1.25 * spread
    acc = daily.metric_standard_error("accuracy", 0.8, 200, 40)
    draws = rng.binomial(200, 0.8, 20000) / 200
    assert acc == pytest.approx(float(np.std(draws)), rel=0.05)


def test_decay_needs_a_drop_beyond_tolerance_and_noise():
    settings = daily.MonitorSettings(max_performance_drop=0.05, decay_alpha=0.05)
    training = {"accuracy": 0.90, "roc_auc": 0.85}
    # 100 holdout rows: a 0.06 accuracy drop is within two-sided sampling noise (z * se ~ 0.069) -> not decayed
    small = daily.judge_decay(training, (100, 20), {"accuracy": 0.84, "roc_auc": 0.85}, (150, 30), settings)
    assert not small.decayed and small.limits["accuracy"] > 0.06
    large = daily.judge_decay(
        training, (5000, 1000), {"accuracy": 0.84, "roc_auc": 0.85}, (5000, 1000), settings
    )
    assert large.decayed_metrics == ["accuracy"] and large.limits["accuracy"] == 0.05
