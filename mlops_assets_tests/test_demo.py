"""`mlops demo` end to end on a small churn world: what a user sees printed and finds on disk."""

from __future__ import annotations

import json
from datetime import date, timedelta

import pandas as pd
import pytest

from mlops_assets_tests.conftest import (
    DEMO_BEFORE,
    DEMO_DAYS,
    DEMO_HISTORY,
    DEMO_INCIDENT_DAY,
    SmallDemo,
)

START = date(2026, 1, 1)
DAYS, HISTORY, BEFORE, INCIDENT_DAY = DEMO_DAYS, DEMO_HISTORY, DEMO_BEFORE, DEMO_INCIDENT_DAY


def _day(offset: int) -> str:
    return (START + timedelta(days=offset)).isoformat()


@pytest.mark.slow
def test_demo_runs_the_lifecycle_end_to_end_on_a_small_world(small_demo: SmallDemo):
    """The session's small demo (conftest's ``small_demo``): 400 customers x 62 days, a quality incident on day 10,
    covariate and concept drift from day 40, a logistic regression."""
    out, churn = small_demo.out, small_demo.project
    assert small_demo.code == 0, out[-5000:]
    paths = churn.paths

    # every source's history is ingested in one range, then the new days in another
    for source in churn.spec.sources:
        assert f"| {source} | {HISTORY} |" in out and f"| {source} | {DAYS - HISTORY} |" in out, source
    assert len(list(paths.warehouse.glob("raw_events/date=*/part-0.parquet"))) == DAYS

    # the incident is reported and quarantined on its day only, bad file included
    assert "raw_events null:customer_id" in out and "raw_events file: unreadable parquet file" in out
    quarantined_days = sorted(p.parent.name for p in paths.quarantine.glob("*/date=*/manifest.json"))
    assert quarantined_days == [f"date={_day(INCIDENT_DAY)}"]
    manifest = json.loads(next(paths.quarantine.glob("raw_events/date=*/manifest.json")).read_text())
    assert manifest["rows_read"] == manifest["rows_kept"] + manifest["rows_quarantined"]
    assert 0 < manifest["rows_quarantined"] < 0.05 * manifest["rows_read"]

    # the first model passed its gates and is the champion
    assert "champion: v1" in out

    # the drift report covers the baseline days before the new data and every new day
    monitored = [_day(HISTORY - BEFORE + i) for i in range(BEFORE + DAYS - HISTORY)]
    for day in monitored:
        assert f"| {day} |" in out, day
    reports = sorted(p.name for p in paths.reports.glob("drift_report_*.md"))
    assert reports == [f"drift_report_{day}.md" for day in monitored]

    # the champion scored the monitored population of a new day: every customer with an event in the
    # spec's window (active_within days up to and including the day), read back from the raw partitions
    window = churn.spec.monitoring.population.active_within
    day = _day(HISTORY + 5)
    scored = pd.read_parquet(paths.partition_dir("batch_predictions", day))
    active = set()
    for offset in range(HISTORY + 6 - window, HISTORY + 6):
        active |= set(pd.read_parquet(paths.partition_dir("raw_events", _day(offset)))["customer_id"])
    assert set(scored["customer_id"]) == active and scored["customer_id"].is_unique
    assert scored["score"].between(0, 1).all() and (scored["model_version"].astype(str) == "1").all()


@pytest.mark.slow
@pytest.mark.parametrize("days", [30, 60, 200])
def test_a_demo_of_another_length_keeps_each_default_scenario_inside_the_run(churn, days, tmp_path):
    """`mlops demo --days N`: the spec's scenario days (written for its own length) move with the length, so
    the simulator accepts them, and each starts at the same share of the run as in the spec."""
    from examples.churn.simulator import simulate
    from mlops_assets.demo import scaled_scenarios

    demo = churn.spec.demo
    scaled, notes = scaled_scenarios(tuple(demo.scenarios), days, demo.days)
    assert len(notes) == len(demo.scenarios)
    for original, moved in zip(demo.scenarios, scaled, strict=True):
        name, day = original.split("@day")
        moved_name, moved_day = moved.split("@day")
        assert moved_name == name and 1 <= int(moved_day) < days
        assert abs(int(moved_day) / days - int(day) / demo.days) <= 1 / days
    simulate(tmp_path / "landing", days=days, start="2026-01-01", seed=1, size=40, scenarios=scaled)
    assert len(list((tmp_path / "landing" / "events").iterdir())) >= days
