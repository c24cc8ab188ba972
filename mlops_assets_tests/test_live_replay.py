"""The live replay (`mlops demo --live`): a real dagster-daemon and dagster-webserver on 127.0.0.1 drive the
lifecycle from landing files dripped in one day at a time, and Ctrl-C leaves no process behind.

One small world (300 entities x 34 days, a day every second) is replayed. The test process only reads the
replay's Dagster instance: every run in it must have been launched by a sensor or an automation condition of the
code location (no run launched by a person or by the replay process), tagged with its trigger and of a named job
(ingestion_job, retraining_job) wherever a sensor can name one, and the lifecycle must reach ingested days,
every feature view, the online store and a first model trained and evaluated behind the gates (the first-champion
sensor needs fewer label rows in a world this small: the spec's ``model.first_champion_min_rows``)."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import dagster as dg
import pytest
import yaml

from mlops_assets.live import processes_with_home
from mlops_assets_tests.conftest import CHURN_SPEC, free_port

pytestmark = [pytest.mark.slow, pytest.mark.timeout(720)]

PROJECT = Path(__file__).resolve().parent.parent
WORK = Path("/tmp/live-work")  # the replay's data folder and DAGSTER_HOME live below it
SIZE, DAYS, DRIP_SECONDS = 300, 34, 1
MIN_ROWS = 40  # the world has 58 label rows: a first model is tried on the full history
VIEWS = ("purchase_activity", "engagement", "support", "customer_profile")
SOURCES = ("raw_events", "raw_labels", "customers")
REACH_TIMEOUT = 480  # seconds from the start to a trained and evaluated first model


def small_spec(folder: Path) -> Path:
    """The churn example's spec with a first-champion threshold a 300-entity world reaches."""
    spec = yaml.safe_load(CHURN_SPEC.read_text())
    spec["demo"]["simulator"] = str((CHURN_SPEC.parent / spec["demo"]["simulator"]).resolve())
    spec["model"]["first_champion_min_rows"] = MIN_ROWS
    path = folder / "spec.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def read_instance(home: Path) -> dg.DagsterInstance:
    from mlops_assets.live import open_instance  # retries while the replay is still creating the storage

    return open_instance(home)


def materialized_partitions(instance: dg.DagsterInstance, asset: str) -> set[str]:
    return set(instance.get_materialized_partitions(dg.AssetKey(asset)))


def latest(instance: dg.DagsterInstance, asset: str) -> dg.EventLogEntry | None:
    return instance.get_latest_materialization_event(dg.AssetKey(asset))


