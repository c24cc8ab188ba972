"""The generic point-in-time (ASOF) join against a brute-force reference, and the leakage check."""

from __future__ import annotations

import tempfile
from datetime import timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from mlops_assets.features.pit import FeatureSource, assert_no_leakage, point_in_time_join

BASE = pd.Timestamp("2026-03-01", tz="UTC")
HOUR_US = 3_600_000_000
UTC_US = pa.timestamp("us", tz="UTC")
# feature files share one schema (a file whose keys are all null is still a string column)
FEATURE_SCHEMA = pa.schema(
    [("user_id", pa.string()), ("feature_timestamp", UTC_US), ("created", UTC_US), ("value", pa.float64())]
)


def _ts(us: int | None) -> pd.Timestamp:
    return pd.NaT if us is None else BASE + pd.Timedelta(microseconds=us)


def brute_force(entity_rows, feature_rows, ttl_us, use_created):
    """Reference: scan every feature row for every entity row (pure Python).

    Per entity row: (found, value, feature time) of the qualifying row with the greatest
    (feature time, created when used, position in the source).
    """
    out = []
    for key, t in entity_rows:
        best = None
        for pos, (fkey, ft, created, value) in enumerate(feature_rows):
            if t is None or fkey is None or ft is None:
                continue
            if fkey != key or ft > t or (ttl_us is not None and ft < t - ttl_us):
                continue
            rank = (ft, created if use_created else 0, pos)
            if best is None or rank > best[0]:
                best = (rank, value, ft)
        out.append((False, None, None) if best is None else (True, best[1], best[2]))
    return out


feature_row = st.tuples(
    st.sampled_from(["a", "b", None]),  # a row without an entity is never joined
    st.one_of(st.none(), st.integers(0, 4).map(lambda h: h * HOUR_US)),  # few times: many ties; None: ignored
    st.integers(0, 2),  # created rank: ties too
    st.booleans(),  # the feature value is null (a null value is still the row's value)
)
entity_row = st.tuples(
    st.sampled_from(["a", "b", "d"]),  # "d" never has history
    st.one_of(
        st.none(),  # a request without a time joins nothing but is kept
        st.tuples(st.integers(-1, 8), st.sampled_from([0, 0, 1, -1])).map(lambda p: p[0] * HOUR_US + p[1]),
    ),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    features=st.lists(feature_row, max_size=25),
    entities=st.lists(entity_row, min_size=0, max_size=25),
    ttl_hours=st.sampled_from([None, 0, 1, 3]),
    use_created=st.booleans(),
    as_files=st.integers(0, 3),  # 0: a DataFrame source; n: split into n Parquet files
)
# explicit tie cases (also found by the search, but not on every run)
@example(
    features=[("a", 0, 1, False), ("a", 0, 0, False), ("a", 0, 0, False)],
    entities=[("a", 0)],
    ttl_hours=None,
    use_created=False,
    as_files=0,
)
@example(
    features=[("a", 0, 1, False), ("a", 0, 0, False), ("a", 0, 0, False)],
    entities=[("a", 0)],
    ttl_hours=None,
    use_created=True,
    as_files=0,
)
@example(
    features=[("a", 0, 0, False), ("a", 0, 0, False), ("a", 0, 0, False)],
    entities=[("a", 1)],
    ttl_hours=1,
    use_created=False,
    as_files=2,
)
# the latest row's value is null: the join returns null with that row's time, not an older value
@example(
    features=[("a", 0, 0, False), ("a", HOUR_US, 0, True)],
    entities=[("a", 2 * HOUR_US)],
    ttl_hours=None,
    use_created=False,
    as_files=0,
)
# a file holding only rows without an entity, beside one with keys
@example(
    features=[(None, None, 0, False), ("a", 0, 0, False)],
    entities=[("a", HOUR_US)],
    ttl_hours=None,
    use_created=False,
    as_files=2,
)
def test_pit_join_matches_brute_force(features, entities, ttl_hours, use_created, as_files):
    feature_rows = [(k, t, c, None if null else float(i)) for i, (k, t, c, null) in enumerate(features)]
    # duplicate the first entity rows so identical requests appear several times
    entity_rows = entities + entities[:3]
    ttl = None if ttl_hours is None else timedelta(hours=ttl_hours)
    ttl_us = None if ttl_hours is None else ttl_hours * HOUR_US
    entity_df = pd.DataFrame(
        {
            "user_id": pd.Series([k for k, _ in entity_rows], dtype="str"),
            "event_timestamp": pd.Series([_ts(t) for _, t in entity_rows], dtype="datetime64[us, UTC]"),
            "request_id": np.arange(len(entity_rows)) * 7,
        }
    ).set_axis(np.arange(len(entity_rows))[::-1])  # a non-default index must not reorder rows
    fdf = pd.DataFrame(
        {
            "user_id": pd.Series([r[0] for r in feature_rows], dtype="object"),
            "feature_timestamp": pd.Series([_ts(r[1]) for r in feature_rows], dtype="datetime64[us, UTC]"),
            "created": pd.Series([_ts(r[2]) for r in feature_rows], dtype="datetime64[us, UTC]"),
            "value": pd.Series([r[3] for r in feature_rows], dtype="float64"),
        }
    )
    created = "created" if use_created else None
    with tempfile.TemporaryDirectory() as tmp:
        if as_files:
            data = []
            for n, chunk in enumerate(np.array_split(np.arange(len(fdf)), as_files)):
                path = Path(tmp) / f"date=2026-03-0{n + 1}" / "part-0.parquet"
                path.parent.mkdir()
                pq.write_table(
                    pa.Table.from_pandas(fdf.iloc[chunk], schema=FEATURE_SCHEMA, preserve_index=False), path
                )
                data.append(str(path))
        else:
            data = fdf
        source = FeatureSource("fv", data, ["value"], ttl=ttl, entity="user_id", created=created)
        result = point_in_time_join(entity_df, [source], entity="user_id")

    expected = brute_force(entity_rows, feature_rows, ttl_us, use_created)
    assert len(result) == len(entity_rows)
    assert list(result.columns) == [
        "user_id",
        "event_timestamp",
        "request_id",
        "value",
        "fv__feature_timestamp",
    ]
    assert result["request_id"].tolist() == entity_df["request_id"].tolist()
    assert result.index.tolist() == list(range(len(entity_rows)))
    for pos, (found, value, ft) in enumerate(expected):
        got_value = result["value"].iloc[pos]
        got_ts = result["fv__feature_timestamp"].iloc[pos]
        if not found:
            assert pd.isna(got_value) and pd.isna(got_ts), (pos, entity_rows[pos], got_value)
            continue
        assert got_ts == _ts(ft), (pos, entity_rows[pos], got_ts, ft)
        if value is None:
            assert pd.isna(got_value), (pos, entity_rows[pos], got_value)
        else:
            assert got_value == value, (pos, entity_rows[pos], got_value, value)
    labelled = result.rename(columns={"event_timestamp": "label_timestamp"})
    assert assert_no_leakage(labelled, "label_timestamp", ttls={"fv": ttl}) == []


