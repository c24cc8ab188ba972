"""Retraining triggers: failed drift checks (c) request retraining_job; new data (b) refreshes features,
training set and the latest drift report through automation conditions."""

import json

import dagster as dg

from mlops_assets.automation import sensor_interval
from mlops_assets.monitoring.assets import DAILY_REFRESH
from mlops_assets.monitoring.checks import DRIFT_ASSET
from mlops_assets.monitoring.policy import ERROR_CHECKS
from mlops_assets.project import Project

RETRAINING_JOB = "retraining_job"
BATCH_PREDICTIONS = "batch_predictions"  # the serving domain's daily scores of the champion
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


def drift_evaluations(instance: dg.DagsterInstance, seen: dict[str, int]) -> tuple[dict[str, list], dict]:
    """ERROR check evaluations of drift_report (passed or failed) newer than the execution ids in ``seen``, by
    drift_report run.

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
            if evaluation.severity == dg.AssetCheckSeverity.ERROR:
                by_run.setdefault(record.run_id, []).append(evaluation)
        seen[name] = newest
    return by_run, seen


def _value(evaluation, key, default=None):
    entry = evaluation.metadata.get(key)
    return default if entry is None else entry.value


def judged_days(by_run: dict[str, list]) -> tuple[list[tuple[str, str, str, list, list[str]]], list[str]]:
    """(day, champion version, drift_report run id, failed evaluations, elevated checks) of every day after its
    champion's reference period that failed an ERROR check or had one elevated, oldest first; and the days that
    failed one but lie inside or before that period (reported only: see :func:`episodes.acts_on`)."""
    from mlops_assets.monitoring.episodes import acts_on

    days: dict[tuple[str, str], tuple[str, list, list]] = {}
    history: set[str] = set()
    for run_id, evaluations in by_run.items():
        for e in evaluations:
            champion = str(_value(e, "champion_version", "none"))
            reference_end = _value(e, "reference_end")
            if not e.passed:
                failing = _value(e, "failing_days") or [str(_value(e, "days", "unknown"))]
                for day in failing:
                    if acts_on(day, reference_end):
                        days.setdefault((day, champion), (run_id, [], []))[1].append(e)
                    else:
                        history.add(day)
            for day in _value(e, "elevated_days") or []:
                if acts_on(day, reference_end):
                    days.setdefault((day, champion), (run_id, [], []))[2].append(e.check_name)
    judged = sorted(
        (day, champion, run_id, failed, sorted(elevated))
        for (day, champion), (run_id, failed, elevated) in days.items()
    )
    return judged, sorted(history)


def retraining_request(episode, drift_run_id: str, evaluations: list) -> dg.RunRequest:
    """One retraining run for a new alarm episode (its first day's failed checks), keyed by the episode."""
    checks = sorted({e.check_name for e in evaluations})
    reason = "; ".join(f"{e.check_name}: {e.description}" for e in evaluations)
    return dg.RunRequest(
        run_key=episode.key,
        tags={
            "mlops/trigger": "drift",
            "mlops/trigger_reason": f"drift_report {episode.start} failed {', '.join(checks)} (champion "
            f"v{episode.champion}), a new alarm episode: {reason}"[:1000],
            "mlops/drift_run_id": drift_run_id,
            "mlops/drift_days": episode.start,
            "mlops/drift_episode": episode.key,
            "mlops/failed_checks": ",".join(checks),
        },
    )


@dg.sensor(
    name="drift_retraining_sensor",
    job_name=RETRAINING_JOB,
    minimum_interval_seconds=sensor_interval(60),
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Requests retraining_job once per alarm episode of the champion: a day on which a calibrated "
    "ERROR check of drift_report failed (drift share or multivariate error beyond its band, estimated or realized "
    "performance drop) starts an episode; alarm days, and days on which a check that alarmed in it is elevated (its "
    "statistic at least half-way to its alarm edge), within quiet_days of the previous one belong to it. Only days "
    "after the champion's reference period count: an alarm on a day it was trained on, or an older one, is reported "
    "only. The reason is in the run's tags.",
)
def drift_retraining_sensor(context: dg.SensorEvaluationContext) -> dg.SensorResult:
    from mlops_assets.monitoring.episodes import EpisodeTracker

    state = json.loads(context.cursor) if context.cursor else {}
    if "seen" not in state:  # a cursor of the per-run sensor: check ids only
        state = {"seen": state, "episodes": {}}
    by_run, now_seen = drift_evaluations(context.instance, state["seen"])
    tracker = EpisodeTracker(state["episodes"])
    new = []
    failed_any = False
    judged, history = judged_days(by_run)
    for day, champion, run_id, evaluations, elevated in judged:
        failed_any = failed_any or bool(evaluations)
        episode = tracker.record(champion, day, [e.check_name for e in evaluations], elevated)
        if episode is not None:
            new.append(retraining_request(episode, run_id, evaluations))
    cursor = json.dumps({"seen": now_seen, "episodes": tracker.state}, sort_keys=True)
    if not failed_any:
        reason = "no failed ERROR check on drift_report since the last evaluation"
        if history:
            shown = history[0] if len(history) == 1 else f"{history[0]}..{history[-1]} ({len(history)} days)"
            reason = (
                f"failed ERROR checks only on days inside or before the champion's reference period ({shown}): "
                "reported, no retraining (the champion was trained on those days or later ones)"
            )
        return dg.SensorResult(skip_reason=reason, cursor=cursor)
    if not new:
        return dg.SensorResult(
            skip_reason="the failed checks belong to an alarm episode already handled", cursor=cursor
        )
    running = retraining_in_progress(context.instance)
    if running is not None:
        context.log.info(f"{len(new)} new alarm episode(s) covered by retraining run {running}, in progress")
        return dg.SensorResult(
            skip_reason=f"retraining run {running} is already queued or running", cursor=cursor
        )
    for request in new:
        context.log.info(f"requesting {RETRAINING_JOB}: {request.tags['mlops/trigger_reason']}")
    return dg.SensorResult(run_requests=new, cursor=cursor)


def build_new_data_sensor(project: Project) -> dg.AutomationConditionSensorDefinition:
    """Trigger (b): new raw partitions refresh the feature views, the training set, the drift reports and the batch
    predictions (each asset's own automation condition; DAILY_REFRESH for one without)."""
    target = dg.AssetSelection.assets(*project.view_names, "training_set", DRIFT_ASSET, BATCH_PREDICTIONS)
    return dg.AutomationConditionSensorDefinition(
        "new_data_automation_sensor",
        target=target,
        default_condition=DAILY_REFRESH,
        use_user_code_server=True,
        default_status=dg.DefaultSensorStatus.RUNNING,
        minimum_interval_seconds=sensor_interval(30),
        run_tags={
            "mlops/trigger": "new_data",
            "mlops/trigger_reason": "new raw partitions: the feature views, the training set, the drift reports "
            "and the batch predictions refresh when an upstream partition they read was updated",
        },
        description="New ingested partitions refresh the feature views, the training set, the drift reports and "
        "the champion's batch predictions of each arriving day (automation conditions; the online store has its "
        "own sensor).",
    )
