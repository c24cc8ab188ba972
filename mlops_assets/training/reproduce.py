"""Reproduce a registered model: retrain from its recorded training set, params and seed; compare predictions."""

from __future__ import annotations

import hashlib
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from mlops_assets.training import registry
from mlops_assets.training.task import ModelTask
from mlops_assets.training.tracking import TrackingConfig, registry_client
from mlops_assets.training.train import (
    CODE_VERSION,
    TRAINING_SET_ARTIFACT,
    TrainConfig,
    fit_model,
    git_state,
    model_inputs,
    predict_scores,
    time_split,
)


@dataclass(frozen=True)
class ReproductionResult:
    """How closely a retrain matches the registered model on the holdout."""

    model_name: str
    version: int
    n_holdout: int
    max_abs_difference: float
    tolerance: float
    recorded_code_version: str
    current_code_version: str
    recorded_git_commit: str
    current_git_commit: str

    @property
    def identical(self) -> bool:
        return self.max_abs_difference <= self.tolerance

    @property
    def code_matches(self) -> bool:
        return self.recorded_code_version == self.current_code_version


def config_from_run(params: dict[str, str]) -> TrainConfig:
    """The TrainConfig recorded in a run's params."""
    return TrainConfig(
        model_type=params["model_type"],
        hyperparameters=json.loads(params["hyperparameters"]),
        holdout_fraction=float(params["holdout_fraction"]),
        seed=int(params["seed"]),
        threshold=float(params.get("threshold", 0.5)),
    )


def reproduce(
    version: int | str,
    task: ModelTask,
    *,
    tracking: TrackingConfig,
    tolerance: float = 0.0,
) -> ReproductionResult:
    """Retrain version ``version`` from what its run recorded and return the max |Δ score| on the holdout.

    Raises ``RegistryUnavailable`` (and creates nothing) when the MLflow store is missing or unreadable.
    """
    import mlflow.artifacts

    client = registry_client(tracking)
    mv = client.get_model_version(tracking.model_name, str(version))
    run = client.get_run(mv.run_id)
    params, tags = run.data.params, run.data.tags
    with tempfile.TemporaryDirectory(prefix="mlops-reproduce-") as tmp:
        local = mlflow.artifacts.download_artifacts(
            artifact_uri=f"{run.info.artifact_uri}/{TRAINING_SET_ARTIFACT}",
            dst_path=tmp,
            tracking_uri=tracking.tracking_uri,
        )
        data = Path(local).read_bytes()
        expected = tags.get("training_set_file_sha256")
        actual = hashlib.sha256(data).hexdigest()
        if expected and actual != expected:
            raise registry.ModelIntegrityError(
                f"recorded training set of version {version} has SHA-256 {actual}, expected {expected}"
            )
        training_set = pd.read_parquet(local)
    numeric = json.loads(params["numeric_features"])
    categorical = json.loads(params["categorical_features"])
    config = config_from_run(params)
    train, holdout = time_split(task.trainable(training_set), config.holdout_fraction, task.time, task.entity)
    retrained = fit_model(train, config, task, numeric, categorical)
    registered = registry.load_model_version(client, mv.version, model_name=tracking.model_name).model
    inputs = model_inputs(holdout, numeric, categorical)
    diff = np.abs(predict_scores(retrained, inputs) - predict_scores(registered, inputs))
    commit, _ = git_state()
    return ReproductionResult(
        model_name=tracking.model_name,
        version=int(mv.version),
        n_holdout=len(holdout),
        max_abs_difference=float(diff.max()) if len(diff) else 0.0,
        tolerance=tolerance,
        recorded_code_version=tags.get("code_version", "unknown"),
        current_code_version=CODE_VERSION,
        recorded_git_commit=tags.get("git_commit", "unknown"),
        current_git_commit=commit,
    )
