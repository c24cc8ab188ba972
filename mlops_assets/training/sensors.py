"""The alert sensor: a failed run with failed quality gates (or a failed training job) raises an alert."""

from types import SimpleNamespace

import dagster as dg

from mlops_assets.resources import DataDirResource
from mlops_assets.training.alerts import Alert, default_alert_sink, gate_failure_alert
from mlops_assets.training.checks import EVALUATION_ASSET
from mlops_assets.training.gates import GATE_NAMES

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
    default_status=dg.DefaultSensorStatus.RUNNING,
)
def quality_gate_alert_sensor(context: dg.RunFailureSensorContext, data: DataDirResource) -> None:
    failure = context.failure_event.message if context.failure_event else ""
    alert = alert_for_failed_run(context.instance, context.dagster_run, failure or "")
    if alert is None:
        return
    delivery = default_alert_sink(data.paths.root).send(alert)
    context.log.info(f"alert written to {delivery.file}: {alert.title}")
