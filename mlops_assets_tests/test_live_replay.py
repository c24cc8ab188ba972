"""The live replay (`mlops demo --live`): a real dagster-daemon and dagster-webserver on 127.0.0.1 drive the
whole lifecycle from landing files dripped in one day at a time, and Ctrl-C leaves no process behind.

One small world (800 entities x 44 days, a day every second, covariate drift from day 40) is replayed: 40 days of
history land, the drip holds until the first model is judged, then the last 4 days land. The test process only
reads the replay's Dagster instance and registry: every run in it must have been launched by a sensor or an
automation condition of the code location (no run launched by a person or by the replay process), tagged with its
trigger and of a named job (ingestion_job, retraining_job, serving_report_job) wherever a sensor can name one, and
the lifecycle must reach ingested days, every feature view, the online store, a first model behind the gates, the
drift alarm's retraining behind the gates, a canary of the retrained challenger judged step by step on the serving
app's traffic (5% -> 25% -> 50% -> 100%) and its promotion. The world is small, so the spec is adapted: a first
champion from 40 label rows (``model.first_champion_min_rows``) and logistic regression, which beats the trivial
baseline on a few hundred label rows where gradient boosting does not."""

from __future__ import annotations

import ast
import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from datetime import date, timedelta
from pathlib import Path

import dagster as dg
import pytest
import yaml

from mlops_assets.live import processes_with_home
from mlops_assets_tests.conftest import CHURN_SPEC, covered_days, free_port

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

PROJECT = Path(__file__).resolve().parent.parent
WORK = Path("/tmp/live-work")  # the replay's data folder and DAGSTER_HOME live below it
SIZE, DAYS, HISTORY_DAYS, DRIP_SECONDS = 800, 44, 40, 1
SCENARIO = "covariate_drift@day40"  # the drift the retraining answers; it lands after the history
MIN_ROWS = 40  # the history has a few hundred label rows: the first model is trained on it
VIEWS = ("purchase_activity", "engagement", "support", "customer_profile")
SOURCES = ("raw_events", "raw_labels", "customers")
REACH_TIMEOUT = (
    600  # seconds from the start to the retrained model promoted by its canary (about 250 s alone)
)
START = date.fromisoformat(str(yaml.safe_load(CHURN_SPEC.read_text())["partitions"]["start"]))
DAYS_TEXT = [(START + timedelta(days=i)).isoformat() for i in range(DAYS)]
STAGES = ("ingested", "views", "online", "evaluated", "retrained", "canary", "promoted")


def small_spec(folder: Path) -> Path:
    """The churn example's spec with a first-champion threshold a 300-entity world reaches."""
    spec = yaml.safe_load(CHURN_SPEC.read_text())
    spec["demo"]["simulator"] = str((CHURN_SPEC.parent / spec["demo"]["simulator"]).resolve())
    spec["model"]["first_champion_min_rows"] = MIN_ROWS
    spec["model"]["estimator"] = "logistic_regression"
    path = folder / "spec.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def read_instance(home: Path) -> dg.DagsterInstance:
    from mlops_assets.instance import open_instance  # retries while the replay is still creating the storage

    return open_instance(home)


def materialized_partitions(instance: dg.DagsterInstance, asset: str) -> set[str]:
    return set(instance.get_materialized_partitions(dg.AssetKey(asset)))


def latest(instance: dg.DagsterInstance, asset: str) -> dg.EventLogEntry | None:
    return instance.get_latest_materialization_event(dg.AssetKey(asset))


