"""Benchmark: the tiled feature store's three claims, each a ratio measured in one run.

    uv run --locked python benchmarks/bench_tiles.py            # full sizes (20k entities, 365 days)
    uv run --locked python benchmarks/bench_tiles.py --quick    # small sizes, a minute or two

(a) **Storage.** Rows and bytes an event view stores (one tile per entity-day with records) against
    the raw source rows, and what the old dense layout (one row per entity and day) would store; for a
    snapshot source exported in full every day, the change rows stored against the exported rows.
    Goal: at most 2x the raw rows for the event view.
(b) **The next day's run.** With 30, 180 and 365 days of history materialized in order (the view's
    lifetime state and its window states are current, so the read reads no tile), the time of ``materialize_days`` of one new day of an event view with windowed
    (30d, 365d) and lifetime features, and of the read of that day (``features_at`` for every entity;
    ``refresh_online`` too). Goal: at most 1.3x from 30 to 365 days.
(c) **Training sets.** ``get_historical_features`` for 1M label rows over 365 days against a bare
    DuckDB ASOF join over precomputed dense rows (entities x days, the same feature values) and Feast
    0.67 with its duckdb offline store on those dense rows. Goal: within 1.5x of the ASOF join, and
    faster than Feast. Values of every engine are compared with the dense rows on a sample, and the dense
    rows (built by DuckDB window functions from the raw events, not by the tiles) with a brute force over
    the raw events on a smaller sample.

The data is synthetic: entities with Gamma-distributed activity rates, Poisson events per entity-day,
an ``amount`` column (5% null), and a ``customers`` snapshot exported in full each day with a few
changes. The project is built from spec objects (``Project.from_spec``); source partitions are written
with ``mlops_assets.storage.write_partition``. Each engine runs in its own subprocess (time and peak
RSS of that process only); Feast runs in ``.bench/feast-venv`` (created from
``benchmarks/peers/feast-requirements.txt`` with uv when missing). The table goes to
``benchmarks/results/tiles.md``.

This file is also the worker each subprocess runs (``--worker``), so its top level imports only the
standard library, numpy and pandas, which the Feast venv has too.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from benchmarks.bench_feature_store import ensure_feast_venv, peak_rss_mb  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "tiles.md"
START = date(2025, 1, 1)
DAY_US = 86_400_000_000
EVENT_VIEW = "activity"
SNAPSHOT_VIEW = "profile"
#: (feature name, aggregation, column, window days or None for lifetime)
FEATURES = [
    (f"{stem}_{label}", agg, column, window)
    for label, window in (("30d", 30), ("365d", 365), ("life", None))
    for stem, agg, column in (
        ("events", "count", None),
        ("amount_sum", "sum", "amount"),
        ("amount_mean", "mean", "amount"),
        ("amount_max", "max", "amount"),
    )
]
FEATURE_NAMES = [f[0] for f in FEATURES]
COUNT_FEATURES = [f[0] for f in FEATURES if f[1] == "count"]
PLANS = ("free", "basic", "plus", "pro")


@dataclass(frozen=True)
class Sizes:
    entities: int
    checkpoints: tuple[int, ...]  # days of history before the timed next day
    reps: int  # consecutive new days timed at each checkpoint (best kept)
    label_rows: int
    label_days: int  # labels and dense rows cover days 0 .. label_days - 1
    mean_rate: float  # mean events per entity-day (rates are Gamma(0.5) distributed)
    snapshot_change_rate: float  # share of customers whose exported row changes on a day
    sample: int  # label rows compared with the dense rows
    brute_force: int  # dense rows compared with a brute force over the raw events

    @property
    def days(self) -> int:
        return max(max(self.checkpoints) + self.reps, self.label_days)


FULL = Sizes(20_000, (30, 180, 365), 3, 1_000_000, 365, 0.5, 0.005, 20_000, 300)
QUICK = Sizes(2_000, (30, 60, 90), 2, 50_000, 90, 0.5, 0.005, 5_000, 100)

#: Each timed read of (b) is the best of this many.
READ_REPEATS = 5


def day_text(i: int) -> str:
    return (START + timedelta(days=i)).isoformat()


def loadavg() -> str:
    """The 1, 5 and 15 minute load averages."""
    try:
        return " ".join(f"{v:.1f}" for v in os.getloadavg())
    except OSError:
        return "?"


# ------------------------------------------------------------------------------------------- spec


def build_spec(days: int, views: tuple[str, ...]):
    """The benchmark project: an events source, a daily snapshot source, an event and a snapshot view."""
    from mlops_assets.spec.model import Column, Entity, Feature, FeatureView, Partitions, ProjectSpec, Source

    all_views = {
        EVENT_VIEW: FeatureView(
            entity="customer",
            source="events",
            owner="bench",
            features={
                name: Feature(agg=agg, column=column, window=window) for name, agg, column, window in FEATURES
            },
        ),
        SNAPSHOT_VIEW: FeatureView(
            entity="customer",
            source="customers",
            owner="bench",
            features={
                "plan": Feature(agg="latest", column="plan"),
                "credit_limit": Feature(agg="latest", column="credit_limit"),
            },
        ),
    }
    return ProjectSpec(
        name="bench-tiles",
        partitions=Partitions(start=START, end=START + timedelta(days=days - 1)),
        entities={"customer": Entity(join_key="customer_id", dtype="string")},
        sources={
            "events": Source(
                kind="events",
                timestamp="event_timestamp",
                unique_key=("event_id",),
                columns={
                    "event_id": Column(type="string"),
                    "customer_id": Column(type="string"),
                    "event_timestamp": Column(type="timestamp"),
                    "amount": Column(type="float64", nullable=True, min=0),
                },
            ),
            "customers": Source(
                kind="snapshot",
                timestamp="exported_at",
                unique_key=("customer_id",),
                columns={
                    "customer_id": Column(type="string"),
                    "exported_at": Column(type="timestamp"),
                    "plan": Column(type="string", values=PLANS),
                    "credit_limit": Column(type="float64"),
                },
            ),
        },
        feature_views={v: all_views[v] for v in views},
    )


def project_for(case: Path, views: tuple[str, ...]):
    from mlops_assets.project import Project

    params = json.loads((case / "params.json").read_text())
    return Project.from_spec(build_spec(params["days"], views), case / "data")


def entity_ids(n: int) -> list[str]:
    return [f"C{i:06d}" for i in range(n)]


# ------------------------------------------------------------------------------------------- data


def generate(case: Path, sizes: Sizes, seed: int = 11) -> None:
    """Source partitions of both sources (``write_partition``), the entity list and the label rows."""
    import pyarrow as pa

    from mlops_assets.storage import write_partition

    rng = np.random.default_rng(seed)
    (case / "params.json").write_text(json.dumps({**asdict(sizes), "days": sizes.days}))
    project = project_for(case, (EVENT_VIEW, SNAPSHOT_VIEW))
    ids = np.array(entity_ids(sizes.entities), dtype=object)
    pd.DataFrame({"customer_id": ids}).to_parquet(case / "entities.parquet", index=False)
    rates = rng.gamma(0.5, sizes.mean_rate / 0.5, sizes.entities)
    ev_schema = pa.schema(
        [
            ("event_id", pa.string()),
            ("customer_id", pa.string()),
            ("event_timestamp", pa.timestamp("us", tz="UTC")),
            ("amount", pa.float64()),
        ]
    )
    cu_schema = pa.schema(
        [
            ("customer_id", pa.string()),
            ("exported_at", pa.timestamp("us", tz="UTC")),
            ("plan", pa.string()),
            ("credit_limit", pa.float64()),
        ]
    )
    plan = rng.integers(0, len(PLANS), sizes.entities)
    limit = rng.integers(5, 200, sizes.entities) * 100.0
    base_us = int(pd.Timestamp(START, tz="UTC").value // 1000)
    next_id = 0
    for d in range(sizes.days):
        day = day_text(d)
        counts = rng.poisson(rates)
        ent = np.repeat(np.arange(sizes.entities), counts)
        n = len(ent)
        ts = base_us + d * DAY_US + rng.integers(0, DAY_US, n)
        amount = np.round(rng.lognormal(3.0, 1.0, n), 2)
        null = rng.random(n) < 0.05
        event_id = np.char.add("e", np.arange(next_id, next_id + n).astype(str))
        next_id += n
        order = np.lexsort((event_id, ts))  # partition order: timestamp, then the unique key
        table = pa.table(
            {
                "event_id": pa.array(event_id[order], pa.string()),
                "customer_id": pa.array(ids[ent[order]], pa.string()),
                "event_timestamp": pa.array(ts[order], pa.timestamp("us", tz="UTC")),
                "amount": pa.array(amount[order], pa.float64(), mask=null[order]),
            },
            schema=ev_schema,
        )
        write_partition(table, project.paths.partition_dir("events", day))
        if d:  # a few customers change plan or credit limit; every customer is exported every day
            changed = np.flatnonzero(rng.random(sizes.entities) < sizes.snapshot_change_rate)
            half = rng.random(len(changed)) < 0.5
            plan[changed[half]] = rng.integers(0, len(PLANS), int(half.sum()))
            limit[changed[~half]] = rng.integers(5, 200, int((~half).sum())) * 100.0
        snapshot = pa.table(
            {
                "customer_id": pa.array(ids, pa.string()),
                "exported_at": pa.array(
                    np.full(sizes.entities, base_us + d * DAY_US + 6 * 3600 * 1_000_000),
                    pa.timestamp("us", tz="UTC"),
                ),
                "plan": pa.array(np.array(PLANS, dtype=object)[plan], pa.string()),
                "credit_limit": pa.array(limit.copy(), pa.float64()),
            },
            schema=cu_schema,
        )
        write_partition(snapshot, project.paths.partition_dir("customers", day))
    # label rows: uniform over days 1 .. label_days - 1 (every label time has a dense row before it)
    n = sizes.label_rows
    ent = rng.integers(0, sizes.entities, n)
    offset = rng.integers(DAY_US, sizes.label_days * DAY_US, n)
    labels = pd.DataFrame(
        {
            "label_id": np.arange(n, dtype=np.int64),
            "customer_id": pd.array(ids[ent], dtype="str"),
            "event_timestamp": pd.to_datetime(base_us + offset, unit="us", utc=True).astype(
                "datetime64[us, UTC]"
            ),
        }
    )
    labels.to_parquet(case / "labels.parquet", index=False)
    sample = rng.choice(n, min(sizes.sample, n), replace=False)
    pd.DataFrame({"label_id": np.sort(sample)}).to_parquet(case / "sample.parquet", index=False)


# ---------------------------------------------------------------------------------------- workers


def _timed(fn):
    start = time.perf_counter()
    value = fn()
    return time.perf_counter() - start, value


def worker_history(case: Path) -> dict:
    """(b): materialize the history in order, then time each checkpoint's next days and their reads."""
    import pyarrow.parquet as pq

    from mlops_assets.features.store import FeatureStore
    from mlops_assets.features.tiles import partition_path, read_state, window_state_rows

    params = json.loads((case / "params.json").read_text())
    project = project_for(case, (EVENT_VIEW,))
    layout = FeatureStore(project).layout(EVENT_VIEW)
    ids = entity_ids(params["entities"])
    refs = [f"{EVENT_VIEW}:{f}" for f in FEATURE_NAMES]
    done = 0
    history_seconds = 0.0
    points = []
    for checkpoint in params["checkpoints"]:
        if checkpoint > done:
            seconds, _ = _timed(
                lambda c=checkpoint, d=done: FeatureStore(project).materialize(
                    [day_text(i) for i in range(d, c)], [EVENT_VIEW]
                )
            )
            history_seconds += seconds
        runs = []
        for rep in range(params["reps"]):
            day = day_text(checkpoint + rep)
            t_mat, _ = _timed(lambda day=day: FeatureStore(project).materialize([day], [EVENT_VIEW]))
            # the next read uses the lifetime and window states only when they are this day's
            state_day = read_state(project.paths, layout)[0]
            windows_current = all(
                window_state_rows(project.paths, layout, w, day) is not None for w in layout.windows
            )
            # reads are repeated (each with a new FeatureStore) and the best kept: on a shared machine
            # one read of well under a second is mostly noise
            t_read = min(
                _timed(lambda day=day: FeatureStore(project).features_at(day, ids, refs))[0]
                for _ in range(READ_REPEATS)
            )
            t_online = min(
                _timed(lambda: FeatureStore(project).refresh_online())[0] for _ in range(READ_REPEATS)
            )
            runs.append(
                {
                    "day": day,
                    "materialize": t_mat,
                    "features_at": t_read,
                    "refresh_online": t_online,
                    "state_current": state_day == day and windows_current,
                }
            )
        done = checkpoint + params["reps"]
        # tiles behind the longest window of the last timed read (its feature day is the day after)
        window_tiles = sum(
            pq.ParquetFile(
                partition_path(project.paths, EVENT_VIEW, day_text(i)) / "part-0.parquet"
            ).metadata.num_rows
            for i in range(max(0, done - max(f[3] or 0 for f in FEATURES)), done)
        )
        points.append(
            {
                "history_days": checkpoint,
                "runs": runs,
                "materialize": min(r["materialize"] for r in runs),
                "features_at": min(r["features_at"] for r in runs),
                "refresh_online": min(r["refresh_online"] for r in runs),
                "entities_read": len(ids),
                "state_current": all(r["state_current"] for r in runs),
                "window_tiles": window_tiles,
            }
        )
    # the rest of the days the label rows need, in order
    if params["days"] > done:
        FeatureStore(project).materialize([day_text(i) for i in range(done, params["days"])], [EVENT_VIEW])
    return {"points": points, "history_seconds": history_seconds}


