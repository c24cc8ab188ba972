"""Dated, switchable scenarios of the churn world: covariate drift, concept drift, data-quality incidents."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .tables import REGIONS, UTC_TS


@dataclass(frozen=True)
class ScenarioInfo:
    """What a scenario does, when it starts by default, and its parameters with their defaults."""

    name: str
    description: str
    default_start_fraction: float  # default start day = int(fraction * days)
    defaults: Mapping[str, Any]
    one_day: bool = False  # True when the scenario affects only its start day


SCENARIOS: dict[str, ScenarioInfo] = {
    info.name: info
    for info in (
        ScenarioInfo(
            name="covariate_drift",
            description=(
                "From its date on, customers of one region change behaviour: purchase amounts are multiplied by "
                "`amount_factor` and login rates by `login_factor`. The churn rule itself is unchanged "
                "(P(x) moves, P(y|x) does not)."
            ),
            default_start_fraction=0.5,
            defaults={"region": "west", "amount_factor": 1.8, "login_factor": 0.5},
        ),
        ScenarioInfo(
            name="concept_drift",
            description=(
                "From its date on, the churn rule changes while behaviour does not: support tickets stop "
                "mattering and a low 30-day purchase value starts to matter strongly (P(y|x) moves, P(x) does not)."
            ),
            default_start_fraction=0.5,
            defaults={},
        ),
        ScenarioInfo(
            name="quality_incident",
            description=(
                "On one day the events landing file is broken: some null customer_ids, some negative amounts, "
                "duplicated events (same event_id repeated), the `amount` column written as strings with a few "
                "unparsable values ('n/a'), plus an extra file events_<day>_extra.<ext> of garbage bytes. "
                "Bad rows stay around 1-3% of the day's rows; the counts injected are in the summary."
            ),
            default_start_fraction=0.375,
            defaults={
                "null_customer_id_rate": 0.004,
                "negative_amount_rate": 0.004,
                "duplicate_rate": 0.004,
                "unparsable_amount_rate": 0.002,
                "garbage_bytes": 4096,
            },
            one_day=True,
        ),
    )
}

_SPEC = re.compile(r"^(?P<name>[a-z_]+)(?:@(?:day(?P<day>\d+)|(?P<date>\d{4}-\d{2}-\d{2})))?$")


@dataclass(frozen=True)
class Scenario:
    """A scenario switched on from a day offset (int) or an ISO date (str); None means its default day."""

    name: str
    start: int | str | None = None
    params: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.name not in SCENARIOS:
            raise ValueError(f"unknown scenario {self.name!r}; expected one of {sorted(SCENARIOS)}")
        unknown = set(self.params) - set(SCENARIOS[self.name].defaults)
        if unknown:
            raise ValueError(
                f"scenario {self.name!r} got unknown parameters {sorted(unknown)}; "
                f"expected some of {sorted(SCENARIOS[self.name].defaults)}"
            )
        if (
            self.name == "covariate_drift"
            and "region" in self.params
            and self.params["region"] not in REGIONS
        ):
            raise ValueError(
                f"covariate_drift region must be one of {REGIONS}, got {self.params['region']!r}"
            )

    @property
    def info(self) -> ScenarioInfo:
        return SCENARIOS[self.name]

    def resolved_params(self) -> dict[str, Any]:
        """The scenario's parameters: defaults overridden by the given ones."""
        return {**self.info.defaults, **self.params}

    def start_day(self, start: date, days: int) -> int:
        """Day offset (0 = the simulation's first day) at which the scenario switches on."""
        if self.start is None:
            offset = int(self.info.default_start_fraction * days)
        elif isinstance(self.start, int):
            offset = self.start
        else:
            offset = (date.fromisoformat(self.start) - start).days
        if not 0 <= offset < days:
            last = start + timedelta(days=days - 1)
            raise ValueError(
                f"scenario {self.name!r} starts at day {offset} ({start + timedelta(days=offset)}), "
                f"outside the simulated days {start}..{last}"
            )
        return offset

    def __str__(self) -> str:
        if self.start is None:
            return self.name
        return f"{self.name}@day{self.start}" if isinstance(self.start, int) else f"{self.name}@{self.start}"


