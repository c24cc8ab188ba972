"""A lost MLflow registry (file deleted, garbage, empty, unreadable, server unreachable) is an error naming
the file or URI in every read path, and nothing is created; the serving app's HTTP contract (415, unknown
categories, degraded health) is never a 5xx."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import dagster as dg
import pytest
from fastapi.testclient import TestClient

from mlops_assets.cli import main
from mlops_assets.monitoring.daily import load_champion_reference
from mlops_assets.project import Project
from mlops_assets.resources import DataDirResource
from mlops_assets.serving.app import MappingFeatureSource, ServingConfig, create_app
from mlops_assets.serving.models import InMemoryModelSource
from mlops_assets.serving.routing import MemoryAssignments
from mlops_assets.settings import data_paths
from mlops_assets.training import registry
from mlops_assets.training.jobs import rollback_job
from mlops_assets.training.lifecycle import evaluate_challenger
from mlops_assets.training.resources import MlflowResource
from mlops_assets.training.task import ModelTask
from mlops_assets.training.tracking import RegistryUnavailable, TrackingConfig, client_for
from mlops_assets.training.train import TrainConfig, fit_model, model_inputs, predict_scores, train_and_log
from mlops_assets_tests.conftest import CHURN_SPEC, free_port
from mlops_assets_tests.synthetic import CATEGORICAL_FEATURES, NUMERIC_FEATURES, synthetic_training_set

FEATURES = NUMERIC_FEATURES + CATEGORICAL_FEATURES
FAULTS = ("deleted", "garbage", "empty", "unreadable", "server")


def _listing(root: Path) -> list[str]:
    """Every file and folder under ``root`` with its size (a recreated or truncated store shows)."""
    return sorted(
        f"{p.relative_to(root)}:{p.stat().st_size if p.is_file() else 'dir'}" for p in root.rglob("*")
    )


def _row(seed: int = 3) -> dict:
    row = synthetic_training_set(5, seed=seed)[FEATURES].iloc[0].to_dict()
    return {k: (None if v != v else v) for k, v in row.items()}  # NaN -> null


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    """A data folder with champion v2 over previous-champion v1 and the saved evaluation of v2 against v1."""
    saved = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
    try:
        return _train_pristine(tmp_path_factory.mktemp("registry") / "data")
    finally:  # mlflow.set_tracking_uri (in train_and_log) exports the URI to the whole process
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _project(root: Path) -> Project:
    return Project.load(CHURN_SPEC, root)


def _task() -> ModelTask:
    return ModelTask.from_project(Project.load(CHURN_SPEC, "/nonexistent"))


def _train_pristine(root: Path) -> tuple[Path, int, int]:
    project = _project(root)
    tracking = TrackingConfig.for_project(project, tracking_uri=f"sqlite:///{root / 'mlflow' / 'mlflow.db'}")
    history = registry.default_history_path(root)
    task = _task()
    config = TrainConfig(model_type="logistic_regression", seed=2)
    frame = synthetic_training_set(300, n_days=8, seed=2)
    first = train_and_log(frame, task, config, tracking=tracking, importance_repeats=1)
    client = client_for(tracking)
    registry.promote(
        client, first.version, "first champion", model_name=tracking.model_name, history_path=history
    )
    changed = frame.iloc[10:].reset_index(drop=True)
    second = train_and_log(changed, task, config, tracking=tracking, importance_repeats=1)
    evaluate_challenger(
        second,
        changed,
        task,
        config,
        tracking=tracking,
        reports_dir=data_paths(root).reports,
        latency_calls=20,
    )
    registry.promote(
        client, second.version, "second champion", model_name=tracking.model_name, history_path=history
    )
    return root, first.version, second.version


@pytest.fixture
def folder(pristine, tmp_path, monkeypatch):
    """A copy of the pristine data folder as $MLOPS_DATA_DIR, registry intact."""
    root = tmp_path / "data"
    shutil.copytree(pristine[0], root)
    monkeypatch.setenv("MLOPS_DATA_DIR", str(root))
    monkeypatch.setenv("MLOPS_SPEC", str(CHURN_SPEC))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return root


def _break(root: Path, fault: str, monkeypatch) -> str:
    """Apply ``fault`` to the folder's registry; return the text the error must contain."""
    db = root / "mlflow" / "mlflow.db"
    if fault == "deleted":
        db.unlink()
        return f"no MLflow store at {db}"
    if fault == "garbage":
        db.write_bytes(os.urandom(8192))
        return f"{db} is not readable: file is not a database"
    if fault == "empty":
        db.write_bytes(b"")
        return f"{db} is not an MLflow store"
    if fault == "unreadable":
        if os.geteuid() == 0:
            pytest.skip("running as root: chmod 000 does not stop root from reading the file")
        db.chmod(0)
        return f"{db} is not readable (permission denied)"
    uri = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return f"tracking server {uri} is unreachable"


