"""Evaluation report: challenger vs champion on the same holdout — quality, latency, bias, coverage, sanity."""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mlops_assets.ingestion.schema import AGE_GROUPS, PLANS, REGIONS
from mlops_assets.training.metrics import METRIC_NAMES, classification_metrics, plot_calibration, plot_roc
from mlops_assets.training.train import LABEL_COLUMN, churn_scores, model_inputs, single_thread

CHALLENGER = "challenger"
CHAMPION = "champion"

#: Values every segment attribute is expected to take (a segment missing from the holdout is uncovered).
KNOWN_SEGMENTS: dict[str, tuple[str, ...]] = {"plan": PLANS, "region": REGIONS, "age_group": AGE_GROUPS}

#: How a feature's value moves churn risk (+1: higher value, higher risk), by feature-name pattern.
RISK_DIRECTIONS: tuple[tuple[str, int], ...] = (
    (r"^days_since_last_(login|purchase)$", +1),
    (r"^(logins|total_purchases|total_spend)_\d+d$", -1),
    (r"^tickets_\d+d$", +1),
)


# How far (in churn probability) a high-risk golden row may score below its low-risk twin and still hold:
# moving one feature group to its 5th/95th percentile while the rest stay typical can leave a good model
# nearly flat (measured: 0.0372 vs 0.0400 for the login-only pair of a model with ROC AUC 0.84).
GOLDEN_TOLERANCE = 0.01


@dataclass(frozen=True)
class GoldenPair:
    """Two model-input rows whose order must hold: ``high_risk`` must score above ``low_risk``."""

    name: str
    high_risk: Mapping[str, Any]
    low_risk: Mapping[str, Any]


@dataclass(frozen=True)
class GoldenResult:
    """A directional expectation test: the high-risk row must not score below the low-risk row by more
    than ``tolerance`` (CheckList-style; 0 means strictly above)."""

    name: str
    high_risk_score: float
    low_risk_score: float
    tolerance: float = 0.0

    @property
    def passed(self) -> bool:
        return bool(self.high_risk_score - self.low_risk_score > -self.tolerance)


