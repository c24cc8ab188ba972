"""Shared fixtures: an isolated data folder and Dagster home per test, and landing-file writers."""

from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mlops_assets.settings import DataPaths

os.environ.setdefault("MPLBACKEND", "Agg")


@pytest.fixture
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> DataPaths:
    """A fresh data folder, also exported as MLOPS_DATA_DIR for code that reads the environment."""
    root = tmp_path / "data"
    root.mkdir()
    monkeypatch.setenv("MLOPS_DATA_DIR", str(root))
    return DataPaths(root)


@pytest.fixture
def dagster_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    return home


def stop_process(proc: subprocess.Popen, timeout: float = 30) -> None:
    """Terminate a server started by a test, killing it if it does not exit in time."""
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=timeout)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def events_frame(day: str, n: int = 40, prefix: str | None = None) -> pd.DataFrame:
    """n clean events inside ``day``: logins and purchases of n distinct customers."""
    start = pd.Timestamp(day, tz="UTC")
    prefix = prefix or day
    is_purchase = [i % 3 == 0 for i in range(n)]
    return pd.DataFrame(
        {
            "event_id": [f"{prefix}-{i:05d}" for i in range(n)],
            "customer_id": [f"C{i:06d}" for i in range(n)],
            "event_timestamp": start + pd.to_timedelta([i * 30 for i in range(n)], unit="s"),
            "event_type": ["purchase" if p else "login" for p in is_purchase],
            "amount": [float(10 + i) if p else None for i, p in enumerate(is_purchase)],
        }
    )


def write_parquet(frame: pd.DataFrame, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), path)
    return path


def write_events(
    paths: DataPaths, day: str, frame: pd.DataFrame | None = None, name: str | None = None
) -> Path:
    frame = events_frame(day) if frame is None else frame
    return write_parquet(frame, paths.landing_dir("raw_events") / (name or f"events_{day}.parquet"))


@pytest.fixture
def postgres():
    """A real PostgreSQL server on 127.0.0.1, stopped after the test."""
    from mlops_assets_tests.servers import postgres_server

    with postgres_server() as server:
        yield server


@pytest.fixture
def redis_broker():
    """A real Redis server on 127.0.0.1, stopped after the test."""
    from mlops_assets_tests.servers import redis_server

    with redis_server() as server:
        yield server


def ingest_small_world(paths: DataPaths, instance) -> None:
    """Simulate 300 customers × 45 days and ingest them plus every feature view in one range run."""
    import dagster as dg

    from mlops_assets.definitions import defs
    from mlops_assets.demo import RANGE_END_TAG, RANGE_START_TAG
    from mlops_assets.features.views import FEATURE_VIEWS
    from mlops_assets.simulate.world import simulate

    simulate(out=paths.landing, customers=300, days=45, start="2026-01-01", seed=3)
    upstream = ["raw_events", "raw_labels", "customers", *(v.name for v in FEATURE_VIEWS)]
    ingested = defs.resolve_implicit_global_asset_job_def().execute_in_process(
        instance=instance,
        asset_selection=[dg.AssetKey(k) for k in upstream],
        tags={RANGE_START_TAG: "2026-01-01", RANGE_END_TAG: "2026-02-14"},
    )
    assert ingested.success
