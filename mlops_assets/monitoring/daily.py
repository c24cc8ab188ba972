"""One day of model monitoring: the champion's reference, the day's population, drift, estimated and realized
performance, and the verdicts the drift_report checks report (no Dagster here).

* **Reference**: the champion's own training set, as logged with its MLflow run (the exact rows it was
  trained and held out on); when that artifact is missing, the stored training set restricted to labels up
  to the run's end. Prediction drift compares against the champion's scores on the reference's holdout rows
  (scores on rows the model was fitted on are more confident than on new data).
* **Current population of day D**: the spec's monitored population (``monitoring.population``): every
  entity with a record in the named event sources within ``active_within`` days up to D, with the
  features as of D+1 00:00 UTC read through the feature store, within each view's TTL, exactly as
  training rows are joined to their labels.
* **Realized performance**: the labels of days D-w+1..D joined point-in-time to the features as of each
  label's timestamp (as in the training set), scored by the champion.
* **Concept drift / decay**: realized (and estimated) accuracy and ROC AUC against the champion's
  training-time holdout metrics from its MLflow run.

Multiple testing: with m features tested at alpha each, a day without drift flags about ``alpha * m``
features. By default each feature's p-value test runs at ``alpha / m`` (Bonferroni), so the chance that
a no-drift day flags any feature at all is at most ``alpha``.
"""

from __future__ import annotations

import json
import math
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mlops_assets.features.store import FeatureStore
from mlops_assets.monitoring.drift import (
    DriftReport,
    DriftThresholds,
    FeatureDrift,
    compute_drift,
    prediction_drift,
)
from mlops_assets.monitoring.estimate import (
    PerformanceEstimate,
    estimate_performance,
    realized_metrics,
)
from mlops_assets.monitoring.report import plot_feature, render_markdown, save_drift_report
from mlops_assets.project import Project
from mlops_assets.training.task import ModelTask

#: Names of the drift_report checks.
FEATURE_DRIFT_CHECK = "feature_drift"
DATASET_DRIFT_CHECK = "dataset_drift_share"
ESTIMATED_PERFORMANCE_CHECK = "estimated_performance_drop"
REALIZED_PERFORMANCE_CHECK = "realized_performance_drop"
CHECK_NAMES = (
    FEATURE_DRIFT_CHECK,
    DATASET_DRIFT_CHECK,
    ESTIMATED_PERFORMANCE_CHECK,
    REALIZED_PERFORMANCE_CHECK,
)
#: Checks whose failure means the model degraded (ERROR severity; they trigger retraining).
ERROR_CHECKS = (DATASET_DRIFT_CHECK, ESTIMATED_PERFORMANCE_CHECK, REALIZED_PERFORMANCE_CHECK)
#: Metrics compared with their training-time values, per task.
TASK_PERFORMANCE_METRICS = {"binary_classification": ("accuracy", "roc_auc"), "regression": ("mae",)}
PERFORMANCE_METRICS = TASK_PERFORMANCE_METRICS["binary_classification"]

TRAINING_SET_ARTIFACT = "training_set/training_set.parquet"


class MonitoringInputError(RuntimeError):
    """The inputs of a day's drift report are missing (feature partitions not materialized, ...)."""


