"""The feature-store assets wire the core: one partition per view and day with its metadata and content hash,
the training set with its blocking leakage check, the online store, code versions and the catalog."""

from __future__ import annotations

import random
import shutil
from datetime import timedelta
from pathlib import Path

import dagster as dg
import pandas as pd
import pyarrow.parquet as pq
import pytest

from mlops_assets.features import assets as A
from mlops_assets.features.definitions import FEATURE_VIEWS_JOB
from mlops_assets.features.layout import layouts
from mlops_assets.features.store import FeatureStore
from mlops_assets.features.tiles import canonical_table, partition_path, stored_days
from mlops_assets.partitions import daily_partitions
from mlops_assets.project import Project
from mlops_assets.spec.model import Column, Feature
from mlops_assets.storage import PART_FILE, table_hash
from mlops_assets_tests.conftest import (
    CHURN_SPEC,
    day_range,
    definitions,
    materialize_range,
    simulate_churn,
    write_parquet,
)

DAYS = day_range("2026-01-01", "2026-01-06")
LABELS = pd.DataFrame(
    {
        "customer_id": [f"C{i:06d}" for i in range(10)] + ["C_unknown"],
        "label_timestamp": pd.Series(
            [pd.Timestamp("2026-01-05 12:00", tz="UTC")] * 11, dtype="datetime64[us, UTC]"
        ),
        "churned": pd.Series([0, 1] * 5 + [1], dtype="int64"),
    }
)


def T(text: str) -> pd.Timestamp:
    return pd.Timestamp(text, tz="UTC")


@pytest.fixture(scope="module")
def tiny_template(tmp_path_factory) -> Path:
    """30 simulated customers x 6 days plus 11 hand-written labels, ingested (no feature view yet)."""
    root = tmp_path_factory.mktemp("tiny") / "data"
    root.mkdir()
    project = Project.load(CHURN_SPEC, root)
    simulate_churn(project.paths, size=30, days=len(DAYS))
    write_parquet(LABELS, project.landing_dir("raw_labels") / "labels_2026-01-05_hand.parquet")
    with dg.DagsterInstance.ephemeral() as instance:
        assert materialize_range(
            definitions(project), list(project.spec.sources), DAYS[0], DAYS[-1], instance
        ).success
    return root


@pytest.fixture
def tiny(tiny_template: Path, churn: Project) -> Project:
    shutil.rmtree(churn.paths.root)
    shutil.copytree(tiny_template, churn.paths.root)
    return churn


@pytest.fixture
def instance():
    with dg.DagsterInstance.ephemeral() as inst:
        yield inst


def run(defs, selection: list[str], instance, partition: str | None = None, raise_on_error: bool = True):
    return defs.resolve_implicit_global_asset_job_def().execute_in_process(
        instance=instance,
        asset_selection=[dg.AssetKey(k) for k in selection],
        partition_key=partition,
        raise_on_error=raise_on_error,
    )


def written(result, view: str) -> dict[str, dict]:
    """partition -> metadata values of the run's materializations of ``view``."""
    out = {}
    for event in result.get_asset_materialization_events():
        mat = event.materialization
        if mat.asset_key == dg.AssetKey(view):
            out[mat.partition] = {
                **{k: v.value for k, v in mat.metadata.items()},
                "data_version": mat.tags.get("dagster/data_version"),
            }
    return out


def files(project: Project) -> dict[tuple[str, str], bytes]:
    """(view, day) -> bytes of every stored view partition."""
    return {
        (v, d): (partition_path(project.paths, v, d) / PART_FILE).read_bytes()
        for v in project.view_names
        for d in stored_days(project.paths, v)
    }


def test_each_view_day_is_a_partition_with_its_metadata_and_a_rerun_is_identical(tiny, instance):
    defs = definitions(tiny)
    result = materialize_range(defs, tiny.view_names, DAYS[0], DAYS[-1], instance)
    assert result.success
    rows = 0
    for view, layout in layouts(tiny.spec).items():
        metas = written(result, view)
        assert sorted(metas) == DAYS, view
        for day in DAYS:
            table = pq.read_table(partition_path(tiny.paths, view, day) / PART_FILE)
            meta = metas[day]
            assert meta["dagster/row_count"] == table.num_rows
            assert meta["entities"] == len(set(table.column(layout.entity_key).to_pylist()))
            assert meta["content_hash"] == table_hash(
                canonical_table(table)
            )  # verifiable from the stored file
            assert meta["source_files"] == len(
                list(tiny.paths.partition_dir(layout.source_name, day).glob("*.parquet"))
            )
            assert {str(d) for d in table.column("day").to_pylist()} <= {day}  # a day's rows only
            rows += table.num_rows
    assert rows > 100
    before = files(tiny)
    # a re-run of one day, alone: the same content hash, the same bytes, and that hash as its data version
    again = run(defs, tiny.view_names, instance, partition=DAYS[2])
    for view in tiny.view_names:
        meta = written(again, view)[DAYS[2]]
        assert meta["content_hash"] == written(result, view)[DAYS[2]]["content_hash"]
        assert meta["data_version"] == meta["content_hash"]
    assert files(tiny) == before


