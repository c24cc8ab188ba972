"""Scenario benchmark of the calibrated drift monitor: the Targets of the drift-monitoring issue, measured.

Each scenario is a simulated churn world (:mod:`benchmarks.drift_worlds`, 5,000 customers) whose champion is
trained on its first ``history_days``; the drift report then runs over the monitored days exactly as the
``drift_report`` asset does (:func:`mlops_assets.monitoring.daily.monitor_days`, the cached reference
calibration included) and the retraining requests are counted with the drift sensor's episode rule.

    uv run --locked python benchmarks/drift_scenarios.py            # every scenario, writes benchmarks/results/drift_scenarios.md
    uv run --locked python benchmarks/drift_scenarios.py --only demo
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.drift_worlds import WorldConfig, build_world  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "drift_scenarios.md"


@dataclass(frozen=True)
class Scenario:
    """A world, the days monitored, and when (if ever) the drift starts."""

    name: str
    title: str
    world: WorldConfig
    first: int  # first monitored day (offset from the world's start)
    drift_from: int | None  # offset of the first drifted day (None: no drift)
    kind: str  # none, covariate, concept


DEMO = Scenario(
    "demo",
    "demo world (`make demo`): incident day 45, covariate (region west) + concept drift from day 95",
    WorldConfig(scenarios=("quality_incident@day45", "covariate_drift@day95", "concept_drift@day95")),
    first=85,
    drift_from=95,
    kind="covariate",
)
SCENARIOS = {
    s.name: s
    for s in (
        DEMO,
        Scenario(
            "none",
            "no scenario, 60 monitored days after a 90-day history",
            WorldConfig(days=150),
            first=90,
            drift_from=None,
            kind="none",
        ),
        Scenario(
            "covariate_region",
            "covariate drift in region south only (25% of the customers) from day 95",
            WorldConfig(days=120, scenarios=("covariate_drift@day95:region=south",)),
            first=90,
            drift_from=95,
            kind="covariate",
        ),
        Scenario(
            "concept",
            "concept drift only (the churn rule changes, behaviour does not) from day 95",
            WorldConfig(days=150, scenarios=("concept_drift@day95",)),
            first=90,
            drift_from=95,
            kind="concept",
        ),
    )
}


def day(world: WorldConfig, offset: int) -> str:
    return (date.fromisoformat(world.start) + timedelta(days=offset)).isoformat()


def run_ours(scenario: Scenario, settings=None, log=print, reports: str | None = None) -> dict:
    """Our monitor over the scenario's days: one row per day, and the timings."""
    from mlops_assets.features.store import FeatureStore
    from mlops_assets.monitoring import daily
    from mlops_assets.monitoring.episodes import retraining_requests

    project = build_world(scenario.world, log=log)
    settings = settings or daily.MonitorSettings()
    days = [day(scenario.world, i) for i in range(scenario.first, scenario.world.days)]
    champion = daily.load_champion_reference(project)
    store = FeatureStore(project)
    t0, c0 = time.perf_counter(), time.process_time()
    calibration = daily.load_calibration(store, champion, settings)
    t1, c1 = time.perf_counter(), time.process_time()
    results = daily.monitor_days(store, champion, days, settings, calibration)
    t2, c2 = time.perf_counter(), time.process_time()
    if reports:  # the files the drift_report asset writes: markdown, JSON, HTML, plots, trend
        from mlops_assets.monitoring.day_report import save_day_report

        for i, r in enumerate(results):
            save_day_report(r, reports, trend=i == len(results) - 1)
    t3, c3 = time.perf_counter(), time.process_time()
    rows = []
    for r in results:
        s = r.summary()
        rows.append(
            {
                "day": r.day,
                "drift_share": s["drift_share"],
                "dataset_alarm": bool(s["drift_share_alarm"] or s["multivariate_alarm"]),
                "alarms": s["alarms"],
                "drifted": s["drifted_features"],
                "judged": len(r.comparison.tested),
                "multivariate": s["multivariate_error"],
                "estimated_roc_auc": s["estimated_roc_auc"],
                "realized_roc_auc": s["realized_roc_auc"],
                "estimate_alarm": bool(s["estimate_alarms"]),
                "realized_alarm": daily.REALIZED_PERFORMANCE_CHECK in s["alarms"],
            }
        )
    requests = retraining_requests([(r["day"], r["alarms"]) for r in rows], champion.version)
    return {
        "rows": rows,
        "requests": requests,
        "calibration_seconds": t1 - t0,
        "calibration_cpu": c1 - c0,
        "days_seconds": t2 - t1,
        "days_cpu": c2 - c1,
        "days": len(days),
        "reports_seconds": t3 - t2,
        "reports_cpu": c3 - c2,
    }


