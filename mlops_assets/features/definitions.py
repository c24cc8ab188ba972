"""Feature-store domain: feature-view assets, the training set, the online store and its automation."""

import dagster as dg

from mlops_assets.features.assets import feature_assets, online_features

features_automation_sensor = dg.AutomationConditionSensorDefinition(
    "features_automation_sensor",
    target=dg.AssetSelection.assets(online_features),
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Refreshes the online store when new feature partitions land.",
)

defs = dg.Definitions(assets=feature_assets, sensors=[features_automation_sensor])
