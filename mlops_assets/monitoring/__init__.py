"""Monitoring core: drift statistics, performance estimation and drift reports (no Dagster)."""

from mlops_assets.monitoring.drift import (
    DEFAULT_METHODS,
    METHODS,
    DriftInputError,
    DriftReport,
    DriftThresholds,
    FeatureDrift,
    compute_drift,
    drift_from_files,
    feature_drift,
    prediction_drift,
    read_table,
)
from mlops_assets.monitoring.estimate import (
    PerformanceDecay,
    PerformanceEstimate,
    compare_performance,
    estimate_performance,
    expected_accuracy,
    expected_roc_auc,
    performance_decay,
    realized_metrics,
)
from mlops_assets.monitoring.report import (
    SavedDriftReport,
    drift_command,
    render_markdown,
    run_drift,
    save_drift_report,
)

__all__ = [
    "DEFAULT_METHODS",
    "METHODS",
    "DriftInputError",
    "DriftReport",
    "DriftThresholds",
    "FeatureDrift",
    "PerformanceDecay",
    "PerformanceEstimate",
    "SavedDriftReport",
    "compare_performance",
    "compute_drift",
    "drift_command",
    "drift_from_files",
    "estimate_performance",
    "expected_accuracy",
    "expected_roc_auc",
    "feature_drift",
    "performance_decay",
    "prediction_drift",
    "read_table",
    "realized_metrics",
    "render_markdown",
    "run_drift",
    "save_drift_report",
]
