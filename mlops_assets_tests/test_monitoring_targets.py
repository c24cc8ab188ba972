"""The drift-monitoring targets at realistic size: churn-simulator worlds of 5,000 customers whose champion is
trained on the first 90 days, monitored day by day as the drift_report asset does (benchmarks/drift_scenarios.py).

Worlds are built once under .bench/drift-worlds (a few minutes each) and reused."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.slow


def _run(name: str):
    from benchmarks.drift_scenarios import SCENARIOS, day, run_ours, summarize

    scenario = SCENARIOS[name]
    out = run_ours(scenario, log=lambda *_: None)
    start = day(scenario.world, scenario.drift_from) if scenario.drift_from is not None else None
    return out, summarize(scenario, out["rows"], start), start


def test_a_world_without_drift_raises_no_dataset_alarm_and_requests_no_retraining(isolated_mlflow_env):
    out, s, _ = _run("none")
    assert s["days_before"] == 60
    assert s["dataset_alarm_days_before"] == 0 and s["error_alarm_days_before"] == 0
    assert s["feature_false_alarm_rate"] <= 0.05
    assert out["requests"] == []


def test_covariate_drift_in_one_region_is_flagged_within_three_days(isolated_mlflow_env):
    from datetime import date

    out, s, start = _run("covariate_region")
    assert s["dataset_alarm_days_before"] == 0
    first = s["first_feature_alarm"]
    assert first is not None and (date.fromisoformat(first) - date.fromisoformat(start)).days <= 2
    assert s["first_dataset_alarm"] is not None and len(out["requests"]) == 1


def test_concept_drift_is_caught_by_realized_performance_and_the_estimate_stays_quiet(isolated_mlflow_env):
    out, s, start = _run("concept")
    assert s["dataset_alarm_days_before"] == 0 and s["first_dataset_alarm"] is None
    assert s["first_realized_alarm"] is not None and s["first_realized_alarm"] >= start
    assert s["first_estimate_alarm"] is None
    # the realized drop hovers around its limit for weeks (alarm, just inside, alarm): one episode, one request
    assert sum(bool(r["realized_alarm"]) for r in out["rows"]) > 1
    assert [e.start for e in out["requests"]] == [s["first_realized_alarm"]]


def test_the_demo_world_alarms_within_two_days_of_its_drift_and_never_before(isolated_mlflow_env):
    out, s, start = _run("demo")
    assert start == "2026-04-06" and s["days_before"] == 10  # 2026-03-27..2026-04-05 are judged quiet days
    assert s["dataset_alarm_days_before"] == 0 and s["error_alarm_days_before"] == 0
    assert s["first_dataset_alarm"] is not None and s["first_dataset_alarm"] <= "2026-04-07"
    assert len(out["requests"]) == 1
