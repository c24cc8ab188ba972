"""The asset graph the UI draws: connected lineage from the landing sources to the serving app's log, freshness
policies on the assets people watch, named jobs and running-by-default sensors; and the MLflow UI links put in
Dagster metadata when an MLflow UI URL is configured."""

from __future__ import annotations

from datetime import timedelta

import dagster as dg
import pytest

from mlops_assets_tests.conftest import definitions


@pytest.fixture
def graph(churn):
    return definitions(churn).resolve_asset_graph()


def _parents(graph, name: str) -> set[str]:
    return {k.to_user_string() for k in graph.get(dg.AssetKey(name)).parent_keys}


def test_serving_assets_depend_on_the_champion_and_the_views_they_read(graph, churn):
    views = set(churn.view_names)
    assert _parents(graph, "batch_predictions") == {"promotion", *views}
    assert _parents(graph, "rollout_state") == {"promotion"}  # written by the rollout controller
    assert _parents(graph, "serving_log") == {"promotion", "rollout_state", "online_features"}
    assert _parents(graph, "prediction_log") == {"serving_log"}
    assert _parents(graph, "ab_test_report") == {"prediction_log", churn.spec.target.source}
    assert _parents(graph, "online_features") == views
    # the serving app's log is an external asset (written outside Dagster), rollout_state a real one
    assert not graph.get(dg.AssetKey("serving_log")).is_materializable
    assert graph.get(dg.AssetKey("rollout_state")).is_materializable


def test_the_global_lineage_is_one_connected_graph(graph):
    """No group floats apart: every asset reaches every other through dependency edges (undirected)."""
    keys = set(graph.get_all_asset_keys())
    neighbours = {k: set(graph.get(k).parent_keys) | set(graph.get(k).child_keys) for k in keys}
    seen, todo = set(), [next(iter(keys))]
    while todo:
        key = todo.pop()
        if key not in seen:
            seen.add(key)
            todo.extend(neighbours[key] - seen)
    assert seen == keys, sorted(k.to_user_string() for k in keys - seen)
    groups = {graph.get(k).group_name for k in keys}
    assert {"serving", "training"} <= groups


def test_freshness_policies_on_sources_online_store_and_drift_report(graph, churn):
    def policy(name):
        return graph.get(dg.AssetKey(name)).freshness_policy

    for source in churn.spec.sources:
        assert policy(source).fail_window.to_timedelta() == timedelta(days=3), source
        assert policy(source).warn_window.to_timedelta() < policy(source).fail_window.to_timedelta()
    # the online store should be refreshed at least as often as its shortest view TTL
    ttls = [v.ttl for v in churn.spec.feature_views.values() if v.ttl is not None]
    assert policy("online_features").fail_window.to_timedelta() <= min(ttls)
    assert policy("drift_report").fail_window.to_timedelta() == timedelta(days=2)
    assert policy("candidate_model") is None


def test_named_jobs_and_sensors_running_by_default(churn):
    defs = definitions(churn)
    jobs = {j.name for j in defs.resolve_all_job_defs()}
    assert {
        "ingestion_job",
        "feature_views_job",
        "retraining_job",
        "batch_scoring_job",
        "drift_report_job",
        "serving_report_job",
    } <= jobs
    assert "rollout_state" in {
        k.to_user_string() for k in defs.resolve_job_def("retraining_job").asset_layer.executable_asset_keys
    }
    sensors = {s.name: s for s in defs.sensors}
    for name in (
        "drift_retraining_sensor",
        "canary_rollout_sensor",
        "serving_log_sensor",
        "first_champion_sensor",
    ):
        assert sensors[name].default_status == dg.DefaultSensorStatus.RUNNING, name


def test_sensor_interval_comes_from_the_environment(monkeypatch):
    from mlops_assets.automation import sensor_interval

    monkeypatch.delenv("MLOPS_SENSOR_INTERVAL_S", raising=False)
    assert sensor_interval(60) == 60
    monkeypatch.setenv("MLOPS_SENSOR_INTERVAL_S", "0.2")
    assert sensor_interval(60) == 1  # at least a second
    monkeypatch.setenv("MLOPS_SENSOR_INTERVAL_S", "soon")
    with pytest.raises(ValueError, match="MLOPS_SENSOR_INTERVAL_S"):
        sensor_interval(60)


class _Client:
    """The two MLflow client calls the links need."""

    def get_model_version(self, name, version):
        from types import SimpleNamespace

        return SimpleNamespace(run_id=f"run-of-{name}-{version}")

    def get_run(self, run_id):
        from types import SimpleNamespace

        return SimpleNamespace(info=SimpleNamespace(experiment_id="7"))


def test_mlflow_links_only_when_an_mlflow_ui_url_is_configured(monkeypatch):
    from mlops_assets.training.tracking import mlflow_links

    monkeypatch.delenv("MLOPS_MLFLOW_UI_URL", raising=False)
    assert mlflow_links(_Client(), "churn model", 3) == {}
    monkeypatch.setenv("MLOPS_MLFLOW_UI_URL", "http://127.0.0.1:3475/")
    links = mlflow_links(_Client(), "churn model", 3)
    assert links == {
        "mlflow_model_version": "http://127.0.0.1:3475/#/models/churn%20model/versions/3",
        "mlflow_run": "http://127.0.0.1:3475/#/experiments/7/runs/run-of-churn%20model-3",
    }
    assert mlflow_links(_Client(), "m", None, run_id="abc") == {
        "mlflow_run": "http://127.0.0.1:3475/#/experiments/7/runs/abc"
    }
