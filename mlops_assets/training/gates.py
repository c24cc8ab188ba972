"""Quality gates: named verdicts on an evaluation report against the spec's thresholds (no Dagster here).

Each gate passes, fails, or does not apply (a champion comparison without a champion, a bias gate with
fewer than two groups large enough, a sanity gate without golden cases): a gate that does not apply says
why and is shown as skipped in the gate table and reports. Its Dagster check result is passed (it blocks
nothing) with ``status: not applicable`` and the reason in its metadata, so the UI shows every gate executed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from mlops_assets.spec.model import Gates

if (
    TYPE_CHECKING
):  # the verdict types are read when Dagster definitions load: no scikit-learn/pandas on that path
    from mlops_assets.training.evaluate import EvaluationReport

#: Every gate, in the order they are reported (each becomes one blocking asset check).
GATE_NAMES = (
    "beats_baseline",
    "metric_vs_champion",
    "overfitting",
    "p99_latency",
    "bias",
    "test_coverage",
    "sanity",
    "training_data_valid",
)

PASS, FAIL, NOT_APPLICABLE = "pass", "fail", "not applicable"


@dataclass(frozen=True)
class GateResult:
    """One gate's verdict; ``message`` names the measured value and the threshold (or why it does not apply)."""

    name: str
    status: str  # pass, fail, not applicable
    measured: float | None
    threshold: float | None
    message: str

    @property
    def passed(self) -> bool:
        """False only for a failure (a gate that does not apply blocks nothing)."""
        return self.status != FAIL

    @property
    def applies(self) -> bool:
        return self.status != NOT_APPLICABLE

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "status": self.status,
            "measured": self.measured,
            "threshold": self.threshold,
            "message": self.message,
        }


def _verdict(ok: bool) -> str:
    return PASS if ok else FAIL


def _baseline_gate(report: EvaluationReport, g: Gates) -> GateResult:
    from mlops_assets.training.evaluate import CHALLENGER, fmt
    from mlops_assets.training.metrics import BASELINE_METRICS

    names = BASELINE_METRICS[report.task]
    challenger = report.metrics[CHALLENGER]
    worst_margin, details = math.inf, []
    for base, values in report.baselines.items():
        for metric in names:  # every baseline metric is lower-is-better (log loss, Brier, MAE)
            margin = values[metric] - challenger[metric]
            details.append(f"{metric} {fmt(challenger[metric])} vs {base} {fmt(values[metric])}")
            worst_margin = min(worst_margin, margin)
    if not details:
        return GateResult(
            "beats_baseline",
            NOT_APPLICABLE,
            None,
            g.min_baseline_improvement,
            "not applicable: no baseline was scored",
        )
    ok = worst_margin > g.min_baseline_improvement
    rel = ">" if ok else "<="
    return GateResult(
        "beats_baseline",
        _verdict(ok),
        worst_margin,
        g.min_baseline_improvement,
        f"smallest improvement over a trivial baseline {fmt(worst_margin)} {rel} min_baseline_improvement "
        f"{g.min_baseline_improvement} ({'; '.join(details)})",
    )