@dataclass(frozen=True)
class MonitorSettings:
    """Thresholds of the drift report and its checks; each name says what it bounds."""

    alpha: float = 0.05  # family-wise false-alarm rate of the per-feature tests on a no-drift day
    bonferroni: bool = True  # test each of m features at alpha / m (False: at alpha)
    numeric_method: str = "ks"  # ks, wasserstein or psi
    categorical_method: str = "chi2"  # chi2, jensenshannon or psi
    psi_threshold: float = 0.2
    wasserstein_threshold: float = 0.1
    jensenshannon_threshold: float = 0.1
    max_drift_share: float = 0.3  # dataset drift when this share of the features drifted (or more)
    prediction_alpha: float = 0.05  # the score distribution is one test: no correction
    max_performance_drop: float = 0.05  # accuracy / ROC AUC below training-time holdout value by more
    decay_alpha: float = 0.05  # a drop must also be significant at this level (both sides' sampling noise)
    realized_window_days: int = 7  # labels of the last w days (up to the report's day) are pooled
    min_labels: int = 100  # fewer labels in the window: realized metrics reported, not judged

    def thresholds(self, n_features: int) -> DriftThresholds:
        """Per-feature drift thresholds for ``n_features`` tested features."""
        per_test = self.alpha / max(n_features, 1) if self.bonferroni else self.alpha
        return DriftThresholds(
            ks_alpha=per_test,
            chi2_alpha=per_test,
            psi=self.psi_threshold,
            wasserstein=self.wasserstein_threshold,
            jensenshannon=self.jensenshannon_threshold,
            drift_share=self.max_drift_share,
        )


@dataclass(frozen=True)
class ChampionReference:
    """The champion model with everything a drift report compares against."""

    version: int
    run_id: str
    model: Any
    numeric_features: list[str]
    categorical_features: list[str]
    threshold: float
    training_metrics: dict[str, float]  # holdout accuracy / roc_auc logged with the champion's run
    training_counts: tuple[int, int]  # holdout rows and positives behind those metrics
    reference: pd.DataFrame  # training-set rows
    reference_source: str
    reference_scores: np.ndarray
    reference_scores_source: str
    task: ModelTask | None = None

    @property
    def features(self) -> list[str]:
        """The champion's input features, numeric then categorical."""
        return [*self.numeric_features, *self.categorical_features]

    def score(self, frame: pd.DataFrame) -> np.ndarray:
        """The champion's scores on rows holding its features."""
        from mlops_assets.training.train import model_inputs, predict_scores

        if frame.empty:
            return np.empty(0)
        return predict_scores(
            self.model, model_inputs(frame, self.numeric_features, self.categorical_features)
        )


def _read_run_training_set(client, run_id: str) -> pd.DataFrame | None:
    from mlflow.artifacts import download_artifacts

    try:
        with tempfile.TemporaryDirectory(prefix="mlops-reference-") as tmp:
            local = download_artifacts(
                run_id=run_id,
                artifact_path=TRAINING_SET_ARTIFACT,
                dst_path=tmp,
                tracking_uri=client.tracking_uri,
            )
            return pd.read_parquet(local)
    except Exception:  # the artifact store may lack the file (older runs); the caller falls back
        return None


def load_champion_reference(project: Project, tracking=None) -> ChampionReference | None:
    """The champion (hash-verified) with its reference data and training-time metrics; None without champion.

    Raises :class:`~mlops_assets.training.tracking.RegistryUnavailable` (creating nothing) when the MLflow
    store is missing, unreadable or unreachable.
    """
    from mlops_assets.training import registry
    from mlops_assets.training.tracking import TrackingConfig, registry_client

    task = ModelTask.from_project(project)
    tracking = tracking or TrackingConfig.for_project(project)
    client = registry_client(tracking)
    mv = registry.alias_version(client, registry.CHAMPION, tracking.model_name)
    if mv is None:
        return None
    loaded = registry.load_model_version(
        client, mv.version, model_name=tracking.model_name, alias=registry.CHAMPION
    )
    run = client.get_run(mv.run_id)
    params, metrics = run.data.params, run.data.metrics
    numeric = json.loads(params.get("numeric_features", "[]"))
    categorical = json.loads(params.get("categorical_features", "[]"))

    reference = _read_run_training_set(client, mv.run_id)
    source = f"training set logged with run {mv.run_id[:8]} ({TRAINING_SET_ARTIFACT})"
    if reference is None:
        stored, _ = FeatureStore(project).read_training_set()
        end = pd.Timestamp(run.info.end_time or run.info.start_time, unit="ms", tz="UTC")
        reference = stored.loc[stored[task.time] <= end].reset_index(drop=True)
        source = f"stored training set, labels up to the run's end {end.isoformat()}"
    holdout_start = params.get("holdout_start")
    scored = reference
    scores_source = "all reference rows"
    if holdout_start:
        holdout = reference.loc[reference[task.time] >= pd.Timestamp(holdout_start)]
        if len(holdout):
            scored, scores_source = holdout, f"the {len(holdout)} holdout rows (labels from {holdout_start})"
    model_champion = ChampionReference(
        version=int(mv.version),
        run_id=mv.run_id,
        model=loaded.model,
        numeric_features=numeric,
        categorical_features=categorical,
        threshold=float(params.get("threshold", 0.5)),
        training_metrics={
            m: float(metrics[f"holdout_{m}"])
            for m in TASK_PERFORMANCE_METRICS[task.kind]
            if f"holdout_{m}" in metrics
        },
        training_counts=(
            int(params.get("n_holdout", 0)),
            round(float(metrics.get("holdout_base_rate", 0.0)) * int(params.get("n_holdout", 0))),
        ),
        reference=reference,
        reference_source=source,
        reference_scores=np.empty(0),
        reference_scores_source=scores_source,
        task=task,
    )
    return replace(model_champion, reference_scores=model_champion.score(scored))