def worker_snapshot(case: Path) -> dict:
    from mlops_assets.features.store import FeatureStore

    params = json.loads((case / "params.json").read_text())
    project = project_for(case, (SNAPSHOT_VIEW,))
    seconds, _ = _timed(
        lambda: FeatureStore(project).materialize(
            [day_text(i) for i in range(params["days"])], [SNAPSHOT_VIEW]
        )
    )
    return {"seconds": seconds}


def worker_dense(case: Path) -> dict:
    """The old layout: one row per entity and day holding every feature, from the raw events by SQL windows."""
    import duckdb

    params = json.loads((case / "params.json").read_text())
    n_days = params["label_days"]
    data = case / "data" / "warehouse" / "events"
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    con.execute("SET preserve_insertion_order = false")
    last = day_text(n_days - 1)
    con.execute(
        f"""
        CREATE TABLE daily AS
        SELECT customer_id, CAST(event_timestamp AS DATE) AS d, count(*) AS n, count(amount) AS na,
               sum(CAST(amount AS DECIMAL(18, 2))) AS s, max(amount) AS mx
        FROM read_parquet('{data}/date=*/*.parquet', hive_partitioning = false)
        WHERE CAST(event_timestamp AS DATE) <= DATE '{last}'
        GROUP BY ALL
        """
    )
    windows = {"30d": "29 PRECEDING", "365d": "364 PRECEDING", "life": "UNBOUNDED PRECEDING"}
    cols = []
    for label, frame in windows.items():
        w = f"(PARTITION BY g.customer_id ORDER BY g.d ROWS BETWEEN {frame} AND CURRENT ROW)"
        cols += [
            f"sum(coalesce(n, 0)) OVER {w} AS events_{label}",
            f"CAST(sum(coalesce(s, 0)) OVER {w} AS DOUBLE) AS amount_sum_{label}",
            f"CAST(sum(coalesce(s, 0)) OVER {w} AS DOUBLE) / nullif(sum(coalesce(na, 0)) OVER {w}, 0) "
            f"AS amount_mean_{label}",
            f"max(mx) OVER {w} AS amount_max_{label}",
        ]
    started = time.perf_counter()
    con.execute(
        f"""
        CREATE TABLE dense AS
        SELECT g.customer_id, CAST(g.d AS TIMESTAMPTZ) + INTERVAL 1 DAY AS feature_timestamp,
               strftime(g.d, '%Y-%m-%d') AS date, {", ".join(cols)}
        FROM (SELECT customer_id, CAST(d AS DATE) AS d
              FROM read_parquet('{case / "entities.parquet"}')
              CROSS JOIN generate_series(DATE '{day_text(0)}', DATE '{last}', INTERVAL 1 DAY) t(d)) g
        LEFT JOIN daily USING (customer_id, d)
        """
    )
    for c in COUNT_FEATURES:
        con.execute(f"ALTER TABLE dense ALTER {c} TYPE BIGINT")
    build = time.perf_counter() - started
    order = f"customer_id, feature_timestamp, {', '.join(FEATURE_NAMES)}"
    # the old design's store (a partition per day) and one file for Feast's FileSource
    con.execute(
        f"COPY (SELECT date, {order} FROM dense ORDER BY date, customer_id) TO '{case / 'dense'}' "
        "(FORMAT PARQUET, COMPRESSION ZSTD, PARTITION_BY (date))"
    )
    con.execute(
        f"COPY (SELECT {order} FROM dense ORDER BY feature_timestamp, customer_id) TO '{case / 'dense.parquet'}' "
        "(FORMAT PARQUET, COMPRESSION ZSTD)"
    )
    rows = con.execute("SELECT count(*) FROM dense").fetchone()[0]
    con.close()
    return {"rows": rows, "build_seconds": build}


