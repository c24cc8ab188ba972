"""Fault battery for disk and Dagster agreement: inputs must match what the event log recorded, a failing run
leaves nothing unrecorded, and a killed run is found by ``mlops reconcile`` and the landing sensor.

Agreement is judged here without the engine's helpers: for each day, the manifest JSON read from disk,
the latest materialization of the partition fetched from the event log, and the content hash of the
Parquet partition read back must all be present or all absent, and equal.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys

import dagster as dg
import duckdb
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from mlops_assets import cli
from mlops_assets.features.assets import require_store_inputs
from mlops_assets.ingestion.manifest import content_hash
from mlops_assets.ingestion.sensors import build_landing_sensor
from mlops_assets.ingestion.validate import ingest_day
from mlops_assets.partitions import daily_partitions
from mlops_assets.project import Project
from mlops_assets.resources import DataDirResource
from mlops_assets.storage import FAULT_ENV, STAGING_DIR, SWAP_ENV, read_partition, table_hash
from mlops_assets_tests.conftest import (
    CHURN_SPEC,
    REPO,
    covered_days,
    definitions,
    events_frame,
    materialize_range,
    write_events,
)

DAYS = ["2026-01-01", "2026-01-02", "2026-01-03"]


def _days(n: int) -> list[str]:
    return [d.date().isoformat() for d in pd.date_range("2026-01-01", periods=n)]


def _events(paths, day: str, version: str, n: int = 40) -> None:
    write_events(paths, day, events_frame(day, n=n, prefix=f"{version}-{day}"))


def _labels(project: Project, day: str, churned: int) -> None:
    folder = project.landing_dir("raw_labels")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"labels_{day}.csv").write_text(
        f"customer_id,label_timestamp,churned\nC000001,{day}T10:00:00Z,{churned}\nC000002,{day}T11:00:00Z,0\n"
    )


def _run(project: Project, assets: list[str], days: list[str], instance: dg.DagsterInstance):
    return materialize_range(definitions(project), assets, days[0], days[-1], instance)


def _run_or_fail(project: Project, assets: list[str], days: list[str], instance: dg.DagsterInstance):
    return (
        definitions(project)
        .resolve_implicit_global_asset_job_def()
        .execute_in_process(
            instance=instance,
            asset_selection=[dg.AssetKey(a) for a in assets],
            tags={
                "dagster/asset_partition_range_start": days[0],
                "dagster/asset_partition_range_end": days[-1],
            },
            raise_on_error=False,
        )
    )


def _failure_text(result) -> str:
    texts = []
    for event in result.all_events:
        if event.event_type == dg.DagsterEventType.STEP_FAILURE:
            data = event.step_failure_data
            if data.user_failure_data is not None:
                texts.append(data.user_failure_data.description or "")
            texts.append(data.error.message if data.error else "")
    return "\n".join(texts)


def _listed(text: str) -> set[str]:
    """The disagreeing partitions a failure lists, as "asset day: kind"."""
    return {":".join(line[2:].split(":")[:2]) for line in text.splitlines() if line.startswith("- ")}


def _error_logs(instance: dg.DagsterInstance, run_id: str) -> str:
    return "\n".join(
        e.user_message for e in instance.all_logs(run_id) if e.level >= 40 and e.dagster_event is None
    )


def _recorded(instance: dg.DagsterInstance, asset: str) -> dict[str, dg.EventLogRecord]:
    """Day -> the newest materialization of that partition, from every materialization of the asset."""
    latest: dict[str, dg.EventLogRecord] = {}
    for record in instance.fetch_materializations(dg.AssetKey(asset), limit=10_000).records:
        day = record.asset_materialization.partition
        if day not in latest or record.storage_id > latest[day].storage_id:
            latest[day] = record
    return latest


def _state(project: Project, instance: dg.DagsterInstance, table: str, days: list[str]) -> dict[str, tuple]:
    """Day -> (manifest content hash, event log content hash, partition content hash), None where absent."""
    recorded = _recorded(instance, table)
    out = {}
    for day in days:
        manifest = project.paths.manifest_path(table, day)
        folder = project.paths.partition_dir(table, day)
        files = sorted(folder.glob("*.parquet")) if folder.is_dir() else []
        rec = recorded.get(day)
        out[day] = (
            json.loads(manifest.read_text())["content_hash"] if manifest.exists() else None,
            rec.asset_materialization.metadata["content_hash"].value if rec else None,
            content_hash(pq.read_table(files[0])) if files else None,
        )
    return out


def assert_disk_and_event_log_agree(
    project: Project, instance: dg.DagsterInstance, table: str, days: list[str]
):
    for day, (manifest, recorded, partition) in _state(project, instance, table, days).items():
        assert manifest == recorded == partition, (day, manifest, recorded, partition)


def _reconcile_json(project: Project, capsys, *extra: str) -> tuple[int, dict]:
    capsys.readouterr()
    code = cli.main(
        ["reconcile", "--spec", str(CHURN_SPEC), "--data-dir", str(project.paths.root), "--json", *extra]
    )
    out = capsys.readouterr().out
    return code, json.loads(out[out.index("{") :])


def _disagreeing(payload: dict, asset: str) -> dict[str, str]:
    return {d["day"]: d["kind"] for d in payload["assets"][asset]["disagreements"]}


def _sensor_tick(
    project: Project, instance: dg.DagsterInstance, cursor: str | None = None
) -> dg.SensorResult:
    project = Project(project.spec, project.paths, project.spec_path)
    sensor = build_landing_sensor(project, daily_partitions(project))
    context = dg.build_sensor_context(
        instance=instance, cursor=cursor, resources={"data": DataDirResource(root=str(project.paths.root))}
    )
    return sensor(context)


@pytest.fixture
def instance(dagster_home) -> dg.DagsterInstance:
    """The persistent instance of the test's DAGSTER_HOME (what `mlops reconcile` and a subprocess also open)."""
    with dg.DagsterInstance.get() as inst:
        yield inst


