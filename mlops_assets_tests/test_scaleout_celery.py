"""A run on the Celery executor: Redis broker and PostgreSQL-backed instance on loopback, two workers
started with `make workers`; every step of the run executes in a worker process, not in the run's."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import pytest

from mlops_assets_tests.conftest import CHURN_SPEC, write_events

PROJECT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
POSTGRES_YAML = (PROJECT / "deploy" / "dagster.postgres.yaml").read_text()


def _wait_for_workers(workers_dir: Path, count: int, timeout: float = 120) -> None:
    logs = [workers_dir / f"w{i}.log" for i in range(1, count + 1)]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(log.exists() and " ready." in log.read_text() for log in logs):
            return
        for i in range(1, count + 1):
            if not _pids_of_process_group(int((workers_dir / f"w{i}.pid").read_text())):
                raise AssertionError(f"celery worker {i} exited:\n" + logs[i - 1].read_text()[-3000:])
        time.sleep(0.5)
    raise AssertionError("celery workers not ready:\n" + "\n".join(log.read_text()[-2000:] for log in logs))


def _pids_of_process_group(pgid: int) -> set[int]:
    out = subprocess.run(["ps", "-o", "pid=", "-g", str(pgid)], capture_output=True, text=True).stdout
    return {int(pid) for pid in out.split()}


@pytest.mark.slow
@pytest.mark.scaleout
def test_run_on_celery_executor_executes_steps_in_two_workers(data_dir, dagster_home, postgres, redis_broker):
    (dagster_home / "dagster.yaml").write_text(POSTGRES_YAML)
    postgres.create_database("dagster")
    celery_yaml = dagster_home / "celery.yaml"
    celery_yaml.write_text(
        "execution:\n  config:\n"
        f"    broker: {redis_broker.url(0)}\n    backend: {redis_broker.url(1)}\n"
        "    config_source:\n      worker_prefetch_multiplier: 1\n"
    )
    day = "2026-02-10"
    write_events(data_dir, day)
    env = {
        **os.environ,
        **postgres.dagster_env("dagster"),
        "MLOPS_SPEC": str(CHURN_SPEC),  # the run, its steps and the workers load the churn example
        "MLOPS_DATA_DIR": str(data_dir.root),
        "DAGSTER_HOME": str(dagster_home),
        "MLOPS_EXECUTOR": "celery",
        "MLOPS_CELERY_BROKER": redis_broker.url(0),
        "MLOPS_CELERY_BACKEND": redis_broker.url(1),
    }
    workers_dir = dagster_home / "workers"
    make_vars = [f"CELERY_CONFIG={celery_yaml}", f"WORKERS_DIR={workers_dir}", "WORKERS=2"]
    started = subprocess.run(
        ["make", "--no-print-directory", "workers", *make_vars],
        cwd=PROJECT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert started.returncode == 0, started.stdout + started.stderr
    try:
        _wait_for_workers(workers_dir, 2)
        worker_pids = set().union(
            *(_pids_of_process_group(int((workers_dir / f"w{i}.pid").read_text())) for i in (1, 2))
        )
        run = subprocess.run(
            [BIN / "dagster", "job", "execute", "-m", "mlops_assets.definitions", "-j", "ingestion_job"]
            + ["--tags", json.dumps({"dagster/partition": day})],
            cwd=PROJECT,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert run.returncode == 0, run.stderr[-4000:]

        os.environ.update(postgres.dagster_env("dagster"))
        with dg.DagsterInstance.from_config(str(dagster_home)) as instance:
            [record] = instance.get_run_records()
            assert record.dagster_run.status == dg.DagsterRunStatus.SUCCESS
            assert record.dagster_run.tags["dagster/partition"] == day
            events = [e for e in instance.all_logs(record.dagster_run.run_id) if e.dagster_event]
        step_starts = {
            e.step_key: e.dagster_event.pid for e in events if e.dagster_event_type.value == "STEP_START"
        }
        delegated = {
            e.step_key: e.dagster_event.event_specific_data.metadata["Celery worker"].value
            for e in events
            if e.dagster_event_type.value == "ENGINE_EVENT"
            and "Celery worker" in e.dagster_event.event_specific_data.metadata
        }
        print("steps -> worker:", delegated, "step pids:", step_starts, "worker pids:", worker_pids)
        # every asset step (one per source of the spec, with its checks) went through a worker ...
        assert {"raw_events", "raw_labels", "customers"} <= set(step_starts)
        assert set(delegated) == set(step_starts)
        # ... ran inside the worker processes `make workers` started, never in the run's own process ...
        assert set(step_starts.values()) <= worker_pids
        # ... and both workers took work (one task at a time each, three independent ingestion steps)
        assert {name.split("@")[0] for name in delegated.values()} == {"mlops-w1", "mlops-w2"}
        assert (data_dir.partition_dir("raw_events", day) / "part-0.parquet").exists()
    finally:
        stopped = subprocess.run(
            ["make", "--no-print-directory", "workers-stop", *make_vars],
            cwd=PROJECT,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        print(stopped.stdout, stopped.stderr)
    # every worker process is gone
    assert not list(workers_dir.glob("*.pid"))
    assert not worker_pids & {
        int(p) for p in subprocess.run(["ps", "-eo", "pid="], capture_output=True, text=True).stdout.split()
    }