def window_days(day: str, n: int) -> list[str]:
    """The ``n`` days ending with ``day``, oldest first."""
    end = date.fromisoformat(day)
    return [(end - timedelta(days=i)).isoformat() for i in range(n - 1, -1, -1)]


def current_population(store: FeatureStore, day: str) -> list:
    """Entity keys of the spec's monitored population on ``day`` (see the module docstring)."""
    project = store.project
    population = project.spec.monitoring.population
    key = project.target_entity.join_key
    sources = list(population.sources) or [
        n for n in project.sources_of_kind("events") if key in project.source(n).columns
    ]
    window = population.active_within or 36500
    end = date.fromisoformat(day)
    first = max(end - timedelta(days=window - 1), project.spec.partitions.start)
    days = [(first + timedelta(days=i)).isoformat() for i in range((end - first).days + 1)]
    ids: set = set()
    for source in sources:
        for day_ids in store.entities_of_days(source, key, days):
            ids.update(day_ids)
    ids.discard(None)
    return sorted(ids)


def current_features(store: FeatureStore, day: str, features: Sequence[str]) -> pd.DataFrame:
    """The day's population with the given features, as of D+1 00:00 UTC."""
    from mlops_assets.features.tiles import FeatureInputError

    ids = current_population(store, day)
    if not ids:
        raise MonitoringInputError(
            f"no entity of the monitored population on {day}; ingest the sources first"
        )
    try:
        return store.features_at(day, ids, list(features))
    except FeatureInputError as exc:
        raise MonitoringInputError(str(exc)) from exc


def labelled_features(store: FeatureStore, days: Sequence[str], features: Sequence[str]) -> pd.DataFrame:
    """Labels of ``days`` joined point-in-time to the features as of each label's time (as in the training set)."""
    labels = store.load_labels(list(days))
    if labels.empty:
        return labels
    return store.get_historical_features(
        labels, list(features), timestamp_column=store.project.target_timestamp
    )


