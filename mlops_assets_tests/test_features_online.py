"""Online store: each view's newest values per entity, statuses judged at the request's time, atomic refresh."""

from __future__ import annotations

import random
import threading
import time
from datetime import datetime

import pandas as pd
import pyarrow as pa
import pytest

from mlops_assets.features import online
from mlops_assets.features.layout import layouts
from mlops_assets.features.online import OnlineStore
from mlops_assets.features.store import FeatureStore
from mlops_assets.project import Project
from mlops_assets_tests.conftest import day_range, write_source_days

DAYS = day_range("2026-01-01", "2026-01-03")  # every view's newest feature time: 2026-01-04 00:00


def T(text: str) -> pd.Timestamp:
    return pd.Timestamp(text, tz="UTC")


EVENTS = pd.DataFrame(
    [
        ("e1", "C1", "2026-01-01 10:00", "login", None),
        ("e2", "C1", "2026-01-03 12:00", "purchase", 20.0),
        ("e3", "C2", "2026-01-02 09:00", "support_ticket", None),
    ],
    columns=["event_id", "customer_id", "event_timestamp", "event_type", "amount"],
)
CUSTOMERS = pd.DataFrame(
    [
        ("C1", pd.Timestamp("2025-12-01").date(), "basic", "north", "25-34", "2026-01-01 08:00"),
        ("C3", pd.Timestamp("2026-01-02").date(), "premium", "west", "50+", "2026-01-02 10:00"),
    ],
    columns=["customer_id", "signup_date", "plan", "region", "age_group", "updated_at"],
)
WANTED = ["total_purchases_7d", "logins_7d", "tickets_7d", "plan"]
VIEWS = ["purchase_activity", "engagement", "support", "customer_profile"]


@pytest.fixture
def store(churn: Project) -> FeatureStore:
    write_source_days(churn, "raw_events", EVENTS, DAYS)
    write_source_days(churn, "customers", CUSTOMERS, DAYS)
    fs = FeatureStore(churn)
    fs.materialize(DAYS)
    fs.refresh_online(now=T("2026-01-04 01:00"))
    return fs


def test_values_and_statuses_at_the_request_time(store):
    ids = ["C1", "C2", "C3", "C9", "C1"]
    out = store.get_online_features(ids, WANTED, now=T("2026-01-05 12:00"))
    assert out["customer_id"].tolist() == ids
    status = {v: out[f"{v}__status"].tolist() for v in VIEWS}
    # an entity with no row in a view is "missing" there, whatever its other views hold
    assert status == {
        "purchase_activity": ["fresh", "missing", "missing", "missing", "fresh"],
        "engagement": ["fresh", "missing", "missing", "missing", "fresh"],  # C1: a login and a purchase
        "support": ["missing", "fresh", "missing", "missing", "missing"],
        "customer_profile": ["fresh", "missing", "fresh", "missing", "fresh"],
    }
    assert out["total_purchases_7d"].tolist()[0] == 1 and out["logins_7d"].tolist()[0] == 1
    assert out["tickets_7d"].tolist()[1] == 1
    assert out["plan"].tolist()[0] == "basic" and out["plan"].tolist()[2] == "premium"
    assert out["plan"].isna().tolist() == [False, True, False, True, False]
    assert out["total_purchases_7d"].isna().tolist() == [False, True, True, True, False]
    assert out["purchase_activity__feature_timestamp"].tolist()[0] == T("2026-01-04")
    assert out["purchase_activity__feature_timestamp"].isna().tolist() == [False, True, True, True, False]


def test_expiry_is_the_ttl_from_the_views_feature_time_to_the_request(store):
    """TTL 2 days on the event views, none on the profile; the feature time is 2026-01-04 00:00."""
    at_ttl = store.get_online_features(["C1"], WANTED, now=T("2026-01-06 00:00"))
    assert at_ttl["engagement__status"].tolist() == ["fresh"] and at_ttl["logins_7d"].tolist() == [1]
    past = store.get_online_features(["C1", "C3", "C9"], WANTED, now=T("2026-01-06 00:00:00.000001"))
    assert past["engagement__status"].tolist() == ["expired", "missing", "missing"]
    assert past["purchase_activity__status"].tolist() == ["expired", "missing", "missing"]
    assert past[["logins_7d", "total_purchases_7d"]].isna().all().all()  # expired: no value is served
    assert past["engagement__feature_timestamp"].tolist()[0] == T("2026-01-04")  # says how old it is
    later = store.get_online_features(["C1", "C3"], ["plan"], now=T("2027-01-01"))
    assert later["customer_profile__status"].tolist() == ["fresh", "fresh"]  # no TTL: never expires
    assert later["plan"].tolist() == ["basic", "premium"]
    # the request's time, not the refresh's: a request at the feature time itself is fresh
    early = store.get_online_features(["C1"], ["logins_7d"], now=T("2026-01-04"))
    assert early["engagement__status"].tolist() == ["fresh"]


