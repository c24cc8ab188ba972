"""How a gated challenger reaches traffic: at once (``direct``) or through a canary on live traffic (``canary``).

``$MLOPS_ROLLOUT`` (or a run's config) picks the mode. In canary mode, a challenger that passed its quality gates
against the current champion is not promoted by the promotion step: :func:`begin_canary` starts a canary of it
(5% of entities, then 25%, 50%, 100%) with its offline scores on the current population as the score reference, the canary sensor judges each
step on the prediction log, and the completed canary promotes it through the promotion policy. Without a champion
there is nothing to compare with: the first model is promoted directly in either mode. No Dagster here.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from mlops_assets.project import Project
from mlops_assets.serving.rollout import RolloutController
from mlops_assets.serving.routing import RolloutState

ROLLOUT_ENV = "MLOPS_ROLLOUT"
ROLLOUT_MODES = ("direct", "canary")


def rollout_mode(configured: str = "") -> str:
    """``configured``, else ``$MLOPS_ROLLOUT``, else ``direct``."""
    mode = (configured or os.environ.get(ROLLOUT_ENV) or "direct").strip().lower()
    if mode not in ROLLOUT_MODES:
        raise ValueError(
            f"rollout mode (${ROLLOUT_ENV}) must be one of {', '.join(ROLLOUT_MODES)}, got {mode!r}"
        )
    return mode


def experiment_name(version: int | str) -> str:
    """The routing salt of a canary of ``version`` (a new canary reshuffles the entities)."""
    return f"canary-v{version}"


def reference_day(project: Project) -> str | None:
    """The newest day every feature view has stored (the day the serving app's online values are as of)."""
    from mlops_assets.features.tiles import stored_days

    newest = [stored_days(project.paths, view) for view in project.view_names]
    return min(days[-1] for days in newest) if newest and all(newest) else None


def challenger_reference_scores(project: Project, client, model_name: str, version: int) -> np.ndarray:
    """The scores the canary's live traffic should have: the version's scores on the monitored population of the
    newest stored day, from the offline store as of that day's end (what the online store serves). A live score
    distribution away from it means the served inputs differ from the offline ones (training/serving skew, a stale
    or broken online store), not that the population changed since training. Without a population (no events
    source), the version's scores on its own evaluation holdout of the stored training set."""
    from mlops_assets.featurestore import FeatureStore
    from mlops_assets.monitoring.daily import current_population
    from mlops_assets.training import registry
    from mlops_assets.training.task import ModelTask
    from mlops_assets.training.train import model_inputs, predict_scores, registered_result, time_split

    loaded = registry.load_model_version(client, version, model_name=model_name)
    trained = registered_result(client, model_name, version)
    store = FeatureStore(project)
    day = reference_day(project)
    ids = current_population(store, day) if day is not None else []
    if ids:
        frame = store.features_at(day, ids)
    else:
        task = ModelTask.from_project(project)
        params = client.get_run(trained.run_id).data.params
        training_set, _ = store.read_training_set()
        _, frame = time_split(
            task.trainable(training_set), float(params.get("holdout_fraction", 0.2)), task.time, task.entity
        )
    return predict_scores(
        loaded.model, model_inputs(frame, trained.numeric_features, trained.categorical_features)
    )


@dataclass(frozen=True)
class RolloutStep:
    """What the rollout step did: its action (``start``, ``unchanged``), why, and the state after it."""

    action: str
    reason: str
    state: RolloutState
    reference_scores: int = 0


def begin_canary(project: Project, client, model_name: str, mode: str) -> RolloutStep:
    """Start a canary of the challenger when the mode asks for one and the promotion policy would promote it.

    A canary of the same challenger already in progress is kept; a canary of an older challenger is replaced (the
    challenger alias moved: the traffic already judged was the old model's).
    """
    from mlops_assets.training import promotion, registry

    controller = RolloutController(project.paths.root)
    state = controller.state()
    if mode != "canary":
        return RolloutStep(
            "unchanged", f"rollout mode is {mode}: promotion moves the champion at once", state
        )
    champion = registry.alias_version(client, registry.CHAMPION, model_name)
    challenger = registry.alias_version(client, registry.CHALLENGER, model_name)
    if challenger is None:
        return RolloutStep("unchanged", "no challenger alias: nothing to roll out", state)
    if champion is None:
        return RolloutStep("unchanged", "no champion to run a canary against", state)
    version = int(challenger.version)
    if version == int(champion.version):
        return RolloutStep("unchanged", f"v{version} is already the champion", state)
    decision = promotion.decide(client, model_name, version)
    if not decision.promote:
        return RolloutStep("unchanged", f"v{version} is not rolled out: {decision.reason}", state)
    if state.mode == "canary" and state.challenger_version == str(version):
        return RolloutStep(
            "unchanged", f"the canary of v{version} is in progress (step {state.step + 1})", state
        )
    replaced = (
        f"; replaces the canary of v{state.challenger_version}"
        if state.mode == "canary" and state.challenger_version
        else ""
    )
    scores = challenger_reference_scores(project, client, model_name, version)
    reason = (
        f"canary of v{version} against champion v{champion.version}: {decision.reason}; score guardrails against "
        f"its {len(scores):,} offline scores (mean {float(np.mean(scores)):.3f}){replaced}"
    )
    started = controller.start_canary(
        experiment_name(version),
        reason=reason,
        champion_version=str(champion.version),
        challenger_version=str(version),
        challenger_reference_scores=scores,
    )
    return RolloutStep("start", reason, started, len(scores))