@dataclass
class EvaluationReport:
    """Everything the quality gates judge, with markdown and PNG renderings."""

    challenger_version: int | None
    champion_version: int | None
    n_holdout: int
    threshold: float
    metrics: dict[str, dict[str, float]]
    latency_ms: dict[str, dict[str, float]]
    fairness_groups: pd.DataFrame
    fairness: pd.DataFrame  # model, attribute, demographic_parity_difference, equal_opportunity_difference
    row_coverage: float
    segment_coverage: float
    uncovered_segments: list[str]
    golden: list[GoldenResult]
    curves: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict, repr=False)

    @property
    def has_champion(self) -> bool:
        return CHAMPION in self.metrics

    @property
    def test_coverage(self) -> float:
        """The weaker of row coverage and segment coverage."""
        return min(self.row_coverage, self.segment_coverage)

    @property
    def sanity_passed(self) -> bool:
        return bool(self.golden) and all(g.passed for g in self.golden)

    def bias_score(self, model: str = CHALLENGER) -> float:
        """Largest demographic-parity or equal-opportunity difference over the fairness attributes (NaN if none)."""
        rows = self.fairness[self.fairness["model"] == model]
        values = rows[["demographic_parity_difference", "equal_opportunity_difference"]].to_numpy(dtype=float)
        return float(np.nanmax(values)) if values.size and not np.isnan(values).all() else float("nan")

    def accuracy_drop(self) -> float | None:
        """Champion accuracy minus challenger accuracy (positive = challenger worse); None without champion."""
        if not self.has_champion:
            return None
        return self.metrics[CHAMPION]["accuracy"] - self.metrics[CHALLENGER]["accuracy"]

    def summary(self) -> dict[str, Any]:
        """Headline numbers as plain JSON-able values."""
        return {
            "challenger_version": self.challenger_version,
            "champion_version": self.champion_version,
            "n_holdout": self.n_holdout,
            **{f"challenger_{k}": v for k, v in self.metrics[CHALLENGER].items()},
            **({f"champion_{k}": v for k, v in self.metrics[CHAMPION].items()} if self.has_champion else {}),
            "accuracy_drop": self.accuracy_drop(),
            "p50_latency_ms": self.latency_ms[CHALLENGER]["p50"],
            "p99_latency_ms": self.latency_ms[CHALLENGER]["p99"],
            "bias_score": self.bias_score(),
            "row_coverage": self.row_coverage,
            "segment_coverage": self.segment_coverage,
            "test_coverage": self.test_coverage,
            "sanity_passed": self.sanity_passed,
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "summary": self.summary(),
            "metrics": self.metrics,
            "latency_ms": self.latency_ms,
            "fairness": self.fairness.to_dict(orient="records"),
            "fairness_groups": self.fairness_groups.to_dict(orient="records"),
            "uncovered_segments": self.uncovered_segments,
            "golden": [
                {
                    "name": g.name,
                    "high_risk_score": g.high_risk_score,
                    "low_risk_score": g.low_risk_score,
                    "tolerance": g.tolerance,
                    "passed": g.passed,
                }
                for g in self.golden
            ],
        }

    def to_markdown(self) -> str:
        """The report as markdown tables."""
        models = [m for m in (CHALLENGER, CHAMPION) if m in self.metrics]
        label = {
            CHALLENGER: f"challenger (v{self.challenger_version})",
            CHAMPION: f"champion (v{self.champion_version})",
        }
        lines = [
            f"# Evaluation: churn-model v{self.challenger_version}",
            "",
            f"Holdout rows: {self.n_holdout}; decision threshold {self.threshold}.",
            "",
        ]
        if not self.has_champion:
            lines += ["No champion yet: the challenger is judged on absolute thresholds only.", ""]
        lines += [
            "## Quality",
            "",
            "| metric | " + " | ".join(label[m] for m in models) + " |",
            "|---" * (len(models) + 1) + "|",
        ]
        for name in METRIC_NAMES:
            lines.append(f"| {name} | " + " | ".join(_fmt(self.metrics[m][name]) for m in models) + " |")
        lines += ["", "## Single-row latency (ms)", "", "| model | p50 | p99 |", "|---|---|---|"]
        for m in models:
            lines.append(
                f"| {label[m]} | {_fmt(self.latency_ms[m]['p50'])} | {_fmt(self.latency_ms[m]['p99'])} |"
            )
        lines += [
            "",
            "## Fairness",
            "",
            "| model | attribute | demographic parity difference | equal opportunity difference |",
            "|---|---|---|---|",
        ]
        for row in self.fairness.itertuples():
            lines.append(
                f"| {label[row.model]} | {row.attribute} | {_fmt(row.demographic_parity_difference)} | "
                f"{_fmt(row.equal_opportunity_difference)} |"
            )
        lines += [
            "",
            f"Bias score (challenger): {_fmt(self.bias_score())}",
            "",
            "## Coverage",
            "",
            f"- rows scored with complete features: {_fmt(self.row_coverage)}",
            f"- segments covered: {_fmt(self.segment_coverage)}"
            + (f" (uncovered: {', '.join(self.uncovered_segments)})" if self.uncovered_segments else ""),
            "",
            "## Golden-input sanity",
            "",
            f"Each high-risk row must score above its low-risk twin, or below it by less than "
            f"{_fmt(self.golden[0].tolerance if self.golden else 0.0)}.",
            "",
            "| case | high-risk score | low-risk score | holds |",
            "|---|---|---|---|",
        ]
        for g in self.golden:
            lines.append(
                f"| {g.name} | {_fmt(g.high_risk_score)} | {_fmt(g.low_risk_score)} | "
                f"{'yes' if g.passed else 'NO'} |"
            )
        if not self.golden:
            lines.append("| (no golden cases) | | | NO |")
        return "\n".join(lines) + "\n"

    def save(self, reports_dir: str | Path, stem: str | None = None) -> dict[str, Path]:
        """Write markdown, JSON, ROC and calibration PNGs under ``reports_dir`` (names contain ``evaluation``)."""
        reports_dir = Path(reports_dir)
        reports_dir.mkdir(parents=True, exist_ok=True)
        stem = stem or f"evaluation_v{self.challenger_version}"
        curves = [(name, y, p) for name, (y, p) in self.curves.items()]
        paths = {
            "markdown": reports_dir / f"{stem}.md",
            "json": reports_dir / f"{stem}.json",
            "roc": plot_roc(curves, reports_dir / f"{stem}_roc.png"),
            "calibration": plot_calibration(curves, reports_dir / f"{stem}_calibration.png"),
        }
        paths["markdown"].write_text(
            self.to_markdown()
            + f"\n![ROC]({paths['roc'].name})\n\n![Calibration]({paths['calibration'].name})\n"
        )
        paths["json"].write_text(json.dumps(self.to_dict(), indent=2, default=_json_default))
        return paths


def _fmt(value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:.4f}"


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    return str(value)


def group_rates(y_true: np.ndarray, y_pred: np.ndarray, groups: Sequence[Any]) -> pd.DataFrame:
    """Per group: rows, positive-prediction rate, actual positives and true-positive rate."""
    frame = pd.DataFrame(
        {
            "y": np.asarray(y_true).astype(int),
            "pred": np.asarray(y_pred).astype(int),
            "group": pd.Series(groups).astype(object).fillna("<missing>").to_numpy(),
        }
    )
    rows = []
    for group, part in frame.groupby("group", sort=True):
        positives = part[part["y"] == 1]
        rows.append(
            {
                "group": group,
                "n": len(part),
                "positive_rate": float(part["pred"].mean()),
                "positives": len(positives),
                "tpr": float(positives["pred"].mean()) if len(positives) else float("nan"),
            }
        )
    return pd.DataFrame(rows, columns=["group", "n", "positive_rate", "positives", "tpr"])