def test_a_range_run_writes_each_day_as_single_day_runs_in_any_order_would(tiny, instance):
    defs = definitions(tiny)
    ranged = materialize_range(defs, tiny.view_names, DAYS[0], DAYS[-1], instance)
    range_files = files(tiny)
    range_hashes = {v: {d: m["content_hash"] for d, m in written(ranged, v).items()} for v in tiny.view_names}
    shutil.rmtree(tiny.paths.features)
    shutil.rmtree(tiny.paths.warehouse / "_state")
    order = DAYS[:]
    random.Random(4).shuffle(order)
    single_hashes: dict[str, dict[str, str]] = {v: {} for v in tiny.view_names}
    for day in order:
        result = run(defs, tiny.view_names, instance, partition=day)
        for view in tiny.view_names:
            single_hashes[view][day] = written(result, view)[day]["content_hash"]
    assert single_hashes == range_hashes
    assert files(tiny) == range_files
    # the views' state (lifetime values, online store) agrees too
    ids = [f"C{i:06d}" for i in range(30)]
    after_single = FeatureStore(tiny).features_at(DAYS[-1], ids)
    shutil.rmtree(tiny.paths.warehouse / "_state")
    pd.testing.assert_frame_equal(after_single, FeatureStore(tiny).features_at(DAYS[-1], ids))


def test_a_day_whose_source_was_never_ingested_fails_naming_it(tiny, instance):
    shutil.rmtree(tiny.paths.partition_dir("raw_events", "2026-01-04"))
    tiny.paths.manifest_path("raw_events", "2026-01-04").unlink()
    defs = definitions(tiny)
    result = defs.resolve_implicit_global_asset_job_def().execute_in_process(
        instance=instance,
        asset_selection=[dg.AssetKey("engagement")],
        tags={
            "dagster/asset_partition_range_start": "2026-01-03",
            "dagster/asset_partition_range_end": "2026-01-05",
        },
        raise_on_error=False,
    )
    assert not result.success
    failures = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    message = failures[0].event_specific_data.error.message
    assert (
        "feature view engagement: source raw_events has no ingested partition for 1 day(s) (2026-01-04)"
        in message
    )
    assert "materialize raw_events for them first" in message
    assert stored_days(tiny.paths, "engagement") == []  # nothing written, not even the days before it


def test_training_set_passes_its_leakage_check_and_online_features_refresh(tiny, instance):
    defs = definitions(tiny)
    assert materialize_range(defs, tiny.view_names, DAYS[0], DAYS[-1], instance).success
    result = run(defs, ["training_set", "online_features"], instance)
    assert result.success
    checks = result.get_asset_check_evaluations()
    assert [(c.check_name, c.passed) for c in checks] == [(A.LEAKAGE_CHECK, True)]
    store = FeatureStore(tiny)
    frame, meta = store.read_training_set()
    assert frame["customer_id"].tolist() == LABELS["customer_id"].tolist()  # every label, in order
    assert frame["churned"].tolist() == LABELS["churned"].tolist()
    rebuilt, rebuilt_meta = FeatureStore(tiny).build_training_set()
    pd.testing.assert_frame_equal(frame, rebuilt)
    mat = written(result, "training_set")[None]
    assert mat["dagster/row_count"] == 11 and mat["label_rate"] == round(6 / 11, 4)
    assert mat["content_hash"] == meta["content_hash"] == rebuilt_meta["content_hash"] == mat["data_version"]
    # the online store holds each view's values as of its newest day (2026-01-06, feature time 01-07)
    ids = LABELS["customer_id"].tolist()
    served = store.get_online_features(ids, now=T("2026-01-07 06:00"))
    offline = store.features_at(DAYS[-1], ids)
    for view in tiny.view_names:
        known = offline[f"{view}__feature_timestamp"].notna()
        assert known.sum() >= 5, view
        assert (served[f"{view}__status"] == known.map({True: "fresh", False: "missing"})).all()
    profiled = offline["customer_profile__feature_timestamp"].notna()
    assert served.loc[profiled, "plan"].tolist() == offline.loc[profiled, "plan"].tolist()
    assert (served["purchase_activity__feature_timestamp"].dropna() == T("2026-01-07")).all()


def test_a_leaky_training_set_fails_the_blocking_check(tiny, instance, monkeypatch):
    defs = definitions(tiny)
    assert materialize_range(defs, tiny.view_names, DAYS[0], DAYS[-1], instance).success
    honest = FeatureStore.build_training_set

    def leaky(self, *args, **kwargs):
        frame, meta = honest(self, *args, **kwargs)
        frame.loc[0, "engagement__feature_timestamp"] = frame.loc[0, "label_timestamp"] + timedelta(days=1)
        return frame, meta

    monkeypatch.setattr(FeatureStore, "build_training_set", leaky)
    result = run(defs, ["training_set"], instance, raise_on_error=False)
    (check,) = result.get_asset_check_evaluations()
    assert check.check_name == A.LEAKAGE_CHECK and not check.passed
    assert check.metadata["violations"].value == 1
    assert check.description == "1 point-in-time violation(s) in 11 rows"
    blocking = [
        c.blocking
        for a in defs.resolve_asset_graph().assets_defs
        for c in a.check_specs
        if c.key == dg.AssetCheckKey(dg.AssetKey("training_set"), A.LEAKAGE_CHECK)
    ]
    assert blocking == [True]  # downstream training does not run on a leaky set


