"""The FeatureStore facade on the tiled engine: point-in-time values at any time, TTL, unknown entities,
training sets, ``features_at`` against an independent recomputation, the catalog."""

from __future__ import annotations

import math
import shutil
from datetime import date
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from mlops_assets.features.layout import layouts
from mlops_assets.features.pit import assert_no_leakage
from mlops_assets.features.store import FeatureDataMissing, FeatureStore
from mlops_assets.project import Project
from mlops_assets.storage import frame_hash, write_partition
from mlops_assets_tests.conftest import CHURN_SPEC, day_range, write_source_days

FIRST, LAST = "2026-01-01", "2026-01-10"  # the hand world's materialized days (features up to 01-11 00:00)
DAY_US = 86_400_000_000


def T(text: str) -> pd.Timestamp:
    return pd.Timestamp(text, tz="UTC")


def events(rows: list[tuple]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["event_id", "customer_id", "event_timestamp", "event_type", "amount"])


HAND_EVENTS = events(
    [
        ("e1", "C1", "2026-01-02 10:00", "purchase", 20.0),
        ("e2", "C1", "2026-01-05 09:00", "purchase", 40.0),
        ("e3", "C1", "2026-01-05 12:00", "login", None),
        ("e4", "C1", "2026-01-06 00:00", "login", None),  # at a midnight: counted from the next one on
        ("e5", "C2", "2026-01-03 08:00", "support_ticket", None),
        ("e6", "C2", "2026-01-03 09:00", "login", None),
        ("e7", "C1", "2026-01-09 23:59:59.999999", "purchase", 5.0),
    ]
)
HAND_CUSTOMERS = pd.DataFrame(
    [
        ("C1", date(2025, 12, 20), "basic", "north", "25-34", "2026-01-01 10:00"),
        ("C1", date(2025, 12, 20), "premium", "north", "25-34", "2026-01-04 10:00"),
        ("C2", date(2026, 1, 3), "standard", "east", "50+", "2026-01-03 12:00"),
    ],
    columns=["customer_id", "signup_date", "plan", "region", "age_group", "updated_at"],
)


@pytest.fixture(scope="module")
def hand_template(tmp_path_factory) -> Path:
    """The churn example's views over a handful of hand-written records, materialized for 01-01 .. 01-10."""
    root = tmp_path_factory.mktemp("hand") / "data"
    project = Project.load(CHURN_SPEC, root)
    days = day_range(FIRST, LAST)
    write_source_days(project, "raw_events", HAND_EVENTS, days)
    write_source_days(project, "customers", HAND_CUSTOMERS, days)
    FeatureStore(project).materialize(days)
    return root


@pytest.fixture
def hand(hand_template: Path, churn: Project) -> FeatureStore:
    """A copy of the hand world in the test's own data folder."""
    shutil.rmtree(churn.paths.root)
    shutil.copytree(hand_template, churn.paths.root)
    return FeatureStore(churn)


def values(frame: pd.DataFrame, row: int, names: list[str]) -> list:
    return [None if pd.isna(frame.at[row, n]) else frame.at[row, n] for n in names]


PURCHASES = [
    "total_purchases_7d",
    "total_spend_30d",
    "avg_order_value_30d",
    "max_order_value_90d",
    "purchases_lifetime",
]
ENGAGEMENT = ["days_since_last_purchase", "logins_7d", "days_since_last_login"]
PROFILE = ["plan", "account_age_days"]


