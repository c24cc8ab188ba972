"""Backfills on a PostgreSQL-backed Dagster instance, run by a real ``dagster-daemon``.

The instance is ``deploy/dagster.postgres.yaml`` as shipped (run, event-log and schedule storage in
Postgres, queued run coordinator, at most 4 concurrent runs). Backfills are launched with the
``dagster job backfill`` command and executed by the daemon; runs use Dagster's default multiprocess
executor. The subprocesses (CLI, daemon, its code server, run and step workers) serve the churn example
through ``$MLOPS_SPEC``. The parallel backfill's outputs are compared byte for byte with a sequential
in-process run.
A small test pins down what two runs of the same day may do at once: retire one quarantine (writing one
partition at once: test_faults_storage.py's concurrent writers, in spawned processes).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path

import dagster as dg
import pytest
import sqlalchemy as sa

from mlops_assets.live import processes_with_home
from mlops_assets.project import Project
from mlops_assets.settings import DataPaths
from mlops_assets_tests.conftest import CHURN_SPEC, definitions, stop_process, write_events

PROJECT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
POSTGRES_YAML = PROJECT / "deploy" / "dagster.postgres.yaml"
WORKSPACE = "workspace.yaml"  # relative to the project root, the CLIs' working directory
MAX_RUNS = 4  # concurrency: runs: max_concurrent_runs in deploy/dagster.postgres.yaml
BACKFILL_TAG = "dagster/backfill"
MULTIPROCESS = "Executing steps using multiprocess executor"
LOCK_ERROR = re.compile(
    r"database is locked|deadlock|could not obtain lock|lock ?not ?available|lock timeout", re.I
)

# The code location's sensors and schedule default to RUNNING: under the daemon the landing sensor would
# request the same days' ingestion again and the automation sensors would start training-set and
# online-store runs. A backfill is measured alone, so they are stopped in the instance first (what
# `dagster sensor stop` / `dagster schedule stop` do, with the code location loaded once).
STOP_AUTOMATION = """
import sys

import dagster
from dagster._cli.workspace.cli_target import get_repository_from_cli_opts
from dagster_shared.cli import WorkspaceOpts

with dagster.DagsterInstance.get() as instance, get_repository_from_cli_opts(
    instance, dagster.__version__, WorkspaceOpts(workspace=[sys.argv[1]]), None
) as repo:
    for sensor in repo.get_sensors():
        instance.stop_sensor(sensor.get_remote_origin_id(), sensor.selector_id, sensor)
        print("stopped sensor", sensor.name)
    for schedule in repo.get_schedules():
        instance.stop_schedule(schedule.get_remote_origin_id(), schedule.selector_id, schedule)
        print("stopped schedule", schedule.name)
"""


def days_between(first: str, last: str) -> list[str]:
    start, end = date.fromisoformat(first), date.fromisoformat(last)
    return [(start + timedelta(days=i)).isoformat() for i in range((end - start).days + 1)]


def postgres_home(tmp_path: Path, postgres, db: str, data_root: Path, monkeypatch) -> tuple[Path, dict]:
    """A DAGSTER_HOME whose dagster.yaml is the shipped Postgres config, and the environment of its CLIs."""
    postgres.create_database(db)
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copyfile(POSTGRES_YAML, home / "dagster.yaml")
    pg_env = postgres.dagster_env(db)
    paths = {"DAGSTER_HOME": str(home), "MLOPS_DATA_DIR": str(data_root), "MLOPS_SPEC": str(CHURN_SPEC)}
    for key, value in {**pg_env, **paths}.items():
        monkeypatch.setenv(key, value)  # the test process reads the same instance
    monkeypatch.delenv("MLOPS_EXECUTOR", raising=False)  # Dagster's default: the multiprocess executor
    return home, dict(os.environ)


def cli(env: dict, *args: str, timeout: float = 300) -> str:
    proc = subprocess.run(
        [str(a) for a in args], cwd=PROJECT, env=env, capture_output=True, text=True, timeout=timeout
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout + proc.stderr


def stop_automation(env: dict) -> None:
    out = cli(env, sys.executable, "-c", STOP_AUTOMATION, WORKSPACE)
    assert "stopped sensor landing_files_sensor" in out, out


def job_backfill(env: dict, job: str, first: str, last: str) -> None:
    out = cli(
        env,
        BIN / "dagster",
        "job",
        "backfill",
        "-w",
        WORKSPACE,
        "-j",
        job,
        "--from",
        first,
        "--to",
        last,
        "--noprompt",
    )
    assert "Launched backfill job" in out, out[-3000:]


def processes_of(home: str) -> list[int]:
    """Live processes started for this instance: their environment names its DAGSTER_HOME."""
    return processes_with_home(Path(home))


def stop_leftovers(home: str, timeout: float = 20) -> None:
    """Stop what outlives the daemon: its code server keeps running until its runs finish (and forever
    once Postgres is gone), and a run stopped mid-way keeps its step processes."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in processes_of(home):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + timeout
        while processes_of(home) and time.monotonic() < deadline:
            time.sleep(0.2)


