"""Observability: what the serving app's GET /metrics exports (score histogram, per-view online-store freshness, the
drift report's gauges), the Prometheus alert rules (checked and unit-tested by promtool) and the Grafana dashboard
(every metric its panels query is exported by the app, scraped here)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from mlops_assets.project import Project
from mlops_assets.serving.app import ServingConfig, create_app
from mlops_assets.serving.models import InMemoryModelSource
from mlops_assets.serving.routing import MemoryAssignments
from mlops_assets.training.task import ModelTask
from mlops_assets.training.train import TrainConfig, fit_model
from mlops_assets_tests.conftest import CHURN_SPEC, REPO, Clock
from mlops_assets_tests.serving_world import T, churn_world
from mlops_assets_tests.synthetic import CATEGORICAL_FEATURES, NUMERIC_FEATURES, synthetic_training_set

ALERTS = REPO / "deploy" / "prometheus" / "alerts.yml"
ALERT_TESTS = REPO / "deploy" / "prometheus" / "alerts.test.yml"
DASHBOARD = REPO / "deploy" / "grafana" / "mlops_assets.json"
PROMTOOL = shutil.which("promtool")
NO_PROMTOOL = "promtool not installed (Debian's `prometheus` package: `make observability-tools`)"
VIEWS = ["customer_profile", "engagement", "purchase_activity", "support"]
REFRESHED_AT = T("2026-01-11 01:00")
EXPIRED_AT = T("2026-01-13 12:00")  # event views (TTL 2 days) are expired, customer_profile is not


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    root = tmp_path_factory.mktemp("observability") / "data"
    store = churn_world(Project.load(CHURN_SPEC, root))
    store.refresh_online(now=REFRESHED_AT)
    return root


@pytest.fixture(scope="module")
def model():
    task = ModelTask.from_project(Project.load(CHURN_SPEC, "/nonexistent"))
    frame = synthetic_training_set(300, seed=5)
    config = TrainConfig(model_type="logistic_regression", hyperparameters={})
    return fit_model(frame, config, task, NUMERIC_FEATURES, CATEGORICAL_FEATURES)


@pytest.fixture
def world(template, tmp_path, monkeypatch):
    root = tmp_path / "data"
    shutil.copytree(template, root)
    monkeypatch.setenv("MLOPS_DATA_DIR", str(root))
    monkeypatch.setenv("MLOPS_SPEC", str(CHURN_SPEC))
    return Project.load(CHURN_SPEC, root)


def _client(world, model, now=EXPIRED_AT) -> TestClient:
    config = ServingConfig(
        project=world,
        model_source=InMemoryModelSource({"champion": ("1", model)}),
        assignments=MemoryAssignments(),
        poll_interval_s=0,
        clock=Clock(now),
    )
    return TestClient(create_app(config))


def _samples(text: str) -> dict[str, list]:
    """Exported samples by sample name (``x_bucket``, ``x_count``... for a histogram)."""
    out: dict[str, list] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, []).append(sample)
    return out


def _write_drift_report(world, drift_share=0.4, estimated=0.71, training=0.80):
    """The drift report's textfile, as drift_report writes it for its latest day."""
    from types import SimpleNamespace

    from mlops_assets.observability import write_drift_textfile

    report = SimpleNamespace(drift_share=drift_share, dataset_drift=drift_share >= 0.3)
    summary = {
        "estimated_roc_auc": estimated,
        "training_roc_auc": training,
        "realized_roc_auc": 0.69,
        "realized_labels": 120,
    }
    return write_drift_textfile(world.paths, "2026-01-10", "1", report, summary)


def _traffic(client: TestClient) -> int:
    """Predictions, a replay, MLflow-format invocations and a rejected request; the number of live scores returned
    (a replay, ``as_of``, is not live traffic: it is counted as a replay, not in the request metrics)."""
    scored = 0
    for customer in ["C1", "C2", "C3", "C1", "nobody"]:
        response = client.post("/predict", json={"customer_id": customer})
        assert response.status_code == 200, response.text
        scored += 1
    response = client.post("/predict", json={"customer_id": "C1", "as_of": "2026-01-08T12:00:00+00:00"})
    assert response.status_code == 200, response.text
    rows = json.loads(
        synthetic_training_set(2, seed=1)[NUMERIC_FEATURES + CATEGORICAL_FEATURES].to_json(orient="records")
    )
    response = client.post("/invocations", json={"dataframe_records": rows})
    assert response.status_code == 200, response.text
    assert client.post("/predict", json={"wrong": 1}).status_code == 422
    return scored


