"""Ingestion domain: raw tables, their gates, the new-data sensor and the backfill job."""

import dagster as dg

from mlops_assets.ingestion.assets import ingestion_assets
from mlops_assets.ingestion.sensors import landing_files_sensor
from mlops_assets.partitions import daily_partitions

ingestion_job = dg.define_asset_job(
    "ingestion_job",
    selection=dg.AssetSelection.groups("ingestion"),
    partitions_def=daily_partitions,
    description="Validate and store the day's landing files of every raw table.",
)

defs = dg.Definitions(assets=ingestion_assets, sensors=[landing_files_sensor], jobs=[ingestion_job])
