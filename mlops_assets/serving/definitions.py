"""Serving domain: prediction log, batch predictions, A/B report, the rollout state and its sensor."""

import dagster as dg

from mlops_assets.serving.assets import rollout_state, serving_assets
from mlops_assets.serving.sensors import canary_rollout_sensor

defs = dg.Definitions(assets=[*serving_assets, rollout_state], sensors=[canary_rollout_sensor])
