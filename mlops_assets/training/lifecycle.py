"""One retrain cycle as plain functions: train → evaluate challenger vs champion → gates → promote or alert."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from mlops_assets.settings import data_paths
from mlops_assets.training import registry
from mlops_assets.training.alerts import AlertSink
from mlops_assets.training.evaluate import EvaluationReport, evaluate
from mlops_assets.training.gates import GateResult, GateThresholds, evaluate_gates
from mlops_assets.training.tracking import TrackingConfig, client_for
from mlops_assets.training.train import TrainConfig, TrainResult, time_split, train_and_log


@dataclass(frozen=True)
class EvaluationOutcome:
    """The report, where it was saved, and the gate verdicts."""

    report: EvaluationReport
    paths: dict[str, Path]
    gates: list[GateResult]


@dataclass(frozen=True)
class LifecycleResult:
    trained: TrainResult
    evaluation: EvaluationOutcome
    promotion: registry.PromotionRecord | None


def evaluate_challenger(
    trained: TrainResult,
    training_set: pd.DataFrame,
    config: TrainConfig,
    *,
    tracking: TrackingConfig,
    reports_dir: str | Path,
    thresholds: GateThresholds | None = None,
    training_data_valid: bool = True,
    fairness_attributes: Sequence[str] = ("age_group", "region"),
    latency_calls: int = 200,
) -> EvaluationOutcome:
    """Load challenger and champion (hash-verified), evaluate both on the challenger's holdout, judge the gates."""
    client = client_for(tracking)
    challenger = registry.load_model_version(client, trained.version, model_name=tracking.model_name)
    champion_mv = registry.alias_version(client, registry.CHAMPION, tracking.model_name)
    champion = None
    champion_features = None
    if champion_mv is not None and int(champion_mv.version) != trained.version:
        champion = registry.load_model_version(client, champion_mv.version, model_name=tracking.model_name)
        params = client.get_run(champion.run_id).data.params
        champion_features = (
            json.loads(params["numeric_features"]),
            json.loads(params["categorical_features"]),
        )
    _, holdout = time_split(training_set, config.holdout_fraction)
    report = evaluate(
        challenger.model,
        champion.model if champion else None,
        holdout,
        numeric_features=trained.numeric_features,
        categorical_features=trained.categorical_features,
        fairness_attributes=fairness_attributes,
        champion_features=champion_features,
        challenger_version=trained.version,
        champion_version=champion.version if champion else None,
        threshold=config.threshold,
        latency_calls=latency_calls,
    )
    paths = report.save(reports_dir)
    return EvaluationOutcome(report, paths, evaluate_gates(report, thresholds, training_data_valid))


def run_lifecycle(
    training_set: pd.DataFrame,
    config: TrainConfig,
    *,
    numeric_features: Sequence[str],
    categorical_features: Sequence[str],
    sensitive_attributes: Sequence[str] = ("age_group",),
    training_set_hash: str | None = None,
    training_data_valid: bool = True,
    thresholds: GateThresholds | None = None,
    tracking: TrackingConfig | None = None,
    data_root: str | Path | None = None,
    alert_sink: AlertSink | None = None,
    history_path: str | Path | None = None,
    dagster_run_id: str | None = None,
    latency_calls: int = 200,
) -> LifecycleResult:
    """Train (or reuse), evaluate, gate, and promote when every gate passes; alert otherwise."""
    paths = data_paths(data_root)
    tracking = tracking or TrackingConfig.for_data_root(paths.root)
    trained = train_and_log(
        training_set,
        config,
        numeric_features=numeric_features,
        categorical_features=categorical_features,
        sensitive_attributes=sensitive_attributes,
        training_set_hash=training_set_hash,
        tracking=tracking,
        dagster_run_id=dagster_run_id,
    )
    outcome = evaluate_challenger(
        trained,
        training_set,
        config,
        tracking=tracking,
        reports_dir=paths.reports,
        thresholds=thresholds,
        training_data_valid=training_data_valid,
        fairness_attributes=tuple(dict.fromkeys([*sensitive_attributes, "region"])),
        latency_calls=latency_calls,
    )
    promotion = registry.promote_if_passed(
        client_for(tracking),
        trained.version,
        outcome.gates,
        outcome.report.summary(),
        model_name=tracking.model_name,
        dagster_run_id=dagster_run_id,
        history_path=history_path or registry.default_history_path(paths.root),
        alert_sink=alert_sink,
    )
    return LifecycleResult(trained, outcome, promotion)
