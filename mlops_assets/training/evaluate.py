"""Evaluation report: challenger vs champion vs trivial baselines on the same holdout — quality, overfitting,
latency measured interleaved, fairness over the spec's sensitive attributes, coverage of the observed segments,
and the spec's golden cases. No Dagster here.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mlops_assets.spec.model import GoldenCase
from mlops_assets.training.metrics import BASELINE_METRICS, metric_names, task_metrics, task_plots
from mlops_assets.training.task import HIGHER_IS_BETTER, ModelTask
from mlops_assets.training.train import model_inputs, predict_scores, single_thread

CHALLENGER = "challenger"
CHAMPION = "champion"


@dataclass(frozen=True)
class GoldenResult:
    """One golden case: its score and whether it meets the spec's expectation."""

    name: str
    score: float
    passed: bool
    expectation: str


@dataclass
class EvaluationReport:
    """Everything the quality gates judge, with markdown and JSON renderings."""

    task: str
    metric: str  # the champion-comparison metric
    model_name: str
    challenger_version: int | None
    champion_version: int | None
    n_holdout: int
    threshold: float
    metrics: dict[str, dict[str, float]]  # challenger, champion, baseline:<name>
    train_metrics: dict[str, float]  # the challenger on its own training rows
    latency_ms: dict[str, dict[str, float]]
    fairness: pd.DataFrame  # model, attribute, groups, score, detail
    fairness_note: str
    row_coverage: float
    segment_coverage: float
    uncovered_segments: list[str]
    segments_checked: int
    golden: list[GoldenResult]
    curves: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict, repr=False)

    @property
    def has_champion(self) -> bool:
        return CHAMPION in self.metrics

    @property
    def higher_is_better(self) -> bool:
        return self.metric in HIGHER_IS_BETTER

    @property
    def test_coverage(self) -> float:
        return min(self.row_coverage, self.segment_coverage)

    @property
    def baselines(self) -> dict[str, dict[str, float]]:
        return {k.split(":", 1)[1]: v for k, v in self.metrics.items() if k.startswith("baseline:")}

    def metric_drop(self) -> float | None:
        """How much worse the challenger is than the champion on the comparison metric (None without champion)."""
        if not self.has_champion:
            return None
        a, b = self.metrics[CHALLENGER][self.metric], self.metrics[CHAMPION][self.metric]
        return (b - a) if self.higher_is_better else (a - b)

    def overfit_gap(self) -> float | None:
        """Train minus holdout on the comparison metric, signed so that positive means better on training rows."""
        train, holdout = self.train_metrics.get(self.metric), self.metrics[CHALLENGER].get(self.metric)
        if train is None or holdout is None or not (math.isfinite(train) and math.isfinite(holdout)):
            return None
        return (train - holdout) if self.higher_is_better else (holdout - train)

    def bias_score(self, model: str = CHALLENGER) -> float | None:
        rows = self.fairness[self.fairness["model"] == model] if len(self.fairness) else self.fairness
        values = (
            [float(v) for v in rows["score"].tolist() if v is not None and math.isfinite(float(v))]
            if len(rows)
            else []
        )
        return max(values) if values else None

    def summary(self) -> dict[str, Any]:
        """Headline numbers as plain JSON-able values."""
        out = {
            "task": self.task,
            "metric": self.metric,
            "challenger_version": self.challenger_version,
            "champion_version": self.champion_version,
            "n_holdout": self.n_holdout,
            **{f"challenger_{k}": v for k, v in self.metrics[CHALLENGER].items()},
            **({f"champion_{k}": v for k, v in self.metrics[CHAMPION].items()} if self.has_champion else {}),
            **{f"baseline_{b}_{k}": v for b, m in self.baselines.items() for k, v in m.items()},
            "metric_drop": self.metric_drop(),
            "overfit_gap": self.overfit_gap(),
            "p50_latency_ms": self.latency_ms[CHALLENGER]["p50"],
            "p99_latency_ms": self.latency_ms[CHALLENGER]["p99"],
            "robust_p99_latency_ms": self.latency_ms[CHALLENGER]["robust_p99"],
            "bias_score": self.bias_score(),
            "row_coverage": self.row_coverage,
            "segment_coverage": self.segment_coverage,
            "test_coverage": self.test_coverage,
        }
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in out.items()}

    def to_dict(self) -> dict[str, Any]:
        return {
            "summary": self.summary(),
            "metrics": self.metrics,
            "train_metrics": self.train_metrics,
            "latency_ms": self.latency_ms,
            "fairness": self.fairness.to_dict(orient="records"),
            "fairness_note": self.fairness_note,
            "uncovered_segments": self.uncovered_segments,
            "segments_checked": self.segments_checked,
            "golden": [g.__dict__ for g in self.golden],
        }

    def to_markdown(self) -> str:
        """The report as markdown tables (numbers rounded to 4 significant digits)."""
        models = [m for m in (CHALLENGER, CHAMPION) if m in self.metrics] + [
            f"baseline:{b}" for b in self.baselines
        ]
        label = {
            CHALLENGER: f"challenger v{self.challenger_version}",
            CHAMPION: f"champion v{self.champion_version}",
        }
        lines = [
            f"# Evaluation: {self.model_name} v{self.challenger_version} ({self.task})",
            "",
            f"Holdout rows: {self.n_holdout}; comparison metric `{self.metric}` "
            f"({'higher' if self.higher_is_better else 'lower'} is better)"
            + (f"; decision threshold {self.threshold}" if self.task == "binary_classification" else "")
            + ".",
            "",
        ]
        if not self.has_champion:
            lines += [
                "No champion yet: the challenger is judged against the baselines and absolute thresholds.",
                "",
            ]
        lines += [
            "## Quality",
            "",
            "| metric | " + " | ".join(label.get(m, m) for m in models) + " | challenger on training rows |",
        ]
        lines.append("|---" * (len(models) + 2) + "|")
        for name in [
            *metric_names(self.task),
            "base_rate" if self.task == "binary_classification" else "target_mean",
        ]:
            cells = [fmt(self.metrics[m].get(name)) for m in models]
            lines.append(f"| {name} | " + " | ".join(cells) + f" | {fmt(self.train_metrics.get(name))} |")
        gap = self.overfit_gap()
        lines += [
            "",
            f"Overfitting indicator (train minus holdout {self.metric}, positive = better on training rows): {fmt(gap)}",
            "",
        ]
        lines += ["## Single-row latency (ms, challenger and champion measured interleaved)", ""]
        lines += ["| model | p50 | p99 | robust p99 (min of 3 per row) |", "|---|---:|---:|---:|"]
        for m in (CHALLENGER, CHAMPION):
            if m in self.latency_ms:
                lat = self.latency_ms[m]
                lines.append(
                    f"| {label[m]} | {fmt(lat['p50'])} | {fmt(lat['p99'])} | {fmt(lat['robust_p99'])} |"
                )
        lines += ["", "## Fairness", "", self.fairness_note, ""]
        if len(self.fairness):
            lines += ["| model | attribute | groups | score | detail |", "|---|---|---:|---:|---|"]
            for row in self.fairness.itertuples():
                lines.append(
                    f"| {label.get(row.model, row.model)} | {row.attribute} | {row.groups} | {fmt(row.score)} | {row.detail} |"
                )
        lines += [
            "",
            "## Coverage",
            "",
            f"- share of holdout rows scored: {fmt(self.row_coverage)}",
            (
                f"- segments observed in the training set and scored in the holdout: "
                f"{self.segments_checked - len(self.uncovered_segments)} of {self.segments_checked}"
                + (f" (uncovered: {', '.join(self.uncovered_segments)})" if self.uncovered_segments else "")
                if self.segments_checked
                else "- segments: none declared (`model.segments`), only rows are covered"
            ),
            "",
            "## Golden cases",
            "",
        ]
        if self.golden:
            lines += ["| case | score | expectation | holds |", "|---|---:|---|---|"]
            lines += [
                f"| {g.name} | {fmt(g.score)} | {g.expectation} | {'yes' if g.passed else 'NO'} |"
                for g in self.golden
            ]
        else:
            lines.append("No golden cases declared in the spec (`gates.golden_cases`).")
        return "\n".join(lines) + "\n"

    def save(self, reports_dir: str | Path, stem: str | None = None) -> dict[str, Path]:
        """Write markdown, JSON and the task's PNG plots under ``reports_dir``."""
        reports_dir = Path(reports_dir)
        reports_dir.mkdir(parents=True, exist_ok=True)
        stem = stem or f"evaluation_v{self.challenger_version}"
        curves = [(name, y, p) for name, (y, p) in self.curves.items()]
        paths = {"markdown": reports_dir / f"{stem}.md", "json": reports_dir / f"{stem}.json"}
        plots = task_plots(self.task, curves, reports_dir, stem)
        paths.update(plots)
        images = "\n\n".join(f"![{name}]({path.name})" for name, path in plots.items())
        paths["markdown"].write_text(self.to_markdown() + "\n" + images + "\n")
        paths["json"].write_text(json.dumps(self.to_dict(), indent=2, default=_json_default))
        return paths