def test_two_views_ttl_edges_and_no_history():
    t0 = pd.Timestamp("2026-01-10", tz="UTC")
    entity_df = pd.DataFrame(
        {
            "entity_id": ["a", "a", "a", "z"],
            "event_timestamp": [
                t0 + pd.Timedelta(days=7),
                t0 + pd.Timedelta(days=7, microseconds=1),
                t0 - pd.Timedelta(microseconds=1),
                t0,
            ],
        }
    )
    v1 = pd.DataFrame({"entity_id": ["a"], "feature_timestamp": [t0], "x": [1.5]})
    v2 = pd.DataFrame({"entity_id": ["a"], "feature_timestamp": [t0], "y": ["p"]})
    out = point_in_time_join(
        entity_df,
        [
            FeatureSource("v1", v1, ["x"], ttl=timedelta(days=7)),
            FeatureSource("v2", v2, ["y"], ttl=None),
        ],
    )
    # exactly at the TTL: kept; one microsecond past: null; before the first row: null; unknown: null
    assert out["x"].tolist()[0] == 1.5
    assert out["x"].isna().tolist() == [False, True, True, True]
    assert out["v1__feature_timestamp"].isna().tolist() == [False, True, True, True]
    assert out["y"].tolist()[:2] == ["p", "p"]
    assert out["y"].isna().tolist() == [False, False, True, True]
    assert out["v2__feature_timestamp"].tolist()[:2] == [t0, t0]
    assert list(out.columns) == [
        "entity_id",
        "event_timestamp",
        "x",
        "v1__feature_timestamp",
        "y",
        "v2__feature_timestamp",
    ]


def test_integer_keys_renamed_outputs_and_an_empty_source():
    t0 = pd.Timestamp("2026-01-10", tz="UTC")
    entity_df = pd.DataFrame(
        {"station_id": [7, 8, 7], "event_timestamp": [t0, t0, t0 - pd.Timedelta(hours=1)]}
    )
    fdf = pd.DataFrame(
        {"station_id": [7, 8], "feature_timestamp": [t0 - pd.Timedelta(minutes=30)] * 2, "x": [1, 2]}
    )
    out = point_in_time_join(
        entity_df,
        [
            FeatureSource("v", fdf, ["x"], entity="station_id", output_names=["v_x"]),
            FeatureSource("never", [], ["z"], entity="station_id"),  # no stored files yet
        ],
        entity="station_id",
    )
    assert list(out.columns) == [
        "station_id",
        "event_timestamp",
        "v_x",
        "v__feature_timestamp",
        "z",
        "never__feature_timestamp",
    ]
    assert out["v_x"].tolist()[:2] == [1, 2] and pd.isna(out["v_x"].iloc[2])
    assert out["z"].isna().all() and out["never__feature_timestamp"].isna().all()


