"""The new-data sensor: a landing file that appears or changes requests that day's ingestion, and a day whose
disk and event log disagree is ingested again."""

import hashlib
import json

import dagster as dg

from mlops_assets.agreement import in_progress_runs, source_agreement
from mlops_assets.automation import sensor_interval
from mlops_assets.dayranges import follows, range_tags, run_days_text
from mlops_assets.project import Project
from mlops_assets.resources import DataDirResource

LANDING_SENSOR = "landing_files_sensor"
INGESTION_JOB = "ingestion_job"  # the job its runs are of (a subset: the changed source), named in the UI


#: Most days one ingestion run covers: a backlog of landed days is ingested a month per run, not a run per day.
MAX_DAYS_PER_RUN = 31


def landing_requests(by_day: dict[str, list]) -> list[dg.RunRequest]:
    """One run per day with changed files, of the sources whose files changed that day; consecutive days whose
    changed sources are the same share one run over their range (at most ``MAX_DAYS_PER_RUN`` days)."""
    groups: list[tuple[tuple[str, ...], list[str]]] = []
    for day, changes in sorted(by_day.items()):
        tables = tuple(sorted({c.table for c in changes}))
        last = groups[-1] if groups else None
        if last and last[0] == tables and len(last[1]) < MAX_DAYS_PER_RUN and follows(day, last[1][-1]):
            last[1].append(day)
        else:
            groups.append((tables, [day]))
    requests = []
    for tables, days in groups:
        changes = [c for d in days for c in sorted(by_day[d], key=lambda c: c.table)]
        content = ",".join(f"{c.table}:{c.landing_hash[:16]}" for c in changes)
        if len(days) == 1:
            key, where = f"{days[0]}:{content}", {"partition_key": days[0]}
        else:
            digest = hashlib.sha256(f"{days}:{content}".encode()).hexdigest()[:32]
            key, where = f"{days[0]}..{days[-1]}:{digest}", {}
        requests.append(
            dg.RunRequest(
                run_key=key,
                job_name=INGESTION_JOB,
                asset_selection=[dg.AssetKey(t) for t in tables],
                tags={
                    **(range_tags(days[0], days[-1]) if len(days) > 1 else {}),
                    "mlops/trigger": "new_landing_data",
                    "mlops/landing_files": ",".join(f for c in changes for f in c.files)[:1000],
                },
                **where,
            )
        )
    return requests


def reconcile_requests(
    instance: dg.DagsterInstance,
    paths,  # noqa: ANN001 - DataPaths
    contracts,  # noqa: ANN001 - the project's contracts
    skip: set[tuple[str, str]],
    valid_days: set[str],
    verified: dict[str, list] | None = None,
) -> tuple[list[dg.RunRequest], list[str]]:
    """One run per source-day whose manifest or partition disagrees with the event log, and notes.

    Days written by a run still in progress, and days already requested for new landing files
    (``skip``), wait; a run key per disagreement keeps a day from being requested twice for it.
    """
    running = in_progress_runs(instance)
    requests, waiting, unverified = [], [], 0
    for contract in contracts:
        report = source_agreement(instance, paths, contract.name, verified=verified)
        unverified += len(report.unverified)
        for d in report.disagreements:
            if (d.asset, d.day) in skip or d.day not in valid_days:
                continue
            if d.run_id in running:
                waiting.append(d)
                continue
            state = hashlib.sha256(d.detail.encode()).hexdigest()[:16]
            requests.append(
                dg.RunRequest(
                    run_key=f"reconcile:{d.asset}:{d.day}:{d.kind}:{state}",
                    job_name=INGESTION_JOB,
                    partition_key=d.day,
                    asset_selection=[dg.AssetKey(d.asset)],
                    tags={"mlops/trigger": "reconcile", "mlops/disagreement": d.kind},
                )
            )
    notes = []
    if requests:
        shown = ", ".join(f"{r.asset_selection[0].to_user_string()} {r.partition_key}" for r in requests[:10])
        notes.append(f"re-ingesting {len(requests)} day(s) whose disk and event log disagree: {shown}")
    if waiting:
        notes.append(
            f"{len(waiting)} disagreeing day(s) written by runs still in progress, not requested while they run "
            f"({', '.join(sorted({str(d.run_id) for d in waiting})[:3])}); `mlops reconcile` lists them"
        )
    if unverified:
        notes.append(
            f"{unverified} ingested day(s) written by runs this instance never recorded (not judged)"
        )
    return requests, notes


def build_landing_sensor(project: Project, partitions: dg.PartitionsDefinition) -> dg.SensorDefinition:
    """Watches every source's landing folder; requests one ingestion run per day with changed files, of the sources
    whose files changed that day."""
    contracts = list(project.contracts.values())

    @dg.sensor(
        name=LANDING_SENSOR,
        description="Watches the landing folders; requests ingestion of a day when its files' content is new.",
        # runs of the named job, each a subset (the changed sources of one day): the UI lists them as ingestion_job, not as
        # the implicit __ASSET_JOB an asset_selection target launches
        job_name=INGESTION_JOB,
        minimum_interval_seconds=sensor_interval(30),
        default_status=dg.DefaultSensorStatus.RUNNING,
    )
    def landing_files_sensor(context: dg.SensorEvaluationContext, data: DataDirResource) -> dg.SensorResult:
        cursor = json.loads(context.cursor) if context.cursor else {}
        valid_days = set(partitions.get_partition_keys())
        from mlops_assets.ingestion.landing import scan_landing

        scan = scan_landing(
            data.paths,
            contracts,
            file_cache=cursor.get("files", {}),
            requested=cursor.get("requested", {}),
            valid_days=valid_days,
        )
        by_day: dict[str, list] = {}
        for change in scan.changes:
            by_day.setdefault(change.day, []).append(change)
        run_requests = landing_requests(by_day)
        changed = {(c.table, c.day) for c in scan.changes}
        verified = cursor.get("verified", {})
        repairs, notes = reconcile_requests(
            context.instance, data.paths, contracts, changed, valid_days, verified
        )
        new_cursor = json.dumps(
            {"files": scan.file_cache, "requested": scan.requested, "verified": verified}, sort_keys=True
        )
        if not run_requests and not repairs:
            return dg.SensorResult(skip_reason="; ".join([scan.skip_reason(), *notes]), cursor=new_cursor)
        if run_requests:
            runs = "; ".join(
                f"{', '.join(k.to_user_string() for k in r.asset_selection)} {run_days_text(r.tags) or r.partition_key}"
                for r in run_requests[:20]
            )
            context.log.info(f"requesting {len(run_requests)} ingestion run(s): {runs}")
        for note in notes:
            context.log.info(note)
        return dg.SensorResult(run_requests=run_requests + repairs, cursor=new_cursor)

    return landing_files_sensor
