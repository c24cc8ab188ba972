"""The training shell in Dagster: train → evaluate (blocking gates) → promote, the alert sensor, rollback, caching."""

from __future__ import annotations

import base64
import json
import re
from argparse import Namespace

import dagster as dg
import pytest

from mlops_assets.features.store import FeatureStore
from mlops_assets.resources import DataDirResource
from mlops_assets.storage import combine_hashes, frame_hash
from mlops_assets.training import registry
from mlops_assets.training.alerts import default_alerts_path, read_alerts
from mlops_assets.training.assets import EvaluationConfig, training_assets
from mlops_assets.training.cli import reproduce_command, rollback_command
from mlops_assets.training.gates import GATE_NAMES, GateThresholds
from mlops_assets.training.jobs import rollback_job
from mlops_assets.training.reproduce import ReproductionResult
from mlops_assets.training.resources import MlflowResource
from mlops_assets.training.sensors import alert_for_failed_run, quality_gate_alert_sensor
from mlops_assets.training.synthetic import synthetic_training_set
from mlops_assets.training.tracking import TrackingConfig, ensure_tracking_store
from mlops_assets_tests.conftest import ingest_small_world

FAST = {
    "candidate_model": {"config": {"hyperparameters": {"max_iter": 30}, "importance_repeats": 2}},
    "evaluation_report": {"config": {"latency_calls": 50}},
}


@pytest.fixture(scope="module")
def tracking_uri(tmp_path_factory) -> str:
    """One MLflow database for the module (its creation costs seconds); tests use their own model names."""
    root = tmp_path_factory.mktemp("mlflow_store")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    ensure_tracking_store(TrackingConfig(tracking_uri=uri, artifact_location=str(root / "artifacts")))
    return uri


def _write_training_set(paths, seed: int = 2, drop: int = 0):
    frame = synthetic_training_set(n_rows=300, n_days=8, seed=seed).iloc[drop:].reset_index(drop=True)
    FeatureStore(paths.root).write_training_set(frame, {"content_hash": frame_hash(frame)})
    return frame_hash(frame)


def _resources(paths, tracking_uri: str, model_name: str) -> dict:
    data = DataDirResource(root=str(paths.root))
    return {
        "data": data,
        "mlflow": MlflowResource(data=data, tracking_uri=tracking_uri, model_name=model_name),
    }


def _run(resources, instance, assets=training_assets, evaluation=None, candidate=None):
    run_config = {
        "ops": {
            "candidate_model": {"config": FAST["candidate_model"]["config"] | (candidate or {})},
            "evaluation_report": {"config": FAST["evaluation_report"]["config"] | (evaluation or {})},
        }
    }
    run_config["ops"] = {
        k: v for k, v in run_config["ops"].items() if any(a.key.path[-1] == k for a in assets)
    }
    return dg.materialize(
        assets, instance=instance, resources=resources, run_config=run_config, raise_on_error=False
    )


def _meta(result, node):
    (mat,) = result.asset_materializations_for_node(node)
    return {k: v.value for k, v in mat.metadata.items()}


def _champion(resources):
    mv = registry.alias_version(
        resources["mlflow"].client(), registry.CHAMPION, resources["mlflow"].model_name
    )
    return None if mv is None else int(mv.version)


@pytest.mark.slow
def test_graph_trains_evaluates_and_promotes_a_first_champion(data_dir, tracking_uri):
    ts_hash = _write_training_set(data_dir)
    resources = _resources(data_dir, tracking_uri, "churn-first")
    instance = dg.DagsterInstance.ephemeral()
    result = _run(resources, instance)
    assert result.success
    cand = _meta(result, "candidate_model")
    assert cand["cached"] is False and cand["training_set_hash"] == ts_hash
    assert cand["model_uri"] == f"models:/churn-first/{cand['version']}"
    assert "age_group" not in cand["features"] and "plan" in cand["features"]
    assert "| roc_auc |" in cand["metrics"]
    (mat,) = result.asset_materializations_for_node("candidate_model")
    assert mat.tags["dagster/data_version"] == combine_hashes(
        [ts_hash, cand["params_hash"], cand["code_version"]]
    )
    run = resources["mlflow"].client().get_run(cand["run_id"])
    assert run.data.tags["dagster_run_id"] == result.run_id

    checks = {
        e.check_name: e
        for e in result.get_asset_check_evaluations()
        if e.asset_key == dg.AssetKey("evaluation_report")
    }
    assert sorted(checks) == sorted(GATE_NAMES) and all(c.passed for c in checks.values())
    assert checks["accuracy_vs_champion"].metadata["skipped"].value is True  # no champion yet
    report = _meta(result, "evaluation_report")
    assert report["challenger_version"] == cand["version"] and report["champion_version"] == "none"
    assert "## Quality" in report["report"] and "| roc_auc |" in report["report"]
    for key in ("roc_curve", "calibration_curve"):
        payload = re.fullmatch(r"!\[[^\]]+\]\(data:image/png;base64,([A-Za-z0-9+/=]+)\)", report[key]).group(
            1
        )
        assert base64.b64decode(payload).startswith(b"\x89PNG")
    saved = data_dir.reports / f"evaluation_v{cand['version']}.md"
    assert report["report_path"] == str(saved) and saved.exists()

    promo = _meta(result, "promotion")
    assert promo["champion_version"] == cand["version"] == _champion(resources)
    assert promo["previous_champion"] == "none" and promo["moved"] is True
    history = registry.read_promotion_history(registry.default_history_path(data_dir.root))
    assert history[["action", "version", "dagster_run_id"]].values.tolist() == [
        ["promote", cand["version"], result.run_id]
    ]


