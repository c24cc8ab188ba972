"""Monitoring domain: the daily drift report with its checks, and the three retraining triggers."""

import dagster as dg

from mlops_assets.monitoring.assets import monitoring_assets
from mlops_assets.monitoring.schedules import weekly_retraining_schedule
from mlops_assets.monitoring.sensors import drift_retraining_sensor, new_data_automation_sensor

defs = dg.Definitions(
    assets=monitoring_assets,
    sensors=[drift_retraining_sensor, new_data_automation_sensor],
    schedules=[weekly_retraining_schedule],
)