@contextmanager
def daemon(env: dict, log: Path) -> Iterator[subprocess.Popen]:
    """``dagster-daemon run`` on the project's workspace; on exit it and every process it started stop."""
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [BIN / "dagster-daemon", "run", "-w", WORKSPACE],
            cwd=PROJECT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        try:
            yield proc
        finally:
            stop_process(proc)
            stop_leftovers(env["DAGSTER_HOME"])


def wait_for_backfill(
    instance: dg.DagsterInstance,
    backfill_id: str,
    proc: subprocess.Popen,
    log: Path,
    timeout: float,
    started_samples: list[int] | None = None,
) -> list[dg.DagsterRun]:
    """Poll until the backfill launched every run and all of them finished; sample the STARTED runs."""
    deadline = time.monotonic() + timeout
    started = dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTED])
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"daemon exited with {proc.returncode}\n{log.read_text()[-3000:]}"
        backfill = instance.get_backfill(backfill_id)
        runs = list(instance.get_runs(filters=dg.RunsFilter(tags={BACKFILL_TAG: backfill_id})))
        if started_samples is not None:
            started_samples.append(instance.get_runs_count(started))
        if backfill.status.value != "REQUESTED" and runs and all(r.is_finished for r in runs):
            return runs
        time.sleep(0.5)
    statuses = [r.status.value for r in instance.get_runs()]
    raise AssertionError(
        f"backfill {backfill_id} not done in {timeout:.0f} s: {statuses}\n{log.read_text()[-3000:]}"
    )


def run_events(instance: dg.DagsterInstance, run_id: str) -> list[dg.EventLogEntry]:
    return list(instance.all_logs(run_id))


def event_types(entries: list[dg.EventLogEntry]) -> list[dg.DagsterEventType]:
    return [e.dagster_event.event_type for e in entries if e.dagster_event is not None]


def went_through_the_queue(entries: list[dg.EventLogEntry]) -> bool:
    """Enqueued, then launched by the daemon's run queue (STARTING), then started by the run worker."""
    order = [
        dg.DagsterEventType.RUN_ENQUEUED,
        dg.DagsterEventType.RUN_STARTING,
        dg.DagsterEventType.RUN_START,
    ]
    return [t for t in event_types(entries) if t in order] == order


def lock_errors(texts: list[str]) -> list[str]:
    return [line for text in texts for line in text.splitlines() if LOCK_ERROR.search(line)]


def event_texts(entries: list[dg.EventLogEntry]) -> list[str]:
    texts = []
    for entry in entries:
        texts.append(entry.user_message or "")
        if entry.error_info is not None:
            texts.append(entry.error_info.to_string())
        event = entry.dagster_event
        if event is not None and event.event_specific_data is not None:
            texts.append(repr(event.event_specific_data))
    return texts


def run_window(entries: list[dg.EventLogEntry]) -> tuple[float, float]:
    """When the run was STARTED: from RUN_START to its success or failure."""
    start = next(e.timestamp for e in entries if e.dagster_event_type == dg.DagsterEventType.RUN_START)
    end_types = (dg.DagsterEventType.RUN_SUCCESS, dg.DagsterEventType.RUN_FAILURE)
    end = next(e.timestamp for e in entries if e.dagster_event_type in end_types)
    return start, end


def max_overlap(windows: list[tuple[float, float]]) -> int:
    """Most windows open at one instant (an end and a start at the same instant do not overlap)."""
    points = sorted([(s, 1) for s, _ in windows] + [(e, -1) for _, e in windows], key=lambda p: (p[0], p[1]))
    best = current = 0
    for _, step in points:
        current += step
        best = max(best, current)
    return best


