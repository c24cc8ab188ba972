"""Serving benchmark: the same registered model behind `mlflow models serve` and behind our app.

Registers a churn model (HistGradientBoosting pipeline) in a throwaway MLflow store, starts both
servers on 127.0.0.1, and drives each at 1, 10 and 50 concurrent connections for a bounded time
(wrk when installed, else a small httpx load generator): MLflow's `/invocations` and ours with the
very same one-row `dataframe_records` body, and our `/predict` with the same row as explicit
features. Also times the in-process predict path: one-row DataFrame through the pipeline vs the
compiled numpy path. Writes ``benchmarks/results/serving.md`` and prints it.

    uv run --locked python benchmarks/bench_serving.py --quick     # 3 s per cell
    uv run --locked python benchmarks/bench_serving.py              # 10 s per cell
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
CHURN_SPEC = ROOT / "examples" / "churn" / "spec.yaml"
RESULTS = ROOT / "benchmarks" / "results" / "serving.md"
CONCURRENCY = (1, 10, 50)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def register_model(data_root: Path) -> tuple[str, str, dict]:
    """Train and register a champion in a fresh MLflow store; return (tracking URI, model name, one feature row)."""
    from threadpoolctl import threadpool_limits

    from mlops_assets.project import Project
    from mlops_assets.training import registry
    from mlops_assets.training.task import ModelTask
    from mlops_assets.training.tracking import TrackingConfig, client_for, ensure_tracking_store
    from mlops_assets.training.train import TrainConfig, train_and_log
    from mlops_assets_tests.synthetic import CATEGORICAL_FEATURES, NUMERIC_FEATURES, synthetic_training_set

    project = Project.load(CHURN_SPEC, data_root)
    tracking = TrackingConfig.for_project(project)
    ensure_tracking_store(tracking)
    frame = synthetic_training_set(3000, seed=1)
    task = ModelTask.from_project(project)
    with threadpool_limits(limits=1):
        result = train_and_log(
            frame, task, TrainConfig.from_task(task), tracking=tracking, importance_repeats=1
        )
    registry.promote(
        client_for(tracking),
        result.version,
        "benchmark champion",
        model_name=tracking.model_name,
        history_path=registry.default_history_path(data_root),
    )
    row = frame[NUMERIC_FEATURES + CATEGORICAL_FEATURES].iloc[3].to_dict()
    row = {
        k: (None if isinstance(v, float) and math.isnan(v) else (v.item() if hasattr(v, "item") else v))
        for k, v in row.items()
    }
    return tracking.tracking_uri, tracking.model_name, row


def wait_ready(url: str, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}: {proc.stderr.read().decode()[-2000:]}")
        try:
            if httpx.get(url, timeout=1.0).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    raise RuntimeError(f"{url} not ready after {timeout} s")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, 15)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.wait()


def _to_ms(value: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)(us|ms|s|m)", value).groups()
    return float(number) * {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 6e4}[unit]


def run_wrk(url: str, body: str, connections: int, seconds: float, workdir: Path) -> dict:
    script = workdir / "post.lua"
    script.write_text(
        'wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
        f"wrk.body = {json.dumps(body)}\n"
    )
    out = subprocess.run(
        [
            "wrk",
            "-t1",
            f"-c{connections}",
            f"-d{max(1, round(seconds))}s",
            "--latency",
            "--timeout",
            "10s",
            "-s",
            str(script),
            url,
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    p50 = _to_ms(re.search(r"\s50%\s+(\S+)", out).group(1))
    p99 = _to_ms(re.search(r"\s99%\s+(\S+)", out).group(1))
    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    errors = re.search(r"Socket errors:.*?timeout (\d+)", out)
    return {
        "rps": rps,
        "p50": p50,
        "p99": p99,
        "non_2xx": int(bad.group(1)) if bad else 0,
        "timeouts": int(errors.group(1)) if errors else 0,
    }


def run_httpx(url: str, body: str, connections: int, seconds: float, workdir: Path) -> dict:
    import httpx

    async def main() -> dict:
        latencies: list[float] = []
        bad = 0
        limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
        async with httpx.AsyncClient(limits=limits, timeout=10.0) as client:
            end = time.perf_counter() + seconds

            async def worker() -> None:
                nonlocal bad
                while time.perf_counter() < end:
                    t0 = time.perf_counter()
                    r = await client.post(url, content=body, headers={"content-type": "application/json"})
                    latencies.append((time.perf_counter() - t0) * 1e3)
                    bad += r.status_code >= 300

            start = time.perf_counter()
            await asyncio.gather(*(worker() for _ in range(connections)))
            elapsed = time.perf_counter() - start
        return {
            "rps": len(latencies) / elapsed,
            "p50": float(np.percentile(latencies, 50)),
            "p99": float(np.percentile(latencies, 99)),
            "non_2xx": bad,
            "timeouts": 0,
        }

    return asyncio.run(main())


def in_process_timings(tracking_uri: str, model_name: str, row: dict, repeats: int) -> dict:
    """Median µs per single-row prediction: DataFrame through the pipeline vs the compiled numpy path."""
    import pandas as pd
    from threadpoolctl import threadpool_limits

    from mlops_assets.serving.models import RegistryModelSource, compile_predictor

    _, model, _ = RegistryModelSource(tracking_uri, model_name).load("champion")
    pred = compile_predictor(model)
    frame = pd.DataFrame([row]).astype({c: "float64" for c in pred.numeric})
    for c in pred.categorical:
        frame[c] = frame[c].astype(object)
    out = {}
    with threadpool_limits(limits=1):
        for name, fn in (
            ("dataframe", lambda: model.predict_proba(frame)),
            ("compiled", lambda: pred.predict_one(row)),
        ):
            fn()
            samples = []
            for _ in range(7):
                t0 = time.perf_counter()
                for _ in range(repeats):
                    fn()
                samples.append((time.perf_counter() - t0) / repeats * 1e6)
            out[name] = float(np.median(samples))
        out["agree"] = abs(float(model.predict_proba(frame)[0, 1]) - pred.predict_one(row)) < 1e-12
        out["fast_path"] = pred.fast
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="3 s per cell instead of 10")
    parser.add_argument("--seconds", type=float, default=None, help="seconds per cell")
    parser.add_argument("--workers", type=int, default=1, help="uvicorn workers of our app (default 1)")
    parser.add_argument("--loadgen", choices=("auto", "wrk", "httpx"), default="auto")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    seconds = args.seconds or (3.0 if args.quick else 10.0)
    loadgen = args.loadgen if args.loadgen != "auto" else ("wrk" if shutil.which("wrk") else "httpx")
    drive = run_wrk if loadgen == "wrk" else run_httpx

    workdir = Path(tempfile.mkdtemp(prefix="bench-serving-"))
    data_root = workdir / "data"
    print(f"registering a model under {data_root} ...", flush=True)
    tracking_uri, model_name, row = register_model(data_root)
    venv_bin = str(Path(sys.executable).parent)
    env = os.environ | {
        "MLFLOW_TRACKING_URI": tracking_uri,
        "MLOPS_DATA_DIR": str(data_root),
        "MLOPS_SPEC": str(CHURN_SPEC),
        "PATH": venv_bin + os.pathsep + os.environ.get("PATH", ""),
        "MLFLOW_DISABLE_TELEMETRY": "true",
    }
    invocation = json.dumps({"dataframe_records": [row]})  # the very same body for both servers
    ours_cmd = [
        sys.executable,
        "-c",
        f"from mlops_assets.serving.app import serve; serve(host='127.0.0.1', port={{port}}, workers={args.workers})",
    ]
    servers = {
        "mlflow models serve": (
            [
                str(Path(venv_bin) / "mlflow"),
                "models",
                "serve",
                "-m",
                f"models:/{model_name}@champion",
                "--env-manager",
                "local",
                "-h",
                "127.0.0.1",
                "-p",
                "{port}",
            ],
            {"/invocations": invocation},
            "/ping",
        ),
        "mlops serve": (
            ours_cmd,
            {"/invocations": invocation, "/predict": json.dumps({"customer_id": "C000003", "features": row})},
            "/health",
        ),
    }
    results: dict[str, dict[int, dict]] = {}
    scores: dict[str, float] = {}
    for name, (cmd, bodies, ready) in servers.items():
        port = free_port()
        proc = subprocess.Popen(
            [c.replace("{port}", str(port)) for c in cmd],
            env=env,
            cwd=workdir,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        try:
            base = f"http://127.0.0.1:{port}"
            wait_ready(base + ready, proc)
            import httpx

            for path, body in bodies.items():
                label = f"{name} {path}"
                answer = httpx.post(
                    base + path, content=body, headers={"content-type": "application/json"}, timeout=30
                ).json()
                scores[label] = float(
                    answer["predictions"][0][1]
                    if "predictions" in answer
                    else answer.get("score", float("nan"))
                )
                drive(base + path, body, 10, 1.0, workdir)  # warm-up
                results[label] = {}
                for c in CONCURRENCY:
                    results[label][c] = drive(base + path, body, c, seconds, workdir)
                    r = results[label][c]
                    print(
                        f"{label:36s} c={c:<3d} {r['rps']:8.1f} req/s  p50 {r['p50']:7.2f} ms  "
                        f"p99 {r['p99']:8.2f} ms  non-2xx {r['non_2xx']}",
                        flush=True,
                    )
        finally:
            stop(proc)
    timings = in_process_timings(tracking_uri, model_name, row, repeats=300 if args.quick else 1000)
    shutil.rmtree(workdir, ignore_errors=True)

    mlf = results["mlflow models serve /invocations"]
    same_body = results["mlops serve /invocations"]
    ours = results["mlops serve /predict"]
    lines = [
        "# Serving benchmark: `mlops serve` vs `mlflow models serve`",
        "",
        f"Run {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')} on {os.cpu_count()} cores "
        f"({platform.machine()}, Python {platform.python_version()}), load generator `{loadgen}` on 127.0.0.1, "
        f"{seconds:g} s per cell, one-row requests, the same registered HistGradientBoosting pipeline. "
        f"mlflow: defaults with `--env-manager local`, `POST /invocations`; ours: {args.workers} uvicorn "
        "worker(s), prediction log on, `POST /invocations` with the same `dataframe_records` body and "
        f"`POST /predict` with the row as explicit features. Command: "
        f"`uv run --locked python benchmarks/bench_serving.py{' --quick' if args.quick else ''}`.",
        "",
        "| clients | mlflow req/s | mlflow p99 ms | ours /invocations req/s | ours /invocations p99 ms | "
        "ours /predict req/s | ours /predict p50 ms | ours /predict p99 ms | throughput ratio (/predict) | "
        "p99 ratio (mlflow/ours) |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for c in CONCURRENCY:
        m, i, o = mlf[c], same_body[c], ours[c]
        lines.append(
            f"| {c} | {m['rps']:.0f} | {m['p99']:.1f} | {i['rps']:.0f} | {i['p99']:.1f} | {o['rps']:.0f} | "
            f"{o['p50']:.2f} | {o['p99']:.1f} | {o['rps'] / m['rps']:.1f}× | {m['p99'] / o['p99']:.1f}× |"
        )
    errors = {n: sum(r["non_2xx"] + r["timeouts"] for r in res.values()) for n, res in results.items()}
    reference = scores["mlflow models serve /invocations"]
    lines += [
        "",
        "Failed responses: " + ", ".join(f"{n} {e}" for n, e in errors.items()) + ". "
        f"Same score from every endpoint: {all(abs(v - reference) < 1e-9 for v in scores.values())} "
        f"({reference:.6f}).",
        "",
        f"In-process single row (median of 7 × {300 if args.quick else 1000} calls, one thread): one-row DataFrame "
        f"through the pipeline {timings['dataframe']:.0f} µs; compiled numpy path {timings['compiled']:.0f} µs "
        f"({timings['dataframe'] / timings['compiled']:.1f}× faster; identical score: {timings['agree']}).",
        "",
        "Targets (issue 6): ≥3× mlflow's throughput at 10 and 50 clients, p99 ≤ 20 ms at 1 client, "
        "in-process path ≤ 1.4 ms (2× of 0.7 ms).",
        f"Met: throughput@10 {ours[10]['rps'] >= 3 * mlf[10]['rps']}, throughput@50 "
        f"{ours[50]['rps'] >= 3 * mlf[50]['rps']}, p99@1 {ours[1]['p99'] <= 20}, in-process "
        f"{timings['compiled'] <= 1400}.",
    ]
    text = "\n".join(lines) + "\n"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print()
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
