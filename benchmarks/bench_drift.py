"""Drift benchmark: mlops_assets.monitoring vs Evidently 0.7.x DataDriftPreset (separate venv).

Data: 20 columns (10 numeric, 10 categorical) x N reference rows vs N current rows (default 100k),
6 of the columns drifted, passed to each side as Parquet in a temporary folder. Each configuration
runs in its own subprocess (ours in the project environment, Evidently in .bench/evidently-venv,
created with `uv venv` + `uv pip install -r benchmarks/peers/evidently-requirements.txt` when
missing) and reports wall time of the drift computation (best of --repeats, results extracted as a
dict), peak RSS (getrusage) and the per-column drift flags.

Also measured: the false-alarm rate of each side's default test on categorical data without drift
(500 vs 500 rows, where Evidently's default for a categorical column with >2 values is its
chi-square test).

    uv run --locked python benchmarks/bench_drift.py            # full size, writes benchmarks/results/drift.md
    uv run --locked python benchmarks/bench_drift.py --quick    # 10k rows, fewer repetitions
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
EVIDENTLY_VENV = ROOT / ".bench" / "evidently-venv"
EVIDENTLY_REQUIREMENTS = ROOT / "benchmarks" / "peers" / "evidently-requirements.txt"
RESULTS = ROOT / "benchmarks" / "results" / "drift.md"
SEED = 20260301

# name -> (our options, Evidently DataDriftPreset options). Thresholds are aligned where the two
# tools' defaults differ (PSI: ours 0.2, Evidently 0.1) so that flag agreement compares like with like.
CONFIGS: dict[str, tuple[dict, dict]] = {
    "default": ({}, {}),
    "ks + chi-squared": (
        {"numeric_method": "ks", "categorical_method": "chi2"},
        {"num_method": "ks", "cat_method": "chisquare"},
    ),
    "psi": ({"method": "psi"}, {"method": "psi", "threshold": 0.2}),
    "wasserstein + jensen-shannon": (
        {"numeric_method": "wasserstein", "categorical_method": "jensenshannon"},
        {"num_method": "wasserstein", "cat_method": "jensenshannon"},
    ),
}
CAT_PROBS = [0.45, 0.25, 0.15, 0.1, 0.05]


# --------------------------------------------------------------------------- data


def make_data(n: int, seed: int = SEED) -> tuple[pd.DataFrame, pd.DataFrame, list[str], list[str]]:
    """20 columns; numeric n0-n2 and categorical c0-c2 drift, the rest are drawn from one distribution."""
    rng = np.random.default_rng(seed)
    ref, cur = {}, {}
    numeric = [f"n{i}" for i in range(10)]
    categorical = [f"c{i}" for i in range(10)]
    draws = [
        lambda r, m: r.normal(0, 1, m),
        lambda r, m: r.lognormal(0, 0.8, m),
        lambda r, m: r.gamma(2.0, 20.0, m),
        lambda r, m: r.exponential(3.0, m),
        lambda r, m: r.uniform(0, 100, m),
        lambda r, m: np.round(r.normal(50, 10, m), 1),  # ties
        lambda r, m: r.poisson(8, m).astype(float),  # heavy ties
        lambda r, m: r.standard_t(5, m),
        lambda r, m: r.beta(2, 5, m),
        lambda r, m: r.normal(100, 15, m),
    ]
    for i, name in enumerate(numeric):
        ref[name] = draws[i](rng, n)
        cur[name] = draws[i](rng, n)
    cur["n0"] = cur["n0"] + 0.25  # mean shift of 0.25 sd
    cur["n1"] = cur["n1"] * 1.3  # scale change
    cur["n2"] = np.where(rng.uniform(size=n) < 0.15, cur["n2"] * 3, cur["n2"])  # heavier tail
    for i, name in enumerate(categorical):
        k = 3 + i % 6
        levels = np.array([f"{name}_v{j}" for j in range(k)])
        p = np.linspace(2.0, 1.0, k)
        p /= p.sum()
        ref[name] = levels[rng.choice(k, n, p=p)]
        q = p
        if i < 3:  # drifted: move 8 points of share from the first level to the last
            q = p.copy()
            q[0] -= 0.08
            q[-1] += 0.08
        cur[name] = levels[rng.choice(k, n, p=q)]
    return pd.DataFrame(ref), pd.DataFrame(cur), numeric, categorical


def make_no_drift_categorical(reps: int, n: int = 500, cols: int = 10, seed: int = SEED + 1) -> pd.DataFrame:
    """``reps`` pairs of samples of ``cols`` categorical columns from one distribution, stacked."""
    rng = np.random.default_rng(seed)
    frames = []
    for rep in range(reps):
        for side in ("reference", "current"):
            data = {f"c{j}": np.array(list("abcde"))[rng.choice(5, n, p=CAT_PROBS)] for j in range(cols)}
            frames.append(pd.DataFrame(data).assign(rep=rep, side=side))
    return pd.concat(frames, ignore_index=True)


# --------------------------------------------------------------------------- workers (run in subprocesses)


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _reset_peak_rss() -> None:
    """Reset the process's peak RSS to its current RSS (Linux >= 4.0: /proc/self/clear_refs, value 5)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def _current_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    return _peak_rss_mb()


