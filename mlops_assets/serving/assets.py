"""Serving domain assets: the daily prediction log, daily batch predictions, the A/B report, the rollout state."""

from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import dagster as dg

from mlops_assets.automation import arriving_days
from mlops_assets.project import Project
from mlops_assets.resources import DataDirResource, runtime_project
from mlops_assets.serving.routing import read_state, state_path
from mlops_assets.storage import (
    combine_hashes,
    frame_hash,
    read_partition,
    write_file_atomic,
    write_partition,
)

if TYPE_CHECKING:  # scoring, the log and the A/B statistics load in the run, not with the definitions
    import pandas as pd

#: The serving app's own log: JSON-lines files it appends per process and UTC day. It serves the registry's
#: champion and challenger (moved by promotion), routes by the rollout state and reads the online store.
serving_log = dg.AssetSpec(
    "serving_log",
    group_name="serving",
    deps=["promotion", "rollout_state", "online_features"],
    kinds={"fastapi", "json"},
    description="The serving app's prediction log as it writes it (data/serving/prediction_log/date=<day>/"
    "<host>-<pid>.jsonl): one line per scored request and arm. Written outside Dagster; the serving-log "
    "sensor observes it and materializes the day's prediction_log partition.",
)

#: The days the serving app logged requests on (wall-clock days, added by the serving-log sensor).
PREDICTION_LOG_DAYS = "prediction_log_days"


def rollout_state_metadata(state) -> dict:
    """The rollout state as Dagster metadata."""
    return {
        "mode": state.mode,
        "challenger_share": float(state.challenger_share),
        "step": int(state.step) + 1 if state.mode == "canary" else 0,
        "experiment": state.experiment,
        "champion_version": state.champion_version or "none",
        "challenger_version": state.challenger_version or "none",
        "changed_at": state.changed_at or "never",
        "reason": state.reason or "",
    }


def rollout_history_markdown(history: "pd.DataFrame", tail: int = 12) -> str:
    """The last rollout transitions as a markdown table."""
    lines = ["| at | action | mode | share | experiment | reason |", "|---|---|---|---:|---|---|"]
    for row in history.tail(tail).itertuples():
        reason = str(row.reason).replace("|", "/")[:200]
        lines.append(
            f"| {row.at:%Y-%m-%d %H:%M:%S} | {row.action} | {row.from_mode} -> {row.to_mode} | "
            f"{row.to_share:.0%} | {row.experiment} | {reason} |"
        )
    return "\n".join(lines)


class RolloutConfig(dg.Config):
    """Run config of rollout_state: ``direct`` or ``canary`` (empty: ``$MLOPS_ROLLOUT``, else direct)."""

    rollout: str = ""


def build_rollout_state_asset(project: Project) -> dg.AssetsDefinition:
    """The rollout state the serving app routes by, written by the rollout controller."""
    from mlops_assets.training.resources import MlflowResource

    @dg.asset(
        name="rollout_state",
        group_name="serving",
        deps=["promotion"],
        code_version="rollout-state-1",
        kinds={"json"},
        description="Routing mode, challenger share and experiment the serving app routes by "
        "(data/serving/rollout_state.json). In canary mode ($MLOPS_ROLLOUT=canary) a challenger that passed its "
        "gates against the champion starts a canary here; the canary sensor records each step on this asset and "
        "promotes the challenger when the canary completes.",
    )
    def rollout_state(
        context: dg.AssetExecutionContext,
        config: RolloutConfig,
        data: DataDirResource,
        mlflow: MlflowResource,
    ) -> dg.MaterializeResult:
        from mlops_assets.serving.canary import begin_canary, rollout_mode
        from mlops_assets.serving.rollout import RolloutController

        current = runtime_project(project, data)
        step = begin_canary(current, mlflow.client(), mlflow.model_name, rollout_mode(config.rollout))
        context.log.info(f"rollout {step.action}: {step.reason}")
        history = RolloutController(current.paths.root).history()
        return dg.MaterializeResult(
            data_version=dg.DataVersion(f"{step.state.mode}-{step.state.experiment}-{step.state.changed_at}"),
            metadata={
                "action": step.action,
                **rollout_state_metadata(step.state),
                "reason": step.reason,
                "reference_scores": step.reference_scores,
                "history": dg.MetadataValue.md(rollout_history_markdown(history)),
            },
        )

    return rollout_state


def _round4(value: float) -> float:
    return float(f"{value:.4g}")