def fmt(value: Any) -> str:
    """A number as a person reads it: 4 significant digits ('n/a' for missing)."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    if isinstance(value, bool | int | np.integer):
        return str(value)
    return f"{float(value):.4g}"


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    return str(value)


# ------------------------------------------------------------------------------------------- latency


def measure_latency(
    models: dict[str, tuple[Any, pd.DataFrame]], n_calls: int = 200, repeats: int = 3, warmup: int = 5
) -> dict[str, dict[str, float]]:
    """Single-row latency of each model, the models called in turn on the same rows (one thread, as served).

    Each row is scored ``repeats`` times per model; the robust p99 is the 99th percentile of each row's
    fastest call, which a busy machine inflates far less than the plain p99 (preemptions hit single calls).
    """
    names = list(models)
    rows = {name: inputs for name, (_, inputs) in models.items()}
    n = min(len(r) for r in rows.values())
    if n == 0:
        raise ValueError("latency needs at least one row")
    timings = {name: np.empty((n_calls, repeats)) for name in names}
    score = {
        name: getattr(model, "predict_proba", None) or model.predict for name, (model, _) in models.items()
    }
    with single_thread():
        for i in range(warmup):
            for name in names:
                score[name](rows[name].iloc[[i % n]])
        for i in range(n_calls):
            for r in range(repeats):
                for name in names[:: 1 if (i + r) % 2 == 0 else -1]:  # alternate who goes first
                    row = rows[name].iloc[[i % n]]
                    start = time.perf_counter()
                    score[name](row)
                    timings[name][i, r] = (time.perf_counter() - start) * 1000.0
    out = {}
    for name in names:
        values = timings[name]
        out[name] = {
            "p50": float(np.percentile(values, 50)),
            "p99": float(np.percentile(values, 99)),
            "robust_p99": float(np.percentile(values.min(axis=1), 99)),
            "mean": float(values.mean()),
            "n": float(values.size),
        }
    return out


# ------------------------------------------------------------------------------------------- fairness


def fairness_rows(
    task: ModelTask,
    model: str,
    y: np.ndarray,
    scores: np.ndarray,
    groups: pd.Series,
    attribute: str,
    min_group_size: int,
    min_group_positives: int = 20,
) -> dict[str, Any]:
    """The largest between-group difference for one attribute (groups with at least ``min_group_size`` rows).

    Classification: the larger of the demographic-parity and equal-opportunity differences. Regression:
    the spread of the groups' mean absolute errors relative to the overall one. Fewer than two groups
    large enough: not applicable (score None).
    """
    frame = pd.DataFrame({"y": y, "s": scores, "g": groups.astype(object).fillna("<missing>").to_numpy()})
    sizes = frame.groupby("g").size()
    big = sizes[sizes >= min_group_size].index
    if len(big) < 2:
        detail = f"{len(sizes)} group(s), {len(big)} with at least {min_group_size} rows: not applicable"
        return {
            "model": model,
            "attribute": attribute,
            "groups": int(len(big)),
            "score": None,
            "detail": detail,
        }
    part = frame[frame["g"].isin(big)]
    if task.is_classification:
        pred = (part["s"] >= task.threshold).astype(int)
        rates = pred.groupby(part["g"]).mean()
        dpd = float(rates.max() - rates.min())
        pos = part[part["y"] == 1]
        counts = pos.groupby("g").size()
        eligible = counts[counts >= min_group_positives].index
        tpr = (pos["s"] >= task.threshold).astype(int).groupby(pos["g"]).mean().reindex(eligible)
        eod = float(tpr.max() - tpr.min()) if len(eligible) >= 2 else None
        score = max(dpd, eod) if eod is not None else dpd
        detail = f"demographic parity difference {fmt(dpd)}, equal opportunity difference {fmt(eod)}"
    else:
        errors = (part["y"] - part["s"]).abs()
        mae = errors.groupby(part["g"]).mean()
        overall = float(errors.mean()) or 1.0
        score = float((mae.max() - mae.min()) / overall)
        detail = f"group MAE from {fmt(mae.min())} to {fmt(mae.max())} (overall {fmt(overall)})"
    return {"model": model, "attribute": attribute, "groups": int(len(big)), "score": score, "detail": detail}


# ------------------------------------------------------------------------------------------- coverage


def coverage(
    scores: np.ndarray,
    holdout: pd.DataFrame,
    reference: pd.DataFrame,
    segments: Sequence[str],
    min_segment_rows: int = 1,
) -> tuple[float, float, list[str], int]:
    """(row coverage, segment coverage, uncovered segments, segments checked).

    A row is covered when it got a finite score; a segment (attribute = value) observed at least
    ``min_segment_rows`` times in ``reference`` (the training set) is covered when the holdout has a scored row of it.
    """
    scored = np.isfinite(np.asarray(scores, dtype=float))
    row_cov = float(scored.mean()) if len(scored) else 0.0
    uncovered: list[str] = []
    checked = 0
    for attr in segments:
        if attr not in reference.columns:
            continue
        counts = reference[attr].dropna().astype(str).value_counts()
        for value in sorted(counts[counts >= min_segment_rows].index):
            checked += 1
            mask = (
                (holdout[attr].astype(str) == value).to_numpy()
                if attr in holdout.columns
                else np.zeros(len(holdout), bool)
            )
            if not (mask & scored).any():
                uncovered.append(f"{attr}={value}")
    seg_cov = 1.0 - len(uncovered) / checked if checked else 1.0
    return row_cov, seg_cov, uncovered, checked


# ------------------------------------------------------------------------------------------- golden cases


def check_golden(
    model: Any, cases: Sequence[GoldenCase], numeric: Sequence[str], categorical: Sequence[str]
) -> list[GoldenResult]:
    """Score each declared case; a case holds when its score is in its range and above the cases it names."""
    if not cases:
        return []
    frame = model_inputs(pd.DataFrame([dict(c.features) for c in cases]), numeric, categorical)
    scores = dict(zip([c.name for c in cases], predict_scores(model, frame).tolist(), strict=True))
    results = []
    for case in cases:
        score = scores[case.name]
        checks, parts = [], []
        if case.expect_min is not None:
            checks.append(score >= case.expect_min)
            parts.append(f">= {case.expect_min}")
        if case.expect_max is not None:
            checks.append(score <= case.expect_max)
            parts.append(f"<= {case.expect_max}")
        if case.higher_than is not None:
            other = scores.get(case.higher_than)
            checks.append(other is not None and score > other)
            parts.append(f"> {case.higher_than} ({fmt(other)})")
        results.append(
            GoldenResult(case.name, float(score), bool(all(checks)), ", ".join(parts) or "any score")
        )
    return results


# ------------------------------------------------------------------------------------------- evaluate


def evaluate(
    task: ModelTask,
    challenger: Any,
    champion: Any | None,
    train: pd.DataFrame,
    holdout: pd.DataFrame,
    *,
    numeric_features: Sequence[str],
    categorical_features: Sequence[str],
    champion_features: tuple[Sequence[str], Sequence[str]] | None = None,
    challenger_version: int | None = None,
    champion_version: int | None = None,
    golden_cases: Sequence[GoldenCase] = (),
    latency_calls: int = 200,
    min_group_size: int = 50,
    baselines: dict[str, np.ndarray] | None = None,
) -> EvaluationReport:
    """Score challenger, champion (when there is one) and the trivial baselines on the same holdout."""
    if holdout.empty:
        raise ValueError("the holdout is empty")
    numeric_features, categorical_features = list(numeric_features), list(categorical_features)
    y = task.target_values(holdout)
    models: dict[str, tuple[Any, pd.DataFrame]] = {
        CHALLENGER: (challenger, model_inputs(holdout, numeric_features, categorical_features))
    }
    if champion is not None:
        num, cat = champion_features or (numeric_features, categorical_features)
        models[CHAMPION] = (champion, model_inputs(holdout, list(num), list(cat)))
    metrics, curves, fairness = {}, {}, []
    for name, (model, inputs) in models.items():
        scores = predict_scores(model, inputs)
        curves[name] = (y, scores)
        metrics[name] = task_metrics(task.kind, y, scores, task.threshold)
        for attr in task.sensitive:
            if attr in holdout.columns:
                fairness.append(fairness_rows(task, name, y, scores, holdout[attr], attr, min_group_size))
    for name, scores in (baselines or {}).items():
        metrics[f"baseline:{name}"] = task_metrics(task.kind, y, scores, task.threshold)
    train_inputs = model_inputs(train, numeric_features, categorical_features)
    train_metrics = task_metrics(
        task.kind, task.target_values(train), predict_scores(challenger, train_inputs), task.threshold
    )
    latency = measure_latency(models, n_calls=latency_calls)
    present = [a for a in task.sensitive if a in holdout.columns]
    if not task.sensitive:
        note = (
            "No sensitive attributes declared in the spec (`model.sensitive`): the bias gate does not apply."
        )
    elif not present:
        note = f"Sensitive attributes {list(task.sensitive)} are not in the training set: the bias gate does not apply."
    else:
        note = f"Groups of {', '.join(present)} with at least {min_group_size} holdout rows are compared."
    reference = pd.concat([train, holdout], ignore_index=True)
    row_cov, seg_cov, uncovered, checked = coverage(curves[CHALLENGER][1], holdout, reference, task.segments)
    golden = check_golden(challenger, golden_cases, numeric_features, categorical_features)
    return EvaluationReport(
        task=task.kind,
        metric=task.metric,
        model_name=task.model_name,
        challenger_version=challenger_version,
        champion_version=champion_version if champion is not None else None,
        n_holdout=len(holdout),
        threshold=task.threshold,
        metrics=metrics,
        train_metrics=train_metrics,
        latency_ms=latency,
        fairness=pd.DataFrame(fairness, columns=["model", "attribute", "groups", "score", "detail"]),
        fairness_note=note,
        row_coverage=row_cov,
        segment_coverage=seg_cov,
        uncovered_segments=uncovered,
        segments_checked=checked,
        golden=golden,
        curves=curves,
    )


__all__ = [
    "BASELINE_METRICS",
    "CHALLENGER",
    "CHAMPION",
    "EvaluationReport",
    "evaluate",
    "fmt",
    "measure_latency",
]