def _sample_rows(case: Path, frame: pd.DataFrame, engine: str) -> None:
    wanted = pd.read_parquet(case / "sample.parquet")["label_id"]
    keep = frame[frame["label_id"].isin(wanted)][["label_id", *FEATURE_NAMES]]
    keep.to_parquet(case / f"result_{engine}.parquet", index=False)
    (case / f"rows_{engine}.json").write_text(json.dumps({"rows": len(frame)}))


def worker_pit_ours(case: Path, repeats: int) -> dict:
    from mlops_assets.features.store import FeatureStore

    project = project_for(case, (EVENT_VIEW,))
    labels = pd.read_parquet(case / "labels.parquet")
    refs = [f"{EVENT_VIEW}:{f}" for f in FEATURE_NAMES]
    times = []
    for _ in range(repeats):
        store = FeatureStore(project)  # a new store each time: no tile read is cached across runs
        seconds, out = _timed(lambda s=store: s.get_historical_features(labels, refs))
        times.append(seconds)
    _sample_rows(case, out, "ours")
    return {"seconds": min(times), "all": times}


def worker_pit_asof(case: Path, repeats: int) -> dict:
    import duckdb

    labels = pd.read_parquet(case / "labels.parquet")
    pattern = case / "dense" / "date=*" / "*.parquet"
    con = duckdb.connect()  # connecting costs tens of ms: done once, outside the timing, as ours does
    con.execute("SET TimeZone = 'UTC'")
    feats = ", ".join(f"f.{f}" for f in FEATURE_NAMES)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        con.register("labels", labels)
        out = (
            con.sql(
                f"SELECT l.*, {feats}, f.feature_timestamp AS {EVENT_VIEW}__feature_timestamp FROM labels l "
                f"ASOF LEFT JOIN read_parquet('{pattern}', hive_partitioning = false) f "
                "ON l.customer_id = f.customer_id AND l.event_timestamp >= f.feature_timestamp"
            )
            .to_arrow_table()
            .to_pandas()
        )
        con.unregister("labels")
        times.append(time.perf_counter() - start)
    con.close()
    _sample_rows(case, out, "asof")
    return {"seconds": min(times), "all": times}


