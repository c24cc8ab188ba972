"""Training assets: the candidate model, its evaluation report (gated by blocking checks), the promotion."""

import base64
import math
from typing import Any

import dagster as dg
import pandas as pd

from mlops_assets.features.store import FeatureStore
from mlops_assets.features.views import FEATURE_VIEWS
from mlops_assets.resources import DataDirResource
from mlops_assets.storage import combine_hashes, frame_hash
from mlops_assets.training import registry
from mlops_assets.training.checks import (
    gate_check_results,
    gate_check_specs,
    training_data_findings,
    training_data_gate,
)
from mlops_assets.training.gates import GATE_NAMES, GateThresholds
from mlops_assets.training.lifecycle import evaluate_challenger
from mlops_assets.training.metrics import METRIC_NAMES
from mlops_assets.training.reproduce import config_from_run
from mlops_assets.training.resources import MlflowResource
from mlops_assets.training.train import (
    CODE_VERSION,
    TrainConfig,
    TrainResult,
    registered_result,
    train_and_log,
)

EVALUATION_LOGIC_VERSION = "1"
PROMOTION_LOGIC_VERSION = "1"
_DEFAULT_GATES = GateThresholds()


class TrainingConfig(dg.Config):
    """Run config of candidate_model: estimator, hyperparameters, split, seed, features, caching."""

    model_type: str = "hist_gradient_boosting"  # or logistic_regression, random_forest
    hyperparameters: dict[str, Any] = {}
    holdout_fraction: float = 0.2
    seed: int = 42
    threshold: float = 0.5
    features: list[str] = []  # empty: every non-sensitive feature of the registered views in the training set
    use_cache: bool = True
    importance_repeats: int = 5

    def train_config(self) -> TrainConfig:
        return TrainConfig(
            model_type=self.model_type,
            hyperparameters=dict(self.hyperparameters),
            holdout_fraction=self.holdout_fraction,
            seed=self.seed,
            threshold=self.threshold,
        )


class EvaluationConfig(dg.Config):
    """Run config of evaluation_report: gate thresholds (the seed's defaults) and measurement sizes."""

    max_accuracy_drop: float = _DEFAULT_GATES.max_accuracy_drop
    min_roc_auc: float = _DEFAULT_GATES.min_roc_auc
    max_p99_latency_ms: float = _DEFAULT_GATES.max_p99_latency_ms
    max_bias_score: float = _DEFAULT_GATES.max_bias_score
    min_test_coverage: float = _DEFAULT_GATES.min_test_coverage
    fairness_attributes: list[str] = ["age_group", "region"]
    latency_calls: int = 200

    def thresholds(self) -> GateThresholds:
        return GateThresholds(
            max_accuracy_drop=self.max_accuracy_drop,
            min_roc_auc=self.min_roc_auc,
            max_p99_latency_ms=self.max_p99_latency_ms,
            max_bias_score=self.max_bias_score,
            min_test_coverage=self.min_test_coverage,
        )


def select_features(frame: pd.DataFrame, requested: list[str]) -> dict[str, list[str]]:
    """Numeric, categorical and sensitive columns of the training set, and registered features it lacks."""
    known = {f.name: f for v in FEATURE_VIEWS for f in v.features}
    unknown = [name for name in requested if name not in known]
    if unknown:
        raise ValueError(f"unknown features {unknown}; registered: {sorted(known)}")
    sensitive = [n for n, f in known.items() if f.sensitive]
    leaked = sorted(set(requested) & set(sensitive))
    if leaked:
        raise ValueError(f"sensitive attributes {leaked} are not model inputs (the bias gate uses them)")
    wanted = list(requested) or [n for n, f in known.items() if not f.sensitive]
    absent = [n for n in wanted if n not in frame.columns]
    if requested and absent:
        raise ValueError(f"the training set lacks the requested features {absent}")
    present = [n for n in wanted if n in frame.columns]
    return {
        "numeric": [n for n in present if not known[n].categorical],
        "categorical": [n for n in present if known[n].categorical],
        "sensitive": [n for n in sensitive if n in frame.columns],
        "absent": absent,
    }


