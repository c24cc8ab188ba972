"""Scenario benchmark of the calibrated drift monitor: the Targets of the drift-monitoring issue, measured.

Each scenario is a simulated churn world (:mod:`benchmarks.drift_worlds`, 5,000 customers) whose champion is
trained on its first ``history_days``; the drift report then runs over the monitored days exactly as the
``drift_report`` asset does (:func:`mlops_assets.monitoring.daily.monitor_days`, the cached reference
calibration included) and the retraining requests are counted with the drift sensor's episode rule.

Peers (:mod:`benchmarks.drift_peers`): the same reference period (the days our calibration uses) and the same
monitored days' population snapshots (the frames our monitor judged, the champion's feature columns) are
written as Parquet under ``.bench/drift-peers/<scenario>/``; Evidently's default ``DataDriftPreset`` and
NannyML's univariate + PCA-reconstruction drift then run on them, each in its own venv and subprocess, and
a second table reports their false alarms, first alarms, wall time and peak RSS next to ours.

    uv run --locked python benchmarks/drift_scenarios.py            # every scenario, writes benchmarks/results/drift_scenarios.md
    uv run --locked python benchmarks/drift_scenarios.py --only demo --no-peers
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

from benchmarks.drift_peers import PEERS, ensure_venv, export_inputs, run_peer  # noqa: E402
from benchmarks.drift_worlds import WorldConfig, build_world  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "drift_scenarios.md"
PEER_DATA = ROOT / ".bench" / "drift-peers"


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


def run_ours(
    scenario: Scenario, settings=None, log=print, reports: str | None = None, export: Path | None = None
) -> dict:
    """Our monitor over the scenario's days: one row per day, and the timings; with ``export``, the reference
    period's and the monitored days' frames written there for the peers (untimed)."""
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
                "elevated": s["elevated"],
            }
        )
    requests = retraining_requests(
        [(r["day"], r["alarms"]) for r in rows],
        champion.version,
        elevated={r["day"]: r["elevated"] for r in rows},
    )
    if export is not None:  # the reference our calibration used, read the way monitored days are read
        reference, _ = daily.population_features(store, calibration.days, champion.features)
        export_inputs(
            export,
            reference,
            {r.day: r.current for r in results},
            list(champion.numeric_features),
            list(champion.categorical_features),
        )
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


def summarize_alarms(rows: list[dict], drift_from: str | None) -> dict:
    """Dataset-level and per-feature alarms before the drift starts, and the first ones after it."""
    before = [r for r in rows if drift_from is None or r["day"] < drift_from]
    after = [r for r in rows if drift_from is not None and r["day"] >= drift_from]
    feature_days = sum(r["judged"] for r in before)
    feature_alarms = sum(len(r["drifted"]) for r in before)
    return {
        "dataset_alarm_days_before": sum(bool(r["dataset_alarm"]) for r in before),
        "feature_alarm_days_before": sum(bool(r["drifted"]) for r in before),
        "feature_false_alarm_rate": feature_alarms / feature_days if feature_days else 0.0,
        "first_feature_alarm": next((r["day"] for r in after if r["drifted"]), None),
        "first_dataset_alarm": next((r["day"] for r in after if r["dataset_alarm"]), None),
        "days_before": len(before),
        "days_after": len(after),
    }


def summarize(scenario: Scenario, rows: list[dict], drift_from: str | None) -> dict:
    """False alarms before the drift, first alarm after it, per-feature false-alarm rate."""
    before = [r for r in rows if drift_from is None or r["day"] < drift_from]
    after = [r for r in rows if drift_from is not None and r["day"] >= drift_from]
    return {
        **summarize_alarms(rows, drift_from),
        "error_alarm_days_before": sum(bool(r["alarms"]) for r in before),
        "first_realized_alarm": next((r["day"] for r in after if r["realized_alarm"]), None),
        "first_estimate_alarm": next((r["day"] for r in rows if r["estimate_alarm"]), None),
    }


def _lag(first: str | None, start: str | None) -> str:
    if first is None or start is None:
        return "never"
    return f"{first} (day {(date.fromisoformat(first) - date.fromisoformat(start)).days + 1})"


PEER_TABLE_HEADER = [
    "| scenario | tool | dataset-level alarm | dataset alarms before drift | first dataset alarm | "
    "days with a feature alarm before drift | per-feature false-alarm rate | first feature alarm | "
    "wall s (compute s) | peak RSS MB |",
    "|---|---|---|---:|---|---:|---:|---|---:|---:|",
]


def _peer_row(scenario: Scenario, label: str, rule: str, s: dict, start: str | None, cost: str) -> str:
    return (
        f"| {scenario.name} | {label} | {rule} | {s['dataset_alarm_days_before']} of {s['days_before']} | "
        f"{_lag(s['first_dataset_alarm'], start)} | {s['feature_alarm_days_before']} of {s['days_before']} | "
        f"{s['feature_false_alarm_rate']:.1%} | {_lag(s['first_feature_alarm'], start)} | {cost} |"
    )


def _peer_rows(scenario: Scenario, peer, version: str, out: dict, ours: dict, start: str | None) -> list[str]:
    """The table rows of one peer's run over one scenario (NannyML: its PCA and its univariate alerts)."""
    compute = f"{out['compute_seconds']:.1f}" if "compute_seconds" in out else "–"
    cost = f"{out['wall_seconds']:.1f} ({compute}) | {out['peak_rss_mb']:.0f}"
    label = f"{peer.label} {version}"
    if "error" in out:
        return [
            f"| {scenario.name} | {label} | failed: {out['error'].replace('|', '/')} |"
            + " – |" * 5
            + f" {cost} |"
        ]
    notes = []
    if [r["day"] for r in out["rows"]] != [r["day"] for r in ours["rows"]]:
        notes.append(f"judged {len(out['rows'])} days, ours {len(ours['rows'])}")
    mismatched = [
        r["day"] for r in out["rows"] if r.get("drifted_count", len(r["drifted"])) != len(r["drifted"])
    ]
    if mismatched:
        notes.append(f"per-column rule disagrees with Evidently's count on {len(mismatched)} days")
    rule = out["rule"] + (f" ({'; '.join(notes)})" if notes else "")
    rows = [_peer_row(scenario, label, rule, summarize_alarms(out["rows"], start), start, cost)]
    if (
        peer.name == "nannyml"
    ):  # its univariate alerts as a dataset-level rule of their own: any feature alerting
        any_alert = [{**r, "dataset_alarm": bool(r["drifted"])} for r in out["rows"]]
        rule = "any univariate alert (default Jensen-Shannon, reference daily chunks, mean + 3 sd)"
        rows.append(
            _peer_row(scenario, label, rule, summarize_alarms(any_alert, start), start, "same run | same run")
        )
    return rows


