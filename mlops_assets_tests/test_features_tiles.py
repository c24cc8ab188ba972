"""Tiled windowed and lifetime aggregates equal a brute-force recomputation from the raw records."""

from __future__ import annotations

import math
from datetime import date, timedelta

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet  # noqa: F401
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mlops_assets.features.store import FeatureStore
from mlops_assets.features.tiles import stored_days
from mlops_assets.project import Project
from mlops_assets.spec.model import Column, Entity, Feature, FeatureView, Partitions, ProjectSpec, Source
from mlops_assets.storage import write_partition

START = date(2026, 3, 1)
DAY_US = 86_400_000_000
PAGES = ("home", "cart", "search", "help")

FEATURES = {
    "views_3d": Feature(agg="count", window=3),
    "views_life": Feature(agg="count"),
    "carts_7d": Feature(agg="count", window=7, filter="kind = 'add_to_cart'"),
    "spend_3d": Feature(agg="sum", column="price", window=3),
    "spend_life": Feature(agg="sum", column="price"),
    "avg_price_7d": Feature(agg="mean", column="price", window=7),
    "min_price_7d": Feature(agg="min", column="price", window=7),
    "max_price_life": Feature(agg="max", column="price"),
    "pages_3d": Feature(agg="distinct_count", column="page", window=3),
    "pages_life": Feature(agg="distinct_count", column="page"),
    "last_page": Feature(agg="latest", column="page"),
    "last_page_2d": Feature(agg="latest", column="page", window=2),
    "since_last_cart": Feature(agg="days_since_last", window=7, filter="kind = 'add_to_cart'"),
    "since_first": Feature(agg="days_since_first"),
    "since_first_7d": Feature(agg="days_since_first", window=7),
    "max_price_3d": Feature(agg="max", column="price", window=3),
}


def clickstream_spec(days: int) -> ProjectSpec:
    return ProjectSpec(
        name="clicks",
        partitions=Partitions(start=START, end=START + timedelta(days=days - 1)),
        entities={"user": Entity(join_key="user_id", dtype="string")},
        sources={
            "clicks": Source(
                kind="events",
                timestamp="ts",
                unique_key=("click_id",),
                columns={
                    "click_id": Column(type="string"),
                    "user_id": Column(type="string"),
                    "ts": Column(type="timestamp"),
                    "kind": Column(type="string"),
                    "page": Column(type="string", nullable=True),
                    "price": Column(type="float64", nullable=True),
                },
            )
        },
        feature_views={
            "activity": FeatureView(entity="user", source="clicks", filter="kind <> 'bot'", features=FEATURES)
        },
    )


SCHEMA = pa.schema(
    [
        ("click_id", pa.string()),
        ("user_id", pa.string()),
        ("ts", pa.timestamp("us", tz="UTC")),
        ("kind", pa.string()),
        ("page", pa.string()),
        ("price", pa.float64()),
    ]
)

record = st.tuples(
    st.integers(0, 5),  # user (u0 .. u5; high numbers appear late by construction below)
    st.integers(0, 13),  # day
    st.integers(0, DAY_US - 1),  # time of day (us)
    st.sampled_from(["page_view", "page_view", "add_to_cart", "bot"]),
    st.one_of(st.none(), st.sampled_from(PAGES)),
    # prices: cents, or any double in [1e-6, 1e6]: every sum of up to 2**10 of them spans < 106 bits, the
    # domain in which double-double sums are exact (a 1e-179 next to 1e5 is not: see features/exact.py)
    st.one_of(st.none(), st.just(0.0), st.integers(0, 100_000).map(lambda c: c / 100), st.floats(1e-6, 1e6)),
)


def write_source(project: Project, records: pd.DataFrame, days: int) -> None:
    for d in range(days):
        day = (START + timedelta(days=d)).isoformat()
        part = records[records["day"] == d].sort_values(["ts", "click_id"], kind="stable")
        table = pa.Table.from_pandas(part[SCHEMA.names], preserve_index=False, schema=SCHEMA)
        write_partition(table, project.paths.partition_dir("clicks", day))


