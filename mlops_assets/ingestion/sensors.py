"""The new-data sensor: a landing file that appears or changes requests that day's ingestion."""

import json

import dagster as dg

from mlops_assets.ingestion.landing import LandingScan, scan_landing
from mlops_assets.ingestion.schema import CONTRACTS
from mlops_assets.partitions import daily_partitions
from mlops_assets.resources import DataDirResource


@dg.sensor(
    name="landing_files_sensor",
    description="Watches data/landing/; requests ingestion of a day when its files' content is new.",
    asset_selection=dg.AssetSelection.assets(*CONTRACTS.keys()),
    minimum_interval_seconds=30,
    default_status=dg.DefaultSensorStatus.RUNNING,
)
def landing_files_sensor(context: dg.SensorEvaluationContext, data: DataDirResource) -> dg.SensorResult:
    cursor = json.loads(context.cursor) if context.cursor else {}
    scan: LandingScan = scan_landing(
        data.paths,
        CONTRACTS.values(),
        file_cache=cursor.get("files", {}),
        requested=cursor.get("requested", {}),
        valid_days=set(daily_partitions.get_partition_keys(current_time=None)),
    )
    run_requests = [
        dg.RunRequest(
            run_key=f"{change.table}:{change.day}:{change.landing_hash[:16]}",
            partition_key=change.day,
            asset_selection=[dg.AssetKey(change.table)],
            tags={"mlops/trigger": "new_landing_data", "mlops/landing_files": ",".join(change.files)[:1000]},
        )
        for change in scan.changes
    ]
    new_cursor = json.dumps({"files": scan.file_cache, "requested": scan.requested}, sort_keys=True)
    if not run_requests:
        return dg.SensorResult(skip_reason=scan.skip_reason(), cursor=new_cursor)
    context.log.info(f"requesting {len(run_requests)} ingestion run(s): {scan.describe_changes()}")
    return dg.SensorResult(run_requests=run_requests, cursor=new_cursor)