def test_unchanged_training_set_reuses_the_version_and_new_data_retrains(data_dir, tracking_uri):
    _write_training_set(data_dir)
    resources = _resources(data_dir, tracking_uri, "churn-cache")
    instance = dg.DagsterInstance.ephemeral()
    first = _run(resources, instance, assets=training_assets[:1])
    again = _run(resources, instance, assets=training_assets[:1])
    assert first.success and again.success
    a, b = _meta(first, "candidate_model"), _meta(again, "candidate_model")
    assert a["cached"] is False and b["cached"] is True
    assert b["version"] == a["version"] and b["run_id"] == a["run_id"]
    assert f"reused version {a['version']}" in b["cache_reason"]
    tags = [
        r.asset_materializations_for_node("candidate_model")[0].tags["dagster/data_version"]
        for r in (first, again)
    ]
    assert tags[0] == tags[1]

    _write_training_set(data_dir, drop=10)  # new data → new hash → retrain
    changed = _run(resources, instance, assets=training_assets[:1])
    c = _meta(changed, "candidate_model")
    assert c["cached"] is False and c["version"] == a["version"] + 1
    assert "no registered version came from the same" in c["cache_reason"]


def test_failing_gates_stop_before_promotion_and_the_sensor_alerts(data_dir, tracking_uri):
    _write_training_set(data_dir)
    resources = _resources(data_dir, tracking_uri, "churn-gated")
    instance = dg.DagsterInstance.ephemeral()
    # an ingestion gate that failed earlier in this instance: the training data is not valid
    instance.report_runless_asset_event(
        dg.AssetCheckEvaluation(
            asset_key=dg.AssetKey("raw_events"),
            check_name="quarantine_rate_within_threshold",
            passed=False,
            description="2026-01-03: quarantine rate 10.00% > 5.00%",
        )
    )
    result = _run(resources, instance, evaluation={"max_p99_latency_ms": 0.0001})
    assert not result.success
    assert result.asset_materializations_for_node("promotion") == []
    assert _champion(resources) is None
    checks = {e.check_name: e for e in result.get_asset_check_evaluations()}
    failed = sorted(name for name, e in checks.items() if not e.passed)
    assert failed == ["p99_latency", "training_data_valid"]
    latency = checks["p99_latency"]
    measured = latency.metadata["measured"].value
    assert f"{measured:.2f} ms" in latency.description and "max_p99_latency_ms 0.0001" in latency.description
    data_gate = checks["training_data_valid"].description
    assert "raw_events.quarantine_rate_within_threshold failed" in data_gate and "10.00% > 5.00%" in data_gate

    context = dg.build_run_status_sensor_context(
        sensor_name="quality_gate_alert_sensor",
        dagster_instance=instance,
        dagster_run=result.dagster_run,
        dagster_event=result.get_run_failure_event(),
        resources={"data": resources["data"]},
    )
    quality_gate_alert_sensor(context)
    (alert,) = read_alerts(default_alerts_path(data_dir.root))
    assert alert["kind"] == "quality_gate_failed" and alert["details"]["dagster_run_id"] == result.run_id
    assert alert["details"]["model_name"] == "churn-gated"
    assert [g["name"] for g in alert["details"]["gates"]] == ["p99_latency", "training_data_valid"]
    assert alert["details"]["gates"][0]["measured"] == pytest.approx(measured)
    assert "max_p99_latency_ms 0.0001" in alert["message"]


def test_a_failed_run_without_gates_outside_training_raises_no_alert():
    @dg.asset
    def broken() -> None:
        raise ValueError("boom")

    instance = dg.DagsterInstance.ephemeral()
    result = dg.materialize([broken], instance=instance, raise_on_error=False)
    assert not result.success
    assert alert_for_failed_run(instance, result.dagster_run, "boom") is None