@pytest.fixture(params=FAULTS)
def broken(request, folder, monkeypatch):
    """The copied folder with one fault; (root, expected message, file list after the fault)."""
    needle = _break(folder, request.param, monkeypatch)
    yield folder, needle, _listing(folder)
    db = folder / "mlflow" / "mlflow.db"
    if db.exists():
        db.chmod(0o644)  # let tmp_path cleanup remove it


# --------------------------------------------------------------------------- CLI and jobs


@pytest.mark.slow
def test_report_fail_on_gate_names_the_lost_registry_instead_of_passing(folder, broken, capsys):
    root, needle, before = broken
    code = main(["report", "--data-dir", str(root), "--no-instance", "--json", "--fail-on-gate"])
    out, err = capsys.readouterr()
    data = json.loads(out)
    assert code == 1
    assert data["status"] == "registry_unavailable"
    assert needle in data["headline"] and needle in data["registry"]["unavailable"]
    assert "passed every blocking quality gate" not in data["headline"]
    assert "cannot be checked against it" in data["headline"]
    assert needle in err  # said on stderr too, not only inside the report
    assert _listing(root) == before

    assert main(["report", "--data-dir", str(root), "--no-instance"]) == 0  # without the flag: written, 0
    markdown = capsys.readouterr().out
    assert "The MLflow registry is" in markdown and needle in markdown
    assert _listing(root) == before


@pytest.mark.slow
def test_report_with_the_registry_intact_judges_the_gates(folder, capsys):
    code = main(["report", "--data-dir", str(folder), "--no-instance", "--json", "--fail-on-gate"])
    data = json.loads(capsys.readouterr().out)
    assert data["status"] in ("passed", "failed") and data["registry"]["unavailable"] is None
    assert code == (0 if data["status"] == "passed" else 1)
    assert data["registry"]["aliases"]["champion"] == data["evaluation"]["challenger_version"]


@pytest.mark.slow
def test_rollback_refuses_and_creates_nothing(broken, capsys):
    root, needle, before = broken
    assert main(["rollback", "--reason", "fault battery"]) == 2
    out, err = capsys.readouterr()
    assert "mlops rollback: error: MLflow registry unavailable" in err and needle in err
    assert "champion unchanged" not in out and "champion is now" not in out
    assert _listing(root) == before


@pytest.mark.slow
def test_reproduce_refuses_and_creates_nothing(broken, capsys):
    root, needle, before = broken
    assert main(["reproduce", "--version", "1"]) == 2
    err = capsys.readouterr().err
    assert "mlops reproduce: error: MLflow registry unavailable" in err and needle in err
    assert _listing(root) == before


@pytest.mark.slow
def test_rollback_job_fails_naming_the_store_and_creates_nothing(broken):
    root, needle, before = broken
    data = DataDirResource(root=str(root))
    result = rollback_job.execute_in_process(
        instance=dg.DagsterInstance.ephemeral(),
        resources={
            "data": data,
            "mlflow": MlflowResource(data=data, model_name="churn-model", experiment_name="churn"),
        },
        raise_on_error=False,
    )
    assert not result.success
    (failure,) = [e for e in result.all_events if e.event_type == dg.DagsterEventType.STEP_FAILURE]
    assert needle in failure.step_failure_data.error.message
    assert _listing(root) == before


@pytest.mark.slow
def test_rollback_with_the_registry_intact_still_works(folder, pristine, capsys):
    _, first, second = pristine
    assert main(["rollback", "--reason", "control"]) == 0
    assert f"champion is now version {first} (was {second})" in capsys.readouterr().out


@pytest.mark.slow
def test_monitoring_reference_uses_the_same_check(broken):
    root, needle, before = broken
    with pytest.raises(RegistryUnavailable, match="MLflow registry unavailable") as caught:
        load_champion_reference(_project(root))
    assert needle in str(caught.value)
    assert caught.value.missing == (not (root / "mlflow" / "mlflow.db").exists())
    assert _listing(root) == before


def test_an_unreadable_store_is_named_even_where_chmod_cannot_show_it(tmp_path, monkeypatch):
    """The permission branch of the check, also when the suite runs as root (where chmod 000 is moot)."""
    from mlops_assets.training import tracking

    db = tmp_path / "mlflow.db"
    db.write_bytes(b"")
    monkeypatch.setattr(tracking.os, "access", lambda path, mode: False)
    with pytest.raises(RegistryUnavailable, match=r"mlflow.db is not readable \(permission denied\)"):
        tracking.require_registry(f"sqlite:///{db}")
    assert db.read_bytes() == b""


