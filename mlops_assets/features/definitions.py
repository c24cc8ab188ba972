"""Feature-store domain: feature-view assets, the training set, the online store and its automation."""

import dagster as dg

from mlops_assets.features.assets import feature_assets, feature_view_assets, online_features
from mlops_assets.partitions import daily_partitions

features_automation_sensor = dg.AutomationConditionSensorDefinition(
    "features_automation_sensor",
    target=dg.AssetSelection.assets(online_features),
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Refreshes the online store when new feature partitions land.",
)

feature_views_job = dg.define_asset_job(
    "feature_views_job",
    selection=dg.AssetSelection.assets(*feature_view_assets),
    partitions_def=daily_partitions,
    description="Compute the day's partition of every feature view (after the day's ingestion).",
)

defs = dg.Definitions(assets=feature_assets, sensors=[features_automation_sensor], jobs=[feature_views_job])
