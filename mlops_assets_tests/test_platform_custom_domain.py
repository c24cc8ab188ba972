"""A domain that ships nowhere in the repository, end to end through the Dagster definitions built from its spec.

A user writes a spec for a ``user_id`` clickstream (``page_view`` / ``add_to_cart`` events, a lifetime feature,
a 180-day window) and drops landing files; ingestion, feature views, the training set and the online store run
with no change to the package. An open categorical column keeps values it has never seen; a closed one
quarantines them with the column named.
"""

from __future__ import annotations

import math
import textwrap
from datetime import date, timedelta

import dagster as dg
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from mlops_assets.component import build_definitions
from mlops_assets.features.store import FeatureStore
from mlops_assets.project import Project
from mlops_assets_tests.conftest import materialize_range, write_parquet

SPEC = """\
name: webshop
partitions: {start: 2025-06-01, end: data}
entities:
  visitor: {join_key: user_id, dtype: string}
sources:
  clickstream:
    kind: events
    landing: clicks
    timestamp: ts
    unique_key: [click_id]
    pattern: "clicks_*.parquet"
    columns:
      click_id: string
      user_id: string
      ts: timestamp
      event_type: {type: string, values: [page_view, add_to_cart], closed: true}
      device: {type: string, values: [desktop, mobile]}
      price: {type: float64, nullable: true, min: 0}
  conversions:
    kind: labels
    landing: conversions
    timestamp: observed_at
    columns: {user_id: string, observed_at: timestamp, converted: int64}
feature_views:
  browsing:
    entity: visitor
    source: clickstream
    ttl: 3d
    features:
      views_180d: {agg: count, window: 180d, filter: "event_type = 'page_view'"}
      views_lifetime: {agg: count, window: lifetime, filter: "event_type = 'page_view'"}
      carts_7d: {agg: count, window: 7d, filter: "event_type = 'add_to_cart'"}
      cart_value_lifetime: {agg: sum, column: price, filter: "event_type = 'add_to_cart'"}
      devices_lifetime: {agg: distinct_count, column: device}
      last_device: {agg: latest, column: device}
      days_since_last_visit: {agg: days_since_last}
target: {source: conversions, column: converted, task: binary_classification}
model: {name: webshop-conversion}
"""

START = date(2025, 6, 1)
DAYS = 200  # longer than the 180-day window


def _day(i: int) -> str:
    return (START + timedelta(days=i)).isoformat()


def write_landing(project: Project, rng: np.random.Generator) -> pd.DataFrame:
    """Sparse clicks of 30 users over 200 days (users start late, days without data), a few unknown values."""
    rows = []
    for d in range(DAYS):
        if d % 9 == 4:
            continue  # a day without data
        for _ in range(int(rng.integers(0, 6)) if d != 120 else 60):  # a busy day carries the bad row
            user = int(rng.integers(0, 30))
            if d < user * 4:
                continue  # user u appears from day 4u on
            kind = "add_to_cart" if rng.random() < 0.3 else "page_view"
            device = (
                "tablet" if d == 150 else str(rng.choice(["desktop", "mobile"]))
            )  # tablet: never declared
            rows.append(
                {
                    "click_id": f"k{d:03d}-{len(rows):05d}",
                    "user_id": f"u{user:02d}",
                    "ts": pd.Timestamp(_day(d), tz="UTC") + pd.Timedelta(seconds=int(rng.integers(0, 86400))),
                    "event_type": kind,
                    "device": device,
                    "price": float(rng.integers(100, 9900)) / 100 if kind == "add_to_cart" else None,
                }
            )
    clicks = pd.DataFrame(rows).sort_values("ts", kind="stable").reset_index(drop=True)
    busy = clicks.index[clicks["ts"].dt.date == START + timedelta(days=120)]
    clicks.loc[busy[5], "event_type"] = "scroll"  # not in the closed set (1 of 60 rows: under the 5% gate)
    for d in range(DAYS):
        part = clicks[clicks["ts"].dt.date == START + timedelta(days=d)]
        if len(part):
            write_parquet(part, project.landing_dir("clickstream") / f"clicks_{_day(d)}.parquet")
    labels = pd.DataFrame(
        {
            "user_id": [f"u{u:02d}" for u in range(30)],
            "observed_at": pd.Timestamp(_day(DAYS - 1), tz="UTC") + pd.Timedelta(hours=12),
            "converted": [u % 2 for u in range(30)],
        }
    )
    write_parquet(labels, project.landing_dir("conversions") / f"conversions_{_day(DAYS - 1)}.parquet")
    return clicks