def worker_pit_feast(case: Path, repeats: int) -> dict:
    from feast import Entity, FeatureStore, FeatureView, Field, FileSource
    from feast.repo_config import RepoConfig
    from feast.types import Float64, Int64, String
    from feast.value_type import ValueType

    repo = case / "feast_repo"
    shutil.rmtree(repo, ignore_errors=True)
    repo.mkdir()
    config = RepoConfig(
        project="bench_tiles",
        provider="local",
        registry=str(repo / "registry.db"),
        repo_path=str(repo),
        offline_store={"type": "duckdb"},
        online_store={"type": "sqlite", "path": str(repo / "online.db")},
        entity_key_serialization_version=3,
    )
    store = FeatureStore(config=config)
    entity = Entity(name="customer", join_keys=["customer_id"], value_type=ValueType.STRING)
    source = FileSource(path=str(case / "dense.parquet"), timestamp_field="feature_timestamp")
    view = FeatureView(
        name=EVENT_VIEW,
        entities=[entity],
        source=source,
        ttl=timedelta(0),  # no TTL
        schema=[Field(name="customer_id", dtype=String)]
        + [Field(name=f, dtype=Int64 if f in COUNT_FEATURES else Float64) for f in FEATURE_NAMES],
    )
    store.apply([entity, view])
    labels = pd.read_parquet(case / "labels.parquet")
    refs = [f"{EVENT_VIEW}:{f}" for f in FEATURE_NAMES]
    times = []
    for _ in range(repeats):
        seconds, out = _timed(lambda: store.get_historical_features(entity_df=labels, features=refs).to_df())
        times.append(seconds)
    _sample_rows(case, out, "feast")
    return {"seconds": min(times), "all": times}