def test_a_fresh_folder_is_not_a_lost_registry(tmp_path, monkeypatch, capsys):
    """Nothing trained yet: the report says so (not 'registry missing'), and still creates nothing."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("MLOPS_SPEC", str(CHURN_SPEC))
    root = tmp_path / "data"
    root.mkdir()
    assert main(["report", "--data-dir", str(root), "--no-instance", "--json", "--fail-on-gate"]) == 1
    data = json.loads(capsys.readouterr().out)
    assert data["status"] == "not_evaluated" and "no MLflow store at" in data["registry"]["note"]
    monkeypatch.setenv("MLOPS_DATA_DIR", str(root))
    assert main(["rollback"]) == 2 and "no MLflow store at" in capsys.readouterr().err
    assert list(root.iterdir()) == []


# --------------------------------------------------------------------------- serving on the real registry


def _registry_app(root: Path) -> TestClient:
    config = ServingConfig(
        project=_project(root),
        data_root=root,  # the default model source: this folder's registry
        feature_source=MappingFeatureSource({"C1": _row()}),
        assignments=MemoryAssignments(),
        log_predictions=False,
        poll_interval_s=0,  # no poller thread: the test refreshes by hand
    )
    return TestClient(create_app(config))


@pytest.mark.slow
@pytest.mark.parametrize("fault", ["deleted", "garbage", "empty", "server"])
def test_serving_reports_a_lost_registry_as_degraded_and_keeps_serving(folder, pristine, fault, monkeypatch):
    _, _, champion = pristine
    db = folder / "mlflow" / "mlflow.db"
    saved = db.read_bytes()
    with _registry_app(folder) as http:
        assert http.get("/health").json()["status"] == "ok"
        needle = _break(folder, fault, monkeypatch)
        if fault == "server":  # the source read the URI at start: point it at the unreachable server
            http.app.state.service.models.source.tracking_uri = os.environ["MLFLOW_TRACKING_URI"]
        before = _listing(folder)
        http.app.state.service.models.refresh()  # what the alias watcher does every poll
        health = http.get("/health")
        assert health.status_code == 200
        body = health.json()
        assert body["status"] == "degraded" and needle in body["reason"] and needle in body["registry_error"]
        assert body["models"]["champion"]["version"] == str(champion)
        predicted = http.post("/predict", json={"customer_id": "C1"})
        assert predicted.status_code == 200 and predicted.json()["model_version"] == str(champion)
        assert _listing(folder) == before  # the watcher recreated nothing

        if fault != "server":  # the store comes back: healthy again, same model
            db.write_bytes(saved)
            http.app.state.service.models.refresh()
            body = http.get("/health").json()
            assert body["status"] == "ok" and body["reason"] is None and body["model_errors"] == {}


@pytest.mark.slow
def test_serving_started_without_a_registry_is_unavailable_and_creates_nothing(folder, monkeypatch):
    needle = _break(folder, "deleted", monkeypatch)
    before = _listing(folder)
    with _registry_app(folder) as http:
        health = http.get("/health")
        assert health.status_code == 503
        assert health.json()["status"] == "unavailable" and needle in health.json()["reason"]
        predicted = http.post("/predict", json={"customer_id": "C1"})
        assert predicted.status_code == 503 and needle in predicted.json()["error"]
    assert _listing(folder) == before


# --------------------------------------------------------------------------- HTTP semantics (in process)


@pytest.fixture(scope="module")
def fitted():
    frame = synthetic_training_set(300, seed=9)
    return fit_model(
        frame, TrainConfig(model_type="logistic_regression"), _task(), NUMERIC_FEATURES, CATEGORICAL_FEATURES
    )


class _Registry(InMemoryModelSource):
    """An in-memory source whose store can be lost, like the registry's."""

    lost: str | None = None

    def check(self) -> None:
        if self.lost:
            raise RegistryUnavailable(self.lost, f"no MLflow store at {self.lost}", missing=True)


def _app(model, tmp_path: Path, source: InMemoryModelSource | None = None, **config) -> TestClient:
    source = source if source is not None else InMemoryModelSource({"champion": ("1", model)})
    return TestClient(
        create_app(
            ServingConfig(
                data_root=tmp_path,
                model_source=source,
                feature_source=MappingFeatureSource({"C1": _row()}),
                entity_key="customer_id",
                assignments=MemoryAssignments(),
                log_predictions=False,
                poll_interval_s=0,
                **config,
            )
        )
    )


