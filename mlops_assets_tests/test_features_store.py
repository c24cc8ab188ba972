"""The FeatureStore facade: historical features, training sets, catalog search."""

from __future__ import annotations

import pandas as pd
import pytest

from mlops_assets.features.compute import feature_partition_dir
from mlops_assets.featurestore import FeatureStore, assert_no_leakage
from mlops_assets.settings import DataPaths
from mlops_assets.storage import write_partition
from mlops_assets_tests.test_features_compute import write_customers, write_events


def T(text: str) -> pd.Timestamp:
    return pd.Timestamp(text, tz="UTC")


def write_engagement(paths: DataPaths, day: str, logins: dict[str, int]) -> None:
    ft = pd.Timestamp(day, tz="UTC") + pd.Timedelta(days=1)
    frame = pd.DataFrame(
        {
            "customer_id": list(logins),
            "feature_timestamp": [ft] * len(logins),
            "logins_7d": list(logins.values()),
            "logins_30d": list(logins.values()),
            "logins_90d": list(logins.values()),
            "days_since_last_login": [0.5] * len(logins),
            "days_since_last_purchase": [None] * len(logins),
        }
    )
    write_partition(frame, feature_partition_dir(paths, "engagement", day))


@pytest.fixture()
def store(tmp_path) -> FeatureStore:
    fs = FeatureStore(tmp_path)
    write_engagement(fs.paths, "2026-01-01", {"C1": 1, "C2": 5})
    write_engagement(fs.paths, "2026-01-02", {"C1": 2})
    write_engagement(fs.paths, "2026-01-10", {"C1": 3})
    return fs


def test_historical_features_point_in_time_in_order(store):
    entity_df = pd.DataFrame(
        {
            "customer_id": ["C1", "C1", "C2", "C1", "C9", "C1", "C2"],
            "event_timestamp": [
                T("2026-01-03 12:00"),
                T("2026-01-02 23:59"),
                T("2026-01-04 00:00"),
                T("2026-01-03 12:00"),
                T("2026-01-05"),
                T("2026-01-06"),
                T("2026-01-04 00:00:00.000001"),
            ],
            "tag": list("abcdefg"),
        }
    )
    out = store.get_historical_features(entity_df, ["engagement:logins_7d"])
    assert list(out.columns) == [
        "customer_id",
        "event_timestamp",
        "tag",
        "logins_7d",
        "engagement__feature_timestamp",
    ]
    assert out["tag"].tolist() == list("abcdefg")
    # C1 at 01-03 12:00 sees the 01-02 partition (stamped 01-03 00:00); just before it, the 01-01 one;
    # C2's only row (stamped 01-02) is exactly 2 days (the TTL) old at 01-04 00:00, then expires;
    # C1 on 01-06 has nothing within 2 days; C9 has no history
    expected = [2, 1, 5, 2, None, None, None]
    got = [None if pd.isna(v) else int(v) for v in out["logins_7d"]]
    assert got == expected
    assert assert_no_leakage(out.rename(columns={"event_timestamp": "label_timestamp"})) == []


def test_default_is_every_feature_and_unknown_ones_are_refused(store):
    entity_df = pd.DataFrame({"customer_id": ["C1"], "event_timestamp": [T("2026-01-03")]})
    out = store.get_historical_features(entity_df)
    names = store.list_features()["feature"].tolist()
    assert set(names) <= set(out.columns)
    assert out["total_purchases_30d"].isna().all()  # no partition of that view yet: null, row kept
    with pytest.raises(KeyError, match="nope"):
        store.get_historical_features(entity_df, ["engagement:nope"])