def parse_scenario(spec: str | Scenario) -> Scenario:
    """Parse `name`, `name@dayN` or `name@YYYY-MM-DD` into a :class:`Scenario`."""
    if isinstance(spec, Scenario):
        return spec
    match = _SPEC.match(spec.strip())
    if match is None:
        raise ValueError(f"cannot parse scenario {spec!r}; expected NAME, NAME@dayN or NAME@YYYY-MM-DD")
    if match["day"] is not None:
        return Scenario(match["name"], int(match["day"]))
    if match["date"] is not None:
        date.fromisoformat(match["date"])
        return Scenario(match["name"], match["date"])
    return Scenario(match["name"])


def list_scenarios() -> list[ScenarioInfo]:
    """Every available scenario with its description and default parameters."""
    return list(SCENARIOS.values())


def inject_quality_incident(
    events: pa.Table, params: Mapping[str, Any], rng: np.random.Generator
) -> tuple[pa.Table, dict[str, int]]:
    """Break a clean events table the way the `quality_incident` scenario documents; return it and the counts."""
    n = events.num_rows
    amount = events.column("amount").to_numpy(zero_copy_only=False)
    is_purchase = ~np.isnan(amount)
    order = rng.permutation(n)
    purchases = order[is_purchase[order]]
    others = order[~is_purchase[order]]

    n_negative = min(int(round(params["negative_amount_rate"] * n)), len(purchases) // 2)
    n_unparsable = min(int(round(params["unparsable_amount_rate"] * n)), len(purchases) - n_negative)
    negative = purchases[:n_negative]
    unparsable = purchases[n_negative : n_negative + n_unparsable]
    untouched = np.concatenate([purchases[n_negative + n_unparsable :], others])
    untouched = untouched[rng.permutation(len(untouched))]
    n_null = min(int(round(params["null_customer_id_rate"] * n)), len(untouched))
    n_dup = min(int(round(params["duplicate_rate"] * n)), len(untouched) - n_null)
    null_ids = untouched[:n_null]
    duplicated = untouched[n_null : n_null + n_dup]

    amount = amount.copy()
    amount[negative] = -amount[negative]
    text = pc.cast(pa.array(amount, pa.float64(), from_pandas=True), pa.string()).to_numpy(
        zero_copy_only=False
    )
    text = text.astype(object)
    text[unparsable] = np.array(["n/a", "12,50", "??", "unknown"], dtype=object)[
        np.arange(len(unparsable)) % 4
    ]
    customer = events.column("customer_id").to_numpy(zero_copy_only=False).astype(object)
    customer[null_ids] = None

    broken_schema = pa.schema(
        [
            pa.field("event_id", pa.string(), nullable=False),
            pa.field("customer_id", pa.string()),
            pa.field("event_timestamp", UTC_TS, nullable=False),
            pa.field("event_type", pa.string(), nullable=False),
            pa.field("amount", pa.string()),
        ]
    )
    broken = pa.table(
        [
            events.column("event_id"),
            pa.array(customer, pa.string()),
            events.column("event_timestamp"),
            events.column("event_type"),
            pa.array(text, pa.string()),
        ],
        schema=broken_schema,
    )
    rows = np.sort(np.concatenate([np.arange(n), duplicated]), kind="stable")
    broken = broken.take(pa.array(rows))
    counts = {
        "rows_clean": n,
        "rows_written": broken.num_rows,
        "null_customer_id": int(n_null),
        "negative_amount": int(n_negative),
        "duplicate_event": int(n_dup),
        "unparsable_amount": int(n_unparsable),
        "amount_as_string": 1,
        "corrupt_files": 1,
    }
    return broken, counts


def garbage_bytes(size: int, rng: np.random.Generator) -> bytes:
    """Random bytes that no Parquet or CSV reader accepts (no Parquet magic, invalid UTF-8)."""
    data = bytearray(rng.integers(0, 256, size=max(size, 16), dtype=np.uint8).tobytes())
    data[:4] = b"\xff\xfeJK"
    data[-4:] = b"JUNK"
    return bytes(data)
