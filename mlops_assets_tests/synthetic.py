"""A small synthetic training set with a learnable churn signal, for tests, benchmarks and examples."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd

from mlops_assets.training.task import CLASSIFICATION, REGRESSION, ModelTask

PLANS = ("basic", "standard", "premium")
REGIONS = ("north", "south", "east", "west")
AGE_GROUPS = ("18-24", "25-34", "35-49", "50+")

NUMERIC_FEATURES = [
    "logins_30d",
    "total_purchases_30d",
    "total_spend_30d",
    "avg_order_value_30d",
    "days_since_last_login",
    "tickets_30d",
    "account_age_days",
]
CATEGORICAL_FEATURES = ["plan", "region"]
SENSITIVE_ATTRIBUTES = ["age_group"]


def synthetic_training_set(
    n_rows: int = 400,
    n_days: int = 10,
    seed: int = 0,
    start: datetime = datetime(2026, 1, 1, tzinfo=UTC),
) -> pd.DataFrame:
    """Labelled customers over ``n_days`` label days; low engagement and many tickets raise churn odds."""
    rng = np.random.default_rng(seed)
    engagement = rng.normal(0.0, 1.0, n_rows)
    logins = rng.poisson(np.exp(1.8 + 0.6 * engagement))
    purchases = rng.poisson(np.exp(0.3 + 0.7 * engagement))
    values = np.where(purchases > 0, rng.gamma(4.0, 9.0, n_rows), np.nan)
    spend = np.where(purchases > 0, purchases * values, 0.0)
    tickets = rng.poisson(np.exp(-1.5 - 0.8 * engagement))
    since_login = np.where(logins > 0, rng.exponential(30.0 / (logins + 1.0)), np.nan)
    plan = rng.choice(PLANS, n_rows, p=[0.5, 0.3, 0.2])
    logit = (
        2.4
        - 1.6 * np.log1p(logins)
        - 1.2 * np.log1p(purchases)
        + 0.9 * np.minimum(tickets, 10)
        + 0.08 * np.nan_to_num(np.minimum(since_login, 30.0), nan=30.0)
        + np.select([plan == "basic", plan == "premium"], [0.6, -0.6], 0.0)
    )
    churned = (rng.random(n_rows) < 1.0 / (1.0 + np.exp(-logit))).astype("int64")
    day = rng.integers(0, n_days, n_rows)
    seconds = rng.integers(0, 86_400, n_rows)
    stamps = [start + timedelta(days=int(d), seconds=int(s)) for d, s in zip(day, seconds, strict=True)]
    frame = pd.DataFrame(
        {
            "customer_id": [f"C{i:06d}" for i in range(n_rows)],
            "label_timestamp": pd.to_datetime(stamps, utc=True),
            "churned": churned,
            "logins_30d": logins.astype("float64"),
            "total_purchases_30d": purchases.astype("float64"),
            "total_spend_30d": spend,
            "avg_order_value_30d": values,
            "days_since_last_login": since_login,
            "tickets_30d": tickets.astype("float64"),
            "account_age_days": rng.integers(30, 2000, n_rows).astype("float64"),
            "plan": pd.array(plan, dtype="str"),
            "region": pd.array(rng.choice(REGIONS, n_rows), dtype="str"),
            "age_group": pd.array(rng.choice(AGE_GROUPS, n_rows), dtype="str"),
        }
    )
    return frame.sort_values(["label_timestamp", "customer_id"]).reset_index(drop=True)


REGRESSION_NUMERIC = ["load", "temperature", "lag_signal"]
REGRESSION_CATEGORICAL = ["zone"]
ZONE_EFFECT = {"a": 0.0, "b": 6.0, "c": -4.0}


def synthetic_regression_set(
    n_entities: int = 40,
    n_days: int = 20,
    seed: int = 0,
    delay_days: int = 3,
    start: datetime = datetime(2026, 3, 1, tzinfo=UTC),
) -> pd.DataFrame:
    """One row per integer-keyed entity and day: the target is linear in the inputs plus a zone effect, a small
    entity level and noise; each label becomes known ``delay_days`` after the row's time (column ``observed_at``)."""
    rng = np.random.default_rng(seed)
    level = rng.normal(0.0, 1.0, n_entities)
    zone = rng.choice(list(ZONE_EFFECT), n_entities)
    rows = []
    for day in range(n_days):
        at = start + timedelta(days=day)
        load = rng.gamma(4.0, 2.5, n_entities)
        temperature = rng.normal(15.0, 6.0, n_entities)
        lag_signal = rng.normal(0.0, 1.0, n_entities)
        target = (
            20.0
            + 2.0 * load
            - 0.8 * temperature
            + 3.0 * lag_signal
            + np.vectorize(ZONE_EFFECT.get)(zone)
            + level
            + rng.normal(0.0, 1.0, n_entities)
        )
        rows.append(
            pd.DataFrame(
                {
                    "station_id": np.arange(n_entities, dtype="int64"),
                    "as_of": pd.Timestamp(at),
                    "observed_at": pd.Timestamp(at + timedelta(days=delay_days)),
                    "demand": target,
                    "load": load,
                    "temperature": temperature,
                    "lag_signal": lag_signal,
                    "zone": pd.array(zone, dtype="str"),
                }
            )
        )
    return pd.concat(rows, ignore_index=True)


#: The model task of :func:`synthetic_training_set` (age group: a sensitive attribute, never an input).
SYNTHETIC_TASK = ModelTask(
    kind=CLASSIFICATION,
    entity="customer_id",
    time="label_timestamp",
    label="churned",
    observed="label_timestamp",
    model_name="synthetic-churn",
    experiment="synthetic",
    sensitive=tuple(SENSITIVE_ATTRIBUTES),
    segments=("plan", "region", "age_group"),
    candidates=(*NUMERIC_FEATURES, *CATEGORICAL_FEATURES),
    categorical=frozenset(CATEGORICAL_FEATURES),
    metric="roc_auc",
)
#: The model task of :func:`synthetic_regression_set` (labels known ``delay_days`` after their time).
SYNTHETIC_REGRESSION_TASK = ModelTask(
    kind=REGRESSION,
    entity="station_id",
    time="as_of",
    label="demand",
    observed="observed_at",
    model_name="synthetic-demand",
    experiment="synthetic",
    segments=("zone",),
    candidates=(*REGRESSION_NUMERIC, *REGRESSION_CATEGORICAL),
    categorical=frozenset(REGRESSION_CATEGORICAL),
    metric="mae",
)
