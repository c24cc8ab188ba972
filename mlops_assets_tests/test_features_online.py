"""Online store: latest value per entity, TTL expiry, atomic refresh under concurrent reads."""

from __future__ import annotations

import threading
from datetime import timedelta

import pandas as pd
import pytest

from mlops_assets.features.compute import feature_partition_dir
from mlops_assets.features.online import OnlineStore
from mlops_assets.featurestore import Feature, FeatureStore, FeatureView
from mlops_assets.storage import write_partition

X = FeatureView(
    "vx",
    (Feature("x", "int64", "x", "count", event_type="login", window_days=1),),
    "test view x",
    "team-x",
    ttl=timedelta(days=2),
    lookback_days=1,
)
Y = FeatureView(
    "vy",
    (Feature("y", "string", "y", "latest", column="plan"),),
    "test view y",
    "team-y",
    source="customers",
    ttl=None,
    lookback_days=None,
)


def T(text: str) -> pd.Timestamp:
    return pd.Timestamp(text, tz="UTC")


def write_view(fs: FeatureStore, view: str, column: str, day: str, values: dict) -> None:
    frame = pd.DataFrame(
        {
            "customer_id": list(values),
            "feature_timestamp": [T(day) + pd.Timedelta(days=1)] * len(values),
            column: list(values.values()),
        }
    )
    write_partition(frame, feature_partition_dir(fs.paths, view, day))


@pytest.fixture()
def store(tmp_path) -> FeatureStore:
    fs = FeatureStore(tmp_path, views=[X, Y])
    write_view(fs, "vx", "x", "2026-01-01", {"C1": 1, "C2": 7})
    write_view(fs, "vx", "x", "2026-01-03", {"C1": 3})
    write_view(fs, "vy", "y", "2026-01-01", {"C1": "basic"})
    fs.refresh_online(now=T("2026-01-04 01:00"))
    return fs


def test_latest_value_status_and_ttl(store):
    now = T("2026-01-04 12:00")
    out = store.get_online_features(["C1", "C2", "C3", "C1"], ["vx:x", "vy:y"], now=now)
    assert out["customer_id"].tolist() == ["C1", "C2", "C3", "C1"]
    # C1's latest row is from 01-03; C2 last appeared on 01-01 (stamped 01-02): exactly 2 days
    # before now would still be ok, here it is 2.5 days old, so expired -> null
    assert out["x"].tolist()[0] == 3 and out["x"].tolist()[3] == 3
    assert out["vx__status"].tolist() == ["ok", "expired", "missing", "ok"]
    assert pd.isna(out["x"].iloc[1]) and pd.isna(out["x"].iloc[2])
    assert out["vx__feature_timestamp"].iloc[0] == T("2026-01-04")
    assert out["vx__feature_timestamp"].iloc[1] == T("2026-01-02")
    assert out["vy__status"].tolist() == ["ok", "missing", "missing", "ok"]  # no TTL on vy
    assert out["y"].iloc[0] == "basic"

    at_ttl = store.get_online_features(["C2"], ["vx:x"], now=T("2026-01-04 00:00"))
    assert at_ttl["vx__status"].tolist() == ["ok"] and at_ttl["x"].tolist() == [7]
    past = store.get_online_features(["C2"], ["vx:x"], now=T("2026-01-04 00:00:00.000001"))
    assert past["vx__status"].tolist() == ["expired"]


def test_single_lookup_reports_freshness(store):
    res = store.online_store().lookup("C1", {"vx": ["x"]}, now=T("2026-01-04 02:00"))
    assert res["vx"]["status"] == "ok" and res["vx"]["values"] == {"x": 3}
    assert res["vx"]["refreshed_at"] == T("2026-01-04 01:00").to_pydatetime()


def test_reader_follows_refresh(store):
    reader = store.online_store()
    assert reader.lookup("C1", {"vx": ["x"]}, now=T("2026-01-04"))["vx"]["values"] == {"x": 3}
    write_view(store, "vx", "x", "2026-01-04", {"C1": 4})
    store.refresh_online()
    assert reader.lookup("C1", {"vx": ["x"]}, now=T("2026-01-05"))["vx"]["values"] == {"x": 4}


def test_missing_store_reads_as_missing(tmp_path):
    fs = FeatureStore(tmp_path, views=[X])
    out = fs.get_online_features(["C1"], now=T("2026-01-01"))
    assert out["vx__status"].tolist() == ["missing"]


def test_atomic_refresh_under_concurrent_reads(tmp_path):
    """A reader hammering the store while refreshes swap it never sees a mix of two refreshes."""
    fs = FeatureStore(tmp_path, views=[X, Y])
    ids = [f"C{i}" for i in range(200)]
    stop = threading.Event()
    seen: set[int] = set()
    errors: list[str] = []

    def publish(k: int) -> None:
        write_view(fs, "vx", "x", "2026-01-01", dict.fromkeys(ids, k))
        write_view(fs, "vy", "y", "2026-01-01", dict.fromkeys(ids, f"s{k}"))
        fs.refresh_online(now=T("2026-01-02"))

    def reader() -> None:
        store = OnlineStore(fs.paths, [X, Y])
        while not stop.is_set():
            res = store.lookup_many(ids, {"vx": ["x"], "vy": ["y"]}, now=T("2026-01-02"))
            xs = {r["vx"]["values"]["x"] for r in res}
            ys = {r["vy"]["values"]["y"] for r in res}
            statuses = {r[v]["status"] for r in res for v in ("vx", "vy")}
            if statuses != {"ok"} or len(xs) != 1 or ys != {f"s{next(iter(xs))}"}:
                errors.append(f"mixed read: {statuses} {sorted(map(str, xs))[:3]} {sorted(ys)[:3]}")
                return
            seen.add(next(iter(xs)))
        store.close()

    publish(0)
    thread = threading.Thread(target=reader)
    thread.start()
    for k in range(1, 11):
        publish(k)
    stop.set()
    thread.join(timeout=30)
    assert not errors, errors[0]
    assert len(seen) > 1  # the reader did observe several refreshes
