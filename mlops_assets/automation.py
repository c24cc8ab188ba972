"""What the sensors, automation conditions and freshness policies of every domain share.

- ``sensor_interval(default)``: a sensor's minimum interval, ``$MLOPS_SENSOR_INTERVAL_S`` when set (a live replay
  or the demo ticks its sensors every second or so; production keeps each sensor's default);
- ``ARRIVING_DAYS``: materialize every daily partition whose inputs were updated, once none of them is missing
  (unlike ``eager()``, not only the latest day: a replay that lands several days between two ticks computes each);
- the freshness policies of the assets people watch: a source is fresh while a day's landing files keep arriving,
  the online store while it is refreshed, the drift report while it runs daily.
"""

from __future__ import annotations

import os
from datetime import timedelta

import dagster as dg

SENSOR_INTERVAL_ENV = "MLOPS_SENSOR_INTERVAL_S"


def sensor_interval(default: int) -> int:
    """``$MLOPS_SENSOR_INTERVAL_S`` (at least 1 s) when set, else ``default`` seconds."""
    value = os.environ.get(SENSOR_INTERVAL_ENV, "").strip()
    if not value:
        return default
    try:
        return max(1, int(float(value)))
    except ValueError:
        raise ValueError(f"${SENSOR_INTERVAL_ENV} must be a number of seconds, got {value!r}") from None


#: Every partition whose upstream partitions were updated since it was last requested, as soon as none of them is
#: missing and nothing it reads is being computed. Updates of ``ignore`` (e.g. the champion) do not trigger it.
def arriving_days(ignore: tuple[str, ...] = ()) -> dg.AutomationCondition:
    updated = dg.AutomationCondition.any_deps_updated()
    if ignore:
        updated = updated.ignore(dg.AssetSelection.assets(*ignore))
    return (
        updated.since_last_handled()
        & ~dg.AutomationCondition.any_deps_missing()
        & ~dg.AutomationCondition.any_deps_in_progress()
        & ~dg.AutomationCondition.in_progress()
    ).with_label("arriving days: every day whose inputs were updated, none missing")


ARRIVING_DAYS = arriving_days()

#: An unpartitioned asset reading every day (the online store): refreshed when it is missing or any day it reads was
#: updated. Unlike ``eager()`` it does not wait for days that have not arrived yet (a replay declares them ahead).
ONLINE_REFRESH = (
    (dg.AutomationCondition.newly_missing() | dg.AutomationCondition.any_deps_updated()).since_last_handled()
    & ~dg.AutomationCondition.any_deps_in_progress()
    & ~dg.AutomationCondition.in_progress()
).with_label("refresh when a day it reads was updated")

#: A source's newest day should land daily: warn after a day and a half, fail after three days without one.
SOURCE_FRESHNESS = dg.FreshnessPolicy.time_window(
    fail_window=timedelta(days=3), warn_window=timedelta(hours=36)
)
#: The online store serves what it was refreshed with: warn after a day, fail after two (the shortest view TTLs).
ONLINE_FRESHNESS = dg.FreshnessPolicy.time_window(
    fail_window=timedelta(days=2), warn_window=timedelta(days=1)
)
#: The drift report judges the champion daily.
MONITORING_FRESHNESS = dg.FreshnessPolicy.time_window(
    fail_window=timedelta(days=2), warn_window=timedelta(hours=30)
)