def frame_of(rows: list[tuple]) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=["user", "day", "tod", "kind", "page", "price"])
    # users with a higher number first appear later: user k's records start on day 2k
    frame = frame[frame["day"] >= 2 * frame["user"]].reset_index(drop=True)
    frame["user_id"] = "u" + frame["user"].astype(str)
    us = (pd.Timestamp(START, tz="UTC").value // 1000) + frame["day"] * DAY_US + frame["tod"]
    frame["ts"] = pd.to_datetime(us, unit="us", utc=True)
    frame["click_id"] = [f"c{i:05d}" for i in range(len(frame))]
    return frame


def brute_force(records: pd.DataFrame, user: str, feature_day: int) -> dict:
    """Each feature computed directly from the raw records (the definition, no tiles)."""
    ft = (pd.Timestamp(START, tz="UTC").value // 1000) + feature_day * DAY_US
    mine = records[(records["user_id"] == user) & (records["kind"] != "bot")]
    mine = mine.sort_values(["day", "ts", "click_id"], kind="stable")  # partition order: ts, then unique key
    out = {}

    def window(days: int | None) -> pd.DataFrame:
        lo = -(10**18) if days is None else feature_day - days
        return mine[(mine["day"] >= lo) & (mine["day"] < feature_day)]

    def ts_us(frame):
        return frame["ts"].astype("datetime64[us, UTC]").astype("int64").to_numpy()

    out["views_3d"] = len(window(3))
    out["views_life"] = len(window(None))
    out["carts_7d"] = int((window(7)["kind"] == "add_to_cart").sum())
    for name, days in (("spend_3d", 3), ("spend_life", None)):
        out[name] = math.fsum(window(days)["price"].dropna().tolist())
    prices = window(7)["price"].dropna().tolist()
    out["avg_price_7d"] = math.fsum(prices) / len(prices) if prices else None
    out["min_price_7d"] = min(prices) if prices else None
    life = window(None)["price"].dropna().tolist()
    out["max_price_life"] = max(life) if life else None
    out["pages_3d"] = window(3)["page"].dropna().nunique()
    out["pages_life"] = window(None)["page"].dropna().nunique()
    for name, days in (("last_page", None), ("last_page_2d", 2)):
        pages = window(days)["page"].dropna()
        out[name] = pages.iloc[-1] if len(pages) else None
    carts = window(7)[window(7)["kind"] == "add_to_cart"]
    out["since_last_cart"] = (ft - int(ts_us(carts).max())) / DAY_US if len(carts) else None
    everything = window(None)
    out["since_first"] = (ft - int(ts_us(everything).min())) / DAY_US if len(everything) else None
    week = window(7)
    out["since_first_7d"] = (ft - int(ts_us(week).min())) / DAY_US if len(week) else None
    recent = window(3)["price"].dropna().tolist()
    out["max_price_3d"] = max(recent) if recent else None
    return out


def _same(a, b) -> bool:
    if a is None or (isinstance(a, float) and math.isnan(a)):
        return b is None or (isinstance(b, float) and math.isnan(b))
    if isinstance(a, float) or isinstance(b, float):
        return float(a) == float(b)  # bit for bit (no tolerance)
    return a == b


def clickstream_world(root, rows: list[tuple], days: int) -> tuple[Project, pd.DataFrame, FeatureStore]:
    """A clickstream project of ``days`` days whose source holds the generated records."""
    project = Project.from_spec(clickstream_spec(days), root)
    records = frame_of(rows)
    write_source(project, records, days)
    return project, records, FeatureStore(project)


def _assert_row(got: pd.DataFrame, i: int, expected: dict, where: str) -> None:
    """Row ``i`` of a read has the brute force's value for every feature, bit for bit."""
    for name, value in expected.items():
        actual = got.at[i, name]
        actual = None if actual is pd.NA or (isinstance(actual, float) and math.isnan(actual)) else actual
        if isinstance(actual, np.generic):
            actual = actual.item()
        assert _same(value, actual), f"{name} of {where}: {actual!r} != {value!r}"


def check_dense_read(project: Project, records: pd.DataFrame, day: str, *, from_states: bool) -> None:
    """``features_at(day)`` for every user (and one never seen) equals the brute force at the next midnight.

    ``from_states``: the read must be served by the view's lifetime and window states alone (no tile read).
    """
    store = FeatureStore(project)
    if from_states:

        def no_tiles(*args, **kwargs):
            raise AssertionError(f"features_at({day}) read tiles although the states are current")

        store._read_days = no_tiles
    users = sorted(records["user_id"].unique().tolist()) + ["u_never_seen"]
    got = store.features_at(day, users)
    feature_day = (date.fromisoformat(day) - START).days + 1
    for i, user in enumerate(users):
        _assert_row(got, i, brute_force(records, user, feature_day), f"{user} as of {day}")


def check_against_brute_force(store: FeatureStore, records: pd.DataFrame, days: int) -> None:
    users = sorted(records["user_id"].unique().tolist()) + ["u_never_seen"]
    queries = []
    for user in users:
        for feature_day in range(0, days + 1):
            # times exactly at midnight (a tile edge) and inside the day
            base = pd.Timestamp(START, tz="UTC") + pd.Timedelta(days=feature_day)
            queries.append((user, base, feature_day))
            if feature_day < days:
                queries.append((user, base + pd.Timedelta(hours=13), feature_day))
    entity_df = pd.DataFrame({"user_id": [q[0] for q in queries], "event_timestamp": [q[1] for q in queries]})
    got = store.get_historical_features(entity_df)
    for i, (user, _, feature_day) in enumerate(queries):
        _assert_row(got, i, brute_force(records, user, feature_day), f"{user} at feature day {feature_day}")


@pytest.mark.slow
@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(record, min_size=0, max_size=120))
def test_tiled_aggregates_equal_brute_force(tmp_path_factory, rows):
    days = 14
    project, records, store = clickstream_world(tmp_path_factory.mktemp("tiles"), rows, days)
    all_days = project.partition_days()
    store.materialize(all_days)
    check_against_brute_force(store, records, days)
    # a dense read at the newest day uses the view's state instead of every tile: same values
    newest = all_days[-1]
    users = sorted(records["user_id"].unique().tolist())
    if users:
        dense = FeatureStore(project).features_at(newest, users)
        historical = store.get_historical_features(
            pd.DataFrame(
                {"user_id": users, "event_timestamp": pd.Timestamp(START, tz="UTC") + pd.Timedelta(days=days)}
            )
        )
        for name in FEATURES:
            for a, b in zip(dense[name].tolist(), historical[name].tolist(), strict=True):
                assert _same(a, b), name


@pytest.mark.slow
@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(record, min_size=1, max_size=80))
def test_window_states_serve_each_next_day_exactly(tmp_path_factory, rows):
    """Materialized one day at a time, every day's dense read comes from the states alone, bit for bit."""
    project, records, store = clickstream_world(tmp_path_factory.mktemp("windows"), rows, 12)
    for day in project.partition_days():
        store.materialize([day])
        check_dense_read(project, records, day, from_states=True)