def fairness_differences(
    rates: pd.DataFrame, min_group_size: int = 50, min_group_positives: int = 20
) -> tuple[float, float]:
    """(demographic parity difference, equal opportunity difference): max minus min over large-enough groups."""
    big = rates[rates["n"] >= min_group_size]
    dpd = float(big["positive_rate"].max() - big["positive_rate"].min()) if len(big) >= 2 else float("nan")
    with_pos = rates[rates["positives"] >= min_group_positives]
    eod = float(with_pos["tpr"].max() - with_pos["tpr"].min()) if len(with_pos) >= 2 else float("nan")
    return dpd, eod


def measure_latency(model: Any, rows: pd.DataFrame, n_calls: int = 200, warmup: int = 5) -> dict[str, float]:
    """p50/p99/mean milliseconds of single-row ``predict_proba`` calls (threads capped at one, as in serving)."""
    if rows.empty:
        raise ValueError("latency needs at least one row")
    singles = [rows.iloc[[i % len(rows)]] for i in range(n_calls + warmup)]
    timings = []
    with single_thread():
        for i, row in enumerate(singles):
            start = time.perf_counter()
            model.predict_proba(row)
            if i >= warmup:
                timings.append((time.perf_counter() - start) * 1000.0)
    values = np.asarray(timings)
    return {
        "p50": float(np.percentile(values, 50)),
        "p99": float(np.percentile(values, 99)),
        "mean": float(values.mean()),
        "n": float(len(values)),
    }


def default_golden_pairs(
    reference: pd.DataFrame, numeric_features: Sequence[str], categorical_features: Sequence[str]
) -> list[GoldenPair]:
    """Engaged vs disengaged customers built from the reference data's 5th/95th percentiles.

    Features whose name matches :data:`RISK_DIRECTIONS` are pushed to the risky or the safe extreme;
    every other feature stays at its median (numeric) or most common value (categorical).
    """
    base: dict[str, Any] = {}
    for col in numeric_features:
        values = pd.to_numeric(reference[col], errors="coerce").dropna()
        base[col] = float(values.median()) if len(values) else float("nan")
    for col in categorical_features:
        mode = reference[col].dropna().mode()
        base[col] = str(mode.iloc[0]) if len(mode) else "missing"

    def direction(name: str) -> int:
        for pattern, sign in RISK_DIRECTIONS:
            if re.search(pattern, name):
                return sign
        return 0

    def pair(name: str, columns: list[str]) -> GoldenPair | None:
        high, low = dict(base), dict(base)
        moved = False
        for col in columns:
            sign = direction(col)
            values = pd.to_numeric(reference[col], errors="coerce").dropna()
            if not sign or values.empty:
                continue
            q05, q95 = float(values.quantile(0.05)), float(values.quantile(0.95))
            high[col], low[col] = (q95, q05) if sign > 0 else (q05, q95)
            moved = moved or q05 != q95
        return GoldenPair(name, high, low) if moved else None

    pairs = [
        pair("disengaged_vs_engaged", list(numeric_features)),
        pair("inactive_vs_active_logins", [c for c in numeric_features if "login" in c]),
    ]
    return [p for p in pairs if p is not None]


def check_golden(
    model: Any,
    pairs: Sequence[GoldenPair],
    numeric_features: Sequence[str],
    categorical_features: Sequence[str],
    tolerance: float = 0.0,
) -> list[GoldenResult]:
    """Score each pair; a result passes when the high-risk row scores above the low-risk row, or below
    it by less than ``tolerance`` (a model may ignore one feature group when the others are typical)."""
    results = []
    for p in pairs:
        frame = model_inputs(
            pd.DataFrame([dict(p.high_risk), dict(p.low_risk)]), numeric_features, categorical_features
        )
        scores = churn_scores(model, frame)
        results.append(GoldenResult(p.name, float(scores[0]), float(scores[1]), tolerance))
    return results


