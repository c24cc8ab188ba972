"""One day of model monitoring against calibrated bands: the monitored population's features and the champion's
scores against the same population over a reference period, estimated and realized performance, and the verdicts
the drift_report checks report (no Dagster here).

* **Reference**: the monitored population's daily snapshots over the champion's training window (the days of
  its logged training set, after the model's warm-up), or the period given in ``reference_period``; see
  :mod:`mlops_assets.monitoring.reference`. Each reference day is a chunk; every statistic's band comes from
  the variation of that statistic across the chunks (:mod:`mlops_assets.monitoring.calibrate`), computed once
  per champion and reference and cached.
* **Current population of day D**: the spec's monitored population (``monitoring.population``): every
  entity with a record in the named event sources within ``active_within`` days up to D, with the
  features as of D+1 00:00 UTC read through the feature store, within each view's TTL, exactly as
  reference days are read.
* **Alarms**: a feature drifts when its effect size (normalized Wasserstein for numeric features,
  Jensen-Shannon for categorical ones, or the method asked for) or the change of its null share leaves
  its band; the dataset drifts when the share of drifted features leaves its own band, or the
  multivariate reconstruction error leaves its band; the estimated (CBPE) accuracy / ROC AUC drops when
  it falls below the band of the reference chunks' estimates. P-values (KS, chi-squared) are reported as
  information only.
* **Realized performance**: the labels of days D-w+1..D joined point-in-time to the features as of each
  label's timestamp (as in the training set), scored by the champion, next to the CBPE estimate on the
  same rows; a drop counts when it exceeds ``max_performance_drop`` and the sampling noise of both the
  training-time holdout and the window (``decay_alpha``).
"""

from __future__ import annotations

import json
import math
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import date, timedelta
from typing import Any

import numpy as np
import pandas as pd

from mlops_assets.features.store import FeatureStore
from mlops_assets.monitoring.calibrate import (
    Band,
    Calibration,
    DayComparison,
    compare_day,
    toward_edge,
)
from mlops_assets.monitoring.estimate import (
    PerformanceEstimate,
    estimate_performance,
    expected_accuracy,
    expected_roc_auc,
    realized_metrics,
)
from mlops_assets.monitoring.policy import (  # noqa: F401 - re-exported: the checks and their settings
    CHECK_NAMES,
    DATASET_DRIFT_CHECK,
    ELEVATED_SEVERITY,
    ERROR_CHECKS,
    ESTIMATED_PERFORMANCE_CHECK,
    FEATURE_DRIFT_CHECK,
    MULTIVARIATE_DRIFT_CHECK,
    REALIZED_PERFORMANCE_CHECK,
    MonitorSettings,
    Verdict,
)
from mlops_assets.project import Project
from mlops_assets.training.task import ModelTask

#: Metrics compared with their training-time values, per task.
TASK_PERFORMANCE_METRICS = {"binary_classification": ("accuracy", "roc_auc"), "regression": ("mae",)}
PERFORMANCE_METRICS = TASK_PERFORMANCE_METRICS["binary_classification"]

TRAINING_SET_ARTIFACT = "training_set/training_set.parquet"


class MonitoringInputError(RuntimeError):
    """The inputs of a day's drift report are missing (feature partitions not materialized, ...)."""


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

    @property
    def is_classification(self) -> bool:
        return self.task is None or self.task.is_classification

    def score(self, frame: pd.DataFrame) -> np.ndarray:
        """The champion's scores on rows holding its features."""
        from mlops_assets.training.train import model_inputs, predict_scores

        if frame.empty:
            return np.empty(0)
        return predict_scores(
            self.model, model_inputs(frame, self.numeric_features, self.categorical_features)
        )

    def training_rows(self) -> pd.DataFrame:
        """The rows the champion was trained and evaluated on (labels after the model's warm-up)."""
        return self.task.trainable(self.reference) if self.task is not None else self.reference

    def estimate_metrics(self) -> dict[str, Callable[[np.ndarray], float]]:
        """CBPE estimators of one chunk's scores (none for regression)."""
        if not self.is_classification:
            return {}
        threshold = self.threshold

        def accuracy(scores: np.ndarray) -> float:
            return expected_accuracy(scores, threshold) if scores.size else math.nan

        def roc_auc(scores: np.ndarray) -> float:
            return expected_roc_auc(scores) if scores.size else math.nan

        return {"accuracy": accuracy, "roc_auc": roc_auc}


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
    frames, _ = population_features(store, [day], features)
    return frames[day]


