"""Quality gates as blocking asset checks on evaluation_report, and the training-data validation they read."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import dagster as dg

from mlops_assets.features.assets import LEAKAGE_CHECK
from mlops_assets.ingestion.assets import QUARANTINE_CHECK, SCHEMA_CHECK
from mlops_assets.project import Project
from mlops_assets.training.gates import FAIL, GATE_NAMES, NOT_APPLICABLE, PASS, GateResult

if TYPE_CHECKING:
    import pandas as pd

EVALUATION_ASSET = "evaluation_report"

GATE_DESCRIPTIONS = {
    "beats_baseline": "The challenger beats every trivial baseline on the same holdout (prior rate on log loss "
    "and Brier for classification; training mean and each entity's last value on MAE for regression).",
    "metric_vs_champion": "The challenger is at most max_metric_drop worse than the champion on the spec's "
    "comparison metric (does not apply while there is no champion).",
    "overfitting": "Train minus holdout on the comparison metric is at most max_overfit_gap (reported only "
    "when the spec sets no max_overfit_gap).",
    "p99_latency": "Robust p99 single-row latency (fastest of 3 calls per row, one thread) <= max_p99_latency_ms, "
    "and at most max_latency_ratio times the champion's, both measured interleaved.",
    "bias": "Largest between-group difference over the spec's sensitive attributes <= max_bias_score (does not "
    "apply with fewer than two groups of min_group_size rows).",
    "test_coverage": "Share of holdout rows scored, and of the segments observed in the training set that the "
    "holdout covers, >= min_test_coverage.",
    "sanity": "Every golden case of the spec scores within its expectation (does not apply without golden cases).",
    "training_data_valid": "The training set has no feature later than its label, and the latest recorded "
    "validation checks of training_set and the ingested sources passed.",
}
assert set(GATE_DESCRIPTIONS) == set(GATE_NAMES)


def upstream_checks(project: Project) -> tuple[dg.AssetCheckKey, ...]:
    """The upstream checks the training_data_valid gate reads from the instance (latest evaluation of each)."""
    return (
        dg.AssetCheckKey(dg.AssetKey("training_set"), LEAKAGE_CHECK),
        *(
            dg.AssetCheckKey(dg.AssetKey(source), name)
            for source in project.spec.sources
            for name in (SCHEMA_CHECK, QUARANTINE_CHECK)
        ),
    )


def gate_check_specs() -> list[dg.AssetCheckSpec]:
    """One blocking check per quality gate on evaluation_report."""
    return [
        dg.AssetCheckSpec(name, asset=EVALUATION_ASSET, blocking=True, description=GATE_DESCRIPTIONS[name])
        for name in GATE_NAMES
    ]


def _metadata_number(value: float | None) -> float | None:
    return (
        None
        if value is None or (isinstance(value, float) and not math.isfinite(value))
        else round(float(value), 6)
    )


def not_applicable_reason(gate: GateResult) -> str:
    """Why a gate does not apply: its message without the leading "not applicable: "."""
    prefix = f"{NOT_APPLICABLE}:"
    message = gate.message.strip()
    return message[len(prefix) :].strip() if message.startswith(prefix) else message


def gate_check_results(
    gates: Sequence[GateResult], challenger_version: int, model_name: str
) -> list[dg.AssetCheckResult]:
    """One check result per gate, so every declared gate has an execution in the UI.

    A gate that does not apply blocks nothing: its result is passed, with ``status: not applicable`` and the
    reason in its metadata and description (the gate table and the version's tags say "not applicable" too).
    """
    results = []
    for gate in gates:
        applies = gate.status != NOT_APPLICABLE
        metadata: dict = {
            "status": gate.status,
            "challenger_version": challenger_version,
            "model_name": model_name,
        }
        if not applies:
            metadata["reason"] = not_applicable_reason(gate)
        for key, value in (("measured", gate.measured), ("threshold", gate.threshold)):
            number = _metadata_number(value)
            if number is not None:
                metadata[key] = number
        results.append(
            dg.AssetCheckResult(
                check_name=gate.name,
                passed=gate.status != FAIL,
                severity=dg.AssetCheckSeverity.ERROR,
                description=gate.message,
                metadata=metadata,
            )
        )
    return results


def training_data_findings(
    instance: dg.DagsterInstance, frame: pd.DataFrame, project: Project
) -> tuple[list[str], list[str]]:
    """(problems, evidence) about the training data: leakage recomputed on the frame, latest upstream checks."""
    import pandas as pd

    from mlops_assets.features.layout import layouts
    from mlops_assets.features.pit import assert_no_leakage

    problems, evidence = [], []
    ts_columns = [c for c in frame.columns if c.endswith("__feature_timestamp")]
    ttls = {n: v.view.ttl for n, v in layouts(project.spec).items()}
    violations = assert_no_leakage(frame, project.target_timestamp, ttls)
    if violations:
        kinds = pd.Series([v["kind"] for v in violations]).value_counts().to_dict()
        problems.append(f"{len(violations)} point-in-time violations in the training set {kinds}")
    elif ts_columns:
        evidence.append(f"no leakage in {len(frame)} rows x {len(ts_columns)} view timestamps")
    else:
        evidence.append("no view timestamps in the training set to check for leakage")
    missing = []
    for key in upstream_checks(project):
        record = instance.get_latest_asset_check_evaluation_record(key)
        evaluation = record.event.asset_check_evaluation if record is not None and record.event else None
        label = f"{key.asset_key.to_user_string()}.{key.name}"
        if evaluation is None:
            missing.append(label)
        elif evaluation.passed:
            evidence.append(f"{label} passed")
        elif (
            evaluation.severity == dg.AssetCheckSeverity.WARN
        ):  # a warning (e.g. a coerced column) is not a failure
            evidence.append(
                f"{label} warned in run {record.run_id[:8]}: {evaluation.description or ''}"[:300]
            )
        else:
            detail = f": {evaluation.description}" if evaluation.description else ""
            problems.append(f"{label} failed in run {record.run_id[:8]}{detail}")
    if missing:
        evidence.append(f"not recorded in this instance: {', '.join(missing)}")
    return problems, evidence


def training_data_gate(gate: GateResult, problems: Sequence[str], evidence: Sequence[str]) -> GateResult:
    """The training_data_valid gate rewritten to name what was checked and what failed."""
    if problems:
        message = f"{len(problems)} training-data validation(s) failed (allowed: 0): " + "; ".join(problems)
    else:
        message = "training data passed validation (0 failures, allowed: 0): " + "; ".join(evidence)
    return dataclasses.replace(
        gate,
        status=FAIL if problems else PASS,
        measured=float(len(problems)),
        threshold=0.0,
        message=message[:4000],
    )