def test_values_as_of_the_midnight_at_or_before_each_time_in_input_order(hand):
    times = [
        "2026-01-06 00:00",  # 0: records of 01-01 .. 01-05
        "2026-01-05 23:59:59.999999",  # 1: still the 01-05 midnight: records up to 01-04
        "2026-01-07 00:00",  # 2: now e4 (at 01-06 00:00) is before the feature time
        "2026-01-10 00:00",  # 3: e7 (one microsecond before) counts; e1 left the 7-day window
        "2026-01-06 00:00",  # 4: a duplicate request: its own row
        "2026-01-01 00:00",  # 5: the first partition day: nothing before it
        "2025-12-25 00:00",  # 6: before the project's first day
    ]
    entity_df = pd.DataFrame(
        {"customer_id": ["C1"] * len(times), "event_timestamp": [T(t) for t in times], "tag": list("abcdefg")}
    ).set_axis(list(range(len(times)))[::-1])
    out = hand.get_historical_features(
        entity_df,
        [f"purchase_activity:{f}" for f in PURCHASES]
        + [f"engagement:{f}" for f in ENGAGEMENT]
        + [f"customer_profile:{f}" for f in PROFILE],
    )
    assert list(out.columns) == [
        "customer_id",
        "event_timestamp",
        "tag",
        *PURCHASES,
        "purchase_activity__feature_timestamp",
        *ENGAGEMENT,
        "engagement__feature_timestamp",
        *PROFILE,
        "customer_profile__feature_timestamp",
    ]
    assert out["tag"].tolist() == list("abcdefg") and out.index.tolist() == list(range(7))
    # feature time 01-06: purchases of 20 (01-02 10:00) and 40 (01-05 09:00), one login at 01-05 12:00
    assert values(out, 0, PURCHASES) == [2, 60.0, 30.0, 40.0, 2]
    assert values(out, 0, ENGAGEMENT) == [pytest.approx(15 / 24), 1, 0.5]
    assert values(out, 0, PROFILE) == ["premium", 17]  # 2025-12-20 .. 2026-01-06
    assert out.at[0, "purchase_activity__feature_timestamp"] == T("2026-01-06")
    # feature time 01-05: the purchase of 01-02 only, no login yet (null recency, zero count)
    assert values(out, 1, PURCHASES) == [1, 20.0, 20.0, 20.0, 1]
    assert values(out, 1, ENGAGEMENT) == [pytest.approx(2 + 14 / 24), 0, None]
    assert values(out, 1, PROFILE) == ["premium", 16]  # the 01-04 10:00 update is before 01-05 00:00
    assert out.at[1, "engagement__feature_timestamp"] == T("2026-01-05")
    assert values(out, 2, ENGAGEMENT)[1:] == [2, 1.0]
    assert values(out, 3, PURCHASES) == [2, 65.0, pytest.approx(65 / 3), 40.0, 3]
    assert values(out, 3, ENGAGEMENT)[0] == pytest.approx(1e-6 / 86400)
    same = out.drop(columns="tag")
    pd.testing.assert_series_equal(same.iloc[4], same.iloc[0], check_names=False)
    for row in (5, 6):  # nothing known yet: counts and sums 0, the rest null, no feature timestamp
        assert values(out, row, PURCHASES) == [0, 0.0, None, None, 0]
        assert values(out, row, ENGAGEMENT + PROFILE) == [None, 0, None, None, None]
        assert out.loc[row, [c for c in out.columns if c.endswith("__feature_timestamp")]].isna().all()
    assert (
        assert_no_leakage(out.rename(columns={"event_timestamp": "label_timestamp"}), "label_timestamp") == []
    )


def test_entity_without_rows_and_views_it_never_appears_in(hand):
    entity_df = pd.DataFrame(
        {
            "customer_id": ["C9", "C2", "C2"],
            "event_timestamp": [T("2026-01-06"), T("2026-01-03 12:00"), T("2026-01-04")],
        }
    )
    out = hand.get_historical_features(entity_df)
    # C9: never seen by any view
    assert values(out, 0, PURCHASES + ENGAGEMENT) == [0, 0.0, None, None, 0, None, 0, None]
    assert values(out, 0, ["tickets_7d", "days_since_last_ticket", "plan", "region", "account_age_days"]) == [
        0,
        None,
        None,
        None,
        None,
    ]
    assert out.loc[0, [c for c in out.columns if c.endswith("__feature_timestamp")]].isna().all()
    # C2 at 01-03 12:00: its first records are from 01-03, after the 01-03 midnight
    assert out.loc[1, [c for c in out.columns if c.endswith("__feature_timestamp")]].isna().all()
    # C2 at 01-04: a ticket at 01-03 08:00, a login at 09:00, signed up 01-03; never purchased
    assert values(out, 2, ["tickets_7d", "days_since_last_ticket", "logins_7d", "days_since_last_login"]) == [
        1,
        pytest.approx(16 / 24),
        1,
        pytest.approx(15 / 24),
    ]
    assert values(out, 2, ["plan", "region", "age_group", "account_age_days"]) == [
        "standard",
        "east",
        "50+",
        1,
    ]
    assert out.at[2, "support__feature_timestamp"] == T("2026-01-04")
    assert pd.isna(out.at[2, "purchase_activity__feature_timestamp"])  # no purchase: no row of that view
    assert values(out, 2, PURCHASES) == [0, 0.0, None, None, 0]