def compare_peers(
    scenario: Scenario, ours: dict, start: str | None, peers: dict, folder: Path, timeout: float
) -> tuple[list[str], dict]:
    """The peer-table rows of one scenario (ours first) and each peer's output; a failed peer gets a row saying so."""
    seconds = ours["calibration_seconds"] + ours["days_seconds"]
    rule = "count of features beyond their calibrated bands (binomial at the reference rate, also for severe ones) or PCA error outside its band"
    cost = f"{seconds:.1f} (in-process) | –"
    lines = [
        _peer_row(
            scenario, "mlops_assets (calibrated)", rule, summarize_alarms(ours["rows"], start), start, cost
        )
    ]
    outputs = {}
    for name, (python, version) in peers.items():
        peer = PEERS[name]
        if python is None:
            lines.append(
                f"| {scenario.name} | {peer.label} | not run: could not be installed ({version[:200]}) |"
                + " – |" * 7
            )
            continue
        try:
            outputs[name] = run_peer(peer, python, folder, timeout=timeout)
            lines += _peer_rows(scenario, peer, version, outputs[name], ours, start)
        except Exception as exc:  # a peer's surprise is its row's news, never the end of the benchmark
            lines.append(
                f"| {scenario.name} | {peer.label} {version} | failed: {type(exc).__name__}: {exc} |"
                + " – |" * 7
            )
    return lines, outputs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--only", action="append", choices=sorted(SCENARIOS), help="scenario name (repeatable)"
    )
    parser.add_argument("--json", help="also write every day's rows to this JSON file")
    parser.add_argument("--out", default=str(RESULTS))
    parser.add_argument("--reports", help="also render each day's report files here (timed)")
    parser.add_argument(
        "--peers",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also run Evidently and NannyML on the same data (default: yes)",
    )
    parser.add_argument("--peer", action="append", choices=sorted(PEERS), help="only this peer (repeatable)")
    parser.add_argument("--peer-data", default=str(PEER_DATA), help="where each scenario's Parquet inputs go")
    parser.add_argument("--peer-timeout", type=float, default=3600.0, help="seconds per peer and scenario")
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    chosen = [SCENARIOS[n] for n in (args.only or SCENARIOS)]
    peers = {}
    if args.peers:
        for name in args.peer or PEERS:
            peer = PEERS[name]
            peers[name] = ensure_venv(peer.venv, peer.requirements, peer.module)
            print(f"{peer.label}: {peers[name][1]}", flush=True)
    command = " ".join(["uv run --locked python benchmarks/drift_scenarios.py", *sys.argv[1:]])
    lines = [
        "# Calibrated drift monitor: scenario targets",
        "",
        f"Command: `{command}` ({time.strftime('%Y-%m-%d')}, "
        f"{os.cpu_count()} cores, shared machine). Worlds: the churn example's simulator, 5,000 customers, "
        "champion (the spec's estimator) trained on the first 90 days.",
        "",
        "| scenario | monitored days | dataset alarms before drift | per-feature false-alarm rate | "
        "first feature alarm | first dataset alarm | first realized-performance alarm | estimate alarm | "
        "retraining requests | calibration s (cpu) | days s (cpu) | report files s |",
        "|---|---:|---:|---:|---|---|---|---|---:|---:|---:|---:|",
    ]
    peer_lines: list[str] = []
    dump = {}
    for scenario in chosen:
        folder = Path(args.peer_data) / scenario.name
        out = run_ours(scenario, reports=args.reports, export=folder if peers else None)
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
        if peers:
            rows, outputs = compare_peers(scenario, out, start, peers, folder, args.peer_timeout)
            peer_lines += rows
            dump[scenario.name]["peers"] = outputs
            print("\n".join(rows), flush=True)
    if peers:
        lines += ["", *peer_section(peers, chosen, Path(args.peer_data)), "", *PEER_TABLE_HEADER, *peer_lines]
    text = "\n".join(lines) + "\n"
    print(text)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    if args.json:
        Path(args.json).write_text(json.dumps(dump, indent=1, default=str))