@dataclass
class DailyDrift:
    """Everything the drift report of one day found."""

    day: str
    champion_version: int
    report: DriftReport
    prediction: FeatureDrift
    estimate: PerformanceEstimate | None
    estimated_decay: Decay | None
    realized: dict[str, float] | None
    realized_decay: Decay | None
    realized_days: list[str]
    realized_note: str
    training_metrics: dict[str, float]
    current: pd.DataFrame = field(repr=False)
    current_scores: np.ndarray = field(repr=False)

    def summary(self) -> dict[str, Any]:
        """Headline numbers, JSON-ready."""

        def num(value):
            return None if value is None or (isinstance(value, float) and not math.isfinite(value)) else value

        est = self.estimate
        return {
            "day": self.day,
            "champion_version": self.champion_version,
            "current_rows": self.report.current_rows,
            "reference_rows": self.report.reference_rows,
            "drift_share": self.report.drift_share,
            "dataset_drift": self.report.dataset_drift,
            "drifted_features": self.report.drifted_features,
            "prediction_drift": self.prediction.drifted,
            "prediction_p_value": num(self.prediction.p_value),
            "estimated_accuracy": num(est.accuracy) if est else None,
            "estimated_roc_auc": num(est.roc_auc) if est else None,
            "realized_accuracy": num(self.realized.get("accuracy")) if self.realized else None,
            "realized_roc_auc": num(self.realized.get("roc_auc")) if self.realized else None,
            "realized_mae": num(self.realized.get("mae")) if self.realized else None,
            "training_mae": num(self.training_metrics.get("mae")),
            "realized_labels": int(self.realized["n"]) if self.realized else 0,
            "realized_days": self.realized_days,
            "training_accuracy": num(self.training_metrics.get("accuracy")),
            "training_roc_auc": num(self.training_metrics.get("roc_auc")),
        }


def daily_drift(
    store: FeatureStore, champion: ChampionReference, day: str, settings: MonitorSettings | None = None
) -> DailyDrift:
    """Data, prediction and concept drift of day ``day`` against the champion's reference."""
    settings = settings or MonitorSettings()
    features = champion.features
    current = current_features(store, day, features)
    report = compute_drift(
        champion.reference,
        current,
        columns=features,
        categorical=champion.categorical_features,
        thresholds=settings.thresholds(len(features)),
        numeric_method=settings.numeric_method,
        categorical_method=settings.categorical_method,
    )
    scores = champion.score(current)
    prediction = prediction_drift(
        champion.reference_scores,
        scores,
        DriftThresholds(
            ks_alpha=settings.prediction_alpha,
            psi=settings.psi_threshold,
            wasserstein=settings.wasserstein_threshold,
        ),
    )
    classification = champion.task is None or champion.task.is_classification
    estimate = estimate_performance(scores, champion.threshold) if scores.size and classification else None
    estimated_decay = (
        judge_decay(champion.training_metrics, champion.training_counts, estimate.to_dict(), None, settings)
        if estimate is not None and champion.training_metrics
        else None
    )

    days = window_days(day, settings.realized_window_days)
    labelled = labelled_features(store, days, features)
    realized = realized_decay = None
    if labelled.empty:
        note = f"no labels on {days[0]}..{day}"
    else:
        y = champion.task.target_values(labelled)
        if classification:
            realized = realized_metrics(y, champion.score(labelled), champion.threshold)
        else:
            errors = np.abs(y - champion.score(labelled))
            realized = {
                "mae": float(errors.mean()),
                "n": len(y),
                "mae_se": float(errors.std(ddof=1) / np.sqrt(len(y))) if len(y) > 1 else 0.0,
            }
        if realized["n"] < settings.min_labels:
            note = f"{realized['n']} labels on {days[0]}..{day}, fewer than min_labels={settings.min_labels}: not judged"
        else:
            note = f"{realized['n']} labels on {days[0]}..{day}"
            if champion.training_metrics:
                realized_decay = judge_decay(
                    champion.training_metrics,
                    champion.training_counts,
                    realized,
                    (len(y), int(y.sum())),
                    settings,
                )
    return DailyDrift(
        day=day,
        champion_version=champion.version,
        report=report,
        prediction=prediction,
        estimate=estimate,
        estimated_decay=estimated_decay,
        realized=realized,
        realized_decay=realized_decay,
        realized_days=days,
        realized_note=note,
        training_metrics=dict(champion.training_metrics),
        current=current,
        current_scores=scores,
    )


# --------------------------------------------------------------------------- performance decay