def population_features(
    store: FeatureStore, days: Sequence[str], features: Sequence[str]
) -> tuple[dict[str, pd.DataFrame], int]:
    """Each day's monitored population with the given features as of D+1 00:00 UTC, read in one pass."""
    from mlops_assets.features.tiles import FeatureInputError
    from mlops_assets.monitoring.reference import snapshot_frame

    ids = {d: current_population(store, d) for d in days}
    empty = [d for d, found in ids.items() if not found]
    if empty:
        raise MonitoringInputError(
            f"no entity of the monitored population on {', '.join(empty[:5])}; ingest the sources first"
        )
    try:
        frame, chunks = snapshot_frame(store, ids, list(features))
    except FeatureInputError as exc:
        raise MonitoringInputError(str(exc)) from exc
    bounds = np.searchsorted(chunks, np.arange(len(days) + 1))
    return {d: frame.iloc[bounds[i] : bounds[i + 1]].reset_index(drop=True) for i, d in enumerate(days)}, len(
        frame
    )


def labelled_features(store: FeatureStore, days: Sequence[str], features: Sequence[str]) -> pd.DataFrame:
    """Labels of ``days`` joined point-in-time to the features as of each label's time (as in the training set)."""
    labels = store.load_labels(list(days))
    if labels.empty:
        return labels
    return store.get_historical_features(
        labels, list(features), timestamp_column=store.project.target_timestamp
    )


def load_calibration(
    store: FeatureStore, champion: ChampionReference, settings: MonitorSettings, log=None
) -> Calibration:
    """The champion's calibrated reference (cached under ``<data>/monitoring/reference/``)."""
    from mlops_assets.monitoring.reference import load_or_calibrate

    try:
        return load_or_calibrate(
            store,
            champion,
            settings.calibration(),
            period=settings.period(),
            max_days=settings.max_reference_days,
            estimate_metrics=champion.estimate_metrics(),
            use_cache=settings.use_cache,
            log=log,
        )
    except ValueError as exc:
        raise MonitoringInputError(f"cannot build the reference period: {exc}") from exc