@pytest.mark.slow
def test_a_new_domain_runs_from_its_spec_with_no_package_change(tmp_path):
    spec_path = tmp_path / "webshop" / "spec.yaml"
    spec_path.parent.mkdir()
    spec_path.write_text(textwrap.dedent(SPEC))
    project = Project.load(spec_path, tmp_path / "data")
    clicks = write_landing(project, np.random.default_rng(4))
    project = Project.load(spec_path, tmp_path / "data")  # partitions end where the landing data ends
    assert project.partition_days()[-1] == _day(DAYS - 1)

    defs = build_definitions(project)
    keys = {k.to_user_string() for k in defs.resolve_all_asset_keys()}
    assert {"clickstream", "conversions", "browsing", "training_set", "online_features"} <= keys
    with dg.DagsterInstance.ephemeral() as instance:
        result = materialize_range(
            defs, ["clickstream", "conversions", "browsing"], _day(0), _day(DAYS - 1), instance
        )
        assert result.success
        result = defs.resolve_implicit_global_asset_job_def().execute_in_process(
            instance=instance, asset_selection=[dg.AssetKey("training_set"), dg.AssetKey("online_features")]
        )
        assert result.success

    # the closed set quarantines 'scroll' with its column named; the open set keeps 'tablet'
    quarantined = pq.read_table(
        project.paths.quarantine
        / "clickstream"
        / next(
            p.name for p in (project.paths.quarantine / "clickstream").iterdir() if p.name.startswith("date=")
        )
        / "rows.parquet"
    ).to_pandas()
    assert quarantined["_reason"].tolist() == ["not_allowed:event_type"]
    day150 = pq.read_table(project.paths.partition_dir("clickstream", _day(150))).to_pandas()
    assert set(day150["device"]) == {"tablet"}

    # the training set holds every label, with the lifetime and 180-day features as of the label's midnight
    store = FeatureStore(project)
    training, meta = store.read_training_set()
    assert len(training) == 30 and meta["leakage_violations"] == 0
    kept = clicks[clicks["event_type"] != "scroll"]
    cutoff = pd.Timestamp(
        _day(DAYS - 1), tz="UTC"
    )  # labels observed on the last day: features as of its midnight
    for row in training.itertuples():
        mine = kept[(kept["user_id"] == row.user_id) & (kept["ts"] < cutoff)]
        views = mine[mine["event_type"] == "page_view"]
        assert row.views_lifetime == len(views)
        assert row.views_180d == int((views["ts"] >= cutoff - pd.Timedelta(days=180)).sum())
        assert (
            row.views_180d < row.views_lifetime
            or len(views[views["ts"] < cutoff - pd.Timedelta(days=180)]) == 0
        )
        carts = mine[mine["event_type"] == "add_to_cart"]
        assert row.cart_value_lifetime == math.fsum(carts["price"])  # exact: the correctly rounded sum
        assert row.devices_lifetime == mine["device"].nunique()
    assert training["views_180d"].sum() < training["views_lifetime"].sum()  # the window cuts the oldest views

    # the online store serves the newest day's values with their status
    online = store.get_online_features(
        ["u03", "nobody"], now=pd.Timestamp(_day(DAYS), tz="UTC").to_pydatetime()
    )
    assert online.loc[0, "browsing__status"] == "fresh" and online.loc[1, "browsing__status"] == "missing"
    user = kept[(kept["user_id"] == "u03")]
    assert online.loc[0, "views_lifetime"] == int((user["event_type"] == "page_view").sum())
    stale = store.get_online_features(["u03"], now=pd.Timestamp(_day(DAYS + 5), tz="UTC").to_pydatetime())
    assert stale.loc[0, "browsing__status"] == "expired" and pd.isna(stale.loc[0, "views_lifetime"])