#: What an ingestion manifest records about the write itself, not the data: the run that wrote the day and its
#: files' sizes and modification times (the change detector of the landing sensor).
WRITE_RECORD = ("run_id", "files")


def tree_digests(root: Path) -> dict[str, str]:
    """sha256 of every file under ``root``, by relative path; a manifest's digest leaves out its write record."""
    if not root.exists():
        return {}
    out = {}
    for p in sorted(root.rglob("*")):
        if not p.is_file():
            continue
        data = p.read_bytes()
        if p.parent.parent.name == "_manifests" and p.suffix == ".json":
            record = {k: v for k, v in json.loads(data).items() if k not in WRITE_RECORD}
            data = json.dumps(record, sort_keys=True).encode()
        out[str(p.relative_to(root))] = hashlib.sha256(data).hexdigest()
    return out


def postgres_runs(url: str) -> dict[str, str]:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return dict(conn.execute(sa.text("SELECT run_id, status FROM runs")).all())
    finally:
        engine.dispose()


@pytest.mark.slow
@pytest.mark.scaleout
def test_queued_backfill_runs_under_the_daemon_on_postgres(tmp_path, postgres, monkeypatch):
    data = DataPaths(tmp_path / "data")
    days = ["2026-02-10", "2026-02-11", "2026-02-12"]
    for day in days:
        write_events(data, day)
    home, env = postgres_home(tmp_path, postgres, "dagster_backfill", data.root, monkeypatch)
    stop_automation(env)
    job_backfill(env, "ingestion_job", days[0], days[-1])
    log = tmp_path / "daemon.log"
    with daemon(env, log) as proc, dg.DagsterInstance.get() as instance:
        [backfill] = instance.get_backfills()
        runs = wait_for_backfill(instance, backfill.backfill_id, proc, log, timeout=300)
        events = {run.run_id: run_events(instance, run.run_id) for run in runs}
        all_runs = list(instance.get_runs())

    # one run per day, each queued, launched by the daemon, then started; all succeeded
    assert sorted(r.tags["dagster/partition"] for r in runs) == days
    assert {r.status for r in runs} == {dg.DagsterRunStatus.SUCCESS}, log.read_text()[-3000:]
    assert all(went_through_the_queue(e) for e in events.values())
    assert {r.run_id for r in all_runs} == {r.run_id for r in runs}  # automation stayed stopped
    # the runs live in the Postgres database, not in SQLite files under DAGSTER_HOME
    assert postgres_runs(postgres.url("dagster_backfill")) == {r.run_id: "SUCCESS" for r in runs}
    assert not (home / "history").exists()
    for day in days:
        assert (data.partition_dir("raw_events", day) / "part-0.parquet").exists()
    assert lock_errors([log.read_text()] + [t for e in events.values() for t in event_texts(e)]) == []


def sequential_materialization(root: Path, days: list[str]) -> float:
    """Ingestion then feature views, one partition at a time in this process; returns the wall time."""
    defs = definitions(Project.load(CHURN_SPEC, root))
    started = time.monotonic()
    with dg.DagsterInstance.ephemeral() as instance:
        for job in ("ingestion_job", "feature_views_job"):
            job_def = defs.resolve_job_def(job)
            for day in days:
                result = job_def.execute_in_process(partition_key=day, instance=instance)
                assert result.success, (job, day)
    return time.monotonic() - started


def landing_customers(paths: DataPaths) -> list[str]:
    """Every customer id in the landing customers files (the entities whose features are compared)."""
    import pyarrow.parquet as pq

    ids = set()
    for path in sorted((paths.landing / "customers").glob("*.parquet")):
        ids.update(pq.read_table(path, columns=["customer_id"]).column("customer_id").to_pylist())
    return sorted(ids)


@dataclass
class BackfillRace:
    """The two backfills (ingestion_job, then feature_views_job) of one world under the daemon on Postgres, and the
    same days materialized sequentially in process: what the test asserts and the backfill benchmark reports."""

    days: list[str]
    parallel: DataPaths
    sequential: DataPaths
    project: Project
    home: Path
    log: Path
    runs: dict[str, list[dg.DagsterRun]]
    events: dict[str, list[dg.EventLogEntry]]
    all_runs: list[dg.DagsterRun]
    samples: list[int]
    parallel_seconds: float
    sequential_seconds: float


