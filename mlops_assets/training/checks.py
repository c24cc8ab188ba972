"""Quality gates as blocking asset checks on evaluation_report, and the training-data validation they read."""

import dataclasses
import math
from collections.abc import Sequence

import dagster as dg
import pandas as pd

from mlops_assets.features.assets import LEAKAGE_CHECK
from mlops_assets.features.pit import assert_no_leakage
from mlops_assets.features.views import FEATURE_VIEWS
from mlops_assets.ingestion.assets import QUARANTINE_CHECK, SCHEMA_CHECK
from mlops_assets.settings import INGESTED_TABLES
from mlops_assets.training.gates import GATE_NAMES, GateResult

EVALUATION_ASSET = "evaluation_report"

GATE_DESCRIPTIONS = {
    "accuracy_vs_champion": "Challenger accuracy >= champion accuracy - max_accuracy_drop on the same holdout "
    "(skipped while there is no champion).",
    "min_roc_auc": "Challenger ROC AUC on the holdout >= min_roc_auc.",
    "p99_latency": "p99 single-row prediction latency (one thread, as in serving) <= max_p99_latency_ms.",
    "bias": "Largest demographic-parity / equal-opportunity difference across age_group and region "
    "<= max_bias_score.",
    "test_coverage": "Share of holdout rows and segments scored with complete features >= min_test_coverage.",
    "sanity": "Every golden input pair keeps its predicted direction (disengaged customers score higher).",
    "training_data_valid": "The training set has no feature later than its label, and the latest recorded "
    "validation checks of training_set and the raw tables passed.",
}
assert set(GATE_DESCRIPTIONS) == set(GATE_NAMES)

#: The upstream checks the training_data_valid gate reads from the instance (latest evaluation of each).
UPSTREAM_CHECKS: tuple[dg.AssetCheckKey, ...] = (
    dg.AssetCheckKey(dg.AssetKey("training_set"), LEAKAGE_CHECK),
    *(
        dg.AssetCheckKey(dg.AssetKey(table), name)
        for table in INGESTED_TABLES
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
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)


def gate_check_results(
    gates: Sequence[GateResult], challenger_version: int, model_name: str
) -> list[dg.AssetCheckResult]:
    """Check results whose descriptions name the measured value and the threshold."""
    results = []
    for gate in gates:
        metadata: dict = {
            "skipped": gate.skipped,
            "challenger_version": challenger_version,
            "model_name": model_name,
        }
        for key, value in (("measured", gate.measured), ("threshold", gate.threshold)):
            number = _metadata_number(value)
            if number is not None:
                metadata[key] = number
        results.append(
            dg.AssetCheckResult(
                check_name=gate.name,
                passed=gate.passed,
                severity=dg.AssetCheckSeverity.ERROR,
                description=gate.message,
                metadata=metadata,
            )
        )
    return results


def training_data_findings(instance: dg.DagsterInstance, frame: pd.DataFrame) -> tuple[list[str], list[str]]:
    """(problems, evidence) about the training data: leakage recomputed on the frame, latest upstream checks."""
    problems, evidence = [], []
    ts_columns = [c for c in frame.columns if c.endswith("__feature_timestamp")]
    violations = assert_no_leakage(frame, "label_timestamp", {v.name: v.ttl for v in FEATURE_VIEWS})
    if violations:
        kinds = pd.Series([v["kind"] for v in violations]).value_counts().to_dict()
        problems.append(f"{len(violations)} point-in-time violations in the training set {kinds}")
    elif ts_columns:
        evidence.append(f"no leakage in {len(frame)} rows x {len(ts_columns)} view timestamps")
    else:
        evidence.append("no view timestamps in the training set to check for leakage")
    missing = []
    for key in UPSTREAM_CHECKS:
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
        gate, passed=not problems, measured=float(len(problems)), threshold=0.0, message=message[:4000]
    )
