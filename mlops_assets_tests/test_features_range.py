"""Feature views over a range of days: every partition equals the per-day computation, bit for bit."""

from __future__ import annotations

import hashlib
import shutil
from datetime import date, timedelta
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mlops_assets.features import compute as C
from mlops_assets.features.compute import (
    compute_range_tables,
    compute_view_table,
    feature_partition_dir,
    materialize_range,
    materialize_view,
)
from mlops_assets.features.views import FEATURE_VIEWS, get_view
from mlops_assets.ingestion.schema import CONTRACTS, RAW_EVENTS
from mlops_assets.ingestion.validate import ingest_day, write_day
from mlops_assets.settings import DataPaths
from mlops_assets.simulate import simulate
from mlops_assets.storage import table_hash, write_partition

START = "2026-01-01"
N_DAYS = 40
EMPTY_DAY = "2026-01-20"  # its raw_events partition is removed: a day with no events


def _days(first: str, n: int) -> list[str]:
    return [(date.fromisoformat(first) + timedelta(days=i)).isoformat() for i in range(n)]


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> DataPaths:
    """200 simulated customers x 40 days, ingested day by day (one day without events)."""
    paths = DataPaths(tmp_path_factory.mktemp("range_world"))
    simulate(out=paths.landing, customers=200, days=N_DAYS, start=START, seed=11)
    for day in _days(START, N_DAYS):
        for name in ("raw_events", "customers"):
            result = ingest_day(CONTRACTS[name], paths.landing_dir(name), day)
            write_day(
                result,
                paths.partition_dir(name, day),
                paths.quarantine_dir(name, day),
                paths.landing_dir(name),
            )
    shutil.rmtree(paths.partition_dir("raw_events", EMPTY_DAY))
    return paths


_REFERENCE: dict[tuple, pa.Table] = {}  # per-day tables of the module's world, computed once


def assert_same_tables(view, days, paths, got: dict[str, pa.Table]) -> None:
    assert sorted(got) == sorted(days)
    for day in days:
        key = (str(paths.root), view.name, day)
        want = _REFERENCE.get(key)
        if want is None:
            want = compute_view_table(view, day, paths)
            if paths.root.name.startswith("range_world"):
                _REFERENCE[key] = want
        assert got[day].schema == want.schema, (view.name, day)
        assert got[day].equals(want), (view.name, day)
        assert table_hash(got[day]) == table_hash(want), (view.name, day)


# days before the data (nothing to read), the first days (partial lookback), the empty day, days
# after the data (events only inside the lookback)
RANGE = _days("2025-12-29", N_DAYS + 8)


@pytest.mark.parametrize("view", FEATURE_VIEWS, ids=lambda v: v.name)
def test_range_equals_per_day_for_every_day(world, view):
    got = compute_range_tables(view, RANGE, world)
    assert_same_tables(view, RANGE, world, got)
    assert got["2025-12-30"].num_rows == 0 and got[START].num_rows > 0
    if view.name != "customer_profile":
        assert got[EMPTY_DAY].num_rows > 0  # the lookback still has events


def test_written_partitions_and_metadata_equal_the_per_day_path(world, tmp_path):
    days = _days("2026-01-18", 5)  # around the day without events
    for view in FEATURE_VIEWS:
        reference = {day: materialize_view(view, day, world) for day in days}
        files = {
            day: (feature_partition_dir(world, view.name, day) / "part-0.parquet").read_bytes()
            for day in days
        }
        seen: list[tuple] = []
        got = materialize_range(
            view, list(reversed(days)), world, progress=lambda *args, s=seen: s.append(args)
        )
        assert got == reference
        assert seen == [(day, i + 1, len(days)) for i, day in enumerate(days)]
        for day in days:
            written = (feature_partition_dir(world, view.name, day) / "part-0.parquet").read_bytes()
            assert hashlib.sha256(written).digest() == hashlib.sha256(files[day]).digest(), (view.name, day)


