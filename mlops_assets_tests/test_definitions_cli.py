"""The code location loads (through the ``defs/`` folder's component, for the spec in $MLOPS_SPEC), validates with
``dagster`` and ``dg``, and backfills a date range from the command line."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import pytest

from mlops_assets.cli import main
from mlops_assets.project import Project
from mlops_assets_tests.conftest import (
    BIKES_SPEC,
    CHURN_SPEC,
    RANGE_END_TAG,
    RANGE_START_TAG,
    definitions,
    stop_process,
    write_events,
)

PROJECT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
DEFS_YAML = "mlops_assets/defs/project/defs.yaml"


def _code_location() -> dg.Definitions:
    """The code location as `dagster -m mlops_assets.definitions` and `dg` load it: the project's defs folder
    (loaded afresh, so it reads this test's $MLOPS_SPEC and $MLOPS_DATA_DIR)."""
    return dg.load_from_defs_folder(path_within_project=PROJECT / "mlops_assets")


def _asset_keys(defs: dg.Definitions) -> set[str]:
    return {k.to_user_string() for k in defs.resolve_asset_graph().get_all_asset_keys()}


@pytest.mark.parametrize("spec", [CHURN_SPEC, BIKES_SPEC], ids=["churn", "bikes"])
def test_the_code_location_serves_the_spec_named_by_mlops_spec(spec, data_dir, monkeypatch):
    monkeypatch.setenv("MLOPS_SPEC", str(spec))
    project = Project.load(spec, data_dir.root)
    defs = _code_location()
    keys = _asset_keys(defs)
    # one asset per source and per feature view of *this* spec, and the model plane of every domain
    assert set(project.spec.sources) | set(project.view_names) <= keys
    model_plane = {"training_set", "online_features", "candidate_model", "evaluation_report", "promotion"}
    assert model_plane | {"drift_report", "batch_predictions", "prediction_log"} <= keys
    # the other example's sources are not in it
    other = Project.load(BIKES_SPEC if spec == CHURN_SPEC else CHURN_SPEC, data_dir.root)
    assert not set(other.spec.sources) & keys
    # the component builds exactly what build_definitions builds from the same spec
    assert keys == _asset_keys(definitions(project))
    sensor = defs.resolve_sensor_def("landing_files_sensor")
    assert sensor.default_status == dg.DefaultSensorStatus.RUNNING
    for job in ("ingestion_job", "feature_views_job", "retraining_job", "rollback_job"):
        assert defs.resolve_job_def(job) is not None
    ingestion = defs.resolve_job_def("ingestion_job")
    assert {n.to_user_string() for n in ingestion.asset_layer.executable_asset_keys} == set(
        project.spec.sources
    )


@pytest.mark.slow
def test_the_package_loads_its_defs_folder_without_its_project_folder(tmp_path, data_dir):
    """Installed non-editable (the container images), no pyproject.toml sits above the package: the code
    location still loads the defs folder's component for $MLOPS_SPEC."""
    site = tmp_path / "site"
    shutil.copytree(
        PROJECT / "mlops_assets", site / "mlops_assets", ignore=shutil.ignore_patterns("__pycache__")
    )
    assert not any((folder / "pyproject.toml").exists() for folder in (site, *site.parents))
    script = (
        "import json, mlops_assets\n"
        "from mlops_assets.definitions import defs\n"
        "keys = sorted(k.to_user_string() for k in defs.resolve_asset_graph().get_all_asset_keys())\n"
        "print(json.dumps([mlops_assets.__file__, keys]))\n"
    )
    env = {
        **os.environ,
        "PYTHONPATH": str(site),
        "MLOPS_SPEC": str(CHURN_SPEC),
        "MLOPS_DATA_DIR": str(data_dir.root),
    }
    proc = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    location, keys = json.loads(proc.stdout.strip().splitlines()[-1])
    assert Path(location).is_relative_to(site)  # the copy was loaded, not the checkout
    assert set(keys) == _asset_keys(definitions(Project.load(CHURN_SPEC, data_dir.root)))


def _env(data_dir, dagster_home, spec: Path = CHURN_SPEC) -> dict[str, str]:
    return {
        **os.environ,
        "MLOPS_SPEC": str(spec),
        "MLOPS_DATA_DIR": str(data_dir.root),
        "DAGSTER_HOME": str(dagster_home),
    }


def _run(args: list, env: dict, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(a) for a in args], cwd=PROJECT, env=env, capture_output=True, text=True, timeout=timeout
    )


