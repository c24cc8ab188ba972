"""Serving domain assets: the daily prediction log, daily batch predictions, the A/B report, the rollout state."""

from datetime import UTC, datetime, timedelta

import dagster as dg
import pandas as pd

from mlops_assets.partitions import daily_partitions
from mlops_assets.resources import DataDirResource
from mlops_assets.serving import abtest
from mlops_assets.serving.batch import score_customers
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


@dg.asset(
    group_name="serving",
    partitions_def=daily_partitions,
    backfill_policy=dg.BackfillPolicy.single_run(),
    code_version="prediction-log-1",
    kinds={"parquet", "pandas"},
    description="Every prediction the serving app logged on the day (all workers), as a warehouse partition.",
)
def prediction_log(context: dg.AssetExecutionContext, data: DataDirResource) -> dg.MaterializeResult:
    hashes = []
    for day in context.partition_keys:
        frame = read_day(day, data.paths.root)
        write_partition(frame, data.paths.partition_dir("prediction_log", day))
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
    partitions_def=daily_partitions,
    backfill_policy=dg.BackfillPolicy.single_run(),
    deps=["raw_events"],
    code_version="batch-predictions-1",
    kinds={"parquet", "mlflow"},
    description="The champion's score for every customer active on the day (and the challenger's in shadow "
    "mode), from point-in-time features as of the day's end, with the model version.",
)
def batch_predictions(context: dg.AssetExecutionContext, data: DataDirResource) -> dg.MaterializeResult:
    from mlops_assets.featurestore import FeatureStore
    from mlops_assets.serving.models import ModelManager, RegistryModelSource
    from mlops_assets.training.tracking import default_tracking_uri

    paths = data.paths
    manager = ModelManager(RegistryModelSource(default_tracking_uri(paths.root)))
    manager.refresh()
    if manager.get("champion") is None:
        raise dg.Failure("no champion model to score with", metadata={"errors": str(manager.last_error)})
    features = manager.get("champion").predictor.features
    state = read_state(state_path(paths.root))
    store = FeatureStore(paths.root)
    hashes = []
    for day in context.partition_keys:
        events = read_partition(paths.partition_dir("raw_events", day))
        ids = sorted(set(events.column("customer_id").to_pylist())) if events is not None else []
        as_of = datetime.fromisoformat(day).replace(tzinfo=UTC) + timedelta(days=1)
        entity = pd.DataFrame({"customer_id": ids, "event_timestamp": pd.Timestamp(as_of)})
        frame = (
            store.get_historical_features(entity, features) if ids else pd.DataFrame(columns=["customer_id"])
        )
        scored = score_customers(frame, manager.models, state, scored_at=as_of) if ids else pd.DataFrame()
        write_partition(scored, paths.partition_dir("batch_predictions", day))
        context.add_asset_metadata(
            {
                "dagster/row_count": len(scored),
                "active_customers": len(ids),
                "model_versions": dg.MetadataValue.json({a: m.version for a, m in manager.models.items()}),
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
    deps=["prediction_log", "raw_labels"],
    code_version="ab-test-report-1",
    kinds={"scipy", "statsmodels"},
    description="Champion vs challenger on realized churn labels: z / chi-squared, Bayesian P(B > A), mSPRT "
    "always-valid p-value, required sample size, guardrails, and a decision.",
)
def ab_test_report(
    context: dg.AssetExecutionContext, config: ABReportConfig, data: DataDirResource
) -> dg.MaterializeResult:
    paths = data.paths
    experiment = config.experiment or read_state(state_path(paths.root)).experiment
    log = _all_partitions(paths.table_dir("prediction_log"))
    labels = _all_partitions(paths.table_dir("raw_labels"))
    if log.empty or labels.empty:
        return dg.MaterializeResult(
            metadata={"decision": "continue", "reason": "no predictions or labels yet"}
        )
    log = log.loc[log["experiment"] == experiment]
    outcomes = abtest.outcomes_from_log(log, labels, experiment)
    if outcomes["arm"].nunique() < 2:
        return dg.MaterializeResult(
            metadata={
                "experiment": experiment,
                "decision": "continue",
                "reason": "both arms need realized labels",
            }
        )
    ab_config = abtest.ABConfig(
        alpha=config.alpha, minimum_effect=config.minimum_effect, max_expected_loss=config.max_expected_loss
    )
    report = abtest.analyze(
        outcomes, ab_config, time_column="label_timestamp", guardrails=abtest.guardrail_metrics(log)
    )
    markdown = report.to_markdown()
    write_file_atomic(markdown.encode(), paths.reports / f"ab_test_report_{experiment}.md")
    return dg.MaterializeResult(
        metadata={
            "experiment": experiment,
            "decision": report.decision,
            "reason": report.reason,
            "customers_per_arm": dg.MetadataValue.json({a: int(m["n"]) for a, m in report.arms.items()}),
            "always_valid_p_value": report.sequential.p_value,
            "prob_b_better": report.bayes.prob_b_better,
            "required_n_per_arm": report.required_n_per_arm,
            "report": dg.MetadataValue.md(markdown),
        }
    )


serving_assets = [prediction_log, batch_predictions, ab_test_report]
