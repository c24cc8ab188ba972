"""Simulator + ingestion together: the incident day's defects are exactly what gets quarantined."""

from __future__ import annotations

from datetime import date, timedelta

import pandas as pd
import pytest

from mlops_assets.demo import DemoConfig, run_demo
from mlops_assets.ingestion.schema import CONTRACTS
from mlops_assets.ingestion.validate import ingest_day
from mlops_assets.simulate import simulate

START = "2026-01-01"


def test_simulated_incident_is_quarantined_exactly_and_clean_days_are_untouched(data_dir):
    summary = simulate(
        out=data_dir.landing, customers=150, days=8, start=START, seed=3, scenarios=["quality_incident@day4"]
    )
    [incident] = summary.scenarios
    injected = incident.injected
    for offset in range(8):
        day = (date.fromisoformat(START) + timedelta(days=offset)).isoformat()
        for contract in CONTRACTS.values():
            result = ingest_day(contract, data_dir.landing_dir(contract.name), day)
            assert result.rows_read == result.rows_kept + result.rows_quarantined
            if contract.name == "raw_events" and day == incident.date:
                assert result.quarantined_by_reason == {
                    "below_minimum:amount": injected["negative_amount"],
                    "duplicate:event_id": injected["duplicate_event"],
                    "invalid_type:amount": injected["unparsable_amount"],
                    "null:customer_id": injected["null_customer_id"],
                }
                assert result.rows_read == injected["rows_written"]
                assert len(result.files_quarantined) == injected["corrupt_files"]
                assert result.quarantine_rate < 0.05
                assert "amount" in next(f for f in result.files if f.status == "read").coerced_columns
            else:
                assert result.rows_quarantined == 0 and not result.files_quarantined, (contract.name, day)


@pytest.mark.slow
def test_demo_runs_the_lifecycle_end_to_end_on_a_small_world(data_dir, dagster_home, capsys):
    config = DemoConfig(
        customers=400,
        days=62,
        history_days=50,
        monitor_days_before=2,
        scenarios=("quality_incident@day10", "covariate_drift@day50"),
        model_type="logistic_regression",
    )
    code = run_demo(config)
    out = capsys.readouterr().out
    assert code == 0, out[-5000:]
    assert "| raw_events | 50 |" in out and "| raw_events | 12 |" in out  # history, then the new days
    assert "raw_events null:customer_id" in out
    assert "champion: v1" in out
    assert "| 2026-03-03 |" in out  # the drift report covers the new days
    assert len(list(data_dir.warehouse.glob("raw_events/date=*/part-0.parquet"))) == 62
    assert len(list(data_dir.reports.glob("drift_report_*.md"))) == 14
    # the champion scored every active customer of each new day, recording its version
    scored = pd.read_parquet(data_dir.partition_dir("batch_predictions", "2026-03-01"))
    events = pd.read_parquet(data_dir.partition_dir("raw_events", "2026-03-01"))
    assert set(scored["customer_id"]) == set(events["customer_id"])
    assert (
        scored["score"].between(0, 1).all() and (scored["model_version"].astype(str) == "1").all()
    )  # 2 days before + the 12 new days