def run_worker(args: argparse.Namespace) -> None:
    os.environ.setdefault("FEAST_USAGE", "False")
    case = Path(args.case)
    workers = {
        "history": lambda: worker_history(case),
        "snapshot": lambda: worker_snapshot(case),
        "dense": lambda: worker_dense(case),
        "pit-ours": lambda: worker_pit_ours(case, args.repeats),
        "pit-asof": lambda: worker_pit_asof(case, args.repeats),
        "pit-feast": lambda: worker_pit_feast(case, args.repeats),
    }
    if args.worker not in workers:
        raise SystemExit(f"unknown worker {args.worker}")
    stats = workers[args.worker]()
    stats["peak_rss_mb"] = peak_rss_mb()
    (case / f"stats_{args.worker}.json").write_text(json.dumps(stats))


def spawn(python: Path | str, worker: str, case: Path, timeout: float, repeats: int = 1) -> dict:
    cmd = [str(python), str(Path(__file__).resolve()), "--worker", worker, "--case", str(case)]
    cmd += ["--repeats", str(repeats)]
    env = {**os.environ, "FEAST_USAGE": "False", "PYTHONPATH": str(ROOT)}
    load = loadavg()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=str(case))
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s", "load": load}
    stats_file = case / f"stats_{worker}.json"
    if proc.returncode != 0 or not stats_file.exists():
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        return {"error": f"exit {proc.returncode}: {' | '.join(tail)}", "load": load}
    stats = json.loads(stats_file.read_text())
    stats_file.unlink()
    stats["load"] = load
    return stats


# ------------------------------------------------------------------------------------------ checks


def storage_stats(case: Path, n_days: int) -> dict:
    """(a): rows and bytes of the raw sources, the stored views and the dense layout over days 0..n_days-1."""
    import pyarrow.parquet as pq

    wh = case / "data" / "warehouse"
    days = {day_text(i) for i in range(n_days)}

    def measure(folder: Path) -> tuple[int, int]:
        rows = size = 0
        for part in sorted(folder.glob("date=*")):
            if part.name[len("date=") :] not in days:
                continue
            for f in part.glob("*.parquet"):
                rows += pq.ParquetFile(f).metadata.num_rows
                size += f.stat().st_size
        return rows, size

    out = {
        "events": measure(wh / "events"),
        "tiles": measure(wh / "features" / EVENT_VIEW),
        "customers": measure(wh / "customers"),
        "changes": measure(wh / "features" / SNAPSHOT_VIEW),
        "dense": measure(case / "dense"),
    }
    state = wh / "_state" / EVENT_VIEW / "state.parquet"
    out["state"] = (
        (pq.ParquetFile(state).metadata.num_rows, state.stat().st_size) if state.exists() else (0, 0)
    )
    return out


