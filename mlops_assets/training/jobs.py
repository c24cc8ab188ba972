"""Jobs of the training domain: the retraining chain and the one-step rollback."""

import dagster as dg

from mlops_assets.executors import executor_from_env
from mlops_assets.resources import DataDirResource
from mlops_assets.training.resources import MlflowResource

RETRAINING_JOB = "retraining_job"
ROLLBACK_JOB = "rollback_job"


def build_retraining_job(rollout: bool = True):
    """The retraining chain; with ``rollout`` it ends with the rollout state (a canary of the challenger in canary mode)."""
    assets = ["training_set", "candidate_model", "evaluation_report", "promotion"]
    return dg.define_asset_job(
        RETRAINING_JOB,
        selection=dg.AssetSelection.assets(*assets, *(["rollout_state"] if rollout else [])),
        description="Rebuild the training set, train (or reuse) the challenger, evaluate it against the champion "
        "and promote it through the promotion policy (in canary mode: start a canary of it, which promotes it when "
        "it completes).",
        # A linear chain gains nothing from a process per step; each step process costs seconds of imports
        # (measured: 17 s in process vs 44 s multiprocess for the same run on 2 shared cores). An executor
        # chosen by MLOPS_EXECUTOR (e.g. celery on a cluster) applies here too.
        executor_def=executor_from_env() or dg.in_process_executor,
    )


class RollbackConfig(dg.Config):
    """Why the champion is rolled back (recorded in the promotion history)."""

    reason: str = "manual rollback"


@dg.op(description="Restore the previous champion in one step; the registry always keeps a champion.")
def rollback_champion(
    context: dg.OpExecutionContext, config: RollbackConfig, data: DataDirResource, mlflow: MlflowResource
) -> None:
    """Move `champion` back to `previous-champion` and record the move (never on a missing store)."""
    from mlops_assets.training import registry
    from mlops_assets.training.tracking import RegistryUnavailable

    try:
        record = registry.rollback(
            mlflow.client(),  # RegistryUnavailable before any client touches a missing store
            config.reason,
            model_name=mlflow.model_name,
            dagster_run_id=context.run_id,
            history_path=registry.default_history_path(data.paths.root),
        )
    except (registry.RegistryError, RegistryUnavailable) as exc:
        raise dg.Failure(str(exc)) from exc
    message = (
        f"{record.model_name}: champion restored to version {record.version} "
        f"(was {record.previous_version}); reason: {record.reason}"
    )
    context.log.info(message)
    # The rollback also shows on the promotion asset's timeline.
    context.log_event(
        dg.AssetObservation(
            asset_key="promotion",
            metadata={
                "champion_version": record.version,
                "rolled_back_from": record.previous_version
                if record.previous_version is not None
                else "none",
                "reason": record.reason,
                "action": "rollback",
            },
        )
    )


@dg.job(name=ROLLBACK_JOB, description="Restore the previous champion of the project's model in one step.")
def rollback_job() -> None:
    rollback_champion()
