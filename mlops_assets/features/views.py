"""Feature view definitions: the features of the churn model, written as data.

A :class:`FeatureView` says *what* to compute (aggregations over time windows of one source
table, keyed by ``customer_id``); :mod:`mlops_assets.features.compute` turns it into DuckDB SQL.
Day D's row for an entity holds its values as of D+1 00:00 UTC, from events strictly before that
time (the row's ``feature_timestamp``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from datetime import timedelta

#: Aggregations a :class:`Feature` can use.
#: ``count`` / ``sum`` / ``mean`` / ``max`` of ``column`` over the last ``window_days`` days;
#: ``days_since_last``: days (fractional) from the last matching event to the feature timestamp,
#: null when there was none within the view's lookback;
#: ``days_since``: days from a date column (e.g. signup) to the feature timestamp;
#: ``latest``: the column's value in the entity's latest record (slowly changing attributes).
AGGREGATIONS = ("count", "sum", "mean", "max", "days_since_last", "days_since", "latest")

#: Tag on features that must not be model inputs (used for fairness checks only).
SENSITIVE_TAG = "sensitive"

DTYPES = ("int64", "float64", "string")


@dataclass(frozen=True)
class Feature:
    """One feature column: its name, type, meaning and how it is aggregated."""

    name: str
    dtype: str
    description: str
    aggregation: str
    column: str | None = None  # source column aggregated (None for count / days_since_last)
    event_type: str | None = None  # only events of this type count (raw_events sources)
    window_days: int | None = None  # window of count/sum/mean/max
    categorical: bool = False
    tags: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.aggregation not in AGGREGATIONS:
            raise ValueError(
                f"feature {self.name!r}: aggregation must be one of {AGGREGATIONS}, got {self.aggregation!r}"
            )
        if self.dtype not in DTYPES:
            raise ValueError(f"feature {self.name!r}: dtype must be one of {DTYPES}, got {self.dtype!r}")
        if self.aggregation in ("count", "sum", "mean", "max") and not self.window_days:
            raise ValueError(f"feature {self.name!r}: a {self.aggregation} needs window_days")
        if self.aggregation in ("sum", "mean", "max", "days_since", "latest") and not self.column:
            raise ValueError(f"feature {self.name!r}: a {self.aggregation} needs a source column")

    @property
    def sensitive(self) -> bool:
        return SENSITIVE_TAG in self.tags


@dataclass(frozen=True)
class FeatureView:
    """A group of features of one entity from one source table, computed daily.

    ``ttl``: how old a feature row may be and still be joined to a label or served online
    (None: no limit). ``lookback_days``: how many daily source partitions one day's computation
    reads (None: every partition up to the day, for small slowly-changing tables).
    """

    name: str
    features: tuple[Feature, ...]
    description: str
    owner: str
    entity: str = "customer_id"
    source: str = "raw_events"
    ttl: timedelta | None = None
    lookback_days: int | None = 90
    tags: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        names = [f.name for f in self.features]
        if len(set(names)) != len(names):
            raise ValueError(f"view {self.name!r} has duplicate feature names")
        windows = [f.window_days for f in self.features if f.window_days]
        if self.lookback_days is not None and windows and max(windows) > self.lookback_days:
            raise ValueError(
                f"view {self.name!r}: a window is longer than lookback_days={self.lookback_days}"
            )

    @property
    def feature_names(self) -> list[str]:
        return [f.name for f in self.features]

    def feature(self, name: str) -> Feature:
        for feat in self.features:
            if feat.name == name:
                return feat
        raise KeyError(f"view {self.name!r} has no feature {name!r}; it has {self.feature_names}")

    def definition(self) -> dict:
        """The view as plain JSON-able data (what :meth:`version` hashes)."""
        data = dataclasses.asdict(self)
        data["ttl"] = None if self.ttl is None else self.ttl.total_seconds()
        return data

    def version(self) -> str:
        """Hash of the definition: changes exactly when this view's definition changes."""
        text = json.dumps(self.definition(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:16]


WINDOWS = (7, 30, 90)


def _window_features(prefix: str, event_type: str, description: str) -> tuple[Feature, ...]:
    return tuple(
        Feature(
            f"{prefix}_{w}d",
            "int64",
            f"{description} in the last {w} days.",
            "count",
            event_type=event_type,
            window_days=w,
        )
        for w in WINDOWS
    )


def _days_since_last(name: str, event_type: str, what: str) -> Feature:
    """Recency of the last event of a type (null when none within the view's lookback)."""
    return Feature(
        name,
        "float64",
        f"Days from the last {what} to the feature time; null if no {what} in the last 90 days.",
        "days_since_last",
        event_type=event_type,
        tags=("recency",),
    )


def _purchase_features() -> tuple[Feature, ...]:
    feats: list[Feature] = []
    for w in WINDOWS:
        feats += [
            Feature(
                f"total_purchases_{w}d",
                "int64",
                f"Number of purchases in the last {w} days.",
                "count",
                event_type="purchase",
                window_days=w,
                tags=("frequency",),
            ),
            Feature(
                f"total_spend_{w}d",
                "float64",
                f"Sum of purchase amounts in the last {w} days (0 if none).",
                "sum",
                column="amount",
                event_type="purchase",
                window_days=w,
                tags=("monetary",),
            ),
            Feature(
                f"avg_order_value_{w}d",
                "float64",
                f"Mean purchase amount in the last {w} days (null if no purchase).",
                "mean",
                column="amount",
                event_type="purchase",
                window_days=w,
                tags=("monetary",),
            ),
            Feature(
                f"max_order_value_{w}d",
                "float64",
                f"Largest purchase amount in the last {w} days (null if no purchase).",
                "max",
                column="amount",
                event_type="purchase",
                window_days=w,
                tags=("monetary",),
            ),
        ]
    return tuple(feats)


PURCHASE_ACTIVITY = FeatureView(
    name="purchase_activity",
    description="Purchase frequency and monetary value over 7, 30 and 90 days (one row per customer "
    "with a purchase in the last 90 days).",
    owner="growth-analytics",
    features=_purchase_features(),
    ttl=timedelta(days=2),
    lookback_days=90,
    tags=("churn", "monetary", "frequency"),
)

ENGAGEMENT = FeatureView(
    name="engagement",
    description="Logins over 7, 30 and 90 days and recency of logins and purchases (one row per customer "
    "with a login or purchase in the last 90 days).",
    owner="product-analytics",
    features=_window_features("logins", "login", "Number of logins")
    + (
        _days_since_last("days_since_last_login", "login", "login"),
        _days_since_last("days_since_last_purchase", "purchase", "purchase"),
    ),
    ttl=timedelta(days=2),
    lookback_days=90,
    tags=("churn", "engagement", "recency"),
)

SUPPORT = FeatureView(
    name="support",
    description="Support tickets over 7, 30 and 90 days and days since the last ticket (one row per "
    "customer with a ticket in the last 90 days).",
    owner="customer-care",
    features=_window_features("tickets", "support_ticket", "Number of support tickets")
    + (_days_since_last("days_since_last_ticket", "support_ticket", "support ticket"),),
    ttl=timedelta(days=2),
    lookback_days=90,
    tags=("churn", "support"),
)

CUSTOMER_PROFILE = FeatureView(
    name="customer_profile",
    description="Account age and the latest plan, region and age group of every known customer.",
    owner="customer-data",
    source="customers",
    features=(
        Feature(
            "account_age_days",
            "int64",
            "Whole days from the signup date to the feature time.",
            "days_since",
            column="signup_date",
        ),
        Feature(
            "plan",
            "string",
            "Subscription plan (basic, standard, premium).",
            "latest",
            column="plan",
            categorical=True,
        ),
        Feature(
            "region",
            "string",
            "Sales region (north, south, east, west).",
            "latest",
            column="region",
            categorical=True,
        ),
        Feature(
            "age_group",
            "string",
            "Age band. Sensitive: not a model input, used by the bias gate only.",
            "latest",
            column="age_group",
            categorical=True,
            tags=(SENSITIVE_TAG, "fairness"),
        ),
    ),
    ttl=None,
    lookback_days=None,
    tags=("churn", "profile"),
)

FEATURE_VIEWS: tuple[FeatureView, ...] = (PURCHASE_ACTIVITY, ENGAGEMENT, SUPPORT, CUSTOMER_PROFILE)


def validate_views(views: tuple[FeatureView, ...] | list[FeatureView]) -> None:
    """Raise ValueError when view names or feature names repeat across views."""
    seen_views: set[str] = set()
    seen: dict[str, str] = {}
    for view in views:
        if view.name in seen_views:
            raise ValueError(f"duplicate feature view {view.name!r}")
        seen_views.add(view.name)
        for name in view.feature_names:
            if name in seen:
                raise ValueError(f"feature {name!r} is defined in both {seen[name]!r} and {view.name!r}")
            seen[name] = view.name


validate_views(FEATURE_VIEWS)

VIEWS_BY_NAME: dict[str, FeatureView] = {v.name: v for v in FEATURE_VIEWS}


def get_view(name: str) -> FeatureView:
    """The registered view called ``name``."""
    try:
        return VIEWS_BY_NAME[name]
    except KeyError:
        raise KeyError(f"no feature view {name!r}; known views: {sorted(VIEWS_BY_NAME)}") from None


def model_feature_names(views: tuple[FeatureView, ...] = FEATURE_VIEWS) -> list[str]:
    """Features meant as model inputs (every feature not tagged sensitive)."""
    return [f.name for v in views for f in v.features if not f.sensitive]


def resolve_features(
    features: list[str] | tuple[str, ...] | None, views: tuple[FeatureView, ...] = FEATURE_VIEWS
) -> dict[str, list[str]]:
    """Map feature references to ``{view: [feature, ...]}`` in request order; None means all.

    A reference is ``"view:feature"``, ``"view:*"`` (every feature of the view) or a bare
    feature name (names are unique across views).
    """
    by_view = {v.name: v for v in views}
    if features is None:
        return {v.name: v.feature_names for v in views}
    if isinstance(features, str):
        raise TypeError("features must be a list of 'view:feature' strings, not one string")
    owner = {f: v.name for v in views for f in v.feature_names}
    out: dict[str, list[str]] = {}
    for ref in features:
        if ":" in ref:
            view_name, feat = ref.split(":", 1)
            if view_name not in by_view:
                raise KeyError(f"unknown feature view {view_name!r} in {ref!r}; known: {sorted(by_view)}")
            names = by_view[view_name].feature_names if feat == "*" else [feat]
            for name in names:
                by_view[view_name].feature(name)
        elif ref in owner:
            view_name, names = owner[ref], [ref]
        else:
            raise KeyError(f"unknown feature {ref!r}; use 'view:feature' (see list_features())")
        bucket = out.setdefault(view_name, [])
        bucket.extend(n for n in names if n not in bucket)
    return out