def test_gaps_many_passes_and_entity_blocks_give_the_same_tables(world, monkeypatch):
    monkeypatch.setattr(C, "RANGE_DAYS_PER_PASS", 7)
    monkeypatch.setattr(C, "RANGE_ROWS_PER_PASS", 1000)  # ~200 customers: passes of ~5 days
    monkeypatch.setattr(C, "RANGE_GRID_CELLS", 30 * 140)  # about 30 customers per block
    days = ["2026-02-08", "2026-01-02", *_days("2026-01-10", 12), "2026-01-30"]
    runs = C._passes(get_view("engagement"), _days("2026-01-10", 12), world)
    customers = len(
        set(
            pq.read_table(
                C.source_files(get_view("engagement"), "2026-01-21", world), columns=["customer_id"]
            )
            .column(0)
            .to_pylist()
        )
    )
    assert [d for run in runs for d in run] == _days("2026-01-10", 12) and len(runs) >= 2
    assert all(len(run) * customers <= 1000 * 1.1 for run in runs)  # the row budget (count is approximate)
    for view in FEATURE_VIEWS:
        assert_same_tables(view, days, world, compute_range_tables(view, days, world))


def _write_events(paths: DataPaths, rows: list[tuple]) -> None:
    frame = pd.DataFrame(rows, columns=["event_id", "customer_id", "event_timestamp", "event_type", "amount"])
    frame["event_timestamp"] = frame["event_timestamp"].map(lambda t: pd.Timestamp(t, tz="UTC"))
    for day, part in frame.groupby(frame["event_timestamp"].dt.strftime("%Y-%m-%d")):
        table = pa.Table.from_pandas(part.reset_index(drop=True), preserve_index=False).cast(
            RAW_EVENTS.schema
        )
        write_partition(table, paths.partition_dir("raw_events", day))


def test_float_sums_add_events_in_time_order_like_the_per_day_path(tmp_path):
    paths = DataPaths(tmp_path)
    # 1e16 then two 1.0s: in time order each 1.0 is lost to rounding (1e16 + 1 == 1e16), while
    # adding the second day's partial sum (2.0) would give 1e16 + 2: a two-stage sum would differ
    _write_events(
        paths,
        [
            ("e1", "C1", "2026-01-01 10:00", "purchase", 1e16),
            ("e3", "C1", "2026-01-02 09:00", "purchase", 1.0),
            ("e2", "C1", "2026-01-02 09:00", "purchase", 1.0),  # same time: event_id orders it first
            ("e4", "C1", "2026-01-03 08:00", "purchase", 0.1),
            ("e5", "C1", "2026-01-03 09:00", "purchase", 0.2),
            ("e6", "C1", "2026-01-04 09:00", "purchase", 0.3),
            ("e7", "C2", "2026-01-03 09:00", "purchase", 0.7),
        ],
    )
    view = get_view("purchase_activity")
    days = _days("2026-01-01", 12)
    got = compute_range_tables(view, days, paths)
    assert_same_tables(view, days, paths, got)
    amounts = [1e16, 1.0, 1.0, 0.1, 0.2, 0.3]
    in_order = 0.0
    for amount in amounts:
        in_order += amount
    two_stage = ((1e16 + (1.0 + 1.0)) + (0.1 + 0.2)) + 0.3
    assert in_order != two_stage
    c1 = got["2026-01-04"].to_pandas().set_index("customer_id").loc["C1"]
    assert c1["total_spend_7d"] == in_order
    assert c1["avg_order_value_7d"] == in_order / len(amounts)
    late = got["2026-01-08"].to_pandas().set_index("customer_id").loc["C1"]  # e1 left the 7-day window
    in_order = 0.0
    for amount in amounts[1:]:
        in_order += amount
    assert late["total_spend_7d"] == in_order and late["total_purchases_7d"] == 5


def test_rows_outside_their_day_partition_fall_back_to_the_per_day_path(tmp_path):
    paths = DataPaths(tmp_path)
    _write_events(
        paths,
        [
            ("e1", "C1", "2026-01-01 10:00", "login", None),
            ("e2", "C1", "2026-01-03 10:00", "purchase", 5.0),
            ("e3", "C2", "2026-01-04 10:00", "login", None),
        ],
    )
    # a partition holding a row of another day: the per-day windows then depend on the partition
    stray = pd.DataFrame(
        {
            "event_id": ["x1"],
            "customer_id": ["C3"],
            "event_timestamp": [pd.Timestamp("2026-01-01 12:00", tz="UTC")],
            "event_type": ["login"],
            "amount": [None],
        }
    )
    write_partition(
        pa.Table.from_pandas(stray, preserve_index=False).cast(RAW_EVENTS.schema),
        paths.partition_dir("raw_events", "2026-01-05"),
    )
    days = _days("2026-01-01", 8)
    for name in ("engagement", "purchase_activity"):
        view = get_view(name)
        assert_same_tables(view, days, paths, compute_range_tables(view, days, paths))