def _ours(ref: pd.DataFrame, cur: pd.DataFrame, categorical: list[str], options: dict) -> dict[str, bool]:
    from mlops_assets.monitoring.drift import DriftThresholds, compute_drift

    report = compute_drift(ref, cur, categorical=categorical, thresholds=DriftThresholds(), **options)
    out = report.to_dict()
    return {f["feature"]: bool(f["drifted"]) for f in out["features"]}


def _evidently(
    ref: pd.DataFrame, cur: pd.DataFrame, categorical: list[str], options: dict
) -> dict[str, bool]:
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset

    from benchmarks.drift_peers import _evidently_column_drifted

    numeric = [c for c in ref.columns if c not in categorical]
    definition = DataDefinition(numerical_columns=numeric, categorical_columns=list(categorical))
    snapshot = Report([DataDriftPreset(**options)]).run(
        current_data=Dataset.from_pandas(cur, data_definition=definition),
        reference_data=Dataset.from_pandas(ref, data_definition=definition),
    )
    flags = {}
    for metric in snapshot.dict()["metrics"]:
        config = metric["config"]
        if config.get("type", "").endswith("ValueDrift"):
            value, threshold = float(metric["value"]), float(config["threshold"])
            # Evidently's own rule per method, on the display name its snapshot reports (``K-S p_value``)
            flags[config["column"]] = _evidently_column_drifted(str(config["method"]), value, threshold)
    return flags


def worker(args: argparse.Namespace) -> None:
    """One side, one configuration: time, peak memory and flags as JSON on stdout."""
    data = Path(args.data)
    meta = json.loads((data / "meta.json").read_text())
    run = _ours if args.worker == "ours" else _evidently
    options = CONFIGS[args.config][0 if args.worker == "ours" else 1] if args.config else {}
    if args.task == "falsealarm":
        frame = pd.read_parquet(data / "no_drift.parquet")
        cols = [c for c in frame.columns if c.startswith("c")]
        alarms = tests = 0
        for _, group in frame.groupby("rep"):
            ref = group[group["side"] == "reference"][cols].reset_index(drop=True)
            cur = group[group["side"] == "current"][cols].reset_index(drop=True)
            flags = run(ref, cur, cols, options)
            alarms += sum(flags.values())
            tests += len(flags)
        print(json.dumps({"alarms": alarms, "tests": tests}))
        return
    ref = pd.read_parquet(data / "reference.parquet")
    cur = pd.read_parquet(data / "current.parquet")
    run(
        ref.head(1000), cur.head(1000), meta["categorical"], options
    )  # imports and first-call set-up, untimed
    gc.collect()
    _reset_peak_rss()  # so the peak below is the drift computation's, not the Parquet read's
    loaded_rss = _current_rss_mb()
    times = []
    flags: dict[str, bool] = {}
    for _ in range(args.repeats):
        start = time.perf_counter()
        flags = run(ref, cur, meta["categorical"], options)
        times.append(time.perf_counter() - start)
    print(
        json.dumps(
            {
                "seconds": min(times),
                "all_seconds": times,
                "loaded_rss_mb": loaded_rss,
                "peak_rss_mb": _peak_rss_mb(),
                "flags": flags,
            }
        )
    )


# --------------------------------------------------------------------------- driver


