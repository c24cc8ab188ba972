"""The drift retraining sensor on check evaluations as the drift_report asset records them: alarm days start an
episode, elevated days (a statistic short of its edge but not quiet) keep it open, quiet days end it."""

from __future__ import annotations

import dagster as dg

from mlops_assets.monitoring.checks import DRIFT_ASSET
from mlops_assets.monitoring.policy import DATASET_DRIFT_CHECK, REALIZED_PERFORMANCE_CHECK
from mlops_assets.monitoring.sensors import drift_retraining_sensor


def report_day(
    instance: dg.DagsterInstance,
    day: str,
    failed: bool,
    elevated: str,
    champion: int = 4,
    reference_end: str = "",
) -> None:
    """One drift_report day's ERROR checks: the realized drop failing or not, the ``elevated`` check (or none)
    elevated, the other quiet."""
    for check in (REALIZED_PERFORMANCE_CHECK, DATASET_DRIFT_CHECK):
        fails, up = failed and check == REALIZED_PERFORMANCE_CHECK, check == elevated
        instance.report_runless_asset_event(
            dg.AssetCheckEvaluation(
                asset_key=dg.AssetKey(DRIFT_ASSET),
                check_name=check,
                passed=not fails,
                severity=dg.AssetCheckSeverity.ERROR,
                description=f"{day}: {'failed' if fails else 'passed'}",
                metadata={
                    "champion_version": champion,
                    "reference_end": reference_end,
                    "days": day,
                    "failing_days": dg.MetadataValue.json([day] if fails else []),
                    "elevated_days": dg.MetadataValue.json([day] if up and not fails else []),
                },
            )
        )


def run_days(
    days: list[tuple[str, bool, str]], reference_end: str = "", skips: list | None = None
) -> list[str]:
    """Each day reported and the sensor evaluated after it, as under the daemon; the episode start of each
    retraining request (and each evaluation's skip reason appended to ``skips``)."""
    starts, cursor = [], None
    with dg.instance_for_test() as instance:
        for day, failed, elevated in days:
            report_day(instance, day, failed, elevated, reference_end=reference_end)
            result = drift_retraining_sensor(dg.build_sensor_context(instance=instance, cursor=cursor))
            cursor = result.cursor
            starts += [r.tags["mlops/drift_days"] for r in result.run_requests or []]
            if skips is not None:
                skips.append(result.skip_reason.skip_message if result.skip_reason else None)
    return starts


ALARMS = {1, 10, 19}  # more than quiet_days (7) apart


def test_a_drop_hovering_at_its_limit_requests_retraining_once() -> None:
    days = [(f"2026-04-{d:02d}", d in ALARMS, REALIZED_PERFORMANCE_CHECK) for d in range(1, 21)]
    assert run_days(days) == ["2026-04-01"]


def test_quiet_days_or_another_check_elevated_between_alarms_end_the_episode() -> None:
    hovering = {
        2,
        11,
    }  # the drop elevated the day after the first two alarms; only the drift share after that
    days = [
        (
            f"2026-04-{d:02d}",
            d in ALARMS,
            REALIZED_PERFORMANCE_CHECK if d in hovering else DATASET_DRIFT_CHECK,
        )
        for d in range(1, 21)
    ]
    assert run_days(days) == ["2026-04-01", "2026-04-10", "2026-04-19"]


def test_alarms_inside_or_before_the_champions_reference_period_request_no_retraining() -> None:
    # drift reports backfilled over the champion's history (e.g. the first days of the data, before its
    # training window) alarm, but a retraining would learn nothing new from them; the first alarm after the
    # reference period starts the episode
    days = [(f"2026-04-{d:02d}", d in {1, 2, 5, 12}, DATASET_DRIFT_CHECK) for d in range(1, 14)]
    skips: list = []
    assert run_days(days, reference_end="2026-04-10", skips=skips) == ["2026-04-12"]
    assert "inside or before the champion's reference period (2026-04-01)" in skips[0], skips[0]
    assert "reference period (2026-04-05)" in skips[4], skips[4]  # each evaluation reads only the new ones
    assert skips[11] is None
    # without a recorded reference period (older evaluations) every alarm day counts, as before
    assert run_days(days)[0] == "2026-04-01"
