"""Import and run-start benchmark: what every run process, step process and `dagster dev` reload pays.

1. Code-location import: wall and CPU of `python -c "import mlops_assets.definitions"` (the churn example's
   definitions, built) next to `python -c "import dagster"` (the floor: Dagster itself), for this checkout and
   for an earlier revision (``--before``, checked out in a temporary git worktree), alternated, median of N.
2. Run start: one partition of `ingestion_job` (one step per source, so 3 step processes) executed by
   `dagster job execute` with Dagster's multiprocess executor, on a small simulated world: wall and CPU of the
   whole process tree, for the earlier revision and this one with the default `spawn` start method, and for
   this one with `forkserver` preloading the code location, its default now (each step then forks from a
   process that already imported it).

Writes ``benchmarks/results/import.md`` and prints it.

    uv run --locked python benchmarks/bench_import.py --quick    # 3 repeats
    uv run --locked python benchmarks/bench_import.py             # 7 repeats
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "import.md"
CHURN_SPEC = ROOT / "examples" / "churn" / "spec.yaml"
#: The last revision before the code location stopped importing pandas, scikit-learn, scipy and mlflow.
DEFAULT_BEFORE = "130acc5"
HEAVY = ("pandas", "pyarrow", "numpy", "duckdb", "sklearn", "scipy", "mlflow", "matplotlib", "statsmodels")
DAY = "2026-01-05"


def timed(cmd: list[str], cwd: Path, env: dict[str, str]) -> tuple[float, float, str]:
    """(wall seconds, CPU seconds of the process tree, stdout) of one command."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    out = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if out.returncode:
        raise RuntimeError(f"{' '.join(cmd[:4])}... failed ({out.returncode}):\n{out.stderr[-3000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, out.stdout


def checkout(rev: str, into: Path) -> Path:
    subprocess.run(
        ["git", "worktree", "add", "--detach", str(into), rev], cwd=ROOT, check=True, capture_output=True
    )
    return into


def remove_checkout(path: Path) -> None:
    subprocess.run(["git", "worktree", "remove", "--force", str(path)], cwd=ROOT, capture_output=True)


def medians(samples: list[tuple[float, float]]) -> tuple[float, float]:
    return statistics.median(s[0] for s in samples), statistics.median(s[1] for s in samples)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="3 repeats instead of 7")
    parser.add_argument("--before", default=DEFAULT_BEFORE, help="earlier git revision to compare with")
    parser.add_argument("--repeats", type=int, default=0)
    args = parser.parse_args(argv)
    repeats = args.repeats or (3 if args.quick else 7)
    load_start = os.getloadavg()
    work = Path(tempfile.mkdtemp(prefix="bench-import-"))
    before_tree = checkout(args.before, work / "before")
    try:
        data = work / "data"
        from examples.churn.simulator import simulate

        simulate(data / "landing", days=10, start="2026-01-01", seed=7, size=200)
        base_env = {
            **os.environ,
            "MLOPS_SPEC": str(CHURN_SPEC),
            "MLOPS_DATA_DIR": str(data),
            "PYTHONDONTWRITEBYTECODE": "0",
        }
        trees = {"before": before_tree, "now": ROOT}
        probe = f"import sys, mlops_assets.definitions; print([m for m in {HEAVY!r} if m in sys.modules])"
        # warm the bytecode caches of both trees (a first import compiles; users run warm)
        heavy_loaded = {}
        for name, tree in trees.items():
            heavy_loaded[name] = timed([sys.executable, "-c", probe], tree, base_env)[2].strip()
        imports: dict[str, list[tuple[float, float]]] = {"dagster": [], "before": [], "now": []}
        for i in range(repeats):
            print(f"import round {i + 1}/{repeats}", flush=True)
            imports["dagster"].append(timed([sys.executable, "-c", "import dagster"], ROOT, base_env)[:2])
            for name, tree in trees.items():
                imports[name].append(
                    timed([sys.executable, "-c", "import mlops_assets.definitions"], tree, base_env)[:2]
                )

        # the earlier revision's default is spawn; now the default forks from a forkserver (see executors.py)
        variants = {
            "before, spawn": (before_tree, [], {}),
            "now, spawn": (ROOT, [], {"MLOPS_EXECUTOR": "multiprocess_spawn"}),
            "now, forkserver + preload (the default)": (ROOT, [], {}),
        }
        runs: dict[str, list[tuple[float, float]]] = {k: [] for k in variants}
        for i in range(repeats):
            for label, (tree, extra, variant_env) in variants.items():
                home = Path(tempfile.mkdtemp(dir=work, prefix="home-"))
                env = {**base_env, **variant_env, "DAGSTER_HOME": str(home)}
                cmd = [
                    sys.executable,
                    "-m",
                    "dagster",
                    "job",
                    "execute",
                    "-m",
                    "mlops_assets.definitions",
                    "-j",
                    "ingestion_job",
                    "--tags",
                    json.dumps({"dagster/partition": DAY}),
                    *extra,
                ]
                wall, cpu, _ = timed(cmd, tree, env)
                runs[label].append((wall, cpu))
                print(f"run round {i + 1}/{repeats} {label}: {wall:.1f}s wall, {cpu:.1f}s CPU", flush=True)
                shutil.rmtree(home, ignore_errors=True)
    finally:
        remove_checkout(before_tree)
        shutil.rmtree(work, ignore_errors=True)

    floor = medians(imports["dagster"])
    lines = [
        "# Code-location import and run start",
        "",
        f"Run {datetime.now(UTC):%Y-%m-%d %H:%M} UTC on {os.cpu_count()} cores ({platform.python_version()}), "
        f"with `uv run --locked python benchmarks/bench_import.py{' --quick' if args.quick else ''}`; "
        f"median of {repeats}, alternated; earlier revision `{args.before}`. Load average at the start "
        f"{' '.join(f'{x:.1f}' for x in load_start)}, at the end {' '.join(f'{x:.1f}' for x in os.getloadavg())}.",
        "",
        "## `import mlops_assets.definitions` (churn example)",
        "",
        "| what | wall (s) | CPU (s) | wall vs `import dagster` | heavy libraries imported |",
        "|---|---:|---:|---:|---|",
        f"| `import dagster` (the floor) | {floor[0]:.2f} | {floor[1]:.2f} | 1.00x | – |",
    ]
    for name in ("before", "now"):
        wall, cpu = medians(imports[name])
        label = f"definitions at `{args.before}`" if name == "before" else "definitions now"
        lines.append(
            f"| {label} | {wall:.2f} | {cpu:.2f} | {wall / floor[0]:.2f}x | {heavy_loaded[name].strip('[]') or 'none'} |"
        )
    before_w, now_w = medians(imports["before"])[0], medians(imports["now"])[0]
    lines += [
        "",
        f"Now vs before: {now_w / before_w:.2f}x the wall time; above Dagster's own import: "
        f"{before_w - floor[0]:.2f} s before, {now_w - floor[0]:.2f} s now.",
        "",
        f"## One run: `ingestion_job`, partition {DAY} (3 step processes, multiprocess executor)",
        "",
        "| variant | wall (s) | CPU of the process tree (s) | wall vs before | CPU vs before |",
        "|---|---:|---:|---:|---:|",
    ]
    ref = medians(runs["before, spawn"])
    for label, samples in runs.items():
        wall, cpu = medians(samples)
        lines.append(f"| {label} | {wall:.2f} | {cpu:.2f} | {wall / ref[0]:.2f}x | {cpu / ref[1]:.2f}x |")
    lines += [
        "",
        "Every run (wall s, CPU s): "
        + json.dumps({k: [[round(a, 2), round(b, 2)] for a, b in v] for k, v in runs.items()}),
    ]
    text = "\n".join(lines) + "\n"
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
