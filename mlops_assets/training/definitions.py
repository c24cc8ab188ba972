"""Training domain: candidate model, gated evaluation report, promotion, rollback, and the gate alerts."""

import dagster as dg

from mlops_assets.resources import DataDirResource
from mlops_assets.training.assets import training_assets
from mlops_assets.training.jobs import retraining_job, rollback_job
from mlops_assets.training.resources import MlflowResource
from mlops_assets.training.sensors import quality_gate_alert_sensor

defs = dg.Definitions(
    assets=training_assets,
    jobs=[retraining_job, rollback_job],
    sensors=[quality_gate_alert_sensor],
    resources={"mlflow": MlflowResource(data=DataDirResource())},
)
