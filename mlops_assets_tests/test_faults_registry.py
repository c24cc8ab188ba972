"""A lost MLflow registry (file deleted, garbage, empty, unreadable, server unreachable) is an error naming
the file or URI in every read path, and nothing is created."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import dagster as dg
import pytest

from mlops_assets.cli import main
from mlops_assets.monitoring.daily import load_champion_reference
from mlops_assets.resources import DataDirResource
from mlops_assets.settings import data_paths
from mlops_assets.training import registry
from mlops_assets.training.jobs import rollback_job
from mlops_assets.training.lifecycle import evaluate_challenger
from mlops_assets.training.resources import MlflowResource
from mlops_assets.training.synthetic import CATEGORICAL_FEATURES, NUMERIC_FEATURES, synthetic_training_set
from mlops_assets.training.tracking import RegistryUnavailable, TrackingConfig, client_for
from mlops_assets.training.train import TrainConfig, train_and_log
from mlops_assets_tests.conftest import free_port

FEATURES = NUMERIC_FEATURES + CATEGORICAL_FEATURES
FAULTS = ("deleted", "garbage", "empty", "unreadable", "server")


def _listing(root: Path) -> list[str]:
    """Every file and folder under ``root`` with its size (a recreated or truncated store shows)."""
    return sorted(
        f"{p.relative_to(root)}:{p.stat().st_size if p.is_file() else 'dir'}" for p in root.rglob("*")
    )


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


def _train_pristine(root: Path) -> tuple[Path, int, int]:
    tracking = TrackingConfig(
        tracking_uri=f"sqlite:///{root / 'mlflow' / 'mlflow.db'}",
        artifact_location=str(root / "mlflow" / "artifacts"),
    )
    history = registry.default_history_path(root)
    config = TrainConfig(model_type="logistic_regression", seed=2)
    features = {"numeric_features": NUMERIC_FEATURES, "categorical_features": CATEGORICAL_FEATURES}
    frame = synthetic_training_set(300, n_days=8, seed=2)
    first = train_and_log(frame, config, **features, tracking=tracking, importance_repeats=1)
    client = client_for(tracking)
    registry.promote(client, first.version, "first champion", history_path=history)
    changed = frame.iloc[10:].reset_index(drop=True)
    second = train_and_log(changed, config, **features, tracking=tracking, importance_repeats=1)
    evaluate_challenger(
        second, changed, config, tracking=tracking, reports_dir=data_paths(root).reports, latency_calls=20
    )
    registry.promote(client, second.version, "second champion", history_path=history)
    return root, first.version, second.version


@pytest.fixture
def folder(pristine, tmp_path, monkeypatch):
    """A copy of the pristine data folder as $MLOPS_DATA_DIR, registry intact."""
    root = tmp_path / "data"
    shutil.copytree(pristine[0], root)
    monkeypatch.setenv("MLOPS_DATA_DIR", str(root))
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
        resources={"data": data, "mlflow": MlflowResource(data=data)},
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
        load_champion_reference(root)
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
    root = tmp_path / "data"
    root.mkdir()
    assert main(["report", "--data-dir", str(root), "--no-instance", "--json", "--fail-on-gate"]) == 1
    data = json.loads(capsys.readouterr().out)
    assert data["status"] == "not_evaluated" and "no MLflow store at" in data["registry"]["note"]
    monkeypatch.setenv("MLOPS_DATA_DIR", str(root))
    assert main(["rollback"]) == 2 and "no MLflow store at" in capsys.readouterr().err
    assert list(root.iterdir()) == []
