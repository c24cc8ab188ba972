"""Serving sensors. The rollout sensor advances a canary while its guardrails hold, rolls it back when one breaks, and
at the end hands the challenger to the promotion policy (the same gates as every other promotion); each step is a
materialization of ``rollout_state``. The serving-log sensor turns the days the serving app logged requests on into
``prediction_log`` partitions and refreshes the A/B report."""

import hashlib
import json

import dagster as dg

from mlops_assets.automation import sensor_interval
from mlops_assets.project import Project
from mlops_assets.resources import DataDirResource, runtime_project

SERVING_REPORT_JOB = "serving_report_job"


def build_canary_sensor(project: Project) -> dg.SensorDefinition:
    @dg.sensor(
        name="canary_rollout_sensor",
        description="Judges the current canary step on the prediction log; advances 5% -> 25% -> 50% -> 100%, "
        "rolls back to the champion when a guardrail breaks; when the canary completes, the challenger is "
        "promoted only if the promotion policy allows it (its quality gates passed). Each step is recorded as a "
        "materialization of rollout_state.",
        minimum_interval_seconds=sensor_interval(60),
        default_status=dg.DefaultSensorStatus.RUNNING,
    )
    def canary_rollout_sensor(context: dg.SensorEvaluationContext, data: DataDirResource) -> dg.SensorResult:
        from mlops_assets.serving.assets import rollout_state_metadata
        from mlops_assets.serving.rollout import Guardrails, RolloutController

        current = runtime_project(project, data)
        controller = RolloutController(current.paths.root)
        state = controller.state()
        if state.mode != "canary":
            return dg.SensorResult(skip_reason=f"no canary in progress (mode {state.mode})")
        decision = controller.step_from_log(Guardrails())
        if decision.action == "hold":
            return dg.SensorResult(skip_reason=decision.reason)
        after = controller.state()
        promoted = None
        if decision.promote:
            promoted = promote_after_canary(
                current, decision.reason, decision.metrics, state.challenger_version
            )
            context.log.info(promoted)
        context.log.info(f"rollout {decision.action}: {decision.reason}")
        materialization = dg.AssetMaterialization(
            asset_key="rollout_state",
            description=f"canary {decision.action}: {decision.reason}",
            metadata={
                **rollout_state_metadata(after),
                "action": decision.action,
                "reason": decision.reason,
                "judged_step": int(state.step) + 1,
                "judged_share": float(state.challenger_share),
                "promotion": promoted or "not requested",
                **{k: float(f"{v:.4g}") for k, v in decision.metrics.items()},
            },
        )
        return dg.SensorResult(asset_events=[materialization])

    return canary_rollout_sensor


def promote_after_canary(
    project: Project, reason: str, metrics: dict, canary_version: str | None = None
) -> str:
    """Hand the canary's challenger to the promotion policy; what happened, in a sentence."""
    from mlops_assets.training import promotion, registry
    from mlops_assets.training.tracking import TrackingConfig, client_for

    tracking = TrackingConfig.for_project(project)
    client = client_for(tracking)
    challenger = registry.alias_version(client, registry.CHALLENGER, tracking.model_name)
    if challenger is None:
        return "canary complete but no challenger alias is set: nothing to promote"
    if canary_version is not None and str(challenger.version) != str(canary_version):
        return (
            f"canary of v{canary_version} complete, but the challenger alias moved to v{challenger.version} during "
            "it: not promoting a version the traffic did not judge"
        )
    decision, record = promotion.promote(
        client,
        tracking.model_name,
        int(challenger.version),
        via=f"canary rollout ({reason})",
        history_path=registry.default_history_path(project.paths.root),
        metrics=metrics,
    )
    return f"canary complete: {'promoted' if record else 'not promoted'}: {decision.reason}"


def _day_signature(folder) -> str:
    """What a day's log files are now: names, sizes and modification times."""
    entries = sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in folder.glob("*.jsonl"))
    return hashlib.sha256(json.dumps(entries).encode()).hexdigest()[:16]


def build_serving_log_sensor(
    project: Project, log_partitions: dg.DynamicPartitionsDefinition
) -> dg.SensorDefinition:
    @dg.sensor(
        name="serving_log_sensor",
        job_name=SERVING_REPORT_JOB,
        description="Watches the serving app's prediction log; a day whose log files grew or appeared becomes a "
        "prediction_log partition (materialized with the A/B report of the experiment in force).",
        minimum_interval_seconds=sensor_interval(60),
        default_status=dg.DefaultSensorStatus.RUNNING,
    )
    def serving_log_sensor(context: dg.SensorEvaluationContext, data: DataDirResource) -> dg.SensorResult:
        from mlops_assets.serving.prediction_log import log_dir

        folder = log_dir(runtime_project(project, data).paths.root)
        seen = json.loads(context.cursor) if context.cursor else {}
        now = {
            day.name.removeprefix("date="): _day_signature(day)
            for day in sorted(folder.glob("date=*"))
            if day.is_dir() and any(day.glob("*.jsonl"))
        }
        changed = [day for day, signature in now.items() if seen.get(day) != signature]
        cursor = json.dumps(now, sort_keys=True)
        if not changed:
            return dg.SensorResult(
                skip_reason=f"no new prediction-log records ({len(now)} day(s) logged so far)", cursor=cursor
            )
        known = set(context.instance.get_dynamic_partitions(log_partitions.name))
        new_days = [d for d in changed if d not in known]
        files = sum(len(list((folder / f"date={d}").glob("*.jsonl"))) for d in changed)
        observation = dg.AssetObservation(
            asset_key="serving_log",
            metadata={"days_changed": ",".join(changed), "files": files, "days_logged": len(now)},
        )
        return dg.SensorResult(
            run_requests=[
                dg.RunRequest(
                    run_key=f"serving-log:{day}:{now[day]}",
                    partition_key=day,
                    tags={
                        "mlops/trigger": "serving_log",
                        "mlops/trigger_reason": f"the serving app logged new requests on {day}",
                    },
                )
                for day in changed
            ],
            dynamic_partitions_requests=[log_partitions.build_add_request(new_days)] if new_days else [],
            asset_events=[observation],
            cursor=cursor,
        )

    return serving_log_sensor