def _fmt(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def metrics_markdown(metrics: dict[str, float]) -> str:
    """Holdout and train metrics of a run side by side."""
    lines = ["| metric | holdout | train |", "|---|---|---|"]
    for name in METRIC_NAMES:
        lines.append(
            f"| {name} | {_fmt(metrics.get(f'holdout_{name}'))} | {_fmt(metrics.get(f'train_{name}'))} |"
        )
    return "\n".join(lines)


def cache_reason(result: TrainResult, use_cache: bool) -> str:
    """Why the version was reused or trained."""
    inputs = (
        f"training set {result.training_set_hash[:12]}, params {result.params_hash[:12]}, "
        f"code {result.code_version}"
    )
    if result.cached:
        return f"reused version {result.version} (run {result.run_id[:8]}): it was trained from the same {inputs}"
    if not use_cache:
        return f"trained: caching disabled in run config ({inputs})"
    return f"trained: no registered version came from the same {inputs}"


def model_data_version(result: TrainResult) -> str:
    """The version's content identity: training-set hash, params hash and code version."""
    return combine_hashes([result.training_set_hash, result.params_hash, result.code_version])


@dg.asset(
    group_name="training",
    deps=["training_set"],
    code_version=f"candidate-{CODE_VERSION}",
    kinds={"mlflow", "scikitlearn"},
    description="A churn classifier trained on the earlier label days, logged to MLflow and registered as "
    "`churn-model@challenger`; reused when training set, params and code are unchanged.",
)
def candidate_model(
    context: dg.AssetExecutionContext, config: TrainingConfig, data: DataDirResource, mlflow: MlflowResource
) -> dg.MaterializeResult:
    """Train (or reuse) the challenger version."""
    frame, meta = FeatureStore(data.paths.root).read_training_set()
    features = select_features(frame, list(config.features))
    result = train_and_log(
        frame,
        config.train_config(),
        numeric_features=features["numeric"],
        categorical_features=features["categorical"],
        sensitive_attributes=features["sensitive"],
        training_set_hash=meta.get("content_hash") or frame_hash(frame),
        tracking=mlflow.tracking,
        dagster_run_id=context.run_id,
        use_cache=config.use_cache,
        importance_repeats=config.importance_repeats,
    )
    reason = cache_reason(result, config.use_cache)
    context.log.info(f"{result.model_uri}: {reason}")
    feature_list = [*result.numeric_features, *result.categorical_features]
    return dg.MaterializeResult(
        data_version=dg.DataVersion(model_data_version(result)),
        metadata={
            "version": result.version,
            "model_uri": result.model_uri,
            "run_id": result.run_id,
            "cached": result.cached,
            "cache_reason": reason,
            "metrics": dg.MetadataValue.md(metrics_markdown(result.metrics)),
            "holdout_roc_auc": result.metrics.get("holdout_roc_auc", float("nan")),
            "features": dg.MetadataValue.json(feature_list),
            "features_absent_from_training_set": dg.MetadataValue.json(features["absent"]),
            "n_train": result.n_train,
            "n_holdout": result.n_holdout,
            "holdout_start": result.holdout_start.isoformat() if result.holdout_start else "",
            "training_set_hash": result.training_set_hash,
            "params_hash": result.params_hash,
            "code_version": result.code_version,
            "model_sha256": result.model_sha256,
        },
    )


def latest_materialization(instance: dg.DagsterInstance, asset: str) -> dg.EventLogEntry:
    """The latest materialization of ``asset``; a Failure saying what to run when there is none."""
    entry = instance.get_latest_materialization_event(dg.AssetKey(asset))
    if entry is None or entry.asset_materialization is None:
        raise dg.Failure(f"{asset} has not been materialized yet; materialize it first")
    return entry


def image_markdown(path, title: str) -> str:
    """A PNG embedded as a base64 data URI (the Dagster UI's markdown renders data: images)."""
    encoded = base64.b64encode(path.read_bytes()).decode()
    return f"![{title}](data:image/png;base64,{encoded})"


def gates_markdown(gates) -> str:
    lines = ["| gate | result | measured | threshold | detail |", "|---|---|---|---|---|"]
    for g in gates:
        verdict = "skipped" if g.skipped else ("pass" if g.passed else "FAIL")
        lines.append(f"| {g.name} | {verdict} | {_fmt(g.measured)} | {_fmt(g.threshold)} | {g.message} |")
    return "\n".join(lines)


def _json_safe(summary: dict[str, Any]) -> dict[str, Any]:
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in summary.items()}


