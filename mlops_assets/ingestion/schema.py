"""The landing-file and warehouse contracts of the ingested tables (definitions are data)."""

from __future__ import annotations

from dataclasses import dataclass, field

import pyarrow as pa

EVENT_TYPES = ("login", "purchase", "support_ticket")
PLANS = ("basic", "standard", "premium")
REGIONS = ("north", "south", "east", "west")
AGE_GROUPS = ("18-24", "25-34", "35-49", "50+")

UTC_TS = pa.timestamp("us", tz="UTC")


@dataclass(frozen=True)
class ColumnSpec:
    name: str
    dtype: pa.DataType
    description: str
    required: bool = True  # column must be present in every landing file
    nullable: bool = False  # null values allowed in kept rows
    allowed: tuple[str, ...] | None = None  # closed set of values, if any
    min_value: float | None = None


@dataclass(frozen=True)
class TableContract:
    """One ingested table: its columns, its key, and the timestamp that places a row in a day."""

    name: str
    landing_folder: str
    description: str
    columns: tuple[ColumnSpec, ...]
    partition_column: str  # UTC timestamp that must fall inside the partition's day
    unique_key: tuple[str, ...] = field(default_factory=tuple)  # duplicates beyond the first are quarantined
    sort_by: tuple[str, ...] = field(default_factory=tuple)

    @property
    def schema(self) -> pa.Schema:
        return pa.schema([pa.field(c.name, c.dtype, nullable=c.nullable) for c in self.columns])

    @property
    def column_names(self) -> list[str]:
        return [c.name for c in self.columns]

    def column(self, name: str) -> ColumnSpec:
        for col in self.columns:
            if col.name == name:
                return col
        raise KeyError(name)


RAW_EVENTS = TableContract(
    name="raw_events",
    landing_folder="events",
    description="Customer activity events (logins, purchases, support tickets), one partition per UTC day.",
    columns=(
        ColumnSpec("event_id", pa.string(), "Unique id of the event."),
        ColumnSpec("customer_id", pa.string(), "Customer the event belongs to, e.g. C000123."),
        ColumnSpec("event_timestamp", UTC_TS, "When the event happened (UTC)."),
        ColumnSpec("event_type", pa.string(), "login, purchase or support_ticket.", allowed=EVENT_TYPES),
        ColumnSpec(
            "amount",
            pa.float64(),
            "Order value of a purchase; null for other event types.",
            nullable=True,
            min_value=0.0,
        ),
    ),
    partition_column="event_timestamp",
    unique_key=("event_id",),
    sort_by=("event_timestamp", "event_id"),
)

RAW_LABELS = TableContract(
    name="raw_labels",
    landing_folder="labels",
    description="Churn outcomes observed per customer, one partition per UTC day of the label timestamp.",
    columns=(
        ColumnSpec("customer_id", pa.string(), "Customer the label is about."),
        ColumnSpec("label_timestamp", UTC_TS, "When the outcome was observed (UTC)."),
        ColumnSpec("churned", pa.int8(), "1 if the customer churned, else 0.", allowed=("0", "1")),
    ),
    partition_column="label_timestamp",
    sort_by=("label_timestamp", "customer_id"),
)

CUSTOMERS = TableContract(
    name="customers",
    landing_folder="customers",
    description=(
        "Customer records created or changed on the day (signup, plan change); the latest record per "
        "customer is the customer's current state. age_group is a sensitive attribute used by the bias gate."
    ),
    columns=(
        ColumnSpec("customer_id", pa.string(), "Customer id, e.g. C000123."),
        ColumnSpec("signup_date", pa.date32(), "Day the customer signed up."),
        ColumnSpec("plan", pa.string(), "Subscription plan.", allowed=PLANS),
        ColumnSpec("region", pa.string(), "Sales region.", allowed=REGIONS),
        ColumnSpec("age_group", pa.string(), "Age band (sensitive attribute).", allowed=AGE_GROUPS),
        ColumnSpec("updated_at", UTC_TS, "When this record was written (UTC)."),
    ),
    partition_column="updated_at",
    unique_key=("customer_id",),
    sort_by=("customer_id",),
)

CONTRACTS: dict[str, TableContract] = {c.name: c for c in (RAW_EVENTS, RAW_LABELS, CUSTOMERS)}
