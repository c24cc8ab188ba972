"""The new-data sensor: a landing file that appears or changes requests that day's ingestion."""

import json

import dagster as dg

from mlops_assets.automation import sensor_interval
from mlops_assets.ingestion.landing import LandingScan, scan_landing
from mlops_assets.project import Project
from mlops_assets.resources import DataDirResource

LANDING_SENSOR = "landing_files_sensor"


def build_landing_sensor(project: Project, partitions: dg.PartitionsDefinition) -> dg.SensorDefinition:
    """Watches every source's landing folder; requests one ingestion run per changed source-day."""
    contracts = list(project.contracts.values())

    @dg.sensor(
        name=LANDING_SENSOR,
        description="Watches the landing folders; requests ingestion of a day when its files' content is new.",
        asset_selection=dg.AssetSelection.assets(*[c.name for c in contracts]),
        minimum_interval_seconds=sensor_interval(30),
        default_status=dg.DefaultSensorStatus.RUNNING,
    )
    def landing_files_sensor(context: dg.SensorEvaluationContext, data: DataDirResource) -> dg.SensorResult:
        cursor = json.loads(context.cursor) if context.cursor else {}
        scan: LandingScan = scan_landing(
            data.paths,
            contracts,
            file_cache=cursor.get("files", {}),
            requested=cursor.get("requested", {}),
            valid_days=set(partitions.get_partition_keys()),
        )
        run_requests = [
            dg.RunRequest(
                run_key=f"{change.table}:{change.day}:{change.landing_hash[:16]}",
                partition_key=change.day,
                asset_selection=[dg.AssetKey(change.table)],
                tags={
                    "mlops/trigger": "new_landing_data",
                    "mlops/landing_files": ",".join(change.files)[:1000],
                },
            )
            for change in scan.changes
        ]
        new_cursor = json.dumps({"files": scan.file_cache, "requested": scan.requested}, sort_keys=True)
        if not run_requests:
            return dg.SensorResult(skip_reason=scan.skip_reason(), cursor=new_cursor)
        context.log.info(f"requesting {len(run_requests)} ingestion run(s): {scan.describe_changes()}")
        return dg.SensorResult(run_requests=run_requests, cursor=new_cursor)

    return landing_files_sensor