def peer_section(peers: dict, chosen: list[Scenario], data: Path) -> list[str]:
    """The heading and method paragraph of the peer table."""
    versions = ", ".join(
        f"{PEERS[n].label} {v}" if p is not None else f"{PEERS[n].label} (not installed)"
        for n, (p, v) in peers.items()
    )
    metas = {s.name: data / s.name / "meta.json" for s in chosen}
    metas = {n: json.loads(p.read_text()) for n, p in metas.items() if p.exists()}
    sizes = "; ".join(
        f"{n}: {len(m['reference_days'])} reference days ({m['reference_rows']:,} rows), "
        f"{len(m['days'])} monitored days ({m['current_rows']:,} rows)"
        for n, m in metas.items()
    )
    columns = next(
        (f"{len(m['numeric'])} numeric and {len(m['categorical'])} categorical" for m in metas.values()), ""
    )
    return [
        "## The same days with Evidently and NannyML",
        "",
        f"Peers: {versions}, each in its own venv (`.bench/<peer>-venv` from `benchmarks/peers/<peer>-requirements.txt`) "
        "and subprocess (`benchmarks/drift_peers.py`), one BLAS/OpenMP thread. Inputs, written as Parquet per scenario: "
        "the reference period our calibration uses (the monitored population's daily snapshots over the champion's "
        "training window) and the population snapshots of each monitored day our monitor judged, with the champion's "
        f"{columns} feature columns, their types declared to both tools. Everything else is each tool's default: "
        "Evidently `Report([DataDriftPreset()])` per monitored day against the whole reference (per column: normed "
        "Wasserstein / Jensen-Shannon at 0.1 above 1,000 rows; dataset drift when at least half the columns drift); "
        "NannyML `UnivariateDriftCalculator` (Jensen-Shannon) and `DataReconstructionDriftCalculator` (PCA, 65% "
        "variance) fitted on the reference chunked by day (`chunk_period='D'`), thresholds mean + 3 sd of the "
        "reference chunks, one analysis chunk per monitored day. Unlike ours, the peers see every feature over "
        "every reference day: no warm-up days left out of windowed features, no trend features (ages, lifetime "
        "counts) judged on their shape. Wall time: the peer's whole subprocess (interpreter start, imports, "
        "Parquet reads, fitting, every day); in brackets, the fit and the days alone. Peak RSS: the subprocess's "
        "maximum resident set (`os.wait4`). Ours: calibration (cached across runs when nothing changed) plus "
        "the days, in the benchmark's process.",
        "",
        f"Sizes: {sizes}." if sizes else "",
    ]


if __name__ == "__main__":
    main()
