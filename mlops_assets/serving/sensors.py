"""The rollout sensor: advances a canary while its guardrails hold, rolls it back when one breaks, and at the end
hands the challenger to the promotion policy (the same gates as every other promotion)."""

import dagster as dg

from mlops_assets.project import Project
from mlops_assets.resources import DataDirResource, runtime_project


def build_canary_sensor(project: Project) -> dg.SensorDefinition:
    @dg.sensor(
        name="canary_rollout_sensor",
        description="Judges the current canary step on the prediction log; advances 5% -> 25% -> 50% -> 100%, "
        "rolls back to the champion when a guardrail breaks; when the canary completes, the challenger is "
        "promoted only if the promotion policy allows it (its quality gates passed).",
        minimum_interval_seconds=60,
        default_status=dg.DefaultSensorStatus.RUNNING,
    )
    def canary_rollout_sensor(context: dg.SensorEvaluationContext, data: DataDirResource) -> dg.SensorResult:
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
            promoted = promote_after_canary(current, decision.reason, decision.metrics)
            context.log.info(promoted)
        context.log.info(f"rollout {decision.action}: {decision.reason}")
        observation = dg.AssetObservation(
            asset_key="rollout_state",
            metadata={
                "action": decision.action,
                "reason": decision.reason,
                "mode": after.mode,
                "challenger_share": after.challenger_share,
                "experiment": after.experiment,
                "promotion": promoted or "not requested",
                **{k: float(v) for k, v in decision.metrics.items()},
            },
        )
        return dg.SensorResult(asset_events=[observation])

    return canary_rollout_sensor


def promote_after_canary(project: Project, reason: str, metrics: dict) -> str:
    """Hand the canary's challenger to the promotion policy; what happened, in a sentence."""
    from mlops_assets.training import promotion, registry
    from mlops_assets.training.tracking import TrackingConfig, client_for

    tracking = TrackingConfig.for_project(project)
    client = client_for(tracking)
    challenger = registry.alias_version(client, registry.CHALLENGER, tracking.model_name)
    if challenger is None:
        return "canary complete but no challenger alias is set: nothing to promote"
    decision, record = promotion.promote(
        client,
        tracking.model_name,
        int(challenger.version),
        via=f"canary rollout ({reason})",
        history_path=registry.default_history_path(project.paths.root),
        metrics=metrics,
    )
    return f"canary complete: {'promoted' if record else 'not promoted'}: {decision.reason}"