def brute_force_dense(case: Path, n: int, seed: int = 3) -> dict:
    """Mismatches of the dense rows against features computed directly from the raw events (a sample)."""
    import pyarrow.parquet as pq

    params = json.loads((case / "params.json").read_text())
    rng = np.random.default_rng(seed)
    ids = entity_ids(params["entities"])
    picks = [
        (ids[int(rng.integers(0, len(ids)))], int(rng.integers(0, params["label_days"]))) for _ in range(n)
    ]
    wanted = {p[0] for p in picks}
    events = pq.read_table(
        [str(p) for p in sorted((case / "data" / "warehouse" / "events").glob("date=*/*.parquet"))],
        columns=["customer_id", "event_timestamp", "amount"],
        filters=[("customer_id", "in", sorted(wanted))],
    ).to_pandas()
    events["us"] = events["event_timestamp"].astype("datetime64[us, UTC]").astype("int64")
    dense = pq.read_table(case / "dense.parquet", filters=[("customer_id", "in", sorted(wanted))]).to_pandas()
    dense["day"] = (dense["feature_timestamp"].astype("datetime64[us, UTC]").astype("int64") // DAY_US) - 1
    dense = dense.set_index(["customer_id", "day"])
    base_day = int(pd.Timestamp(START, tz="UTC").value // 1000 // DAY_US)
    bad = 0
    for key, d in picks:
        ft = (base_day + d + 1) * DAY_US  # the dense row of day d holds values as of d+1 00:00
        mine = events[events["customer_id"] == key]
        row = dense.loc[(key, base_day + d)]
        for name, agg, _column, window in FEATURES:
            lo = -(2**62) if window is None else ft - window * DAY_US
            rec = mine[(mine["us"] >= lo) & (mine["us"] < ft)]
            vals = rec["amount"].dropna().tolist()
            if agg == "count":
                expected = len(rec)
            elif agg == "sum":
                expected = math.fsum(vals)
            elif agg == "mean":
                expected = math.fsum(vals) / len(vals) if vals else None
            else:
                expected = max(vals) if vals else None
            if not same(expected, row[name]):
                bad += 1
    return {"checked": n * len(FEATURES), "mismatched": bad}


def same(expected, got) -> bool:
    """Null-aware equality; counts exactly, floats to 1e-9 relative (dense sums are decimal, ours fsum)."""
    missing_e = expected is None or (isinstance(expected, float) and math.isnan(expected))
    missing_g = got is None or got is pd.NA or (isinstance(got, float | np.floating) and math.isnan(got))
    if missing_e or missing_g:
        return missing_e and missing_g
    return math.isclose(float(expected), float(got), rel_tol=1e-9, abs_tol=1e-9)


def compare_with_dense(case: Path, engine: str) -> dict:
    """Sampled label rows of an engine's result against the dense row at or before each label time."""
    import pyarrow.parquet as pq

    got = pd.read_parquet(case / f"result_{engine}.parquet").drop_duplicates("label_id").set_index("label_id")
    labels = pd.read_parquet(case / "labels.parquet").set_index("label_id")
    sample = pd.read_parquet(case / "sample.parquet")["label_id"]
    rows = labels.loc[sample].reset_index()
    rows["feature_timestamp"] = rows["event_timestamp"].dt.floor("D")
    dense = pq.read_table(
        case / "dense.parquet", filters=[("customer_id", "in", sorted(set(rows["customer_id"])))]
    )
    dense = dense.to_pandas()
    expected = rows.merge(dense, on=["customer_id", "feature_timestamp"], how="left").set_index("label_id")
    missing = int((~expected.index.isin(got.index)).sum())
    bad = 0
    for lid in expected.index:
        if lid not in got.index:
            continue
        for f in FEATURE_NAMES:
            if not same(expected.at[lid, f], got.at[lid, f]):
                bad += 1
    return {"rows": len(expected), "missing": missing, "mismatched": bad}


# -------------------------------------------------------------------------------------------- main


def ratio(a: float | None, b: float | None) -> str:
    return "–" if a is None or b is None or not b else f"{a / b:.2f}×"


def verdict(ok: bool | None) -> str:
    return "–" if ok is None else ("met" if ok else "**missed**")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes for a fast check")
    parser.add_argument("--skip-feast", action="store_true", help="no Feast run in (c)")
    parser.add_argument(
        "--repeats", type=int, default=3, help="runs of ours and of the ASOF join per process"
    )
    parser.add_argument(
        "--rounds", type=int, default=2, help="processes of ours and of the ASOF join, alternated"
    )
    parser.add_argument("--feast-repeats", type=int, default=1)
    parser.add_argument(
        "--part",
        choices=["all", "history"],
        default="all",
        help="history: re-measure only (b) and replace its section in the results file",
    )
    parser.add_argument("--keep", help="keep the data in this folder (default: a temporary one)")
    parser.add_argument("--out", default=str(RESULTS))
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--case", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        run_worker(args)
        return

    sizes = QUICK if args.quick else FULL
    timeout = 1200 if args.quick else 7200
    feast_python, feast_error = (None, "skipped (--skip-feast)") if args.skip_feast else ensure_feast_venv()
    load_start = loadavg()
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="bench-tiles-") as tmp:
        case = Path(args.keep) if args.keep else Path(tmp)
        case.mkdir(parents=True, exist_ok=True)
        print(f"[data] {sizes.entities} entities x {sizes.days} days (load {loadavg()})", flush=True)
        t_gen, _ = _timed(lambda: generate(case, sizes))
        print(f"[data] {t_gen:.0f} s; (b) history", flush=True)
        hist = spawn(sys.executable, "history", case, timeout)
        print(f"[history] {json.dumps(hist)[:1500]}", flush=True)
        if args.part == "history":
            replace_history_section(Path(args.out), args, sizes, hist, load_start, started)
            return
        snap = spawn(sys.executable, "snapshot", case, timeout)
        print(f"[snapshot] {snap}; dense rows", flush=True)
        dense = spawn(sys.executable, "dense", case, timeout)
        print(f"[dense] {dense}", flush=True)
        storage = storage_stats(case, sizes.label_days)
        print(f"[storage] {storage}", flush=True)
        reference = (
            brute_force_dense(case, sizes.brute_force) if "error" not in dense else {"error": "no dense rows"}
        )
        print(f"[reference] {reference}", flush=True)
        pit: dict[str, list[dict]] = {"ours": [], "asof": []}
        for r in range(args.rounds):
            for engine in ("ours", "asof"):
                print(f"[pit] {engine} round {r + 1} (load {loadavg()})", flush=True)
                pit[engine].append(spawn(sys.executable, f"pit-{engine}", case, timeout, args.repeats))
                print(f"[pit] {engine}: {pit[engine][-1]}", flush=True)
        if feast_python:
            print(f"[pit] feast (load {loadavg()})", flush=True)
            pit["feast"] = [spawn(feast_python, "pit-feast", case, timeout, args.feast_repeats)]
            print(f"[pit] feast: {pit['feast'][-1]}", flush=True)
        checks = {
            e: compare_with_dense(case, e)
            for e, runs in pit.items()
            if runs and all("error" not in s for s in runs) and (case / f"result_{e}.parquet").exists()
        }
        print(f"[check] {checks}", flush=True)
        text = report(args, sizes, hist, snap, dense, storage, reference, pit, checks, feast_error)
        text += f"\nLoad average (1/5/15 min) at the start {load_start}, at the end {loadavg()}; "
        text += f"the whole run took {(time.monotonic() - started) / 60:.0f} min.\n"
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(text)


def report(args, sizes, hist, snap, dense, storage, reference, pit, checks, feast_error) -> str:
    cmd = "uv run --locked python benchmarks/bench_tiles.py" + (" --quick" if args.quick else "")
    lines = [
        f"# Tiled feature store benchmark ({'quick' if args.quick else 'full'} sizes)",
        "",
        f"Run {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')} on {os.cpu_count()} cores (a shared machine) "
        f"with `{cmd}`. Synthetic events: {sizes.entities:,} entities with Gamma(0.5)-distributed rates "
        f"(mean {sizes.mean_rate} events per entity-day), Poisson events per entity-day, an `amount` column "
        f"(5% null); view `{EVENT_VIEW}`: count, sum, mean and max of `amount` over 30d, 365d and lifetime "
        f"({len(FEATURES)} features). Snapshot source `customers`: every customer exported every day, "
        f"{sizes.snapshot_change_rate:.1%} of them changing plan or credit limit on a day.",
        "",
    ]
    # (a)
    ev_rows, ev_bytes = storage["events"]
    ti_rows, ti_bytes = storage["tiles"]
    de_rows, de_bytes = storage["dense"]
    cu_rows, cu_bytes = storage["customers"]
    ch_rows, ch_bytes = storage["changes"]
    st_rows, st_bytes = storage["state"]
    mb = 1024 * 1024
    lines += [
        f"## (a) Storage over {sizes.label_days} days",
        "",
        f"Goal: the event view stores at most 2× the raw rows — {verdict(ti_rows <= 2 * ev_rows)} "
        f"({ti_rows / ev_rows:.2f}× the rows, {ti_bytes / ev_bytes:.2f}× the bytes).",
        "",
        "| what | rows | MB (Parquet, zstd) | rows vs raw | bytes vs raw |",
        "|---|---:|---:|---:|---:|",
        f"| raw events (source partitions) | {ev_rows:,} | {ev_bytes / mb:.1f} | 1.00× | 1.00× |",
        f"| tiles of `{EVENT_VIEW}` (one row per entity-day with events) | {ti_rows:,} | {ti_bytes / mb:.1f} | "
        f"{ratio(ti_rows, ev_rows)} | {ratio(ti_bytes, ev_bytes)} |",
        f"| state of `{EVENT_VIEW}` (lifetime fold, one row per entity) | {st_rows:,} | {st_bytes / mb:.1f} | "
        f"{ratio(st_rows, ev_rows)} | {ratio(st_bytes, ev_bytes)} |",
        f"| dense entities × days with the {len(FEATURES)} features (old design) | {de_rows:,} | "
        f"{de_bytes / mb:.1f} | {ratio(de_rows, ev_rows)} | {ratio(de_bytes, ev_bytes)} |",
        f"| raw `customers` snapshots (exported in full daily) | {cu_rows:,} | {cu_bytes / mb:.1f} | 1.00× | 1.00× |",
        f"| change rows of `{SNAPSHOT_VIEW}` | {ch_rows:,} | {ch_bytes / mb:.1f} | {ratio(ch_rows, cu_rows)} | "
        f"{ratio(ch_bytes, cu_bytes)} |",
        "",
        f"Tiles vs dense rows: {ratio(ti_rows, de_rows)} the rows, {ratio(ti_bytes, de_bytes)} the bytes. "
        + (
            f"Materializing `{SNAPSHOT_VIEW}` over {sizes.days} days took {snap['seconds']:.1f} s."
            if "seconds" in snap
            else f"Snapshot view: {snap.get('error')}"
        ),
        "",
    ]
    lines += history_section(sizes, hist)
    # (c)
    lines += [
        f"## (c) get_historical_features, {sizes.label_rows:,} label rows over {sizes.label_days} days",
        "",
        f"Dense rows ({dense.get('rows', 0):,} = entities × days, built by DuckDB window functions from the raw "
        f"events in {dense.get('build_seconds', float('nan')):.0f} s, "
        f"peak {dense.get('peak_rss_mb', float('nan')):.0f} MB) checked against a brute force over the raw "
        f"events: {reference.get('mismatched', '?')} mismatches in {reference.get('checked', '?')} values. "
        f"Ours reads the tiles; the ASOF join reads the dense partitions (one file per day); Feast reads the "
        f"dense rows as one Parquet file. Time: best of {args.repeats} runs per process × {args.rounds} processes "
        f"(ours and the ASOF join alternated), {args.feast_repeats} for Feast; each result compared with the "
        f"dense rows on {sizes.sample:,} sampled label rows × {len(FEATURES)} features (counts exact, floats to "
        "1e-9 relative: the dense sums are exact decimals, ours exact double sums).",
        "",
    ]
    if feast_error:
        lines += [f"Feast: not run: {feast_error}", ""]
    lines += [
        "| engine | time (s) | vs ASOF | ours faster by | peak MB | sampled rows | missing | mismatched values |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    best = {}
    for engine, runs in pit.items():
        ok = [s for s in runs if "error" not in s]
        best[engine] = min(s["seconds"] for s in ok) if ok else None
    for engine, runs in pit.items():
        ok = [s for s in runs if "error" not in s]
        if not ok:
            lines.append(f"| {engine} | failed: {runs[0].get('error', '')[:300]} | | | | | | |")
            continue
        c = checks.get(engine, {})
        lines.append(
            f"| {engine} | {best[engine]:.3f} | {ratio(best[engine], best.get('asof'))} | "
            f"{'–' if engine == 'ours' else ratio(best[engine], best.get('ours'))} | "
            f"{max(s['peak_rss_mb'] for s in ok):.0f} | {c.get('rows', '?')} | {c.get('missing', '?')} | "
            f"{c.get('mismatched', '?')} |"
        )
    all_times = {
        e: [round(t, 3) for s in runs if "error" not in s for t in s["all"]] for e, runs in pit.items()
    }
    ours, asof, feast = best.get("ours"), best.get("asof"), best.get("feast")
    lines += [
        "",
        f"Goal within 1.5× of the ASOF join: {verdict(None if ours is None or asof is None else ours <= 1.5 * asof)}"
        f" ({ratio(ours, asof)}); faster than Feast + duckdb: "
        f"{verdict(None if ours is None or feast is None else ours < feast)} ({ratio(feast, ours)} faster).",
        "",
        f"Every run (s): {json.dumps(all_times)}; load average when each process started: "
        + ", ".join(f"{e} {', '.join(s.get('load', '?') for s in runs)}" for e, runs in pit.items())
        + ".",
        "",
    ]
    return "\n".join(lines)


def replace_history_section(out: Path, args, sizes, hist, load_start: str, started: float) -> None:
    """Put a new (b) into the results file (the other sections keep their run), saying when it was run."""
    cmd = "uv run --locked python benchmarks/bench_tiles.py --part history" + (
        " --quick" if args.quick else ""
    )
    section = history_section(sizes, hist)
    section[-1:-1] = [
        f"(b) re-measured {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')} with `{cmd}`; load average "
        f"{load_start} at its start, {loadavg()} at its end; {(time.monotonic() - started) / 60:.0f} min.",
        "",
    ]
    text = "\n".join(section) + "\n"
    old = out.read_text() if out.is_file() else ""
    if "## (b)" in old and "## (c)" in old:
        text = old[: old.index("## (b)")] + text + old[old.index("## (c)") :]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(text)


def history_section(sizes, hist) -> list[str]:
    """(b) as markdown lines."""
    lines = [f"## (b) The next day's run, {sizes.entities:,} entities", ""]
    if "error" in hist:
        lines += [f"failed: {hist['error']}", ""]
    else:
        pts = hist["points"]
        first, last = pts[0], pts[-1]
        lines += [
            f"After materializing the history in order ({hist['history_seconds']:.0f} s in all), each checkpoint "
            f"times {sizes.reps} consecutive new days (best kept; each read the best of {READ_REPEATS}), each with a new "
            "`FeatureStore`: "
            f"`materialize([day], ['{EVENT_VIEW}'])` (tiles of the day, partition write, the lifetime state's fold "
            "and each window state's step), then "
            f"`features_at(day, all {sizes.entities:,} entities, the {len(FEATURES)} features)`, then "
            "`refresh_online()` (the same read plus the SQLite write).",
            "",
            "| history (days) | materialize (s) | vs first | features_at (s) | vs first | refresh_online (s) "
            "| vs first | lifetime and window states current after each run | tiles a 365d window covers |",
            "|---:|---:|---:|---:|---:|---:|---:|---|---:|",
        ]
        for p in pts:
            lines.append(
                f"| {p['history_days']} | {p['materialize']:.3f} | {ratio(p['materialize'], first['materialize'])} | "
                f"{p['features_at']:.3f} | {ratio(p['features_at'], first['features_at'])} | "
                f"{p['refresh_online']:.3f} | {ratio(p['refresh_online'], first['refresh_online'])} | "
                f"{'yes' if p.get('state_current') else '**no**'} | {p.get('window_tiles', 0):,} |"
            )
        m_ok = last["materialize"] <= 1.3 * first["materialize"]
        r_ok = last["features_at"] <= 1.3 * first["features_at"]
        lines += [
            "",
            f"Goal ≤ 1.3× from {first['history_days']} to {last['history_days']} days: materialize "
            f"{verdict(m_ok)} ({ratio(last['materialize'], first['materialize'])}), features_at {verdict(r_ok)} "
            f"({ratio(last['features_at'], first['features_at'])}). Peak RSS of the process "
            f"{hist['peak_rss_mb']:.0f} MB; load average when it started {hist['load']}.",
            "",
        ]
    return lines


if __name__ == "__main__":
    main()