def test_non_json_content_types_get_415(fitted, tmp_path):
    body = json.dumps({"customer_id": "C1"})
    with _app(fitted, tmp_path) as http:
        for ctype in (
            "text/plain",
            "application/x-www-form-urlencoded",
            "multipart/form-data; boundary=x",
            "application/xml",
            "text/json",
            "",
        ):
            response = http.post("/predict", content=body, headers={"content-type": ctype})
            assert response.status_code == 415, ctype
            assert "application/json" in response.json()["error"]
        for ctype in ("application/json", "Application/JSON; charset=utf-8", "application/vnd.mlops+json"):
            response = http.post("/predict", content=body, headers={"content-type": ctype})
            assert response.status_code == 200, (ctype, response.text)
        # no content-type at all: read as JSON (documented); a body that is not JSON is still a 422
        assert "content-type" not in http.build_request("POST", "/predict", content=body).headers
        assert http.post("/predict", content=body).status_code == 200
        assert http.post("/predict", content=b"customer_id=C1").status_code == 422
        metrics = http.get("/metrics").text
    assert 'mlops_serving_rejected_total{status_code="415"} 6.0' in metrics


def test_unknown_category_is_a_422_naming_feature_value_and_known_set(fitted, tmp_path):
    features = _row() | {"plan": "platinum"}
    with _app(fitted, tmp_path) as http:
        response = http.post("/predict", json={"customer_id": "C1", "features": features})
        assert response.status_code == 422
        error = response.json()
        assert "plan: 'platinum' is not a category the model was trained on" in error["error"]
        assert "(known: basic, premium, standard)" in error["error"]
        assert error["detail"] == [
            {"feature": "plan", "value": "platinum", "known": ["basic", "premium", "standard"]}
        ]
        known = http.post("/predict", json={"customer_id": "C1", "features": _row() | {"plan": "premium"}})
        assert known.status_code == 200 and "warnings" not in known.json()
        nulled = http.post("/predict", json={"customer_id": "C1", "features": _row() | {"plan": None}})
        assert nulled.status_code == 200  # null is a missing value, imputed as in training


def test_unknown_category_with_warn_is_scored_with_a_warning(fitted, tmp_path, monkeypatch):
    monkeypatch.setenv("MLOPS_UNKNOWN_CATEGORY", "warn")
    features = _row() | {"plan": "platinum", "region": "atlantis"}
    with _app(fitted, tmp_path) as http:
        response = http.post("/predict", json={"customer_id": "C1", "features": features})
    assert response.status_code == 200, response.text
    body = response.json()
    assert [w.split(":")[0] for w in body["warnings"]] == ["plan", "region"]
    assert (
        "'platinum' is not a category" in body["warnings"][0]
        and "scored as no category" in body["warnings"][0]
    )
    expected = predict_scores(fitted, model_inputs(_frame(features), NUMERIC_FEATURES, CATEGORICAL_FEATURES))[
        0
    ]
    assert body["score"] == pytest.approx(expected, abs=1e-9)  # what the pipeline itself gives


def _frame(features: dict):
    import pandas as pd

    return pd.DataFrame([{k: (float("nan") if v is None else v) for k, v in features.items()}])


def test_unknown_category_policy_is_validated(fitted, tmp_path):
    with pytest.raises(ValueError, match="MLOPS_UNKNOWN_CATEGORY.*reject, warn"):
        _app(fitted, tmp_path, unknown_category="ignore")


def test_health_is_degraded_while_the_registry_is_lost_and_models_keep_serving(fitted, tmp_path):
    source = _Registry({"champion": ("1", fitted)})
    with _app(fitted, tmp_path, source=source) as http:
        assert http.get("/health").json()["status"] == "ok"
        source.lost = "/data/mlflow/mlflow.db"
        http.app.state.service.models.refresh()
        health = http.get("/health")
        assert health.status_code == 200
        assert health.json()["status"] == "degraded"
        assert "model registry unavailable" in health.json()["reason"]
        assert "no MLflow store at /data/mlflow/mlflow.db" in health.json()["registry_error"]
        assert http.post("/predict", json={"customer_id": "C1"}).status_code == 200
        source.lost = None
        http.app.state.service.models.refresh()
        recovered = http.get("/health").json()
        assert recovered["status"] == "ok" and recovered["registry_error"] is None
        assert recovered["model_errors"] == {}


def test_health_without_champion_and_registry_is_503_with_the_reason(fitted, tmp_path):
    source = _Registry({"champion": ("1", fitted)})
    source.lost = "/data/mlflow/mlflow.db"
    with _app(fitted, tmp_path, source=source) as http:
        health = http.get("/health")
        assert health.status_code == 503 and health.json()["status"] == "unavailable"
        assert "no MLflow store at /data/mlflow/mlflow.db" in health.json()["reason"]
        predicted = http.post("/predict", json={"customer_id": "C1"})
        assert predicted.status_code == 503 and "no MLflow store" in predicted.json()["error"]
