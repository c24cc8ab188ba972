"""The code location: merges each domain's assets, checks, sensors, jobs and resources."""

import dagster as dg

from mlops_assets.ingestion import definitions as ingestion
from mlops_assets.resources import DataDirResource

defs = dg.Definitions.merge(
    ingestion.defs,
    dg.Definitions(resources={"data": DataDirResource()}),
)
