"""The weekly retraining schedule (trigger a): retraining_job on a cron, configurable by environment variable."""

import os

import dagster as dg

from mlops_assets.monitoring.sensors import RETRAINING_JOB, retraining_in_progress

RETRAIN_CRON_ENV = "MLOPS_RETRAIN_CRON"
DEFAULT_RETRAIN_CRON = "0 3 * * 1"  # Mondays 03:00 UTC


def build_retraining_schedule(environ: dict[str, str] | None = None) -> dg.ScheduleDefinition:
    """The weekly retraining schedule; its cron comes from ``$MLOPS_RETRAIN_CRON`` when the definitions load."""
    cron = (os.environ if environ is None else environ).get(RETRAIN_CRON_ENV) or DEFAULT_RETRAIN_CRON

    @dg.schedule(
        name="weekly_retraining_schedule",
        cron_schedule=cron,
        execution_timezone="UTC",
        job_name=RETRAINING_JOB,
        default_status=dg.DefaultScheduleStatus.RUNNING,
        description=f"Retrains on the latest training set on a cron (${RETRAIN_CRON_ENV}, default "
        f"'{DEFAULT_RETRAIN_CRON}' = Mondays 03:00 UTC); skipped while a retraining run is queued or running.",
    )
    def weekly_retraining_schedule(context: dg.ScheduleEvaluationContext):
        """One retraining run per tick, keyed by the tick time."""
        tick = context.scheduled_execution_time
        if retraining_in_progress(context.instance):
            return dg.SkipReason(
                f"a {RETRAINING_JOB} run is already queued or running; tick {tick.isoformat()} skipped"
            )
        return dg.RunRequest(
            run_key=f"schedule:{tick.isoformat()}",
            tags={
                "mlops/trigger": "schedule",
                "mlops/trigger_reason": f"weekly retraining schedule '{cron}' (UTC), tick {tick.isoformat()}",
            },
        )

    return weekly_retraining_schedule