def test_training_set_keeps_every_label_and_reports_metadata(store):
    labels = pd.DataFrame(
        {
            "customer_id": ["C1", "C2", "C9", "C1"],
            "label_timestamp": [T("2026-01-03"), T("2026-01-03"), T("2026-01-03"), T("2026-01-03")],
            "churned": pd.Series([0, 1, 1, 0], dtype="int8"),
        }
    )
    frame, meta = store.build_training_set(
        labels, ["engagement:logins_30d", "engagement:days_since_last_login"]
    )
    assert frame["customer_id"].tolist() == ["C1", "C2", "C9", "C1"]
    assert meta["rows"] == 4 and meta["label_rate"] == pytest.approx(0.5)
    assert meta["null_rates"]["logins_30d"] == pytest.approx(frame["logins_30d"].isna().mean())
    assert meta["null_rates"]["logins_30d"] == pytest.approx(0.25)
    assert meta["leakage_violations"] == 0
    assert meta["time_min"] == meta["time_max"] == T("2026-01-03").isoformat()
    again, meta2 = store.build_training_set(
        labels, ["engagement:logins_30d", "engagement:days_since_last_login"]
    )
    assert meta2["content_hash"] == meta["content_hash"]
    labels.loc[0, "churned"] = 1
    assert (
        store.build_training_set(labels, ["engagement:logins_30d"])[1]["content_hash"] != meta["content_hash"]
    )


def test_end_to_end_from_raw_partitions(tmp_path):
    fs = FeatureStore(tmp_path)
    write_events(
        fs.paths,
        [
            ("e1", "C1", "2026-01-05 10:00", "purchase", 20.0),
            ("e2", "C1", "2026-01-06 10:00", "purchase", 40.0),
            ("e3", "C1", "2026-01-06 11:00", "login", None),
        ],
    )
    write_customers(fs.paths, [("C1", "2026-01-01", "basic", "west", "18-24", "2026-01-01 00:00")])
    for day in ("2026-01-05", "2026-01-06"):
        fs.materialize(day)
    entity_df = pd.DataFrame(
        {"customer_id": ["C1", "C1"], "event_timestamp": [T("2026-01-06 12:00"), T("2026-01-07 00:00")]}
    )
    out = fs.get_historical_features(
        entity_df,
        ["purchase_activity:total_spend_30d", "avg_order_value_30d", "customer_profile:account_age_days"],
    )
    # at 01-06 12:00 only the 01-05 partition exists as of then: one purchase of 20
    assert out["total_spend_30d"].tolist() == [20.0, 60.0]
    assert out["avg_order_value_30d"].tolist() == [20.0, 30.0]
    assert out["account_age_days"].tolist() == [5, 6]


def test_list_features_search(tmp_path):
    fs = FeatureStore(tmp_path)
    catalog = fs.list_features()
    assert catalog["reference"].is_unique and len(catalog) == sum(len(v.features) for v in fs.views)
    assert set(fs.list_features("login")["feature"]) == {
        "logins_7d",
        "logins_30d",
        "logins_90d",
        "days_since_last_login",
    }
    sensitive = fs.list_features("sensitive")
    assert sensitive["feature"].tolist() == ["age_group"] and sensitive["sensitive"].all()
    assert set(fs.list_features("customer-care")["view"]) == {"support"}
    assert set(fs.list_features("MONETARY")["view"]) == {"purchase_activity"}
    assert fs.list_features("no-such-thing").empty


def test_training_set_from_stored_labels_round_trips(store):
    labels = pd.DataFrame(
        {
            "customer_id": ["C2", "C1"],
            "label_timestamp": pd.Series(
                [T("2026-01-03 05:00"), T("2026-01-03 01:00")], dtype="datetime64[us, UTC]"
            ),
            "churned": pd.Series([1, 0], dtype="int8"),
        }
    )
    write_partition(labels, store.paths.partition_dir("raw_labels", "2026-01-03"))
    loaded = store.load_labels()
    assert loaded["customer_id"].tolist() == ["C1", "C2"]  # time order
    assert store.load_labels(["2026-01-04"]).empty
    frame, meta = store.build_training_set(loaded, ["engagement:logins_7d"])
    store.write_training_set(frame, meta)
    again, meta2 = store.read_training_set()
    assert meta2["content_hash"] == meta["content_hash"] and meta2["rows"] == 2
    assert again["logins_7d"].tolist() == frame["logins_7d"].tolist() == [2, 5]
