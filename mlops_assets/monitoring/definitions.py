"""Monitoring domain: the daily drift report with its checks, and the three retraining triggers."""

import dagster as dg

from mlops_assets.monitoring.assets import build_drift_asset
from mlops_assets.monitoring.checks import DRIFT_ASSET
from mlops_assets.monitoring.schedules import build_retraining_schedule
from mlops_assets.monitoring.sensors import build_new_data_sensor, drift_retraining_sensor
from mlops_assets.project import Project


def build_defs(project: Project, partitions: dg.PartitionsDefinition) -> dg.Definitions:
    if project.spec.target is None or project.spec.model is None or not project.view_names:
        return dg.Definitions()
    return dg.Definitions(
        assets=[build_drift_asset(project, partitions)],
        sensors=[drift_retraining_sensor, build_new_data_sensor(project)],
        schedules=[build_retraining_schedule()],
        jobs=[
            dg.define_asset_job(
                "drift_report_job",
                selection=dg.AssetSelection.assets(DRIFT_ASSET),
                partitions_def=partitions,
                description="Judge the champion on each day's features and scores (the drift report and its checks).",
            )
        ],
    )