@dataclass
class DailyDrift:
    """Everything the drift report of one day found."""

    day: str
    champion_version: int
    comparison: DayComparison
    calibration: Calibration = field(repr=False)
    estimate: PerformanceEstimate | None
    estimated_drops: dict[str, float]  # metric -> drop below the band's mean (positive = worse)
    estimate_alarms: list[str]  # metrics whose estimate is below its band
    estimate_edges: dict[str, tuple]  # metric -> (lower, center, upper) of its band on this day
    realized: dict[str, float] | None
    realized_decay: Decay | None
    realized_days: list[str]
    realized_note: str
    estimated_on_labels: dict[str, float] | None  # CBPE on the scores of the labelled rows, beside realized
    training_metrics: dict[str, float]
    current: pd.DataFrame = field(repr=False)
    current_scores: np.ndarray = field(repr=False)

    @property
    def in_reference(self) -> bool:
        return self.day in set(self.calibration.days)

    @property
    def drifted_features(self) -> list[str]:
        return self.comparison.drifted_features

    @property
    def alarms(self) -> list[str]:
        """The ERROR checks failing on this day."""
        out = []
        if self.comparison.drift_alarm:
            out.append(DATASET_DRIFT_CHECK)
        if self.comparison.multivariate_alarm:
            out.append(MULTIVARIATE_DRIFT_CHECK)
        if self.estimate_alarms:
            out.append(ESTIMATED_PERFORMANCE_CHECK)
        if self.realized_decay is not None and self.realized_decay.decayed:
            out.append(REALIZED_PERFORMANCE_CHECK)
        return out

    @property
    def severities(self) -> dict[str, float]:
        """How far each judged ERROR statistic is from its band's center toward its alarm edge (1 at the edge, at
        most 10)."""

        c = self.comparison
        out = {DATASET_DRIFT_CHECK: c.drift_share_band.severity(c.drift_share, c.t)}
        if c.severe_share_band is not None:
            out[DATASET_DRIFT_CHECK] = max(
                out[DATASET_DRIFT_CHECK], c.severe_share_band.severity(c.severe_share, c.t)
            )
        if c.multivariate_error is not None and c.multivariate_edges is not None:
            lower, upper = c.multivariate_edges
            out[MULTIVARIATE_DRIFT_CHECK] = toward_edge(
                c.multivariate_error, lower, c.multivariate_band.center(c.t), upper
            )
        drops = [
            self.estimated_drops[m] / max(center - lower, 1e-12)
            for m, (lower, center, _) in self.estimate_edges.items()
            if lower is not None and m in self.estimated_drops
        ]
        if drops:
            out[ESTIMATED_PERFORMANCE_CHECK] = max(drops)
        decay = self.realized_decay
        if decay is not None and decay.drops:
            out[REALIZED_PERFORMANCE_CHECK] = max(
                decay.drops[m] / max(decay.limits[m], 1e-12) for m in decay.drops
            )
        # capped at 10: a band of zero width (no reference chunk had a drifted feature) makes any share infinite
        return {k: min(float(v), 10.0) for k, v in out.items() if math.isfinite(v)}

    @property
    def elevated(self) -> list[str]:
        """The ERROR checks not failing on this day whose statistic is not clearly quiet (at least
        ELEVATED_SEVERITY of the way to its alarm edge): they keep an open alarm episode open."""
        alarms = set(self.alarms)
        return [k for k, v in self.severities.items() if v >= ELEVATED_SEVERITY and k not in alarms]

    def summary(self) -> dict[str, Any]:
        """Headline numbers, JSON-ready."""

        def num(value):
            if value is None:
                return None
            value = float(value)
            return value if math.isfinite(value) else None

        est = self.estimate
        c = self.comparison
        pred = c.prediction
        return {
            "day": self.day,
            "champion_version": self.champion_version,
            "current_rows": c.current_rows,
            "reference_rows": c.reference_rows,
            "reference_days": [self.calibration.days[0], self.calibration.days[-1]],
            "day_in_reference": self.in_reference,
            "drift_share": c.drift_share,
            "drift_share_threshold": num(c.drift_share_upper),
            "drift_share_band": c.drift_share_band.to_dict(),
            "dataset_drift": c.dataset_drift,
            "drift_share_alarm": c.drift_alarm,
            "drifted_features": c.drifted_features,
            "worst_features": [f.feature for f in c.tested[:5]],
            "multivariate_error": num(c.multivariate_error),
            "multivariate_lower": num(c.multivariate_edges[0]) if c.multivariate_edges else None,
            "multivariate_upper": num(c.multivariate_edges[1]) if c.multivariate_edges else None,
            "multivariate_alarm": c.multivariate_alarm,
            "prediction_drift": bool(pred.drifted) if pred else False,
            "prediction_statistic": num(pred.statistic) if pred else None,
            "prediction_threshold": num(pred.threshold) if pred else None,
            "prediction_p_value": num(pred.p_value) if pred else None,
            "estimated_accuracy": num(est.accuracy) if est else None,
            "estimated_roc_auc": num(est.roc_auc) if est else None,
            "estimate_bands": {
                m: {"lower": num(lo), "center": num(ce), "upper": num(up)}
                for m, (lo, ce, up) in self.estimate_edges.items()
            },
            "estimate_alarms": list(self.estimate_alarms),
            "realized_accuracy": num(self.realized.get("accuracy")) if self.realized else None,
            "realized_roc_auc": num(self.realized.get("roc_auc")) if self.realized else None,
            "realized_mae": num(self.realized.get("mae")) if self.realized else None,
            "estimated_accuracy_on_labels": num((self.estimated_on_labels or {}).get("accuracy")),
            "estimated_roc_auc_on_labels": num((self.estimated_on_labels or {}).get("roc_auc")),
            "training_mae": num(self.training_metrics.get("mae")),
            "realized_labels": int(self.realized["n"]) if self.realized else 0,
            "realized_days": self.realized_days,
            "training_accuracy": num(self.training_metrics.get("accuracy")),
            "training_roc_auc": num(self.training_metrics.get("roc_auc")),
            "alarms": self.alarms,
            "elevated": self.elevated,
            "severities": {k: round(v, 4) for k, v in self.severities.items()},
        }