def test_a_damaged_window_state_is_not_used(tmp_path):
    days = 9
    project = Project.from_spec(clickstream_spec(days), tmp_path)
    rng = np.random.default_rng(11)
    rows = [
        (int(rng.integers(0, 4)), int(d), int(rng.integers(0, DAY_US)), "page_view", "cart", float(d))
        for d in range(9)
        for _ in range(4)
    ]
    records = frame_of(rows)
    write_source(project, records, days)
    all_days = project.partition_days()
    FeatureStore(project).materialize(all_days)
    main = project.paths.warehouse / "_state" / "activity" / "window-7d" / "main.parquet"
    table = pa.parquet.read_table(main)
    pa.parquet.write_table(table.slice(1), main)  # a row lost: the file no longer matches its record
    with pytest.raises(AssertionError, match="read tiles"):
        check_dense_read(project, records, all_days[-1], from_states=True)
    check_dense_read(project, records, all_days[-1], from_states=False)
    # the next day's run rebuilds it from the tiles; the read after it needs no tile again
    longer = Project.from_spec(clickstream_spec(days + 1), tmp_path)
    write_source(longer, records, days + 1)
    FeatureStore(longer).materialize([longer.partition_days()[-1]])
    check_dense_read(longer, records, longer.partition_days()[-1], from_states=True)


def test_rerun_of_a_past_day_and_gaps(tmp_path):
    """Days without data, a day computed out of order, and a re-run of a past day with new records."""
    days = 10
    project = Project.from_spec(clickstream_spec(days), tmp_path)
    rng = np.random.default_rng(5)
    rows = [
        (
            int(rng.integers(0, 3)),
            int(d),
            int(rng.integers(0, DAY_US)),
            "page_view",
            str(rng.choice(PAGES)),
            float(rng.integers(0, 5000)) / 100,
        )
        for d in (0, 1, 1, 4, 4, 4, 8)  # days 2, 3, 5, 6, 7, 9 have no records
        for _ in range(3)
    ]
    records = frame_of(rows)
    write_source(project, records, days)
    store = FeatureStore(project)
    all_days = project.partition_days()
    store.materialize(all_days[5:])  # later days first: the state waits for its gap to close
    store.materialize(all_days[:5])
    assert stored_days(project.paths, "activity") == all_days
    check_against_brute_force(FeatureStore(project), records, days)
    check_dense_read(project, records, all_days[-1], from_states=False)
    # day 4 gets one more record; re-running it changes the later lifetime values accordingly
    extra = frame_of([(0, 4, DAY_US - 1, "add_to_cart", "help", 99.99)])
    extra["click_id"] = "c99999"
    records = pd.concat([records, extra], ignore_index=True)
    write_source(project, records, days)
    FeatureStore(project).materialize([all_days[4]])
    check_against_brute_force(FeatureStore(project), records, days)
    check_dense_read(project, records, all_days[-1], from_states=False)
    dense = FeatureStore(project).features_at(all_days[-1], ["u0"])
    assert dense.at[0, "views_life"] == int(((records["user_id"] == "u0") & (records["kind"] != "bot")).sum())


