"""The new-data sensor: a run per day with changed sources (a backlog of consecutive days in ranged runs), decided
by content hash, and a reason when it skips."""

from __future__ import annotations

import json
import os

import dagster as dg

from mlops_assets.ingestion.assets import build_ingestion_assets
from mlops_assets.ingestion.sensors import (
    INGESTION_JOB,
    LANDING_SENSOR,
    MAX_DAYS_PER_RUN,
    build_landing_sensor,
)
from mlops_assets.partitions import daily_partitions
from mlops_assets.project import Project
from mlops_assets.resources import DataDirResource
from mlops_assets_tests.conftest import covered_days, definitions, events_frame, write_events

DAY = "2026-01-10"


class SensorHarness:
    """Evaluates the sensor tick after tick, carrying the cursor like the daemon does.

    Each tick builds the sensor from the project as the code location would after a reload, so the
    partitions (``end: data``) reach the newest landing day.
    """

    def __init__(self, project: Project, cursor: str | None = None):
        self.project = project
        self.cursor = cursor
        self.instance = dg.DagsterInstance.ephemeral()

    def tick(self) -> dg.SensorResult:
        project = Project(self.project.spec, self.project.paths, self.project.spec_path)
        sensor = build_landing_sensor(project, daily_partitions(project))
        context = dg.build_sensor_context(
            cursor=self.cursor,
            instance=self.instance,
            resources={"data": DataDirResource(root=str(project.paths.root))},
        )
        result = sensor(context)
        self.cursor = result.cursor
        return result


def _requested(result: dg.SensorResult) -> list[tuple[str, str]]:
    return sorted(
        (key.to_user_string(), r.partition_key)
        for r in result.run_requests or []
        for key in r.asset_selection
    )


def _write_labels(project: Project, day: str, rows: str = "C1,{day}T10:00:00Z,1\n") -> None:
    folder = project.landing_dir("raw_labels")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"labels_{day}.csv").write_text("customer_id,label_timestamp,churned\n" + rows.format(day=day))


def test_new_file_same_file_changed_file(churn):
    sensor = SensorHarness(churn)
    path = write_events(churn.paths, DAY)

    first = sensor.tick()
    assert len(first.run_requests) == 1
    request = first.run_requests[0]
    assert request.partition_key == DAY
    assert request.asset_selection == [dg.AssetKey("raw_events")]
    assert request.tags["mlops/trigger"] == "new_landing_data"
    assert request.tags["mlops/landing_files"] == path.name

    again = sensor.tick()
    assert again.run_requests == []
    assert "no new or changed landing files" in again.skip_reason.skip_message

    # touched (new mtime) but the same bytes: still nothing to do, decided on content
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 5_000_000_000))
    assert sensor.tick().run_requests == []

    write_events(churn.paths, DAY, events_frame(DAY, n=41))
    changed = sensor.tick()
    assert _requested(changed) == [("raw_events", DAY)]
    assert changed.run_requests[0].run_key != request.run_key

    # a second file for the same day changes the day's content: one more run of that day, naming both files
    second = write_events(
        churn.paths, DAY, events_frame(DAY, n=5, prefix="late"), name=f"events_{DAY}_late.parquet"
    )
    added = sensor.tick()
    assert _requested(added) == [("raw_events", DAY)]
    assert set(added.run_requests[0].tags["mlops/landing_files"].split(",")) == {path.name, second.name}


def test_a_file_rewritten_with_the_same_bytes_is_not_requested_again(churn):
    sensor = SensorHarness(churn)
    path = write_events(churn.paths, DAY)
    sensor.tick()
    # rewritten with the very same bytes (a producer re-uploading): new mtime, same size and content
    path.write_bytes(path.read_bytes())
    assert sensor.tick().run_requests == []


def test_a_change_that_keeps_the_file_size_is_requested(churn):
    sensor = SensorHarness(churn)
    _write_labels(churn, DAY)
    path = churn.landing_dir("raw_labels") / f"labels_{DAY}.csv"
    assert _requested(sensor.tick()) == [("raw_labels", DAY)]
    size, mtime = path.stat().st_size, path.stat().st_mtime_ns
    _write_labels(churn, DAY, "C1,{day}T10:00:00Z,0\n")  # the label flips: same size, new content
    os.utime(path, ns=(mtime + 1_000_000_000, mtime + 1_000_000_000))
    assert path.stat().st_size == size
    assert _requested(sensor.tick()) == [("raw_labels", DAY)]


def test_each_day_gets_one_request_for_its_changed_sources_and_only_changed_ones_run_again(churn):
    sensor = SensorHarness(churn)
    write_events(churn.paths, "2026-01-10")
    write_events(churn.paths, "2026-01-11")
    _write_labels(churn, "2026-01-11")
    first = sensor.tick()
    assert _requested(first) == [
        ("raw_events", "2026-01-10"),
        ("raw_events", "2026-01-11"),
        ("raw_labels", "2026-01-11"),
    ]
    # one run per day, of the sources that changed that day (the customers table landed nothing: not selected)
    by_day = {r.partition_key: {k.to_user_string() for k in r.asset_selection} for r in first.run_requests}
    assert by_day == {"2026-01-10": {"raw_events"}, "2026-01-11": {"raw_events", "raw_labels"}}
    assert len({r.run_key for r in first.run_requests}) == 2

    # the labels of 2026-01-11 change: that source-day alone is requested, not the events of the same day
    _write_labels(churn, "2026-01-11", "C1,{day}T10:00:00Z,1\nC2,{day}T11:00:00Z,0\n")
    assert _requested(sensor.tick()) == [("raw_labels", "2026-01-11")]

    # a new day of one source
    _write_labels(churn, "2026-01-12")
    assert _requested(sensor.tick()) == [("raw_labels", "2026-01-12")]
    assert sensor.tick().run_requests == []


