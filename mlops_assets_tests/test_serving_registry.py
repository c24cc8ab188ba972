"""The app serving from a real MLflow registry: models by alias, hash verified, promotions picked up live."""

from __future__ import annotations

import time

import httpx
import pytest

from mlops_assets.serving.app import MappingFeatureSource, ServingConfig, create_app
from mlops_assets.serving.models import RegistryModelSource
from mlops_assets.serving.routing import MemoryAssignments
from mlops_assets.training import registry
from mlops_assets.training.synthetic import CATEGORICAL_FEATURES, NUMERIC_FEATURES, synthetic_training_set
from mlops_assets.training.tracking import TrackingConfig, client_for, ensure_tracking_store
from mlops_assets.training.train import TrainConfig, train_and_log
from mlops_assets_tests.test_serving_app import Server

pytestmark = pytest.mark.slow


def _register(tracking, seed: int) -> int:
    frame = synthetic_training_set(300, seed=seed)
    result = train_and_log(
        frame,
        TrainConfig(model_type="logistic_regression", seed=seed),
        numeric_features=NUMERIC_FEATURES,
        categorical_features=CATEGORICAL_FEATURES,
        tracking=tracking,
        importance_repeats=1,
    )
    return result.version


def test_registry_models_are_verified_and_promotions_reach_the_running_app(tmp_path):
    tracking = TrackingConfig.for_data_root(tmp_path)
    ensure_tracking_store(tracking)
    client = client_for(tracking)
    history = registry.default_history_path(tmp_path)
    v1 = _register(tracking, seed=1)
    registry.promote(client, v1, "first champion", history_path=history)
    source = RegistryModelSource(tracking.tracking_uri)
    assert source.current_version("champion") == str(v1)
    version, model, sha = source.load("champion")
    assert version == str(v1) and sha == client.get_model_version("churn-model", str(v1)).tags["model_sha256"]

    row = synthetic_training_set(5, seed=3)[NUMERIC_FEATURES + CATEGORICAL_FEATURES].iloc[0].to_dict()
    row = {k: (None if v != v else v) for k, v in row.items()}  # NaN -> null
    config = ServingConfig(
        data_root=tmp_path,
        model_source=source,
        feature_source=MappingFeatureSource({"C1": row}),
        assignments=MemoryAssignments(),
        poll_interval_s=0.2,
    )
    with Server(create_app(config)) as server, httpx.Client(base_url=server.url) as http:
        assert http.post("/predict", json={"customer_id": "C1"}).json()["model_version"] == str(v1)
        assert http.get("/health").json()["models"]["champion"]["sha256"] == sha

        # a new version whose artifact was altered after registration is refused; the old one keeps serving
        v2 = _register(tracking, seed=2)
        mv = client.get_model_version("churn-model", str(v2))
        client.set_model_version_tag("churn-model", str(v2), "model_sha256", "0" * 64)
        registry.promote(client, v2, "tampered", history_path=history)
        deadline = time.monotonic() + 10
        while "champion" not in http.get("/health").json()["model_errors"] and time.monotonic() < deadline:
            time.sleep(0.1)
        health = http.get("/health").json()
        assert "differs from the registered" in health["model_errors"]["champion"]
        assert http.post("/predict", json={"customer_id": "C1"}).json()["model_version"] == str(v1)
        assert 'mlops_serving_model_load_failures_total{alias="champion"}' in http.get("/metrics").text

        # once the artifact verifies again, the promotion is picked up without restarting
        client.set_model_version_tag("churn-model", str(v2), "model_sha256", mv.tags["model_sha256"])
        deadline = time.monotonic() + 10
        version = None
        while version != str(v2) and time.monotonic() < deadline:
            version = http.post("/predict", json={"customer_id": "C1"}).json()["model_version"]
            time.sleep(0.1)
        assert version == str(v2)
        assert http.get("/health").json()["model_errors"] == {}
