"""A deterministic, vectorised churn world: customers, their events and churn labels, written as landing files."""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from mlops_assets.storage import write_file_atomic

from .scenarios import Scenario, garbage_bytes, inject_quality_incident, parse_scenario
from .tables import AGE_GROUPS, CUSTOMERS, EVENT_TYPES, PLANS, RAW_EVENTS, RAW_LABELS, REGIONS

DAY_US = 86_400_000_000
_EPOCH = date(1970, 1, 1)
_LOGIN, _PURCHASE, _TICKET = (EVENT_TYPES.index(t) for t in ("login", "purchase", "support_ticket"))
FILE_FORMATS = ("parquet", "csv")
#: Landing folder of each table, keyed by the folder name used in file names.
TABLE_FOLDERS = {"events": RAW_EVENTS, "labels": RAW_LABELS, "customers": CUSTOMERS}


@dataclass(frozen=True)
class WorldParams:
    """Behaviour and churn-rule parameters of the simulated shop (the defaults give ~15% churn per label)."""

    signup_rate: float = 0.005  # new signups per day, as a fraction of the initial population
    plan_change_rate: float = 0.002  # share of active customers changing plan per day
    plan_weights: tuple[float, float, float] = (0.5, 0.3, 0.2)  # basic, standard, premium
    region_weights: tuple[float, float, float, float] = (0.3, 0.25, 0.25, 0.2)
    age_weights: tuple[float, float, float, float] = (0.2, 0.35, 0.3, 0.15)
    age_engagement_shift: tuple[float, float, float, float] = (0.15, 0.05, 0.0, -0.2)
    engagement_sd: float = 0.8  # spread of customers' lasting engagement
    mood_sd: float = 0.6  # spread of the day-to-day part of engagement
    mood_persistence: float = 0.95  # AR(1) coefficient of the day-to-day part
    login_rate: float = 2.4  # logins per day at engagement 0
    purchase_rate: float = 0.3
    ticket_rate: float = 0.08
    login_sensitivity: float = 0.5  # d log(rate) / d engagement
    purchase_sensitivity: float = 0.7
    ticket_sensitivity: float = -0.8
    mean_order_value: float = 35.0
    plan_order_value: tuple[float, float, float] = (0.8, 1.1, 1.6)
    window_days: int = 30  # the churn rule looks at this many days before the label day
    label_every_days: int = 30  # each active customer is labelled once per this many days
    # churn rule (logit) before concept drift
    base_intercept: float = 1.4
    base_login_weight: float = -0.75  # per log1p(logins in window)
    base_purchase_weight: float = -0.7  # per log1p(purchases in window)
    base_ticket_weight: float = 0.35  # per support ticket in window (capped at 10)
    # churn rule after concept drift: tickets no longer matter, low purchase value matters strongly
    drift_intercept: float = 7.8
    drift_login_weight: float = -0.4
    drift_value_weight: float = -1.5  # per log1p(purchase value in window)
    recency_weight: float = 0.08  # per day since last login (capped at window_days)
    plan_weight: tuple[float, float, float] = (0.4, 0.0, -0.5)


@dataclass(frozen=True)
class WindowStats:
    """Per-customer behaviour in the window before a label day."""

    logins: np.ndarray
    purchases: np.ndarray
    tickets: np.ndarray
    purchase_value: np.ndarray
    days_since_last_login: np.ndarray


def churn_logit(stats: WindowStats, plan: np.ndarray, concept_drift: bool, params: WorldParams) -> np.ndarray:
    """Log-odds of churn from the window's behaviour and the plan, under the base or the drifted rule."""
    recency = params.recency_weight * np.minimum(stats.days_since_last_login, params.window_days)
    plan_term = np.asarray(params.plan_weight)[plan]
    if concept_drift:
        return (
            params.drift_intercept
            + params.drift_login_weight * np.log1p(stats.logins)
            + params.drift_value_weight * np.log1p(stats.purchase_value)
            + recency
            + plan_term
        )
    return (
        params.base_intercept
        + params.base_login_weight * np.log1p(stats.logins)
        + params.base_purchase_weight * np.log1p(stats.purchases)
        + params.base_ticket_weight * np.minimum(stats.tickets, 10)
        + recency
        + plan_term
    )


