"""The one promotion policy: every path that moves ``champion`` (the promotion asset, the rollout sensor when a
canary completes, ``mlops promote``) decides here, with the same rules, and writes the same history row.

A version is promoted only when
1. its evaluation's gate verdicts are recorded on it (``mlops.gates``) and none failed;
2. it was evaluated against the current champion (or against none, while there is none);
3. it was not rolled back since its last promotion (unless ``allow_rolled_back``).

Alias rule: ``champion`` moves to the version, the old champion becomes ``previous-champion``, and
``challenger`` is removed from the promoted version (it names a candidate not yet promoted).
No Dagster here.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlops_assets.training import registry

GATES_TAG = "mlops.gates"  # {gate: status} of the version's latest evaluation
EVALUATED_AGAINST_TAG = "mlops.evaluated_against"  # champion version it was judged against, or "none"
EVALUATION_RUN_TAG = "mlops.evaluation_run"  # the Dagster run (or other origin) of that evaluation


@dataclass(frozen=True)
class PromotionDecision:
    version: int
    promote: bool
    reason: str
    blocked_by: tuple[str, ...] = ()


def record_gate_verdicts(
    client,
    model_name: str,
    version: int,
    gates: Sequence,
    champion_version: int | None,
    origin: str,
    summary: Mapping[str, Any] | None = None,
) -> None:
    """Write an evaluation's verdicts on the version (tags and a readable description) for the policy to read."""
    verdicts = {g.name: g.status for g in gates}
    client.set_model_version_tag(model_name, str(version), GATES_TAG, json.dumps(verdicts, sort_keys=True))
    client.set_model_version_tag(
        model_name,
        str(version),
        EVALUATED_AGAINST_TAG,
        str(champion_version) if champion_version is not None else "none",
    )
    client.set_model_version_tag(model_name, str(version), EVALUATION_RUN_TAG, origin)
    failed = [g.name for g in gates if not g.passed]
    skipped = [g.name for g in gates if not g.applies]
    lines = [
        f"Evaluated against {'champion v' + str(champion_version) if champion_version is not None else 'no champion'} "
        f"({origin}): {'FAILED ' + ', '.join(failed) if failed else 'every applicable quality gate passed'}"
        + (f"; not applicable: {', '.join(skipped)}" if skipped else "")
        + ".",
        "",
        "| gate | result | detail |",
        "|---|---|---|",
        *[f"| {g.name} | {g.status} | {g.message.replace('|', '/')[:300]} |" for g in gates],
    ]
    client.update_model_version(model_name, str(version), description="\n".join(lines)[:5000])
    log_evaluation_to_run(client, model_name, version, gates, champion_version, origin, summary)


def log_evaluation_to_run(
    client,
    model_name: str,
    version: int,
    gates: Sequence,
    champion_version: int | None,
    origin: str,
    summary: Mapping[str, Any] | None = None,
) -> None:
    """The evaluation on the version's MLflow run: a ``gate.<name>`` tag per verdict, the report's numbers as
    ``evaluation_<name>`` metrics, and ``evaluation/gates.json`` (every verdict with its value and threshold)."""
    run_id = client.get_model_version(model_name, str(version)).run_id
    if not run_id:
        return
    for gate in gates:
        client.set_tag(run_id, f"gate.{gate.name}", gate.status)
    client.set_tag(
        run_id, "evaluation.against", str(champion_version) if champion_version is not None else "none"
    )
    client.set_tag(run_id, "evaluation.origin", origin[:250])
    client.set_tag(run_id, "evaluation.failed", ",".join(g.name for g in gates if not g.passed) or "none")
    numbers = {
        f"evaluation_{k}": float(v)
        for k, v in (summary or {}).items()
        if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
    }
    numbers |= {
        f"gate_{g.name}_measured": float(g.measured)
        for g in gates
        if isinstance(g.measured, int | float)
        and not isinstance(g.measured, bool)
        and math.isfinite(g.measured)
    }
    if numbers:
        from mlflow.entities import Metric

        stamp = int(time.time() * 1000)
        client.log_batch(run_id, metrics=[Metric(k, v, stamp, 0) for k, v in sorted(numbers.items())])
    payload = {
        "champion_version": champion_version,
        "origin": origin,
        "gates": [
            {
                "name": g.name,
                "status": g.status,
                "measured": g.measured,
                "threshold": g.threshold,
                "message": g.message,
            }
            for g in gates
        ],
        "summary": dict(summary or {}),
    }
    # numpy numbers and other odd values as plain JSON
    client.log_dict(run_id, json.loads(json.dumps(payload, default=_plain)), "evaluation/gates.json")