def _versions(project: Project) -> dict[str, str]:
    assets = A.build_feature_assets(project, daily_partitions(project))
    return {key.path[-1]: version for a in assets for key, version in a.code_versions_by_key.items()}


def test_a_views_code_version_changes_exactly_when_its_definition_does(churn):
    base = _versions(churn)
    assert len({base[v] for v in churn.view_names}) == len(churn.view_names)
    assert _versions(Project.load(CHURN_SPEC, churn.paths.root)) == base  # the same spec: the same versions
    spec = churn.spec

    def with_view(name: str, **update) -> Project:
        views = {**spec.feature_views, name: spec.feature_views[name].model_copy(update=update)}
        return Project.from_spec(spec.model_copy(update={"feature_views": views}), churn.paths.root)

    def changed(project: Project) -> set[str]:
        return {k for k, v in _versions(project).items() if v != base[k]}

    downstream = {"training_set", "online_features"}  # read every view: they follow any view's version
    # the TTL is a read-time rule: the view's stored days stay valid, what reads it changes
    assert changed(with_view("support", ttl=timedelta(days=5))) == downstream
    assert changed(with_view("support", description="new words", owner="someone")) == set()
    assert changed(with_view("engagement", filter="event_type = 'login'")) == {"engagement", *downstream}
    features = {**spec.feature_views["support"].features, "tickets_14d": Feature(agg="count", window=14)}
    assert changed(with_view("support", features=features)) == {"support", *downstream}
    windows = {**spec.feature_views["support"].features, "tickets_7d": Feature(agg="count", window=6)}
    assert changed(with_view("support", features=windows)) == {"support", *downstream}
    # the type of a source column a view reads: only the views reading it
    events = spec.sources["raw_events"]
    retyped = events.model_copy(
        update={"columns": {**events.columns, "amount": Column(type="int64", nullable=True)}}
    )
    project = Project.from_spec(
        spec.model_copy(update={"sources": {**spec.sources, "raw_events": retyped}}), churn.paths.root
    )
    assert changed(project) == {"purchase_activity", *downstream}
    # outside any view: the model, the gates, an ingestion bound
    bounded = events.model_copy(
        update={
            "columns": {**events.columns, "amount": events.columns["amount"].model_copy(update={"max": 1e6})}
        }
    )
    unrelated = spec.model_copy(
        update={
            "model": spec.model.model_copy(update={"name": "another-model"}),
            "gates": spec.gates.model_copy(update={"max_metric_drop": 0.5}),
            "sources": {**spec.sources, "raw_events": bounded},
        }
    )
    assert changed(Project.from_spec(unrelated, churn.paths.root)) == set()


def test_catalog_metadata_dependencies_and_automation(churn):
    defs = definitions(churn)
    specs = {s.key.path[-1]: s for s in defs.resolve_all_asset_specs()}
    engagement = specs["engagement"]
    columns = {c.name: c for c in engagement.metadata["dagster/column_schema"].columns}
    assert list(columns) == ["customer_id", *churn.spec.feature_views["engagement"].features]
    assert "Days from the last login" in columns["days_since_last_login"].description
    assert (
        "days_since_last(*) over 90d where event_type = 'login'"
        in columns["days_since_last_login"].description
    )
    assert columns["logins_7d"].type == "int64" and columns["days_since_last_login"].type == "float64"
    assert engagement.owners == ["team:product-analytics"] and "recency" in engagement.tags
    assert engagement.metadata["ttl"] == str(timedelta(days=2))
    assert isinstance(engagement.partitions_def, dg.DailyPartitionsDefinition)
    graph = defs.resolve_asset_graph()
    # an event view's day reads its source's day; a snapshot view's day reads every day up to it
    engagement_def = graph.get(dg.AssetKey("engagement")).assets_def
    assert engagement_def.get_partition_mapping(dg.AssetKey("raw_events")) is None  # default: the same day
    assert graph.get(dg.AssetKey("raw_events")).partitions_def == engagement_def.partitions_def
    profile = graph.get(dg.AssetKey("customer_profile")).assets_def.get_partition_mapping(
        dg.AssetKey("customers")
    )
    assert profile.end_offset == 0 and profile.start_offset <= -len(churn.partition_days())
    assert {d.asset_key.path[-1] for d in specs["training_set"].deps} == {*churn.view_names, "raw_labels"}
    sensor = defs.resolve_sensor_def("features_automation_sensor")
    assert sensor.default_status == dg.DefaultSensorStatus.RUNNING
    assert sensor.run_tags["mlops/trigger"] == "feature_update"  # its runs name their trigger
    assert specs["online_features"].automation_condition is not None
    job = defs.resolve_job_def(FEATURE_VIEWS_JOB)
    assert {k.path[-1] for k in job.asset_layer.selected_asset_keys} == set(churn.view_names)