def test_a_read_needing_days_not_in_the_store_names_them(tmp_path):
    project = Project.from_spec(clickstream_spec(6), tmp_path)
    write_source(project, frame_of([(0, 0, 5, "page_view", "home", 1.0)]), 6)
    store = FeatureStore(project)
    days = project.partition_days()
    store.materialize([days[0], days[1], days[4]])
    entity_df = pd.DataFrame({"user_id": ["u0"], "event_timestamp": [pd.Timestamp(days[5], tz="UTC")]})
    with pytest.raises(
        Exception,
        match=r"activity: 2 day\(s\) needed by this read are not in the offline store \(2026-03-03, 2026-03-04\)",
    ):
        store.get_historical_features(entity_df)


def _random_tiles(layout, day: int, rng: np.random.Generator) -> pa.Table:
    """One day's tiles of a few users, each measure's parts consistent with its count."""
    users = sorted(rng.choice([f"u{i}" for i in range(8)], size=int(rng.integers(0, 6)), replace=False))
    base = (pd.Timestamp(START, tz="UTC").value // 1000) + day * DAY_US
    cols: dict[str, list] = {name: [] for name in layout.schema.names}
    for user in users:
        cols["user_id"].append(user)
        cols["day"].append(date(1970, 1, 1) + timedelta(days=day))
        for m in layout.measures:
            n = int(rng.integers(0, 4))
            cols[m.col("n")].append(n)
            lo_ts, hi_ts = sorted(int(x) for x in rng.integers(0, DAY_US, 2))
            values = sorted(int(x) / 100 for x in rng.integers(0, 10_000, max(n, 1)))
            for part in m.parts:
                if part == "sum":
                    cols[m.col("sum_hi")].append(math.fsum(values) if n else 0.0)
                    cols[m.col("sum_lo")].append(0.0)
                elif part in ("min", "max"):
                    cols[m.col(part)].append((values[0] if part == "min" else values[-1]) if n else None)
                elif part in ("first", "last"):
                    ts = base + (lo_ts if part == "first" else hi_ts)
                    cols[m.col(f"{part}_ts")].append(pd.Timestamp(ts, unit="us", tz="UTC") if n else None)
                elif part == "value":
                    cols[m.col("value")].append(str(rng.choice(PAGES)) if n else None)
                    cols[m.col("value_ts")].append(
                        pd.Timestamp(base + hi_ts, unit="us", tz="UTC") if n else None
                    )
                elif part == "distinct":
                    pages = sorted(set(rng.choice(PAGES, size=n).tolist())) if n else []
                    cols[m.col("distinct")].append(pages)
    return pa.Table.from_arrays([pa.array(cols[f.name], f.type) for f in layout.schema], schema=layout.schema)


def test_window_state_steps_equal_a_fold_of_the_tiles_inside_the_window():
    """Each day's window state (add the new day, take out the one leaving) equals folding the window's tiles afresh."""
    from mlops_assets.features import windows
    from mlops_assets.features.exact import to_float
    from mlops_assets.features.layout import layouts
    from mlops_assets.features.tiles import fold_event_state

    layout = layouts(clickstream_spec(60))["activity"]
    rng = np.random.default_rng(23)
    tiles = [_random_tiles(layout, d, rng) for d in range(60)]
    assert layout.windows == (2, 3, 7)
    for window in layout.windows:
        kept = layout.window_parts(window)
        state = windows.empty(layout, window, -1)
        for d in range(60):
            old = tiles[d - window] if d >= window else layout.schema.empty_table()
            state = windows.advance(layout, state, tiles[d], old)
            expected = layout.schema.empty_table()
            for x in range(max(0, d - window + 1), d + 1):
                expected = fold_event_state(layout, expected, tiles[x])
            got = state.main
            assert got.column("user_id").to_pylist() == expected.column("user_id").to_pylist(), (window, d)
            for m in layout.measures:
                assert got.column(m.col("n")).to_pylist() == expected.column(m.col("n")).to_pylist()
                for part in kept.get(m.index, ()):
                    if part == "sum":
                        a = to_float(*(got.column(m.col(c)).to_numpy() for c in ("sum_hi", "sum_lo")))
                        b = to_float(*(expected.column(m.col(c)).to_numpy() for c in ("sum_hi", "sum_lo")))
                        assert a.tolist() == b.tolist(), (window, d, m.prefix)
                        continue
                    names = {"first": ["first_ts"], "last": ["last_ts"], "value": ["value", "value_ts"]}
                    for c in names.get(part, [part]):
                        a, b = got.column(m.col(c)).to_pylist(), expected.column(m.col(c)).to_pylist()
                        if part == "distinct":  # no value: an empty list or null, both a count of 0
                            a, b = [x or [] for x in a], [x or [] for x in b]
                        assert a == b, f"window {window}, day {d}: {m.col(c)}"