@dg.asset(
    group_name="training",
    deps=[candidate_model],
    code_version=f"evaluation-v{EVALUATION_LOGIC_VERSION}",
    kinds={"mlflow", "markdown"},
    description="Challenger vs champion on the challenger's holdout: quality, latency, fairness, coverage, "
    "golden-input sanity; saved under data/reports/. Each quality gate is a blocking check.",
    check_specs=gate_check_specs(),
)
def evaluation_report(
    context: dg.AssetExecutionContext, config: EvaluationConfig, data: DataDirResource, mlflow: MlflowResource
) -> dg.MaterializeResult:
    """Evaluate the latest candidate_model version and judge every quality gate."""
    candidate = latest_materialization(context.instance, "candidate_model")
    version = int(candidate.asset_materialization.metadata["version"].value)
    client = mlflow.client()
    trained = registered_result(client, version, model_name=mlflow.model_name)
    frame, meta = FeatureStore(data.paths.root).read_training_set()
    stored_hash = meta.get("content_hash") or frame_hash(frame)
    if stored_hash != trained.training_set_hash:
        raise dg.Failure(
            f"the stored training set ({stored_hash[:12]}) is not the one version {version} was trained on "
            f"({trained.training_set_hash[:12]}); materialize candidate_model again"
        )
    train_config = config_from_run(client.get_run(trained.run_id).data.params)
    problems, evidence = training_data_findings(context.instance, frame)
    outcome = evaluate_challenger(
        trained,
        frame,
        train_config,
        tracking=mlflow.tracking,
        reports_dir=data.paths.reports,
        thresholds=config.thresholds(),
        training_data_valid=not problems,
        fairness_attributes=[a for a in config.fairness_attributes if a in frame.columns],
        latency_calls=config.latency_calls,
    )
    gates = [
        training_data_gate(g, problems, evidence) if g.name == "training_data_valid" else g
        for g in outcome.gates
    ]
    assert [g.name for g in gates] == list(GATE_NAMES)
    report, paths = outcome.report, outcome.paths
    summary = _json_safe(report.summary())
    failed = [g.name for g in gates if not g.passed]
    against = f"champion v{report.champion_version}" if report.champion_version is not None else "no champion"
    context.log.info(
        f"evaluated v{version} against {against}: "
        f"{'all gates passed' if not failed else 'FAILED ' + ', '.join(failed)}"
    )
    return dg.MaterializeResult(
        data_version=dg.DataVersion(
            combine_hashes(
                [trained.model_sha256, str(report.champion_version), repr(config.thresholds().to_dict())]
            )
        ),
        metadata={
            "challenger_version": version,
            "champion_version": report.champion_version if report.champion_version is not None else "none",
            "gates_failed": dg.MetadataValue.json(failed),
            "gates": dg.MetadataValue.md(gates_markdown(gates)),
            "report": dg.MetadataValue.md(report.to_markdown()),
            "roc_curve": dg.MetadataValue.md(image_markdown(paths["roc"], "ROC curve")),
            "calibration_curve": dg.MetadataValue.md(image_markdown(paths["calibration"], "Calibration")),
            "report_path": dg.MetadataValue.path(str(paths["markdown"])),
            "report_json_path": dg.MetadataValue.path(str(paths["json"])),
            "summary": dg.MetadataValue.json(summary),
            "accuracy": summary.get("challenger_accuracy"),
            "roc_auc": summary.get("challenger_roc_auc"),
            "p99_latency_ms": summary.get("p99_latency_ms"),
            "bias_score": summary.get("bias_score"),
            "test_coverage": summary.get("test_coverage"),
        },
        check_results=gate_check_results(gates, version, mlflow.model_name),
    )


def history_markdown(history: pd.DataFrame, tail: int = 10) -> str:
    """The last alias moves as a markdown table."""
    lines = ["| at | action | version | previous | dagster run | reason |", "|---|---|---|---|---|---|"]
    for row in history.tail(tail).itertuples():
        previous = "none" if pd.isna(row.previous_version) else int(row.previous_version)
        run = "" if pd.isna(row.dagster_run_id) else str(row.dagster_run_id)[:8]
        lines.append(
            f"| {row.at:%Y-%m-%d %H:%M:%S} | {row.action} | {row.version} | {previous} | {run} | "
            f"{row.reason} |"
        )
    return "\n".join(lines)


KEY_METRICS = (
    "challenger_accuracy",
    "challenger_roc_auc",
    "challenger_f1",
    "champion_accuracy",
    "p99_latency_ms",
    "bias_score",
    "test_coverage",
)


