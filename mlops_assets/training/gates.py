"""Quality gates: named pass/fail judgements of an evaluation report against configured thresholds."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from mlops_assets.training.evaluate import EvaluationReport

#: Every gate, in the order they are reported (each becomes one blocking asset check).
GATE_NAMES = (
    "accuracy_vs_champion",
    "min_roc_auc",
    "p99_latency",
    "bias",
    "test_coverage",
    "sanity",
    "training_data_valid",
)


@dataclass(frozen=True)
class GateThresholds:
    """Thresholds of the quality gates; each name says what it bounds."""

    max_accuracy_drop: float = 0.02  # challenger accuracy >= champion accuracy - this
    min_roc_auc: float = 0.6  # absolute floor, applied with or without a champion
    max_p99_latency_ms: float = 100.0  # single-row prediction latency (threads capped at one)
    max_bias_score: float = 0.25  # largest demographic-parity / equal-opportunity difference
    min_test_coverage: float = 0.95  # weaker of row and segment coverage

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


@dataclass(frozen=True)
class GateResult:
    """One gate's verdict; ``message`` names the measured value and the threshold."""

    name: str
    passed: bool
    measured: float | None
    threshold: float | None
    message: str
    skipped: bool = False


def _gate(
    name: str,
    passed: bool,
    measured: float | None,
    threshold: float | None,
    message: str,
    skipped: bool = False,
) -> GateResult:
    return GateResult(name, bool(passed), measured, threshold, message, skipped)


def evaluate_gates(
    report: EvaluationReport, thresholds: GateThresholds | None = None, training_data_valid: bool = True
) -> list[GateResult]:
    """Judge the report: relative gates need a champion, absolute gates always apply."""
    t = thresholds or GateThresholds()
    results = []
    drop = report.accuracy_drop()
    if drop is None:
        results.append(
            _gate(
                "accuracy_vs_champion",
                True,
                None,
                t.max_accuracy_drop,
                "skipped: no champion yet, judged on absolute thresholds only",
                skipped=True,
            )
        )
    else:
        acc = report.metrics["challenger"]["accuracy"]
        champ = report.metrics["champion"]["accuracy"]
        results.append(
            _gate(
                "accuracy_vs_champion",
                drop <= t.max_accuracy_drop + 1e-12,
                acc,
                champ - t.max_accuracy_drop,
                f"challenger accuracy {acc:.4f} vs champion {champ:.4f}: drop {drop:.4f} "
                f"{'<=' if drop <= t.max_accuracy_drop + 1e-12 else '>'} max_accuracy_drop {t.max_accuracy_drop}",
            )
        )
    auc = report.metrics["challenger"]["roc_auc"]
    auc_ok = not math.isnan(auc) and auc >= t.min_roc_auc
    results.append(
        _gate(
            "min_roc_auc",
            auc_ok,
            auc,
            t.min_roc_auc,
            f"ROC AUC {auc:.4f} {'>=' if auc_ok else '<'} min_roc_auc {t.min_roc_auc}",
        )
    )
    p99 = report.latency_ms["challenger"]["p99"]
    results.append(
        _gate(
            "p99_latency",
            p99 <= t.max_p99_latency_ms,
            p99,
            t.max_p99_latency_ms,
            f"p99 single-row latency {p99:.2f} ms {'<=' if p99 <= t.max_p99_latency_ms else '>'} "
            f"max_p99_latency_ms {t.max_p99_latency_ms}",
        )
    )
    bias = report.bias_score()
    if math.isnan(bias):
        results.append(
            _gate(
                "bias",
                True,
                None,
                t.max_bias_score,
                f"bias not measurable (groups below the minimum size); max_bias_score {t.max_bias_score}",
                skipped=True,
            )
        )
    else:
        worst = report.fairness.loc[report.fairness["model"] == "challenger"]
        worst = worst.assign(
            score=worst[["demographic_parity_difference", "equal_opportunity_difference"]].max(axis=1)
        )
        row = worst.sort_values("score", ascending=False).iloc[0]
        results.append(
            _gate(
                "bias",
                bias <= t.max_bias_score,
                bias,
                t.max_bias_score,
                f"bias score {bias:.4f} (worst attribute {row['attribute']}) "
                f"{'<=' if bias <= t.max_bias_score else '>'} max_bias_score {t.max_bias_score}",
            )
        )
    cov = report.test_coverage
    cov_msg = (
        f"test coverage {cov:.4f} (rows {report.row_coverage:.4f}, segments {report.segment_coverage:.4f})"
    )
    if report.uncovered_segments:
        cov_msg += f", uncovered {', '.join(report.uncovered_segments)}"
    results.append(
        _gate(
            "test_coverage",
            cov >= t.min_test_coverage,
            cov,
            t.min_test_coverage,
            f"{cov_msg} {'>=' if cov >= t.min_test_coverage else '<'} min_test_coverage "
            f"{t.min_test_coverage}",
        )
    )
    failed = [g.name for g in report.golden if not g.passed]
    n = len(report.golden)
    if not report.golden:
        sanity_msg = "no golden cases were evaluated; 1 required"
    else:
        sanity_msg = f"{n - len(failed)} of {n} golden cases hold their predicted direction; all {n} required"
        if failed:
            sanity_msg += f" (failed: {', '.join(failed)})"
    results.append(
        _gate("sanity", report.sanity_passed, float(n - len(failed)), float(max(n, 1)), sanity_msg)
    )
    results.append(
        _gate(
            "training_data_valid",
            training_data_valid,
            float(training_data_valid),
            1.0,
            "training data passed validation"
            if training_data_valid
            else "training data failed validation (required: passed)",
        )
    )
    return results


def failed_gates(results: Sequence[GateResult]) -> list[GateResult]:
    """The gates that did not pass."""
    return [g for g in results if not g.passed]


def all_passed(results: Sequence[GateResult]) -> bool:
    """True when every gate passed (skipped gates count as passed)."""
    return all(g.passed for g in results)