@dataclass(frozen=True)
class AppliedScenario:
    """A scenario as it was applied: its day, date, parameters and (for incidents) what was injected."""

    name: str
    day: int
    date: str
    params: dict[str, Any]
    injected: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "day": self.day,
            "date": self.date,
            "params": self.params,
            "injected": self.injected,
        }


@dataclass(frozen=True)
class SimulationSummary:
    """What a simulation wrote: files, rows per table, scenarios applied, churn rate."""

    out: Path
    start: str
    days: int
    customers: int
    seed: int
    file_format: str
    files: list[Path]
    rows: dict[str, int]
    scenarios: list[AppliedScenario]
    churn_rate: float
    customers_total: int  # initial population plus signups

    def __str__(self) -> str:
        rows = ", ".join(f"{table}={count:,}" for table, count in self.rows.items())
        text = (
            f"wrote {len(self.files)} files to {self.out} ({self.days} days from {self.start}, seed {self.seed}): "
            f"{rows} rows; {self.customers_total:,} customers; churn rate {self.churn_rate:.1%}"
        )
        for s in self.scenarios:
            text += f"; {s.name} from {s.date} (day {s.day})"
            if s.injected:
                text += " injected " + ", ".join(f"{k}={v}" for k, v in s.injected.items())
        return text

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready view of the summary (the number of files, not their paths)."""
        return {
            "out": str(self.out),
            "start": self.start,
            "days": self.days,
            "customers": self.customers,
            "customers_total": self.customers_total,
            "seed": self.seed,
            "file_format": self.file_format,
            "files": len(self.files),
            "rows": self.rows,
            "churn_rate": round(self.churn_rate, 4),
            "scenarios": [s.to_dict() for s in self.scenarios],
        }


def _rng(seed: int, *keys: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, *keys]))


def _choice(rng: np.random.Generator, weights: Sequence[float], size: int) -> np.ndarray:
    p = np.asarray(weights, dtype=float)
    return rng.choice(len(p), size=size, p=p / p.sum()).astype(np.int8)


def _strings(values: Sequence[str], codes: np.ndarray) -> pa.Array:
    return pa.DictionaryArray.from_arrays(pa.array(codes, pa.int8()), pa.array(values)).cast(pa.string())


def _encode(table: pa.Table, file_format: str) -> bytes:
    sink = io.BytesIO()
    if file_format == "parquet":
        pq.write_table(
            table,
            sink,
            compression="zstd",
            compression_level=3,
            use_dictionary=True,
            write_statistics=True,
            version="2.6",
            data_page_version="1.0",
            row_group_size=1 << 20,
            store_schema=True,
        )
    else:
        pacsv.write_csv(table, sink, pacsv.WriteOptions(include_header=True))
    return sink.getvalue()


class _World:
    """State of every customer (initial and future signups), advanced one day at a time."""

    def __init__(self, customers: int, days: int, start: date, seed: int, params: WorldParams) -> None:
        self.p = params
        self.start_us = (start - _EPOCH).days * DAY_US
        rng = _rng(seed, 0)
        self.signups_per_day = rng.poisson(params.signup_rate * customers, size=days)
        total = customers + int(self.signups_per_day.sum())
        self.total = total
        self.plan = _choice(rng, params.plan_weights, total)
        self.region = _choice(rng, params.region_weights, total)
        self.age = _choice(rng, params.age_weights, total)
        self.engagement = rng.normal(np.asarray(params.age_engagement_shift)[self.age], params.engagement_sd)
        self.mood = rng.normal(0.0, params.mood_sd, total)
        self.spend = params.mean_order_value * rng.lognormal(-0.06, 0.35, total)
        signup_day = np.empty(total, dtype=np.int64)
        signup_day[:customers] = -rng.integers(1, 731, customers)
        signup_day[customers:] = np.repeat(np.arange(days), self.signups_per_day)
        self.signup_day = signup_day
        self.active_from = np.where(
            signup_day < 0,
            self.start_us,
            self.start_us + signup_day * DAY_US + rng.integers(0, DAY_US, total),
        )
        self.active_until = np.full(total, np.iinfo(np.int64).max, dtype=np.int64)
        w = params.window_days
        self.first_label_day = np.where(
            signup_day < 0, w + rng.integers(0, params.label_every_days, total), signup_day + w
        )
        width = max(6, len(str(total - 1)))
        self.customer_ids = pc.binary_join_element_wise(
            "C", pc.utf8_lpad(pc.cast(pa.array(np.arange(total)), pa.string()), width, "0"), ""
        )
        self.window = np.zeros((w, 4, total), dtype=np.float64)  # logins, purchases, tickets, value per day
        self.window_sum = np.zeros((4, total), dtype=np.float64)
        self.last_login_day = np.full(total, -(10**6), dtype=np.int64)
        self.churned = np.zeros(total, dtype=bool)

    def customers_table(self, idx: np.ndarray, updated_us: np.ndarray) -> pa.Table:
        start_epoch_day = self.start_us // DAY_US
        return pa.table(
            [
                self.customer_ids.take(pa.array(idx)),
                pa.array((start_epoch_day + self.signup_day[idx]).astype(np.int32), pa.date32()),
                _strings(PLANS, self.plan[idx]),
                _strings(REGIONS, self.region[idx]),
                _strings(AGE_GROUPS, self.age[idx]),
                pa.array(updated_us, CUSTOMERS.field("updated_at").type),
            ],
            schema=CUSTOMERS,
        )

    def labels(self, d: int, rng: np.random.Generator, concept_drift: bool) -> pa.Table:
        p = self.p
        due = (
            ~self.churned
            & (self.signup_day < d)
            & (d >= self.first_label_day)
            & ((d - self.first_label_day) % p.label_every_days == 0)
        )
        idx = np.flatnonzero(due)
        s = self.window_sum[:, idx]
        stats = WindowStats(s[0], s[1], s[2], s[3], (d - self.last_login_day[idx]).astype(float))
        prob = 1.0 / (1.0 + np.exp(-churn_logit(stats, self.plan[idx], concept_drift, p)))
        churned = rng.random(len(idx)) < prob
        label_us = self.start_us + d * DAY_US + rng.integers(0, DAY_US, len(idx))
        self.active_until[idx[churned]] = label_us[churned]
        self.churned[idx[churned]] = True
        order = np.lexsort((idx, label_us))
        return pa.table(
            [
                self.customer_ids.take(pa.array(idx[order])),
                pa.array(label_us[order], RAW_LABELS.field("label_timestamp").type),
                pa.array(churned[order].astype(np.int64), pa.int64()),
            ],
            schema=RAW_LABELS,
        )

    def events(
        self, d: int, rng: np.random.Generator, login_factor: np.ndarray, amount_factor: np.ndarray
    ) -> pa.Table:
        p = self.p
        day_us = self.start_us + d * DAY_US
        act = np.flatnonzero((self.signup_day <= d) & (self.active_until > day_us))
        z = self.engagement[act] + self.mood[act]
        n_login = rng.poisson(p.login_rate * np.exp(p.login_sensitivity * z) * login_factor[act])
        n_purchase = rng.poisson(p.purchase_rate * np.exp(p.purchase_sensitivity * z))
        n_ticket = rng.poisson(p.ticket_rate * np.exp(p.ticket_sensitivity * z))
        cust = np.concatenate([np.repeat(act, n_login), np.repeat(act, n_purchase), np.repeat(act, n_ticket)])
        kind = np.repeat(
            np.array([_LOGIN, _PURCHASE, _TICKET], dtype=np.int8),
            [n_login.sum(), n_purchase.sum(), n_ticket.sum()],
        )
        ts = day_us + rng.integers(0, DAY_US, len(cust))
        noise = rng.lognormal(-0.08, 0.4, len(cust))
        order_value = (
            self.spend[cust] * np.asarray(p.plan_order_value)[self.plan[cust]] * amount_factor[cust] * noise
        )
        amount = np.where(kind == _PURCHASE, np.maximum(np.round(order_value, 2), 0.5), np.nan)
        keep = (ts >= self.active_from[cust]) & (ts < self.active_until[cust])
        cust, kind, ts, amount = cust[keep], kind[keep], ts[keep], amount[keep]
        order = np.lexsort((kind, cust, ts))
        cust, kind, ts, amount = cust[order], kind[order], ts[order], amount[order]
        self._remember(d, cust, kind, amount)
        tag = (_EPOCH + timedelta(days=int(day_us // DAY_US))).strftime("E%Y%m%d-")
        seq = pc.utf8_lpad(pc.cast(pa.array(np.arange(len(cust))), pa.string()), 7, "0")
        return pa.table(
            [
                pc.binary_join_element_wise(tag, seq, ""),
                self.customer_ids.take(pa.array(cust)),
                pa.array(ts, RAW_EVENTS.field("event_timestamp").type),
                _strings(EVENT_TYPES, kind),
                pa.array(amount, pa.float64(), from_pandas=True),
            ],
            schema=RAW_EVENTS,
        )

    def _remember(self, d: int, cust: np.ndarray, kind: np.ndarray, amount: np.ndarray) -> None:
        n = self.total
        today = np.stack(
            [
                np.bincount(cust[kind == _LOGIN], minlength=n),
                np.bincount(cust[kind == _PURCHASE], minlength=n),
                np.bincount(cust[kind == _TICKET], minlength=n),
                np.bincount(cust, weights=np.nan_to_num(amount), minlength=n),
            ]
        ).astype(np.float64)
        slot = d % self.p.window_days
        self.window_sum += today - self.window[slot]
        self.window[slot] = today
        self.last_login_day[today[0] > 0] = d

    def advance_mood(self, rng: np.random.Generator) -> None:
        rho = self.p.mood_persistence
        self.mood = rho * self.mood + np.sqrt(1 - rho**2) * self.p.mood_sd * rng.standard_normal(self.total)

    def customer_records(self, d: int, initial: int, rng: np.random.Generator) -> pa.Table:
        """The day's customer records: the initial population on day 0, then signups and plan changes."""
        new = np.flatnonzero(self.signup_day == d)
        changed, changed_us = self.plan_changes(d, rng)
        idx = np.concatenate([np.arange(initial if d == 0 else 0), new, changed])
        updated = np.concatenate(
            [np.full(initial if d == 0 else 0, self.start_us), self.active_from[new], changed_us]
        )
        order = np.argsort(idx, kind="stable")
        return self.customers_table(idx[order], updated[order].astype(np.int64))

    def plan_changes(self, d: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        day_us = self.start_us + d * DAY_US
        eligible = np.flatnonzero((self.signup_day < d) & (self.active_until == np.iinfo(np.int64).max))
        idx = eligible[rng.random(len(eligible)) < self.p.plan_change_rate] if d > 0 else eligible[:0]
        self.plan[idx] = (self.plan[idx] + rng.integers(1, len(PLANS), len(idx))) % len(PLANS)
        return idx, day_us + rng.integers(0, DAY_US, len(idx))


def simulate(
    out: Path,
    customers: int = 5000,
    days: int = 120,
    start: str = "2026-01-01",
    seed: int = 0,
    scenarios: Sequence[str | Scenario] = (),
    file_format: str = "parquet",
    params: WorldParams | None = None,
) -> SimulationSummary:
    """Simulate the shop for ``days`` days and write one events, labels and customers file per day under ``out``.

    Files are ``out/<table>/<table>_YYYY-MM-DD.<parquet|csv>`` (tables: events, labels, customers), written
    atomically; the same arguments always give byte-identical files. Labels begin once a customer has a full
    ``params.window_days`` of history in the data (day 30 for the initial population), then come monthly.
    Scenarios are names like ``covariate_drift``, ``concept_drift@day60`` or ``quality_incident@2026-02-15``.
    """
    if customers < 1 or days < 1:
        raise ValueError(f"customers and days must be positive, got customers={customers}, days={days}")
    if seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed}")
    if file_format not in FILE_FORMATS:
        raise ValueError(f"file_format must be one of {FILE_FORMATS}, got {file_format!r}")
    params = params or WorldParams()
    first = date.fromisoformat(start)
    out = Path(out)
    parsed = [parse_scenario(s) for s in scenarios]
    applied = [(s, s.start_day(first, days), s.resolved_params()) for s in parsed]
    names = [s.name for s, _, _ in applied]
    if len(set(names)) != len(names):
        raise ValueError(f"each scenario may be applied once, got {names}")
    by_name = {s.name: (day, prm) for s, day, prm in applied}
    injected: dict[str, dict[str, int]] = {}

    world = _World(customers, days, first, seed, params)
    login_factor = np.ones(world.total)
    amount_factor = np.ones(world.total)
    files: list[Path] = []
    rows = dict.fromkeys(TABLE_FOLDERS, 0)
    labels_total = churned_total = 0
    ext = file_format

    def write(folder: str, day_text: str, table: pa.Table) -> None:
        path = out / folder / f"{folder}_{day_text}.{ext}"
        files.append(write_file_atomic(_encode(table, file_format), path))
        rows[folder] += table.num_rows

    for d in range(days):
        day_text = (first + timedelta(days=d)).isoformat()
        rng = _rng(seed, 1, d)
        world.advance_mood(rng)
        if "covariate_drift" in by_name and d == by_name["covariate_drift"][0]:
            cov = by_name["covariate_drift"][1]
            drifted = world.region == REGIONS.index(cov["region"])
            login_factor[drifted] = cov["login_factor"]
            amount_factor[drifted] = cov["amount_factor"]
        concept = "concept_drift" in by_name and d >= by_name["concept_drift"][0]

        labels = world.labels(d, rng, concept)
        labels_total += labels.num_rows
        churned_total += int(pc.sum(labels.column("churned")).as_py() or 0)
        write("labels", day_text, labels)

        write("customers", day_text, world.customer_records(d, customers, rng))

        events = world.events(d, rng, login_factor, amount_factor)
        if "quality_incident" in by_name and d == by_name["quality_incident"][0]:
            incident_rng = _rng(seed, 2, d)
            qi = by_name["quality_incident"][1]
            events, counts = inject_quality_incident(events, qi, incident_rng)
            injected["quality_incident"] = counts
            extra = out / "events" / f"events_{day_text}_extra.{ext}"
            files.append(write_file_atomic(garbage_bytes(int(qi["garbage_bytes"]), incident_rng), extra))
        write("events", day_text, events)

    return SimulationSummary(
        out=out,
        start=first.isoformat(),
        days=days,
        customers=customers,
        seed=seed,
        file_format=file_format,
        files=files,
        rows=rows,
        scenarios=[
            AppliedScenario(
                name=s.name,
                day=day,
                date=(first + timedelta(days=day)).isoformat(),
                params=prm,
                injected=injected.get(s.name, {}),
            )
            for s, day, prm in applied
        ],
        churn_rate=churned_total / labels_total if labels_total else 0.0,
        customers_total=world.total,
    )
