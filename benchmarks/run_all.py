"""`make bench`: every comparison benchmark in one go, each writing its table to benchmarks/results/.

Set BENCH_QUICK=1 for small sizes (a quick check that every benchmark still runs).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
BENCHMARKS = (
    "bench_import.py",
    "bench_feature_store.py",
    "bench_tiles.py",
    "bench_drift.py",
    "bench_serving.py",
    "bench_backfill.py",
)


def main() -> int:
    quick = os.environ.get("BENCH_QUICK", "") not in ("", "0")
    failed = []
    for script in BENCHMARKS:
        args = [sys.executable, str(HERE / script)] + (["--quick"] if quick else [])
        print(f"== {script} {'(quick)' if quick else ''}", flush=True)
        started = time.monotonic()
        code = subprocess.call(args, cwd=HERE.parent)
        print(f"== {script}: exit {code} in {time.monotonic() - started:.0f}s", flush=True)
        if code:
            failed.append(script)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