def race_backfills(tmp_path: Path, postgres, monkeypatch, days: list[str], customers: int) -> BackfillRace:
    """Simulate ``days`` from the first partition (labels from day 4: a 3-day label window instead of 30, so labels
    fall inside the backfill; a data-quality incident on day 4 that ingestion quarantines), then backfill every
    day through the daemon's queue and, on a copy of the landing files, sequentially in process."""
    from examples.churn.simulator import WorldParams, simulate_world

    parallel, sequential = DataPaths(tmp_path / "parallel"), DataPaths(tmp_path / "sequential")
    summary = simulate_world(
        out=parallel.landing,
        customers=customers,
        days=len(days),
        start=days[0],
        seed=11,
        scenarios=["quality_incident@day3"],
        params=WorldParams(window_days=3),
    )
    assert summary.rows["labels"] > 0
    shutil.copytree(parallel.landing, sequential.landing)
    project = Project.load(CHURN_SPEC, parallel.root)
    home, env = postgres_home(tmp_path, postgres, "dagster_scaleout", parallel.root, monkeypatch)
    stop_automation(env)

    log = tmp_path / "daemon.log"
    samples: list[int] = []
    runs: dict[str, list[dg.DagsterRun]] = {}
    started = time.monotonic()
    with daemon(env, log) as proc, dg.DagsterInstance.get() as instance:
        # feature views of day d read their source's day d (a snapshot view: every day up to d): ingestion
        # completes first
        for job in ("ingestion_job", "feature_views_job"):
            job_backfill(env, job, days[0], days[-1])
            [backfill] = [b for b in instance.get_backfills() if b.job_name == job]
            runs[job] = wait_for_backfill(
                instance, backfill.backfill_id, proc, log, 900 + 60 * len(days), samples
            )
        parallel_seconds = time.monotonic() - started
        events = {r.run_id: run_events(instance, r.run_id) for rs in runs.values() for r in rs}
        all_runs = list(instance.get_runs())
    return BackfillRace(
        days=days,
        parallel=parallel,
        sequential=sequential,
        project=project,
        home=home,
        log=log,
        runs=runs,
        events=events,
        all_runs=all_runs,
        samples=samples,
        parallel_seconds=parallel_seconds,
        sequential_seconds=sequential_materialization(sequential.root, days),
    )


def differing_outputs(race: BackfillRace) -> dict[str, list[str]]:
    """Per output tree, the files whose bytes differ between the parallel and the sequential run (or exist in one
    only). A view's lifetime state (warehouse/_state/) is a cache that days computed out of order leave alone:
    it is compared by the values read through it, not by its bytes."""
    out = {}
    for tree in ("warehouse", "quarantine"):
        got, want = tree_digests(race.parallel.root / tree), tree_digests(race.sequential.root / tree)
        got = {k: v for k, v in got.items() if not k.startswith("_state/")}
        want = {k: v for k, v in want.items() if not k.startswith("_state/")}
        out[tree] = sorted(k for k in set(got) | set(want) if got.get(k) != want.get(k))
    return out


