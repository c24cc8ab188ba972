"""`mlops init`: a starter spec from sample landing files validates and ingests them with nothing quarantined."""

from __future__ import annotations

import dagster as dg
import yaml

from mlops_assets.cli import main
from mlops_assets.project import Project
from mlops_assets_tests.conftest import materialize_range


def test_init_writes_a_spec_that_validates_and_ingests_the_samples(tmp_path, capsys):
    from examples.bikes.simulator import simulate

    landing = tmp_path / "mine" / "landing"
    simulate(landing, days=12, start="2026-05-01", seed=1, size=6, scenarios=())
    spec_path = tmp_path / "mine" / "spec.yaml"
    assert (
        main(["init", str(landing), "-o", str(spec_path), "--labels", "demand", "--target", "trips_next_7d"])
        == 0
    )
    out = capsys.readouterr().out
    assert "trips: events" in out and "stations: snapshot" in out and "demand: labels" in out
    spec = yaml.safe_load(spec_path.read_text())
    assert spec["entities"] == {"station": {"join_key": "station_id", "dtype": "int64"}}
    assert spec["sources"]["trips"]["unique_key"] == ["trip_id"]
    assert (
        spec["sources"]["trips"]["columns"]["bike_type"].get("closed") is None
    )  # categorical sets stay open
    assert spec["target"]["task"] == "regression"
    assert main(["spec", "validate", str(spec_path)]) == 0
    # the spec ingests its own samples with nothing quarantined
    project = Project.load(spec_path, tmp_path / "data")
    import shutil

    shutil.copytree(landing, project.paths.landing)
    project = Project.load(spec_path, tmp_path / "data")
    from mlops_assets.component import build_definitions

    defs = build_definitions(project)
    days = project.partition_days()
    with dg.DagsterInstance.ephemeral() as instance:
        result = materialize_range(defs, list(project.spec.sources), days[0], days[-1], instance)
    assert result.success
    quarantined = sum(
        m.metadata["rows_quarantined"].value
        for m in result.get_asset_materialization_events()
        for m in [m.materialization]
    )
    assert quarantined == 0
    assert main(["init", str(landing), "-o", str(spec_path)]) == 2  # an existing spec is not overwritten
    assert "--force" in capsys.readouterr().err
