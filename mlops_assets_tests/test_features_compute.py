"""Feature views: values on a tiny hand-computed example, lookback reads, versions."""

from __future__ import annotations

import dataclasses
from datetime import date, timedelta

import pandas as pd
import pyarrow as pa
import pytest

from mlops_assets.features import views as V
from mlops_assets.features.compute import (
    compute_view,
    feature_time,
    materialize_view,
    required_days,
    source_files,
)
from mlops_assets.features.views import FEATURE_VIEWS, Feature, FeatureView, get_view, validate_views
from mlops_assets.ingestion.schema import CUSTOMERS, RAW_EVENTS
from mlops_assets.settings import DataPaths
from mlops_assets.storage import read_partition, table_hash, write_partition

DAY = "2026-01-31"  # features as of 2026-02-01 00:00 UTC


def T(text: str) -> pd.Timestamp:
    return pd.Timestamp(text, tz="UTC")


def write_events(paths: DataPaths, rows: list[tuple]) -> None:
    frame = pd.DataFrame(rows, columns=["event_id", "customer_id", "event_timestamp", "event_type", "amount"])
    frame["event_timestamp"] = frame["event_timestamp"].map(T)
    for day, part in frame.groupby(frame["event_timestamp"].dt.strftime("%Y-%m-%d")):
        table = pa.Table.from_pandas(part.reset_index(drop=True), preserve_index=False).cast(
            RAW_EVENTS.schema
        )
        write_partition(table, paths.partition_dir("raw_events", day))


def write_customers(paths: DataPaths, rows: list[tuple]) -> None:
    frame = pd.DataFrame(
        rows, columns=["customer_id", "signup_date", "plan", "region", "age_group", "updated_at"]
    )
    frame["signup_date"] = frame["signup_date"].map(date.fromisoformat)
    frame["updated_at"] = frame["updated_at"].map(T)
    for day, part in frame.groupby(frame["updated_at"].dt.strftime("%Y-%m-%d")):
        table = pa.Table.from_pandas(part.reset_index(drop=True), preserve_index=False).cast(CUSTOMERS.schema)
        write_partition(table, paths.partition_dir("customers", day))


@pytest.fixture()
def paths(tmp_path) -> DataPaths:
    p = DataPaths(tmp_path)
    write_events(
        p,
        [
            ("e1", "C1", "2026-01-30 12:00", "purchase", 10.0),
            ("e2", "C1", "2026-01-20 00:00", "purchase", 30.0),
            ("e3", "C1", "2025-12-01 00:00", "purchase", 100.0),
            ("e4", "C1", "2026-01-31 18:00", "login", None),
            ("e5", "C1", "2026-02-01 00:00", "purchase", 999.0),  # at the feature time: not yet known
            ("e6", "C1", "2025-11-02 23:00", "purchase", 999.0),  # outside the 90-day lookback
            ("e7", "C2", "2026-01-31 00:00", "support_ticket", None),
            ("e8", "C3", "2025-10-01 00:00", "login", None),  # silent for 90+ days: no row
        ],
    )
    write_customers(
        p,
        [
            ("C2", "2025-12-31", "basic", "east", "50+", "2025-12-31 08:00"),
            ("C1", "2026-01-01", "basic", "north", "25-34", "2026-01-01 10:00"),
            ("C1", "2026-01-01", "premium", "north", "25-34", "2026-01-15 10:00"),
            ("C1", "2026-01-01", "standard", "south", "25-34", "2026-02-01 00:00"),  # after the feature time
        ],
    )
    return p


def records(frame: pd.DataFrame) -> dict[str, dict]:
    return {row["customer_id"]: row for row in frame.to_dict("records")}


def test_purchase_activity_hand_computed(paths):
    out = compute_view(get_view("purchase_activity"), DAY, paths)
    assert out["customer_id"].tolist() == ["C1"]
    c1 = records(out)["C1"]
    assert c1["feature_timestamp"] == T("2026-02-01")
    assert (c1["total_purchases_7d"], c1["total_purchases_30d"], c1["total_purchases_90d"]) == (1, 2, 3)
    assert (c1["total_spend_7d"], c1["total_spend_30d"], c1["total_spend_90d"]) == (10.0, 40.0, 140.0)
    assert c1["avg_order_value_30d"] == 20.0
    assert c1["avg_order_value_90d"] == pytest.approx(140.0 / 3)
    assert (c1["max_order_value_7d"], c1["max_order_value_30d"], c1["max_order_value_90d"]) == (
        10.0,
        30.0,
        100.0,
    )


