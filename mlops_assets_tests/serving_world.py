"""Tiny worlds for the serving tests, written straight into the offline store's source tables (no ingestion run):
the churn example with three customers over ten days, and the bikes example with six stations over three weeks."""

from __future__ import annotations

from datetime import date, timedelta

import numpy as np
import pandas as pd
import pyarrow as pa

from mlops_assets.features.store import FeatureStore
from mlops_assets.project import Project
from mlops_assets.storage import write_partition

CHURN_DAYS = [(date(2026, 1, 1) + timedelta(days=i)).isoformat() for i in range(10)]
BIKES_DAYS = [(date(2026, 3, 1) + timedelta(days=i)).isoformat() for i in range(24)]


def T(text: str) -> pd.Timestamp:
    return pd.Timestamp(text, tz="UTC")


def _write(project: Project, source: str, frames: dict[str, pd.DataFrame], days: list[str]) -> None:
    schema = project.contract(source).schema
    for day in days:
        frame = frames.get(day)
        table = (
            schema.empty_table()
            if frame is None or frame.empty
            else pa.Table.from_pandas(frame[schema.names], schema=schema, preserve_index=False)
        )
        write_partition(table, project.paths.partition_dir(source, day))


def churn_world(project: Project) -> FeatureStore:
    """C1 (a profile and activity every day, a plan change on 01-06), C2 (a profile, logins on the first three days
    only), C3 (activity every day, no customer record); every view materialized for 2026-01-01 .. 01-10."""
    events, customers = {}, {}
    for i, day in enumerate(CHURN_DAYS):
        t = T(day)
        rows = [("C1", t + pd.Timedelta("9h"), "login", None), ("C3", t + pd.Timedelta("11h"), "login", None)]
        if i % 2 == 0:
            rows.append(("C1", t + pd.Timedelta("12h"), "purchase", 20.0 + i))
        if i == 4:
            rows.append(("C1", t + pd.Timedelta("15h"), "support_ticket", None))
        if i == 5:
            rows.append(("C3", t + pd.Timedelta("13h"), "purchase", 99.5))
        if i < 3:
            rows.append(("C2", t + pd.Timedelta("10h"), "login", None))
        frame = pd.DataFrame(rows, columns=["customer_id", "event_timestamp", "event_type", "amount"])
        frame["event_id"] = [f"{day}-{k}" for k in range(len(frame))]
        events[day] = frame.sort_values("event_timestamp", kind="stable")
    customers[CHURN_DAYS[0]] = pd.DataFrame(
        {
            "customer_id": ["C1", "C2"],
            "signup_date": [date(2025, 6, 1), date(2025, 12, 20)],
            "plan": ["premium", "basic"],
            "region": ["north", "south"],
            "age_group": ["25-34", "18-24"],
            "updated_at": [T("2026-01-01 08:00")] * 2,
        }
    )
    customers[CHURN_DAYS[5]] = pd.DataFrame(
        {
            "customer_id": ["C1"],
            "signup_date": [date(2025, 6, 1)],
            "plan": ["standard"],
            "region": ["north"],
            "age_group": ["25-34"],
            "updated_at": [T("2026-01-06 08:00")],
        }
    )
    _write(project, "raw_events", events, CHURN_DAYS)
    _write(project, "customers", customers, CHURN_DAYS)
    store = FeatureStore(project)
    store.materialize(CHURN_DAYS)
    return store


def bikes_world(project: Project, stations: int = 6, seed: int = 4) -> FeatureStore:
    """Trips at integer station ids, the daily full station export and weekly demand labels, for 2026-03-01 .. 03-24."""
    rng = np.random.default_rng(seed)
    trips, exports, label_rows = {}, {}, []
    ids = list(range(1, stations + 1))
    counts: dict[tuple[int, str], int] = {}
    for day in BIKES_DAYS:
        rows = []
        for s in ids:
            n = int(rng.poisson(1 + s))
            counts[(s, day)] = n
            for k in range(n):
                rows.append(
                    (
                        f"{day}-{s}-{k}",
                        s,
                        T(day) + pd.Timedelta(minutes=int(rng.integers(0, 1440))),
                        float(rng.gamma(3.0, 5.0)),
                        "member" if rng.random() < 0.6 else "casual",
                        "electric" if rng.random() < 0.3 else "classic",
                    )
                )
        trips[day] = pd.DataFrame(
            rows, columns=["trip_id", "station_id", "started_at", "duration_min", "rider_type", "bike_type"]
        ).sort_values("started_at", kind="stable")
        exports[day] = pd.DataFrame(
            {
                "station_id": ids,
                "capacity": [10 + 2 * s for s in ids],
                "district": ["centre" if s % 2 else "harbour" for s in ids],
                "opened_on": [date(2025, 1, s) for s in ids],
                "exported_at": T(day) + pd.Timedelta("23h"),
            }
        )
    for i, day in enumerate(BIKES_DAYS[:-7]):
        week = BIKES_DAYS[i : i + 7]
        for s in ids:
            label_rows.append(
                (s, T(day), T(week[-1]) + pd.Timedelta(days=3), float(sum(counts[(s, d)] for d in week)))
            )
    labels = pd.DataFrame(label_rows, columns=["station_id", "as_of", "observed_at", "trips_next_7d"])
    by_day = {d: g for d, g in labels.groupby(labels["observed_at"].dt.strftime("%Y-%m-%d"))}
    _write(project, "trips", trips, BIKES_DAYS)
    _write(project, "stations", exports, BIKES_DAYS)
    _write(project, "demand", by_day, sorted(by_day))
    store = FeatureStore(project)
    store.materialize(BIKES_DAYS)
    return store
