"""Writing a view over a range of days: each day's partition is the same whatever the run's shape (one range,
passes of a few days, single days in any order); missing inputs are errors naming the days; a windowed read
needs only the days of its window."""

from __future__ import annotations

import random
import shutil

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mlops_assets.features import tiles
from mlops_assets.features.layout import layouts
from mlops_assets.features.store import FeatureDataMissing, FeatureStore
from mlops_assets.features.tiles import FeatureInputError, materialize_days, partition_path, stored_days
from mlops_assets.project import Project
from mlops_assets.storage import PART_FILE
from mlops_assets_tests.conftest import day_range, write_source_days

SUB = day_range("2026-01-10", "2026-01-21")  # inside the small world's 45 days


def T(text: str) -> pd.Timestamp:
    return pd.Timestamp(text, tz="UTC")


def view_bytes(project: Project, days: list[str]) -> dict[tuple[str, str], bytes]:
    return {
        (v, d): (partition_path(project.paths, v, d) / PART_FILE).read_bytes()
        for v in project.view_names
        for d in days
    }


def reset_views(project: Project) -> None:
    shutil.rmtree(project.paths.features)
    shutil.rmtree(project.paths.warehouse / "_state")


@pytest.mark.slow
def test_every_run_shape_writes_the_same_bytes_for_each_day(small_world, monkeypatch):
    """The small world's views were written by one 45-day range run; rewrite some of its days other ways."""
    reference = view_bytes(small_world, SUB)
    ids = [f"C{i:06d}" for i in range(0, 365, 4)]
    reference_values = FeatureStore(small_world).features_at(SUB[-1], ids)
    store = FeatureStore(small_world)
    start = small_world.spec.partitions.start.isoformat()

    reset_views(small_world)  # single days, shuffled: no state to continue from, snapshot days derive theirs
    order = SUB[:]
    random.Random(7).shuffle(order)
    for day in order:
        store.materialize(day)
    assert view_bytes(small_world, SUB) == reference

    reset_views(small_world)  # one range in passes of 5 days
    monkeypatch.setattr(tiles, "DAYS_PER_PASS", 5)
    seen: list[tuple] = []
    for layout in layouts(small_world.spec).values():
        metas = materialize_days(
            layout, small_world.paths, SUB, start, lambda *a, s=seen, n=layout.name: s.append((n, *a))
        )
        assert sorted(metas) == SUB
    assert view_bytes(small_world, SUB) == reference
    assert seen == [(v, d, i + 1, len(SUB)) for v in small_world.view_names for i, d in enumerate(SUB)]

    # a re-run of a day in the middle of the range (the state is past it): the same bytes again
    store.materialize(SUB[4])
    assert view_bytes(small_world, SUB) == reference
    # values read from these days equal the values read from the original range run (event views' lifetime
    # values need every earlier day: write the days before the sub-range too)
    store.materialize(day_range(start, "2026-01-09"))
    pd.testing.assert_frame_equal(FeatureStore(small_world).features_at(SUB[-1], ids), reference_values)


def test_a_source_day_never_ingested_is_an_error_naming_it_and_an_empty_day_is_not(churn):
    days = day_range("2026-01-01", "2026-01-08")
    rows = pd.DataFrame(
        [("e1", "C1", "2026-01-02 10:00", "login", None)],
        columns=["event_id", "customer_id", "event_timestamp", "event_type", "amount"],
    )
    write_source_days(churn, "raw_events", rows, [d for d in days if d not in ("2026-01-04", "2026-01-06")])
    store = FeatureStore(churn)
    with pytest.raises(FeatureInputError) as info:
        store.materialize(days, ["engagement"])
    assert str(info.value) == (
        "feature view engagement: source raw_events has no ingested partition for 2 day(s) "
        "(2026-01-04, 2026-01-06); materialize raw_events for them first"
    )
    assert stored_days(churn.paths, "engagement") == []  # checked before anything is written
    # ingested with no rows: a manifest and no partition folder (as ingestion leaves a day without landing rows)
    for day in ("2026-01-04", "2026-01-06"):
        manifest = churn.paths.manifest_path("raw_events", day)
        manifest.parent.mkdir(parents=True, exist_ok=True)
        manifest.write_text("{}")
    metas = store.materialize(days, ["engagement"])["engagement"]
    assert [metas[d]["rows"] for d in days] == [0, 1, 0, 0, 0, 0, 0, 0]
    assert stored_days(churn.paths, "engagement") == days
    out = store.get_historical_features(
        pd.DataFrame({"customer_id": ["C1"], "event_timestamp": [T("2026-01-09")]}), ["logins_7d"]
    )
    assert out["logins_7d"].tolist() == [1]
    with pytest.raises(ValueError):
        store.materialize(["2026-13-01"], ["engagement"])


