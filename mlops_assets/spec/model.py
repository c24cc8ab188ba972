"""The project spec as typed objects: what a user declares about their data and model (no Dagster here).

A spec is one YAML file (see :mod:`mlops_assets.spec.load`) or the same objects built in Python.
Every object is immutable and validated where it is built; cross references (a view's source, a
feature's column, a filter's columns) are checked by :func:`mlops_assets.spec.check.check_project`.
"""

from __future__ import annotations

import re
from datetime import date, timedelta
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, PlainSerializer, field_validator

COLUMN_TYPES = ("string", "int64", "float64", "bool", "timestamp", "date")
SOURCE_KINDS = ("events", "snapshot", "labels")
AGGREGATIONS = (
    "count",
    "sum",
    "mean",
    "min",
    "max",
    "distinct_count",
    "latest",
    "days_since_last",
    "days_since_first",
    "days_since",
)
#: Aggregations over the records of an event source (windowed or lifetime).
EVENT_AGGREGATIONS = AGGREGATIONS[:-1]
#: Aggregations of a snapshot source (the entity's latest record as of the feature time).
SNAPSHOT_AGGREGATIONS = ("latest", "days_since")
#: Aggregations that read a column (the others count records or use their timestamps).
COLUMN_AGGREGATIONS = ("sum", "mean", "min", "max", "distinct_count", "latest", "days_since")
NUMERIC_AGGREGATIONS = ("sum", "mean", "min", "max")
TASKS = ("binary_classification", "regression")
ESTIMATORS = ("hist_gradient_boosting", "logistic_regression", "linear_regression", "random_forest")
LIFETIME = "lifetime"
#: The tag that keeps a feature out of the model's inputs (fairness checks use it instead).
SENSITIVE_TAG = "sensitive"

_DURATION = re.compile(r"^\s*(\d+)\s*([dhm])\s*$")
_NAME = r"^[A-Za-z_][A-Za-z0-9_]*$"
_UNITS = {"d": timedelta(days=1), "h": timedelta(hours=1), "m": timedelta(minutes=1)}


class Frozen(BaseModel):
    """Base of every spec object: immutable, unknown keys rejected."""

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)


def parse_duration(value: Any) -> timedelta | None:
    """``"2d"``, ``"36h"``, ``"90m"`` (or a timedelta, or None) as a timedelta."""
    if value is None or isinstance(value, timedelta):
        return value
    match = _DURATION.match(str(value))
    if not match:
        raise ValueError(f"expected a duration like '2d', '36h' or '90m', got {value!r}")
    return int(match.group(1)) * _UNITS[match.group(2)]


