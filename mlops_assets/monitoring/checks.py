"""The drift_report checks: per-feature drift (WARN), dataset drift share and performance drops (ERROR)."""

import dagster as dg

from mlops_assets.monitoring.policy import (
    CHECK_NAMES,
    DATASET_DRIFT_CHECK,
    ESTIMATED_PERFORMANCE_CHECK,
    FEATURE_DRIFT_CHECK,
    MULTIVARIATE_DRIFT_CHECK,
    REALIZED_PERFORMANCE_CHECK,
    Verdict,
)

DRIFT_ASSET = "drift_report"

CHECK_DESCRIPTIONS = {
    FEATURE_DRIFT_CHECK: "WARN when a champion input feature or the score distribution drifted on a day: its "
    "effect size (normalized Wasserstein / Jensen-Shannon) left the band calibrated on chunks of the reference "
    "period (p-values are information only).",
    DATASET_DRIFT_CHECK: "ERROR when the share of drifted features leaves its band calibrated on the reference chunks.",
    MULTIVARIATE_DRIFT_CHECK: "ERROR when the PCA reconstruction error of the day's population leaves its band "
    "calibrated on the reference chunks (joint changes univariate distances miss).",
    ESTIMATED_PERFORMANCE_CHECK: "ERROR when the confidence-based (CBPE) estimate of accuracy or ROC AUC falls "
    "below the band of the reference chunks' estimates.",
    REALIZED_PERFORMANCE_CHECK: "ERROR when realized accuracy or ROC AUC on the labels of the last "
    "realized_window_days days is more than max_performance_drop below the training-time holdout value "
    "(concept drift); skipped below min_labels labels.",
}
assert set(CHECK_DESCRIPTIONS) == set(CHECK_NAMES)

_SEVERITY = {"WARN": dg.AssetCheckSeverity.WARN, "ERROR": dg.AssetCheckSeverity.ERROR}


def drift_check_specs() -> list[dg.AssetCheckSpec]:
    """The four inline, non-blocking checks of drift_report (they judge the model, not the report's data)."""
    return [
        dg.AssetCheckSpec(name, asset=DRIFT_ASSET, description=CHECK_DESCRIPTIONS[name])
        for name in CHECK_NAMES
    ]


def check_results(
    verdicts: list[Verdict], champion_version: int | None, days: list[str], reference_end: str | None = None
) -> list[dg.AssetCheckResult]:
    """Asset check results from the core's verdicts, with the failing days, the champion judged and the last day
    of its reference period (the drift retraining sensor acts only on alarms after it)."""
    results = []
    for v in verdicts:
        metadata = {
            "skipped": v.skipped,
            "champion_version": champion_version if champion_version is not None else "none",
            "reference_end": reference_end or "",
            "days": ",".join(days) if len(days) <= 3 else f"{days[0]}..{days[-1]} ({len(days)} days)",
            "failing_days": dg.MetadataValue.json(v.failing_days),
            "elevated_days": dg.MetadataValue.json(v.elevated_days),
            "details": dg.MetadataValue.json(v.metadata),
        }
        results.append(
            dg.AssetCheckResult(
                check_name=v.check,
                passed=v.passed,
                severity=_SEVERITY[v.severity],
                description=v.description,
                metadata=metadata,
            )
        )
    return results