def test_a_windowed_read_needs_only_the_days_of_its_window(churn):
    days = day_range("2026-01-01", "2026-01-20")
    tickets = pd.DataFrame(
        [(f"t{i}", f"C{i % 3}", f"{day} 09:00", "support_ticket", None) for i, day in enumerate(days)],
        columns=["event_id", "customer_id", "event_timestamp", "event_type", "amount"],
    )
    write_source_days(churn, "raw_events", tickets, days)
    store = FeatureStore(churn)
    store.materialize(days, ["support"])
    entity_df = pd.DataFrame({"customer_id": ["C0", "C1", "C2"], "event_timestamp": T("2026-01-20 15:00")})
    before = store.get_historical_features(entity_df, ["support:tickets_7d"])
    assert before["tickets_7d"].tolist() == [3, 2, 2]  # 01-13 .. 01-19: one ticket a day, C0 first
    for day in day_range("2026-01-01", "2026-01-12"):  # older than the 7-day window of the 01-20 midnight
        shutil.rmtree(partition_path(churn.paths, "support", day))
    after = FeatureStore(churn).get_historical_features(entity_df, ["support:tickets_7d"])
    pd.testing.assert_frame_equal(after, before)
    with pytest.raises(
        FeatureDataMissing, match=r"support: 12 day\(s\) needed by this read .*\(2026-01-01, "
    ):
        FeatureStore(churn).get_historical_features(entity_df, ["support:tickets_30d"])


def test_a_snapshot_tie_goes_to_the_later_record_of_the_partition(churn):
    """Two records of one customer with the same time in one partition: the later file's wins."""
    days = day_range("2026-01-01", "2026-01-03")
    contract = churn.contract("customers")

    def record(plan: str, updated: str) -> pa.Table:
        frame = pd.DataFrame(
            {
                "customer_id": ["C1"],
                "signup_date": [pd.Timestamp("2025-12-01").date()],
                "plan": [plan],
                "region": ["north"],
                "age_group": ["25-34"],
                "updated_at": [T(updated)],
            }
        )
        return pa.Table.from_pandas(frame, preserve_index=False).cast(contract.schema)

    write_source_days(churn, "customers", pd.DataFrame(columns=contract.column_names), days)
    folder = churn.paths.partition_dir("customers", "2026-01-02")
    pq.write_table(record("basic", "2026-01-02 10:00"), folder / "part-a.parquet")
    pq.write_table(record("premium", "2026-01-02 10:00"), folder / "part-b.parquet")
    store = FeatureStore(churn)
    store.materialize(days, ["customer_profile"])
    out = store.get_historical_features(
        pd.DataFrame({"customer_id": ["C1", "C1"], "event_timestamp": [T("2026-01-02"), T("2026-01-03")]}),
        ["customer_profile:plan"],
    )
    assert pd.isna(out.at[0, "plan"]) and out.at[1, "plan"] == "premium"


def test_a_snapshot_day_needs_every_earlier_source_day(churn):
    """A profile day holds what changed against the days before it: computing it over a gap would be wrong later."""
    rows = pd.DataFrame(
        [
            ("C1", pd.Timestamp("2025-12-01").date(), plan, "north", "25-34", f"2026-01-0{day} 10:00")
            for day, plan in ((1, "basic"), (2, "premium"), (3, "basic"))
        ],
        columns=["customer_id", "signup_date", "plan", "region", "age_group", "updated_at"],
    )
    write_source_days(churn, "customers", rows, ["2026-01-01", "2026-01-03"])  # 01-02 not ingested yet
    store = FeatureStore(churn)
    store.materialize(["2026-01-01"], ["customer_profile"])
    with pytest.raises(
        FeatureInputError, match=r"customers has no ingested partition for 1 day\(s\) \(2026-01-02\)"
    ):
        store.materialize(["2026-01-03"], ["customer_profile"])
    assert stored_days(churn.paths, "customer_profile") == ["2026-01-01"]
    write_source_days(churn, "customers", rows, ["2026-01-02"])
    store.materialize(["2026-01-03"], ["customer_profile"])  # out of order: derived from the source days
    store.materialize(["2026-01-02"], ["customer_profile"])
    out = FeatureStore(churn).get_historical_features(
        pd.DataFrame({"customer_id": ["C1"] * 3, "event_timestamp": [T(f"2026-01-0{d}") for d in (2, 3, 4)]}),
        ["customer_profile:plan"],
    )
    assert out["plan"].tolist() == ["basic", "premium", "basic"]
