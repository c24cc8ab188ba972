"""The code location loads, validates, and backfills a date range from the command line."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import pytest

from mlops_assets.cli import main
from mlops_assets_tests.conftest import stop_process, write_events

PROJECT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def test_definitions_load_with_every_domain():
    from mlops_assets.definitions import defs

    repo = defs.get_repository_def()
    keys = {k.to_user_string() for k in repo.asset_graph.get_all_asset_keys()}
    assert {"raw_events", "raw_labels", "customers"} <= keys
    assert defs.get_sensor_def("landing_files_sensor").default_status == dg.DefaultSensorStatus.RUNNING
    assert defs.get_job_def("ingestion_job") is not None


def _env(data_dir, dagster_home) -> dict[str, str]:
    return {**os.environ, "MLOPS_DATA_DIR": str(data_dir.root), "DAGSTER_HOME": str(dagster_home)}


@pytest.mark.slow
def test_dagster_definitions_validate_passes(data_dir, dagster_home):
    proc = subprocess.run(
        [BIN / "dagster", "definitions", "validate", "-w", "workspace.yaml"],
        cwd=PROJECT,
        env=_env(data_dir, dagster_home),
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Validation successful" in proc.stderr + proc.stdout


@pytest.mark.slow
def test_cli_partition_range_backfill_is_one_run(data_dir, dagster_home):
    days = ["2026-02-01", "2026-02-02", "2026-02-03"]
    for day in days:
        write_events(data_dir, day)
    proc = subprocess.run(
        [
            BIN / "dagster",
            "asset",
            "materialize",
            "-m",
            "mlops_assets.definitions",
            "--select",
            "raw_events",
            "--partition-range",
            f"{days[0]}...{days[-1]}",
        ],
        cwd=PROJECT,
        env=_env(data_dir, dagster_home),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    for day in days:
        assert (data_dir.partition_dir("raw_events", day) / "part-0.parquet").exists()
    with dg.DagsterInstance.from_config(str(dagster_home)) as instance:
        runs = instance.get_runs()
        assert len(runs) == 1
        status = instance.get_status_by_partition(
            dg.AssetKey("raw_events"),
            partition_keys=days,
            partitions_def=dg.DailyPartitionsDefinition(start_date="2026-01-01", timezone="UTC"),
        )
        assert status == {day: dg.AssetPartitionStatus.MATERIALIZED for day in days}


def test_cli_reports_bad_arguments_without_a_stack_trace(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["simulate", "--customers", "many"])
    assert exc.value.code == 2
    assert "invalid int value" in capsys.readouterr().err


@pytest.mark.slow
def test_job_backfill_is_run_by_the_daemon(data_dir, dagster_home):
    days = ["2026-02-10", "2026-02-11"]
    for day in days:
        write_events(data_dir, day)
    env = _env(data_dir, dagster_home)
    proc = subprocess.run(
        [BIN / "dagster", "job", "backfill", "-w", "workspace.yaml", "-j", "ingestion_job"]
        + ["--from", days[0], "--to", days[-1], "--noprompt"],
        cwd=PROJECT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Launched backfill job" in proc.stdout + proc.stderr
    log = open(dagster_home / "daemon.log", "w")  # noqa: SIM115 - closed below
    daemon = subprocess.Popen(
        [BIN / "dagster-daemon", "run", "-w", "workspace.yaml"],
        cwd=PROJECT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 240
        statuses: list = []
        with dg.DagsterInstance.from_config(str(dagster_home)) as instance:
            while time.monotonic() < deadline:
                [backfill] = instance.get_backfills()
                runs = instance.get_runs()
                statuses = [r.status for r in runs]
                if backfill.status.value != "REQUESTED" and runs and all(r.is_finished for r in runs):
                    break
                time.sleep(2)
        # every run the backfill launched succeeded, and every day of it landed
        print("backfill runs:", statuses)
        assert statuses and set(statuses) == {dg.DagsterRunStatus.SUCCESS}, (
            statuses,
            (dagster_home / "daemon.log").read_text()[-2000:],
        )
        for day in days:
            assert (data_dir.partition_dir("raw_events", day) / "part-0.parquet").exists()
    finally:
        stop_process(daemon)
        log.close()