def test_ttl_judges_the_newest_stored_day_against_the_request_time(hand):
    """Stored days end on 01-10 (feature time 01-11 00:00); TTL views (2 days) expire after 01-13 00:00."""
    entity_df = pd.DataFrame(
        {
            "customer_id": ["C1"] * 3,
            "event_timestamp": [T("2026-01-11"), T("2026-01-13"), T("2026-01-13 00:00:00.000001")],
        }
    )
    out = hand.get_historical_features(
        entity_df, ["purchase_activity:purchases_lifetime", "logins_7d", "plan", "account_age_days"]
    )
    # later than the newest feature time: the newest values, stamped with their own feature time
    assert out["purchases_lifetime"].tolist()[:2] == [3, 3]
    assert out["purchase_activity__feature_timestamp"].tolist()[:2] == [T("2026-01-11")] * 2
    assert out["logins_7d"].tolist()[:2] == [2, 2]
    # one microsecond past the TTL: null values and no feature timestamp (a count is null, not 0)
    assert pd.isna(out.at[2, "purchases_lifetime"]) and pd.isna(out.at[2, "logins_7d"])
    assert pd.isna(out.at[2, "purchase_activity__feature_timestamp"])
    assert pd.isna(out.at[2, "engagement__feature_timestamp"])
    # the profile view has no TTL: it still answers, as of the newest stored day
    assert out["plan"].tolist() == ["premium"] * 3
    assert out["account_age_days"].tolist() == [22] * 3
    assert out["customer_profile__feature_timestamp"].tolist() == [T("2026-01-11")] * 3
    labelled = out.rename(columns={"event_timestamp": "label_timestamp"})
    ttls = {n: v.view.ttl for n, v in hand.layouts.items()}
    assert assert_no_leakage(labelled, "label_timestamp", ttls=ttls) == []


def test_default_is_every_feature_and_bad_requests_are_refused(hand):
    entity_df = pd.DataFrame({"customer_id": ["C1"], "event_timestamp": [T("2026-01-03")]})
    out = hand.get_historical_features(entity_df)
    catalog = hand.list_features()
    assert [c for c in out.columns if not c.endswith("__feature_timestamp")][2:] == catalog[
        "feature"
    ].tolist()
    assert out["total_purchases_7d"].tolist() == [1]
    with pytest.raises(KeyError, match="nope"):
        hand.get_historical_features(entity_df, ["engagement:nope"])
    with pytest.raises(KeyError, match="no_view"):
        hand.get_historical_features(entity_df, ["no_view:x"])
    with pytest.raises(ValueError, match="'when'"):
        hand.get_historical_features(entity_df, timestamp_column="when")
    with pytest.raises(ValueError, match="UTC-aware"):
        hand.get_historical_features(entity_df.assign(event_timestamp=pd.Timestamp("2026-01-03")))
    with pytest.raises(ValueError, match="null times"):
        hand.get_historical_features(
            entity_df.assign(event_timestamp=pd.Series([pd.NaT], dtype="datetime64[us, UTC]"))
        )
    with pytest.raises(ValueError, match="null keys"):
        hand.get_historical_features(entity_df.assign(customer_id=[None]))
    with pytest.raises(ValueError, match="customer_id"):
        hand.get_historical_features(entity_df.rename(columns={"customer_id": "id"}))
    empty = hand.get_historical_features(entity_df.iloc[:0], ["logins_7d"])
    assert list(empty.columns) == [
        "customer_id",
        "event_timestamp",
        "logins_7d",
        "engagement__feature_timestamp",
    ]
    assert empty.empty


def test_request_times_in_another_time_zone_are_placed_by_their_utc_midnight(hand):
    local = pd.Timestamp("2026-01-05 20:00", tz="America/New_York")  # 2026-01-06 01:00 UTC
    out = hand.get_historical_features(
        pd.DataFrame({"customer_id": ["C1"], "event_timestamp": [local]}), ["logins_7d", "total_spend_30d"]
    )
    assert out.loc[0, ["logins_7d", "total_spend_30d"]].tolist() == [1, 60.0]  # as of 01-06 00:00 UTC
    assert out.at[0, "engagement__feature_timestamp"] == T("2026-01-06")
    assert out.at[0, "event_timestamp"] == local  # the request's own column is returned untouched