def test_already_ingested_days_are_not_requested(churn):
    write_events(churn.paths, DAY)
    assets = build_ingestion_assets(churn, daily_partitions(churn))
    dg.materialize(
        assets,
        selection=["raw_events"],
        instance=dg.DagsterInstance.ephemeral(),
        resources={"data": DataDirResource(root=str(churn.paths.root))},
        partition_key=DAY,
    )
    result = SensorHarness(churn).tick()  # a fresh cursor, as after `make demo` then `make ui`
    assert result.run_requests == []
    assert "1 table-day(s) already ingested or requested" in result.skip_reason.skip_message
    # and once the ingested day's files change, it is requested again
    write_events(churn.paths, DAY, events_frame(DAY, n=3))
    assert _requested(SensorHarness(churn).tick()) == [("raw_events", DAY)]


def test_days_outside_the_partitions_are_skipped_with_a_reason(churn):
    write_events(churn.paths, "2025-05-01")  # before the spec's partitions.start (2026-01-01)
    result = SensorHarness(churn).tick()
    assert result.run_requests == []
    assert "outside the partitions" in result.skip_reason.skip_message
    assert "2025-05-01" in result.skip_reason.skip_message


def test_cursor_is_json_and_survives_a_restart(churn):
    write_events(churn.paths, DAY)
    sensor = SensorHarness(churn)
    sensor.tick()
    state = json.loads(sensor.cursor)
    assert list(state["requested"]) == [f"raw_events:{DAY}"]
    restarted = SensorHarness(churn, cursor=sensor.cursor)
    assert restarted.tick().run_requests == []


def test_the_sensor_watches_every_source_of_the_spec_and_launches_the_named_ingestion_job(churn):
    write_events(churn.paths, DAY)
    partitions = daily_partitions(churn)
    sensor = build_landing_sensor(churn, partitions)
    assert sensor.name == LANDING_SENSOR and sensor.default_status == dg.DefaultSensorStatus.RUNNING
    # its runs are ingestion_job runs (the UI names them), each a subset: the sources whose files changed
    assert sensor.job_name == INGESTION_JOB
    job = definitions(churn).resolve_job_def(INGESTION_JOB)
    watched = job.asset_layer.executable_asset_keys
    assert {key.to_user_string() for key in watched} == set(churn.spec.sources)
    (request,) = SensorHarness(churn).tick().run_requests
    assert request.job_name == INGESTION_JOB and request.asset_selection == [dg.AssetKey("raw_events")]


def _days(request: dg.RunRequest) -> tuple[str, str]:
    days = covered_days(request.tags, request.partition_key)
    return days[0], days[-1]


def test_a_backlog_of_consecutive_days_is_ingested_in_ranged_runs_that_materialize_every_day(churn):
    days = [f"2026-01-{d:02d}" for d in (10, 11, 12, 13, 15)]
    for day in days:
        write_events(churn.paths, day)
    _write_labels(churn, "2026-01-13")
    result = SensorHarness(churn).tick()
    # consecutive days with the same changed sources share a run; a different set of sources or a gap starts one
    runs = {(_days(r), tuple(k.to_user_string() for k in r.asset_selection)) for r in result.run_requests}
    assert runs == {
        (("2026-01-10", "2026-01-12"), ("raw_events",)),
        (("2026-01-13", "2026-01-13"), ("raw_events", "raw_labels")),
        (("2026-01-15", "2026-01-15"), ("raw_events",)),
    }
    assert len({r.run_key for r in result.run_requests}) == 3
    ranged = next(r for r in result.run_requests if r.partition_key is None)
    assert ranged.job_name == INGESTION_JOB and ranged.tags["mlops/trigger"] == "new_landing_data"
    assert set(ranged.tags["mlops/landing_files"].split(",")) == {f"events_{d}.parquet" for d in days[:3]}

    # the ranged request, run as the daemon runs it (its job, selection and tags): one run, every day materialized
    instance = dg.DagsterInstance.ephemeral()
    job = definitions(churn).resolve_job_def(INGESTION_JOB)
    run = job.execute_in_process(
        instance=instance, asset_selection=ranged.asset_selection, tags=ranged.tags, raise_on_error=False
    )
    assert run.success
    assert set(instance.get_materialized_partitions(dg.AssetKey("raw_events"))) == set(days[:3])
    for day in days[:3]:
        assert (churn.paths.partition_dir("raw_events", day)).is_dir(), day


def test_a_long_backlog_is_cut_into_runs_of_at_most_a_month(churn):
    from datetime import date, timedelta

    days = [(date(2026, 1, 1) + timedelta(days=i)).isoformat() for i in range(MAX_DAYS_PER_RUN + 9)]
    for day in days:
        write_events(churn.paths, day, events_frame(day, n=3))
    requests = SensorHarness(churn).tick().run_requests
    assert sorted(_days(r) for r in requests) == [
        (days[0], days[MAX_DAYS_PER_RUN - 1]),
        (days[MAX_DAYS_PER_RUN], days[-1]),
    ]
