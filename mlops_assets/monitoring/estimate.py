"""Performance estimation before labels arrive (confidence-based), realized metrics, and decay checks.

When a classifier's probabilities ``p`` are calibrated, each row's label is a Bernoulli(p) draw, so
the model's expected performance on a day can be computed from its scores alone (the idea behind
NannyML's CBPE):

* expected accuracy at threshold t: a row predicted positive (``p >= t``) is right with probability
  ``p``, one predicted negative with probability ``1 - p``; the estimate is the mean of those, which
  at t = 0.5 is ``mean(max(p, 1 - p))``. Its sampling standard deviation around the realized
  accuracy is ``sqrt(sum(c * (1 - c))) / n`` with c the per-row probability of being right.
* expected ROC AUC: the area under the expected ROC curve, where at each score cut-off the expected
  true positives are the sum of ``p`` above it and the expected false positives the sum of
  ``1 - p`` (ties counted half, as in the usual trapezoidal AUC). This is the ROC AUC of the rows
  weighted ``p`` as positives and ``1 - p`` as negatives.

The estimate is only as good as the calibration, and it cannot see concept drift (a change of
P(label | features)); it is the number to watch until the labels arrive, then
:func:`realized_metrics` replaces it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np

#: Metrics where a larger value is better.
HIGHER_IS_BETTER = frozenset({"accuracy", "roc_auc", "f1", "precision", "recall", "average_precision"})
#: Metrics where a smaller value is better.
LOWER_IS_BETTER = frozenset({"log_loss", "brier_score", "mae", "mse", "rmse"})


@dataclass(frozen=True)
class PerformanceEstimate:
    """Expected accuracy and ROC AUC of a day's predictions, from calibrated probabilities."""

    accuracy: float
    roc_auc: float
    accuracy_std: float  # sampling std of the realized accuracy around the estimate
    threshold: float
    n: int

    def to_dict(self) -> dict[str, float]:
        """Plain fields."""
        return asdict(self)


def _probabilities(p: Sequence[float] | np.ndarray) -> np.ndarray:
    values = np.asarray(p, dtype="float64").ravel()
    if values.size == 0:
        raise ValueError("no probabilities given")
    if not np.all(np.isfinite(values)) or values.min() < 0.0 or values.max() > 1.0:
        raise ValueError("probabilities must be finite and within [0, 1]")
    return values


def expected_accuracy(p: Sequence[float] | np.ndarray, threshold: float = 0.5) -> float:
    """Expected accuracy of predicting ``p >= threshold`` when labels are Bernoulli(p)."""
    values = _probabilities(p)
    return float(np.mean(np.where(values >= threshold, values, 1.0 - values)))


def expected_roc_auc(p: Sequence[float] | np.ndarray) -> float:
    """Area under the expected ROC curve when labels are Bernoulli(p); NaN if all p are 0 or all 1."""
    values = _probabilities(p)
    scores, inverse = np.unique(values, return_inverse=True)  # ascending distinct scores
    pos = np.bincount(inverse, weights=values, minlength=scores.size)  # expected positives per score
    neg = np.bincount(inverse, weights=1.0 - values, minlength=scores.size)
    total_pos, total_neg = pos.sum(), neg.sum()
    if total_pos <= 0.0 or total_neg <= 0.0:
        return math.nan
    neg_below = np.cumsum(neg) - neg  # expected negatives with a strictly lower score
    concordant = np.sum(pos * (neg_below + 0.5 * neg))
    return float(concordant / (total_pos * total_neg))


def estimate_performance(p: Sequence[float] | np.ndarray, threshold: float = 0.5) -> PerformanceEstimate:
    """Expected accuracy (with its sampling std) and ROC AUC from calibrated probabilities."""
    values = _probabilities(p)
    correct = np.where(values >= threshold, values, 1.0 - values)
    return PerformanceEstimate(
        accuracy=float(correct.mean()),
        roc_auc=expected_roc_auc(values),
        accuracy_std=float(np.sqrt(np.sum(correct * (1.0 - correct))) / values.size),
        threshold=threshold,
        n=int(values.size),
    )


