"""Serving domain: the serving app's log, the prediction log, batch predictions, the A/B report, the rollout state,
their sensors and jobs."""

import dagster as dg

from mlops_assets.project import Project
from mlops_assets.serving.assets import (
    PREDICTION_LOG_DAYS,
    build_rollout_state_asset,
    build_serving_assets,
    serving_log,
)
from mlops_assets.serving.sensors import SERVING_REPORT_JOB, build_canary_sensor, build_serving_log_sensor

BATCH_SCORING_JOB = "batch_scoring_job"


def build_defs(project: Project, partitions: dg.PartitionsDefinition) -> dg.Definitions:
    if project.spec.target is None or project.spec.model is None or not project.view_names:
        return dg.Definitions()
    log_partitions = dg.DynamicPartitionsDefinition(name=PREDICTION_LOG_DAYS)
    jobs = [
        dg.define_asset_job(
            BATCH_SCORING_JOB,
            selection=dg.AssetSelection.assets("batch_predictions"),
            partitions_def=partitions,
            description="Score the monitored population of each day with the champion (features as of the day's end).",
        ),
        dg.define_asset_job(
            SERVING_REPORT_JOB,
            selection=dg.AssetSelection.assets("prediction_log", "ab_test_report"),
            partitions_def=log_partitions,
            description="Store a day of the serving app's prediction log and analyse the experiment in force.",
        ),
    ]
    return dg.Definitions(
        assets=[
            *build_serving_assets(project, partitions, log_partitions),
            build_rollout_state_asset(project),
            serving_log,
        ],
        sensors=[build_canary_sensor(project), build_serving_log_sensor(project, log_partitions)],
        jobs=jobs,
    )