def ensure_evidently() -> tuple[Path | None, str]:
    """Python of the Evidently venv (created when missing), or None and what failed."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from benchmarks.drift_peers import ensure_venv

    return ensure_venv(EVIDENTLY_VENV, EVIDENTLY_REQUIREMENTS, "evidently")


def _spawn(python: Path, side: str, data: Path, config: str, repeats: int, task: str = "drift") -> dict:
    env = dict(
        os.environ,
        OMP_NUM_THREADS="1",
        OPENBLAS_NUM_THREADS="1",
        MKL_NUM_THREADS="1",
        PYTHONPATH=str(ROOT),
        PYTHONWARNINGS="ignore",
    )
    cmd = [
        str(python),
        str(Path(__file__).resolve()),
        "--worker",
        side,
        "--data",
        str(data),
        "--config",
        config,
        "--repeats",
        str(repeats),
        "--task",
        task,
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    if done.returncode != 0:
        raise RuntimeError(f"{side} worker failed ({config}): {done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def bench_calibrated_day(
    entities: int = 5000, numeric: int = 20, categorical: int = 5, days: int = 60, repeats: int = 5
) -> dict:
    """Time of calibrating a reference (``days`` daily chunks of ``entities`` rows) and of one day's statistics
    against it (every feature's effect sizes and p-values, the drift share, the PCA reconstruction error)."""
    from mlops_assets.monitoring.calibrate import CalibrationSettings, ReferenceData, calibrate, compare_day

    rng = np.random.default_rng(SEED)
    latent = rng.normal(0, 1, (entities, numeric))
    cats = rng.integers(0, 6, (entities, categorical))

    def day_frame(i: int) -> pd.DataFrame:
        noise = rng.normal(0, 0.3, (entities, numeric))
        frame = pd.DataFrame(np.round(latent + noise, 3), columns=[f"x{j}" for j in range(numeric)])
        for j in range(categorical):
            frame[f"c{j}"] = np.array(list("abcdef"))[cats[:, j]]
        return frame

    frames = [day_frame(i) for i in range(days)]
    ref = ReferenceData(
        [(pd.Timestamp("2026-01-01") + pd.Timedelta(days=i)).date().isoformat() for i in range(days)],
        pd.concat(frames, ignore_index=True),
        np.repeat(np.arange(days), entities),
        [f"x{j}" for j in range(numeric)],
        [f"c{j}" for j in range(categorical)],
    )
    t0 = time.perf_counter()
    cal = calibrate(ref, CalibrationSettings())
    calibration = time.perf_counter() - t0
    today = day_frame(days)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        compare_day(cal, today, day="2026-03-02")
        times.append(time.perf_counter() - t0)
    return {"calibration_s": calibration, "day_s_best": min(times), "day_s_median": float(np.median(times))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--calibrated",
        action="store_true",
        help="only time the calibrated monitor: calibration of 60 daily chunks and one day at 5,000 x 25",
    )
    parser.add_argument(
        "--quick", action="store_true", help="10k rows per side, 1 repeat, 5 false-alarm reps"
    )
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of ours (best is kept)")
    parser.add_argument(
        "--evidently-repeats", type=int, default=1, help="timed runs of Evidently (best is kept)"
    )
    parser.add_argument("--false-alarm-reps", type=int, default=20)
    parser.add_argument("--out", default=str(RESULTS))
    parser.add_argument("--worker", choices=["ours", "evidently"], help=argparse.SUPPRESS)
    parser.add_argument("--task", default="drift", help=argparse.SUPPRESS)
    parser.add_argument("--config", default="default", help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    if args.calibrated:
        print(json.dumps(bench_calibrated_day(), indent=1))
        return
    rows = 10_000 if args.quick else args.rows
    repeats = 1 if args.quick else args.repeats
    ev_repeats = 1 if args.quick else args.evidently_repeats
    fa_reps = 5 if args.quick else args.false_alarm_reps

    evidently_python, evidently_version = ensure_evidently()
    lines = [
        "# Drift benchmark: mlops_assets vs Evidently",
        "",
        f"Command: `{' '.join(['uv run --locked python benchmarks/bench_drift.py', *sys.argv[1:]])}` "
        f"({time.strftime('%Y-%m-%d', time.gmtime())}, {os.cpu_count()} cores, shared machine; "
        "each side in its own subprocess with one BLAS/OpenMP thread).",
        "",
        f"Data: 20 columns (10 numeric, 10 categorical with 3-8 levels), {rows:,} reference vs {rows:,} current "
        "rows; n0-n2 and c0-c2 drifted, the other 14 columns drawn from one distribution. "
        f"Time: best of {repeats} (ours) / {ev_repeats} (Evidently) runs of the drift computation, after an "
        "untimed warm-up run on 1,000 rows (imports, first-call set-up), including extraction of the results "
        "(Evidently: `Dataset.from_pandas` + `Report([DataDriftPreset(...)]).run` + `snapshot.dict()`; "
        "ours: `compute_drift` + `to_dict`), data already in memory. Peak memory: the subprocess's peak RSS "
        "during the timed runs (interpreter, libraries and the loaded data included; the peak is reset after "
        "loading via /proc/self/clear_refs); in brackets, the increment over the RSS before the runs.",
        "",
    ]
    if evidently_python is None:
        lines += [f"Evidently could not be run: {evidently_version}", ""]
    else:
        lines += [
            f"Evidently {evidently_version} (venv `.bench/evidently-venv`, "
            "`benchmarks/peers/evidently-requirements.txt`).",
            "",
        ]

    with tempfile.TemporaryDirectory(prefix="bench-drift-") as tmp:
        data = Path(tmp)
        ref, cur, numeric, categorical = make_data(rows)
        ref.to_parquet(data / "reference.parquet")
        cur.to_parquet(data / "current.parquet")
        make_no_drift_categorical(fa_reps).to_parquet(data / "no_drift.parquet")
        (data / "meta.json").write_text(json.dumps({"numeric": numeric, "categorical": categorical}))
        del ref, cur

        lines += [
            "| configuration (ours / Evidently) | ours s | Evidently s | speed-up | ours peak MB | "
            "Evidently peak MB | memory ratio | flags agree | drifted ours / Evidently |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---|",
        ]
        for name, (ours_opts, ev_opts) in CONFIGS.items():
            ours = _spawn(Path(sys.executable), "ours", data, name, repeats)
            print(f"{name}: ours {ours['seconds']:.3f} s", flush=True)
            label = f"{name} ({_describe(ours_opts, 'ks / chi2')} vs {_describe(ev_opts, 'wasserstein / jensenshannon')})"
            if evidently_python is None:
                lines.append(
                    f"| {label} | {ours['seconds']:.3f} | – | – | {ours['peak_rss_mb']:.0f} | – | – | – | "
                    f"{sum(ours['flags'].values())} / – |"
                )
                continue
            ev = _spawn(evidently_python, "evidently", data, name, ev_repeats)
            agree = sum(ours["flags"][c] == ev["flags"].get(c) for c in ours["flags"])
            lines.append(
                f"| {label} | {ours['seconds']:.3f} | {ev['seconds']:.3f} | {ev['seconds'] / ours['seconds']:.1f}x | "
                f"{ours['peak_rss_mb']:.0f} (+{ours['peak_rss_mb'] - ours['loaded_rss_mb']:.0f}) | "
                f"{ev['peak_rss_mb']:.0f} (+{ev['peak_rss_mb'] - ev['loaded_rss_mb']:.0f}) | "
                f"{ev['peak_rss_mb'] / ours['peak_rss_mb']:.1f}x | {agree}/{len(ours['flags'])} | "
                f"{_drifted(ours['flags'])} / {_drifted(ev['flags'])} |"
            )
            print(lines[-1], flush=True)

        lines += [
            "",
            f"False alarms on categorical data without drift (5 levels, 500 vs 500 rows, 10 columns x {fa_reps} "
            "repetitions, alpha = 0.05), each tool's default test:",
            "",
            "| tool | test | false alarms | rate |",
            "|---|---|---:|---:|",
        ]
        ours_fa = _spawn(Path(sys.executable), "ours", data, "default", 1, task="falsealarm")
        lines.append(
            f"| mlops_assets | two-sample chi-squared (contingency table) | {ours_fa['alarms']}/{ours_fa['tests']} | "
            f"{ours_fa['alarms'] / ours_fa['tests']:.1%} |"
        )
        if evidently_python is not None:
            ev_fa = _spawn(evidently_python, "evidently", data, "default", 1, task="falsealarm")
            lines.append(
                f"| Evidently {evidently_version} | chi-square goodness of fit against reference frequencies | "
                f"{ev_fa['alarms']}/{ev_fa['tests']} | {ev_fa['alarms'] / ev_fa['tests']:.1%} |"
            )

    text = "\n".join(lines) + "\n"
    print(text)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(f"written to {out}")


def _describe(options: dict, default: str) -> str:
    if not options:
        return f"default: {default}"
    methods = (
        [options.get("method")]
        if options.get("method")
        else [
            options.get("numeric_method") or options.get("num_method"),
            options.get("categorical_method") or options.get("cat_method"),
        ]
    )
    return " / ".join(m for m in methods if m)


def _drifted(flags: dict[str, bool]) -> str:
    names = sorted(c for c, v in flags.items() if v)
    return ", ".join(names) if len(names) <= 8 else f"{len(names)} columns"


if __name__ == "__main__":
    main()
