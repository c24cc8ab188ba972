"""Training assets: the candidate model, its evaluation report (gated by blocking checks), the promotion."""

import base64
import math
from typing import TYPE_CHECKING, Any

import dagster as dg

from mlops_assets.project import Project
from mlops_assets.resources import DataDirResource, runtime_project
from mlops_assets.storage import combine_hashes
from mlops_assets.training.checks import (
    EVALUATION_ASSET,
    gate_check_results,
    gate_check_specs,
    training_data_findings,
    training_data_gate,
)
from mlops_assets.training.gates import GATE_NAMES
from mlops_assets.training.resources import MlflowResource
from mlops_assets.training.task import CODE_VERSION, ModelTask

if (
    TYPE_CHECKING
):  # the modules that train and evaluate load inside the asset bodies, not with the definitions
    import pandas as pd

    from mlops_assets.training.train import TrainConfig, TrainResult

EVALUATION_LOGIC_VERSION = "2"
PROMOTION_LOGIC_VERSION = "2"


class TrainingConfig(dg.Config):
    """Run config of candidate_model; empty values keep the spec's `model:` settings."""

    model_type: str = ""  # hist_gradient_boosting, logistic_regression, linear_regression, random_forest
    hyperparameters: dict[str, Any] = {}
    holdout_fraction: float = 0.0
    seed: int = -1
    use_cache: bool = True
    importance_repeats: int = 5

    def train_config(self, task: ModelTask) -> "TrainConfig":
        from mlops_assets.training.train import TrainConfig

        return TrainConfig.from_task(
            task,
            model_type=self.model_type or None,
            hyperparameters=dict(self.hyperparameters) or None,
            holdout_fraction=self.holdout_fraction or None,
            seed=self.seed if self.seed >= 0 else None,
        )


class EvaluationConfig(dg.Config):
    """Run config of evaluation_report (the gate thresholds live in the spec's `gates:`)."""

    latency_calls: int = 200


class PromotionConfig(dg.Config):
    """Run config of promotion."""

    allow_rolled_back: bool = False  # re-promote a version that was rolled back since its last promotion
    rollout: str = ""  # direct, or canary: a champion is replaced only by a completed canary ($MLOPS_ROLLOUT)


def _round(value: Any) -> Any:
    """Floats as a person reads them in metadata: 4 significant digits (JSON artifacts keep every digit)."""
    if isinstance(value, float):
        return float(f"{value:.4g}") if math.isfinite(value) else None
    return value


def _links(client, model_name: str, version: int | None, run_id: str | None = None) -> dict:
    """``MetadataValue.url`` links to the MLflow UI's run and model version (when ``$MLOPS_MLFLOW_UI_URL`` is set)."""
    from mlops_assets.training.tracking import mlflow_links

    return {k: dg.MetadataValue.url(v) for k, v in mlflow_links(client, model_name, version, run_id).items()}


def metrics_markdown(task: str, metrics: dict[str, float]) -> str:
    """Holdout, train and baseline metrics of a run side by side."""
    from mlops_assets.training.evaluate import fmt
    from mlops_assets.training.metrics import metric_names

    baselines = sorted({k.split("_")[1] for k in metrics if k.startswith("baseline_")})
    lines = ["| metric | holdout | train | " + " | ".join(f"baseline {b}" for b in baselines) + " |"]
    lines.append("|---" * (3 + len(baselines)) + "|")
    for name in metric_names(task):
        cells = [fmt(metrics.get(f"baseline_{b}_{name}")) for b in baselines]
        lines.append(
            f"| {name} | {fmt(metrics.get(f'holdout_{name}'))} | {fmt(metrics.get(f'train_{name}'))} | "
            + " | ".join(cells)
            + " |"
        )
    return "\n".join(lines)