def realized_metrics(
    y: Sequence[int] | np.ndarray, p: Sequence[float] | np.ndarray, threshold: float = 0.5
) -> dict[str, float]:
    """Accuracy and ROC AUC (NaN with a single class) of probabilities against true labels."""
    labels = np.asarray(y).ravel().astype("int64")
    values = _probabilities(p)
    if labels.size != values.size:
        raise ValueError(f"{labels.size} labels but {values.size} probabilities")
    if not np.isin(labels, (0, 1)).all():
        raise ValueError("labels must be 0 or 1")
    accuracy = float(np.mean((values >= threshold).astype("int64") == labels))
    n_pos = int(labels.sum())
    n_neg = labels.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return {"accuracy": accuracy, "roc_auc": math.nan, "n": int(labels.size)}
    scores, inverse = np.unique(values, return_inverse=True)
    pos = np.bincount(inverse, weights=labels, minlength=scores.size)
    neg = np.bincount(inverse, weights=1 - labels, minlength=scores.size)
    auc = np.sum(pos * (np.cumsum(neg) - neg + 0.5 * neg)) / (n_pos * n_neg)
    return {"accuracy": accuracy, "roc_auc": float(auc), "n": int(labels.size)}


def compare_performance(
    estimated: PerformanceEstimate | Mapping[str, float], realized: Mapping[str, float]
) -> dict:
    """Estimated vs realized value of each shared metric, with the error (realized - estimated)."""
    est = estimated.to_dict() if isinstance(estimated, PerformanceEstimate) else dict(estimated)
    out = {}
    for metric in ("accuracy", "roc_auc"):
        if metric in est and metric in realized:
            e, r = float(est[metric]), float(realized[metric])
            out[metric] = {"estimated": e, "realized": r, "error": r - e}
    if "accuracy" in out and est.get("accuracy_std"):
        out["accuracy"]["error_in_std"] = out["accuracy"]["error"] / float(est["accuracy_std"])
    return out


@dataclass(frozen=True)
class PerformanceDecay:
    """Drop of each metric from its training-time value, and whether any drop exceeds its limit."""

    decayed: bool
    drops: dict[str, float]  # positive = worse than at training time
    max_drop: dict[str, float]
    decayed_metrics: list[str]

    def to_dict(self) -> dict:
        """Plain fields."""
        return asdict(self)


def performance_decay(
    training_metrics: Mapping[str, float],
    current_metrics: Mapping[str, float] | PerformanceEstimate,
    max_drop: float | Mapping[str, float],
) -> PerformanceDecay:
    """Compare realized or estimated metrics with training-time ones; decayed when a drop exceeds max_drop.

    Drops are absolute differences, signed so that positive means worse (``LOWER_IS_BETTER`` metrics
    are flipped). Only metrics present on both sides with a finite value are compared: with a
    mapping ``max_drop``, the metrics it names; with a number, the known metrics
    (``HIGHER_IS_BETTER`` and ``LOWER_IS_BETTER``).
    """
    current = (
        current_metrics.to_dict() if isinstance(current_metrics, PerformanceEstimate) else current_metrics
    )
    names = [m for m in training_metrics if m in current]
    if isinstance(max_drop, Mapping):
        names = [m for m in names if m in max_drop]
        limits = {m: float(max_drop[m]) for m in names}
    else:
        names = [m for m in names if m in HIGHER_IS_BETTER or m in LOWER_IS_BETTER]
        limits = {m: float(max_drop) for m in names}
    drops: dict[str, float] = {}
    for m in names:
        before, after = float(training_metrics[m]), float(current[m])
        if not (math.isfinite(before) and math.isfinite(after)):
            continue
        drops[m] = (after - before) if m in LOWER_IS_BETTER else (before - after)
    decayed_metrics = [m for m, d in drops.items() if d > limits[m]]
    return PerformanceDecay(
        decayed=bool(decayed_metrics),
        drops=drops,
        max_drop={m: limits[m] for m in drops},
        decayed_metrics=decayed_metrics,
    )