def _plain(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    return str(value)


def rolled_back_since_promotion(tags: Mapping[str, str]) -> str | None:
    """When the version was rolled back, if that happened after its last promotion."""
    rolled_back, promoted = tags.get("rolled_back_at"), tags.get("promoted_at")
    return rolled_back if rolled_back and (not promoted or promoted < rolled_back) else None


def decide(client, model_name: str, version: int, *, allow_rolled_back: bool = False) -> PromotionDecision:
    """Whether ``version`` may become champion now, and why (see the module docstring)."""
    mv = client.get_model_version(model_name, str(version))
    tags = mv.tags
    champion = registry.alias_version(client, registry.CHAMPION, model_name)
    if champion is not None and int(champion.version) == int(version):
        return PromotionDecision(version, False, f"version {version} is already the champion; nothing moved")
    if GATES_TAG not in tags:
        return PromotionDecision(
            version,
            False,
            f"version {version} has no recorded evaluation; evaluate it first",
            ("not_evaluated",),
        )
    verdicts = json.loads(tags[GATES_TAG])
    failed = tuple(name for name, status in verdicts.items() if status == "fail")
    if failed:
        return PromotionDecision(
            version, False, f"version {version} failed {', '.join(failed)}; not promoting", failed
        )
    against = tags.get(EVALUATED_AGAINST_TAG, "none")
    current = str(champion.version) if champion is not None else "none"
    if against != current:
        return PromotionDecision(
            version,
            False,
            f"version {version} was evaluated against champion {against}, but the champion is now {current}; "
            "evaluate it again against the current champion",
            ("stale_evaluation",),
        )
    rolled = rolled_back_since_promotion(tags)
    if rolled and not allow_rolled_back:
        return PromotionDecision(
            version,
            False,
            f"version {version} passed its gates but was rolled back at {rolled}; not re-promoted (allow_rolled_back overrides)",
            ("rolled_back",),
        )
    passed = [n for n, s in verdicts.items() if s == "pass"]
    skipped = [n for n, s in verdicts.items() if s == "not applicable"]
    judged = f"against champion v{against}" if against != "none" else "with no champion yet"
    reason = (
        f"{len(passed)} quality gates passed {judged} (evaluation {tags.get(EVALUATION_RUN_TAG, 'unknown')})"
    )
    if skipped:
        reason += f"; not applicable: {', '.join(skipped)}"
    return PromotionDecision(version, True, reason)


def promote(
    client,
    model_name: str,
    version: int,
    *,
    via: str,
    history_path: str | Path,
    metrics: Mapping[str, Any] | None = None,
    dagster_run_id: str | None = None,
    allow_rolled_back: bool = False,
) -> tuple[PromotionDecision, registry.PromotionRecord | None]:
    """Apply the policy: move the aliases and append the history row when it allows, else nothing."""
    decision = decide(client, model_name, version, allow_rolled_back=allow_rolled_back)
    if not decision.promote:
        return decision, None
    record = registry.promote(
        client,
        version,
        f"{decision.reason} [via {via}]",
        metrics,
        model_name=model_name,
        dagster_run_id=dagster_run_id,
        history_path=history_path,
    )
    challenger = registry.alias_version(client, registry.CHALLENGER, model_name)
    if challenger is not None and int(challenger.version) == int(version):
        client.delete_registered_model_alias(model_name, registry.CHALLENGER)
    return decision, record