def rollout_steps(instance: dg.DagsterInstance) -> list[dict]:
    """The canary's decisions recorded as rollout_state materializations, oldest first (plain values)."""
    records = instance.fetch_materializations(dg.AssetKey("rollout_state"), limit=200).records
    steps = [
        {k: v.value for k, v in r.asset_materialization.metadata.items()}
        for r in sorted(records, key=lambda r: r.storage_id)
    ]
    return [s for s in steps if s.get("action") in ("advance", "rollback", "hold")]


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
        "--history-days",
        str(HISTORY_DAYS),
        "--hold-for-champion",
        "--scenario",
        SCENARIO,
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
        while time.monotonic() < deadline and "promoted" not in reached:
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
                drift_runs = instance.get_runs(
                    dg.RunsFilter(tags={"dagster/sensor_name": "drift_retraining_sensor"})
                )
                if "retrained" not in reached and any(r.is_success for r in drift_runs):
                    reached["retrained"] = time.monotonic() - started
                assert not any(r.is_failure for r in drift_runs), "the drift retraining run failed"
                if "canary" not in reached and '"mode": "canary"' in _state_text(data):
                    reached["canary"] = time.monotonic() - started
                steps = rollout_steps(instance)
                assert all(s["action"] != "rollback" for s in steps), f"canary rolled back: {steps}"
                if steps and str(steps[-1].get("promotion", "")).startswith("canary complete"):
                    reached["promoted"] = time.monotonic() - started
            time.sleep(2)
        text = log.read_text()
        assert "promoted" in reached, f"reached only {reached} in {REACH_TIMEOUT}s\n{text[-5000:]}"
        assert f"Dagster UI: http://127.0.0.1:{ui_port}" in text
        assert re.search(rf"landed \S+ \({DAYS}/{DAYS}\)", text), text[-3000:]

        instance = read_instance(home)
        runs = list(instance.get_runs())
        # through the daemon alone: every run was requested by a sensor or an automation condition
        launched_by = {r.run_id: r.tags.get("dagster/sensor_name") for r in runs}
        assert all(launched_by.values()), [r.run_id for r in runs if not launched_by[r.run_id]]
        assert {
            "landing_files_sensor",
            "new_data_automation_sensor",
            "first_champion_sensor",
            "drift_retraining_sensor",
            "serving_log_sensor",
        } <= set(launched_by.values())
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
        assert jobs["drift_retraining_sensor"] == {"retraining_job"}, jobs
        assert jobs["serving_log_sensor"] == {"serving_report_job"}, jobs
        named = {s for s, names in jobs.items() if "__ASSET_JOB" not in names}
        assert set(jobs) - named <= {"new_data_automation_sensor", "features_automation_sensor"}, jobs
        landing_runs = [r for r in runs if launched_by[r.run_id] == "landing_files_sensor"]
        assert {r.tags["mlops/trigger"] for r in landing_runs} <= {"new_landing_data", "reconcile"}
        # the history landed at once: a few ranged runs ingested it, not a run per day; then one run per dripped
        # day (a tick between two of a day's renames may split one day in two runs)
        new_data = [r for r in landing_runs if r.tags["mlops/trigger"] == "new_landing_data"]
        covered = [day for r in new_data for day in covered_days(r.tags)]
        assert set(covered) == materialized_partitions(instance, "raw_events")
        history = [r for r in new_data if min(covered_days(r.tags)) < DAYS_TEXT[HISTORY_DAYS - 1]]
        assert any(len(covered_days(r.tags)) > 1 for r in history), [r.tags for r in history]
        assert len(new_data) <= 2 * (DAYS - HISTORY_DAYS) + 6, len(new_data)
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
        # two models, each trained and judged by the gates in a retraining_job: the first launched by the
        # first-champion sensor, the second by the drift alarm after the drift landed
        reports = instance.fetch_materializations(dg.AssetKey("evaluation_report"), limit=10).records
        evaluated = sorted(reports, key=lambda r: r.storage_id)
        triggers = [instance.get_run_by_id(r.run_id).tags.get("mlops/trigger") for r in evaluated]
        assert triggers == ["no_champion", "drift"], triggers
        for record in evaluated:
            assert instance.get_run_by_id(record.run_id).job_name == "retraining_job"
            gates = {
                e.asset_check_evaluation.check_name: e.asset_check_evaluation.passed
                for e in instance.all_logs(record.run_id, of_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION)
            }
            assert gates.get("beats_baseline") and gates.get("training_data_valid"), gates
        retrain = instance.get_run_by_id(evaluated[-1].run_id)
        assert retrain.tags.get("dagster/sensor_name") == "drift_retraining_sensor"
        # the canary: each of its four steps judged on the serving app's traffic, the last one promoting
        steps = rollout_steps(instance)
        assert [(s["judged_step"], s["action"]) for s in steps] == [(i, "advance") for i in (1, 2, 3, 4)]
        assert steps[-1]["promotion"].startswith("canary complete: promoted"), steps[-1]
        assert all(s["challenger_requests"] >= 200 for s in steps)
        assert any("score_psi" in s for s in steps)  # the score distribution was judged on enough entities
        challenger = steps[-1]["challenger_version"]
        assert challenger != steps[-1]["champion_version"]
        for asset in ("prediction_log", "ab_test_report"):
            assert latest(instance, asset) is not None, asset
        champion = _registry_champion(spec, data)
        assert champion == challenger == "2", (champion, challenger)  # the retrained model, not the first one
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
    served = re.search(r"requests answered by arm: (\{.*\})", text)
    assert served, text[-3000:]
    arms = ast.literal_eval(served.group(1))
    assert arms.get("champion", 0) > 0 and arms.get("challenger", 0) > 0, arms


def _state_text(data: Path) -> str:
    path = data / "serving" / "rollout_state.json"
    return path.read_text() if path.is_file() else ""


def _registry_champion(spec: Path, data: Path) -> str | None:
    """The version the replay's registry has under the champion alias."""
    from mlops_assets.project import Project
    from mlops_assets.training import registry
    from mlops_assets.training.tracking import TrackingConfig, client_for

    tracking = TrackingConfig.for_project(Project.load(spec, data))
    found = registry.alias_version(client_for(tracking), registry.CHAMPION, tracking.model_name)
    return None if found is None else str(found.version)