def metric_standard_error(metric: str, value: float, n: int, n_pos: int) -> float:
    """Sampling standard error of an accuracy (binomial) or ROC AUC (Hanley & McNeil 1982) on n rows."""
    if n <= 0 or not math.isfinite(value):
        return math.nan
    if metric == "accuracy":
        return math.sqrt(max(value * (1.0 - value), 0.0) / n)
    n_neg = n - n_pos
    if n_pos <= 0 or n_neg <= 0:
        return math.nan
    q1, q2 = value / (2.0 - value), 2.0 * value**2 / (1.0 + value)
    var = (value * (1 - value) + (n_pos - 1) * (q1 - value**2) + (n_neg - 1) * (q2 - value**2)) / (
        n_pos * n_neg
    )
    return math.sqrt(max(var, 0.0))


@dataclass(frozen=True)
class Decay:
    """Drops of accuracy / ROC AUC from training time, the drop each must exceed to fail, and the verdict."""

    decayed: bool
    drops: dict[str, float]  # positive = worse than at training time
    limits: dict[str, float]  # max(max_performance_drop, z * standard error of the drop)
    standard_errors: dict[str, float]
    decayed_metrics: list[str]


def judge_decay(
    training: dict[str, float],
    training_counts: tuple[int, int],
    current: dict[str, float],
    current_counts: tuple[int, int] | None,
    settings: MonitorSettings,
) -> Decay:
    """A metric decayed when its drop exceeds max_performance_drop *and* is significant at decay_alpha.

    The drop's standard error combines the training-time holdout's sampling error with the current
    value's (realized metrics; an estimate from scores has none of its own here). On a day without
    decay the check therefore fails with probability at most decay_alpha per metric, however few
    holdout rows or labels there are, and a failure always means a drop of at least max_performance_drop.
    """
    from statistics import NormalDist

    z = NormalDist().inv_cdf(1.0 - settings.decay_alpha)
    drops, limits, errors = {}, {}, {}
    for m in ("accuracy", "roc_auc", "mae"):
        before, after = training.get(m), current.get(m)
        if before is None or after is None or not (math.isfinite(before) and math.isfinite(after)):
            continue
        if m == "mae":  # an error metric: higher is worse; its sampling error comes with the realized value
            var = float(current.get("mae_se", 0.0)) ** 2
            drop = after - before
            floor = settings.max_performance_drop * abs(
                before
            )  # a relative drop for an error in target units
        else:
            var = metric_standard_error(m, before, *training_counts) ** 2
            if current_counts is not None:
                var += metric_standard_error(m, after, *current_counts) ** 2
            drop, floor = before - after, settings.max_performance_drop
        se = math.sqrt(var) if math.isfinite(var) else 0.0
        drops[m], errors[m] = drop, se
        limits[m] = max(floor, z * se)
    failed = [m for m in drops if drops[m] > limits[m]]
    return Decay(bool(failed), drops, limits, errors, failed)


# --------------------------------------------------------------------------- verdicts


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


def _drops_text(decay: Decay) -> str:
    return ", ".join(f"{m} drop {d:+.4f} (fails above {decay.limits[m]:.4f})" for m, d in decay.drops.items())


