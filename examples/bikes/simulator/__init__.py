"""The bike-share example's simulator: stations, their trips (CSV), a daily station export and next-week demand.

Deterministic for a seed. Trips per station and day are Poisson around the station's own rate, shaped by the
day of the week, a slow seasonal rise and a shared weather effect; stations open during the period (they
appear late), capacities grow now and then, and a new bike type appears after a while. Each label, written a
week and three days after its ``as_of`` day (the report's delay), is the number of trips the station saw in
the 7 days from ``as_of``.

Scenario ``district_closure@dayN`` (or ``@YYYY-MM-DD``): from that day, the stations of one district lose
40% of their trips (roadworks), a shift the monitor should see.
"""

from __future__ import annotations

import io
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from mlops_assets.storage import write_file_atomic

DISTRICTS = ("harbour", "old_town", "university", "riverside", "uptown")
DAY_US = 86_400_000_000
UTC_TS = pa.timestamp("us", tz="UTC")
_EPOCH = date(1970, 1, 1)
WEEKLY = np.array([1.05, 1.1, 1.1, 1.05, 1.0, 0.75, 0.65])  # Monday .. Sunday
LABEL_DELAY_DAYS = 3  # the operator's weekly demand report arrives three days after the week ends


@dataclass
class Summary:
    out: Path
    days: int
    stations: int
    rows: dict[str, int] = field(default_factory=dict)
    scenarios: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        rows = ", ".join(f"{k}={v:,}" for k, v in self.rows.items())
        extra = f"; scenarios {', '.join(self.scenarios)}" if self.scenarios else ""
        return f"wrote {self.days} days for {self.stations} stations to {self.out}: {rows}{extra}"


def _scenario_day(item: str, start: date, days: int) -> tuple[str, int]:
    match = re.match(r"^([a-z_]+)@(?:day(\d+)|(\d{4}-\d{2}-\d{2}))$", item)
    if not match:
        raise ValueError(f"scenario {item!r}: expected NAME@dayN or NAME@YYYY-MM-DD")
    name = match.group(1)
    if name != "district_closure":
        raise ValueError(f"unknown scenario {name!r}: this simulator knows district_closure")
    day = int(match.group(2)) if match.group(2) else (date.fromisoformat(match.group(3)) - start).days
    if not 0 <= day < days:
        raise ValueError(f"scenario {item!r} starts outside the {days} simulated days")
    return name, day


def _write(path: Path, table: pa.Table) -> None:
    sink = io.BytesIO()
    if path.suffix == ".csv":
        pacsv.write_csv(table, sink)
    else:
        pq.write_table(table, sink, compression="zstd")
    write_file_atomic(sink.getvalue(), path)


def simulate(
    out: Path, *, days: int, start: str, seed: int, size: int, scenarios: Sequence[str] = ()
) -> Summary:
    """Write ``days`` days of landing files for ``size`` stations under ``out`` (trips/, stations/, demand/)."""
    if days < 8 + LABEL_DELAY_DAYS or size < 1:
        raise ValueError(
            f"need at least {8 + LABEL_DELAY_DAYS} days and 1 station, got days={days}, size={size}"
        )
    first = date.fromisoformat(start)
    out = Path(out)
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0]))
    closure = dict(_scenario_day(s, first, days) for s in scenarios)
    ids = np.arange(100, 100 + size, dtype=np.int64)
    district = rng.integers(0, len(DISTRICTS), size)
    capacity = rng.integers(10, 41, size)
    rate = np.exp(rng.normal(np.log(14.0), 0.5, size)) * (capacity / 25.0)
    opened = np.where(
        rng.random(size) < 0.85, -rng.integers(30, 1500, size), rng.integers(5, max(6, days // 2), size)
    )
    weather = np.zeros(days)
    for d in range(1, days):
        weather[d] = 0.5 * weather[d - 1] + rng.normal(0.0, 0.05)
    counts = np.zeros((days, size), dtype=np.int64)
    summary = Summary(out, days, size, {"trips": 0, "stations": 0, "demand": 0}, list(scenarios))
    for d in range(days):
        day = first + timedelta(days=d)
        day_us = (day - _EPOCH).days * DAY_US
        drng = np.random.default_rng(np.random.SeedSequence([seed, 1, d]))
        if d > 0:  # now and then a station gets more docks
            grow = drng.random(size) < 0.003
            capacity = capacity + grow * drng.integers(2, 8, size)
        open_now = opened <= d
        season = 1.0 + 0.05 * d / max(days, 1)
        lam = rate * WEEKLY[day.weekday()] * season * np.exp(weather[d]) * open_now
        if "district_closure" in closure and d >= closure["district_closure"]:
            lam = np.where(district == 0, lam * 0.6, lam)
        n = drng.poisson(lam)
        counts[d] = n
        station = np.repeat(ids, n)
        total = int(n.sum())
        started = day_us + np.sort(drng.integers(0, DAY_US, total))
        order = np.argsort(started, kind="stable")
        station, started = station[order], started[order]
        member = drng.random(total) < 0.7
        bike = np.where(drng.random(total) < 0.3, "electric", "classic").astype(object)
        if d >= int(days * 0.7):  # a new bike type joins the fleet: an open categorical value
            bike[drng.random(total) < 0.03] = "cargo"
        duration = np.round(np.exp(drng.normal(np.log(14.0), 0.6, total)), 1)
        trips = pa.table(
            {
                "trip_id": pa.array([f"T{d:04d}-{i:06d}" for i in range(total)], pa.string()),
                "station_id": pa.array(station, pa.int64()),
                "started_at": pa.array(started, UTC_TS),
                "duration_min": pa.array(np.minimum(duration, 1440.0), pa.float64()),
                "rider_type": pa.array(np.where(member, "member", "casual").astype(object), pa.string()),
                "bike_type": pa.array(bike, pa.string()),
            }
        )
        _write(out / "trips" / f"trips_{day.isoformat()}.csv", trips)
        summary.rows["trips"] += total
        listed = np.flatnonzero(open_now)
        stations = pa.table(
            {
                "station_id": pa.array(ids[listed], pa.int64()),
                "capacity": pa.array(capacity[listed], pa.int64()),
                "district": pa.array([DISTRICTS[i] for i in district[listed]], pa.string()),
                "opened_on": pa.array([first + timedelta(days=int(o)) for o in opened[listed]], pa.date32()),
                "exported_at": pa.array(np.full(len(listed), day_us + 2 * 3600 * 1_000_000), UTC_TS),
            }
        )
        _write(out / "stations" / f"stations_{day.isoformat()}.parquet", stations)
        summary.rows["stations"] += stations.num_rows
        if d >= 7 + LABEL_DELAY_DAYS:  # a week's demand is reported LABEL_DELAY_DAYS after the week is over
            a = d - 7 - LABEL_DELAY_DAYS
            known = np.flatnonzero(opened <= a)
            week = counts[a : a + 7, known].sum(axis=0)
            as_of_us = (first + timedelta(days=a) - _EPOCH).days * DAY_US
            demand = pa.table(
                {
                    "station_id": pa.array(ids[known], pa.int64()),
                    "as_of": pa.array(np.full(len(known), as_of_us), UTC_TS),
                    "observed_at": pa.array(np.full(len(known), day_us + 3 * 3600 * 1_000_000), UTC_TS),
                    "trips_next_7d": pa.array(week.astype(np.float64), pa.float64()),
                }
            )
            _write(out / "demand" / f"demand_{day.isoformat()}.parquet", demand)
            summary.rows["demand"] += demand.num_rows
    return summary
