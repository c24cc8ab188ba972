"""The app serving from a real MLflow registry (in process): models by alias, hash verified, promotions picked up live."""

from __future__ import annotations

import time

import pytest
from fastapi.testclient import TestClient

from mlops_assets.project import Project
from mlops_assets.serving.app import MappingFeatureSource, ServingConfig, create_app
from mlops_assets.serving.models import RegistryModelSource
from mlops_assets.serving.routing import MemoryAssignments
from mlops_assets.training import registry
from mlops_assets.training.task import ModelTask
from mlops_assets.training.tracking import TrackingConfig, client_for, ensure_tracking_store
from mlops_assets.training.train import TrainConfig, train_and_log
from mlops_assets_tests.conftest import CHURN_SPEC
from mlops_assets_tests.synthetic import CATEGORICAL_FEATURES, NUMERIC_FEATURES, synthetic_training_set

pytestmark = pytest.mark.slow


def _register(tracking, task, seed: int) -> int:
    frame = synthetic_training_set(300, seed=seed)
    config = TrainConfig(model_type="logistic_regression", seed=seed)
    return train_and_log(frame, task, config, tracking=tracking, importance_repeats=1).version


def _wait(condition, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.1)


def test_registry_models_are_verified_and_promotions_reach_the_running_app(data_dir, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    project = Project.load(CHURN_SPEC, data_dir.root)
    tracking = TrackingConfig.for_project(project)
    ensure_tracking_store(tracking)
    client = client_for(tracking)
    name = tracking.model_name
    history = registry.default_history_path(data_dir.root)
    task = ModelTask.from_project(project)
    v1 = _register(tracking, task, seed=1)
    registry.promote(client, v1, "first champion", model_name=name, history_path=history)
    source = RegistryModelSource(tracking.tracking_uri, name)
    assert source.current_version("champion") == str(v1)
    version, model, sha = source.load("champion")
    assert version == str(v1) and sha == client.get_model_version(name, str(v1)).tags["model_sha256"]

    row = synthetic_training_set(5, seed=3)[NUMERIC_FEATURES + CATEGORICAL_FEATURES].iloc[0].to_dict()
    row = {k: (None if v != v else v) for k, v in row.items()}  # NaN -> null
    config = ServingConfig(
        project=project,
        model_source=source,
        feature_source=MappingFeatureSource({"C1": row}),
        assignments=MemoryAssignments(),
        poll_interval_s=0.2,
    )
    with TestClient(create_app(config)) as http:
        assert http.post("/predict", json={"customer_id": "C1"}).json()["model_version"] == str(v1)
        assert http.get("/health").json()["models"]["champion"]["sha256"] == sha

        # a new version whose artifact was altered after registration is refused; the old one keeps serving
        v2 = _register(tracking, task, seed=2)
        mv = client.get_model_version(name, str(v2))
        client.set_model_version_tag(name, str(v2), "model_sha256", "0" * 64)
        registry.promote(client, v2, "tampered", model_name=name, history_path=history)
        _wait(lambda: "champion" in http.get("/health").json()["model_errors"])
        health = http.get("/health").json()
        assert "differs from the registered" in health["model_errors"]["champion"]
        assert http.post("/predict", json={"customer_id": "C1"}).json()["model_version"] == str(v1)
        assert 'mlops_serving_model_load_failures_total{alias="champion"}' in http.get("/metrics").text

        # once the artifact verifies again, the promotion is picked up without restarting
        client.set_model_version_tag(name, str(v2), "model_sha256", mv.tags["model_sha256"])
        _wait(lambda: http.post("/predict", json={"customer_id": "C1"}).json()["model_version"] == str(v2))
        assert http.post("/predict", json={"customer_id": "C1"}).json()["model_version"] == str(v2)
        assert http.get("/health").json()["model_errors"] == {}
        # MLflow's protocol serves the same champion
        invoked = http.post("/invocations", json={"dataframe_records": [row]}).json()
        assert (
            invoked["predictions"][0][1] == http.post("/predict", json={"customer_id": "C1"}).json()["score"]
        )
