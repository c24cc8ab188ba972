"""Quality metrics per task, trivial baselines, and the PNG plots shared by training runs and evaluations."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn import metrics as skm

CLASSIFICATION_METRICS = ("accuracy", "precision", "recall", "f1", "roc_auc", "pr_auc", "log_loss", "brier")
REGRESSION_METRICS = ("mae", "rmse", "r2", "mape")
#: Metrics a trivial baseline is judged on, per task (the model must beat it on each).
BASELINE_METRICS = {"binary_classification": ("log_loss", "brier"), "regression": ("mae",)}


def metric_names(task: str) -> tuple[str, ...]:
    return CLASSIFICATION_METRICS if task == "binary_classification" else REGRESSION_METRICS


def classification_metrics(y_true: np.ndarray, proba: np.ndarray, threshold: float = 0.5) -> dict[str, float]:
    """Accuracy, precision, recall, F1 (at ``threshold``), ROC AUC, PR AUC, log loss and Brier score."""
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
        "pr_auc": float(skm.average_precision_score(y_true, proba)) if both_classes else float("nan"),
        "log_loss": float(skm.log_loss(y_true, proba, labels=[0, 1])),
        "brier": float(skm.brier_score_loss(y_true, proba)),
        "base_rate": float(y_true.mean()) if len(y_true) else float("nan"),
    }


def regression_metrics(y_true: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """MAE, RMSE, R² and MAPE (MAPE only when no true value is 0; NaN otherwise)."""
    y_true = np.asarray(y_true, dtype=float)
    pred = np.asarray(pred, dtype=float)
    nonzero = np.all(y_true != 0)
    return {
        "mae": float(skm.mean_absolute_error(y_true, pred)),
        "rmse": float(np.sqrt(skm.mean_squared_error(y_true, pred))),
        "r2": float(skm.r2_score(y_true, pred)) if len(y_true) > 1 else float("nan"),
        "mape": float(skm.mean_absolute_percentage_error(y_true, pred))
        if nonzero and len(y_true)
        else float("nan"),
        "target_mean": float(y_true.mean()) if len(y_true) else float("nan"),
    }


def task_metrics(
    task: str, y_true: np.ndarray, scores: np.ndarray, threshold: float = 0.5
) -> dict[str, float]:
    if task == "binary_classification":
        return classification_metrics(y_true, scores, threshold)
    return regression_metrics(y_true, scores)


def baseline_scores(
    task: str,
    train: pd.DataFrame,
    holdout: pd.DataFrame,
    y_train: np.ndarray,
    y_holdout: np.ndarray,
    *,
    entity: str,
    time: str,
    observed: str,
) -> dict[str, np.ndarray]:
    """Trivial predictions for the holdout: the prior rate (classification); the training mean and each
    entity's last label observed strictly before the row's time (regression; the mean when there is none).

    ``observed`` is when a label became known (the labels source's timestamp): a label about a later
    period is not available at prediction time, so it never serves as a "last value".
    """
    if task == "binary_classification":
        rate = float(np.mean(y_train)) if len(y_train) else 0.5
        return {"prior": np.full(len(holdout), rate)}
    mean = float(np.mean(y_train)) if len(y_train) else 0.0
    history = pd.DataFrame(
        {
            "__key": np.concatenate([train[entity].to_numpy(), holdout[entity].to_numpy()]),
            "__seen": pd.to_datetime(
                np.concatenate([train[observed].to_numpy(), holdout[observed].to_numpy()]), utc=True
            ),
            "__y": np.concatenate([y_train, y_holdout]).astype(float),
        }
    ).sort_values("__seen", kind="stable")
    rows = pd.DataFrame(
        {
            "__key": holdout[entity].to_numpy(),
            "__t": pd.to_datetime(holdout[time], utc=True).to_numpy(),
            "__i": np.arange(len(holdout)),
        }
    ).sort_values("__t", kind="stable")
    joined = pd.merge_asof(
        rows,
        history,
        left_on="__t",
        right_on="__seen",
        by="__key",
        direction="backward",
        allow_exact_matches=False,
    ).sort_values("__i")
    return {
        "mean": np.full(len(holdout), mean),
        "last_value": joined["__y"].fillna(mean).to_numpy(dtype=float),
    }


def _figure():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_roc(curves: Sequence[tuple[str, np.ndarray, np.ndarray]], path: str | Path) -> Path:
    """ROC curves of (label, y_true, scores) triples, one PNG."""
    plt = _figure()
    fig, ax = plt.subplots(figsize=(5, 5))
    for label, y_true, proba in curves:
        if len(np.unique(y_true)) < 2:
            continue
        fpr, tpr, _ = skm.roc_curve(y_true, proba)
        ax.plot(fpr, tpr, label=f"{label} (AUC {skm.auc(fpr, tpr):.3f})")
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=0.8)
    ax.set(xlabel="False positive rate", ylabel="True positive rate", title="ROC curve")
    ax.legend(loc="lower right")
    return _save(fig, plt, path)


def plot_calibration(
    curves: Sequence[tuple[str, np.ndarray, np.ndarray]], path: str | Path, n_bins: int = 10
) -> Path:
    """Reliability diagram (mean predicted vs observed positive rate per score bin), one PNG."""
    from sklearn.calibration import calibration_curve

    plt = _figure()
    fig, ax = plt.subplots(figsize=(5, 5))
    for label, y_true, proba in curves:
        observed, predicted = calibration_curve(y_true, proba, n_bins=n_bins, strategy="quantile")
        ax.plot(predicted, observed, marker="o", label=label)
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=0.8)
    ax.set(xlabel="Mean predicted probability", ylabel="Observed positive rate", title="Calibration")
    ax.legend(loc="upper left")
    return _save(fig, plt, path)


def plot_residuals(curves: Sequence[tuple[str, np.ndarray, np.ndarray]], path: str | Path) -> Path:
    """Residual (actual - predicted) against predicted value, one PNG."""
    plt = _figure()
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    for label, y_true, pred in curves:
        ax.scatter(pred, np.asarray(y_true) - np.asarray(pred), s=6, alpha=0.4, label=label)
    ax.axhline(0.0, color="grey", linestyle="--", linewidth=0.8)
    ax.set(xlabel="Predicted", ylabel="Actual - predicted", title="Residuals")
    ax.legend(loc="upper right")
    return _save(fig, plt, path)


def plot_predicted_vs_actual(curves: Sequence[tuple[str, np.ndarray, np.ndarray]], path: str | Path) -> Path:
    """Predicted against actual values with the identity line, one PNG."""
    plt = _figure()
    fig, ax = plt.subplots(figsize=(5, 5))
    lo = min((float(np.min(y)) for _, y, _ in curves if len(y)), default=0.0)
    hi = max((float(np.max(y)) for _, y, _ in curves if len(y)), default=1.0)
    for label, y_true, pred in curves:
        ax.scatter(y_true, pred, s=6, alpha=0.4, label=label)
    ax.plot([lo, hi], [lo, hi], color="grey", linestyle="--", linewidth=0.8)
    ax.set(xlabel="Actual", ylabel="Predicted", title="Predicted vs actual")
    ax.legend(loc="upper left")
    return _save(fig, plt, path)


def task_plots(
    task: str, curves: Sequence[tuple[str, np.ndarray, np.ndarray]], folder: Path, stem: str
) -> dict[str, Path]:
    """The task's two diagnostic plots: ROC + calibration, or residuals + predicted vs actual."""
    if task == "binary_classification":
        return {
            "roc": plot_roc(curves, folder / f"{stem}_roc.png"),
            "calibration": plot_calibration(curves, folder / f"{stem}_calibration.png"),
        }
    return {
        "residuals": plot_residuals(curves, folder / f"{stem}_residuals.png"),
        "predicted_vs_actual": plot_predicted_vs_actual(curves, folder / f"{stem}_predicted_vs_actual.png"),
    }


def plot_importance(importance: pd.DataFrame, path: str | Path, metric: str = "score") -> Path:
    """Horizontal bar chart of permutation importance (columns ``feature``, ``importance_mean``, ``importance_std``)."""
    plt = _figure()
    data = importance.sort_values("importance_mean")
    fig, ax = plt.subplots(figsize=(6, max(2.5, 0.3 * len(data) + 1)))
    ax.barh(data["feature"], data["importance_mean"], xerr=data["importance_std"], color="tab:blue")
    ax.set(xlabel=f"Drop in {metric} when the feature is shuffled", title="Permutation feature importance")
    return _save(fig, plt, path)


def _save(fig, plt, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
