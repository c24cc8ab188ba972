"""Retraining triggers: failed drift checks (c) request retraining_job; new data (b) refreshes features,
training set and the latest drift report through automation conditions."""

import json

import dagster as dg

from mlops_assets.automation import sensor_interval
from mlops_assets.monitoring.assets import DAILY_REFRESH
from mlops_assets.monitoring.checks import DRIFT_ASSET
from mlops_assets.monitoring.daily import ERROR_CHECKS
from mlops_assets.project import Project

RETRAINING_JOB = "retraining_job"
_ACTIVE = [
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
]


def retraining_in_progress(instance: dg.DagsterInstance) -> str | None:
    """The id of a queued or running retraining_job run, if any."""
    runs = instance.get_runs(filters=dg.RunsFilter(job_name=RETRAINING_JOB, statuses=_ACTIVE), limit=1)
    return runs[0].run_id if runs else None


def failed_drift_evaluations(
    instance: dg.DagsterInstance, seen: dict[str, int]
) -> tuple[dict[str, list], dict]:
    """Failed ERROR checks of drift_report newer than the execution ids in ``seen``, by drift_report run.

    Reads each check's execution history (kept in the index database by every event log storage,
    including the run-sharded SQLite one of ``dagster dev``); returns the groups and the new ids seen.
    """
    by_run: dict[str, list] = {}
    seen = dict(seen)
    for name in ERROR_CHECKS:
        key = dg.AssetCheckKey(dg.AssetKey(DRIFT_ASSET), name)
        records = instance.event_log_storage.get_asset_check_execution_history(key, limit=100)
        newest = seen.get(name, 0)
        for record in sorted(records, key=lambda r: r.id):
            if record.id <= seen.get(name, 0):
                continue
            evaluation = record.event.asset_check_evaluation if record.event is not None else None
            if (
                evaluation is None
            ):  # a planned execution (a partitioned run records its evaluation in a new row)
                continue
            newest = record.id
            if not evaluation.passed and evaluation.severity == dg.AssetCheckSeverity.ERROR:
                by_run.setdefault(record.run_id, []).append(evaluation)
        seen[name] = newest
    return by_run, seen


def retraining_request(drift_run_id: str, evaluations: list) -> dg.RunRequest:
    """One retraining run for the failed checks of one drift_report run, keyed by its days and champion."""
    meta = {k: v.value for k, v in evaluations[0].metadata.items()}
    days, champion = meta.get("days", "unknown"), meta.get("champion_version", "none")
    checks = sorted({e.check_name for e in evaluations})
    reason = "; ".join(f"{e.check_name}: {e.description}" for e in evaluations)
    return dg.RunRequest(
        run_key=f"drift:{days}:champion-v{champion}",
        tags={
            "mlops/trigger": "drift",
            "mlops/trigger_reason": f"drift_report {days} failed {', '.join(checks)} (champion v{champion}): "
            f"{reason}"[:1000],
            "mlops/drift_run_id": drift_run_id,
            "mlops/drift_days": str(days),
            "mlops/failed_checks": ",".join(checks),
        },
    )


@dg.sensor(
    name="drift_retraining_sensor",
    job_name=RETRAINING_JOB,
    minimum_interval_seconds=sensor_interval(60),
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Requests retraining_job once per drift_report run whose ERROR checks failed (dataset drift "
    "share, estimated or realized performance drop); the run key is the report's days and the champion judged.",
)
def drift_retraining_sensor(context: dg.SensorEvaluationContext) -> dg.SensorResult:
    seen = json.loads(context.cursor) if context.cursor else {}
    by_run, now_seen = failed_drift_evaluations(context.instance, seen)
    cursor = json.dumps(now_seen, sort_keys=True)
    if not by_run:
        return dg.SensorResult(
            skip_reason="no failed ERROR check on drift_report since the last evaluation", cursor=cursor
        )
    running = retraining_in_progress(context.instance)
    if running is not None:
        context.log.info(
            f"{len(by_run)} failed drift report(s) covered by retraining run {running}, in progress"
        )
        return dg.SensorResult(
            skip_reason=f"retraining run {running} is already queued or running", cursor=cursor
        )
    requests = [retraining_request(run_id, evaluations) for run_id, evaluations in by_run.items()]
    for request in requests:
        context.log.info(f"requesting {RETRAINING_JOB}: {request.tags['mlops/trigger_reason']}")
    return dg.SensorResult(run_requests=requests, cursor=cursor)


def build_new_data_sensor(project: Project) -> dg.AutomationConditionSensorDefinition:
    """Trigger (b): new raw partitions refresh the feature views, the training set and the latest drift report."""
    target = dg.AssetSelection.assets(*project.view_names, "training_set", DRIFT_ASSET)
    return dg.AutomationConditionSensorDefinition(
        "new_data_automation_sensor",
        target=target,
        default_condition=DAILY_REFRESH,
        use_user_code_server=True,
        default_status=dg.DefaultSensorStatus.RUNNING,
        minimum_interval_seconds=sensor_interval(30),
        run_tags={
            "mlops/trigger": "new_data",
            "mlops/trigger_reason": "new raw partitions: the latest feature views, the training set and the "
            "drift report refresh when an upstream partition they read was updated",
        },
        description="New ingested partitions refresh the latest day's feature views, the training set and the "
        "latest drift report (automation conditions; the online store has its own sensor).",
    )