def test_a_store_that_rewrites_a_day_reads_the_new_rows(hand):
    entity_df = pd.DataFrame({"customer_id": ["C1"], "event_timestamp": [T("2026-01-06")]})
    assert hand.get_historical_features(entity_df, ["logins_7d"])["logins_7d"].tolist() == [1]
    late = events([("e8", "C1", "2026-01-05 18:00", "login", None)])  # a late record of 01-05
    write_source_days(hand.project, "raw_events", pd.concat([HAND_EVENTS, late]), ["2026-01-05"])
    hand.materialize("2026-01-05")
    assert hand.get_historical_features(entity_df, ["logins_7d"])["logins_7d"].tolist() == [2]
    assert FeatureStore(hand.project).get_historical_features(entity_df, ["logins_7d"])[
        "logins_7d"
    ].tolist() == [2]


def test_a_view_never_materialized_is_a_clear_error(churn):
    store = FeatureStore(churn)
    entity_df = pd.DataFrame({"customer_id": ["C1"], "event_timestamp": [T("2026-01-03")]})
    with pytest.raises(FeatureDataMissing, match="support has no days in the offline store; materialize it"):
        store.get_historical_features(entity_df, ["support:tickets_7d"])


def labels(rows: list[tuple]) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=["customer_id", "label_timestamp", "churned"])
    frame["label_timestamp"] = pd.Series(
        [T(t) for t in frame["label_timestamp"]], dtype="datetime64[us, UTC]"
    )
    frame["churned"] = frame["churned"].astype("int64")
    return frame


def test_training_set_keeps_every_label_row_in_order_and_reports_metadata(hand):
    rows = [
        ("C1", "2026-01-08 06:00", 0),
        ("C2", "2026-01-04 00:00", 1),
        ("C9", "2026-01-08 06:00", 1),  # never seen: kept, with zero counts and null values
        ("C1", "2026-01-06 12:00", 0),
        ("C1", "2026-01-08 06:00", 0),  # a duplicate label row stays a row
    ]
    frame, meta = hand.build_training_set(labels(rows))
    assert frame["customer_id"].tolist() == ["C1", "C2", "C9", "C1", "C1"]
    assert frame["churned"].tolist() == [0, 1, 1, 0, 0]
    assert frame["total_spend_30d"].tolist() == [60.0, 0.0, 0.0, 60.0, 60.0]
    assert frame["tickets_7d"].tolist() == [0, 1, 0, 0, 0]
    assert frame["plan"].tolist()[:2] == ["premium", "standard"] and pd.isna(frame.at[2, "plan"])
    assert meta["rows"] == 5 and meta["label_rate"] == pytest.approx(2 / 5)
    assert meta["null_rates"]["plan"] == pytest.approx(1 / 5)
    assert meta["null_rates"]["avg_order_value_30d"] == pytest.approx(2 / 5)  # C2 and C9 never purchased
    assert meta["null_rates"]["total_spend_30d"] == 0.0
    assert meta["leakage_violations"] == 0
    assert (
        meta["time_min"] == T("2026-01-04").isoformat()
        and meta["time_max"] == T("2026-01-08 06:00").isoformat()
    )
    assert meta["content_hash"] == frame_hash(frame)
    assert meta["view_versions"] == {n: v.version() for n, v in layouts(hand.spec).items()}
    assert meta["views_without_rows"] == []
    for (
        view
    ) in hand.layouts:  # point-in-time: each joined row's feature time is the midnight before its label
        fts = frame[f"{view}__feature_timestamp"].dropna()
        assert (fts == frame.loc[fts.index, "label_timestamp"].dt.floor("D")).all()

    again, meta2 = hand.build_training_set(labels(rows))
    assert meta2["content_hash"] == meta["content_hash"]
    changed = labels([(*rows[0][:2], 1), *rows[1:]])
    assert hand.build_training_set(changed)[1]["content_hash"] != meta["content_hash"]
    only_c9 = hand.build_training_set(labels([rows[2]]))[1]
    assert sorted(only_c9["views_without_rows"]) == sorted(hand.layouts)
    with pytest.raises(ValueError, match="churned"):
        hand.build_training_set(labels(rows).drop(columns="churned"))


