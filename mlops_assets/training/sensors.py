"""The alert sensor: a failed run with failed quality gates (or a failed training job) raises an alert."""

from types import SimpleNamespace

import dagster as dg

from mlops_assets.automation import sensor_interval
from mlops_assets.resources import DataDirResource
from mlops_assets.training.alerts import Alert, default_alert_sink, gate_failure_alert
from mlops_assets.training.checks import EVALUATION_ASSET
from mlops_assets.training.gates import GATE_NAMES
from mlops_assets.training.resources import MlflowResource

TRAINING_JOBS = ("retraining_job", "rollback_job")


def failed_gates(instance: dg.DagsterInstance, run_id: str) -> list[SimpleNamespace]:
    """The quality gates of evaluation_report that failed in a run, with their measured values and thresholds."""
    failed = []
    for entry in instance.all_logs(run_id, of_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION):
        evaluation = entry.asset_check_evaluation
        if (
            evaluation is None
            or evaluation.passed
            or evaluation.check_name not in GATE_NAMES
            or evaluation.asset_key != dg.AssetKey(EVALUATION_ASSET)
        ):
            continue
        meta = {k: v.value for k, v in evaluation.metadata.items()}
        failed.append(
            SimpleNamespace(
                name=evaluation.check_name,
                message=evaluation.description or "failed",
                measured=meta.get("measured"),
                threshold=meta.get("threshold"),
                version=meta.get("challenger_version"),
                model_name=meta.get("model_name", "model"),
            )
        )
    return failed


def alert_for_failed_run(
    instance: dg.DagsterInstance, run: dg.DagsterRun, failure_message: str
) -> Alert | None:
    """A gate-failure alert when quality gates failed, a run-failure alert for a failed training job, else None."""
    gates = failed_gates(instance, run.run_id)
    if gates:
        return gate_failure_alert(
            gates, model_name=gates[0].model_name, version=gates[0].version, dagster_run_id=run.run_id
        )
    if run.job_name in TRAINING_JOBS:
        return Alert(
            kind="training_run_failed",
            title=f"{run.job_name} run {run.run_id[:8]} failed",
            message=failure_message or "the run failed",
            details={"dagster_run_id": run.run_id, "job": run.job_name},
        )
    return None


@dg.run_failure_sensor(
    name="quality_gate_alert_sensor",
    description="Writes an alert (log + data/alerts/alerts.jsonl, webhook if $MLOPS_ALERT_WEBHOOK_URL) naming "
    "each failed quality gate with its value and threshold, or the failure of a training job.",
    minimum_interval_seconds=sensor_interval(30),
    default_status=dg.DefaultSensorStatus.RUNNING,
)
def quality_gate_alert_sensor(context: dg.RunFailureSensorContext, data: DataDirResource) -> None:
    failure = context.failure_event.message if context.failure_event else ""
    alert = alert_for_failed_run(context.instance, context.dagster_run, failure or "")
    if alert is None:
        return
    delivery = default_alert_sink(data.paths.root).send(alert)
    context.log.info(f"alert written to {delivery.file}: {alert.title}")


FIRST_CHAMPION_MIN_ROWS = 500  # the default of the spec's model.first_champion_min_rows
_ACTIVE = [
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
]


def build_first_champion_sensor(min_rows: int = FIRST_CHAMPION_MIN_ROWS) -> dg.SensorDefinition:
    """The bootstrap sensor; ``min_rows`` is the spec's ``model.first_champion_min_rows``."""

    @dg.sensor(
        name="first_champion_sensor",
        job_name="retraining_job",
        minimum_interval_seconds=sensor_interval(60),
        default_status=dg.DefaultSensorStatus.RUNNING,
        description=f"While the registry has no champion, requests retraining_job for each new training set of at "
        f"least {min_rows} label rows with both outcomes, until a model passes its gates and becomes the "
        "first champion (later retraining is triggered by drift, the schedule or a person).",
    )
    def first_champion_sensor(context: dg.SensorEvaluationContext, mlflow: MlflowResource) -> dg.SensorResult:
        from mlops_assets.training import registry
        from mlops_assets.training.tracking import RegistryUnavailable

        entry = context.instance.get_latest_materialization_event(dg.AssetKey("training_set"))
        if entry is None or entry.asset_materialization is None:
            return dg.SensorResult(skip_reason="no training set materialized yet")
        meta = {k: v.value for k, v in entry.asset_materialization.metadata.items()}
        rows, rate = int(meta.get("dagster/row_count", 0)), meta.get("label_rate")
        if rows < min_rows or (rate is not None and not 0 < float(rate) < 1):
            return dg.SensorResult(
                skip_reason=f"the training set has {rows} label rows (label rate {rate}); a first model needs at "
                f"least {min_rows} with both outcomes"
            )
        try:
            champion = registry.alias_version(mlflow.client(), registry.CHAMPION, mlflow.model_name)
        except RegistryUnavailable as exc:
            if not exc.missing:
                raise
            champion = None
        if champion is not None:
            return dg.SensorResult(skip_reason=f"champion v{champion.version} exists: nothing to bootstrap")
        active = context.instance.get_runs(
            filters=dg.RunsFilter(job_name="retraining_job", statuses=_ACTIVE), limit=1
        )
        if active:
            return dg.SensorResult(
                skip_reason=f"retraining run {active[0].run_id} is already queued or running"
            )
        content = str(meta.get("content_hash", entry.run_id))
        return dg.SensorResult(
            run_requests=[
                dg.RunRequest(
                    run_key=f"first-champion:{content[:16]}",
                    tags={
                        "mlops/trigger": "no_champion",
                        "mlops/trigger_reason": f"no champion yet; training set {content[:12]} has {rows} label rows",
                    },
                )
            ]
        )

    return first_champion_sensor