@pytest.fixture
def workdir():
    WORK.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix="live-replay-", dir=WORK))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def test_live_replay_runs_the_lifecycle_through_the_daemon_and_stops_cleanly(workdir: Path) -> None:
    home, data, log = workdir / "dagster_home", workdir / "data", workdir / "live.log"
    spec = small_spec(workdir)
    ui_port, serving_port = (
        free_port(),
        free_port(),
    )  # chosen by the OS: no clash with another run on the machine
    env = {**os.environ, "DAGSTER_HOME": str(home), "MLOPS_DATA_DIR": str(data), "MLOPS_SPEC": str(spec)}
    for key in ("MLOPS_EXECUTOR", "MLOPS_ROLLOUT", "MLOPS_PARTITIONS_END", "MLOPS_SENSOR_INTERVAL_S"):
        env.pop(key, None)
    args = [
        sys.executable,
        "-m",
        "mlops_assets.cli",
        "demo",
        "--live",
        "--spec",
        str(spec),
        "--data-dir",
        str(data),
        "--dagster-home",
        str(home),
        "--size",
        str(SIZE),
        "--days",
        str(DAYS),
        "--drip-seconds",
        str(DRIP_SECONDS),
        "--port",
        str(ui_port),
        "--serving-port",
        str(serving_port),
    ]
    started = time.monotonic()
    reached: dict[str, float] = {}
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            args, cwd=PROJECT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        deadline = started + REACH_TIMEOUT
        while time.monotonic() < deadline and not {"evaluated", "online"} <= set(reached):
            assert proc.poll() is None, f"the replay exited with {proc.returncode}\n{log.read_text()[-4000:]}"
            if (home / "history").is_dir():
                instance = read_instance(home)
                if "ingested" not in reached and all(
                    len(materialized_partitions(instance, s)) == DAYS for s in SOURCES
                ):
                    reached["ingested"] = time.monotonic() - started
                if "views" not in reached and all(latest(instance, v) for v in VIEWS):
                    reached["views"] = time.monotonic() - started
                if "online" not in reached and latest(instance, "online_features"):
                    reached["online"] = time.monotonic() - started
                if "evaluated" not in reached and latest(instance, "evaluation_report"):
                    reached["evaluated"] = time.monotonic() - started
            time.sleep(2)
        text = log.read_text()
        assert {"evaluated", "online"} <= set(reached), (
            f"reached only {reached} in {REACH_TIMEOUT}s\n{text[-5000:]}"
        )
        assert f"Dagster UI: http://127.0.0.1:{ui_port}" in text
        assert re.search(rf"landed \S+ \({DAYS}/{DAYS}\)", text), text[-3000:]

        instance = read_instance(home)
        runs = list(instance.get_runs())
        # through the daemon alone: every run was requested by a sensor or an automation condition
        launched_by = {r.run_id: r.tags.get("dagster/sensor_name") for r in runs}
        assert all(launched_by.values()), [r.run_id for r in runs if not launched_by[r.run_id]]
        assert {"landing_files_sensor", "new_data_automation_sensor", "first_champion_sensor"} <= set(
            launched_by.values()
        )
        # named jobs, each run tagged with its trigger: the landing sensor's runs are ingestion_job runs (one
        # source each), the first-champion sensor's retraining_job; only the automation-condition sensors launch
        # the implicit __ASSET_JOB (Dagster names no job for a run an automation condition requests)
        jobs = {}
        for r in runs:
            jobs.setdefault(launched_by[r.run_id], set()).add(r.job_name)
            assert r.tags.get("mlops/trigger"), (r.job_name, r.tags)
        print(f"run jobs by sensor: {jobs}")
        assert jobs["landing_files_sensor"] == {"ingestion_job"}, jobs
        assert jobs["first_champion_sensor"] == {"retraining_job"}, jobs
        named = {s for s, names in jobs.items() if "__ASSET_JOB" not in names}
        assert set(jobs) - named <= {"new_data_automation_sensor", "features_automation_sensor"}, jobs
        landing_runs = [r for r in runs if launched_by[r.run_id] == "landing_files_sensor"]
        assert {r.tags["mlops/trigger"] for r in landing_runs} <= {"new_landing_data", "reconcile"}
        # one run per landed day, of the sources whose files it dripped (a replayed day drips every source; a tick
        # between two of a day's renames may split one day in two runs)
        new_data = [r for r in landing_runs if r.tags["mlops/trigger"] == "new_landing_data"]
        assert {r.tags["dagster/partition"] for r in new_data} == materialized_partitions(
            instance, "raw_events"
        )
        assert len(new_data) < DAYS * len(SOURCES), len(new_data)
        assert all(
            {k.to_user_string() for k in r.asset_selection or ()} <= set(SOURCES) for r in landing_runs
        )
        # every source-day ingested, each feature view computed for the last day, the online store refreshed
        for source in SOURCES:
            assert len(materialized_partitions(instance, source)) == DAYS, source
        last_day = max(materialized_partitions(instance, "raw_events"))
        for view in VIEWS:
            assert last_day in materialized_partitions(instance, view), view
        assert reached.get("online") is not None
        # the first model: trained and judged by the gates in a retraining_job the first-champion sensor launched
        report = latest(instance, "evaluation_report")
        run = instance.get_run_by_id(report.run_id)
        assert run.job_name == "retraining_job"
        assert run.tags.get("dagster/sensor_name") == "first_champion_sensor"
        assert run.tags.get("mlops/trigger") == "no_champion"
        gates = {
            e.asset_check_evaluation.check_name
            for e in instance.all_logs(report.run_id, of_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION)
        }
        assert {"beats_baseline", "training_data_valid"} <= gates, gates
        print(f"batch_predictions partitions: {len(materialized_partitions(instance, 'batch_predictions'))}")
        training = latest(instance, "training_set").asset_materialization.metadata
        assert training["dagster/row_count"].value >= MIN_ROWS
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGINT)  # what Ctrl-C sends
        try:
            code = proc.wait(timeout=90)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            code = None
        left = processes_with_home(home)
        for pid in left:  # never leave them running, even when the test fails
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        print(f"reached (seconds from start): {reached}")
    text = log.read_text()
    assert code == 0, text[-3000:]
    assert "SIGINT: stopping" in text
    assert "stopped dagster-daemon" in text and "stopped dagster-webserver" in text
    assert left == [], f"processes left with DAGSTER_HOME={home}: {left}"
