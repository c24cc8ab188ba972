"""Both shipped examples ingest and compute their features end to end at small size, through their definitions."""

from __future__ import annotations

import dagster as dg
import pytest

from mlops_assets.features.store import FeatureStore
from mlops_assets.project import Project
from mlops_assets_tests.conftest import BIKES_SPEC, CHURN_SPEC, materialize_range


def _run_upstream(project: Project, days: int) -> None:
    from mlops_assets.component import build_definitions

    defs = build_definitions(project)
    first, last = project.partition_days()[0], project.partition_days()[-1]
    assert len(project.partition_days()) == days  # the partitions end where the landing data ends
    with dg.DagsterInstance.ephemeral() as instance:
        result = materialize_range(defs, [*project.spec.sources, *project.view_names], first, last, instance)
        assert result.success
        for view in project.view_names:
            rows = [
                m.metadata["dagster/row_count"].value for m in result.asset_materializations_for_node(view)
            ]
            assert len(rows) == days and sum(rows) > 0, view
        result = defs.resolve_implicit_global_asset_job_def().execute_in_process(
            instance=instance, asset_selection=[dg.AssetKey("training_set"), dg.AssetKey("online_features")]
        )
        assert result.success


@pytest.mark.slow
def test_the_churn_example_ingests_and_computes_features(data_dir):
    from examples.churn.simulator import simulate

    project = Project.load(CHURN_SPEC, data_dir.root)
    simulate(
        project.paths.landing,
        days=40,
        start="2026-01-01",
        seed=5,
        size=200,
        scenarios=["quality_incident@day20"],
    )
    project = Project.load(CHURN_SPEC, data_dir.root)
    _run_upstream(project, 40)
    frame, meta = FeatureStore(project).read_training_set()
    assert meta["rows"] == len(frame) > 0 and meta["leakage_violations"] == 0
    assert set(frame["churned"].unique()) <= {0, 1}


@pytest.mark.slow
def test_the_bikes_example_ingests_and_computes_features(data_dir):
    from examples.bikes.simulator import simulate

    project = Project.load(BIKES_SPEC, data_dir.root)
    simulate(project.paths.landing, days=30, start="2026-03-01", seed=2, size=15, scenarios=())
    project = Project.load(BIKES_SPEC, data_dir.root)
    _run_upstream(project, 30)
    store = FeatureStore(project)
    frame, meta = store.read_training_set()
    assert meta["leakage_violations"] == 0 and frame["trips_next_7d"].dtype.kind == "f"
    # station ids are integers end to end; a station's trips_7d equals the trips its label week started from
    assert frame["station_id"].dtype.kind == "i"
    # the daily full station export is stored as change rows only: far fewer rows than stations x days
    import pyarrow.parquet as pq

    from mlops_assets.features.tiles import stored_days, view_files

    rows = sum(
        pq.read_metadata(f).num_rows
        for f in view_files(
            project.paths, "station_profile", stored_days(project.paths, "station_profile")
        ).values()
    )
    exported = sum(
        pq.read_metadata(p).num_rows for p in project.paths.table_dir("stations").glob("date=*/*.parquet")
    )
    assert rows < exported / 5
