"""Classification metrics and the PNG plots shared by training runs and evaluation reports."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn import metrics as skm

METRIC_NAMES = ("accuracy", "precision", "recall", "f1", "roc_auc", "log_loss", "brier")


def classification_metrics(y_true: np.ndarray, proba: np.ndarray, threshold: float = 0.5) -> dict[str, float]:
    """Accuracy, precision, recall, F1 (at ``threshold``), ROC AUC, log loss and Brier score of churn scores."""
    y_true = np.asarray(y_true).astype(int)
    proba = np.clip(np.asarray(proba, dtype=float), 0.0, 1.0)
    pred = (proba >= threshold).astype(int)
    both_classes = len(np.unique(y_true)) == 2
    return {
        "accuracy": float(skm.accuracy_score(y_true, pred)),
        "precision": float(skm.precision_score(y_true, pred, zero_division=0)),
        "recall": float(skm.recall_score(y_true, pred, zero_division=0)),
        "f1": float(skm.f1_score(y_true, pred, zero_division=0)),
        "roc_auc": float(skm.roc_auc_score(y_true, proba)) if both_classes else float("nan"),
        "log_loss": float(skm.log_loss(y_true, proba, labels=[0, 1])),
        "brier": float(skm.brier_score_loss(y_true, proba)),
    }


def _figure():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_roc(curves: Sequence[tuple[str, np.ndarray, np.ndarray]], path: str | Path) -> Path:
    """ROC curves of (label, y_true, proba) triples, one PNG."""
    plt = _figure()
    fig, ax = plt.subplots(figsize=(5, 5))
    for label, y_true, proba in curves:
        fpr, tpr, _ = skm.roc_curve(y_true, proba)
        auc = skm.auc(fpr, tpr)
        ax.plot(fpr, tpr, label=f"{label} (AUC {auc:.3f})")
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=0.8)
    ax.set(xlabel="False positive rate", ylabel="True positive rate", title="ROC curve")
    ax.legend(loc="lower right")
    return _save(fig, plt, path)


def plot_calibration(
    curves: Sequence[tuple[str, np.ndarray, np.ndarray]], path: str | Path, n_bins: int = 10
) -> Path:
    """Reliability diagram (mean predicted vs observed churn per score bin), one PNG."""
    from sklearn.calibration import calibration_curve

    plt = _figure()
    fig, ax = plt.subplots(figsize=(5, 5))
    for label, y_true, proba in curves:
        observed, predicted = calibration_curve(y_true, proba, n_bins=n_bins, strategy="quantile")
        ax.plot(predicted, observed, marker="o", label=label)
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=0.8)
    ax.set(xlabel="Mean predicted churn probability", ylabel="Observed churn rate", title="Calibration")
    ax.legend(loc="upper left")
    return _save(fig, plt, path)


def plot_importance(importance: pd.DataFrame, path: str | Path) -> Path:
    """Horizontal bar chart of permutation importance (columns ``feature``, ``importance_mean``, ``importance_std``)."""
    plt = _figure()
    data = importance.sort_values("importance_mean")
    fig, ax = plt.subplots(figsize=(6, max(2.5, 0.3 * len(data) + 1)))
    ax.barh(data["feature"], data["importance_mean"], xerr=data["importance_std"], color="tab:blue")
    ax.set(xlabel="Drop in ROC AUC when the feature is shuffled", title="Permutation feature importance")
    return _save(fig, plt, path)


def _save(fig, plt, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