def test_engagement_and_support_hand_computed(paths):
    eng = records(compute_view(get_view("engagement"), DAY, paths))
    assert sorted(eng) == ["C1"]  # C2 only filed a ticket, C3 is silent for 90+ days
    assert (eng["C1"]["logins_7d"], eng["C1"]["logins_30d"], eng["C1"]["logins_90d"]) == (1, 1, 1)
    assert eng["C1"]["days_since_last_login"] == pytest.approx(0.25)
    assert eng["C1"]["days_since_last_purchase"] == pytest.approx(1.5)

    sup = records(compute_view(get_view("support"), DAY, paths))
    assert sorted(sup) == ["C2"]
    assert (sup["C2"]["tickets_7d"], sup["C2"]["days_since_last_ticket"]) == (1, 1.0)


def test_customer_profile_uses_latest_record_before_feature_time(paths):
    out = records(compute_view(get_view("customer_profile"), DAY, paths))
    assert sorted(out) == ["C1", "C2"]
    assert (out["C1"]["plan"], out["C1"]["region"], out["C1"]["account_age_days"]) == ("premium", "north", 31)
    assert (out["C2"]["plan"], out["C2"]["age_group"], out["C2"]["account_age_days"]) == ("basic", "50+", 32)
    early = records(compute_view(get_view("customer_profile"), "2026-01-10", paths))
    assert early["C1"]["plan"] == "basic"


def test_days_since_last_is_null_without_an_event_in_the_lookback(paths):
    write_events(paths, [("p1", "C4", "2026-01-31 06:00", "purchase", 5.0)])
    eng = records(compute_view(get_view("engagement"), DAY, paths))
    assert pd.isna(eng["C4"]["days_since_last_login"])
    assert eng["C4"]["logins_90d"] == 0
    pur = records(compute_view(get_view("purchase_activity"), "2026-02-20", paths))
    assert pur["C1"]["total_purchases_7d"] == 0 and pur["C1"]["total_spend_7d"] == 0.0
    assert pd.isna(pur["C1"]["avg_order_value_7d"])


def test_reads_only_the_lookback_partitions(paths):
    view = get_view("engagement")
    days = required_days(view, DAY)
    assert (days[0], days[-1], len(days)) == ("2025-11-03", DAY, 90)
    # a corrupt partition outside the lookback must not be read at all
    bad = paths.partition_dir("raw_events", "2025-11-02")
    bad.mkdir(parents=True, exist_ok=True)
    (bad / "part-0.parquet").write_bytes(b"not parquet")
    assert all("2025-11-02" not in f for f in source_files(view, DAY, paths))
    compute_view(view, DAY, paths)
    assert required_days(get_view("customer_profile"), "2026-01-03", start="2026-01-01") == [
        "2026-01-01",
        "2026-01-02",
        "2026-01-03",
    ]


def test_output_is_deterministic_and_written_atomically(paths):
    view = get_view("purchase_activity")
    first = materialize_view(view, DAY, paths)
    second = materialize_view(view, DAY, paths)
    assert first["content_hash"] == second["content_hash"]
    stored = read_partition(paths.warehouse / "features" / "purchase_activity" / f"date={DAY}")
    assert table_hash(stored) == first["content_hash"] and first["rows"] == 1
    assert first["code_version"] == view.version()


def test_empty_day_gives_an_empty_frame_with_the_schema(tmp_path):
    out = compute_view(get_view("support"), DAY, DataPaths(tmp_path))
    assert len(out) == 0 and "days_since_last_ticket" in out.columns
    assert feature_time(DAY) == T("2026-02-01")


def test_version_changes_only_with_the_definition():
    before = {v.name: v.version() for v in FEATURE_VIEWS}
    assert len(set(before.values())) == len(FEATURE_VIEWS)
    changed = dataclasses.replace(V.SUPPORT, ttl=timedelta(days=3))
    assert changed.version() != before["support"]
    same = dataclasses.replace(V.SUPPORT)
    assert same.version() == before["support"]
    new_feature = Feature(
        "tickets_14d", "int64", "Tickets in 14 days.", "count", event_type="support_ticket", window_days=14
    )
    assert (
        dataclasses.replace(V.SUPPORT, features=V.SUPPORT.features + (new_feature,)).version()
        != before["support"]
    )
    assert {v.name: v.version() for v in FEATURE_VIEWS} == before


def test_definitions_are_validated():
    names = [f for v in FEATURE_VIEWS for f in v.feature_names]
    assert len(names) == len(set(names))
    for seed in ("total_purchases_30d", "avg_order_value_30d", "days_since_last_login", "account_age_days"):
        assert seed in names
    dup = FeatureView("dup", (Feature("plan", "string", "x", "latest", column="plan"),), "d", "o")
    with pytest.raises(ValueError, match="plan"):
        validate_views([*FEATURE_VIEWS, dup])
    with pytest.raises(ValueError, match="window_days"):
        Feature("bad", "int64", "x", "count")
    assert "age_group" not in V.model_feature_names()