def format_duration(value: timedelta | None) -> str | None:
    if value is None:
        return None
    seconds = int(value.total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    raise ValueError(f"duration {value} is not a whole number of minutes")


Duration = Annotated[
    timedelta | None,
    BeforeValidator(parse_duration),
    PlainSerializer(format_duration, return_type=str | None),
    Field(json_schema_extra={"type": ["string", "null"], "pattern": _DURATION.pattern}),
]


def parse_window(value: Any) -> int | None:
    """A window as whole days: ``"30d"`` -> 30, ``"lifetime"`` -> None."""
    if value is None or value == LIFETIME:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        days = value
    else:
        match = re.match(r"^\s*(\d+)\s*d\s*$", str(value))
        if not match:
            raise ValueError(f"expected a window of whole days like '30d', or 'lifetime', got {value!r}")
        days = int(match.group(1))
    if days < 1:
        raise ValueError(f"a window must be at least 1 day, got {value!r}")
    return days


Window = Annotated[
    int | None,
    BeforeValidator(parse_window),
    PlainSerializer(lambda d: LIFETIME if d is None else f"{d}d", return_type=str),
    Field(json_schema_extra={"anyOf": [{"const": LIFETIME}, {"type": "string", "pattern": r"^\d+d$"}]}),
]


def parse_days(value: Any) -> int:
    """A number of whole days, possibly 0: ``"28d"``, ``28`` or ``0``."""
    if isinstance(value, int) and not isinstance(value, bool):
        days = value
    else:
        match = re.match(r"^\s*(\d+)\s*d\s*$", str(value))
        if not match:
            raise ValueError(f"expected whole days like '28d' (or 0), got {value!r}")
        days = int(match.group(1))
    if days < 0:
        raise ValueError(f"days cannot be negative, got {value!r}")
    return days


Days = Annotated[
    int,
    BeforeValidator(parse_days),
    PlainSerializer(lambda d: f"{d}d", return_type=str),
    Field(
        json_schema_extra={
            "anyOf": [{"type": "integer", "minimum": 0}, {"type": "string", "pattern": r"^\d+d$"}]
        }
    ),
]


class Column(Frozen):
    """One column of a landing file: type, presence, nulls, range and (open or closed) values."""

    type: Literal["string", "int64", "float64", "bool", "timestamp", "date"]
    description: str = ""
    required: bool = True  # present in every landing file of the source
    nullable: bool = False  # null values allowed in kept rows
    min: float | None = None
    max: float | None = None
    values: tuple[str, ...] | None = None  # the known values of a categorical column
    closed: bool = False  # true: a value outside `values` quarantines its row

    @field_validator("values", mode="before")
    @classmethod
    def _values_as_text(cls, value: Any) -> Any:
        if value is None:
            return None
        if not isinstance(value, list | tuple):
            raise ValueError("values must be a list")
        return tuple(str(v) for v in value)

    @property
    def allowed(self) -> tuple[str, ...] | None:
        """The closed value set, if the column has one."""
        return self.values if self.closed else None


def _column_shorthand(value: Any) -> Any:
    return {"type": value} if isinstance(value, str) else value


ColumnField = Annotated[Column, BeforeValidator(_column_shorthand)]


class Source(Frozen):
    """Landing files of one kind of record, ingested into a daily-partitioned table of the same name."""

    kind: Literal["events", "snapshot", "labels"]
    timestamp: str  # UTC time that places a record in its day's partition
    columns: dict[Annotated[str, Field(pattern=_NAME)], ColumnField]
    landing: str | None = None  # folder under <data>/landing/ (default: the source's name)
    pattern: str = "*"  # glob of accepted file names; a file's day is the first YYYY-MM-DD in its name
    format: Literal["auto", "parquet", "csv"] = "auto"
    encoding: str = "utf-8"  # of CSV files
    unique_key: tuple[str, ...] = ()  # repeats of a key beyond the first are quarantined
    description: str = ""
    owner: str = ""

    @field_validator("unique_key", mode="before")
    @classmethod
    def _key_list(cls, value: Any) -> Any:
        return (value,) if isinstance(value, str) else value


class Entity(Frozen):
    """A thing features describe and models score: its join key column and the key's type."""

    join_key: Annotated[str, Field(pattern=_NAME)]
    dtype: Literal["string", "int64"] = "string"
    description: str = ""


class Feature(Frozen):
    """One feature: an aggregation of a source column (or of record counts / times) over a window."""

    agg: Literal[
        "count",
        "sum",
        "mean",
        "min",
        "max",
        "distinct_count",
        "latest",
        "days_since_last",
        "days_since_first",
        "days_since",
    ]
    column: str | None = None
    window: Window = None  # whole days, or lifetime (the default)
    filter: str | None = None  # SQL condition on the source's columns, AND-ed with the view's filter
    description: str = ""
    tags: tuple[str, ...] = ()

    @property
    def sensitive(self) -> bool:
        return SENSITIVE_TAG in self.tags


class FeatureView(Frozen):
    """Features of one entity computed from one source, refreshed daily."""

    entity: str
    source: str
    features: dict[Annotated[str, Field(pattern=_NAME)], Feature]
    filter: str | None = None  # SQL condition selecting the source records the view aggregates
    ttl: Duration = None  # how old the view's values may be when joined or served (None: no limit)
    owner: str = ""
    tags: tuple[str, ...] = ()
    description: str = ""


class Partitions(Frozen):
    """The daily partitions every daily asset shares: a first day and a last one."""

    start: date
    # a day, "data" (the last day named by a landing file, found when the definitions load) or
    # "open" (up to today: for a live feed)
    end: date | Literal["data", "open"] = "data"


class Target(Frozen):
    """What the model predicts: a column of a labels source, per entity, at the label's time."""

    source: str
    column: str
    task: Literal["binary_classification", "regression"] = "binary_classification"
    entity: str | None = None  # default: the only entity whose join key the source holds
    timestamp: str | None = None  # the time features are read at (default: the source's timestamp)
    positive_class: str | None = None  # binary: the value meaning "yes" (default: 1 / true)
    higher_is_better: bool = True  # whether more of the outcome is good (A/B tests compare arms on it)


class FeatureSelection(Frozen):
    """Model inputs: every non-sensitive feature, a list, or the features carrying one of some tags."""

    include: Literal["all"] | tuple[str, ...] = "all"
    tags: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()


def _selection_shorthand(value: Any) -> Any:
    if value == "all":
        return {"include": "all"}
    if isinstance(value, list | tuple):
        return {"include": tuple(value)}
    return value


class Model(Frozen):
    """The registered model: its name, estimator, inputs, sensitive attributes and segments."""

    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")]
    estimator: Literal[
        "hist_gradient_boosting", "logistic_regression", "linear_regression", "random_forest"
    ] = "hist_gradient_boosting"
    hyperparameters: dict[str, Any] = Field(default_factory=dict)
    features: Annotated[FeatureSelection, BeforeValidator(_selection_shorthand)] = FeatureSelection()
    sensitive: tuple[str, ...] = ()  # features used by fairness checks, never as inputs
    segments: tuple[str, ...] = ()  # categorical features whose values the coverage gate checks
    holdout_fraction: float = Field(0.2, gt=0, lt=1)
    # labels read within this many days after partitions.start are not training rows: a window longer than
    # the history behind it counts too little (0: keep every label)
    warmup: Days = 0
    seed: int = 42
    threshold: float = Field(0.5, gt=0, lt=1)  # binary: score at or above which the prediction is positive
    # label rows a training set needs before the first-champion sensor tries a first model on it
    first_champion_min_rows: int = Field(500, ge=1)


class GoldenCase(Frozen):
    """An explicit input row with the expected direction or range of its score (sanity gate)."""

    name: str
    features: dict[str, Any]
    expect_min: float | None = None
    expect_max: float | None = None
    higher_than: str | None = None  # the name of another case this one must score above


class Gates(Frozen):
    """Thresholds of the quality gates; each name says what it bounds."""

    metric: str | None = None  # champion comparison (default: roc_auc / mae by task)
    max_metric_drop: float = 0.02
    min_baseline_improvement: float = 0.0  # the model must beat the trivial baseline by at least this
    max_overfit_gap: float | None = None  # train minus holdout of the metric; None: reported only
    max_p99_latency_ms: float = 100.0
    max_latency_ratio: float = 3.0  # challenger p99 over champion p99, measured interleaved
    max_bias_score: float = 0.25
    min_group_size: int = 50
    min_test_coverage: float = 0.95
    golden_cases: tuple[GoldenCase, ...] = ()


class Population(Frozen):
    """Which entities are scored and monitored on a day."""

    # entities with a record in any of these sources (default: every event source) within this window
    active_within: Window = 90
    sources: tuple[str, ...] = ()


class Monitoring(Frozen):
    """The monitored population and the monitor's settings."""

    population: Population = Population()
    trend_features: tuple[str, ...] = ()  # features that grow with time by construction (ages, counters)


class Demo(Frozen):
    """How `mlops demo` produces this example's landing data (a simulator shipped with the example)."""

    simulator: str  # a Python package (folder) or file next to the spec defining `simulate(out, *, days, start, seed, size, scenarios)`
    size: int = 1000  # entities to simulate
    days: int = 120
    history_days: int = 90  # phase 1 trains on these; the rest arrives later as new data
    seed: int = 7
    scenarios: tuple[str, ...] = ()


class ProjectSpec(Frozen):
    """A user's project: entities, sources, feature views, target, model, gates and monitoring."""

    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]*$")]
    description: str = ""
    partitions: Partitions
    entities: dict[Annotated[str, Field(pattern=_NAME)], Entity]
    sources: dict[Annotated[str, Field(pattern=_NAME)], Source]
    feature_views: dict[Annotated[str, Field(pattern=_NAME)], FeatureView] = Field(default_factory=dict)
    target: Target | None = None
    model: Model | None = None
    gates: Gates = Gates()
    monitoring: Monitoring = Monitoring()
    demo: Demo | None = None

    # ------------------------------------------------------------------ lookups used across the engine

    def source(self, name: str) -> Source:
        try:
            return self.sources[name]
        except KeyError:
            raise KeyError(f"no source {name!r}; the spec declares {sorted(self.sources)}") from None

    def view(self, name: str) -> FeatureView:
        try:
            return self.feature_views[name]
        except KeyError:
            raise KeyError(
                f"no feature view {name!r}; the spec declares {sorted(self.feature_views)}"
            ) from None

    def landing_folder(self, source: str) -> str:
        return self.source(source).landing or source

    def entity_of_view(self, view: str) -> Entity:
        return self.entities[self.view(view).entity]