def _behind_the_event_log(project: Project, day: str, write) -> None:  # noqa: ANN001
    """Change a source day on disk through a run the test's instance never sees (another Dagster home)."""
    write()
    with dg.DagsterInstance.ephemeral() as other:
        assert _run(project, ["raw_events"], [day], other).success


# ---------------------------------------------------------------------------------------- inputs must exist


def test_a_view_refuses_a_source_day_whose_partition_vanished_behind_its_manifest(churn, instance):
    """The incident: raw_events 2026-01-03 deleted, its manifest still there; the view ran on no data (rc 0)."""
    for day in DAYS:
        _events(churn.paths, day, "v1")
    assert _run(churn, ["raw_events"], DAYS, instance).success
    shutil.rmtree(churn.paths.partition_dir("raw_events", DAYS[2]))

    result = _run_or_fail(churn, ["engagement"], DAYS, instance)
    assert not result.success
    text = _failure_text(result)
    assert "input partition raw_events 2026-01-03 does not match what Dagster recorded" in text
    assert _listed(text) == {"raw_events 2026-01-03: partition_missing"}
    assert not (churn.paths.features / "engagement").exists()  # refused before writing anything


def test_a_view_refuses_a_source_day_changed_behind_the_event_log_until_reconcile_fixes_it(
    churn, instance, capsys
):
    for day in DAYS:
        _events(churn.paths, day, "v1")
    assert _run(churn, ["raw_events"], DAYS, instance).success
    _behind_the_event_log(churn, DAYS[1], lambda: _events(churn.paths, DAYS[1], "v2", n=55))

    result = _run_or_fail(churn, ["engagement"], DAYS, instance)
    assert not result.success
    text = _failure_text(result)
    assert _listed(text) == {"raw_events 2026-01-02: hash_mismatch"}  # the one day that disagrees, alone

    tick = _sensor_tick(churn, instance)  # the landing is unchanged since its manifest: only reconcile asks
    requests = [(r.asset_selection[0].to_user_string(), r.partition_key, r.tags) for r in tick.run_requests]
    assert [(a, d) for a, d, _ in requests] == [("raw_events", DAYS[1])]
    assert requests[0][2]["mlops/trigger"] == "reconcile"

    code, payload = _reconcile_json(churn, capsys)
    assert code == 1 and _disagreeing(payload, "raw_events") == {DAYS[1]: "hash_mismatch"}
    assert payload["assets"]["raw_events"]["agree"] == 2
    code, payload = _reconcile_json(churn, capsys, "--fix")
    assert code == 0 and payload["disagreements"] == 0
    assert payload["fix"]["fixed"] == {"raw_events": [DAYS[1]]}
    assert_disk_and_event_log_agree(churn, instance, "raw_events", DAYS)
    assert _run(churn, ["engagement"], DAYS, instance).success
    assert not _sensor_tick(churn, instance).run_requests


