"""Runs over a range of days: Dagster's partition-range tags, and a list of days cut into consecutive runs."""

from __future__ import annotations

from datetime import date

#: The tags that make one run cover the partitions first..last (the daily assets have single-run backfill policies).
RANGE_START_TAG = "dagster/asset_partition_range_start"
RANGE_END_TAG = "dagster/asset_partition_range_end"


def range_tags(first: str, last: str) -> dict[str, str]:
    return {RANGE_START_TAG: first, RANGE_END_TAG: last}


def run_days_text(tags: dict[str, str]) -> str:
    """``YYYY-MM-DD`` for a one-partition run, ``first..last`` for a ranged one, else ``""``."""
    if "dagster/partition" in tags:
        return tags["dagster/partition"]
    if RANGE_START_TAG in tags:
        return f"{tags[RANGE_START_TAG]}..{tags[RANGE_END_TAG]}"
    return ""


def follows(day: str, previous: str) -> bool:
    """``day`` is the calendar day after ``previous`` (both ``YYYY-MM-DD``)."""
    return (date.fromisoformat(day) - date.fromisoformat(previous)).days == 1


def consecutive_days(days: list[str]) -> list[list[str]]:
    """The sorted days cut into runs of consecutive calendar days."""
    runs: list[list[str]] = []
    for day in sorted(days):
        if runs and follows(day, runs[-1][-1]):
            runs[-1].append(day)
        else:
            runs.append([day])
    return runs