def evaluate_gates(
    report: EvaluationReport, gates: Gates | None = None, training_data_valid: bool = True
) -> list[GateResult]:
    """Judge the report with the spec's thresholds (defaults when ``gates`` is None)."""
    from mlops_assets.training.evaluate import CHALLENGER, CHAMPION, fmt

    g = gates or Gates()
    results = [_baseline_gate(report, g)]

    drop = report.metric_drop()
    if drop is None:
        results.append(
            GateResult(
                "metric_vs_champion",
                NOT_APPLICABLE,
                None,
                g.max_metric_drop,
                "not applicable: no champion yet",
            )
        )
    else:
        a, b = report.metrics[CHALLENGER][report.metric], report.metrics[CHAMPION][report.metric]
        ok = math.isfinite(drop) and drop <= g.max_metric_drop + 1e-12
        results.append(
            GateResult(
                "metric_vs_champion",
                _verdict(ok),
                drop,
                g.max_metric_drop,
                f"{report.metric}: challenger {fmt(a)} vs champion {fmt(b)}, worse by {fmt(drop)} "
                f"{'<=' if ok else '>'} max_metric_drop {g.max_metric_drop}",
            )
        )

    gap = report.overfit_gap()
    if g.max_overfit_gap is None or gap is None:
        reason = (
            "no `max_overfit_gap` in the spec: reported only"
            if gap is not None
            else "no train and holdout metric to compare"
        )
        results.append(
            GateResult(
                "overfitting",
                NOT_APPLICABLE,
                gap,
                g.max_overfit_gap,
                f"not applicable: {reason} (train minus holdout {report.metric} {fmt(gap)})",
            )
        )
    else:
        ok = gap <= g.max_overfit_gap
        results.append(
            GateResult(
                "overfitting",
                _verdict(ok),
                gap,
                g.max_overfit_gap,
                f"train minus holdout {report.metric} {fmt(gap)} {'<=' if ok else '>'} max_overfit_gap {g.max_overfit_gap}",
            )
        )

    lat = report.latency_ms[CHALLENGER]
    robust = lat["robust_p99"]
    ratio = None
    if CHAMPION in report.latency_ms and report.latency_ms[CHAMPION]["robust_p99"] > 0:
        ratio = robust / report.latency_ms[CHAMPION]["robust_p99"]
    ok = robust <= g.max_p99_latency_ms and (ratio is None or ratio <= g.max_latency_ratio)
    text = f"robust p99 single-row latency {fmt(robust)} ms {'<=' if robust <= g.max_p99_latency_ms else '>'} max_p99_latency_ms {g.max_p99_latency_ms}"
    if ratio is not None:
        text += f"; {fmt(ratio)}x the champion's (measured interleaved) {'<=' if ratio <= g.max_latency_ratio else '>'} max_latency_ratio {g.max_latency_ratio}"
    results.append(GateResult("p99_latency", _verdict(ok), robust, g.max_p99_latency_ms, text))

    bias = report.bias_score()
    if bias is None:
        reasons = "; ".join(
            f"{r.attribute}: {r.detail}" for r in report.fairness.itertuples() if r.model == CHALLENGER
        )
        results.append(
            GateResult(
                "bias",
                NOT_APPLICABLE,
                None,
                g.max_bias_score,
                f"not applicable: {reasons or report.fairness_note}",
            )
        )
    else:
        rows = report.fairness[(report.fairness["model"] == CHALLENGER) & report.fairness["score"].notna()]
        worst = rows.sort_values("score", ascending=False).iloc[0]
        ok = bias <= g.max_bias_score
        results.append(
            GateResult(
                "bias",
                _verdict(ok),
                bias,
                g.max_bias_score,
                f"bias score {fmt(bias)} (worst attribute {worst['attribute']}: {worst['detail']}) "
                f"{'<=' if ok else '>'} max_bias_score {g.max_bias_score}",
            )
        )

    cov = report.test_coverage
    msg = f"test coverage {fmt(cov)} (rows {fmt(report.row_coverage)}, {report.segments_checked} observed segments {fmt(report.segment_coverage)})"
    if report.uncovered_segments:
        msg += f", uncovered {', '.join(report.uncovered_segments[:10])}"
    ok = cov >= g.min_test_coverage
    results.append(
        GateResult(
            "test_coverage",
            _verdict(ok),
            cov,
            g.min_test_coverage,
            f"{msg} {'>=' if ok else '<'} min_test_coverage {g.min_test_coverage}",
        )
    )

    if not report.golden:
        results.append(
            GateResult(
                "sanity",
                NOT_APPLICABLE,
                None,
                None,
                "not applicable: no golden cases declared in the spec (gates.golden_cases)",
            )
        )
    else:
        failed = [c.name for c in report.golden if not c.passed]
        n = len(report.golden)
        text = f"{n - len(failed)} of {n} golden cases meet their expectation; all {n} required"
        if failed:
            text += f" (failed: {', '.join(failed)})"
        results.append(GateResult("sanity", _verdict(not failed), float(n - len(failed)), float(n), text))

    results.append(
        GateResult(
            "training_data_valid",
            _verdict(training_data_valid),
            float(not training_data_valid),
            0.0,
            "training data passed validation" if training_data_valid else "training data failed validation",
        )
    )
    return results


def failed_gates(results: Sequence[GateResult]) -> list[GateResult]:
    return [g for g in results if not g.passed]


def all_passed(results: Sequence[GateResult]) -> bool:
    """True when no gate failed (gates that do not apply block nothing)."""
    return all(g.passed for g in results)
