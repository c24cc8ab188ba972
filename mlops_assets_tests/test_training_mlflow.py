"""Training against a real (tmp-path SQLite) MLflow store: logging, caching, registry moves, reproduction."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest
import yaml

from mlops_assets.training import registry
from mlops_assets.training.alerts import AlertSink, read_alerts
from mlops_assets.training.evaluate import evaluate
from mlops_assets.training.gates import GateThresholds, evaluate_gates
from mlops_assets.training.lifecycle import run_lifecycle
from mlops_assets.training.reproduce import reproduce
from mlops_assets.training.synthetic import CATEGORICAL_FEATURES, NUMERIC_FEATURES, synthetic_training_set
from mlops_assets.training.tracking import TrackingConfig, client_for
from mlops_assets.training.train import (
    TrainConfig,
    find_cached_version,
    model_inputs,
    params_hash,
    time_split,
    train_and_log,
)

FEATURES = {"numeric_features": NUMERIC_FEATURES, "categorical_features": CATEGORICAL_FEATURES}
CONFIG = TrainConfig(hyperparameters={"max_iter": 30, "learning_rate": 0.1}, seed=7)


def _train(df, tracking, **kwargs):
    return train_and_log(df, CONFIG, **FEATURES, tracking=tracking, importance_repeats=2, **kwargs)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("mlflow_store")
    tracking = TrackingConfig(
        tracking_uri=f"sqlite:///{root / 'mlflow' / 'mlflow.db'}",
        artifact_location=str(root / "mlflow" / "artifacts"),
    )
    df = synthetic_training_set(n_rows=300, n_days=8, seed=2)
    first = _train(df, tracking, dagster_run_id="dagster-run-1")
    return tracking, df, first, root


@pytest.fixture(scope="module")
def second(store):
    tracking, df, first, _ = store
    changed = df.iloc[10:].reset_index(drop=True)  # different data → different hash
    return changed, _train(changed, tracking)


def _reset_aliases(client, name):
    for alias in (registry.CHAMPION, registry.PREVIOUS_CHAMPION):
        if registry.alias_version(client, alias, name) is not None:
            client.delete_registered_model_alias(name, alias)


def test_run_records_every_field(store, tmp_path):
    tracking, df, first, root = store
    client = client_for(tracking)
    run = client.get_run(first.run_id)
    params, tags, metrics = run.data.params, run.data.tags, run.data.metrics
    assert params["model_type"] == "hist_gradient_boosting"
    assert json.loads(params["hyperparameters"]) == {"learning_rate": 0.1, "max_iter": 30}
    assert params["seed"] == "7" and tags["seed"] == "7"
    assert json.loads(params["numeric_features"]) == NUMERIC_FEATURES
    assert json.loads(params["categorical_features"]) == CATEGORICAL_FEATURES
    assert "age_group" not in params["numeric_features"] + params["categorical_features"]
    for name in ("accuracy", "precision", "recall", "f1", "roc_auc", "log_loss", "brier"):
        assert f"holdout_{name}" in metrics
    assert tags["training_set_hash"] == first.training_set_hash and len(first.training_set_hash) == 64
    assert len(tags["git_commit"]) == 40 and tags["git_dirty"] in ("true", "false")
    assert tags["dagster_run_id"] == "dagster-run-1"
    assert tags["package.scikit-learn"] and tags["package.mlflow"] and tags["package.python"]

    artifacts = {f.path for f in client.list_artifacts(first.run_id)}
    artifacts |= {f.path for d in ("plots", "training_set") for f in client.list_artifacts(first.run_id, d)}
    assert {
        "features.json",
        "package_versions.json",
        "permutation_importance.csv",
        "plots/roc_curve.png",
        "plots/calibration_curve.png",
        "plots/permutation_importance.png",
        "training_set/training_set.parquet",
    } <= artifacts
    importance = pd.read_csv(
        client.download_artifacts(first.run_id, "permutation_importance.csv", str(tmp_path))
    )
    assert set(importance["feature"]) == set(NUMERIC_FEATURES + CATEGORICAL_FEATURES)

    mv = client.get_model_version(tracking.model_name, str(first.version))
    assert mv.tags[registry.LIFECYCLE_TAG] == registry.STAGING
    assert {"training_set_hash", "params_hash", "code_version", registry.MODEL_SHA256_TAG} <= set(mv.tags)
    assert int(registry.alias_version(client, registry.CHALLENGER).version) == first.version

    local = registry._download_version(client, mv, str(tmp_path / "model"))
    meta = yaml.safe_load((Path(local) / "MLmodel").read_text())
    assert json.loads(meta["signature"]["inputs"])[0]["name"] == NUMERIC_FEATURES[0]
    assert (Path(local) / "input_example.json").exists()
    requirements = (Path(local) / "requirements.txt").read_text()
    assert "skops==" in requirements and "scikit-learn==" in requirements
    assert "TreePredictor" in " ".join(meta["flavors"]["sklearn"]["skops_trusted_types"])
    assert registry.model_artifact_sha256(local) == mv.tags[registry.MODEL_SHA256_TAG]


def test_cache_reuses_unchanged_inputs_and_retrains_on_new_data(store, second):
    tracking, df, first, _ = store
    changed, retrained = second
    client = client_for(tracking)
    assert not retrained.cached and retrained.version != first.version
    assert retrained.training_set_hash != first.training_set_hash
    runs_before = len(client.search_runs([client.get_experiment_by_name("churn").experiment_id]))
    again = _train(df, tracking)
    assert again.cached and again.version == first.version and again.model is None
    assert again.metrics == first.metrics
    assert len(client.search_runs([client.get_experiment_by_name("churn").experiment_id])) == runs_before
    assert int(registry.alias_version(client, registry.CHALLENGER).version) == first.version
    # another seed or feature list is another params hash, which no registered version matches
    reseeded = params_hash(TrainConfig(hyperparameters=dict(CONFIG.hyperparameters), seed=8), **_lists())
    fewer = params_hash(CONFIG, NUMERIC_FEATURES[:-1], CATEGORICAL_FEATURES)
    assert first.params_hash == params_hash(CONFIG, **_lists())
    for other in (reseeded, fewer):
        assert other != first.params_hash
        assert find_cached_version(client, first.training_set_hash, other, first.code_version) is None
    assert find_cached_version(client, first.training_set_hash, first.params_hash, "train-0") is None


def _lists():
    return {"numeric_features": NUMERIC_FEATURES, "categorical_features": CATEGORICAL_FEATURES}


def test_promotion_and_rollback_keep_a_champion_and_history(store, second, tmp_path):
    tracking, _, first, _ = store
    _, retrained = second
    client = client_for(tracking)
    name = tracking.model_name
    _reset_aliases(client, name)
    history = tmp_path / "promotion_history.sqlite"
    with pytest.raises(registry.RegistryError, match="no 'previous-champion'"):
        registry.rollback(client, "nothing to roll back", history_path=history)

    registry.promote(client, first.version, "first model", {"accuracy": 0.8}, history_path=history)
    registry.promote(
        client,
        retrained.version,
        "better model",
        {"accuracy": 0.9},
        history_path=history,
        dagster_run_id="run-2",
    )
    assert int(registry.alias_version(client, registry.CHAMPION).version) == retrained.version
    assert int(registry.alias_version(client, registry.PREVIOUS_CHAMPION).version) == first.version
    assert client.get_model_version(name, str(first.version)).tags["lifecycle"] == registry.ARCHIVED
    assert client.get_model_version(name, str(retrained.version)).tags["lifecycle"] == registry.PRODUCTION
    assert registry.promote(client, retrained.version, "again", history_path=history) is None

    record = registry.rollback(client, "errors in production", history_path=history)
    assert record.version == first.version and record.previous_version == retrained.version
    assert int(registry.alias_version(client, registry.CHAMPION).version) == first.version
    assert client.get_model_version(name, str(first.version)).tags["lifecycle"] == registry.PRODUCTION
    assert client.get_model_version(name, str(retrained.version)).tags["lifecycle"] == registry.ARCHIVED
    with pytest.raises(registry.RegistryError):
        registry.rollback(client, "one step only", history_path=history)
    assert int(registry.alias_version(client, registry.CHAMPION).version) == first.version

    rows = registry.read_promotion_history(history)
    assert list(rows["action"]) == ["promote", "promote", "rollback"]
    assert list(rows["version"]) == [first.version, retrained.version, first.version]
    assert (
        rows["previous_version"].iloc[1] == first.version and rows["reason"].iloc[2] == "errors in production"
    )
    assert rows["metrics"].iloc[1] == {"accuracy": 0.9} and rows["dagster_run_id"].iloc[1] == "run-2"
    assert rows["at"].is_monotonic_increasing and str(rows["at"].dt.tz) == "UTC"


class _Slow:
    def __init__(self, model):
        self.model = model

    def predict_proba(self, frame):
        import time

        time.sleep(0.03)
        return self.model.predict_proba(frame)


def test_failing_gate_blocks_promotion_and_writes_alert(store, second, tmp_path):
    tracking, _, first, _ = store
    changed, retrained = second
    client = client_for(tracking)
    _reset_aliases(client, tracking.model_name)
    history = tmp_path / "history.sqlite"
    registry.promote(client, first.version, "baseline", history_path=history)
    challenger = registry.load_model_by_alias(client, registry.CHALLENGER).model
    champion = registry.load_model_by_alias(client, registry.CHAMPION).model
    _, holdout = time_split(changed, CONFIG.holdout_fraction)
    report = evaluate(
        _Slow(challenger),
        champion,
        holdout,
        **FEATURES,
        latency_calls=10,
        challenger_version=retrained.version,
        champion_version=first.version,
    )
    results = evaluate_gates(
        report,
        GateThresholds(max_p99_latency_ms=20.0, max_bias_score=1.0, max_accuracy_drop=1.0, min_roc_auc=0.0),
    )
    sink = AlertSink(tmp_path / "alerts" / "alerts.jsonl")
    promoted = registry.promote_if_passed(
        client, retrained.version, results, report.summary(), history_path=history, alert_sink=sink
    )
    assert promoted is None
    assert int(registry.alias_version(client, registry.CHAMPION).version) == first.version
    assert list(registry.read_promotion_history(history)["reason"]) == ["baseline"]
    alerts = read_alerts(tmp_path / "alerts" / "alerts.jsonl")
    assert len(alerts) == 1 and [g["name"] for g in alerts[0]["details"]["gates"]] == ["p99_latency"]
    assert "max_p99_latency_ms 20.0" in alerts[0]["message"]


def test_reproduce_gives_identical_predictions(store):
    tracking, df, first, _ = store
    result = reproduce(first.version, tracking=tracking)
    assert result.identical and result.max_abs_difference == 0.0
    assert result.n_holdout == len(time_split(df, CONFIG.holdout_fraction)[1])
    assert result.code_matches


def test_tampered_artifact_is_refused(store, second):
    tracking, _, _, root = store
    _, retrained = second
    client = client_for(tracking)
    mv = client.get_model_version(tracking.model_name, str(retrained.version))
    model_file = Path(client.get_model_version_download_uri(mv.name, mv.version)) / "model.skops"
    original = model_file.read_bytes()
    try:
        model_file.write_bytes(original + b"\0")
        with pytest.raises(registry.ModelIntegrityError, match="differs from the registered"):
            registry.load_model_version(client, mv.version)
    finally:
        model_file.write_bytes(original)
    loaded = registry.load_model_version(client, mv.version)
    x = model_inputs(time_split(second[0])[1], NUMERIC_FEATURES, CATEGORICAL_FEATURES)
    assert (loaded.model.predict_proba(x) == retrained.model.predict_proba(x)).all()


TRAIN_SCRIPT = textwrap.dedent(
    """
    import sys
    import time
    from pathlib import Path

    from mlops_assets.training.synthetic import CATEGORICAL_FEATURES, NUMERIC_FEATURES, synthetic_training_set
    from mlops_assets.training.tracking import TrackingConfig
    from mlops_assets.training.train import TrainConfig, train_and_log

    root, seed = Path(sys.argv[1]), int(sys.argv[2])
    (root / f"ready-{seed}").touch()
    deadline = time.monotonic() + 120
    while len(list(root.glob("ready-*"))) < 2 and time.monotonic() < deadline:  # start together
        time.sleep(0.05)
    tracking = TrackingConfig(f"sqlite:///{root}/store/mlflow.db", f"{root}/store/artifacts")
    df = synthetic_training_set(n_rows=200, n_days=6, seed=seed)
    result = train_and_log(df, TrainConfig("logistic_regression"), numeric_features=NUMERIC_FEATURES,
                           categorical_features=CATEGORICAL_FEATURES, tracking=tracking, importance_repeats=1)
    print("VERSION", result.version)
    """
)


@pytest.mark.slow
def test_two_processes_train_against_one_fresh_store(tmp_path):
    script = tmp_path / "train_one.py"
    script.write_text(TRAIN_SCRIPT)
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), str(tmp_path), str(seed)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for seed in (1, 2)
    ]
    outputs = [p.communicate(timeout=300) for p in procs]
    for proc, (_out, err) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, err[-3000:]
    versions = sorted(
        int(line.split()[1]) for out, _ in outputs for line in out.splitlines() if line.startswith("VERSION")
    )
    assert versions == [1, 2]


def test_lifecycle_promotes_a_passing_challenger_over_the_champion(store, second, tmp_path):
    tracking, df, first, _ = store
    changed, retrained = second
    client = client_for(tracking)
    _reset_aliases(client, tracking.model_name)
    history = tmp_path / "history.sqlite"
    registry.promote(client, first.version, "baseline", history_path=history)
    lenient = GateThresholds(
        max_accuracy_drop=1.0,
        min_roc_auc=0.0,
        max_p99_latency_ms=10_000,
        max_bias_score=1.0,
        min_test_coverage=0.0,
    )
    result = run_lifecycle(
        changed,
        CONFIG,
        **FEATURES,
        thresholds=lenient,
        tracking=tracking,
        data_root=tmp_path,
        history_path=history,
        latency_calls=5,
    )
    assert result.trained.cached and result.trained.version == retrained.version
    assert result.evaluation.report.champion_version == first.version
    assert result.promotion is not None and result.promotion.version == retrained.version
    assert int(registry.alias_version(client, registry.CHAMPION).version) == retrained.version
    assert all(p.parent == tmp_path / "reports" for p in result.evaluation.paths.values())
    assert list(registry.read_promotion_history(history)["version"]) == [first.version, retrained.version]
