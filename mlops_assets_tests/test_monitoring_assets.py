"""The drift_report asset, its checks, the drift retraining sensor and the weekly schedule, on small data."""

from __future__ import annotations

import importlib
import json
from datetime import UTC, datetime

import dagster as dg
import numpy as np
import pandas as pd
import pytest

from mlops_assets.features.compute import feature_partition_dir, view_schema
from mlops_assets.features.views import FEATURE_VIEWS
from mlops_assets.monitoring import daily
from mlops_assets.monitoring.assets import drift_report
from mlops_assets.monitoring.sensors import drift_retraining_sensor, new_data_automation_sensor
from mlops_assets.resources import DataDirResource
from mlops_assets.settings import DataPaths
from mlops_assets.storage import write_partition
from mlops_assets.training import registry
from mlops_assets.training.resources import MlflowResource
from mlops_assets.training.synthetic import CATEGORICAL_FEATURES, NUMERIC_FEATURES, synthetic_training_set
from mlops_assets.training.tracking import TrackingConfig, client_for
from mlops_assets.training.train import TrainConfig, train_and_log

NO_DRIFT_DAY, DRIFT_DAY, DRIFT_DAY_2 = "2026-02-10", "2026-02-12", "2026-02-14"


def write_features(paths: DataPaths, day: str, rows: pd.DataFrame) -> None:
    stamp = pd.Timestamp(day, tz="UTC") + pd.Timedelta(days=1)
    for view in FEATURE_VIEWS:
        frame = pd.DataFrame({"customer_id": rows["customer_id"], "feature_timestamp": stamp})
        for f in view.features:
            frame[f.name] = rows[f.name] if f.name in rows else (0 if f.dtype == "int64" else np.nan)
            if f.dtype == "int64":
                frame[f.name] = frame[f.name].fillna(0).astype("int64")
        write_partition(frame[view_schema(view).names], feature_partition_dir(paths, view.name, day))


def write_day(paths: DataPaths, day: str, rows: pd.DataFrame, labelled: pd.DataFrame) -> None:
    """The day's population ``rows`` (features as of its end) and a separate cohort ``labelled`` whose labels
    arrive on the day (joined to the previous day's features, as the training set joins them)."""
    labelled = labelled.assign(customer_id="L" + labelled["customer_id"])
    write_features(paths, str(pd.Timestamp(day).date() - pd.Timedelta(days=1)), labelled)
    write_features(paths, day, rows)
    labels = pd.DataFrame(
        {
            "customer_id": labelled["customer_id"],
            "label_timestamp": pd.Series(
                pd.Timestamp(day, tz="UTC") + pd.Timedelta(hours=12), index=labelled.index
            ).astype("datetime64[us, UTC]"),
            "churned": labelled["churned"].astype("int8"),
        }
    )
    write_partition(labels, paths.partition_dir("raw_labels", day))


