"""Alarm episodes: retraining is requested once per episode of drift, not once per day of it (no Dagster).

An **episode** is a run of alarm days of one champion (a day on which a dataset-level drift check or a
performance check failed) in which no two consecutive alarm days are more than ``quiet_days`` apart; a
new episode starts only after a quiet period of more than ``quiet_days`` days without an alarm, or
with a new champion. The drift retraining sensor keeps the open episode of each champion in its cursor
and requests one retraining run when an episode starts.

**Hysteresis**: a check is *elevated* on a day when its statistic is inside its band but not clearly
(at least ``policy.ELEVATED_SEVERITY`` of the way from the band's center to its alarm edge). An elevated day of a
check that alarmed in the open episode starts no episode but keeps that one open, as an alarm day does: a
drop that hovers around its limit (an alarm one day, just inside the next) is one episode, not one per
crossing. Other checks' elevated days do not: a two-sided band's half-way mark is crossed on about one
quiet day in eight, and an episode would then never end.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date

#: Days without an alarm after which a new alarm starts a new episode.
DEFAULT_QUIET_DAYS = 7


def _checks(state: Mapping[str, str]) -> list[str]:
    return [c for c in state.get("checks", "").split(",") if c]


def _gap(a: str, b: str) -> int:
    return abs((date.fromisoformat(b) - date.fromisoformat(a)).days)


def acts_on(day: str, reference_end: str | None) -> bool:
    """Whether an alarm on ``day`` can start or join an episode of a champion whose reference period (its
    training window) ends on ``reference_end``: only a later day can. An alarm on a day inside that period or before
    it (a backfilled history day, the data's warm-up before the first labels) is about data the champion was
    trained on, or older: it is reported, and a retraining would learn nothing new from it."""
    return not reference_end or day > reference_end


@dataclass(frozen=True)
class Episode:
    """One episode of alarm days of one champion."""

    champion: str
    start: str
    last: str
    checks: tuple[str, ...]

    @property
    def key(self) -> str:
        return f"drift-episode:champion-v{self.champion}:{self.start}"


class EpisodeTracker:
    """The open episode of each champion (JSON-ready state for a sensor cursor)."""

    def __init__(
        self, state: Mapping[str, Mapping[str, str]] | None = None, quiet_days: int = DEFAULT_QUIET_DAYS
    ):
        self.quiet_days = quiet_days
        self.state: dict[str, dict[str, str]] = {k: dict(v) for k, v in (state or {}).items()}

    def observe(self, champion: str | int, day: str, checks: Iterable[str] = ()) -> Episode | None:
        """Record an alarm day; the new episode it starts, or None when it belongs to the open one."""
        champion = str(champion)
        open_ = self.state.get(champion)
        if open_ is not None and _gap(open_["last"], day) <= self.quiet_days and day >= open_["start"]:
            if day > open_["last"]:
                open_["last"] = day
            open_["checks"] = ",".join(sorted(set(_checks(open_)) | set(checks)))
            return None
        if open_ is not None and day < open_["start"] and _gap(day, open_["start"]) <= self.quiet_days:
            open_["start"] = day  # a backfilled earlier day of the same episode
            return None
        if open_ is not None and day < open_["start"]:
            return None  # an old day, long before the open episode: already handled or too old to act on
        self.state[champion] = {"start": day, "last": day, "checks": ",".join(sorted(set(checks)))}
        return Episode(champion, day, day, tuple(sorted(set(checks))))

    def extend(self, champion: str | int, day: str, checks: Iterable[str]) -> None:
        """Record a day on which ``checks`` were elevated: when one of them alarmed in the champion's open episode
        and the day is within quiet_days of its last, the episode stays open; no episode starts."""
        open_ = self.state.get(str(champion))
        if (
            open_ is not None
            and set(checks) & set(_checks(open_))
            and day > open_["last"]
            and _gap(open_["last"], day) <= self.quiet_days
        ):
            open_["last"] = day

    def record(
        self, champion: str | int, day: str, failed: Sequence[str], elevated: Iterable[str] = ()
    ) -> Episode | None:
        """A judged day: its failed checks start or join an episode; without any, its elevated checks may keep the
        open one open. The new episode it starts, if any."""
        if failed:
            return self.observe(champion, day, failed)
        self.extend(champion, day, elevated)
        return None


def retraining_requests(
    day_alarms: Sequence[tuple[str, Sequence[str]]],
    champion: str | int,
    quiet_days: int = DEFAULT_QUIET_DAYS,
    elevated: Mapping[str, Sequence[str]] | None = None,
) -> list[Episode]:
    """The episodes (one retraining request each) of a champion's days, given each day's failed checks and each
    day's elevated checks (``elevated``: day -> checks neither failing nor quiet)."""
    tracker = EpisodeTracker(quiet_days=quiet_days)
    elevated = elevated or {}
    episodes = (
        tracker.record(champion, day, alarms, elevated.get(day, ())) for day, alarms in sorted(day_alarms)
    )
    return [e for e in episodes if e is not None]