def judge(results: Sequence[DailyDrift], settings: MonitorSettings) -> list[Verdict]:
    """The four drift_report checks over the days of one run (a check fails when it fails on any day)."""
    if not results:
        return skipped_verdicts("no day was evaluated")
    last = results[-1]
    verdicts = []

    flagged = {
        r.day: r.report.drifted_features + (["prediction"] if r.prediction.drifted else []) for r in results
    }
    bad = [d for d, names in flagged.items() if names]
    per_test = last.report.thresholds.ks_alpha
    verdicts.append(
        Verdict(
            FEATURE_DRIFT_CHECK,
            not bad,
            "WARN",
            (
                f"{len(bad)} of {len(results)} day(s) with drifted features; {bad[-1]}: {', '.join(flagged[bad[-1]])}"
                if bad
                else f"no feature drifted on {len(results)} day(s)"
            )
            + f" (p-value tests at {per_test:.2g} per feature{' (Bonferroni)' if settings.bonferroni else ''})",
            bad,
            {"drifted_by_day": {d: flagged[d] for d in bad}, "per_feature_alpha": per_test},
        )
    )

    bad = [r.day for r in results if r.report.dataset_drift]
    worst = max(results, key=lambda r: r.report.drift_share)
    verdicts.append(
        Verdict(
            DATASET_DRIFT_CHECK,
            not bad,
            "ERROR",
            f"worst day {worst.day}: drift share {worst.report.drift_share:.3f} "
            f"({len(worst.report.drifted_features)} of {len(worst.report.features)} features) "
            f"{'>=' if worst.report.dataset_drift else '<'} max_drift_share {settings.max_drift_share}",
            bad,
            {
                "max_drift_share": settings.max_drift_share,
                "worst_drift_share": worst.report.drift_share,
                "worst_day": worst.day,
            },
        )
    )

    for check, attr in (
        (ESTIMATED_PERFORMANCE_CHECK, "estimated_decay"),
        (REALIZED_PERFORMANCE_CHECK, "realized_decay"),
    ):
        judged = [(r.day, getattr(r, attr)) for r in results if getattr(r, attr) is not None]
        if not judged:
            reason = (
                last.realized_note
                if check == REALIZED_PERFORMANCE_CHECK
                else "no scores or no training-time metrics to compare with"
            )
            verdicts.append(
                Verdict(
                    check,
                    True,
                    "ERROR",
                    f"skipped: {reason}",
                    skipped=True,
                    metadata={"max_performance_drop": settings.max_performance_drop},
                )
            )
            continue
        bad = [d for d, decay in judged if decay.decayed]
        day, decay = next(((d, x) for d, x in reversed(judged) if x.decayed), judged[-1])
        verdicts.append(
            Verdict(
                check,
                not bad,
                "ERROR",
                f"{day}: {_drops_text(decay)} vs training-time holdout metrics "
                f"({'>' if decay.decayed else '<='} max_performance_drop {settings.max_performance_drop})"
                + (f"; {len(bad)} of {len(judged)} judged day(s) failed" if len(judged) > 1 else ""),
                bad,
                {
                    "max_performance_drop": settings.max_performance_drop,
                    "drops": decay.drops,
                    "fail_above": decay.limits,
                    "standard_errors": decay.standard_errors,
                    "day": day,
                },
            )
        )
    return verdicts


def skipped_verdicts(reason: str) -> list[Verdict]:
    """Every check passed as skipped, with the reason (e.g. no champion yet)."""
    return [
        Verdict(
            name, True, "WARN" if name == FEATURE_DRIFT_CHECK else "ERROR", f"skipped: {reason}", skipped=True
        )
        for name in CHECK_NAMES
    ]


def degradation_alert(
    verdicts: Sequence[Verdict],
    champion_version: int | None,
    days: Sequence[str],
    dagster_run_id: str | None = None,
):
    """An alert naming each failed ERROR check, or None when none failed."""
    from mlops_assets.training.alerts import Alert

    failed = [v for v in verdicts if not v.passed and v.severity == "ERROR"]
    if not failed:
        return None
    span = days[0] if len(days) == 1 else f"{days[0]}..{days[-1]}"
    return Alert(
        kind="model_degradation",
        title=f"drift_report {span}: {len(failed)} degradation check(s) failed for champion v{champion_version}",
        message="; ".join(f"{v.check}: {v.description}" for v in failed),
        details={
            "days": list(days),
            "champion_version": champion_version,
            "dagster_run_id": dagster_run_id,
            "checks": [
                {"check": v.check, "failing_days": v.failing_days, "description": v.description}
                for v in failed
            ],
        },
    )


# --------------------------------------------------------------------------- rendering


def _num(value: float | None, digits: int = 4) -> str:
    return (
        "–"
        if value is None or (isinstance(value, float) and not math.isfinite(value))
        else f"{value:.{digits}f}"
    )


