"""The code location: merges each domain's assets, checks, sensors, jobs and resources."""

import dagster as dg

from mlops_assets.executors import executor_from_env
from mlops_assets.features import definitions as features
from mlops_assets.ingestion import definitions as ingestion
from mlops_assets.monitoring import definitions as monitoring
from mlops_assets.resources import DataDirResource
from mlops_assets.serving import definitions as serving
from mlops_assets.training import definitions as training

defs = dg.Definitions.merge(
    ingestion.defs,
    features.defs,
    monitoring.defs,
    serving.defs,
    training.defs,
    dg.Definitions(resources={"data": DataDirResource()}, executor=executor_from_env()),
)