def _gates_not_passed(instance: dg.DagsterInstance, evaluation_run_id: str) -> list[str]:
    """Gates that did not pass in the evaluation's own run (a guard when promotion runs on its own)."""
    blocked = []
    for name in GATE_NAMES:
        record = instance.get_latest_asset_check_evaluation_record(
            dg.AssetCheckKey(dg.AssetKey("evaluation_report"), name)
        )
        evaluation = record.event.asset_check_evaluation if record is not None and record.event else None
        if evaluation is None or record.run_id != evaluation_run_id or not evaluation.passed:
            blocked.append(name)
    return blocked


class PromotionConfig(dg.Config):
    """Run config of promotion."""

    allow_rolled_back: bool = False  # re-promote a version that was rolled back since its last promotion


def rolled_back_since_promotion(tags: dict[str, str]) -> str | None:
    """When the version was rolled back, if that happened after its last promotion."""
    rolled_back, promoted = tags.get("rolled_back_at"), tags.get("promoted_at")
    return rolled_back if rolled_back and (not promoted or promoted < rolled_back) else None


@dg.asset(
    group_name="training",
    deps=[evaluation_report],
    code_version=f"promotion-v{PROMOTION_LOGIC_VERSION}",
    kinds={"mlflow"},
    description="Moves `champion` to the evaluated challenger (keeping `previous-champion` for rollback) and "
    "records the move in the promotion history. Runs only when every quality gate passed; a version that "
    "was rolled back is not re-promoted unless the run config allows it.",
)
def promotion(
    context: dg.AssetExecutionContext, config: PromotionConfig, data: DataDirResource, mlflow: MlflowResource
) -> dg.MaterializeResult:
    """Promote the challenger that the latest evaluation passed."""
    evaluation = latest_materialization(context.instance, "evaluation_report")
    meta = evaluation.asset_materialization.metadata
    version = int(meta["challenger_version"].value)
    blocked = _gates_not_passed(context.instance, evaluation.run_id)
    if blocked:
        raise dg.Failure(
            f"version {version} did not pass {', '.join(blocked)} in evaluation run "
            f"{evaluation.run_id[:8]}; not promoting"
        )
    summary = meta["summary"].value if "summary" in meta else {}
    metrics = {k: summary[k] for k in KEY_METRICS if summary.get(k) is not None}
    judged = (
        "against champion v" + str(summary["champion_version"])
        if summary.get("champion_version")
        else "on absolute thresholds (no champion yet)"
    )
    reason = f"all {len(GATE_NAMES)} quality gates passed {judged} in run {evaluation.run_id[:8]}"
    history_path = registry.default_history_path(data.paths.root)
    client = mlflow.client()
    rolled_back = rolled_back_since_promotion(client.get_model_version(mlflow.model_name, str(version)).tags)
    record = None
    if rolled_back and not config.allow_rolled_back:
        reason = (
            f"version {version} passed the gates but was rolled back at {rolled_back}; not re-promoted "
            "(set allow_rolled_back in the promotion run config to override)"
        )
    else:
        record = registry.promote(
            client,
            version,
            reason,
            metrics,
            model_name=mlflow.model_name,
            dagster_run_id=context.run_id,
            history_path=history_path,
        )
        if record is None:
            reason = f"version {version} is already the champion; nothing moved"
    champion = registry.alias_version(client, registry.CHAMPION, mlflow.model_name)
    previous = registry.alias_version(client, registry.PREVIOUS_CHAMPION, mlflow.model_name)
    history = registry.read_promotion_history(history_path)
    history = history[history["model_name"] == mlflow.model_name]
    context.log.info(reason)
    return dg.MaterializeResult(
        data_version=dg.DataVersion(
            f"champion-{champion.version}" if champion is not None else "no-champion"
        ),
        metadata={
            "champion_version": int(champion.version) if champion is not None else "none",
            "previous_champion": int(previous.version) if previous is not None else "none",
            "evaluated_version": version,
            "moved": record is not None,
            "reason": reason,
            "key_metrics": dg.MetadataValue.md(
                "| metric | value |\n|---|---|\n"
                + "\n".join(f"| {k} | {_fmt(v)} |" for k, v in metrics.items())
            ),
            "promotion_history": dg.MetadataValue.md(history_markdown(history)),
        },
    )


training_assets = [candidate_model, evaluation_report, promotion]
