"""One retrain cycle as plain functions: train → evaluate challenger vs champion → gates → the promotion policy."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from mlops_assets.spec.model import Gates
from mlops_assets.training import promotion, registry
from mlops_assets.training.evaluate import EvaluationReport, evaluate
from mlops_assets.training.gates import GateResult, evaluate_gates
from mlops_assets.training.metrics import baseline_scores
from mlops_assets.training.task import ModelTask
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
    decision: promotion.PromotionDecision
    promotion: registry.PromotionRecord | None


def evaluate_challenger(
    trained: TrainResult,
    training_set: pd.DataFrame,
    task: ModelTask,
    config: TrainConfig,
    *,
    tracking: TrackingConfig,
    reports_dir: str | Path,
    gates: Gates | None = None,
    training_data_valid: bool = True,
    latency_calls: int = 200,
    origin: str = "evaluation",
) -> EvaluationOutcome:
    """Load challenger and champion (hash-verified), evaluate both on the challenger's holdout, judge the gates,
    and record the verdicts on the challenger's registry version."""
    gates = gates or Gates()
    client = client_for(tracking)
    challenger = registry.load_model_version(client, trained.version, model_name=tracking.model_name)
    champion_mv = registry.alias_version(client, registry.CHAMPION, tracking.model_name)
    champion = champion_features = None
    if champion_mv is not None and int(champion_mv.version) != trained.version:
        champion = registry.load_model_version(client, champion_mv.version, model_name=tracking.model_name)
        params = client.get_run(champion.run_id).data.params
        champion_features = (
            json.loads(params["numeric_features"]),
            json.loads(params["categorical_features"]),
        )
    train, holdout = time_split(task.trainable(training_set), config.holdout_fraction, task.time, task.entity)
    y_train, y_holdout = task.target_values(train), task.target_values(holdout)
    baselines = baseline_scores(
        task.kind,
        train,
        holdout,
        y_train,
        y_holdout,
        entity=task.entity,
        time=task.time,
        observed=task.observed,
    )
    report = evaluate(
        task,
        challenger.model,
        champion.model if champion else None,
        train,
        holdout,
        numeric_features=trained.numeric_features,
        categorical_features=trained.categorical_features,
        champion_features=champion_features,
        challenger_version=trained.version,
        champion_version=champion.version if champion else None,
        golden_cases=gates.golden_cases,
        latency_calls=latency_calls,
        min_group_size=gates.min_group_size,
        baselines=baselines,
    )
    paths = report.save(reports_dir)
    verdicts = evaluate_gates(report, gates, training_data_valid)
    promotion.record_gate_verdicts(
        client,
        tracking.model_name,
        trained.version,
        verdicts,
        report.champion_version,
        origin,
        report.summary(),
    )
    return EvaluationOutcome(report, paths, verdicts)


def run_lifecycle(
    training_set: pd.DataFrame,
    task: ModelTask,
    config: TrainConfig,
    *,
    tracking: TrackingConfig,
    reports_dir: str | Path,
    history_path: str | Path,
    gates: Gates | None = None,
    training_set_hash: str | None = None,
    training_data_valid: bool = True,
    dagster_run_id: str | None = None,
    latency_calls: int = 200,
) -> LifecycleResult:
    """Train (or reuse), evaluate, gate, and promote through the one policy."""
    trained = train_and_log(
        training_set,
        task,
        config,
        tracking=tracking,
        training_set_hash=training_set_hash,
        dagster_run_id=dagster_run_id,
    )
    outcome = evaluate_challenger(
        trained,
        training_set,
        task,
        config,
        tracking=tracking,
        reports_dir=reports_dir,
        gates=gates,
        training_data_valid=training_data_valid,
        latency_calls=latency_calls,
        origin=f"lifecycle run {dagster_run_id or 'in process'}",
    )
    decision, record = promotion.promote(
        client_for(tracking),
        tracking.model_name,
        trained.version,
        via="run_lifecycle",
        history_path=history_path,
        metrics={k: v for k, v in outcome.report.summary().items() if isinstance(v, float)},
        dagster_run_id=dagster_run_id,
    )
    return LifecycleResult(trained, outcome, decision, record)
