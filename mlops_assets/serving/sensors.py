"""The rollout sensor: advances a canary while its guardrails hold, rolls it back when one breaks."""

import dagster as dg

from mlops_assets.resources import DataDirResource
from mlops_assets.serving.rollout import Guardrails, RolloutController


@dg.sensor(
    name="canary_rollout_sensor",
    description="Judges the current canary step on the prediction log; advances 5% -> 25% -> 50% -> 100%, "
    "rolls back to the champion when a guardrail breaks, promotes the challenger at the end.",
    minimum_interval_seconds=60,
    default_status=dg.DefaultSensorStatus.RUNNING,
)
def canary_rollout_sensor(context: dg.SensorEvaluationContext, data: DataDirResource) -> dg.SensorResult:
    controller = RolloutController(data.paths.root)
    state = controller.state()
    if state.mode != "canary":
        return dg.SensorResult(skip_reason=f"no canary in progress (mode {state.mode})")
    decision = controller.step_from_log(Guardrails())
    if decision.action == "hold":
        return dg.SensorResult(skip_reason=decision.reason)
    after = controller.state()
    if decision.promote:
        from mlops_assets.training import registry
        from mlops_assets.training.tracking import TrackingConfig, client_for

        client = client_for(TrackingConfig.for_data_root(data.paths.root))
        challenger = registry.alias_version(client, registry.CHALLENGER)
        if challenger is not None:
            registry.promote(
                client,
                challenger.version,
                f"canary rollout complete: {decision.reason}",
                metrics=decision.metrics,
                history_path=registry.default_history_path(data.paths.root),
            )
    context.log.info(f"rollout {decision.action}: {decision.reason}")
    observation = dg.AssetObservation(
        asset_key="rollout_state",
        metadata={
            "action": decision.action,
            "reason": decision.reason,
            "mode": after.mode,
            "challenger_share": after.challenger_share,
            "experiment": after.experiment,
            "promote": decision.promote,
            **{k: float(v) for k, v in decision.metrics.items()},
        },
    )
    return dg.SensorResult(asset_events=[observation])