def summarize(scenario: Scenario, rows: list[dict], drift_from: str | None) -> dict:
    """False alarms before the drift, first alarm after it, per-feature false-alarm rate."""
    before = [r for r in rows if drift_from is None or r["day"] < drift_from]
    after = [r for r in rows if drift_from is not None and r["day"] >= drift_from]
    feature_days = sum(r["judged"] for r in before)
    feature_alarms = sum(len(r["drifted"]) for r in before)
    first_any = next((r["day"] for r in after if r["drifted"]), None)
    first_dataset = next((r["day"] for r in after if r["dataset_alarm"]), None)
    first_realized = next((r["day"] for r in after if r["realized_alarm"]), None)
    first_estimate = next((r["day"] for r in rows if r["estimate_alarm"]), None)
    return {
        "dataset_alarm_days_before": sum(r["dataset_alarm"] for r in before),
        "error_alarm_days_before": sum(bool(r["alarms"]) for r in before),
        "feature_false_alarm_rate": feature_alarms / feature_days if feature_days else 0.0,
        "first_feature_alarm": first_any,
        "first_dataset_alarm": first_dataset,
        "first_realized_alarm": first_realized,
        "first_estimate_alarm": first_estimate,
        "days_before": len(before),
        "days_after": len(after),
    }


def _lag(first: str | None, start: str | None) -> str:
    if first is None or start is None:
        return "never"
    return f"{first} (day {(date.fromisoformat(first) - date.fromisoformat(start)).days + 1})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", action="append", help="scenario name (repeatable)")
    parser.add_argument("--json", help="also write every day's rows to this JSON file")
    parser.add_argument("--out", default=str(RESULTS))
    parser.add_argument("--reports", help="also render each day's report files here (timed)")
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    chosen = [SCENARIOS[n] for n in (args.only or SCENARIOS)]
    lines = [
        "# Calibrated drift monitor: scenario targets",
        "",
        f"Command: `uv run --locked python benchmarks/drift_scenarios.py` ({time.strftime('%Y-%m-%d')}, "
        f"{os.cpu_count()} cores, shared machine). Worlds: the churn example's simulator, 5,000 customers, "
        "champion (the spec's estimator) trained on the first 90 days.",
        "",
        "| scenario | monitored days | dataset alarms before drift | per-feature false-alarm rate | "
        "first feature alarm | first dataset alarm | first realized-performance alarm | estimate alarm | "
        "retraining requests | calibration s (cpu) | days s (cpu) | report files s |",
        "|---|---:|---:|---:|---|---|---|---|---:|---:|---:|---:|",
    ]
    dump = {}
    for scenario in chosen:
        out = run_ours(scenario, reports=args.reports)
        start = day(scenario.world, scenario.drift_from) if scenario.drift_from is not None else None
        s = summarize(scenario, out["rows"], start)
        dump[scenario.name] = {"summary": s, **out}
        lines.append(
            f"| {scenario.title} | {out['days']} | {s['dataset_alarm_days_before']} of {s['days_before']} | "
            f"{s['feature_false_alarm_rate']:.1%} | {_lag(s['first_feature_alarm'], start)} | "
            f"{_lag(s['first_dataset_alarm'], start)} | {_lag(s['first_realized_alarm'], start)} | "
            f"{s['first_estimate_alarm'] or 'never'} | {len(out['requests'])} | "
            f"{out['calibration_seconds']:.1f} ({out['calibration_cpu']:.1f}) | "
            f"{out['days_seconds']:.1f} ({out['days_cpu']:.1f}) | {out['reports_seconds']:.1f} |"
        )
        print(lines[-1], flush=True)
    text = "\n".join(lines) + "\n"
    print(text)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    if args.json:
        Path(args.json).write_text(json.dumps(dump, indent=1, default=str))


if __name__ == "__main__":
    main()
