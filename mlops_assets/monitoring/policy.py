"""What the drift monitor judges and with which settings: the drift_report check names, which of them mean the
model degraded, the monitor's settings and a check's verdict (no statistics here: this module is read when the
Dagster definitions load, so it imports no numpy, pandas or scipy)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mlops_assets.monitoring.calibrate import CalibrationSettings

#: Names of the drift_report checks.
FEATURE_DRIFT_CHECK = "feature_drift"
DATASET_DRIFT_CHECK = "dataset_drift_share"
MULTIVARIATE_DRIFT_CHECK = "multivariate_drift"
ESTIMATED_PERFORMANCE_CHECK = "estimated_performance_drop"
REALIZED_PERFORMANCE_CHECK = "realized_performance_drop"
CHECK_NAMES = (
    FEATURE_DRIFT_CHECK,
    DATASET_DRIFT_CHECK,
    MULTIVARIATE_DRIFT_CHECK,
    ESTIMATED_PERFORMANCE_CHECK,
    REALIZED_PERFORMANCE_CHECK,
)
#: Checks whose failure means the model degraded (ERROR severity; they trigger retraining).
ERROR_CHECKS = (
    DATASET_DRIFT_CHECK,
    MULTIVARIATE_DRIFT_CHECK,
    ESTIMATED_PERFORMANCE_CHECK,
    REALIZED_PERFORMANCE_CHECK,
)
#: A day is quiet only when every ERROR statistic is less than this share of the way from its band's center to
#: its alarm edge (a drift share, a reconstruction error, an estimated or realized drop); a day at or beyond it,
#: short of the edge, is *elevated*: it keeps an open alarm episode open and starts none (episodes.py).
ELEVATED_SEVERITY = 0.5


@dataclass(frozen=True)
class MonitorSettings:
    """Settings of the drift report and its checks; each name says what it bounds."""

    band_sigmas: float = 3.0  # a statistic alarms beyond mean + band_sigmas * sd of its reference chunks
    band_quantile: float | None = None  # instead: beyond this upper quantile of the reference chunks
    numeric_method: str = "wasserstein"  # the effect size deciding numeric alarms: wasserstein, ks or psi
    categorical_method: str = "jensenshannon"  # jensenshannon or psi
    min_effect: float = 0.03  # smallest normalized Wasserstein / KS distance worth an alarm (scores too)
    min_jensenshannon: float = 0.02  # smallest Jensen-Shannon distance worth an alarm
    min_psi: float = 0.02
    min_null_share_change: float = 0.02  # smallest change of a feature's null share worth an alarm
    min_drift_share: float = 0.0  # the drift share's band never ends below this share (0: calibrated alone)
    min_estimated_drop: float = 0.01  # the estimate's band is at least this wide below its mean
    detect_trends: bool = True  # features whose daily mean trends over the reference are judged on shape
    reference_period: str | None = None  # YYYY-MM-DD..YYYY-MM-DD; default: the champion's training window
    max_reference_days: int | None = 120  # the newest days of the reference period are its chunks
    max_performance_drop: float = 0.05  # realized accuracy / ROC AUC below the training-time value by more
    decay_alpha: float = 0.00135  # a realized drop must also be significant at this level (3 sd, one-sided)
    realized_window_days: int = 7  # labels of the last w days (up to the report's day) are pooled
    min_labels: int = 100  # fewer labels in the window: realized metrics reported, not judged
    use_cache: bool = True  # reuse the reference calibration cached under <data>/monitoring/reference/

    def calibration(self) -> CalibrationSettings:
        """The calibration settings these monitor settings imply."""
        from mlops_assets.monitoring.calibrate import NULL_SHARE, CalibrationSettings

        return CalibrationSettings(
            band_sigmas=self.band_sigmas,
            band_quantile=self.band_quantile,
            numeric_method=self.numeric_method,
            categorical_method=self.categorical_method,
            floors={
                "wasserstein": self.min_effect,
                "ks": self.min_effect,
                "psi": self.min_psi,
                "jensenshannon": self.min_jensenshannon,
                NULL_SHARE: self.min_null_share_change,
                "prediction": self.min_effect,
                "multivariate": 0.0,
                "estimate": self.min_estimated_drop,
            },
            min_drift_share=self.min_drift_share,
            detect_trends=self.detect_trends,
        )

    def period(self) -> tuple[str, str] | None:
        from mlops_assets.monitoring.reference import parse_period

        return parse_period(self.reference_period) if self.reference_period else None


@dataclass(frozen=True)
class Verdict:
    """One check's outcome over the days of a run: passed, severity, and the numbers behind it."""

    check: str
    passed: bool
    severity: str  # "WARN" or "ERROR"
    description: str
    failing_days: list[str] = field(default_factory=list)
    metadata: dict[str, Any] = field(default_factory=dict)
    skipped: bool = False
    elevated_days: list[str] = field(default_factory=list)  # ERROR checks: days neither quiet nor failing
