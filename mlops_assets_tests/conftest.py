"""Shared fixtures: an isolated data folder and Dagster home per test, the example projects, landing-file writers,
and a small ingested churn world built once per session and copied into each test that needs it."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mlops_assets.project import Project
from mlops_assets.settings import DataPaths

os.environ.setdefault("MPLBACKEND", "Agg")

REPO = Path(__file__).resolve().parent.parent
CHURN_SPEC = REPO / "examples" / "churn" / "spec.yaml"
BIKES_SPEC = REPO / "examples" / "bikes" / "spec.yaml"
RANGE_START_TAG = "dagster/asset_partition_range_start"
RANGE_END_TAG = "dagster/asset_partition_range_end"


def covered_days(tags: dict[str, str], partition_key: str | None = None) -> list[str]:
    """The days a run (or run request) covers: its partition, or every day of its partition-range tags."""
    from datetime import date, timedelta

    key = partition_key or tags.get("dagster/partition")
    if key is not None:
        return [key]
    first, last = date.fromisoformat(tags[RANGE_START_TAG]), date.fromisoformat(tags[RANGE_END_TAG])
    return [(first + timedelta(days=i)).isoformat() for i in range((last - first).days + 1)]


# --------------------------------------------------------------------------- test order
#: The longest test modules (minutes each on 2 cores), grouped where they share a session fixture. pytest-xdist's
#: worksteal scheduler hands each worker a contiguous share of the collection and steals from the tails, so these
#: go to the heads of the shares, one after another: they start at once, on different workers, and the short tests
#: fill in around them instead of a long test starting last.
LONGEST_FIRST = (
    ("test_live_replay.py",),
    ("test_scaleout_backfill.py",),
    ("test_monitoring_targets.py",),
    ("test_demo.py", "test_demo_story.py", "test_ui_browser.py"),  # the session's small demo
)


def _share_sizes(n: int, workers: int) -> list[int]:
    """How worksteal first splits n tests among idle workers: each gets the pending count // the workers left."""
    sizes = []
    for i in range(workers):
        sizes.append(n // (workers - i))
        n -= sizes[-1]
    return sizes


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """One lane per xdist worker (the shares worksteal hands out): the longest groups in turn at their heads, then
    the other slow tests module by module (a module's fixtures stay on one worker), in turn too, then the short
    tests filling each lane to its share."""
    workers = max(1, int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")))
    group_of = {name: i for i, group in enumerate(LONGEST_FIRST) for name in group}
    for item in items:
        if item.path.name not in group_of and item.get_closest_marker("slow") is not None:
            group_of.setdefault(item.path.name, len(group_of))
    lanes: list[list[pytest.Item]] = [[] for _ in range(workers)]
    for i in sorted(set(group_of.values())):
        lanes[i % workers] += [
            item for item in items if group_of.get(item.path.name) == i and item.get_closest_marker("slow")
        ]
    placed = {id(item) for lane in lanes for item in lane}
    rest = [item for item in items if id(item) not in placed]
    ordered: list[pytest.Item] = []
    for lane, size in zip(lanes, _share_sizes(len(items), workers), strict=True):
        fill = max(0, size - len(lane))
        ordered += lane + rest[:fill]
        rest = rest[fill:]
    items[:] = ordered + rest


@pytest.fixture
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> DataPaths:
    """A fresh data folder, also exported as MLOPS_DATA_DIR for code that reads the environment."""
    root = tmp_path / "data"
    root.mkdir()
    monkeypatch.setenv("MLOPS_DATA_DIR", str(root))
    monkeypatch.setenv("MLOPS_SPEC", str(CHURN_SPEC))
    return DataPaths(root)


@pytest.fixture
def dagster_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    return home


@pytest.fixture
def churn(data_dir: DataPaths) -> Project:
    """The churn example project on the test's data folder."""
    return Project.load(CHURN_SPEC, data_dir.root)


@pytest.fixture
def bikes(data_dir: DataPaths, monkeypatch: pytest.MonkeyPatch) -> Project:
    """The bike-share example project on the test's data folder."""
    monkeypatch.setenv("MLOPS_SPEC", str(BIKES_SPEC))
    return Project.load(BIKES_SPEC, data_dir.root)


def definitions(project: Project):
    """The Dagster definitions of a project (partitions end where its landing data ends)."""
    from mlops_assets.component import build_definitions

    return build_definitions(Project(project.spec, project.paths, project.spec_path))


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
    """n clean churn-example events inside ``day``: logins and purchases of n distinct customers."""
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
    return write_parquet(frame, paths.landing_dir("events") / (name or f"events_{day}.parquet"))


def simulate_churn(paths: DataPaths, size: int = 300, days: int = 45, seed: int = 3, scenarios=()):
    from examples.churn.simulator import simulate

    return simulate(paths.landing, days=days, start="2026-01-01", seed=seed, size=size, scenarios=scenarios)


def materialize_range(defs, selection: list[str], first: str, last: str, instance):
    import dagster as dg

    return defs.resolve_implicit_global_asset_job_def().execute_in_process(
        instance=instance,
        asset_selection=[dg.AssetKey(k) for k in selection],
        tags={RANGE_START_TAG: first, RANGE_END_TAG: last},
    )


def ingest_small_world(project: Project, instance, size: int = 300, days: int = 45) -> None:
    """Simulate the churn example (``size`` customers x ``days`` days) and ingest it plus every feature view."""
    simulate_churn(project.paths, size=size, days=days)
    defs = definitions(project)
    last = (pd.Timestamp("2026-01-01") + pd.Timedelta(days=days - 1)).date().isoformat()
    result = materialize_range(
        defs, [*project.spec.sources, *project.view_names], "2026-01-01", last, instance
    )
    assert result.success


@pytest.fixture(scope="session")
def small_world_template(tmp_path_factory) -> Path:
    """A data folder holding the ingested small churn world and its feature views (built once per session)."""
    import dagster as dg

    root = tmp_path_factory.mktemp("small_world") / "data"
    root.mkdir()
    project = Project.load(CHURN_SPEC, root)
    with dg.DagsterInstance.ephemeral() as instance:
        ingest_small_world(project, instance)
    return root


# --------------------------------------------------------------------------- the small demo, run once
#: Where the small demo's metadata links point (links only: no MLflow UI needs to run).
DEMO_MLFLOW_UI = "http://127.0.0.1:3475"
#: The small demo: 62 days, 40 of history, a quality incident on day 10 and covariate + concept drift from day 40.
DEMO_DAYS, DEMO_HISTORY, DEMO_BEFORE, DEMO_INCIDENT_DAY, DEMO_DRIFT_DAY = 62, 40, 2, 10, 40


@dataclass(frozen=True)
class SmallDemo:
    """A finished `mlops demo` on a small churn world: its project, Dagster home, exit code, printed story."""

    project: Project
    home: Path
    code: int
    out: str
    serving_port: int

    def instance(self):
        import dagster as dg
        from dagster._core.instance.ref import InstanceRef

        return dg.DagsterInstance.from_ref(InstanceRef.from_dir(str(self.home)))


@pytest.fixture(scope="session")
def small_demo(tmp_path_factory: pytest.TempPathFactory, worker_id: str) -> SmallDemo:
    """The small demo, run once per test session and read by every test of the demo's story, the end-to-end
    demo test and the browser test (tests only read it). Under pytest-xdist the first worker to ask runs it
    while holding a lock in the session's shared temporary folder; the others wait for it and read its result."""
    import contextlib
    import fcntl
    import io
    import json

    from mlops_assets.demo import DemoConfig, run_demo

    base = tmp_path_factory.getbasetemp()
    shared = base.parent if worker_id != "master" else base
    root = shared / "small_demo"
    data, home, result = root / "data", root / "dagster_home", root / "result.json"
    with open(shared / "small_demo.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not result.exists():
            shutil.rmtree(root, ignore_errors=True)
            data.mkdir(parents=True)
            home.mkdir()
            (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
            port = free_port()
            with pytest.MonkeyPatch.context() as mp:
                mp.setenv("DAGSTER_HOME", str(home))
                mp.setenv("MLOPS_DATA_DIR", str(data))
                mp.setenv("MLOPS_SPEC", str(CHURN_SPEC))
                mp.setenv("MLOPS_MLFLOW_UI_URL", DEMO_MLFLOW_UI)
                config = DemoConfig(
                    size=400,
                    days=DEMO_DAYS,
                    history_days=DEMO_HISTORY,
                    monitor_days_before=DEMO_BEFORE,
                    scenarios=(
                        f"quality_incident@day{DEMO_INCIDENT_DAY}",
                        f"covariate_drift@day{DEMO_DRIFT_DAY}",
                        f"concept_drift@day{DEMO_DRIFT_DAY}",
                    ),
                    model_type="logistic_regression",
                    serving_port=port,
                )
                buffer = io.StringIO()
                with contextlib.redirect_stdout(buffer):
                    code = run_demo(Project.load(CHURN_SPEC, data), config)
            result.write_text(json.dumps({"code": code, "out": buffer.getvalue(), "serving_port": port}))
    done = json.loads(result.read_text())
    return SmallDemo(Project.load(CHURN_SPEC, data), home, done["code"], done["out"], done["serving_port"])


@pytest.fixture
def small_world(small_world_template: Path, data_dir: DataPaths) -> Project:
    """A copy of the ingested small churn world in the test's own data folder."""
    shutil.rmtree(data_dir.root)
    shutil.copytree(small_world_template, data_dir.root)
    return Project.load(CHURN_SPEC, data_dir.root)


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


# --- feature-store tests: source partitions written straight into the warehouse ------------------------


def day_range(first: str, last: str) -> list[str]:
    """Every day from ``first`` to ``last`` (ISO dates, both included)."""
    return [d.date().isoformat() for d in pd.date_range(first, last, freq="D")]


def write_source_days(project: Project, source: str, rows: pd.DataFrame, days: list[str]) -> None:
    """Write ``rows`` as the ingested partitions of ``source`` for ``days`` (by the source's timestamp).

    Each day gets a partition in the source's contract schema, rows in timestamp order; a day without
    rows gets an empty one (a day ingested with no records).
    """
    from mlops_assets.storage import write_partition

    contract = project.contract(source)
    ts = contract.partition_column
    frame = rows.copy()
    frame[ts] = pd.to_datetime(frame[ts], utc=True, format="ISO8601")
    day_of = frame[ts].dt.strftime("%Y-%m-%d")
    for day in days:
        part = frame[day_of == day].sort_values(list(contract.sort_by), kind="stable")
        table = pa.Table.from_pandas(part[contract.column_names], preserve_index=False)
        write_partition(table.cast(contract.schema), project.paths.partition_dir(source, day))


# --------------------------------------------------------------------------- monitoring tests


@pytest.fixture
def isolated_mlflow_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No MLFLOW_TRACKING_URI during the test (each project uses its data root's store), and none left after it:
    MLflow exports the URI it is given to the environment."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "unset")  # recorded, so that teardown removes the variable
    monkeypatch.delenv("MLFLOW_TRACKING_URI")


def ingest_days(project: Project, sources, days) -> None:
    """Validate and store (kept rows and quarantine) the landing files of ``sources`` for ``days`` through the
    ingestion core, without a Dagster run (much cheaper over many days) and without the landing manifests."""
    from mlops_assets.ingestion.validate import ingest_day, write_day

    for source in sources:
        contract = project.contract(source)
        landing = project.landing_dir(source)
        for day in days:
            result = ingest_day(contract, landing, day)
            write_day(
                result,
                project.paths.partition_dir(source, day),
                project.paths.quarantine_dir(source, day),
                landing,
            )


# ------------------------------------------------------------------ training, registry and model report tests
# Creating an MLflow SQLite store runs its schema migrations (seconds): one empty, migrated database per
# session is copied wherever a test needs a store of its own.


@pytest.fixture(scope="session")
def empty_mlflow_db(tmp_path_factory) -> Path:
    """An MLflow SQLite database holding no experiment of ours, its schema already migrated."""
    from mlflow import MlflowClient

    path = tmp_path_factory.mktemp("empty_mlflow") / "mlflow.db"
    uri = f"sqlite:///{path}"
    MlflowClient(tracking_uri=uri, registry_uri=uri).search_experiments(max_results=1)
    return path


def copy_mlflow_db(template: Path, data_root: Path) -> Path:
    """Copy the empty store to ``<data_root>/mlflow/mlflow.db`` (the default store of that data folder)."""
    target = Path(data_root) / "mlflow" / "mlflow.db"
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(template, target)
    return target


@pytest.fixture
def mlflow_store(empty_mlflow_db: Path, data_dir: DataPaths, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty MLflow store at the test data folder's default location (no $MLFLOW_TRACKING_URI)."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return copy_mlflow_db(empty_mlflow_db, data_dir.root)


class Clock:
    """A fixed "now" for code that takes a clock (the online store's TTL, the serving app's freshness)."""

    def __init__(self, now: pd.Timestamp) -> None:
        self.now = now.to_pydatetime()

    def __call__(self) -> datetime:
        return self.now
