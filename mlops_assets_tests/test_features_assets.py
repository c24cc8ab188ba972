"""The feature-store assets wire the core: views per day, training set with its leakage gate, online store."""

from __future__ import annotations

import dataclasses
from datetime import timedelta

import dagster as dg
import pandas as pd

from mlops_assets.features import assets as A
from mlops_assets.features import views as V
from mlops_assets.features.definitions import defs, features_automation_sensor
from mlops_assets.featurestore import FeatureStore
from mlops_assets.resources import DataDirResource
from mlops_assets.storage import write_partition
from mlops_assets_tests.test_features_compute import write_customers, write_events


def test_materialize_views_training_set_and_online(tmp_path):
    paths_root = tmp_path / "data"
    store = FeatureStore(paths_root)
    write_events(
        store.paths,
        [
            ("e1", "C1", "2026-01-05 10:00", "purchase", 20.0),
            ("e2", "C1", "2026-01-06 09:00", "login", None),
            ("e3", "C2", "2026-01-06 12:00", "support_ticket", None),
        ],
    )
    write_customers(
        store.paths,
        [
            ("C1", "2026-01-01", "basic", "west", "18-24", "2026-01-01 00:00"),
            ("C2", "2026-01-02", "premium", "east", "50+", "2026-01-02 00:00"),
        ],
    )
    labels = pd.DataFrame(
        {
            "customer_id": ["C1", "C2", "C3"],
            "label_timestamp": pd.Series(
                pd.to_datetime(["2026-01-07 08:00"] * 3, utc=True), dtype="datetime64[us, UTC]"
            ),
            "churned": pd.Series([0, 1, 1], dtype="int8"),
        }
    )
    write_partition(labels, store.paths.partition_dir("raw_labels", "2026-01-07"))
    resources = {"data": DataDirResource(root=str(paths_root))}
    instance = dg.DagsterInstance.ephemeral()
    for day in ("2026-01-05", "2026-01-06"):
        result = dg.materialize(
            A.feature_view_assets, partition_key=day, resources=resources, instance=instance
        )
        assert result.success
    result = dg.materialize([A.training_set, A.online_features], resources=resources, instance=instance)
    assert result.success
    checks = result.get_asset_check_evaluations()
    assert [(c.check_name, c.passed) for c in checks] == [(A.LEAKAGE_CHECK, True)]

    frame, meta = store.read_training_set()
    assert frame["customer_id"].tolist() == ["C1", "C2", "C3"] and meta["rows"] == 3
    assert frame["logins_7d"].tolist()[0] == 1 and frame["tickets_7d"].tolist()[1] == 1
    assert pd.isna(frame["account_age_days"].iloc[2])  # unknown customer kept, with nulls
    online = store.get_online_features(
        ["C1"], ["engagement:logins_7d"], now=pd.Timestamp("2026-01-07", tz="UTC")
    )
    assert online["logins_7d"].tolist() == [1] and online["engagement__status"].tolist() == ["ok"]


def test_code_version_tracks_only_its_view():
    before = {a.key.path[-1]: a.code_versions_by_key[a.key] for a in A.feature_view_assets}
    changed = dataclasses.replace(V.SUPPORT, ttl=timedelta(days=5))
    assert (
        A.build_feature_view_asset(changed).code_versions_by_key[dg.AssetKey("support")] != before["support"]
    )
    assert (
        A.build_feature_view_asset(V.ENGAGEMENT).code_versions_by_key[dg.AssetKey("engagement")]
        == before["engagement"]
    )


def test_catalog_metadata_and_automation():
    full = dg.Definitions.merge(defs, dg.Definitions(resources={"data": DataDirResource()}))
    spec = next(s for s in full.resolve_all_asset_specs() if s.key == dg.AssetKey("engagement"))
    columns = {c.name: c.description for c in spec.metadata["dagster/column_schema"].columns}
    assert "Days from the last login" in columns["days_since_last_login"]
    assert spec.owners == ["team:product-analytics"] and "engagement" in spec.tags
    lookback = A.source_dep(V.ENGAGEMENT).partition_mapping
    assert lookback.start_offset == -89
    assert features_automation_sensor.default_status == dg.DefaultSensorStatus.RUNNING
