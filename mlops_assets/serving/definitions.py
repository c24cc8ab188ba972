"""Serving domain: prediction log, batch predictions, A/B report, the rollout state and its sensor."""

import dagster as dg

from mlops_assets.project import Project
from mlops_assets.serving.assets import build_serving_assets, rollout_state
from mlops_assets.serving.sensors import build_canary_sensor


def build_defs(project: Project, partitions: dg.PartitionsDefinition) -> dg.Definitions:
    if project.spec.target is None or project.spec.model is None or not project.view_names:
        return dg.Definitions()
    return dg.Definitions(
        assets=[*build_serving_assets(project, partitions), rollout_state],
        sensors=[build_canary_sensor(project)],
    )