def test_reconcile_needs_the_dagster_instance_it_compares_with(churn, monkeypatch, capsys):
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    assert cli.main(["reconcile", "--spec", str(CHURN_SPEC), "--data-dir", str(churn.paths.root)]) == 2
    assert "DAGSTER_HOME is not set" in capsys.readouterr().err


def test_agreeing_inputs_are_not_read_and_only_a_changed_file_is_hashed(churn, instance, monkeypatch):
    for day in DAYS:
        _events(churn.paths, day, "v1")
    assert _run(churn, ["raw_events"], DAYS, instance).success

    def no_read(folder):  # noqa: ANN001, ANN202
        raise AssertionError(f"read {folder}: its fingerprint matched, no read was needed")

    monkeypatch.setattr("mlops_assets.ingestion.manifest.read_partition", no_read)
    assert _run(churn, ["engagement"], DAYS, instance).success  # three source days checked, none read
    monkeypatch.undo()

    part = churn.paths.partition_dir("raw_events", DAYS[0]) / "part-0.parquet"
    st = part.stat()
    os.utime(part, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # touched, same bytes: hashed, agrees
    assert _run(churn, ["engagement"], DAYS, instance).success

    table = pq.read_table(part)
    pq.write_table(table.slice(0, table.num_rows - 1), part)  # one row fewer, in place
    result = _run_or_fail(churn, ["engagement"], DAYS, instance)
    assert not result.success
    assert _listed(_failure_text(result)) == {"raw_events 2026-01-01: partition_changed"}


def test_the_sensor_hashes_a_partition_whose_files_were_touched_once_not_every_tick(
    churn, instance, monkeypatch
):
    for day in DAYS:
        _events(churn.paths, day, "v1")
    assert _run(churn, ["raw_events"], DAYS, instance).success
    for day in DAYS:  # as a copy without modification times would leave them
        part = churn.paths.partition_dir("raw_events", day) / "part-0.parquet"
        os.utime(part, ns=(part.stat().st_atime_ns, part.stat().st_mtime_ns + 10**9))
    import mlops_assets.ingestion.manifest as manifest

    reads = []
    real = manifest.read_partition
    monkeypatch.setattr(manifest, "read_partition", lambda folder: reads.append(folder) or real(folder))
    first = _sensor_tick(churn, instance)
    assert not first.run_requests and len(reads) == len(DAYS)  # hashed, found equal: nothing to re-ingest
    second = _sensor_tick(churn, instance, first.cursor)
    assert not second.run_requests and len(reads) == len(DAYS)  # remembered in the cursor


def test_inputs_written_under_another_dagster_instance_are_checked_on_disk_only(churn, instance, capsys):
    for day in DAYS:
        _events(churn.paths, day, "v1")
    with dg.DagsterInstance.ephemeral() as other:  # e.g. a copied data folder
        assert _run(churn, ["raw_events"], DAYS, other).success
    result = _run(churn, ["engagement"], DAYS, instance)
    assert result.success
    code, payload = _reconcile_json(churn, capsys, "--asset", "raw_events")
    assert code == 0 and payload["assets"]["raw_events"]["unverified"] == DAYS


def test_the_training_set_and_the_drift_window_refuse_a_label_day_that_disagrees(churn, instance):
    for day, churned in zip(DAYS, (0, 1, 0), strict=True):
        _labels(churn, day, churned)
    assert _run(churn, ["raw_labels"], DAYS, instance).success
    _labels(churn, DAYS[1], 0)
    with dg.DagsterInstance.ephemeral() as other:
        assert _run(churn, ["raw_labels"], [DAYS[1]], other).success

    result = _run_or_fail(churn, ["training_set"], DAYS, instance)
    assert not result.success
    assert "training_set: input partition raw_labels 2026-01-02 does not match" in _failure_text(result)

    context = dg.build_asset_context(instance=instance)  # the check the drift report runs for its window
    require_store_inputs(context, churn, ["raw_labels"], DAYS[0], "drift_report 2026-01-01")
    with pytest.raises(dg.Failure, match="raw_labels 2026-01-02: hash_mismatch"):
        require_store_inputs(context, churn, ["raw_labels"], DAYS[1], "drift_report 2026-01-02")


# ---------------------------------------------------------------------------------------- disk and Dagster agree


def _failing_on_call(n: int, original):  # noqa: ANN001, ANN202
    calls = {"n": 0}

    def write(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        calls["n"] += 1
        if calls["n"] == n:
            raise OSError(errno.ENOSPC, "No space left on device (injected)")
        return original(*args, **kwargs)

    return write


def test_a_reingestion_failing_on_day_4_restores_days_1_to_3_and_records_nothing(
    churn, instance, monkeypatch
):
    days = _days(6)
    for day in days:
        _events(churn.paths, day, "v1")
    assert _run(churn, ["raw_events"], days, instance).success
    before = _state(churn, instance, "raw_events", days)
    for day in days:
        _events(churn.paths, day, "v2", n=60)
    import mlops_assets.ingestion.validate as validate

    monkeypatch.setattr(validate, "write_partition", _failing_on_call(4, validate.write_partition))
    result = _run_or_fail(churn, ["raw_events"], days, instance)
    assert not result.success
    assert "ingestion failed on 2026-01-04" in _error_logs(instance, result.run_id)
    assert "3 day(s) it had written were restored" in _error_logs(instance, result.run_id)
    assert _state(churn, instance, "raw_events", days) == before  # every day back to v1, as recorded
    assert_disk_and_event_log_agree(churn, instance, "raw_events", days)
    monkeypatch.undo()
    assert _run(churn, ["raw_events"], days, instance).success
    after = _state(churn, instance, "raw_events", days)
    assert all(after[d][0] != before[d][0] for d in days)
    assert_disk_and_event_log_agree(churn, instance, "raw_events", days)


def test_a_view_failing_mid_range_puts_back_the_days_it_had_written(churn, instance, monkeypatch):
    days = _days(5)
    for day in days:
        _events(churn.paths, day, "v1")
    assert _run(churn, ["raw_events", "engagement"], days, instance).success
    recorded = {d: r.asset_materialization.metadata for d, r in _recorded(instance, "engagement").items()}
    _events(churn.paths, days[1], "v2", n=70)
    assert _run(churn, ["raw_events"], [days[1]], instance).success  # a source day changed, recorded

    import mlops_assets.features.tiles as tiles

    monkeypatch.setattr(tiles, "write_partition", _failing_on_call(4, tiles.write_partition))
    result = _run_or_fail(churn, ["engagement"], days, instance)
    assert not result.success
    for day in days:
        folder = tiles.partition_path(churn.paths, "engagement", day)
        assert table_hash(pq.read_table(folder / "part-0.parquet")) == recorded[day]["content_hash"].value, (
            day
        )
    assert not (tiles.state_dir(churn.paths, "engagement") / tiles.STATE_META).exists()  # a cache: rebuilt
    monkeypatch.undo()
    assert _run(churn, ["engagement"], days, instance).success
    new = _recorded(instance, "engagement")[days[1]].asset_materialization.metadata["content_hash"].value
    assert new != recorded[days[1]]["content_hash"].value


@pytest.mark.slow
@pytest.mark.parametrize("history", ["first_ingestion", "reingestion"])
def test_a_full_disk_in_the_middle_of_a_range_leaves_disk_manifests_and_event_log_in_agreement(
    tmp_path, dagster_home, monkeypatch, capsys, history
):
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root; run the suite as root to fill a real disk")
    root = tmp_path / "disk"
    root.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(root)], check=True)
    try:
        monkeypatch.setenv("MLOPS_DATA_DIR", str(root))
        project = Project.load(CHURN_SPEC, root)
        days = _days(20)
        rng = np.random.default_rng(7)

        def big(day: str) -> pd.DataFrame:  # poorly compressible: ~100 KB of Parquet a day
            frame = events_frame(day, n=2800, prefix=f"v2-{day}")  # 30 s apart: all inside the day
            frame["event_id"] = [f"{day}-{x:016x}" for x in rng.integers(0, 2**62, 2800)]
            frame["event_type"] = "purchase"
            frame["amount"] = rng.random(2800) * 1000
            return frame

        with dg.DagsterInstance.get() as instance:
            if history == "reingestion":
                for day in days:
                    _events(project.paths, day, "v1", n=20)
                assert _run(project, ["raw_events"], days, instance).success
            before = _state(project, instance, "raw_events", days)
            for day in days:
                write_events(project.paths, day, big(day))
            expected = {
                d: ingest_day(
                    project.contract("raw_events"), project.landing_dir("raw_events"), d
                ).content_hash
                for d in days
            }
            first = ingest_day(project.contract("raw_events"), project.landing_dir("raw_events"), days[0])
            pq.write_table(first.kept, tmp_path / "one_day.parquet", compression="zstd")
            one_day = (tmp_path / "one_day.parquet").stat().st_size
            stat = os.statvfs(root)
            free = stat.f_bavail * stat.f_frsize
            room = int(5.5 * (one_day + 3 * 4096))  # about five days' partitions, manifests and lock files
            with open(root / "ballast", "wb") as ballast:
                ballast.write(b"\xff" * (free - room))

            failed = _run_or_fail(project, ["raw_events"], days, instance)
            assert not failed.success
            errors = _error_logs(instance, failed.run_id)
            failed_day = errors.split("ingestion failed on ")[1][:10]
            assert days[1] < failed_day < days[-1], errors  # in the middle of the range
            assert "No space left on device" in errors and "could NOT be restored" not in errors
            restored = int(errors.split("); ")[1].split(" day(s) it had written")[0])
            assert restored >= days.index(failed_day) >= 2  # the days before the full disk were put back
            assert _state(project, instance, "raw_events", days) == before
            assert_disk_and_event_log_agree(project, instance, "raw_events", days)
            assert [
                p.name for p in (root / STAGING_DIR).iterdir()
            ] == []  # no slot, backup or staged file left
            code, payload = _reconcile_json(project, capsys, "--asset", "raw_events")
            assert code == 0 and payload["disagreements"] == 0

            (root / "ballast").unlink()
            assert _run(project, ["raw_events"], days, instance).success
            state = _state(project, instance, "raw_events", days)
            assert {d: s[0] for d, s in state.items()} == expected
            rows = {d: r.asset_materialization.metadata for d, r in _recorded(instance, "raw_events").items()}
            assert all(rows[d]["rows_kept"].value == rows[d]["rows_read"].value == 2800 for d in days)
            assert_disk_and_event_log_agree(project, instance, "raw_events", days)
            print(
                f"full disk ({history}): run failed on {failed_day} (day {days.index(failed_day) + 1} of 20), "
                f"{restored} day(s) restored"
            )
    finally:
        subprocess.run(["umount", "-l", str(root)], check=False)


