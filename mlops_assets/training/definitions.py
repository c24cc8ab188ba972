"""Training domain: candidate model, gated evaluation report, promotion, rollback, and the gate alerts."""

import dagster as dg

from mlops_assets.project import Project
from mlops_assets.training.assets import build_training_assets
from mlops_assets.training.jobs import build_retraining_job, rollback_job
from mlops_assets.training.sensors import build_first_champion_sensor, quality_gate_alert_sensor


def build_defs(project: Project) -> dg.Definitions:
    if project.spec.target is None or project.spec.model is None:
        return dg.Definitions()
    return dg.Definitions(
        assets=build_training_assets(project),
        jobs=[build_retraining_job(rollout=bool(project.view_names)), rollback_job],
        sensors=[
            quality_gate_alert_sensor,
            build_first_champion_sensor(project.spec.model.first_champion_min_rows),
        ],
    )
