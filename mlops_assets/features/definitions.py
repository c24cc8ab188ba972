"""Feature-store domain: feature-view assets, the training set, the online store and its automation."""

import dagster as dg

from mlops_assets.automation import sensor_interval
from mlops_assets.features.assets import build_feature_assets
from mlops_assets.project import Project

FEATURE_VIEWS_JOB = "feature_views_job"


def build_defs(project: Project, partitions: dg.PartitionsDefinition) -> dg.Definitions:
    assets = build_feature_assets(project, partitions)
    sensors, jobs = [], []
    if project.view_names:
        sensors.append(
            dg.AutomationConditionSensorDefinition(
                "features_automation_sensor",
                target=dg.AssetSelection.assets("online_features"),
                default_status=dg.DefaultSensorStatus.RUNNING,
                minimum_interval_seconds=sensor_interval(30),
                description="Refreshes the online store when new feature partitions land.",
                run_tags={
                    "mlops/trigger": "feature_update",
                    "mlops/trigger_reason": "new feature-view partitions: the online store refreshes",
                },
            )
        )
        jobs.append(
            dg.define_asset_job(
                FEATURE_VIEWS_JOB,
                selection=dg.AssetSelection.assets(*project.view_names),
                partitions_def=partitions,
                description="Compute the day's partition of every feature view (after the day's ingestion).",
            )
        )
    return dg.Definitions(assets=assets, sensors=sensors, jobs=jobs)
