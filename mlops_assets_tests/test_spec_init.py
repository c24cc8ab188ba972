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


def _write_csv(folder, name, frame):
    folder.mkdir(parents=True, exist_ok=True)
    frame.to_csv(folder / name, index=False)


def test_init_keys_entities_by_the_column_joining_the_sources_not_by_a_record_id(tmp_path, capsys):
    """Found trying a plant's sensor readings: the only ``*_id`` column was the reading's own id, and `mlops init`
    keyed the entity by it (every reading its own entity, the labels keyless, "no labels source found"). The
    machine column, in the readings and in the labels, is what the records are about."""
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(0)
    landing = tmp_path / "plant" / "landing"
    machines = [f"M{i:03d}" for i in range(40)]
    for d in range(3):
        day = pd.Timestamp("2026-03-01", tz="UTC") + pd.Timedelta(days=d)
        n = 120
        _write_csv(
            landing / "readings",
            f"readings_{day.date()}.csv",
            pd.DataFrame(
                {
                    "reading_id": [f"r{d}-{i}" for i in range(n)],  # unique on every row: a record id
                    "machine": rng.choice(machines, n),
                    "line": rng.choice(["A", "B", "C"], n),  # a small categorical set, in one source only
                    "read_at": day + pd.to_timedelta(rng.integers(0, 86_400, n), unit="s"),
                    "temperature": rng.normal(70, 5, n).round(2),
                }
            ),
        )
        _write_csv(
            landing / "failure_labels",
            f"failures_{day.date()}.csv",
            pd.DataFrame(
                {"machine": machines[:10], "observed_at": day + pd.Timedelta(hours=23), "failed": [0, 1] * 5}
            ),
        )
    spec_path = tmp_path / "plant" / "spec.yaml"
    assert main(["init", str(landing), "-o", str(spec_path)]) == 0
    out = capsys.readouterr().out
    assert "readings: events" in out and "entity key machine" in out and "failure_labels: labels" in out
    assert "no labels source" not in out
    spec = yaml.safe_load(spec_path.read_text())
    assert spec["entities"] == {"machine": {"join_key": "machine", "dtype": "string"}}
    assert spec["sources"]["readings"]["unique_key"] == ["reading_id"]
    assert spec["target"] == {"source": "failure_labels", "column": "failed", "task": "binary_classification"}
    assert main(["spec", "validate", str(spec_path)]) == 0
