"""Serving domain assets: the daily prediction log, daily batch predictions, the A/B report, the rollout state."""

from datetime import UTC, datetime, timedelta

import dagster as dg
import pandas as pd

from mlops_assets.project import Project
from mlops_assets.resources import DataDirResource, runtime_project
from mlops_assets.serving import abtest
from mlops_assets.serving.batch import features_as_of, score_entities
from mlops_assets.serving.prediction_log import read_day
from mlops_assets.serving.routing import read_state, state_path
from mlops_assets.storage import (
    combine_hashes,
    frame_hash,
    read_partition,
    write_file_atomic,
    write_partition,
)

#: The rollout state file, shown as an external asset; the rollout sensor records observations of it.
rollout_state = dg.AssetSpec(
    "rollout_state",
    group_name="serving",
    kinds={"json"},
    description="Routing mode, challenger share and experiment the serving app routes by "
    "(data/serving/rollout_state.json); every rollout transition is observed here with its reason.",
)


def _version(hashes: list[str]) -> str:
    return hashes[0] if len(hashes) == 1 else combine_hashes(hashes)


def build_serving_assets(project: Project, partitions: dg.PartitionsDefinition) -> list[dg.AssetsDefinition]:
    """prediction_log, batch_predictions and ab_test_report of the project."""
    target = project.spec.target
    key = project.target_entity.join_key
    better_high = target.higher_is_better

    @dg.asset(
        group_name="serving",
        partitions_def=partitions,
        backfill_policy=dg.BackfillPolicy.single_run(),
        code_version="prediction-log-1",
        kinds={"parquet", "pandas"},
        description="Every prediction the serving app logged on the day (all workers), as a warehouse partition.",
    )
    def prediction_log(context: dg.AssetExecutionContext, data: DataDirResource) -> dg.MaterializeResult:
        paths = runtime_project(project, data).paths
        hashes = []
        for day in context.partition_keys:
            frame = read_day(day, paths.root)
            write_partition(frame, paths.partition_dir("prediction_log", day))
            served = frame.loc[~frame["shadow"]]
            context.add_asset_metadata(
                {
                    "dagster/row_count": len(frame),
                    "requests_by_arm": dg.MetadataValue.json(served["arm"].value_counts().to_dict()),
                    "error_rate": float((served["status"] != "ok").mean()) if len(served) else 0.0,
                    "shadow_rows": int(frame["shadow"].sum()),
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
        description="The champion's score for every entity of the monitored population on the day (and the "
        "challenger's in shadow mode), from features as of the day's end, with the model version.",
    )
    def batch_predictions(context: dg.AssetExecutionContext, data: DataDirResource) -> dg.MaterializeResult:
        from mlops_assets.featurestore import FeatureStore
        from mlops_assets.monitoring.daily import current_population
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

    def _all_partitions(table_dir) -> pd.DataFrame:
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
        paths = runtime_project(project, data).paths
        experiment = config.experiment or read_state(state_path(paths.root)).experiment
        log = _all_partitions(paths.table_dir("prediction_log"))
        labels = _all_partitions(paths.table_dir(target.source))
        if log.empty or labels.empty:
            return dg.MaterializeResult(
                metadata={"decision": "continue", "reason": "no predictions or labels yet"}
            )
        log = log.loc[log["experiment"] == experiment]
        outcomes = abtest.outcomes_from_log(
            log, labels, experiment, key=key, time=project.target_timestamp, outcome=target.column
        )
        if outcomes["arm"].nunique() < 2:
            return dg.MaterializeResult(
                metadata={
                    "experiment": experiment,
                    "decision": "continue",
                    "reason": "both arms need realized labels",
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
            }
        )

    return [prediction_log, batch_predictions, ab_test_report]