def test_profile_takes_the_latest_record_visible_each_day(tmp_path):
    paths = DataPaths(tmp_path)
    rows = [  # (customer, plan, updated_at); the third record lands in the next day's partition
        ("C1", "basic", "2026-01-01 10:00", "2026-01-01"),
        ("C1", "premium", "2026-01-03 10:00", "2026-01-03"),
        ("C1", "standard", "2026-01-03 10:00", "2026-01-04"),  # same updated_at, later file: wins from day 4
        ("C2", "basic", "2026-01-02 23:59", "2026-01-02"),
    ]
    for customer, plan, updated, part in rows:
        frame = pd.DataFrame(
            {
                "customer_id": [customer],
                "signup_date": [date(2025, 12, 1)],
                "plan": [plan],
                "region": ["north"],
                "age_group": ["25-34"],
                "updated_at": [pd.Timestamp(updated, tz="UTC")],
            }
        )
        table = pa.Table.from_pandas(frame, preserve_index=False).cast(CONTRACTS["customers"].schema)
        directory = paths.partition_dir("customers", part)
        directory.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, directory / f"part-{customer}-{plan}.parquet")
    view = get_view("customer_profile")
    days = _days("2025-12-31", 6)
    got = compute_range_tables(view, days, paths)
    assert_same_tables(view, days, paths, got)
    plans = {
        day: dict(zip(t.column("customer_id").to_pylist(), t.column("plan").to_pylist(), strict=True))
        for day, t in got.items()
    }
    assert plans["2025-12-31"] == {}
    assert plans["2026-01-02"] == {"C1": "basic", "C2": "basic"}
    assert plans["2026-01-03"]["C1"] == "premium" and plans["2026-01-04"]["C1"] == "standard"


def test_bad_arguments_are_refused(world):
    with pytest.raises(TypeError, match="list"):
        compute_range_tables(get_view("support"), "2026-01-05", world)
    with pytest.raises(ValueError):
        compute_range_tables(get_view("support"), ["2026-13-01"], world)
    assert compute_range_tables(get_view("support"), [], world) == {}
    assert isinstance(
        Path(materialize_range(get_view("support"), ["2026-01-05"], world)["2026-01-05"]["path"]), Path
    )


def test_historical_features_read_only_the_partitions_that_can_qualify(world):
    """The facade prunes partitions by the entity times and TTL; the answer equals a join over every file."""
    from mlops_assets.features.pit import FeatureSource, point_in_time_join
    from mlops_assets.features.store import FeatureStore

    for view in FEATURE_VIEWS:
        materialize_range(view, _days(START, N_DAYS), world)
    store = FeatureStore(world.root)
    customers = [f"C{i:06d}" for i in range(0, 200, 7)]
    times = pd.to_datetime(["2026-01-25 00:00", "2026-01-26 00:00", "2026-01-28 13:30"], utc=True)
    entity_df = pd.DataFrame(
        [(c, t) for c in customers for t in times], columns=["customer_id", "event_timestamp"]
    )
    pruned = store.get_historical_features(entity_df)
    everything = [
        FeatureSource(
            v.name, C.feature_files(world, v.name), [f.name for f in v.features], ttl=v.ttl, entity=v.entity
        )
        for v in FEATURE_VIEWS
    ]
    pd.testing.assert_frame_equal(pruned, point_in_time_join(entity_df, everything))
    # the pruning is real: a TTL view reads a few partitions, not the whole history
    sources = {s.name: s for s in store._sources(None, entity_df["event_timestamp"])}
    ttl_view = next(v for v in FEATURE_VIEWS if v.ttl is not None)
    assert 0 < len(sources[ttl_view.name].data) < len(C.feature_files(world, ttl_view.name)) / 3