def test_colliding_output_names_are_refused():
    t0 = pd.Timestamp("2026-01-10", tz="UTC")
    entity_df = pd.DataFrame({"entity_id": ["a"], "event_timestamp": [t0], "x": [0]})
    fdf = pd.DataFrame({"entity_id": ["a"], "feature_timestamp": [t0], "x": [1]})
    with pytest.raises(ValueError, match=r"collide: \['x'\]"):
        point_in_time_join(entity_df, [FeatureSource("v", fdf, ["x"])])
    with pytest.raises(ValueError, match=r"collide: \['x'\]"):
        point_in_time_join(
            entity_df.drop(columns="x"), [FeatureSource("v", fdf, ["x"]), FeatureSource("w", fdf, ["x"])]
        )


def test_naive_and_sub_microsecond_timestamps_are_rejected():
    entity_df = pd.DataFrame({"entity_id": ["a"], "event_timestamp": [pd.Timestamp("2026-01-01")]})
    fdf = pd.DataFrame(
        {"entity_id": ["a"], "feature_timestamp": [pd.Timestamp("2026-01-01", tz="UTC")], "x": [1]}
    )
    with pytest.raises(ValueError, match="UTC-aware"):
        point_in_time_join(entity_df, [FeatureSource("v", fdf, ["x"])])
    precise = pd.DataFrame(
        {"entity_id": ["a"], "event_timestamp": [pd.Timestamp("2026-01-01 00:00:00.000000001", tz="UTC")]}
    )
    with pytest.raises(ValueError, match="sub-microsecond"):
        point_in_time_join(precise, [FeatureSource("v", fdf, ["x"])])
    with pytest.raises(ValueError, match="missing"):
        point_in_time_join(entity_df.rename(columns={"entity_id": "id"}), [FeatureSource("v", fdf, ["x"])])


def _leaky_join(entity_df: pd.DataFrame, fdf: pd.DataFrame) -> pd.DataFrame:
    """A wrong join that takes each entity's latest feature row regardless of time."""
    latest = fdf.sort_values("feature_timestamp").groupby("entity_id").tail(1)
    latest = latest.rename(columns={"feature_timestamp": "fv__feature_timestamp"})
    return entity_df.merge(latest, on="entity_id", how="left")


def test_leakage_check_catches_a_leaky_join_and_passes_the_correct_one():
    t0 = pd.Timestamp("2026-01-10", tz="UTC")
    labels = pd.DataFrame({"entity_id": ["a", "b"], "label_timestamp": [t0, t0]})
    fdf = pd.DataFrame(
        {
            "entity_id": ["a", "a", "b"],
            "feature_timestamp": [t0 - pd.Timedelta(days=1), t0 + pd.Timedelta(days=1), t0],
            "x": [1.0, 2.0, 3.0],
        }
    )
    leaky = _leaky_join(labels, fdf)
    violations = assert_no_leakage(leaky, "label_timestamp")
    assert [(v["row"], v["view"], v["kind"]) for v in violations] == [(0, "fv", "feature_after_label")]
    assert violations[0]["feature_timestamp"] == t0 + pd.Timedelta(days=1)
    assert violations[0]["label_time"] == t0

    correct = point_in_time_join(labels, [FeatureSource("fv", fdf, ["x"])], event_timestamp="label_timestamp")
    assert assert_no_leakage(correct, "label_timestamp") == []
    assert correct["x"].tolist() == [1.0, 3.0]


def test_leakage_check_flags_rows_older_than_the_ttl_only_when_given_one():
    t0 = pd.Timestamp("2026-01-10", tz="UTC")
    frame = pd.DataFrame(
        {
            "label_timestamp": [t0, t0, t0],
            "fv__feature_timestamp": [
                t0 - pd.Timedelta(days=2),
                t0 - pd.Timedelta(days=2, seconds=1),
                pd.NaT,
            ],
        }
    )
    assert assert_no_leakage(frame, "label_timestamp") == []
    old = assert_no_leakage(frame, "label_timestamp", ttls={"fv": timedelta(days=2)})
    assert [(v["row"], v["kind"]) for v in old] == [
        (1, "feature_older_than_ttl")
    ]  # a null row is no violation
    assert assert_no_leakage(frame, "label_timestamp", ttls={"other": timedelta(days=1)}) == []
    with pytest.raises(ValueError, match="label_timestamp"):
        assert_no_leakage(frame.drop(columns="label_timestamp"), "label_timestamp")
