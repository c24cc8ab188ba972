"""Ingestion domain: one asset per source, their gates, the new-data sensor and the backfill job."""

import dagster as dg

from mlops_assets.ingestion.assets import build_ingestion_assets
from mlops_assets.ingestion.sensors import INGESTION_JOB, build_landing_sensor
from mlops_assets.project import Project


def build_defs(project: Project, partitions: dg.PartitionsDefinition) -> dg.Definitions:
    job = dg.define_asset_job(
        INGESTION_JOB,
        selection=dg.AssetSelection.groups("ingestion"),
        partitions_def=partitions,
        description="Validate and store the day's landing files of every source.",
    )
    return dg.Definitions(
        assets=build_ingestion_assets(project, partitions),
        sensors=[build_landing_sensor(project, partitions)],
        jobs=[job],
    )
