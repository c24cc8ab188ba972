"""Training against a real (tmp-path SQLite) MLflow store: logging, datasets, caching, registry moves, the
lifecycle through the promotion policy, reproduction and artifact integrity."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import textwrap
from importlib import metadata
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from sklearn import metrics as skm

from mlops_assets.spec.model import Gates
from mlops_assets.storage import frame_hash
from mlops_assets.training import promotion, registry
from mlops_assets.training.lifecycle import run_lifecycle
from mlops_assets.training.reproduce import reproduce
from mlops_assets.training.tracking import TrackingConfig, client_for
from mlops_assets.training.train import (
    CODE_VERSION,
    TrainConfig,
    find_cached_version,
    model_inputs,
    params_hash,
    predict_scores,
    time_split,
    train_and_log,
)
from mlops_assets_tests.synthetic import (
    CATEGORICAL_FEATURES,
    NUMERIC_FEATURES,
    REGRESSION_CATEGORICAL,
    REGRESSION_NUMERIC,
    SYNTHETIC_REGRESSION_TASK,
    SYNTHETIC_TASK,
    synthetic_regression_set,
    synthetic_training_set,
)

TASK, REG_TASK = SYNTHETIC_TASK, SYNTHETIC_REGRESSION_TASK
ENTITY, TIME, LABEL = TASK.entity, TASK.time, TASK.label

CONFIG = TrainConfig(hyperparameters={"max_iter": 30, "learning_rate": 0.1}, seed=7)
LENIENT = Gates(
    max_metric_drop=1.0,
    max_p99_latency_ms=10_000,
    max_latency_ratio=1_000,
    max_bias_score=1.0,
    min_test_coverage=0.0,
)
POLICY_TAGS = ("promoted_at", "rolled_back_at", promotion.GATES_TAG, promotion.EVALUATED_AGAINST_TAG)


def _train(df, tracking, task=TASK, config=CONFIG, **kwargs):
    return train_and_log(df, task, config, tracking=tracking, importance_repeats=2, **kwargs)


def _tracking(root: Path, model_name: str) -> TrackingConfig:
    return TrackingConfig(
        tracking_uri=f"sqlite:///{root / 'mlflow' / 'mlflow.db'}",
        artifact_location=str(root / "mlflow" / "artifacts"),
        experiment_name=model_name,
        model_name=model_name,
    )


@pytest.fixture(scope="module")
def root(tmp_path_factory, empty_mlflow_db):
    root = tmp_path_factory.mktemp("mlflow_store")
    (root / "mlflow").mkdir()
    shutil.copyfile(empty_mlflow_db, root / "mlflow" / "mlflow.db")
    return root


@pytest.fixture(scope="module")
def store(root):
    tracking = _tracking(root, TASK.model_name)
    df = synthetic_training_set(n_rows=300, n_days=8, seed=2)
    first = _train(df, tracking, dagster_run_id="dagster-run-1")
    return tracking, df, first


@pytest.fixture(scope="module")
def second(store):
    tracking, df, _ = store
    changed = df.iloc[10:].reset_index(drop=True)  # different data → different hash
    return changed, _train(changed, tracking)


def _fresh_registry(client, name):
    """No champion, no previous champion, and no policy tag on any version."""
    for alias in (registry.CHAMPION, registry.PREVIOUS_CHAMPION):
        if registry.alias_version(client, alias, name) is not None:
            client.delete_registered_model_alias(name, alias)
    for mv in client.search_model_versions(f"name='{name}'"):
        for tag in POLICY_TAGS:
            if tag in mv.tags:
                client.delete_model_version_tag(name, mv.version, tag)


def _alias(client, alias, name=TASK.model_name):
    mv = registry.alias_version(client, alias, name)
    return None if mv is None else int(mv.version)


def test_run_records_params_metrics_datasets_artifacts_and_the_model(store, tmp_path):
    tracking, df, first = store
    client = client_for(tracking)
    run = client.get_run(first.run_id)
    params, tags, metrics = run.data.params, run.data.tags, run.data.metrics
    train, holdout = time_split(df, CONFIG.holdout_fraction, TIME, ENTITY)
    assert params["model_type"] == "hist_gradient_boosting" and params["task"] == "binary_classification"
    assert json.loads(params["hyperparameters"]) == {"learning_rate": 0.1, "max_iter": 30}
    assert params["hp.max_iter"] == "30" and params["label"] == LABEL
    assert params["seed"] == "7" and tags["seed"] == "7"
    assert json.loads(params["numeric_features"]) == NUMERIC_FEATURES
    assert json.loads(params["categorical_features"]) == CATEGORICAL_FEATURES
    assert json.loads(params["sensitive_attributes"]) == ["age_group"]
    assert "age_group" not in params["numeric_features"] + params["categorical_features"]
    assert json.loads(params["dropped_inputs"]) == {}
    assert (int(params["n_train"]), int(params["n_holdout"])) == (len(train), len(holdout))
    assert pd.Timestamp(params["holdout_start"]) == holdout[TIME].min()

    # the logged holdout metrics are those of the model's own predictions, recomputed here
    proba = predict_scores(first.model, model_inputs(holdout, NUMERIC_FEATURES, CATEGORICAL_FEATURES))
    y = holdout[LABEL].to_numpy()
    assert metrics["holdout_roc_auc"] == pytest.approx(skm.roc_auc_score(y, proba))
    assert metrics["holdout_log_loss"] == pytest.approx(skm.log_loss(y, proba))
    assert metrics["holdout_accuracy"] == pytest.approx(np.mean((proba >= 0.5) == y))
    prior = np.full(len(y), train[LABEL].mean())
    assert metrics["baseline_prior_log_loss"] == pytest.approx(skm.log_loss(y, prior))
    assert metrics["baseline_prior_brier"] == pytest.approx(np.mean((prior - y) ** 2))
    for name in ("precision", "recall", "f1", "pr_auc", "brier"):
        assert f"holdout_{name}" in metrics and f"train_{name}" in metrics
    assert first.metrics == {k: pytest.approx(v) for k, v in metrics.items()}

    assert tags["training_set_hash"] == first.training_set_hash == frame_hash(df)
    assert len(tags["git_commit"]) == 40 and tags["git_dirty"] in ("true", "false")
    assert tags["dagster_run_id"] == "dagster-run-1" and tags["task"] == "binary_classification"
    assert tags["package.scikit-learn"] == metadata.version("scikit-learn") and tags["package.python"]

    datasets = {d.dataset.name: d for d in run.inputs.dataset_inputs}
    assert set(datasets) == {"training_rows", "holdout_rows"}
    for name, part, context in (
        ("training_rows", train, "training"),
        ("holdout_rows", holdout, "evaluation"),
    ):
        logged = datasets[name]
        assert {t.key: t.value for t in logged.tags}["mlflow.data.context"] == context
        assert logged.dataset.digest == frame_hash(part)[:32]
        assert json.loads(logged.dataset.profile)["num_rows"] == len(part)
        columns = [c["name"] for c in json.loads(logged.dataset.schema)["mlflow_colspec"]]
        assert columns == list(df.columns)

    artifacts = {f.path for f in client.list_artifacts(first.run_id)}
    artifacts |= {f.path for d in ("plots", "training_set") for f in client.list_artifacts(first.run_id, d)}
    assert {
        "features.json",
        "package_versions.json",
        "permutation_importance.csv",
        "plots/holdout_roc.png",
        "plots/holdout_calibration.png",
        "plots/permutation_importance.png",
        "training_set/training_set.parquet",
    } <= artifacts
    importance = pd.read_csv(
        client.download_artifacts(first.run_id, "permutation_importance.csv", str(tmp_path))
    )
    assert set(importance["feature"]) == set(NUMERIC_FEATURES + CATEGORICAL_FEATURES)
    stored = client.download_artifacts(first.run_id, "training_set/training_set.parquet", str(tmp_path))
    pd.testing.assert_frame_equal(pd.read_parquet(stored), df)

    mv = client.get_model_version(tracking.model_name, str(first.version))
    assert mv.tags[registry.LIFECYCLE_TAG] == registry.STAGING and mv.run_id == first.run_id
    assert {"training_set_hash", "params_hash", "code_version", registry.MODEL_SHA256_TAG} <= set(mv.tags)
    assert _alias(client, registry.CHALLENGER) == first.version

    local = registry._download_version(client, mv, str(tmp_path / "model"))
    meta = yaml.safe_load((Path(local) / "MLmodel").read_text())
    assert [
        c["name"] for c in json.loads(meta["signature"]["inputs"])
    ] == NUMERIC_FEATURES + CATEGORICAL_FEATURES
    assert (Path(local) / "input_example.json").exists()
    assert meta["flavors"]["python_function"]["predict_fn"] == "predict_proba"
    requirements = (Path(local) / "requirements.txt").read_text().split()
    for package in ("skops", "scikit-learn", "numpy", "pandas"):
        assert f"{package}=={metadata.version(package)}" in requirements
    assert "TreePredictor" in " ".join(meta["flavors"]["sklearn"]["skops_trusted_types"])
    assert registry.model_artifact_sha256(local) == mv.tags[registry.MODEL_SHA256_TAG]


def test_cache_reuses_unchanged_inputs_and_retrains_on_new_data(store, second):
    tracking, df, first = store
    changed, retrained = second
    client = client_for(tracking)
    experiment = client.get_experiment_by_name(tracking.experiment_name).experiment_id
    assert not retrained.cached and retrained.version != first.version
    assert retrained.training_set_hash != first.training_set_hash
    runs_before = len(client.search_runs([experiment]))
    again = _train(df, tracking)
    assert again.cached and again.version == first.version and again.model is None
    assert again.metrics == first.metrics and again.run_id == first.run_id
    assert len(client.search_runs([experiment])) == runs_before
    assert _alias(client, registry.CHALLENGER) == first.version
    # another seed, estimator or feature list is another params hash, which no registered version matches
    numeric, categorical = NUMERIC_FEATURES, CATEGORICAL_FEATURES
    assert first.params_hash == params_hash(CONFIG, TASK, numeric, categorical)
    others = [
        params_hash(
            TrainConfig(hyperparameters=dict(CONFIG.hyperparameters), seed=8), TASK, numeric, categorical
        ),
        params_hash(TrainConfig("logistic_regression", seed=7), TASK, numeric, categorical),
        params_hash(CONFIG, TASK, numeric[:-1], categorical),
    ]
    for other in others:
        assert other != first.params_hash
        assert (
            find_cached_version(client, tracking.model_name, first.training_set_hash, other, CODE_VERSION)
            is None
        )
    assert (
        find_cached_version(
            client, tracking.model_name, first.training_set_hash, first.params_hash, "train-0"
        )
        is None
    )


@pytest.fixture(scope="module")
def regression(root):
    tracking = _tracking(root, REG_TASK.model_name)
    df = synthetic_regression_set(n_entities=30, n_days=16, seed=9).assign(always_null=np.nan, constant=3.0)
    task = dataclasses.replace(REG_TASK, candidates=(*REG_TASK.candidates, "always_null", "constant"))
    result = train_and_log(
        df,
        task,
        TrainConfig(hyperparameters={"max_iter": 60}, seed=1),
        tracking=tracking,
        importance_repeats=1,
    )
    return tracking, df, task, result


def test_regression_training_logs_mae_rmse_r2_baselines_and_the_dropped_inputs(regression, tmp_path):
    tracking, df, task, result = regression
    client = client_for(tracking)
    run = client.get_run(result.run_id)
    params, metrics = run.data.params, run.data.metrics
    assert params["task"] == "regression" and result.task == "regression"
    assert json.loads(params["dropped_inputs"]) == {
        "always_null": "all null on the training rows",
        "constant": "constant on the training rows (always 3.0)",
    }
    assert result.dropped_inputs == json.loads(params["dropped_inputs"])
    assert (
        result.numeric_features == REGRESSION_NUMERIC
        and result.categorical_features == REGRESSION_CATEGORICAL
    )
    features = json.loads(
        Path(client.download_artifacts(result.run_id, "features.json", str(tmp_path))).read_text()
    )
    assert set(features["dropped"]) == {"always_null", "constant"}

    train, holdout = time_split(df, 0.2, task.time, task.entity)
    y = holdout["demand"].to_numpy()
    pred = predict_scores(result.model, model_inputs(holdout, REGRESSION_NUMERIC, REGRESSION_CATEGORICAL))
    assert metrics["holdout_mae"] == pytest.approx(np.mean(np.abs(y - pred)))
    assert metrics["holdout_rmse"] == pytest.approx(np.sqrt(np.mean((y - pred) ** 2)))
    assert metrics["holdout_r2"] == pytest.approx(1 - np.sum((y - pred) ** 2) / np.sum((y - y.mean()) ** 2))
    mean_mae = np.mean(np.abs(y - train["demand"].mean()))
    assert metrics["baseline_mean_mae"] == pytest.approx(mean_mae)
    assert metrics["holdout_mae"] < 0.5 * min(mean_mae, metrics["baseline_last_value_mae"])
    assert not any("roc_auc" in k or "log_loss" in k for k in metrics)

    plots = {f.path for f in client.list_artifacts(result.run_id, "plots")}
    assert {"plots/holdout_residuals.png", "plots/holdout_predicted_vs_actual.png"} <= plots
    mv = client.get_model_version(tracking.model_name, str(result.version))
    assert mv.tags["task"] == "regression"
    local = registry._download_version(client, mv, str(tmp_path / "model"))
    meta = yaml.safe_load((Path(local) / "MLmodel").read_text())
    assert meta["flavors"]["python_function"]["predict_fn"] == "predict"


def test_promotion_and_rollback_keep_a_champion_and_history(store, second, tmp_path):
    tracking, _, first = store
    _, retrained = second
    client = client_for(tracking)
    name = tracking.model_name
    _fresh_registry(client, name)
    history = tmp_path / "promotion_history.sqlite"
    with pytest.raises(registry.RegistryError, match="no 'previous-champion'"):
        registry.rollback(client, "nothing to roll back", model_name=name, history_path=history)

    registry.promote(
        client, first.version, "first model", {"roc_auc": 0.8}, model_name=name, history_path=history
    )
    registry.promote(
        client,
        retrained.version,
        "better model",
        {"roc_auc": 0.9},
        model_name=name,
        history_path=history,
        dagster_run_id="run-2",
    )
    assert _alias(client, registry.CHAMPION) == retrained.version
    assert _alias(client, registry.PREVIOUS_CHAMPION) == first.version
    assert client.get_model_version(name, str(first.version)).tags["lifecycle"] == registry.ARCHIVED
    assert client.get_model_version(name, str(retrained.version)).tags["lifecycle"] == registry.PRODUCTION
    assert registry.promote(client, retrained.version, "again", model_name=name, history_path=history) is None

    record = registry.rollback(client, "errors in production", model_name=name, history_path=history)
    assert record.version == first.version and record.previous_version == retrained.version
    assert _alias(client, registry.CHAMPION) == first.version
    assert client.get_model_version(name, str(first.version)).tags["lifecycle"] == registry.PRODUCTION
    rolled = client.get_model_version(name, str(retrained.version)).tags
    assert rolled["lifecycle"] == registry.ARCHIVED and promotion.rolled_back_since_promotion(rolled)
    with pytest.raises(registry.RegistryError):
        registry.rollback(client, "one step only", model_name=name, history_path=history)
    assert _alias(client, registry.CHAMPION) == first.version

    rows = registry.read_promotion_history(history)
    assert list(rows.columns) == list(registry.HISTORY_COLUMNS)
    assert list(rows["action"]) == ["promote", "promote", "rollback"]
    assert list(rows["version"]) == [first.version, retrained.version, first.version]
    assert list(rows["run_id"]) == [first.run_id, retrained.run_id, first.run_id]
    assert (
        rows["previous_version"].iloc[1] == first.version and rows["reason"].iloc[2] == "errors in production"
    )
    assert rows["metrics"].iloc[1] == {"roc_auc": 0.9} and rows["dagster_run_id"].iloc[1] == "run-2"
    assert rows["at"].is_monotonic_increasing and str(rows["at"].dt.tz) == "UTC"


@pytest.mark.slow
def test_lifecycle_promotes_a_passing_challenger_and_a_failed_gate_blocks_the_next(store, second, tmp_path):
    tracking, df, first = store
    changed, retrained = second
    client = client_for(tracking)
    name = tracking.model_name
    _fresh_registry(client, name)
    history = tmp_path / "history.sqlite"
    registry.promote(client, first.version, "baseline", model_name=name, history_path=history)
    result = run_lifecycle(
        changed,
        TASK,
        CONFIG,
        tracking=tracking,
        reports_dir=tmp_path / "reports",
        history_path=history,
        gates=LENIENT,
        latency_calls=5,
    )
    assert result.trained.cached and result.trained.version == retrained.version
    assert result.evaluation.report.champion_version == first.version
    assert result.decision.promote and "against champion v" + str(first.version) in result.decision.reason
    assert result.promotion is not None and result.promotion.version == retrained.version
    assert _alias(client, registry.CHAMPION) == retrained.version
    assert _alias(client, registry.PREVIOUS_CHAMPION) == first.version
    assert _alias(client, registry.CHALLENGER) is None  # the promoted challenger is no longer a candidate
    assert all(p.parent == tmp_path / "reports" for p in result.evaluation.paths.values())
    tags = client.get_model_version(name, str(retrained.version)).tags
    assert json.loads(tags[promotion.GATES_TAG]) == {g.name: g.status for g in result.evaluation.gates}
    assert tags[promotion.EVALUATED_AGAINST_TAG] == str(first.version)
    rows = registry.read_promotion_history(history)
    assert list(rows["version"]) == [first.version, retrained.version]
    assert rows["metrics"].iloc[1]["challenger_roc_auc"] == pytest.approx(
        result.evaluation.report.metrics["challenger"]["roc_auc"]
    )

    # the first model comes back as challenger and fails an unreachable latency limit: nothing moves
    strict = run_lifecycle(
        df,
        TASK,
        CONFIG,
        tracking=tracking,
        reports_dir=tmp_path / "reports",
        history_path=history,
        gates=LENIENT.model_copy(update={"max_p99_latency_ms": 0.0001}),
        latency_calls=5,
    )
    assert strict.trained.version == first.version and strict.promotion is None
    assert not strict.decision.promote and strict.decision.blocked_by == ("p99_latency",)
    assert _alias(client, registry.CHAMPION) == retrained.version
    assert len(registry.read_promotion_history(history)) == 2
    mv = client.get_model_version(name, str(first.version))
    assert json.loads(mv.tags[promotion.GATES_TAG])["p99_latency"] == "fail"
    assert "FAILED p99_latency" in mv.description and "| p99_latency | fail |" in mv.description


def test_reproduce_gives_identical_predictions(store):
    tracking, df, first = store
    result = reproduce(first.version, TASK, tracking=tracking)
    assert result.identical and result.max_abs_difference == 0.0
    assert result.n_holdout == len(time_split(df, CONFIG.holdout_fraction, TIME, ENTITY)[1])
    assert result.code_matches and result.recorded_git_commit == result.current_git_commit


def test_a_tampered_model_or_training_set_is_refused(store, second):
    tracking, _, first = store
    changed, retrained = second
    client = client_for(tracking)
    mv = client.get_model_version(tracking.model_name, str(retrained.version))
    model_file = Path(client.get_model_version_download_uri(mv.name, mv.version)) / "model.skops"
    original = model_file.read_bytes()
    try:
        model_file.write_bytes(original + b"\0")
        with pytest.raises(registry.ModelIntegrityError, match="differs from the registered"):
            registry.load_model_version(client, mv.version, model_name=tracking.model_name)
    finally:
        model_file.write_bytes(original)
    loaded = registry.load_model_version(client, mv.version, model_name=tracking.model_name)
    x = model_inputs(time_split(changed, 0.2, TIME, ENTITY)[1], NUMERIC_FEATURES, CATEGORICAL_FEATURES)
    np.testing.assert_array_equal(loaded.model.predict_proba(x), retrained.model.predict_proba(x))

    run = client.get_run(first.run_id)
    recorded = Path(run.info.artifact_uri) / "training_set" / "training_set.parquet"
    original = recorded.read_bytes()
    try:
        recorded.write_bytes(original[:-1] + bytes([original[-1] ^ 1]))
        with pytest.raises(registry.ModelIntegrityError, match="recorded training set"):
            reproduce(first.version, TASK, tracking=tracking)
    finally:
        recorded.write_bytes(original)


TRAIN_SCRIPT = textwrap.dedent(
    """
    import sys
    import time
    from pathlib import Path

    from mlops_assets.training.tracking import TrackingConfig
    from mlops_assets.training.train import TrainConfig, train_and_log
    from mlops_assets_tests.synthetic import synthetic_training_set
    from mlops_assets_tests.synthetic import SYNTHETIC_TASK as TASK

    root, seed = Path(sys.argv[1]), int(sys.argv[2])
    (root / f"ready-{seed}").touch()
    deadline = time.monotonic() + 120
    while len(list(root.glob("ready-*"))) < 2 and time.monotonic() < deadline:  # start together
        time.sleep(0.05)
    tracking = TrackingConfig(f"sqlite:///{root}/store/mlflow.db", f"{root}/store/artifacts", "race", "race-model")
    df = synthetic_training_set(n_rows=200, n_days=6, seed=seed)
    result = train_and_log(df, TASK, TrainConfig("logistic_regression"), tracking=tracking, importance_repeats=1)
    print("VERSION", result.version)
    """
)


@pytest.mark.slow
def test_two_processes_train_against_one_fresh_store(tmp_path):
    script = tmp_path / "train_one.py"
    script.write_text(TRAIN_SCRIPT)
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parent.parent)
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