@pytest.mark.slow
def test_dagster_definitions_validate_passes(data_dir, dagster_home):
    proc = _run(
        [BIN / "dagster", "definitions", "validate", "-w", "workspace.yaml"], _env(data_dir, dagster_home)
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Validation successful" in proc.stderr + proc.stdout


@pytest.mark.slow
def test_dg_check_and_list_defs_from_the_repository_root(data_dir, dagster_home, tmp_path):
    env = _env(data_dir, dagster_home)
    checked = _run([BIN / "dg", "check", "defs"], env)
    assert checked.returncode == 0, checked.stdout[-3000:] + checked.stderr[-3000:]
    assert "All definitions loaded successfully" in checked.stdout + checked.stderr

    listed = _run([BIN / "dg", "list", "defs", "--json"], env)
    assert listed.returncode == 0, listed.stderr[-3000:]
    found = json.loads(listed.stdout)
    expected = definitions(Project.load(CHURN_SPEC, data_dir.root))
    assert {a["asset_key"] for a in found["assets"]} == _asset_keys(expected)
    graph = expected.resolve_asset_graph()
    checks = {f"{k.asset_key.to_user_string()}:{k.name}" for k in graph.asset_check_keys}
    assert {c["key"] for c in found["asset_checks"]} == checks
    assert {"ingestion_job", "feature_views_job", "retraining_job", "rollback_job"} <= {
        j["name"] for j in found["jobs"]
    }
    assert "landing_files_sensor" in {s["name"] for s in found["sensors"]}
    # every asset comes from the project component declared in the defs folder
    assert {a["source"].rsplit(":", 1)[0] for a in found["assets"]} == {DEFS_YAML}

    # a spec with a broken cross-reference fails the check, naming the file and the problem
    broken = tmp_path / "broken.yaml"
    broken.write_text(CHURN_SPEC.read_text().replace("source: raw_events", "source: raw_evnts", 1))
    failed = _run([BIN / "dg", "check", "defs"], _env(data_dir, dagster_home, broken))
    assert failed.returncode != 0
    output = failed.stdout + failed.stderr
    assert "broken.yaml" in output and "raw_evnts" in output, output[-3000:]


RANGE_COMMANDS = {
    "dagster asset materialize": [
        BIN / "dagster",
        "asset",
        "materialize",
        "-m",
        "mlops_assets.definitions",
        "--select",
        "raw_events",
    ],
    "dg launch": [BIN / "dg", "launch", "--assets", "raw_events"],
}


@pytest.mark.slow
@pytest.mark.parametrize("command", list(RANGE_COMMANDS))
def test_cli_partition_range_backfill_is_one_run(command, data_dir, dagster_home):
    days = ["2026-02-01", "2026-02-02", "2026-02-03"]
    for day in days:
        write_events(data_dir, day)
    proc = _run(
        [*RANGE_COMMANDS[command], "--partition-range", f"{days[0]}...{days[-1]}"],
        _env(data_dir, dagster_home),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    for day in days:
        assert (data_dir.partition_dir("raw_events", day) / "part-0.parquet").exists()
    with dg.DagsterInstance.from_config(str(dagster_home)) as instance:
        [run] = instance.get_runs()
        assert run.is_success
        assert (run.tags[RANGE_START_TAG], run.tags[RANGE_END_TAG]) == (days[0], days[-1])
        status = instance.get_status_by_partition(
            dg.AssetKey("raw_events"),
            partition_keys=days,
            partitions_def=dg.DailyPartitionsDefinition(start_date="2026-01-01", timezone="UTC"),
        )
        assert status == {day: dg.AssetPartitionStatus.MATERIALIZED for day in days}


def test_cli_reports_bad_arguments_without_a_stack_trace(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["simulate", "--size", "many"])
    assert exc.value.code == 2
    assert "invalid int value" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_job_backfill_is_run_by_the_daemon(data_dir, dagster_home):
    days = ["2026-02-10", "2026-02-11"]
    for day in days:
        write_events(data_dir, day)
    env = _env(data_dir, dagster_home)
    proc = _run(
        [BIN / "dagster", "job", "backfill", "-w", "workspace.yaml", "-j", "ingestion_job"]
        + ["--from", days[0], "--to", days[-1], "--noprompt"],
        env,
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
        # the daemon also runs the code location's sensors (the landing sensor requests the same days, the
        # automation sensors follow): every run must finish, which takes ~100 s unloaded, minutes on a busy box
        deadline = time.monotonic() + 600
        statuses: list = []
        launched: list = []
        with dg.DagsterInstance.from_config(str(dagster_home)) as instance:
            while time.monotonic() < deadline:
                # the CLI's job backfill (the automation sensors may add asset backfills of the days it lands)
                [backfill] = [b for b in instance.get_backfills() if b.job_name == "ingestion_job"]
                runs = instance.get_runs()
                statuses = [r.status for r in runs]
                launched = sorted((r.job_name, r.tags.get("dagster/partition", "")) for r in runs)
                if backfill.status.value != "REQUESTED" and runs and all(r.is_finished for r in runs):
                    break
                time.sleep(2)
            backfill_runs = instance.get_runs(
                filters=dg.RunsFilter(tags={"dagster/backfill": backfill.backfill_id})
            )
        # every run the backfill launched succeeded, one per day, and every day of it landed
        print("runs:", launched, statuses)
        failed = [
            (
                r.job_name,
                r.tags.get("dagster/partition"),
                sorted(k.to_user_string() for k in r.asset_selection or []),
            )
            for r in runs
            if r.status != dg.DagsterRunStatus.SUCCESS
        ]
        assert statuses and not failed, (failed, (dagster_home / "daemon.log").read_text()[-2000:])
        assert sorted(r.tags["dagster/partition"] for r in backfill_runs) == days
        for day in days:
            assert (data_dir.partition_dir("raw_events", day) / "part-0.parquet").exists()
    finally:
        stop_process(daemon)
        log.close()
