"""Benchmark: point-in-time training sets and online lookups, ours vs a bare DuckDB ASOF JOIN and Feast.

"Ours" is the generic ASOF join :func:`mlops_assets.features.pit.point_in_time_join` (TTL and tie rule)
over precomputed feature rows, one Parquet file per day; the online part serves the rows' latest values
through a project's ``FeatureStore`` (``refresh_online`` + ``get_online_features``). The tiled store's
own claims (storage, the next day's run, training sets from tiles) are in ``bench_tiles.py``.

    uv run --locked python benchmarks/bench_feature_store.py            # sizes of the issue
    uv run --locked python benchmarks/bench_feature_store.py --quick    # small sizes, ~1-2 minutes

Each engine runs in its own subprocess (time and peak memory of that process only); Feast 0.67
runs in a separate venv, ``.bench/feast-venv``, created from ``benchmarks/peers/feast-requirements.txt``
with ``uv`` when missing. Data is passed as Parquet files in a temporary folder. Every result is
compared row by row (by a request id) with a reference: pandas ``merge_asof`` (stable sort, so ties
go to the row that comes last in the source), itself checked against a pure-Python brute force on a
sample. The table goes to ``benchmarks/results/feature_store.md``.

This file is also the worker each subprocess runs (``--worker``), so its top level imports only the
standard library, numpy and pandas, which the Feast venv has too.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
FEAST_VENV = ROOT / ".bench" / "feast-venv"
FEAST_REQS = ROOT / "benchmarks" / "peers" / "feast-requirements.txt"
RESULTS = ROOT / "benchmarks" / "results" / "feature_store.md"
BASE = pd.Timestamp("2026-01-01", tz="UTC")
VIEW = "bench"
FEATURES = ["f1", "f2"]
ENGINES = ["ours", "duckdb-asof", "feast-file", "feast-duckdb"]

# name, feature rows, entities, entity rows, ttl days (None: no TTL), history days
FULL_CASES = [
    ("1M rows / 100k entities / 200k entity rows, TTL 7d", 1_000_000, 100_000, 200_000, 7, 180),
    ("1M rows / 100k entities / 200k entity rows, no TTL", 1_000_000, 100_000, 200_000, None, 180),
    ("5M rows / 500k entities / 1M entity rows, TTL 7d", 5_000_000, 500_000, 1_000_000, 7, 180),
    ("5M rows / 500k entities / 1M entity rows, no TTL", 5_000_000, 500_000, 1_000_000, None, 180),
    (
        "deep history: 1M rows / 10k entities / 200k entity rows, no TTL",
        1_000_000,
        10_000,
        200_000,
        None,
        365,
    ),
]
QUICK_CASES = [
    ("40k rows / 4k entities / 8k entity rows, TTL 7d", 40_000, 4_000, 8_000, 7, 180),
    ("40k rows / 4k entities / 8k entity rows, no TTL", 40_000, 4_000, 8_000, None, 180),
    ("deep history: 100k rows / 1k entities / 20k entity rows, no TTL", 100_000, 1_000, 20_000, None, 365),
]


def peak_rss_mb() -> float:
    """Peak resident memory of this process (VmHWM: ru_maxrss would include the parent's RSS at fork)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


# ----------------------------------------------------------------------------------------- data


def generate(
    case_dir: Path,
    n_rows: int,
    n_entities: int,
    n_requests: int,
    ttl_days: int | None,
    days: int,
    seed: int = 7,
) -> None:
    """Feature rows (daily timestamps, so an entity can have ties) and entity rows around them."""
    rng = np.random.default_rng(seed)
    ent = rng.integers(0, n_entities, n_rows)
    day = rng.integers(0, days, n_rows)
    order = np.argsort(day, kind="stable")  # rows grouped by day, source order kept within a day
    ent, day = ent[order], day[order]
    feats = pd.DataFrame(
        {
            "customer_id": pd.array([f"C{i:07d}" for i in ent], dtype="str"),
            "feature_timestamp": BASE + pd.to_timedelta(day, unit="D"),
            "f1": rng.normal(size=n_rows).round(6),
            "f2": rng.integers(0, 1000, n_rows),
        }
    )
    feats["feature_timestamp"] = feats["feature_timestamp"].astype("datetime64[us, UTC]")
    # source order made explicit for engines that break ties by a created timestamp (Feast)
    feats["created"] = (BASE + pd.to_timedelta(np.arange(n_rows), unit="us")).astype("datetime64[us, UTC]")
    store_dir = case_dir / "store" / "warehouse" / "features" / VIEW
    for d, part in feats.groupby(day, sort=True):
        folder = store_dir / f"date={(BASE + pd.Timedelta(days=int(d))).date().isoformat()}"
        folder.mkdir(parents=True)
        part[["customer_id", "feature_timestamp", *FEATURES]].to_parquet(
            folder / "part-0.parquet", index=False
        )
    feats.to_parquet(case_dir / "features.parquet", index=False)
    # ~10% of requests are for entities without history; times from before the first row to
    # after the last, so some requests precede all history and some fall past the TTL
    req_ent = rng.integers(0, int(n_entities * 1.1), n_requests)
    offset_us = rng.integers(-10 * 86_400_000_000, (days + 20) * 86_400_000_000, n_requests)
    entities = pd.DataFrame(
        {
            "request_id": np.arange(n_requests),
            "customer_id": pd.array([f"C{i:07d}" for i in req_ent], dtype="str"),
            "event_timestamp": (BASE + pd.to_timedelta(offset_us, unit="us")).astype("datetime64[us, UTC]"),
        }
    )
    entities.to_parquet(case_dir / "entities.parquet", index=False)
    (case_dir / "case.json").write_text(json.dumps({"ttl_days": ttl_days}))


def reference(case_dir: Path) -> pd.DataFrame:
    """Expected f1/f2 per request id, from pandas merge_asof with stable sorts."""
    feats = pd.read_parquet(case_dir / "features.parquet")
    ents = pd.read_parquet(case_dir / "entities.parquet")
    ttl_days = json.loads((case_dir / "case.json").read_text())["ttl_days"]
    right = feats.sort_values("feature_timestamp", kind="stable")[
        ["customer_id", "feature_timestamp", *FEATURES]
    ]
    left = ents.sort_values("event_timestamp", kind="stable")
    merged = pd.merge_asof(
        left,
        right,
        left_on="event_timestamp",
        right_on="feature_timestamp",
        by="customer_id",
        direction="backward",
        allow_exact_matches=True,
        tolerance=None if ttl_days is None else pd.Timedelta(days=ttl_days),
    )
    return merged.set_index("request_id").sort_index()[FEATURES]


def brute_force_sample(case_dir: Path, ref: pd.DataFrame, n: int = 2000) -> int:
    """Mismatches of the reference against a pure-Python scan on ``n`` entity rows."""
    feats = pd.read_parquet(case_dir / "features.parquet")
    ents = pd.read_parquet(case_dir / "entities.parquet").sample(min(n, len(ref)), random_state=1)
    ttl_days = json.loads((case_dir / "case.json").read_text())["ttl_days"]
    ttl = None if ttl_days is None else pd.Timedelta(days=ttl_days)
    by_entity: dict[str, list] = {}
    wanted = set(ents["customer_id"])
    for pos, (key, ts, f1) in enumerate(
        zip(feats["customer_id"], feats["feature_timestamp"], feats["f1"], strict=True)
    ):
        if key in wanted:
            by_entity.setdefault(key, []).append((ts, pos, f1))
    bad = 0
    for rid, key, ts in zip(ents["request_id"], ents["customer_id"], ents["event_timestamp"], strict=True):
        best = None
        for fts, pos, f1 in by_entity.get(key, []):
            if fts <= ts and (ttl is None or fts >= ts - ttl) and (best is None or (fts, pos) > best[0]):
                best = ((fts, pos), f1)
        expected = None if best is None else best[1]
        got = ref.at[rid, "f1"]
        if (expected is None) != pd.isna(got) or (expected is not None and expected != got):
            bad += 1
    return bad


def compare(ref: pd.DataFrame, result: pd.DataFrame) -> dict:
    """Rows missing, duplicated and mismatched (f1 or f2, null-aware) against the reference."""
    counts = result["request_id"].value_counts()
    got = result.drop_duplicates("request_id").set_index("request_id")
    present = ref.index.isin(got.index)
    joined = ref[present].join(got[FEATURES], rsuffix="_got")
    mismatched = np.zeros(len(joined), dtype=bool)
    for f in FEATURES:
        a, b = joined[f], joined[f"{f}_got"]
        mismatched |= (a.isna() != b.isna()) | (a.notna() & b.notna() & (a.astype(float) != b.astype(float)))
    return {
        "missing": int((~present).sum()),
        "duplicated": int((counts > 1).sum()),
        "mismatched": int(mismatched.sum()),
    }


# -------------------------------------------------------------------------------------- workers


def worker_ours(case_dir: Path, repeats: int) -> dict:
    """Our generic point-in-time join (``features.pit.point_in_time_join``) over the per-day feature files."""
    from mlops_assets.features.pit import FeatureSource, point_in_time_join

    ttl_days = json.loads((case_dir / "case.json").read_text())["ttl_days"]
    ents = pd.read_parquet(case_dir / "entities.parquet")
    # one file per day in day order: a tie (same entity and day) goes to the later row of the file
    files = [
        str(p)
        for p in sorted((case_dir / "store" / "warehouse" / "features" / VIEW).glob("date=*/*.parquet"))
    ]
    source = FeatureSource(
        VIEW,
        files,
        FEATURES,
        ttl=None if ttl_days is None else timedelta(days=ttl_days),
        entity="customer_id",
        timestamp="feature_timestamp",
    )
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = point_in_time_join(ents, [source], entity="customer_id", event_timestamp="event_timestamp")
        times.append(time.perf_counter() - start)
    out[["request_id", *FEATURES]].to_parquet(case_dir / "result_ours.parquet", index=False)
    return {"seconds": min(times)}


def worker_bare(case_dir: Path, repeats: int) -> dict:
    import duckdb

    ents = pd.read_parquet(case_dir / "entities.parquet")
    pattern = case_dir / "store" / "warehouse" / "features" / VIEW / "date=*" / "*.parquet"
    con = duckdb.connect()  # connecting costs tens of ms: done once, outside the timing, as ours does
    con.execute("SET TimeZone = 'UTC'")
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        con.register("ents", ents)
        out = (
            con.sql(
                f"SELECT e.*, f.f1, f.f2, f.feature_timestamp FROM ents e ASOF LEFT JOIN read_parquet('{pattern}') f "
                "ON e.customer_id = f.customer_id AND e.event_timestamp >= f.feature_timestamp"
            )
            .to_arrow_table()
            .to_pandas()
        )
        con.unregister("ents")
        times.append(time.perf_counter() - start)
    con.close()
    out[["request_id", *FEATURES]].to_parquet(case_dir / "result_duckdb-asof.parquet", index=False)
    return {"seconds": min(times)}


def _feast_store(case_dir: Path, engine: str, ttl_days: int | None, features_path: Path):
    from feast import Entity, FeatureStore, FeatureView, Field, FileSource
    from feast.repo_config import RepoConfig
    from feast.types import Float64, Int64, String
    from feast.value_type import ValueType

    repo = case_dir / f"feast_{engine}"
    shutil.rmtree(repo, ignore_errors=True)
    repo.mkdir()
    offline = {"type": "file"} if engine in ("feast-file", "feast-online") else {"type": "duckdb"}
    config = RepoConfig(
        project="bench",
        provider="local",
        registry=str(repo / "registry.db"),
        repo_path=str(repo),
        offline_store=offline,
        online_store={"type": "sqlite", "path": str(repo / "online.db")},
        entity_key_serialization_version=3,
    )
    store = FeatureStore(config=config)
    entity = Entity(name="customer", join_keys=["customer_id"], value_type=ValueType.STRING)
    source = FileSource(
        path=str(features_path), timestamp_field="feature_timestamp", created_timestamp_column="created"
    )
    view = FeatureView(
        name=VIEW,
        entities=[entity],
        source=source,
        ttl=timedelta(days=ttl_days) if ttl_days else timedelta(0),
        schema=[
            Field(name="customer_id", dtype=String),
            Field(name="f1", dtype=Float64),
            Field(name="f2", dtype=Int64),
        ],
    )
    store.apply([entity, view])
    return store


def worker_feast(case_dir: Path, engine: str, repeats: int) -> dict:
    ttl_days = json.loads((case_dir / "case.json").read_text())["ttl_days"]
    store = _feast_store(case_dir, engine, ttl_days, case_dir / "features.parquet")
    ents = pd.read_parquet(case_dir / "entities.parquet")
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = store.get_historical_features(
            entity_df=ents, features=[f"{VIEW}:{f}" for f in FEATURES]
        ).to_df()
        times.append(time.perf_counter() - start)
    out[["request_id", *FEATURES]].to_parquet(case_dir / f"result_{engine}.parquet", index=False)
    return {"seconds": min(times)}


def _latencies(fn, n: int) -> list[float]:
    out = []
    for i in range(n):
        start = time.perf_counter()
        fn(i)
        out.append(time.perf_counter() - start)
    return out


def _p99(values: list[float]) -> float:
    return float(np.percentile(values, 99))


def _online_project(case_dir: Path):
    """A project whose event source holds the feature rows and whose view serves their latest values."""
    from mlops_assets.project import Project
    from mlops_assets.spec.model import Column, Entity, Feature, FeatureView, Partitions, ProjectSpec, Source

    spec = ProjectSpec(
        name="bench-online",
        partitions=Partitions(start=BASE.date(), end=BASE.date()),
        entities={"customer": Entity(join_key="customer_id", dtype="string")},
        sources={
            "bench_rows": Source(
                kind="events",
                timestamp="feature_timestamp",
                columns={
                    "customer_id": Column(type="string"),
                    "feature_timestamp": Column(type="timestamp"),
                    "f1": Column(type="float64"),
                    "f2": Column(type="int64"),
                },
            )
        },
        feature_views={
            VIEW: FeatureView(
                entity="customer",
                source="bench_rows",
                features={"f1": Feature(agg="latest", column="f1"), "f2": Feature(agg="latest", column="f2")},
            )
        },
    )
    return Project.from_spec(spec, case_dir / "online_store")


def worker_ours_online(case_dir: Path, n_keys: int) -> dict:
    from mlops_assets.features.store import FeatureStore
    from mlops_assets.storage import write_partition

    project = _online_project(case_dir)
    feats = pd.read_parquet(case_dir / "features.parquet")
    day = BASE.date().isoformat()
    write_partition(
        feats[["customer_id", "feature_timestamp", *FEATURES]], project.paths.partition_dir("bench_rows", day)
    )
    store = FeatureStore(project)
    started = time.perf_counter()
    store.materialize([day])
    store.refresh_online()
    materialize_s = time.perf_counter() - started
    ids = pd.read_parquet(case_dir / "online_ids.parquet")["customer_id"].tolist()
    refs = [f"{VIEW}:{f}" for f in FEATURES]
    batch = ids[:n_keys]
    store.get_online_features_dict(batch, refs)  # warm
    many = _latencies(lambda i: store.get_online_features_dict(batch, refs), 20)
    many_df = _latencies(lambda i: store.get_online_features(batch, refs), 20)
    single = _latencies(lambda i: store.get_online_features_dict([ids[i % len(ids)]], refs), 5000)
    single_df = _latencies(lambda i: store.get_online_features([ids[i % len(ids)]], refs), 1000)
    got = store.get_online_features(batch, refs)
    return {
        "batch_seconds": statistics.median(many),
        "single_p99": _p99(single),
        "batch_df_seconds": statistics.median(many_df),
        "single_df_p99": _p99(single_df),
        "materialize_seconds": materialize_s,
        "ok": int((got[f"{VIEW}__status"] == "fresh").sum()),
    }


def worker_feast_online(case_dir: Path, n_keys: int) -> dict:
    store = _feast_store(case_dir, "feast-online", None, case_dir / "features.parquet")
    feats = pd.read_parquet(case_dir / "features.parquet")
    start_ts = feats["feature_timestamp"].min().to_pydatetime() - timedelta(days=1)
    end_ts = feats["feature_timestamp"].max().to_pydatetime() + timedelta(days=1)
    started = time.perf_counter()
    store.materialize(start_date=start_ts, end_date=end_ts)
    materialize_s = time.perf_counter() - started
    ids = pd.read_parquet(case_dir / "online_ids.parquet")["customer_id"].tolist()
    refs = [f"{VIEW}:{f}" for f in FEATURES]
    rows = [{"customer_id": i} for i in ids[:n_keys]]
    store.get_online_features(features=refs, entity_rows=rows).to_dict()  # warm
    many = _latencies(lambda i: store.get_online_features(features=refs, entity_rows=rows).to_dict(), 5)
    single = _latencies(
        lambda i: store.get_online_features(
            features=refs, entity_rows=[{"customer_id": ids[i % len(ids)]}]
        ).to_dict(),
        500,
    )
    got = store.get_online_features(features=refs, entity_rows=rows).to_dict()
    return {
        "batch_seconds": statistics.median(many),
        "single_p99": _p99(single),
        "materialize_seconds": materialize_s,
        "ok": int(sum(v is not None for v in got["f1"])),
    }


def run_worker(args: argparse.Namespace) -> None:
    os.environ.setdefault("FEAST_USAGE", "False")
    case_dir = Path(args.case)
    if args.worker == "ours":
        stats = worker_ours(case_dir, args.repeats)
    elif args.worker == "duckdb-asof":
        stats = worker_bare(case_dir, args.repeats)
    elif args.worker in ("feast-file", "feast-duckdb"):
        stats = worker_feast(case_dir, args.worker, args.repeats)
    elif args.worker == "ours-online":
        stats = worker_ours_online(case_dir, args.keys)
    elif args.worker == "feast-online":
        stats = worker_feast_online(case_dir, args.keys)
    else:
        raise SystemExit(f"unknown worker {args.worker}")
    stats["peak_rss_mb"] = peak_rss_mb()
    (case_dir / f"stats_{args.worker}.json").write_text(json.dumps(stats))


# ----------------------------------------------------------------------------------------- main


def ensure_feast_venv() -> tuple[Path | None, str]:
    """The Feast venv's python, creating it with uv when missing; (None, why) when it fails."""
    python = FEAST_VENV / "bin" / "python"
    if python.exists():
        return python, ""
    uv = shutil.which("uv")
    if uv is None:
        return None, "uv not found on PATH"
    steps = [
        [uv, "venv", "--python", "3.11", str(FEAST_VENV)],
        [uv, "pip", "install", "--python", str(python), "-r", str(FEAST_REQS)],
    ]
    for step in steps:
        proc = subprocess.run(step, capture_output=True, text=True)
        if proc.returncode != 0:
            shutil.rmtree(FEAST_VENV, ignore_errors=True)
            return None, f"`{' '.join(step[:3])}` failed: {proc.stderr.strip()[-400:]}"
    return python, ""


def spawn(python: Path | str, worker: str, case_dir: Path, timeout: float, **extra) -> dict:
    cmd = [str(python), str(Path(__file__).resolve()), "--worker", worker, "--case", str(case_dir)]
    for key, value in extra.items():
        cmd += [f"--{key}", str(value)]
    env = {**os.environ, "FEAST_USAGE": "False", "PYTHONPATH": str(ROOT)}
    try:
        proc = subprocess.run(
            cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=str(case_dir)
        )
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    stats_file = case_dir / f"stats_{worker}.json"
    if proc.returncode != 0 or not stats_file.exists():
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        return {"error": f"exit {proc.returncode}: {' | '.join(tail)}"}
    return json.loads(stats_file.read_text())


def fmt_ratio(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}×"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes for a fast check")
    parser.add_argument("--skip-feast", action="store_true", help="only ours and the bare ASOF join")
    parser.add_argument("--repeats", type=int, default=3, help="runs of ours and the bare join (best kept)")
    parser.add_argument("--feast-repeats", type=int, default=1, help="runs of each Feast store (best kept)")
    parser.add_argument(
        "--only", help="run only the cases whose name contains this text (and no online part)"
    )
    parser.add_argument("--out", default=str(RESULTS))
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--case", help=argparse.SUPPRESS)
    parser.add_argument("--keys", type=int, default=1000, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        run_worker(args)
        return

    cases = QUICK_CASES if args.quick else FULL_CASES
    if args.only:
        cases = [c for c in cases if args.only in c[0]]
    timeout = 600 if args.quick else 3600
    feast_python, feast_error = (None, "skipped (--skip-feast)") if args.skip_feast else ensure_feast_venv()
    engines = ENGINES if feast_python else ENGINES[:2]
    lines = [
        f"# Feature store benchmark ({'quick' if args.quick else 'full'} sizes)",
        "",
        f"Run {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')} on {os.cpu_count()} cores with "
        f"`uv run --locked python benchmarks/bench_feature_store.py{' --quick' if args.quick else ''}`. "
        "Time: best of "
        f"{args.repeats} for ours and the bare join, of {args.feast_repeats} for Feast; peak memory: max RSS of the engine's "
        "own process (VmHWM; interpreter and imports included). Rows are checked against a pandas merge_asof "
        "reference (ties: last row in source order wins; Feast gets a `created` column in that order, "
        "so its tie rule gives the same answer). The bare ASOF join has no TTL and no tie rule.",
        "",
    ]
    if feast_error:
        lines += [f"Feast: not run: {feast_error}", ""]
    lines += [
        "| case | engine | time (s) | time vs bare ASOF | ours faster by | peak MB | missing | duplicated | mismatched |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    with tempfile.TemporaryDirectory(prefix="bench-fs-") as tmp:
        for n, (name, n_rows, n_ent, n_req, ttl, days) in enumerate(cases):
            case_dir = Path(tmp) / f"case{n}"
            case_dir.mkdir()
            print(f"[{name}] generating data", flush=True)
            generate(case_dir, n_rows, n_ent, n_req, ttl, days)
            ref = reference(case_dir)
            bad_ref = brute_force_sample(case_dir, ref)
            if bad_ref:
                lines.append(
                    f"| {name} | reference | – | – | – | – | – | – | {bad_ref} vs brute force (sample) |"
                )
            stats = {}
            for engine in engines:
                print(f"[{name}] {engine}", flush=True)
                python = feast_python if engine.startswith("feast") else sys.executable
                repeats = args.feast_repeats if engine.startswith("feast") else args.repeats
                stats[engine] = spawn(python, engine, case_dir, timeout, repeats=repeats)
            bare = stats.get("duckdb-asof", {}).get("seconds")
            ours = stats.get("ours", {}).get("seconds")
            for engine in engines:
                st = stats[engine]
                if "error" in st:
                    lines.append(f"| {name} | {engine} | failed: {st['error'][:200]} | | | | | | |")
                    continue
                cmp = compare(ref, pd.read_parquet(case_dir / f"result_{engine}.parquet"))
                vs_bare = st["seconds"] / bare if bare else None
                faster = st["seconds"] / ours if ours and engine != "ours" else None
                lines.append(
                    f"| {name} | {engine} | {st['seconds']:.3f} | {fmt_ratio(vs_bare)} | {fmt_ratio(faster)} | "
                    f"{st['peak_rss_mb']:.0f} | {cmp['missing']} | {cmp['duplicated']} | {cmp['mismatched']} |"
                )
            print("\n".join(lines[-len(engines) :]), flush=True)
            shutil.rmtree(case_dir, ignore_errors=True)

        if args.only:
            ours_on = feast_on = {"error": "not run (--only)"}
            n_online = 0
        else:
            ours_on, feast_on, n_online = run_online(
                Path(tmp), args.quick, feast_python, feast_error, timeout
            )
    lines += online_lines(ours_on, feast_on, n_online)
    text = "\n".join(lines) + "\n"
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(text)


def run_online(tmp: Path, quick: bool, feast_python: Path | None, feast_error: str, timeout: float):
    """Online lookups on one latest row per entity, ours and Feast's SQLite store."""
    n_online = 5_000 if quick else 100_000
    case_dir = tmp / "online"
    case_dir.mkdir()
    print(f"[online] {n_online} entities", flush=True)
    generate(case_dir, n_online, n_online, 10, None, 1)
    ids = pd.read_parquet(case_dir / "features.parquet")["customer_id"].drop_duplicates()
    ids.sample(frac=1.0, random_state=3).to_frame().to_parquet(case_dir / "online_ids.parquet", index=False)
    ours_on = spawn(sys.executable, "ours-online", case_dir, timeout, keys=1000)
    feast_on = (
        spawn(feast_python, "feast-online", case_dir, timeout, keys=1000)
        if feast_python
        else {"error": feast_error}
    )
    return ours_on, feast_on, n_online


def online_lines(ours_on: dict, feast_on: dict, n_online: int) -> list[str]:
    """The online table."""
    if not n_online:
        return []
    lines = [
        "",
        f"Online store, {n_online:,} entities (SQLite both):",
        "",
        "| engine | 1,000-key lookup (ms, median) | ours faster by | single-key p99 (ms) | peak MB | notes |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for engine, st in (("ours", ours_on), ("feast", feast_on)):
        if "error" in st:
            lines.append(f"| {engine} | failed: {st['error'][:200]} | | | | |")
            continue
        faster = (
            st["batch_seconds"] / ours_on["batch_seconds"]
            if engine != "ours" and "error" not in ours_on
            else None
        )
        note = (
            (
                f"`get_online_features_dict`; the DataFrame path `get_online_features`: "
                f"{st['batch_df_seconds'] * 1e3:.2f} ms for 1,000 keys, single-key p99 "
                f"{st['single_df_p99'] * 1e3:.2f} ms; materialize + refresh_online "
                f"{st['materialize_seconds']:.1f} s; {st['ok']} of 1000 keys fresh"
            )
            if engine == "ours"
            else (
                f"`get_online_features(...).to_dict()`; materialize {st['materialize_seconds']:.1f} s; "
                f"{st['ok']} of 1000 keys found"
            )
        )
        lines.append(
            f"| {engine} | {st['batch_seconds'] * 1e3:.2f} | {fmt_ratio(faster)} | "
            f"{st['single_p99'] * 1e3:.3f} | {st['peak_rss_mb']:.0f} | {note} |"
        )
    return lines


if __name__ == "__main__":
    main()