def log_day_metadata(served: "pd.DataFrame") -> dict:
    """Requests per experiment and arm, model versions and p99 latency per arm of a day's served requests."""
    if served.empty:
        return {}
    by_experiment = {
        str(experiment): group["arm"].value_counts().to_dict()
        for experiment, group in served.groupby(served["experiment"].fillna("none"))
    }
    versions = {
        str(arm): sorted({str(v) for v in group["model_version"].dropna()})
        for arm, group in served.groupby("arm")
    }
    ok = served.loc[served["status"] == "ok"]
    p99 = {str(arm): _round4(float(group["latency_ms"].quantile(0.99))) for arm, group in ok.groupby("arm")}
    return {
        "requests_by_experiment": dg.MetadataValue.json(by_experiment),
        "model_versions": dg.MetadataValue.json(versions),
        "p99_latency_ms": dg.MetadataValue.json(p99),
    }


def _version(hashes: list[str]) -> str:
    return hashes[0] if len(hashes) == 1 else combine_hashes(hashes)


def build_serving_assets(
    project: Project,
    partitions: dg.PartitionsDefinition,
    log_partitions: dg.PartitionsDefinition | None = None,
) -> list[dg.AssetsDefinition]:
    """prediction_log (partitioned by ``log_partitions``, default ``partitions``), batch_predictions and
    ab_test_report of the project."""
    target = project.spec.target
    key = project.target_entity.join_key
    better_high = target.higher_is_better

    @dg.asset(
        group_name="serving",
        partitions_def=log_partitions or partitions,
        backfill_policy=dg.BackfillPolicy.single_run(),
        deps=["serving_log"],
        code_version="prediction-log-1",
        kinds={"parquet", "pandas"},
        description="Every prediction the serving app logged on the day (all workers), as a warehouse partition.",
    )
    def prediction_log(context: dg.AssetExecutionContext, data: DataDirResource) -> dg.MaterializeResult:
        from mlops_assets.serving.prediction_log import read_day
        from mlops_assets.serving.rollout import RolloutController

        paths = runtime_project(project, data).paths
        history = RolloutController(paths.root).history()
        hashes = []
        for day in context.partition_keys:
            frame = read_day(day, paths.root)
            write_partition(frame, paths.partition_dir("prediction_log", day))
            served = frame.loc[~frame["shadow"]]
            context.add_asset_metadata(
                {
                    "dagster/row_count": len(frame),
                    "requests_by_arm": dg.MetadataValue.json(served["arm"].value_counts().to_dict()),
                    "error_rate": _round4(float((served["status"] != "ok").mean()) if len(served) else 0.0),
                    "shadow_rows": int(frame["shadow"].sum()),
                    **log_day_metadata(served),
                    "rollout_steps": dg.MetadataValue.md(
                        rollout_history_markdown(history.loc[history["at"].dt.strftime("%Y-%m-%d") == day])
                    ),
                },
                partition_key=day,
            )
            hashes.append(frame_hash(frame))
        return dg.MaterializeResult(data_version=dg.DataVersion(_version(hashes)))

    @dg.asset(
        group_name="serving",
        partitions_def=partitions,
        backfill_policy=dg.BackfillPolicy.single_run(),
        deps=["promotion", *project.view_names],
        code_version="batch-predictions-2",
        kinds={"parquet", "mlflow"},
        # each day once its feature views arrived and a champion was promoted (new_data_automation_sensor); a
        # new champion does not re-score past days (batch_scoring_job does, when asked)
        automation_condition=arriving_days(ignore=("promotion",)),
        description="The champion's score for every entity of the monitored population on the day (and the "
        "challenger's in shadow mode), from features as of the day's end, with the model version.",
    )
    def batch_predictions(context: dg.AssetExecutionContext, data: DataDirResource) -> dg.MaterializeResult:
        import pandas as pd

        from mlops_assets.featurestore import FeatureStore
        from mlops_assets.monitoring.daily import current_population
        from mlops_assets.serving.batch import features_as_of, score_entities
        from mlops_assets.serving.models import ModelManager, RegistryModelSource
        from mlops_assets.training.tracking import default_tracking_uri

        current = runtime_project(project, data)
        paths = current.paths
        manager = ModelManager(
            RegistryModelSource(default_tracking_uri(paths.root), model_name=project.model_name)
        )
        manager.refresh()
        if manager.get("champion") is None:
            raise dg.Failure("no champion model to score with", metadata={"errors": str(manager.last_error)})
        features = manager.get("champion").predictor.features
        state = read_state(state_path(paths.root))
        store = FeatureStore(current)
        hashes = []
        for day in context.partition_keys:
            ids = current_population(store, day)
            as_of = datetime.fromisoformat(day).replace(tzinfo=UTC) + timedelta(days=1)
            # the same read as a replay (POST /predict with as_of) of the day's end: the same scores
            frame = features_as_of(store, ids, as_of, features) if ids else pd.DataFrame(columns=[key])
            scored = (
                score_entities(frame, key, manager.models, state, scored_at=as_of) if ids else pd.DataFrame()
            )
            write_partition(scored, paths.partition_dir("batch_predictions", day))
            context.add_asset_metadata(
                {
                    "dagster/row_count": len(scored),
                    "population": len(ids),
                    "model_versions": dg.MetadataValue.json(
                        {a: m.version for a, m in manager.models.items()}
                    ),
                },
                partition_key=day,
            )
            hashes.append(frame_hash(scored) if len(scored) else "empty")
        return dg.MaterializeResult(data_version=dg.DataVersion(_version(hashes)))

    class ABReportConfig(dg.Config):
        """Which experiment to analyse (empty: the one in the rollout state) and the decision thresholds."""

        experiment: str = ""
        minimum_effect: float = 0.02
        alpha: float = 0.05
        max_expected_loss: float = 0.002

    def _all_partitions(table_dir) -> "pd.DataFrame":
        import pandas as pd

        frames = [
            read_partition(d).to_pandas()
            for d in sorted(table_dir.glob("date=*"))
            if read_partition(d) is not None
        ]
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()

    @dg.asset(
        group_name="serving",
        deps=["prediction_log", target.source],
        code_version="ab-test-report-2",
        kinds={"scipy", "statsmodels"},
        description=f"Champion vs challenger on realized {target.column}: z / chi-squared, Bayesian P(B > A), mSPRT "
        "always-valid p-value, required sample size, guardrails, and a decision.",
    )
    def ab_test_report(
        context: dg.AssetExecutionContext, config: ABReportConfig, data: DataDirResource
    ) -> dg.MaterializeResult:
        from mlops_assets.serving import abtest
        from mlops_assets.serving.rollout import RolloutController

        paths = runtime_project(project, data).paths
        experiment = config.experiment or read_state(state_path(paths.root)).experiment
        history = RolloutController(paths.root).history()
        steps = {
            "rollout_steps": dg.MetadataValue.md(
                rollout_history_markdown(history.loc[history["experiment"] == experiment])
            )
        }
        log = _all_partitions(paths.table_dir("prediction_log"))
        labels = _all_partitions(paths.table_dir(target.source))
        if log.empty or labels.empty:
            return dg.MaterializeResult(
                metadata={
                    "experiment": experiment,
                    "decision": "continue",
                    "reason": "no predictions or labels yet",
                    **steps,
                }
            )
        log = log.loc[log["experiment"] == experiment]
        outcomes = abtest.outcomes_from_log(
            log, labels, experiment, key=key, time=project.target_timestamp, outcome=target.column
        )
        if outcomes["arm"].nunique() < 2:
            served = log.loc[~log["shadow"].astype(bool)]
            return dg.MaterializeResult(
                metadata={
                    "experiment": experiment,
                    "decision": "continue",
                    "reason": f"both arms need realized {target.column} labels after their requests "
                    f"({len(outcomes)} realized so far)",
                    "requests_by_arm": dg.MetadataValue.json(served["arm"].value_counts().to_dict()),
                    **steps,
                }
            )
        ab_config = abtest.ABConfig(
            metric=target.column,
            higher_is_better=better_high,
            alpha=config.alpha,
            minimum_effect=config.minimum_effect,
            max_expected_loss=config.max_expected_loss,
        )
        report = abtest.analyze(
            outcomes, ab_config, time_column="labelled_at", guardrails=abtest.guardrail_metrics(log)
        )
        markdown = report.to_markdown()
        write_file_atomic(markdown.encode(), paths.reports / f"ab_test_report_{experiment}.md")
        return dg.MaterializeResult(
            metadata={
                "experiment": experiment,
                "decision": report.decision,
                "reason": report.reason,
                "entities_per_arm": dg.MetadataValue.json({a: int(m["n"]) for a, m in report.arms.items()}),
                "always_valid_p_value": report.sequential.p_value,
                "prob_b_better": report.bayes.prob_b_better,
                "required_n_per_arm": report.required_n_per_arm,
                "report": dg.MetadataValue.md(markdown),
                **steps,
            }
        )

    return [prediction_log, batch_predictions, ab_test_report]
