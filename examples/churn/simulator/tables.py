"""The landing-file schemas the simulator writes (the same columns as the example's spec.yaml)."""

import pyarrow as pa

EVENT_TYPES = ("login", "purchase", "support_ticket")
PLANS = ("basic", "standard", "premium")
REGIONS = ("north", "south", "east", "west")
AGE_GROUPS = ("18-24", "25-34", "35-49", "50+")
UTC_TS = pa.timestamp("us", tz="UTC")

RAW_EVENTS = pa.schema(
    [
        pa.field("event_id", pa.string(), nullable=False),
        pa.field("customer_id", pa.string(), nullable=False),
        pa.field("event_timestamp", UTC_TS, nullable=False),
        pa.field("event_type", pa.string(), nullable=False),
        pa.field("amount", pa.float64()),
    ]
)
RAW_LABELS = pa.schema(
    [
        pa.field("customer_id", pa.string(), nullable=False),
        pa.field("label_timestamp", UTC_TS, nullable=False),
        pa.field("churned", pa.int64(), nullable=False),
    ]
)
CUSTOMERS = pa.schema(
    [
        pa.field("customer_id", pa.string(), nullable=False),
        pa.field("signup_date", pa.date32(), nullable=False),
        pa.field("plan", pa.string(), nullable=False),
        pa.field("region", pa.string(), nullable=False),
        pa.field("age_group", pa.string(), nullable=False),
        pa.field("updated_at", UTC_TS, nullable=False),
    ]
)