def cache_reason(result: "TrainResult", use_cache: bool) -> str:
    inputs = f"training set {result.training_set_hash[:12]}, params {result.params_hash[:12]}, code {result.code_version}"
    if result.cached:
        return f"reused version {result.version} (run {result.run_id[:8]}): it was trained from the same {inputs}"
    if not use_cache:
        return f"trained: caching disabled in run config ({inputs})"
    return f"trained: no registered version came from the same {inputs}"


def model_data_version(result: "TrainResult") -> str:
    return combine_hashes([result.training_set_hash, result.params_hash, result.code_version])


def latest_materialization(instance: dg.DagsterInstance, asset: str) -> dg.EventLogEntry:
    """The latest materialization of ``asset``; a Failure saying what to run when there is none."""
    entry = instance.get_latest_materialization_event(dg.AssetKey(asset))
    if entry is None or entry.asset_materialization is None:
        raise dg.Failure(f"{asset} has not been materialized yet; materialize it first")
    return entry


def image_markdown(path, title: str) -> str:
    """A PNG embedded as a base64 data URI (the Dagster UI's markdown renders data: images)."""
    return f"![{title}](data:image/png;base64,{base64.b64encode(path.read_bytes()).decode()})"


def gates_markdown(gates) -> str:
    from mlops_assets.training.evaluate import fmt

    lines = ["| gate | result | measured | threshold | detail |", "|---|---|---:|---:|---|"]
    for g in gates:
        verdict = {"pass": "pass", "fail": "**FAIL**", "not applicable": "skipped (not applicable)"}[g.status]
        lines.append(
            f"| {g.name} | {verdict} | {fmt(g.measured)} | {fmt(g.threshold)} | {g.message.replace('|', '/')} |"
        )
    return "\n".join(lines)


def history_markdown(history: "pd.DataFrame", tail: int = 10) -> str:
    """The last alias moves as a markdown table."""
    import pandas as pd

    lines = ["| at | action | version | previous | dagster run | reason |", "|---|---|---|---|---|---|"]
    for row in history.tail(tail).itertuples():
        previous = "none" if pd.isna(row.previous_version) else int(row.previous_version)
        run = "" if pd.isna(row.dagster_run_id) else str(row.dagster_run_id)[:8]
        lines.append(
            f"| {row.at:%Y-%m-%d %H:%M:%S} | {row.action} | {row.version} | {previous} | {run} | {row.reason} |"
        )
    return "\n".join(lines)