def _estimate_alarms(
    estimate: PerformanceEstimate | None, bands: dict[str, Band], t: float | None
) -> tuple[dict[str, float], list[str], dict[str, tuple]]:
    """Drops of the estimate below its band's center, the metrics below the band, and the band at ``t``."""
    if estimate is None:
        return {}, [], {}
    drops, alarms, edges = {}, [], {}
    for metric, band in bands.items():
        value = getattr(estimate, metric, None)
        if value is None or not math.isfinite(value) or not math.isfinite(band.mean):
            continue
        lower, upper = band.edges(t)
        center = band.center(t)
        edges[metric] = (lower, center, upper)
        drops[metric] = center - value
        if lower is not None and value < lower:
            alarms.append(metric)
    return drops, alarms, edges


def monitor_days(
    store: FeatureStore,
    champion: ChampionReference,
    days: Sequence[str],
    settings: MonitorSettings | None = None,
    calibration: Calibration | None = None,
    log=None,
) -> list[DailyDrift]:
    """The drift report of each of ``days`` against the champion's calibrated reference (read in one pass)."""
    settings = settings or MonitorSettings()
    days = list(days)
    calibration = calibration or load_calibration(store, champion, settings, log=log)
    features = champion.features
    frames, _ = population_features(store, days, features)
    classification = champion.is_classification

    window = settings.realized_window_days
    label_days = sorted({d for day in days for d in window_days(day, window)})
    labelled = labelled_features(store, label_days, features)
    if labelled.empty:
        label_scores, y_all, observed_day = np.empty(0), np.empty(0), np.empty(0, dtype=object)
    else:
        label_scores = champion.score(labelled)
        y_all = champion.task.target_values(labelled)
        observed = pd.to_datetime(labelled[store.observed_column], utc=True)
        observed_day = observed.dt.strftime("%Y-%m-%d").to_numpy()

    results = []
    for day in days:
        current = frames[day]
        scores = champion.score(current)
        comparison = compare_day(calibration, current, scores, day)
        estimate = (
            estimate_performance(scores, champion.threshold) if scores.size and classification else None
        )
        drops, estimate_alarms, estimate_edges = _estimate_alarms(
            estimate, calibration.estimate_bands, comparison.t
        )

        in_window = window_days(day, window)
        mask = np.isin(observed_day, in_window) if observed_day.size else np.zeros(0, dtype=bool)
        realized = realized_decay = on_labels = None
        if not mask.any():
            note = f"no labels on {in_window[0]}..{day}"
        else:
            y, s = y_all[mask], label_scores[mask]
            if classification:
                realized = realized_metrics(y, s, champion.threshold)
                est = estimate_performance(s, champion.threshold)
                on_labels = {"accuracy": est.accuracy, "roc_auc": est.roc_auc}
            else:
                errors = np.abs(y - s)
                realized = {
                    "mae": float(errors.mean()),
                    "n": len(y),
                    "mae_se": float(errors.std(ddof=1) / np.sqrt(len(y))) if len(y) > 1 else 0.0,
                }
            if realized["n"] < settings.min_labels:
                note = (
                    f"{realized['n']} labels on {in_window[0]}..{day}, fewer than "
                    f"min_labels={settings.min_labels}: not judged"
                )
            else:
                note = f"{realized['n']} labels on {in_window[0]}..{day}"
                if champion.training_metrics:
                    realized_decay = judge_decay(
                        champion.training_metrics,
                        champion.training_counts,
                        realized,
                        (len(y), int(y.sum())) if classification else None,
                        settings,
                    )
        results.append(
            DailyDrift(
                day=day,
                champion_version=champion.version,
                comparison=comparison,
                calibration=calibration,
                estimate=estimate,
                estimated_drops=drops,
                estimate_alarms=estimate_alarms,
                estimate_edges=estimate_edges,
                realized=realized,
                realized_decay=realized_decay,
                realized_days=in_window,
                realized_note=note,
                estimated_on_labels=on_labels,
                training_metrics=dict(champion.training_metrics),
                current=current,
                current_scores=scores,
            )
        )
    return results