def coverage(
    holdout: pd.DataFrame,
    proba: np.ndarray,
    required_features: Sequence[str],
    segment_attributes: Sequence[str],
    expected_segments: Mapping[str, Sequence[str]] | None = None,
    min_segment_rows: int = 1,
) -> tuple[float, float, list[str]]:
    """(row coverage, segment coverage, uncovered segments).

    A row is covered when its required features are present and its score is finite; a segment
    (attribute = value) is covered when at least ``min_segment_rows`` of its rows are.
    """
    complete = np.isfinite(np.asarray(proba, dtype=float))
    for col in required_features:
        complete &= holdout[col].notna().to_numpy()
    row_cov = float(complete.mean()) if len(complete) else 0.0
    expected = dict(KNOWN_SEGMENTS) | dict(expected_segments or {})
    segments, uncovered = 0, []
    for attr in segment_attributes:
        values = set(holdout[attr].dropna().astype(str)) | set(expected.get(attr, ()))
        for value in sorted(values):
            segments += 1
            mask = (holdout[attr].astype(object) == value).to_numpy()
            if int((complete & mask).sum()) < min_segment_rows:
                uncovered.append(f"{attr}={value}")
    seg_cov = 1.0 - len(uncovered) / segments if segments else 1.0
    return row_cov, seg_cov, uncovered


def evaluate(
    challenger: Any,
    champion: Any | None,
    holdout: pd.DataFrame,
    *,
    numeric_features: Sequence[str],
    categorical_features: Sequence[str],
    fairness_attributes: Sequence[str] = ("age_group", "region"),
    required_features: Sequence[str] | None = None,
    segment_attributes: Sequence[str] | None = None,
    expected_segments: Mapping[str, Sequence[str]] | None = None,
    golden_pairs: Sequence[GoldenPair] | None = None,
    golden_tolerance: float = GOLDEN_TOLERANCE,
    champion_features: tuple[Sequence[str], Sequence[str]] | None = None,
    challenger_version: int | None = None,
    champion_version: int | None = None,
    threshold: float = 0.5,
    latency_calls: int = 200,
    min_group_size: int = 50,
    min_group_positives: int = 20,
    min_segment_rows: int = 1,
) -> EvaluationReport:
    """Score challenger (and champion, when there is one) on the same holdout and collect every gate input.

    ``required_features`` (default: the categorical features) must be non-null for a row to count as
    scored with complete features; numeric features may be legitimately null (no purchase → no order value).
    Fairness differences only compare groups with at least ``min_group_size`` rows (parity) or
    ``min_group_positives`` churners (equal opportunity), so small-sample noise does not read as bias.
    """
    numeric_features, categorical_features = list(numeric_features), list(categorical_features)
    if holdout.empty:
        raise ValueError("the holdout is empty")
    y = holdout[LABEL_COLUMN].astype(int).to_numpy()
    models: dict[str, tuple[Any, pd.DataFrame]] = {
        CHALLENGER: (challenger, model_inputs(holdout, numeric_features, categorical_features))
    }
    if champion is not None:
        num, cat = champion_features or (numeric_features, categorical_features)
        models[CHAMPION] = (champion, model_inputs(holdout, list(num), list(cat)))

    metrics, latency, curves, fairness_rows, group_rows = {}, {}, {}, [], []
    for name, (model, inputs) in models.items():
        proba = churn_scores(model, inputs)
        curves[name] = (y, proba)
        metrics[name] = classification_metrics(y, proba, threshold)
        latency[name] = measure_latency(model, inputs, n_calls=latency_calls)
        pred = (proba >= threshold).astype(int)
        for attr in fairness_attributes:
            rates = group_rates(y, pred, holdout[attr].to_numpy())
            dpd, eod = fairness_differences(rates, min_group_size, min_group_positives)
            fairness_rows.append(
                {
                    "model": name,
                    "attribute": attr,
                    "demographic_parity_difference": dpd,
                    "equal_opportunity_difference": eod,
                }
            )
            group_rows.append(rates.assign(model=name, attribute=attr))

    _, challenger_proba = curves[CHALLENGER]
    segment_attributes = list(
        segment_attributes
        if segment_attributes is not None
        else [*categorical_features, *[a for a in fairness_attributes if a not in categorical_features]]
    )
    row_cov, seg_cov, uncovered = coverage(
        holdout,
        challenger_proba,
        required_features if required_features is not None else categorical_features,
        segment_attributes,
        expected_segments,
        min_segment_rows,
    )
    pairs = (
        golden_pairs
        if golden_pairs is not None
        else default_golden_pairs(holdout, numeric_features, categorical_features)
    )
    golden = check_golden(challenger, pairs, numeric_features, categorical_features, golden_tolerance)
    return EvaluationReport(
        challenger_version=challenger_version,
        champion_version=champion_version if champion is not None else None,
        n_holdout=len(holdout),
        threshold=threshold,
        metrics=metrics,
        latency_ms=latency,
        fairness_groups=pd.concat(group_rows, ignore_index=True) if group_rows else pd.DataFrame(),
        fairness=pd.DataFrame(
            fairness_rows,
            columns=["model", "attribute", "demographic_parity_difference", "equal_opportunity_difference"],
        ),
        row_coverage=row_cov,
        segment_coverage=seg_cov,
        uncovered_segments=uncovered,
        golden=golden,
        curves=curves,
    )
