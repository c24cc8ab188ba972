"""Simulator + ingestion together: the incident day's defects are exactly what gets quarantined, and the rows kept
that day are the clean world's rows, untouched."""

from __future__ import annotations

from datetime import date, timedelta

import pandas as pd

from examples.churn.simulator import simulate_world
from mlops_assets.ingestion.validate import ingest_day
from mlops_assets.project import Project
from mlops_assets.settings import DataPaths
from mlops_assets_tests.conftest import CHURN_SPEC, simulate_churn

START = "2026-01-01"
DAYS = 8


def test_simulated_incident_is_quarantined_exactly_and_clean_days_are_untouched(churn, tmp_path):
    summary = simulate_churn(churn.paths, size=150, days=DAYS, seed=3, scenarios=["quality_incident@day4"])
    clean = Project.load(CHURN_SPEC, tmp_path / "clean")
    simulate_churn(clean.paths, size=150, days=DAYS, seed=3)
    [incident] = summary.scenarios
    injected = incident.injected
    assert incident.date == "2026-01-05"
    for offset in range(DAYS):
        day = (date.fromisoformat(START) + timedelta(days=offset)).isoformat()
        for source in churn.spec.sources:
            contract = churn.contract(source)
            result = ingest_day(contract, churn.landing_dir(source), day)
            assert result.rows_read == result.rows_kept + result.rows_quarantined
            truth = ingest_day(contract, clean.landing_dir(source), day)
            assert truth.rows_quarantined == 0 and not truth.files_quarantined, (source, day)
            if source == "raw_events" and day == incident.date:
                assert result.quarantined_by_reason == {
                    "below_minimum:amount": injected["negative_amount"],
                    "duplicate:event_id": injected["duplicate_event"],
                    "invalid_type:amount": injected["unparsable_amount"],
                    "null:customer_id": injected["null_customer_id"],
                }
                # the injected defects touch distinct rows: each quarantined row failed one check
                assert result.rows_quarantined == sum(result.quarantined_by_reason.values())
                assert result.rows_read == injected["rows_written"]
                assert len(result.files_quarantined) == injected["corrupt_files"]
                assert result.quarantine_rate < 0.05
                assert "amount" in next(f for f in result.files if f.status == "read").coerced_columns
                # what is kept is the clean world's day minus the rows the incident broke, value for value
                broken = (
                    injected["negative_amount"] + injected["unparsable_amount"] + injected["null_customer_id"]
                )
                assert result.rows_kept == injected["rows_clean"] - broken
                kept = result.kept.to_pandas().set_index("event_id")
                expected = truth.kept.to_pandas().set_index("event_id").loc[kept.index]
                pd.testing.assert_frame_equal(kept, expected)
            else:
                assert result.rows_quarantined == 0 and not result.files_quarantined, (source, day)
                assert result.kept.equals(truth.kept), (source, day)


def test_every_simulated_file_is_a_dated_landing_file_of_its_source(data_dir: DataPaths, churn):
    simulate_churn(data_dir, size=20, days=3, seed=1)
    for source in churn.spec.sources:
        result = ingest_day(churn.contract(source), churn.landing_dir(source), "2026-01-02")
        assert result.landing_notes == [] and len(result.files) == 1, source
        assert result.schema_errors == [] and result.schema_warnings == [], source


def test_the_csv_world_ingests_to_the_same_tables_as_the_parquet_world(churn, tmp_path):
    csv = Project.load(CHURN_SPEC, tmp_path / "csv")
    simulate_churn(churn.paths, size=40, days=3, seed=5)
    simulate_world(csv.paths.landing, customers=40, days=3, start=START, seed=5, file_format="csv")
    for day in ("2026-01-01", "2026-01-03"):
        for source in churn.spec.sources:
            contract = churn.contract(source)
            from_parquet = ingest_day(contract, churn.landing_dir(source), day)
            from_csv = ingest_day(contract, csv.landing_dir(source), day)
            assert [f.name.endswith(".csv") for f in from_csv.files] == [True], (source, day)
            assert from_csv.rows_quarantined == 0 and from_csv.schema_warnings == [], (source, day)
            assert from_csv.kept.equals(from_parquet.kept), (source, day)