def test_metrics_export_scores_online_store_freshness_and_drift_gauges(world, model):
    _write_drift_report(world)
    with _client(world, model) as client:
        scored = _traffic(client)
        text = client.get("/metrics").text
        health = client.get("/health").json()
    samples = _samples(text)

    # the score histogram counts every live score returned by /predict, each within [0, 1] (a classifier)
    [count] = [s for s in samples["mlops_serving_score_count"] if s.labels["arm"] == "champion"]
    assert count.value == scored
    buckets = {s.labels["le"]: s.value for s in samples["mlops_serving_score_bucket"]}
    assert buckets["1.0"] == scored and buckets["+Inf"] == scored
    assert [s.value for s in samples["mlops_serving_replays_total"]] == [1.0]

    # per view: when the online store was refreshed and what its values are as of (the day after the last day)
    refreshed = {
        s.labels["view"]: s.value for s in samples["mlops_online_features_last_refresh_timestamp_seconds"]
    }
    feature_time = {
        s.labels["view"]: s.value for s in samples["mlops_online_features_feature_timestamp_seconds"]
    }
    assert sorted(refreshed) == sorted(feature_time) == VIEWS
    assert set(feature_time.values()) == {T("2026-01-11").timestamp()}
    # refreshed_at is the refresh's clock (the test's), not the wall clock
    assert set(refreshed.values()) == {REFRESHED_AT.timestamp()}

    # the drift report's numbers re-exported from its textfile
    assert [(s.labels, s.value) for s in samples["mlops_drift_share"]] == [({"model_version": "1"}, 0.4)]
    assert [s.value for s in samples["mlops_drift_dataset_drift"]] == [1.0]
    estimated = {s.labels["metric"]: s.value for s in samples["mlops_drift_estimated_performance"]}
    assert estimated == {"roc_auc": 0.71}
    assert {s.labels["metric"] for s in samples["mlops_drift_realized_performance"]} == {"roc_auc"}
    assert samples["mlops_drift_report_day_timestamp_seconds"][0].value == T("2026-01-10").timestamp()

    # a stale online store is reported by /health, not silent
    assert health["online_store"]["status"] == "stale"
    assert sorted(health["stale_views"]) == ["engagement", "purchase_activity", "support"]


def test_without_a_drift_report_or_online_store_the_app_still_answers_metrics(tmp_path, model, monkeypatch):
    root = tmp_path / "empty"
    root.mkdir()
    monkeypatch.setenv("MLOPS_DATA_DIR", str(root))
    project = Project.load(CHURN_SPEC, root)
    with _client(project, model) as client:
        response = client.get("/metrics")
    assert response.status_code == 200
    assert "mlops_drift_share" not in _samples(response.text)


def _metric_names(expr: str) -> set[str]:
    """Metric names a PromQL expression selects (identifiers of the app's namespace)."""
    return set(re.findall(r"\b(mlops_[a-z0-9_]+)\b", expr))


def _dashboard_exprs() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    panels = dashboard["panels"] + [p for row in dashboard["panels"] for p in row.get("panels", [])]
    return [t["expr"] for p in panels for t in p.get("targets", []) if t.get("expr")]


def _alert_exprs() -> list[str]:
    rules = yaml.safe_load(ALERTS.read_text())
    return [r["expr"] for g in rules["groups"] for r in g["rules"]]


def test_every_metric_the_dashboard_and_the_alerts_query_is_exported_by_the_app(world, model):
    """Scraped after traffic that exercises every route: each queried name has samples, except the model-error and
    load-failure counters, declared (HELP/TYPE) but with samples only after a model raised or failed to load."""
    _write_drift_report(world)
    with _client(world, model) as client:
        _traffic(client)
        text = client.get("/metrics").text
    samples = _samples(text)
    families = {f.name for f in text_string_to_metric_families(text)}
    exprs = _dashboard_exprs()
    assert len(exprs) >= 10
    queried = set().union(*map(_metric_names, exprs)) | set().union(*map(_metric_names, _alert_exprs()))
    assert {
        "mlops_serving_score_bucket",
        "mlops_online_features_last_refresh_timestamp_seconds",
        "mlops_drift_share",
        "mlops_drift_estimated_performance",
    } <= queried
    declared_only = {"mlops_serving_errors_total", "mlops_serving_model_load_failures_total"}
    missing = sorted(n for n in queried - declared_only if n not in samples)
    assert missing == [], f"queried but not exported: {missing}"
    for name in declared_only & queried:
        assert name.removesuffix("_total") in families, name


@pytest.mark.skipif(PROMTOOL is None, reason=NO_PROMTOOL)
def test_promtool_checks_and_unit_tests_the_alert_rules():
    checked = subprocess.run(
        [PROMTOOL, "check", "rules", str(ALERTS)], capture_output=True, text=True, timeout=60
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"SUCCESS: {len(_alert_exprs())} rules found" in checked.stdout
    tested = subprocess.run(
        [PROMTOOL, "test", "rules", str(ALERT_TESTS)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ALERT_TESTS.parent,
    )
    assert tested.returncode == 0, tested.stdout + tested.stderr


@pytest.mark.skipif(PROMTOOL is None, reason=NO_PROMTOOL)
def test_promtool_rejects_a_broken_rule(tmp_path: Path):
    """The check above can fail: a rule with a PromQL syntax error is rejected."""
    broken = tmp_path / "broken.yml"
    broken.write_text(
        yaml.safe_dump({"groups": [{"name": "x", "rules": [{"alert": "A", "expr": "rate(mlops_x[5m]"}]}]})
    )
    checked = subprocess.run(
        [PROMTOOL, "check", "rules", str(broken)], capture_output=True, text=True, timeout=60
    )
    assert checked.returncode != 0


def test_drift_textfile_is_valid_prometheus_text(world):
    path = _write_drift_report(world, drift_share=0.1)
    families = {f.name: f for f in text_string_to_metric_families(path.read_text())}
    assert families["mlops_drift_share"].samples[0].value == 0.1
    assert families["mlops_drift_dataset_drift"].samples[0].value == 0.0
    assert (
        abs(
            families["mlops_drift_report_last_run_timestamp_seconds"].samples[0].value
            - datetime.now(UTC).timestamp()
        )
        < 120
    )
