"""How a feature view is stored: the partial aggregates ("measures") its tiles hold, and their columns.

An **event view** stores, per day D, one *tile* row for each entity with at least one record of the
view (source records of partition D that pass the view's filter). A tile holds, for each *measure*
(a condition and a column shared by one or more features), that day's partial aggregates: the
count, the exact sum (as a double-double ``hi + lo``), min, max, the first and last record times,
the last value and the distinct values. Windowed and lifetime features are computed from tiles when
they are read (:mod:`mlops_assets.features.aggregate`).

A **snapshot view** stores, per day D, one *change* row for each entity whose latest record of the day
differs from its state before D: rows only when something changed.

No Dagster here.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from datetime import date, timedelta
from functools import cached_property

import pyarrow as pa

from mlops_assets.ingestion.schema import ARROW_TYPES, UTC_TS
from mlops_assets.spec.check import feature_dtype, quote
from mlops_assets.spec.model import Feature, FeatureView, ProjectSpec

#: Bump when what a given view definition stores, or how its features are computed, changes.
LAYOUT_VERSION = "tiles-1"
DAY_COLUMN = "day"
RECORD_TS = "record_timestamp"  # snapshot change rows: the time of the record that set the values
FEATURE_TS = "feature_timestamp"
_EPOCH = date(1970, 1, 1)


def day_index(day: str | date) -> int:
    """A day as its index since 1970-01-01 (the day numbers of tiles and queries)."""
    value = date.fromisoformat(day) if isinstance(day, str) else day
    return (value - _EPOCH).days


def day_text(index: int) -> str:
    return (_EPOCH + timedelta(days=int(index))).isoformat()


#: Parts of a measure each aggregation needs.
_PARTS = {
    "count": (),
    "sum": ("sum",),
    "mean": ("sum",),
    "min": ("min",),
    "max": ("max",),
    "distinct_count": ("distinct",),
    "latest": ("value",),
    "days_since_last": ("last",),
    "days_since_first": ("first",),
}


def combine_conditions(*conditions: str | None) -> str | None:
    """``(a) AND (b)`` of the given SQL conditions (None when there are none)."""
    present = [c.strip() for c in conditions if c and c.strip()]
    if not present:
        return None
    return " AND ".join(f"({c})" for c in present)


@dataclass(frozen=True)
class Measure:
    """Partial aggregates of the source records matching ``condition`` (and, with a column, non-null in it)."""

    index: int
    condition: str | None
    column: str | None
    parts: tuple[str, ...]

    @property
    def prefix(self) -> str:
        return f"m{self.index}"

    def col(self, part: str) -> str:
        return f"{self.prefix}_{part}"


@dataclass(frozen=True)
class ViewLayout:
    """A view's stored table and the measure behind each feature."""

    name: str
    view: FeatureView
    spec: ProjectSpec = field(repr=False)

    @property
    def source_name(self) -> str:
        return self.view.source

    @property
    def source(self):
        return self.spec.source(self.view.source)

    @property
    def kind(self) -> str:
        return self.source.kind

    @property
    def entity_key(self) -> str:
        return self.spec.entities[self.view.entity].join_key

    @property
    def entity_type(self) -> pa.DataType:
        return ARROW_TYPES[self.spec.entities[self.view.entity].dtype]

    @property
    def feature_names(self) -> list[str]:
        return list(self.view.features)

    def feature(self, name: str) -> Feature:
        try:
            return self.view.features[name]
        except KeyError:
            raise KeyError(
                f"view {self.name!r} has no feature {name!r}; it has {self.feature_names}"
            ) from None

    def dtype(self, name: str) -> str:
        return feature_dtype(self.spec, self.view, self.feature(name))

    @cached_property
    def measures(self) -> tuple[Measure, ...]:
        if self.kind != "events":
            return ()
        parts: dict[tuple, list[str]] = {}
        for feat in self.view.features.values():
            key = (combine_conditions(self.view.filter, feat.filter), feat.column)
            bucket = parts.setdefault(key, [])
            bucket.extend(p for p in _PARTS[feat.agg] if p not in bucket)
        return tuple(
            Measure(i, cond, col, tuple(sorted(p))) for i, ((cond, col), p) in enumerate(parts.items())
        )

    def measure_of(self, feature: str) -> Measure:
        feat = self.feature(feature)
        key = (combine_conditions(self.view.filter, feat.filter), feat.column)
        return next(m for m in self.measures if (m.condition, m.column) == key)

    @cached_property
    def windows(self) -> tuple[int, ...]:
        """The distinct window lengths (days) of the view's windowed features, ascending (event views)."""
        if self.kind != "events":
            return ()
        return tuple(sorted({f.window for f in self.view.features.values() if f.window is not None}))

    def window_parts(self, window: int) -> dict[int, tuple[str, ...]]:
        """Per measure index, the parts the features with this window read (a measure's count is always kept)."""
        parts: dict[int, set[str]] = {}
        for name, feat in self.view.features.items():
            if feat.window == window:
                parts.setdefault(self.measure_of(name).index, set()).update(_PARTS[feat.agg])
        return {index: tuple(sorted(p)) for index, p in parts.items()}

    @cached_property
    def snapshot_columns(self) -> tuple[str, ...]:
        """Source columns a snapshot view keeps (each feature's column, in first-use order)."""
        return tuple(dict.fromkeys(f.column for f in self.view.features.values() if f.column))

    def column_type(self, column: str) -> pa.DataType:
        return ARROW_TYPES[self.source.columns[column].type]

    @cached_property
    def schema(self) -> pa.Schema:
        """The stored table's schema (tiles or change rows)."""
        fields = [
            pa.field(self.entity_key, self.entity_type, nullable=False),
            pa.field(DAY_COLUMN, pa.date32()),
        ]
        if self.kind == "snapshot":
            fields.append(pa.field(RECORD_TS, UTC_TS))
            fields += [pa.field(c, self.column_type(c)) for c in self.snapshot_columns]
            return pa.schema(fields)
        for m in self.measures:
            fields.append(pa.field(m.col("n"), pa.int64()))
            value_type = self.column_type(m.column) if m.column else None
            for part in m.parts:
                if part == "sum":
                    fields += [
                        pa.field(m.col("sum_hi"), pa.float64()),
                        pa.field(m.col("sum_lo"), pa.float64()),
                    ]
                elif part in ("min", "max"):
                    fields.append(pa.field(m.col(part), pa.float64()))
                elif part in ("first", "last"):
                    fields.append(pa.field(m.col(f"{part}_ts"), UTC_TS))
                elif part == "value":
                    fields += [pa.field(m.col("value"), value_type), pa.field(m.col("value_ts"), UTC_TS)]
                elif part == "distinct":
                    fields.append(pa.field(m.col("distinct"), pa.list_(pa.string())))
        return pa.schema(fields)

    def definition(self) -> dict:
        """What the stored table depends on: the view, the source columns it reads, the layout version."""
        used = {self.entity_key, self.source.timestamp} | {
            f.column for f in self.view.features.values() if f.column
        }
        stored = self.view.model_dump(
            mode="json",
            exclude={
                "description": True,
                "owner": True,
                "tags": True,
                "ttl": True,
                "features": {f: {"description", "tags"} for f in self.view.features},
            },
        )  # what is stored and computed: descriptions, owners, tags and the TTL (a read-time rule) are not
        return {
            "layout": LAYOUT_VERSION,
            "view": stored,
            "source": self.source_name,
            "kind": self.kind,
            "columns": {c: self.source.columns[c].type for c in sorted(used) if c in self.source.columns},
            "entity_dtype": self.spec.entities[self.view.entity].dtype,
        }

    def version(self) -> str:
        """Hash of the definition: changes exactly when what this view stores changes."""
        text = json.dumps(self.definition(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def read_version(self) -> str:
        """What a read of the view returns depends on: the stored definition and the TTL (applied at read time)."""
        ttl = None if self.view.ttl is None else self.view.ttl.total_seconds()
        return hashlib.sha256(f"{self.version()}:{ttl}".encode()).hexdigest()[:16]


def layouts(spec: ProjectSpec) -> dict[str, ViewLayout]:
    """The stored layout of every feature view of a spec."""
    return {name: ViewLayout(name, view, spec) for name, view in spec.feature_views.items()}


__all__ = [
    "DAY_COLUMN",
    "FEATURE_TS",
    "RECORD_TS",
    "Measure",
    "ViewLayout",
    "combine_conditions",
    "day_index",
    "day_text",
    "layouts",
    "quote",
    "select_features",
]


def select_features(spec: ProjectSpec, refs: list[str] | tuple[str, ...] | None) -> dict[str, list[str]]:
    """Map feature references to ``{view: [feature, ...]}`` in request order; None means every feature.

    A reference is ``"view:feature"``, ``"view:*"`` (every feature of the view) or a bare feature
    name (names are unique across views).
    """
    views = spec.feature_views
    if refs is None:
        return {name: list(view.features) for name, view in views.items()}
    if isinstance(refs, str):
        raise TypeError("features must be a list of 'view:feature' strings, not one string")
    owner = {f: name for name, view in views.items() for f in view.features}
    out: dict[str, list[str]] = {}
    for ref in refs:
        if ":" in ref:
            vname, fname = ref.split(":", 1)
            if vname not in views:
                raise KeyError(f"unknown feature view {vname!r} in {ref!r}; known: {sorted(views)}")
            names = list(views[vname].features) if fname == "*" else [fname]
            for name in names:
                if name not in views[vname].features:
                    raise KeyError(
                        f"view {vname!r} has no feature {name!r}; it has {sorted(views[vname].features)}"
                    )
        elif ref in owner:
            vname, names = owner[ref], [ref]
        else:
            raise KeyError(f"unknown feature {ref!r}; use 'view:feature' (see `mlops features list`)")
        bucket = out.setdefault(vname, [])
        bucket.extend(n for n in names if n not in bucket)
    return out