@pytest.mark.slow
@pytest.mark.scaleout
@pytest.mark.timeout(1800)
def test_parallel_backfills_match_a_sequential_run(tmp_path, postgres, monkeypatch):
    import pandas as pd

    from mlops_assets.featurestore import FeatureStore

    # 4 days (labels and the incident on day 4 included), 150 customers (the 30-day figure:
    # benchmarks/bench_backfill.py)
    race = race_backfills(tmp_path, postgres, monkeypatch, days_between("2026-01-01", "2026-01-04"), 150)
    days, parallel, project, home, log = race.days, race.parallel, race.project, race.home, race.log
    runs, events, all_runs, samples = race.runs, race.events, race.all_runs, race.samples
    parallel_seconds, sequential_seconds = race.parallel_seconds, race.sequential_seconds

    windows = [run_window(e) for e in events.values()]
    overlap = max_overlap(windows)
    durations = sorted(end - start for start, end in windows)
    print(
        f"\nparallel (daemon, {MAX_RUNS} runs, multiprocess executor): {parallel_seconds:.1f} s for "
        f"{len(events)} runs; sequential in-process: {sequential_seconds:.1f} s"
        f"\nmax STARTED runs: sampled {max(samples)}, from run start/end events {overlap}; "
        f"run duration min/median/max {durations[0]:.1f}/{durations[len(durations) // 2]:.1f}/"
        f"{durations[-1]:.1f} s"
    )

    # one run per partition of each job, all through the queue, all successful, steps in subprocesses
    for job, job_runs in runs.items():
        assert sorted(r.tags["dagster/partition"] for r in job_runs) == days, job
    assert {r.run_id for r in all_runs} == set(events)  # nothing but the two backfills ran
    failed = [
        (r.job_name, r.tags["dagster/partition"]) for rs in runs.values() for r in rs if not r.is_success
    ]
    assert failed == [], log.read_text()[-3000:]
    assert all(went_through_the_queue(e) for e in events.values())
    assert all(any((e.user_message or "").startswith(MULTIPROCESS) for e in es) for es in events.values())
    assert postgres_runs(postgres.url("dagster_scaleout")) == dict.fromkeys(events, "SUCCESS")

    # runs really ran side by side, and never more than the instance allows
    assert 1 < overlap <= MAX_RUNS and 1 < max(samples) <= MAX_RUNS, (overlap, max(samples))

    # no lock errors anywhere: daemon log, run event logs, step output captured under DAGSTER_HOME
    captured = [p.read_text(errors="replace") for p in (home / "storage").rglob("*") if p.is_file()]
    texts = [log.read_text()] + captured + [t for es in events.values() for t in event_texts(es)]
    assert lock_errors(texts) == []

    # every output file byte-identical to the sequential run's, and every partition written (the lifetime
    # states are compared below by the values read through them)
    assert tree_digests(parallel.quarantine) and tree_digests(parallel.warehouse)
    assert differing_outputs(race) == {"warehouse": [], "quarantine": []}
    assert "raw_events/date=2026-01-04/rows.parquet" in tree_digests(parallel.quarantine)
    written = tree_digests(parallel.warehouse)
    for day in days:
        for table in project.spec.sources:
            assert f"{table}/date={day}/part-0.parquet" in written
        for view in project.view_names:
            assert f"features/{view}/date={day}/part-0.parquet" in written
    outputs = [name for name in written if not name.startswith("_state/")]
    # no staging or retired folders left (a table's lock file stays: writers of the table lock it with fcntl)
    assert not [name for name in outputs if "/." in f"/{name}" and not name.endswith("/.ingestion.lock")]

    # every feature of every customer, read as of each of the last two days (lifetime features through
    # the view's state, windows through the tiles), is the same after the parallel and the sequential run
    ids = landing_customers(parallel)
    for day in days[-2:]:
        got = FeatureStore(Project.load(CHURN_SPEC, parallel.root)).features_at(day, ids)
        want = FeatureStore(Project.load(CHURN_SPEC, race.sequential.root)).features_at(day, ids)
        assert len(got) == len(ids) and got.notna().any().all(), day
        pd.testing.assert_frame_equal(got, want, check_exact=True)


def test_two_runs_of_a_day_both_retire_its_old_quarantine(tmp_path, monkeypatch):
    """A day quarantined before and clean now, ingested by two runs at once: the second run retires the
    quarantine while the first is about to; both succeed and the quarantine is gone."""
    import pandas as pd
    import pyarrow as pa

    from mlops_assets.ingestion import validate

    day = "2026-03-01"
    quarantine = tmp_path / "quarantine" / "raw_events" / f"date={day}"
    quarantine.mkdir(parents=True)
    (quarantine / "rows.parquet").write_bytes(b"rows of the old run")
    clean = validate.DayResult(
        table="raw_events",
        day=day,
        kept=pa.table({"event_id": ["e1"]}),
        quarantined=pd.DataFrame(),
        files=[],
        rows_read=1,
        landing_hash="h",
    )

    def ingest() -> None:
        validate.write_day(clean, tmp_path / "warehouse" / "raw_events" / f"date={day}", quarantine, tmp_path)

    rename = os.rename
    interleaved = []

    def rename_after_the_other_run(src, dst):
        if Path(src) == quarantine and not interleaved:
            interleaved.append(dst)
            ingest()  # the other run gets there first
        rename(src, dst)

    monkeypatch.setattr(os, "rename", rename_after_the_other_run)
    ingest()
    assert interleaved  # the two runs did overlap where they retire the quarantine
    assert sorted(p.name for p in quarantine.parent.iterdir()) == []
    assert sorted(p.name for p in (tmp_path / ".staging").iterdir()) == []  # no slot left behind