def test_single_lookup_reports_feature_time_refresh_time_and_values(store):
    res = store.online_store().lookup(
        "C1", {"engagement": ["logins_7d", "days_since_last_login"]}, now=T("2026-01-05")
    )
    item = res["engagement"]
    assert item["status"] == "fresh"
    assert item["values"] == {"logins_7d": 1, "days_since_last_login": pytest.approx(2 + 14 / 24)}
    assert item["feature_timestamp"] == T("2026-01-04").to_pydatetime()
    assert item["refreshed_at"] == T("2026-01-04 01:00").to_pydatetime()
    gone = store.online_store().lookup("C1", {"engagement": ["logins_7d"]}, now=T("2026-01-07"))
    assert gone["engagement"]["status"] == "expired" and gone["engagement"]["values"] == {"logins_7d": None}
    with pytest.raises(KeyError, match="nope"):
        store.get_online_features(["C1"], ["engagement:nope"])


def test_a_reader_follows_each_refresh(store, churn):
    reader = store.online_store()
    first = reader.read(["C1"], ["purchases_lifetime"], now=T("2026-01-04"))
    assert first["purchases_lifetime"].tolist() == [1]
    days = day_range("2026-01-01", "2026-01-04")
    more = pd.concat(
        [EVENTS, pd.DataFrame([("e4", "C1", "2026-01-04 08:00", "purchase", 5.0)], columns=EVENTS.columns)]
    )
    write_source_days(churn, "raw_events", more, days)
    write_source_days(churn, "customers", CUSTOMERS, days)
    store.materialize(["2026-01-04"])
    store.refresh_online(now=T("2026-01-05 00:30"))
    second = reader.read(["C1"], ["purchases_lifetime"], now=T("2026-01-05"))
    assert second["purchases_lifetime"].tolist() == [2]
    assert second["purchase_activity__feature_timestamp"].tolist() == [T("2026-01-05")]


def test_no_online_store_yet_reads_as_missing(churn):
    out = FeatureStore(churn).get_online_features(["C1"], ["logins_7d", "plan"], now=T("2026-01-01"))
    assert out["engagement__status"].tolist() == ["missing"] and out["customer_profile__status"].tolist() == [
        "missing"
    ]
    assert out["logins_7d"].isna().all() and out["plan"].isna().all()


def _publish(paths, views: dict, k: int, ids: list[str], now: datetime) -> None:
    """One refresh holding value k for every entity in both views."""
    tables = {}
    for name, layout in views.items():
        columns = {"entity": pa.array(ids)}
        for f in layout.feature_names:
            dtype = layout.dtype(f)
            value = f"s{k}" if dtype == "string" else (float(k) if dtype == "float64" else k)
            columns[f] = pa.array([value] * len(ids))
        tables[name] = (now, pa.table(columns))
    online.refresh(views, tables, paths, now)


def test_a_reader_never_sees_half_of_a_refresh(churn):
    """A reader hammering the store while refreshes swap it sees one complete refresh per read."""
    views = {n: v for n, v in layouts(churn.spec).items() if n in ("engagement", "customer_profile")}
    ids = [f"C{i}" for i in range(300)]
    now = T("2026-01-02").to_pydatetime()
    stop = threading.Event()
    seen: set[int] = set()
    errors: list[str] = []

    def reader() -> None:
        store = OnlineStore(churn.paths, churn.spec)
        try:
            while not stop.is_set():
                res = store.lookup_many(
                    ids, {"engagement": ["logins_7d"], "customer_profile": ["plan"]}, now=now
                )
                xs = {r["engagement"]["values"]["logins_7d"] for r in res}
                ys = {r["customer_profile"]["values"]["plan"] for r in res}
                statuses = {r[v]["status"] for r in res for v in ("engagement", "customer_profile")}
                cols = store.read_dict(ids, ["logins_7d", "plan"], now=now)
                if statuses != {"fresh"} or len(xs) != 1 or ys != {f"s{next(iter(xs))}"}:
                    errors.append(f"mixed read: {statuses} {sorted(map(str, xs))[:3]} {sorted(ys)[:3]}")
                    return
                if len(set(cols["logins_7d"])) != 1 or set(cols["plan"]) != {f"s{cols['logins_7d'][0]}"}:
                    errors.append(f"mixed columns: {set(cols['logins_7d'])} {set(cols['plan'])}")
                    return
                seen.add(next(iter(xs)))
        finally:
            store.close()

    def wait_until_seen(k: int) -> None:
        deadline = time.monotonic() + 30
        while k not in seen and not errors and thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.005)

    _publish(churn.paths, views, 0, ids, now)
    thread = threading.Thread(target=reader)
    thread.start()
    wait_until_seen(0)
    for k in range(1, 16):
        _publish(churn.paths, views, k, ids, now)
    wait_until_seen(15)  # the reader follows the swaps to the last refresh
    stop.set()
    thread.join(timeout=60)
    assert not errors, errors[0]
    assert {0, 15} <= seen


