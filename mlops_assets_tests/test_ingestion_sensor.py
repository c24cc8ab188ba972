"""The new-data sensor: requests a day once per distinct landing content, and says why it skips."""

from __future__ import annotations

import json
import os

import dagster as dg

from mlops_assets.demo import RANGE_END_TAG, RANGE_START_TAG
from mlops_assets.ingestion.assets import ingestion_assets
from mlops_assets.ingestion.sensors import landing_files_sensor
from mlops_assets.resources import DataDirResource
from mlops_assets_tests.conftest import events_frame, write_events

DAY = "2026-01-10"


class SensorHarness:
    """Evaluates the sensor tick after tick, carrying the cursor like the daemon does."""

    def __init__(self, paths):
        self.paths = paths
        self.cursor = None
        self.instance = dg.DagsterInstance.ephemeral()

    def tick(self):
        context = dg.build_sensor_context(
            cursor=self.cursor,
            instance=self.instance,
            resources={"data": DataDirResource(root=str(self.paths.root))},
        )
        result = landing_files_sensor(context)
        self.cursor = result.cursor
        return result


def test_new_file_same_file_changed_file(data_dir):
    sensor = SensorHarness(data_dir)
    path = write_events(data_dir, DAY)

    first = sensor.tick()
    assert len(first.run_requests) == 1
    request = first.run_requests[0]
    assert request.partition_key == DAY
    assert request.asset_selection == [dg.AssetKey("raw_events")]
    assert request.tags["mlops/trigger"] == "new_landing_data"

    again = sensor.tick()
    assert again.run_requests == []
    assert "no new or changed landing files" in again.skip_reason.skip_message

    # touched (new mtime) but the same bytes: still nothing to do, decided on content
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 5_000_000_000))
    assert sensor.tick().run_requests == []

    write_events(data_dir, DAY, events_frame(DAY, n=41))
    changed = sensor.tick()
    assert len(changed.run_requests) == 1
    assert changed.run_requests[0].run_key != request.run_key


def test_each_table_and_day_gets_its_own_request(data_dir):
    sensor = SensorHarness(data_dir)
    write_events(data_dir, "2026-01-10")
    write_events(data_dir, "2026-01-11")
    labels = data_dir.landing_dir("raw_labels")
    labels.mkdir(parents=True)
    (labels / "labels_2026-01-11.csv").write_text(
        "customer_id,label_timestamp,churned\nC1,2026-01-11T10:00:00Z,1\n"
    )
    requests = sensor.tick().run_requests
    assert sorted((r.asset_selection[0].path[-1], r.partition_key) for r in requests) == [
        ("raw_events", "2026-01-10"),
        ("raw_events", "2026-01-11"),
        ("raw_labels", "2026-01-11"),
    ]
    assert len({r.run_key for r in requests}) == 3


def test_already_ingested_days_are_not_requested(data_dir):
    write_events(data_dir, DAY)
    dg.materialize(
        ingestion_assets,
        instance=dg.DagsterInstance.ephemeral(),
        resources={"data": DataDirResource(root=str(data_dir.root))},
        selection=["raw_events"],
        tags={RANGE_START_TAG: DAY, RANGE_END_TAG: DAY},
    )
    result = SensorHarness(data_dir).tick()  # a fresh cursor, as after `make demo` then `make ui`
    assert result.run_requests == []


def test_days_outside_the_partitions_are_skipped_with_a_reason(data_dir):
    write_events(data_dir, "2019-05-01")
    result = SensorHarness(data_dir).tick()
    assert result.run_requests == []
    assert "outside the partitions" in result.skip_reason.skip_message
    assert "2019-05-01" in result.skip_reason.skip_message


def test_cursor_is_json_and_survives_a_restart(data_dir):
    write_events(data_dir, DAY)
    sensor = SensorHarness(data_dir)
    sensor.tick()
    state = json.loads(sensor.cursor)
    assert state["requested"] == {f"raw_events:{DAY}": state["requested"][f"raw_events:{DAY}"]}
    restarted = SensorHarness(data_dir)
    restarted.cursor = sensor.cursor
    assert restarted.tick().run_requests == []