def build_training_assets(project: Project) -> list[dg.AssetsDefinition]:
    """candidate_model, evaluation_report and promotion for the project's target and model."""
    task = ModelTask.from_project(project)
    gates_spec = project.spec.gates

    @dg.asset(
        name="candidate_model",
        group_name="training",
        deps=["training_set"],
        code_version=f"candidate-{CODE_VERSION}",
        kinds={"mlflow", "scikitlearn"},
        description=f"A {task.kind} model of {task.label} trained on the earlier label days, logged to MLflow and "
        f"registered as `{task.model_name}@challenger`; reused when training set, params and code are unchanged. "
        "Inputs all-null or constant on the training rows are dropped with the reason.",
    )
    def candidate_model(
        context: dg.AssetExecutionContext,
        config: TrainingConfig,
        data: DataDirResource,
        mlflow: MlflowResource,
    ) -> dg.MaterializeResult:
        from mlops_assets.features.store import FeatureStore
        from mlops_assets.storage import frame_hash
        from mlops_assets.training.train import train_and_log

        current = runtime_project(project, data)
        frame, meta = FeatureStore(current).read_training_set()
        result = train_and_log(
            frame,
            task,
            config.train_config(task),
            tracking=mlflow.tracking,
            training_set_hash=meta.get("content_hash") or frame_hash(frame),
            dagster_run_id=context.run_id,
            use_cache=config.use_cache,
            importance_repeats=config.importance_repeats,
            git_root=current.spec_path.parent if current.spec_path else None,
        )
        reason = cache_reason(result, config.use_cache)
        context.log.info(f"{result.model_uri}: {reason}")
        if result.dropped_inputs:
            context.log.warning(
                f"{len(result.dropped_inputs)} candidate input(s) dropped: "
                + "; ".join(f"{k}: {v}" for k, v in result.dropped_inputs.items())
            )
        metadata = {
            "version": result.version,
            "model_uri": result.model_uri,
            "run_id": result.run_id,
            "cached": result.cached,
            "cache_reason": reason,
            "metrics": dg.MetadataValue.md(metrics_markdown(task.kind, result.metrics)),
            f"holdout_{task.metric}": _round(result.metrics.get(f"holdout_{task.metric}", float("nan"))),
            "features": dg.MetadataValue.json([*result.numeric_features, *result.categorical_features]),
            "dropped_inputs": dg.MetadataValue.md(
                "\n".join(f"- `{k}`: {v}" for k, v in result.dropped_inputs.items()) or "none"
            ),
            "n_train": result.n_train,
            "n_holdout": result.n_holdout,
            "holdout_start": result.holdout_start.isoformat() if result.holdout_start else "",
            "training_set_hash": result.training_set_hash,
            "model_sha256": result.model_sha256,
            **_links(mlflow.client(), mlflow.model_name, result.version, result.run_id),
        }
        return dg.MaterializeResult(
            data_version=dg.DataVersion(model_data_version(result)), metadata=metadata
        )

    @dg.multi_asset(
        specs=[
            dg.AssetSpec(
                EVALUATION_ASSET,
                group_name="training",
                deps=[candidate_model],
                code_version=f"evaluation-v{EVALUATION_LOGIC_VERSION}",
                kinds={"mlflow", "markdown"},
                description="Challenger vs champion vs trivial baselines on the challenger's holdout: quality, "
                "overfitting, latency, fairness, coverage, golden cases; saved under reports/. Each quality gate "
                "is a blocking check; a gate that does not apply passes (it blocks nothing) with status 'not applicable' "
                "and the reason in its metadata and in the gate table.",
            )
        ],
        check_specs=gate_check_specs(),
        can_subset=True,
        name="evaluation_report",
    )
    def evaluation_report(
        context: dg.AssetExecutionContext,
        config: EvaluationConfig,
        data: DataDirResource,
        mlflow: MlflowResource,
    ):
        from mlops_assets.features.store import FeatureStore
        from mlops_assets.storage import frame_hash
        from mlops_assets.training import promotion as policy
        from mlops_assets.training.lifecycle import evaluate_challenger
        from mlops_assets.training.reproduce import config_from_run
        from mlops_assets.training.train import registered_result

        current = runtime_project(project, data)
        candidate = latest_materialization(context.instance, "candidate_model")
        version = int(candidate.asset_materialization.metadata["version"].value)
        client = mlflow.client()
        trained = registered_result(client, mlflow.model_name, version)
        frame, meta = FeatureStore(current).read_training_set()
        stored_hash = meta.get("content_hash") or frame_hash(frame)
        if stored_hash != trained.training_set_hash:
            raise dg.Failure(
                f"the stored training set ({stored_hash[:12]}) is not the one version {version} was trained on "
                f"({trained.training_set_hash[:12]}); materialize candidate_model again"
            )
        problems, evidence = training_data_findings(context.instance, frame, current)
        outcome = evaluate_challenger(
            trained,
            frame,
            task,
            config_from_run(client.get_run(trained.run_id).data.params),
            tracking=mlflow.tracking,
            reports_dir=current.paths.reports,
            gates=gates_spec,
            training_data_valid=not problems,
            latency_calls=config.latency_calls,
            origin=f"dagster run {context.run_id[:8]}",
        )
        gates = [
            training_data_gate(g, problems, evidence) if g.name == "training_data_valid" else g
            for g in outcome.gates
        ]
        policy.record_gate_verdicts(
            client,
            mlflow.model_name,
            version,
            gates,
            outcome.report.champion_version,
            f"dagster run {context.run_id[:8]}",
        )
        report, paths = outcome.report, outcome.paths
        summary = report.summary()
        failed = [g.name for g in gates if not g.passed]
        against = (
            f"champion v{report.champion_version}" if report.champion_version is not None else "no champion"
        )
        context.log.info(
            f"evaluated v{version} against {against}: {'FAILED ' + ', '.join(failed) if failed else 'every applicable gate passed'}"
        )
        plots = {k: v for k, v in paths.items() if k not in ("markdown", "json")}
        metadata = {
            "gates": dg.MetadataValue.md(gates_markdown(gates)),
            "challenger_version": version,
            "champion_version": report.champion_version if report.champion_version is not None else "none",
            "gates_failed": dg.MetadataValue.json(failed),
            f"challenger_{task.metric}": _round(summary.get(f"challenger_{task.metric}")),
            "robust_p99_latency_ms": _round(summary.get("robust_p99_latency_ms")),
            "report": dg.MetadataValue.md(report.to_markdown()),
            **{name: dg.MetadataValue.md(image_markdown(path, name)) for name, path in plots.items()},
            "report_path": dg.MetadataValue.path(str(paths["markdown"])),
            "report_json_path": dg.MetadataValue.path(str(paths["json"])),
            **_links(client, mlflow.model_name, version, trained.run_id),
        }
        yield dg.MaterializeResult(
            asset_key=EVALUATION_ASSET,
            data_version=dg.DataVersion(
                combine_hashes(
                    [
                        trained.model_sha256,
                        str(report.champion_version),
                        repr(gates_spec.model_dump(mode="json")),
                    ]
                )
            ),
            metadata=metadata,
            check_results=gate_check_results(gates, version, mlflow.model_name),
        )

    @dg.asset(
        name="promotion",
        group_name="training",
        deps=[EVALUATION_ASSET],
        code_version=f"promotion-v{PROMOTION_LOGIC_VERSION}",
        kinds={"mlflow"},
        description="Applies the promotion policy to the evaluated challenger: `champion` moves to it when no "
        "quality gate failed, it was judged against the current champion and it was not rolled back since; the "
        "old champion stays as `previous-champion`; every move is in the promotion history.",
    )
    def promotion(
        context: dg.AssetExecutionContext,
        config: PromotionConfig,
        data: DataDirResource,
        mlflow: MlflowResource,
    ) -> dg.MaterializeResult:
        from mlops_assets.serving.canary import rollout_mode
        from mlops_assets.training import promotion as policy
        from mlops_assets.training import registry

        current = runtime_project(project, data)
        evaluation = latest_materialization(context.instance, EVALUATION_ASSET)
        version = int(evaluation.asset_materialization.metadata["challenger_version"].value)
        client = mlflow.client()
        history_path = registry.default_history_path(current.paths.root)
        before = registry.alias_version(client, registry.CHAMPION, mlflow.model_name)
        canary = rollout_mode(config.rollout) == "canary" and before is not None
        if canary:  # a champion is replaced only through a completed canary (rollout_state starts it)
            decision, record = (
                policy.decide(client, mlflow.model_name, version, allow_rolled_back=config.allow_rolled_back),
                None,
            )
        else:
            decision, record = policy.promote(
                client,
                mlflow.model_name,
                version,
                via="promotion asset",
                history_path=history_path,
                dagster_run_id=context.run_id,
                allow_rolled_back=config.allow_rolled_back,
            )
        if not decision.promote and decision.blocked_by and decision.blocked_by[0] not in ("rolled_back",):
            raise dg.Failure(decision.reason)
        reason = decision.reason
        if canary and decision.promote:
            reason += (
                f"; rollout mode canary: v{version} goes to a canary against champion v{before.version} first "
                "(rollout_state), and the completed canary promotes it"
            )
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
                "rollout": "canary" if canary else "direct",
                "reason": reason,
                "promotion_history": dg.MetadataValue.md(history_markdown(history)),
                **_links(client, mlflow.model_name, int(champion.version) if champion is not None else None),
            },
        )

    return [candidate_model, evaluation_report, promotion]


__all__ = ["GATE_NAMES", "build_training_assets"]