def test_many_keys_in_request_order(churn):
    """More keys than one SQL query takes, shuffled, with duplicates and unknown keys."""
    views = {"engagement": layouts(churn.spec)["engagement"]}
    known = [f"K{i:05d}" for i in range(12_000)]
    layout = views["engagement"]
    ft = T("2026-01-02").to_pydatetime()
    table = {"entity": pa.array(known)}
    for f in layout.feature_names:
        table[f] = pa.array(
            [i for i in range(len(known))]
            if layout.dtype(f) == "int64"
            else [i / 4 for i in range(len(known))],
            pa.int64() if layout.dtype(f) == "int64" else pa.float64(),
        )
    online.refresh(views, {"engagement": (ft, pa.table(table))}, churn.paths, ft)
    rng = random.Random(3)
    ids = known + [f"U{i}" for i in range(700)] + rng.sample(known, 300)
    rng.shuffle(ids)
    store = OnlineStore(churn.paths, churn.spec)
    try:
        cols = store.read_dict(ids, ["logins_7d", "days_since_last_login"], now=T("2026-01-03"))
        many = store.lookup_many(ids, {"engagement": ["logins_7d"]}, now=T("2026-01-03"))
    finally:
        store.close()
    assert cols["customer_id"] == ids
    want = [int(e[1:]) if e.startswith("K") else None for e in ids]
    assert cols["logins_7d"] == want
    assert cols["days_since_last_login"] == [None if w is None else w / 4 for w in want]
    assert cols["engagement__status"] == ["fresh" if e.startswith("K") else "missing" for e in ids]
    assert [r["engagement"]["values"]["logins_7d"] for r in many] == want
    assert [r["engagement"]["status"] for r in many] == cols["engagement__status"]


@pytest.mark.slow  # the session's small world takes half a minute to build
def test_online_values_equal_the_offline_values_at_the_same_feature_time(small_world):
    """What is served equals what a training row at the newest feature time reads (training/serving skew)."""
    store = FeatureStore(small_world)
    newest = small_world.partition_days()[-1]
    ft = T(newest) + pd.Timedelta(days=1)
    store.refresh_online(now=ft.to_pydatetime())
    ids = [f"C{i:06d}" for i in range(0, 400, 2)] + ["nobody"]  # every other customer, and unknown ones
    served = store.get_online_features(ids, now=ft + pd.Timedelta(hours=1))
    offline = store.features_at(newest, ids)
    features = [c for c in offline.columns if c not in ("customer_id", "event_timestamp") and "__" not in c]
    for view in store.layouts:
        known = offline[f"{view}__feature_timestamp"].notna()
        assert known.any() and (~known).any(), view
        assert (served[f"{view}__status"] == known.map({True: "fresh", False: "missing"})).all(), view
        assert (served.loc[known, f"{view}__feature_timestamp"] == ft).all()
    for name in features:
        view = next(v for v, lay in store.layouts.items() if name in lay.view.features)
        known = offline[f"{view}__feature_timestamp"].notna()
        a, b = served.loc[known, name].tolist(), offline.loc[known, name].tolist()
        assert [None if pd.isna(x) else x for x in a] == [None if pd.isna(x) else x for x in b], name


def test_integer_keys_are_found_and_come_back_as_given(bikes):
    """The bike example's stations have int64 keys: stored as text, looked up and returned as the ints asked for."""
    days = day_range("2026-03-01", "2026-03-02")
    trips = pd.DataFrame(
        [
            ("t1", 7, "2026-03-01 08:00", 12.0, "member", "classic"),
            ("t2", 7, "2026-03-02 09:00", 30.0, "casual", "electric"),
            ("t3", 12, "2026-03-02 10:00", 5.0, "member", "classic"),
        ],
        columns=["trip_id", "station_id", "started_at", "duration_min", "rider_type", "bike_type"],
    )
    stations = pd.DataFrame(
        [(7, 20, "north", pd.Timestamp("2025-01-01").date(), "2026-03-01 00:00")],
        columns=["station_id", "capacity", "district", "opened_on", "exported_at"],
    )
    write_source_days(bikes, "trips", trips, days)
    write_source_days(bikes, "stations", stations, days)
    fs = FeatureStore(bikes)
    fs.materialize(days)
    fs.refresh_online(now=T("2026-03-03 00:10"))
    now = T("2026-03-03 06:00")
    out = fs.get_online_features([7, 12, 99, 7], ["trips_lifetime", "capacity"], now=now)
    assert out["station_id"].tolist() == [7, 12, 99, 7]
    assert out["station_usage__status"].tolist() == ["fresh", "fresh", "missing", "fresh"]
    assert out["station_profile__status"].tolist() == ["fresh", "missing", "missing", "fresh"]
    assert out["trips_lifetime"].tolist()[:2] == [2, 1] and out["capacity"].tolist()[0] == 20
    many = fs.online_store().lookup_many([7, 99, 12], {"station_usage": ["trips_7d"]}, now=now)
    assert [m["station_usage"]["status"] for m in many] == ["fresh", "missing", "fresh"]
    assert [m["station_usage"]["values"]["trips_7d"] for m in many] == [2, None, 1]
    offline = fs.features_at(days[-1], [7, 12, 99], ["trips_lifetime", "capacity"])
    assert offline["station_id"].tolist() == [7, 12, 99] and offline["trips_lifetime"].tolist() == [2, 1, 0]