def drifted(rows: pd.DataFrame) -> pd.DataFrame:
    out = rows.copy()
    out["logins_30d"] = np.floor(out["logins_30d"] * 0.3)
    out["total_spend_30d"] *= 3.0
    out["avg_order_value_30d"] *= 3.0
    out["tickets_30d"] += 3
    out["days_since_last_login"] = out["days_since_last_login"] * 4 + 5
    out["plan"] = "basic"
    return out


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A champion trained on a synthetic training set, a no-drift day and two drifted days."""
    with pytest.MonkeyPatch.context() as patch:  # mlflow.set_tracking_uri exports the URI; keep it local
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)
        yield _world(tmp_path_factory)


def _world(tmp_path_factory):
    root = tmp_path_factory.mktemp("monitoring") / "data"
    paths = DataPaths(root)
    tracking = TrackingConfig.for_data_root(root)
    reference = synthetic_training_set(n_rows=600, n_days=10, seed=1)
    trained = train_and_log(
        reference,
        TrainConfig(model_type="logistic_regression"),
        numeric_features=NUMERIC_FEATURES,
        categorical_features=CATEGORICAL_FEATURES,
        tracking=tracking,
        importance_repeats=1,
    )
    registry.promote(
        client_for(tracking),
        trained.version,
        "test champion",
        history_path=registry.default_history_path(root),
    )
    current = synthetic_training_set(n_rows=500, n_days=1, seed=7)
    labelled = synthetic_training_set(n_rows=300, n_days=1, seed=17)
    write_day(paths, NO_DRIFT_DAY, current, labelled)
    write_day(paths, DRIFT_DAY, drifted(current), labelled)
    write_day(paths, DRIFT_DAY_2, drifted(synthetic_training_set(n_rows=500, n_days=1, seed=8)), labelled)
    return paths, trained


def resources(root) -> dict:
    data = DataDirResource(root=str(root))
    return {"data": data, "mlflow": MlflowResource(data=data)}


def run_day(paths: DataPaths, day: str, instance: dg.DagsterInstance, **config) -> dg.ExecuteInJobResult:
    return dg.materialize(
        [drift_report],
        partition_key=day,
        resources=resources(paths.root),
        instance=instance,
        run_config={"ops": {"drift_report": {"config": config}}},
    )


@pytest.mark.slow
def test_drift_report_no_drift_vs_injected_drift_and_retraining_sensor(world):
    with dg.instance_for_test() as instance:  # run-sharded SQLite event log, as under `dagster dev`
        drift_and_sensor(world, instance)


def drift_and_sensor(world, instance: dg.DagsterInstance) -> None:
    paths, trained = world

    calm = run_day(paths, NO_DRIFT_DAY, instance)
    checks = {c.check_name: c for c in calm.get_asset_check_evaluations()}
    assert checks[daily.DATASET_DRIFT_CHECK].passed
    assert (
        checks[daily.ESTIMATED_PERFORMANCE_CHECK].passed and checks[daily.REALIZED_PERFORMANCE_CHECK].passed
    )
    meta = calm.asset_materializations_for_node("drift_report")[0].metadata
    assert meta["champion_version"].value == trained.version and meta["dagster/row_count"].value == 500
    assert meta["realized_labels"].value == 300 and "| feature |" in meta["report"].value
    # the per-feature tests run at alpha / m (Bonferroni) over the champion's m input features
    alpha = checks[daily.FEATURE_DRIFT_CHECK].metadata["details"].value["per_feature_alpha"]
    assert alpha == pytest.approx(0.05 / (len(NUMERIC_FEATURES) + len(CATEGORICAL_FEATURES)))
    # sensor: passing checks request nothing
    context = dg.build_sensor_context(instance=instance)
    first = drift_retraining_sensor(context)
    assert not first.run_requests

    bad = run_day(paths, DRIFT_DAY, instance, histograms="drifted")
    checks = {c.check_name: c for c in bad.get_asset_check_evaluations()}
    share = checks[daily.DATASET_DRIFT_CHECK]
    assert not share.passed and share.severity == dg.AssetCheckSeverity.ERROR
    assert not checks[daily.FEATURE_DRIFT_CHECK].passed
    assert checks[daily.FEATURE_DRIFT_CHECK].severity == dg.AssetCheckSeverity.WARN
    meta = bad.asset_materializations_for_node("drift_report")[0].metadata
    drifted_features = set(meta["drifted_features"].value)
    assert {"logins_30d", "total_spend_30d", "tickets_30d", "plan"} <= drifted_features
    assert "data:image/png;base64," in meta["histograms"].value
    saved = sorted(p.name for p in paths.reports.glob(f"drift_report_{DRIFT_DAY}*"))
    assert f"drift_report_{DRIFT_DAY}.md" in saved and f"drift_report_{DRIFT_DAY}_logins_30d.png" in saved
    alerts = [json.loads(line) for line in (paths.alerts / "alerts.jsonl").read_text().splitlines()]
    assert alerts[-1]["kind"] == "model_degradation" and DRIFT_DAY in alerts[-1]["title"]

    # one failed evaluation -> exactly one retraining run, tagged with why
    result = drift_retraining_sensor(dg.build_sensor_context(instance=instance, cursor=first.cursor))
    assert len(result.run_requests) == 1
    request = result.run_requests[0]
    assert request.tags["mlops/trigger"] == "drift"
    assert daily.DATASET_DRIFT_CHECK in request.tags["mlops/trigger_reason"]
    assert request.run_key == f"drift:{DRIFT_DAY}:champion-v{trained.version}"
    again = drift_retraining_sensor(dg.build_sensor_context(instance=instance, cursor=result.cursor))
    assert not again.run_requests

    run_day(paths, DRIFT_DAY_2, instance, histograms="none")
    later = drift_retraining_sensor(dg.build_sensor_context(instance=instance, cursor=result.cursor))
    assert [r.run_key for r in later.run_requests] == [f"drift:{DRIFT_DAY_2}:champion-v{trained.version}"]


def test_drift_report_without_champion_says_so(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    paths = DataPaths(tmp_path / "data")
    current = synthetic_training_set(n_rows=50, n_days=1, seed=3)
    write_day(paths, NO_DRIFT_DAY, current, current)
    result = run_day(paths, NO_DRIFT_DAY, dg.DagsterInstance.ephemeral())
    meta = result.asset_materializations_for_node("drift_report")[0].metadata
    assert meta["status"].value == "no champion" and "champion" in meta["message"].value
    checks = result.get_asset_check_evaluations()
    assert {c.check_name for c in checks} == set(daily.CHECK_NAMES)
    assert all(c.passed and c.metadata["skipped"].value for c in checks)
    assert all("no champion" in c.description for c in checks)


def test_weekly_schedule_requests_retraining_job_with_tags(monkeypatch):
    from mlops_assets import definitions as top
    from mlops_assets.monitoring import schedules

    repo = top.defs.get_repository_def()
    schedule = repo.get_schedule_def("weekly_retraining_schedule")
    assert schedule.job_name == "retraining_job" and repo.has_job("retraining_job")
    assert schedule.default_status == dg.DefaultScheduleStatus.RUNNING
    tick = datetime(2026, 3, 2, 3, 0, tzinfo=UTC)
    with dg.instance_for_test() as instance:
        request = schedule.evaluate_tick(
            dg.build_schedule_context(instance=instance, scheduled_execution_time=tick)
        )
    (run,) = request.run_requests
    assert run.tags["mlops/trigger"] == "schedule" and tick.isoformat() in run.tags["mlops/trigger_reason"]
    assert run.run_key == f"schedule:{tick.isoformat()}"

    monkeypatch.setenv("MLOPS_RETRAIN_CRON", "0 6 * * *")
    try:
        assert importlib.reload(schedules).weekly_retraining_schedule.cron_schedule == "0 6 * * *"
    finally:
        monkeypatch.delenv("MLOPS_RETRAIN_CRON")
        importlib.reload(schedules)
    assert schedules.weekly_retraining_schedule.cron_schedule == schedules.DEFAULT_RETRAIN_CRON


def test_triggers_are_on_by_default_and_targets_do_not_overlap():
    from mlops_assets import definitions as top

    repo = top.defs.get_repository_def()
    assert drift_retraining_sensor.default_status == dg.DefaultSensorStatus.RUNNING
    assert new_data_automation_sensor.default_status == dg.DefaultSensorStatus.RUNNING
    assert new_data_automation_sensor.run_tags["mlops/trigger"] == "new_data"
    graph = repo.asset_graph
    mine = new_data_automation_sensor.asset_selection.resolve(graph)
    assert {dg.AssetKey("training_set"), dg.AssetKey("drift_report")} <= mine
    others = [
        s
        for s in repo.sensor_defs
        if isinstance(s, dg.AutomationConditionSensorDefinition) and s.name != new_data_automation_sensor.name
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