def performance_markdown(result: DailyDrift) -> str:
    """Training-time vs estimated vs realized accuracy and ROC AUC, and the prediction drift row."""
    est = result.estimate.to_dict() if result.estimate else {}
    real = result.realized or {}
    lines = [
        "| metric | training (holdout) | estimated (CBPE) | realized | estimated drop | realized drop |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for m in [m for m in ("accuracy", "roc_auc", "mae") if m in result.training_metrics or m in real]:
        e_drop = result.estimated_decay.drops.get(m) if result.estimated_decay else None
        r_drop = result.realized_decay.drops.get(m) if result.realized_decay else None
        lines.append(
            f"| {m} | {_num(result.training_metrics.get(m))} | {_num(est.get(m))} | {_num(real.get(m))} | "
            f"{_num(e_drop)} | {_num(r_drop)} |"
        )
    p = result.prediction
    lines += [
        "",
        f"Realized: {result.realized_note}.",
        "",
        f"Prediction drift ({p.test}): statistic {_num(p.statistic)}, p-value {_num(p.p_value)}, "
        f"{'**drifted**' if p.drifted else 'no drift'} ({p.reference_count} reference vs "
        f"{p.current_count} current scores).",
    ]
    return "\n".join(lines)


def embedded_images(paths: dict[str, Path], names: Sequence[str]) -> str:
    """PNG histograms as markdown images with base64 data URIs (the Dagster UI renders ``data:`` images)."""
    import base64

    return "\n".join(
        f"![{n}](data:image/png;base64,{base64.b64encode(paths[n].read_bytes()).decode()})"
        for n in names
        if n in paths
    )


@dataclass(frozen=True)
class SavedDay:
    """Files written for one day's drift report."""

    markdown_path: Path
    json_path: Path
    image_paths: dict[str, Path]


HISTOGRAM_MODES = ("drifted", "all", "none")


def save_day_report(
    result: DailyDrift,
    champion: ChampionReference,
    reports_dir: str | Path,
    histograms: str = "drifted",
    max_histograms: int | None = None,
) -> SavedDay:
    """Write ``drift_report_<day>.md/.json`` and PNG histograms: of the drifted features and the scores
    (``drifted``, the default: one plot costs ~0.1-0.4 s), of every feature (``all``), or none;
    at most ``max_histograms`` feature plots (the first ones in feature order)."""
    from mlops_assets.storage import write_file_atomic

    if histograms not in HISTOGRAM_MODES:
        raise ValueError(f"histograms must be one of {HISTOGRAM_MODES}, got {histograms!r}")
    name = f"drift_report_{result.day}"
    plotted = {"all": champion.features, "drifted": result.report.drifted_features, "none": []}[histograms]
    plotted = list(plotted)[:max_histograms] if max_histograms is not None else list(plotted)
    saved = save_drift_report(
        result.report,
        champion.reference[plotted],
        result.current[plotted],
        reports_dir,
        name=name,
        histograms=bool(plotted),
    )
    images = dict(saved.image_paths)
    if histograms != "none" and result.current_scores.size and champion.reference_scores.size:
        png = plot_feature(
            pd.Series(champion.reference_scores), pd.Series(result.current_scores), result.prediction
        )
        images["prediction"] = write_file_atomic(png, Path(reports_dir) / f"{name}_prediction.png")
    markdown = (
        render_markdown(result.report, saved.image_paths)
        + "\n## Performance\n\n"
        + performance_markdown(result)
        + "\n"
    )
    if "prediction" in images:
        markdown += f"\n![prediction]({images['prediction'].name})\n"
    write_file_atomic(markdown.encode(), saved.markdown_path)
    payload = {
        **result.report.to_dict(),
        "summary": result.summary(),
        "prediction": result.prediction.to_dict(),
        "estimate": result.estimate.to_dict() if result.estimate else None,
    }
    write_file_atomic(json.dumps(payload, indent=2, default=str).encode(), saved.json_path)
    return SavedDay(saved.markdown_path, saved.json_path, images)