def test_stored_labels_load_in_time_order_and_the_training_set_round_trips(hand):
    stored = labels(
        [("C2", "2026-01-06 05:00", 1), ("C1", "2026-01-06 05:00", 0), ("C1", "2026-01-06 01:00", 1)]
    )
    write_partition(stored, hand.paths.partition_dir("raw_labels", "2026-01-06"))
    write_partition(
        labels([("C1", "2026-01-04 03:00", 0)]), hand.paths.partition_dir("raw_labels", "2026-01-04")
    )
    loaded = hand.load_labels()
    assert list(zip(loaded["customer_id"], loaded["label_timestamp"], strict=True)) == [
        ("C1", T("2026-01-04 03:00")),
        ("C1", T("2026-01-06 01:00")),
        ("C1", T("2026-01-06 05:00")),
        ("C2", T("2026-01-06 05:00")),
    ]
    assert hand.load_labels(["2026-01-05"]).empty
    assert hand.load_labels(["2026-01-04"])["customer_id"].tolist() == ["C1"]
    frame, meta = hand.build_training_set()
    assert len(frame) == 4 and frame["churned"].tolist() == [0, 1, 0, 1]
    hand.write_training_set(frame, meta)
    again, meta2 = hand.read_training_set()
    pd.testing.assert_frame_equal(again, frame)
    assert meta2["content_hash"] == meta["content_hash"] == frame_hash(again)
    assert meta2["rows"] == 4 and again["logins_7d"].tolist() == [0, 1, 1, 1]


def test_list_features_is_the_searchable_catalog(churn):
    store = FeatureStore(churn)
    catalog = store.list_features()
    assert catalog["reference"].is_unique
    assert len(catalog) == sum(len(v.features) for v in churn.spec.feature_views.values())
    row = catalog.set_index("reference").loc["engagement:logins_7d"]
    assert (row["aggregation"], row["window"], row["owner"], row["entity"], row["source"]) == (
        "count",
        "7d",
        "product-analytics",
        "customer",
        "raw_events",
    )
    assert row["filter"] == "event_type IN ('login', 'purchase') AND event_type = 'login'"
    assert catalog.set_index("reference").loc["purchase_activity:purchases_lifetime", "window"] == "lifetime"
    # a search matches names, the description, tags and the owner, case-insensitively
    assert set(store.list_features("login")["feature"]) == set(
        churn.spec.feature_views["engagement"].features
    )
    sensitive = store.list_features("sensitive")
    assert sensitive["feature"].tolist() == ["age_group"] and sensitive["sensitive"].all()
    assert set(store.list_features("customer-care")["view"]) == {"support"}
    assert set(store.list_features("MONETARY")["view"]) == {"purchase_activity"}
    assert store.list_features("FAIRNESS")["reference"].tolist() == ["customer_profile:age_group"]
    assert store.list_features("no-such-thing").empty


# ---------------------------------------------------------------------------------------- small world


_RAW: dict[str, pd.DataFrame] = {}  # the small world's ingested tables (identical copies)


def _raw(project: Project, table: str) -> pd.DataFrame:
    if table not in _RAW:
        files = sorted(project.paths.table_dir(table).glob("date=*/*.parquet"))
        _RAW[table] = pd.concat([pq.read_table(f).to_pandas() for f in files], ignore_index=True)
    return _RAW[table]