KILL_SCRIPT = """
import os, sys
from mlops_assets import storage

target, nth = os.environ.pop("KILL_AT"), int(os.environ.pop("KILL_NTH"))
calls = 0
original = storage.fault_point


def counting(name):
    global calls
    if name == target:
        calls += 1
        if calls == nth:  # arm the engine's own hook: it SIGKILLs this process right here
            os.environ[storage.FAULT_ENV] = name
    original(name)


storage.fault_point = counting
import dagster as dg
from mlops_assets.project import Project
from mlops_assets_tests.conftest import definitions, materialize_range

project = Project.load(sys.argv[1], sys.argv[2])
with dg.DagsterInstance.get() as instance:
    materialize_range(definitions(project), ["raw_events"], sys.argv[3], sys.argv[4], instance)
print("finished without being killed")
"""

# (swap mode, fault point reached while replacing the 3rd day's partition, does day 3 hold the new content after)
KILLS = [
    ("exchange", "staging.partial", False),
    ("rename", "swap.retired", True),
    ("exchange", "swap.done", True),
]


@pytest.mark.slow
@pytest.mark.parametrize(("mode", "point", "third_replaced"), KILLS, ids=[f"{m}-{p}" for m, p, _ in KILLS])
def test_kill_9_of_a_real_ingestion_run_is_reconciled_and_the_next_run_equals_a_clean_one(
    churn, instance, tmp_path, monkeypatch, capsys, mode, point, third_replaced
):
    days = _days(5)
    for day in days:
        _events(churn.paths, day, "v1")
    assert _run(churn, ["raw_events"], days, instance).success
    clean = Project.load(CHURN_SPEC, tmp_path / "clean")
    for day in days:
        _events(churn.paths, day, "v2", n=45)
        _events(clean.paths, day, "v2", n=45)
    with dg.DagsterInstance.ephemeral() as other:
        assert _run(clean, ["raw_events"], days, other).success
    clean_hashes = {d: table_hash(read_partition(clean.paths.partition_dir("raw_events", d))) for d in days}

    env = {**os.environ, "KILL_AT": point, "KILL_NTH": "3", SWAP_ENV: mode if mode == "rename" else "auto"}
    env.pop(FAULT_ENV, None)
    proc = subprocess.run(
        [sys.executable, "-c", KILL_SCRIPT, str(CHURN_SPEC), str(churn.paths.root), days[0], days[-1]],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stdout[-2000:] + proc.stderr[-2000:]
    [killed] = instance.get_run_records(filters=dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTED]))

    for day in days:  # every partition readable, none missing (a rename-over's gap is completed on read)
        assert read_partition(churn.paths.partition_dir("raw_events", day)) is not None, day
    code, payload = _reconcile_json(churn, capsys, "--asset", "raw_events")
    expected = {days[0]: "hash_mismatch", days[1]: "hash_mismatch"}
    if third_replaced:
        expected[days[2]] = "partition_changed"  # new file, old manifest and event log
    assert code == 1 and _disagreeing(payload, "raw_events") == expected
    assert all(d["run_in_progress"] for d in payload["assets"]["raw_events"]["disagreements"][:2])

    # the sensor: days 3-5 still hold v1 beside v2 landing files (new data); days 1-2 disagree, but the killed
    # run still shows as started, so the sensor waits for it instead of racing a run that may be alive
    tick = _sensor_tick(churn, instance)
    requested = {
        (d, r.tags["mlops/trigger"]) for r in tick.run_requests for d in covered_days(r.tags, r.partition_key)
    }
    assert requested == {(d, "new_landing_data") for d in days[2:]}
    assert killed.dagster_run.run_id in {
        d["run_id"] for d in payload["assets"]["raw_events"]["disagreements"]
    }

    assert _run(churn, ["raw_events"], days, instance).success  # the next run recovers
    assert {
        d: table_hash(read_partition(churn.paths.partition_dir("raw_events", d))) for d in days
    } == clean_hashes
    assert_disk_and_event_log_agree(churn, instance, "raw_events", days)
    code, payload = _reconcile_json(churn, capsys, "--asset", "raw_events")
    assert code == 0
    assert [p.name for p in (churn.paths.root / STAGING_DIR).iterdir()] == []
    glob = f"{churn.paths.warehouse}/**/*.parquet"
    assert duckdb.sql(f"select count(*) from read_parquet('{glob}')").fetchall()[0][0] == 5 * 45
