"""Retraining once per alarm episode (mlops_assets.monitoring.episodes): consecutive alarm days are one episode,
a new one starts only after a quiet period or with a new champion."""

from __future__ import annotations

from mlops_assets.monitoring.episodes import EpisodeTracker, retraining_requests


def test_one_request_per_episode_of_consecutive_alarm_days() -> None:
    days = [(f"2026-04-{d:02d}", ["dataset_drift_share"] if 5 <= d <= 12 else []) for d in range(1, 31)]
    episodes = retraining_requests(days, champion=3, quiet_days=7)
    assert [(e.start, e.checks) for e in episodes] == [("2026-04-05", ("dataset_drift_share",))]
    assert episodes[0].key == "drift-episode:champion-v3:2026-04-05"


def test_a_new_episode_needs_a_quiet_period_longer_than_quiet_days() -> None:
    alarms = ["2026-04-01", "2026-04-05", "2026-04-12", "2026-04-20", "2026-04-21"]  # gaps 4, 7, 8, 1
    episodes = retraining_requests([(d, ["x"]) for d in alarms], champion=1, quiet_days=7)
    assert [e.start for e in episodes] == ["2026-04-01", "2026-04-20"]


def test_quiet_days_raise_nothing_and_a_new_champion_starts_its_own_episode() -> None:
    assert retraining_requests([(f"2026-04-{d:02d}", []) for d in range(1, 31)], champion=1) == []
    tracker = EpisodeTracker(quiet_days=7)
    assert tracker.observe(1, "2026-04-05", ["x"]) is not None
    assert tracker.observe(1, "2026-04-06", ["x"]) is None
    assert tracker.observe(2, "2026-04-07", ["x"]).champion == "2"


def test_the_tracker_state_survives_a_sensor_cursor_and_backfilled_days_join_their_episode() -> None:
    import json

    tracker = EpisodeTracker(quiet_days=7)
    tracker.observe(1, "2026-04-10", ["x"])
    again = EpisodeTracker(json.loads(json.dumps(tracker.state)), quiet_days=7)
    assert again.observe(1, "2026-04-08", ["x"]) is None  # an earlier day of the same drift, backfilled
    assert again.observe(1, "2026-04-15", ["x"]) is None
    assert again.state["1"] == {"start": "2026-04-08", "last": "2026-04-15", "checks": "x"}
    assert again.observe(1, "2026-03-01", ["x"]) is None  # long before: already handled or too old to act on


def test_elevated_days_of_the_alarming_check_keep_its_episode_open_and_start_none() -> None:
    """A realized drop that hovers around its limit: alarms on the 1st, the 12th and the 25th, just inside the
    band (elevated) on every day between. One episode; with the days between quiet, three; with only another
    check elevated between (noise of a two-sided band), three as well."""
    drop = "realized_performance_drop"
    alarm_days = {1, 12, 25}
    days = [(f"2026-04-{d:02d}", [drop] if d in alarm_days else []) for d in range(1, 31)]
    between = [f"2026-04-{d:02d}" for d in range(2, 31) if d not in alarm_days]
    hovering = dict.fromkeys(between, [drop])
    assert [e.start for e in retraining_requests(days, champion=1, quiet_days=7, elevated=hovering)] == [
        "2026-04-01"
    ]
    three = ["2026-04-01", "2026-04-12", "2026-04-25"]
    assert [e.start for e in retraining_requests(days, champion=1, quiet_days=7)] == three
    other = dict.fromkeys(between, ["multivariate_drift"])
    assert [e.start for e in retraining_requests(days, champion=1, quiet_days=7, elevated=other)] == three
    # elevated days alone never request retraining, and they end nothing once the quiet period has passed
    assert retraining_requests([(d, []) for d in between], champion=1, elevated=hovering) == []
    tracker = EpisodeTracker(quiet_days=7)
    tracker.observe(1, "2026-04-01", [drop])
    tracker.extend(1, "2026-04-09", [drop])  # 8 days after the last: the episode had already ended
    assert tracker.state["1"]["last"] == "2026-04-01"
    assert tracker.observe(1, "2026-04-10", [drop]) is not None
    tracker.extend(2, "2026-04-10", [drop])  # another champion without an open episode: nothing to extend
    assert "2" not in tracker.state