def reference_features(project: Project, day: str, ids: list[str]) -> pd.DataFrame:
    """Some churn features as of the end of ``day``, computed from the ingested records with pandas."""
    ft = T(day) + pd.Timedelta(days=1)
    ev = _raw(project, "raw_events")
    ev = ev[ev["event_timestamp"] < ft]
    cust = _raw(project, "customers")
    cust = cust[cust["updated_at"] < ft].sort_values("updated_at", kind="stable")
    latest = cust.groupby("customer_id").tail(1).set_index("customer_id")
    rows = []
    for cid in ids:
        mine = ev[ev["customer_id"] == cid]
        buys = mine[mine["event_type"] == "purchase"]
        logins = mine[mine["event_type"] == "login"]
        tickets = mine[mine["event_type"] == "support_ticket"]

        def since(frame, days):
            frame = frame[frame["event_timestamp"] >= ft - pd.Timedelta(days=days)]
            return frame[frame["event_timestamp"] < ft]

        spend_90 = since(buys, 90)["amount"].dropna().tolist()
        spend_30 = since(buys, 30)["amount"].dropna().tolist()
        last_login = since(logins, 90)["event_timestamp"].max()
        rows.append(
            {
                "total_purchases_30d": len(since(buys, 30)),
                "purchases_lifetime": len(buys),
                "total_spend_90d": math.fsum(spend_90),
                "avg_order_value_30d": math.fsum(spend_30) / len(spend_30) if spend_30 else None,
                "max_order_value_90d": max(spend_90) if spend_90 else None,
                "logins_7d": len(since(logins, 7)),
                "days_since_last_login": None
                if pd.isna(last_login)
                else ((ft - last_login) // pd.Timedelta(microseconds=1)) / DAY_US,
                "tickets_30d": len(since(tickets, 30)),
                "plan": latest["plan"].get(cid),
                "account_age_days": (ft.date() - latest["signup_date"][cid]).days
                if cid in latest.index
                else None,
            }
        )
    return pd.DataFrame(rows)


@pytest.mark.slow  # the session's small world takes half a minute to build
@pytest.mark.parametrize("day", ["2026-01-20", "2026-02-14"])  # a day inside, and the newest stored day
def test_features_at_equals_an_independent_recomputation(small_world, day):
    ids = sorted(_raw(small_world, "customers")["customer_id"].unique().tolist())[::3] + ["C_never"]
    store = FeatureStore(small_world)
    expected = reference_features(small_world, day, ids)
    got = store.features_at(day, ids, list(expected.columns))
    # the comparison means something: values of every kind, zeros and nulls included
    assert (expected["total_purchases_30d"] > 0).sum() > 10 and (expected["tickets_30d"] > 0).any()
    assert (
        expected["days_since_last_login"].notna().sum() > 10 and expected["avg_order_value_30d"].isna().any()
    )
    assert got["customer_id"].tolist() == ids
    for name in expected.columns:
        for cid, want, have in zip(ids, expected[name], got[name], strict=True):
            if want is None or (isinstance(want, float) and math.isnan(want)):
                assert pd.isna(have), (name, cid, have)
            else:
                assert have == want, (name, cid, have, want)  # exact, floats included
    assert (got["purchase_activity__feature_timestamp"].dropna() == T(day) + pd.Timedelta(days=1)).all()
    assert got.iloc[-1][["plan", "account_age_days"]].isna().all()  # the unknown id: a row, with nulls
    assert got.iloc[-1]["total_purchases_30d"] == 0


@pytest.mark.slow
def test_small_world_training_set_is_point_in_time_correct(small_world):
    store = FeatureStore(small_world)
    frame, meta = store.build_training_set()
    labels_df = store.load_labels()
    assert meta["rows"] == len(labels_df) == len(frame) > 0
    pd.testing.assert_frame_equal(frame[labels_df.columns], labels_df)  # every label row, in order
    assert meta["leakage_violations"] == 0
    assert meta["label_rate"] == pytest.approx(labels_df["churned"].mean())
    ts = frame["label_timestamp"]
    for view, layout in store.layouts.items():
        fts = frame[f"{view}__feature_timestamp"]
        joined = fts.notna()
        assert joined.any(), view
        assert (fts[joined] <= ts[joined]).all() and (fts[joined] == ts[joined].dt.floor("D")).all()
        if layout.view.ttl is not None:
            assert (fts[joined] >= ts[joined] - layout.view.ttl).all()
    sample = frame.sample(25, random_state=1)
    for _, row in sample.iterrows():  # spot check against the independent recomputation
        day = (row["label_timestamp"].floor("D") - pd.Timedelta(days=1)).date().isoformat()
        want = reference_features(small_world, day, [row["customer_id"]]).iloc[0]
        assert row["total_purchases_30d"] == want["total_purchases_30d"]
        assert row["logins_7d"] == want["logins_7d"]
        assert row["days_since_last_login"] == want["days_since_last_login"] or (
            pd.isna(row["days_since_last_login"]) and pd.isna(want["days_since_last_login"])
        )
        assert row["plan"] == want["plan"] or (pd.isna(row["plan"]) and want["plan"] is None)