def daily_drift(
    store: FeatureStore,
    champion: ChampionReference,
    day: str,
    settings: MonitorSettings | None = None,
    calibration: Calibration | None = None,
) -> DailyDrift:
    """Data, prediction and concept drift of day ``day`` against the champion's calibrated reference."""
    return monitor_days(store, champion, [day], settings, calibration)[0]


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


def _drops_text(decay: Decay) -> str:
    return ", ".join(f"{m} drop {d:+.4f} (fails above {decay.limits[m]:.4f})" for m, d in decay.drops.items())


def judge(results: Sequence[DailyDrift], settings: MonitorSettings) -> list[Verdict]:
    """The drift_report checks over the days of one run (a check fails when it fails on any day)."""
    if not results:
        return skipped_verdicts("no day was evaluated")
    last = results[-1]
    verdicts = []

    flagged = {
        r.day: r.drifted_features
        + (["prediction"] if r.comparison.prediction and r.comparison.prediction.drifted else [])
        for r in results
    }
    bad = [d for d, names in flagged.items() if names]
    worst = max(results, key=lambda r: max((f.severity for f in r.comparison.tested), default=0.0))
    top = worst.comparison.tested[0] if worst.comparison.tested else None
    verdicts.append(
        Verdict(
            FEATURE_DRIFT_CHECK,
            not bad,
            "WARN",
            (
                f"{len(bad)} of {len(results)} day(s) with features beyond their calibrated band; "
                f"{bad[-1]}: {', '.join(flagged[bad[-1]])}"
                if bad
                else f"no feature beyond its calibrated band on {len(results)} day(s)"
            )
            + (
                f" (worst: {top.feature} on {worst.day}, {top.test} {top.statistic:.4f}, severity "
                f"{top.severity:.2f} of its band)"
                if top is not None and top.statistic is not None
                else ""
            ),
            bad,
            {
                "drifted_by_day": {d: flagged[d] for d in bad},
                "band_rule": settings.calibration().rule(),
                "methods": {"numeric": settings.numeric_method, "categorical": settings.categorical_method},
            },
        )
    )

    bad = [r.day for r in results if r.comparison.drift_alarm]
    worst = max(
        results, key=lambda r: (r.comparison.drift_alarm, r.comparison.drift_share, r.comparison.severe_share)
    )
    c = worst.comparison
    band = c.drift_share_band
    tested = c.tested
    exceeded = c.drift_share > c.drift_share_upper
    severe = c.severe_share_band
    verdicts.append(
        Verdict(
            DATASET_DRIFT_CHECK,
            not bad,
            "ERROR",
            f"worst day {worst.day}: drift share {c.drift_share:.3f} "
            f"({len(worst.drifted_features)} of {len(tested)} judged features) "
            f"{'>' if exceeded else '<='} its band's upper edge {c.drift_share_upper:.3f} ({band.rule})"
            + (
                f"; {round(c.severe_share * len(tested))} feature(s) at {c.severe_level:g}x their band's distance "
                f"or more, above that share's edge {severe.edges(c.t)[1]:.3f} ({severe.rule})"
                if c.severe_alarm and severe is not None
                else ""
            ),
            bad,
            {
                "drift_share_upper": c.drift_share_upper,
                "worst_drift_share": c.drift_share,
                "worst_day": worst.day,
                "band": band.to_dict(),
                "severe_share": c.severe_share,
                "severe_share_band": severe.to_dict() if severe is not None else None,
            },
        )
    )

    judged = [r for r in results if r.comparison.multivariate_error is not None]
    if not judged:
        verdicts.append(
            Verdict(
                MULTIVARIATE_DRIFT_CHECK,
                True,
                "ERROR",
                "skipped: fewer than two judged input columns for the reconstruction model",
                skipped=True,
            )
        )
    else:
        bad = [r.day for r in judged if r.comparison.multivariate_alarm]
        worst = max(
            judged,
            key=lambda r: abs(
                r.comparison.multivariate_band.severity(r.comparison.multivariate_error, r.comparison.t)
            ),
        )
        band = worst.comparison.multivariate_band
        lower, upper = worst.comparison.multivariate_edges
        verdicts.append(
            Verdict(
                MULTIVARIATE_DRIFT_CHECK,
                not bad,
                "ERROR",
                f"worst day {worst.day}: PCA reconstruction error {worst.comparison.multivariate_error:.4f} "
                f"{'outside' if worst.comparison.multivariate_alarm else 'within'} "
                f"[{lower:.4f}, {upper:.4f}] on that day ({band.rule})",
                bad,
                {
                    "worst_day": worst.day,
                    "error": worst.comparison.multivariate_error,
                    "band": band.to_dict(),
                },
            )
        )

    estimated = [r for r in results if r.estimate is not None and r.calibration.estimate_bands]
    if not estimated:
        verdicts.append(
            Verdict(
                ESTIMATED_PERFORMANCE_CHECK,
                True,
                "ERROR",
                "skipped: no performance estimate (a regression model, or no scores)",
                skipped=True,
            )
        )
    else:
        bad = [r.day for r in estimated if r.estimate_alarms]
        day = next((r for r in reversed(estimated) if r.estimate_alarms), estimated[-1])
        parts = []
        for metric, (lower, center, _) in day.estimate_edges.items():
            value = getattr(day.estimate, metric)
            parts.append(
                f"estimated {metric} {value:.4f} vs {center:.4f} expected from the reference chunks "
                f"(alarm below {lower:.4f})"
            )
        verdicts.append(
            Verdict(
                ESTIMATED_PERFORMANCE_CHECK,
                not bad,
                "ERROR",
                f"{day.day}: "
                + "; ".join(parts)
                + (f"; {len(bad)} of {len(estimated)} day(s) failed" if bad else ""),
                bad,
                {
                    "day": day.day,
                    "drops": day.estimated_drops,
                    "bands": {m: b.to_dict() for m, b in day.calibration.estimate_bands.items()},
                },
            )
        )

    judged = [(r.day, r.realized_decay) for r in results if r.realized_decay is not None]
    if not judged:
        verdicts.append(
            Verdict(
                REALIZED_PERFORMANCE_CHECK,
                True,
                "ERROR",
                f"skipped: {last.realized_note}",
                skipped=True,
                metadata={"max_performance_drop": settings.max_performance_drop},
            )
        )
    else:
        bad = [d for d, decay in judged if decay.decayed]
        day, decay = next(((d, x) for d, x in reversed(judged) if x.decayed), judged[-1])
        verdicts.append(
            Verdict(
                REALIZED_PERFORMANCE_CHECK,
                not bad,
                "ERROR",
                f"{day}: {_drops_text(decay)} vs training-time holdout metrics "
                f"({'>' if decay.decayed else '<='} max_performance_drop {settings.max_performance_drop} "
                f"and the sampling noise)"
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
    elevated = {r.day: set(r.elevated) for r in results}
    return [
        replace(v, elevated_days=[d for d, checks in elevated.items() if v.check in checks])
        if v.severity == "ERROR" and not v.skipped
        else v
        for v in verdicts
    ]


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