@pytest.mark.slow
def test_rollback_job_restores_the_previous_champion_and_cli_reproduces(
    data_dir, tracking_uri, monkeypatch, capsys
):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_uri)
    resources = _resources(data_dir, tracking_uri, "churn-model")  # the CLI's default model name
    instance = dg.DagsterInstance.ephemeral()
    versions = []
    for drop in (0, 10):
        _write_training_set(data_dir, drop=drop)
        result = _run(resources, instance, evaluation={"max_accuracy_drop": 1.0})
        assert result.success
        versions.append(_meta(result, "promotion")["champion_version"])
    first, second = versions
    assert second == first + 1 and _champion(resources) == second

    rolled = rollback_job.execute_in_process(
        instance=instance,
        resources=resources,
        run_config={"ops": {"rollback_champion": {"config": {"reason": "test"}}}},
    )
    assert rolled.success and _champion(resources) == first
    client = resources["mlflow"].client()
    assert (
        client.get_model_version("churn-model", str(second)).tags[registry.LIFECYCLE_TAG] == registry.ARCHIVED
    )
    history = registry.read_promotion_history(registry.default_history_path(data_dir.root))
    moves = [
        (r.action, r.version, None if r.previous_version != r.previous_version else int(r.previous_version))
        for r in history.itertuples()
    ]
    assert moves == [("promote", first, None), ("promote", second, first), ("rollback", first, second)]
    assert history["dagster_run_id"].iloc[-1] == rolled.run_id

    # the next retrain on unchanged data reuses the rolled-back version: it passes the gates but stays out
    rerun = _run(resources, instance, evaluation={"max_accuracy_drop": 1.0})
    assert rerun.success and _meta(rerun, "candidate_model")["cached"] is True
    assert (
        _meta(rerun, "promotion")["moved"] is False and "rolled back" in _meta(rerun, "promotion")["reason"]
    )
    assert _champion(resources) == first

    again = rollback_job.execute_in_process(instance=instance, resources=resources, raise_on_error=False)
    assert not again.success and _champion(resources) == first  # one step only; a champion remains
    assert rollback_command(Namespace(reason="cli")) == 1
    assert "rollback refused" in capsys.readouterr().out

    assert reproduce_command(second) == 0
    out = capsys.readouterr().out
    assert "max |difference| of churn scores: 0" in out and "identical" in out


def test_reproduce_command_exits_non_zero_when_predictions_differ(monkeypatch, capsys):
    def differing(version, tracking, tolerance):
        return ReproductionResult(
            "churn-model", version, 40, 0.125, tolerance, "train-1", "train-1", "a" * 40, "a" * 40
        )

    monkeypatch.setattr("mlops_assets.training.cli.reproduce", differing)
    assert reproduce_command(3) == 1
    out = capsys.readouterr().out
    assert "0.125" in out and "NOT reproduced" in out


def test_code_location_wires_jobs_sensor_and_gate_defaults():
    from mlops_assets.definitions import defs

    job = defs.resolve_job_def("retraining_job")
    keys = {k.to_user_string() for k in job.asset_layer.executable_asset_keys}
    assert keys == {"training_set", "candidate_model", "evaluation_report", "promotion"}
    checks = {(k.asset_key.to_user_string(), k.name) for k in job.asset_layer.asset_graph.asset_check_keys}
    assert {("evaluation_report", g) for g in GATE_NAMES} | {
        ("training_set", "no_feature_after_label")
    } <= checks
    assert defs.resolve_job_def("rollback_job") is not None
    sensor = defs.resolve_sensor_def("quality_gate_alert_sensor")
    assert sensor.default_status == dg.DefaultSensorStatus.RUNNING
    config = EvaluationConfig()
    assert json.dumps(config.thresholds().to_dict()) == json.dumps(GateThresholds().to_dict())


@pytest.mark.slow
def test_retraining_job_on_simulated_ingested_data(data_dir, monkeypatch):
    """simulate → ingest → feature views → retraining_job (training_set → candidate → gates → promotion)."""
    from mlops_assets.definitions import defs
    from mlops_assets.features.views import model_feature_names

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)  # the default store under the data root
    instance = dg.DagsterInstance.ephemeral()
    ingest_small_world(data_dir, instance)

    job = defs.resolve_job_def("retraining_job")
    run_config = {
        "ops": {
            "candidate_model": {"config": {"model_type": "logistic_regression", "importance_repeats": 2}},
            "evaluation_report": {"config": {"latency_calls": 50}},
        }
    }
    result = job.execute_in_process(instance=instance, run_config=run_config)
    assert result.success
    checks = {(e.asset_key.to_user_string(), e.check_name): e for e in result.get_asset_check_evaluations()}
    assert checks[("training_set", "no_feature_after_label")].passed
    data_gate = checks[("evaluation_report", "training_data_valid")]
    assert data_gate.passed and "x 4 view timestamps" in data_gate.description
    for table in ("raw_events", "raw_labels", "customers"):
        assert f"{table}.schema_valid passed" in data_gate.description
    cand = _meta(result, "candidate_model")
    assert sorted(cand["features"]) == sorted(model_feature_names()) and "age_group" not in cand["features"]
    assert "age_group" in _meta(result, "evaluation_report")["report"]  # judged for bias, never an input
    promo = _meta(result, "promotion")
    assert promo["champion_version"] == cand["version"] == 1
    assert (data_dir.mlflow / "mlflow.db").exists()

    again = job.execute_in_process(instance=instance, run_config=run_config)  # nothing changed upstream
    assert again.success
    assert _meta(again, "candidate_model")["cached"] is True
    assert _meta(again, "promotion")["moved"] is False and _meta(again, "promotion")["champion_version"] == 1
