"""Cross-reference checks of a project spec: every problem found at once, each with its key path."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from mlops_assets.spec.model import (
    COLUMN_AGGREGATIONS,
    EVENT_AGGREGATIONS,
    NUMERIC_AGGREGATIONS,
    SNAPSHOT_AGGREGATIONS,
    Feature,
    FeatureView,
    ProjectSpec,
    Source,
)

_DUCK_TYPES = {
    "string": "VARCHAR",
    "int64": "BIGINT",
    "float64": "DOUBLE",
    "bool": "BOOLEAN",
    "timestamp": "TIMESTAMPTZ",
    "date": "DATE",
}
#: Column names the engine adds to feature tables and training sets.
RESERVED_COLUMNS = ("feature_timestamp", "day")


@dataclass(frozen=True)
class Issue:
    """One problem of a spec: where (a dotted key path) and what was expected."""

    path: tuple[str | int, ...]
    message: str

    @property
    def where(self) -> str:
        return ".".join(str(p) for p in self.path) or "(top level)"


def duck_type(column_type: str) -> str:
    """The DuckDB type of a spec column type."""
    return _DUCK_TYPES[column_type]


def filter_problem(source: Source, condition: str) -> str | None:
    """Why ``condition`` is not a valid filter over ``source``'s columns (DuckDB binds it), or None."""
    import duckdb

    columns = ", ".join(
        f"CAST(NULL AS {duck_type(c.type)}) AS {quote(name)}" for name, c in source.columns.items()
    )
    try:
        con = duckdb.connect()
        try:
            con.execute(f"SELECT count(*) FROM (SELECT {columns}) AS t WHERE ({condition})").fetchall()
        finally:
            con.close()
    except duckdb.Error as exc:
        text = str(exc).splitlines()[0]
        return f"filter {condition!r} is not a valid condition on this source's columns: {text}"
    return None


def quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def feature_dtype(spec: ProjectSpec, view: FeatureView, feature: Feature) -> str:
    """The type of a feature's values: int64, float64, string or bool."""
    if feature.agg in ("count", "distinct_count"):
        return "int64"
    if feature.agg == "days_since":
        return "int64"
    if feature.agg == "latest":
        return spec.source(view.source).columns[feature.column or ""].type
    return "float64"


def _check_source(name: str, source: Source) -> Iterable[Issue]:
    base = ("sources", name)
    columns = source.columns
    if source.timestamp not in columns:
        yield Issue(
            (*base, "timestamp"),
            f"column {source.timestamp!r} is not among the source's columns {list(columns)}",
        )
    elif columns[source.timestamp].type != "timestamp":
        yield Issue(
            (*base, "columns", source.timestamp, "type"),
            f"the source's timestamp column must have type 'timestamp', not {columns[source.timestamp].type!r}",
        )
    elif columns[source.timestamp].nullable:
        yield Issue(
            (*base, "columns", source.timestamp, "nullable"), "the timestamp column cannot be nullable"
        )
    for i, key in enumerate(source.unique_key):
        if key not in columns:
            yield Issue(
                (*base, "unique_key", i), f"unique key column {key!r} is not among the source's columns"
            )
    for cname, column in columns.items():
        where = (*base, "columns", cname)
        if not column.required and not column.nullable:
            yield Issue(
                (*where, "nullable"),
                "an optional column (required: false) must be nullable: files without it give nulls",
            )
        if column.closed and not column.values:
            yield Issue((*where, "closed"), "a closed column needs its 'values'")
        if (column.min is not None or column.max is not None) and column.type not in ("int64", "float64"):
            yield Issue(where, f"min/max apply to int64 or float64 columns, not {column.type!r}")
        if column.min is not None and column.max is not None and column.min > column.max:
            yield Issue(where, f"min {column.min} is greater than max {column.max}")


def _check_feature(
    spec: ProjectSpec, vname: str, view: FeatureView, fname: str, feature: Feature, filters: bool
) -> Iterable[Issue]:
    where = ("feature_views", vname, "features", fname)
    source = spec.sources.get(view.source)
    if source is None:
        return
    allowed = SNAPSHOT_AGGREGATIONS if source.kind == "snapshot" else EVENT_AGGREGATIONS
    if feature.agg not in allowed:
        yield Issue(
            (*where, "agg"),
            f"{feature.agg!r} does not apply to a {source.kind} source ({view.source}); use one of {list(allowed)}",
        )
        return
    if feature.agg in COLUMN_AGGREGATIONS:
        if feature.column is None:
            yield Issue(where, f"{feature.agg!r} needs a 'column' of source {view.source}")
            return
        column = source.columns.get(feature.column)
        if column is None:
            yield Issue(
                (*where, "column"),
                f"column {feature.column!r} is not a column of source {view.source} ({list(source.columns)})",
            )
            return
        if feature.agg in NUMERIC_AGGREGATIONS and column.type not in ("int64", "float64", "bool"):
            yield Issue(
                (*where, "column"),
                f"{feature.agg!r} needs a numeric column; {feature.column!r} is {column.type}",
            )
        if feature.agg == "latest" and column.type in ("date", "timestamp"):
            yield Issue(
                (*where, "agg"), f"'latest' of a {column.type} column is not a model input; use 'days_since'"
            )
        if feature.agg == "days_since" and column.type not in ("date", "timestamp"):
            yield Issue(
                (*where, "column"),
                f"'days_since' needs a date or timestamp column; {feature.column!r} is {column.type}",
            )
    elif feature.column is not None:
        yield Issue(
            (*where, "column"), f"{feature.agg!r} counts records or uses their timestamps: remove 'column'"
        )
    if source.kind == "snapshot":
        if feature.window is not None:
            yield Issue(
                (*where, "window"), "features of a snapshot source read the latest record: remove 'window'"
            )
        if feature.filter is not None:
            yield Issue((*where, "filter"), "features of a snapshot source cannot have a filter")
    elif feature.filter is not None and filters:
        problem = filter_problem(source, feature.filter)
        if problem:
            yield Issue((*where, "filter"), problem)


def _check_view(spec: ProjectSpec, vname: str, view: FeatureView, filters: bool) -> Iterable[Issue]:
    base = ("feature_views", vname)
    if view.entity not in spec.entities:
        yield Issue(
            (*base, "entity"), f"unknown entity {view.entity!r}; the spec declares {sorted(spec.entities)}"
        )
    source = spec.sources.get(view.source)
    if source is None:
        yield Issue(
            (*base, "source"), f"unknown source {view.source!r}; the spec declares {sorted(spec.sources)}"
        )
    elif source.kind == "labels":
        yield Issue(
            (*base, "source"), f"source {view.source!r} holds labels; feature views read events or snapshots"
        )
    elif view.entity in spec.entities:
        entity = spec.entities[view.entity]
        key = source.columns.get(entity.join_key)
        if key is None:
            yield Issue(
                (*base, "entity"),
                f"source {view.source!r} has no column {entity.join_key!r}, the join key of entity {view.entity!r}",
            )
        elif key.type != entity.dtype:
            yield Issue(
                (*base, "entity"),
                f"join key {entity.join_key!r} is {key.type} in source {view.source!r} but the entity's dtype is {entity.dtype}",
            )
        elif key.nullable:
            yield Issue(
                ("sources", view.source, "columns", entity.join_key, "nullable"),
                "a join key cannot be nullable",
            )
    if source is not None and source.kind == "snapshot" and view.filter is not None:
        yield Issue((*base, "filter"), "a view of a snapshot source cannot have a filter")
    elif source is not None and view.filter is not None and filters:
        problem = filter_problem(source, view.filter)
        if problem:
            yield Issue((*base, "filter"), problem)
    if not view.features:
        yield Issue((*base, "features"), "a feature view needs at least one feature")
    for fname, feature in view.features.items():
        yield from _check_feature(spec, vname, view, fname, feature, filters)
        if fname in RESERVED_COLUMNS:
            yield Issue((*base, "features", fname), f"{fname!r} is a column name the engine reserves")


def resolve_feature(spec: ProjectSpec, ref: str) -> tuple[str, str]:
    """``"view:feature"`` or a bare feature name -> (view, feature); KeyError naming the known ones."""
    if ":" in ref:
        vname, fname = ref.split(":", 1)
        view = spec.feature_views.get(vname)
        if view is None:
            raise KeyError(f"unknown feature view {vname!r} in {ref!r}; known: {sorted(spec.feature_views)}")
        if fname not in view.features:
            raise KeyError(f"view {vname!r} has no feature {fname!r}; it has {sorted(view.features)}")
        return vname, fname
    owners = [v for v, view in spec.feature_views.items() if ref in view.features]
    if not owners:
        raise KeyError(f"unknown feature {ref!r}; use 'view:feature' (see `mlops features list`)")
    return owners[0], ref


def _check_target(spec: ProjectSpec) -> Iterable[Issue]:
    target = spec.target
    if target is None:
        return
    source = spec.sources.get(target.source)
    if source is None:
        yield Issue(
            ("target", "source"),
            f"unknown source {target.source!r}; the spec declares {sorted(spec.sources)}",
        )
        return
    if source.kind != "labels":
        yield Issue(
            ("target", "source"),
            f"source {target.source!r} is of kind {source.kind!r}; a target reads a labels source",
        )
    if target.column not in source.columns:
        yield Issue(
            ("target", "column"), f"column {target.column!r} is not a column of source {target.source!r}"
        )
    elif target.task == "regression" and source.columns[target.column].type not in ("int64", "float64"):
        yield Issue(
            ("target", "column"),
            f"a regression target needs a numeric column; {target.column!r} is "
            f"{source.columns[target.column].type}",
        )
    if target.timestamp is not None and target.timestamp not in source.columns:
        yield Issue(
            ("target", "timestamp"),
            f"column {target.timestamp!r} is not a column of source {target.source!r}",
        )
    if target.entity is not None:
        if target.entity not in spec.entities:
            yield Issue(
                ("target", "entity"),
                f"unknown entity {target.entity!r}; the spec declares {sorted(spec.entities)}",
            )
        elif spec.entities[target.entity].join_key not in source.columns:
            yield Issue(
                ("target", "entity"),
                f"source {target.source!r} has no column "
                f"{spec.entities[target.entity].join_key!r} (join key of {target.entity!r})",
            )
    else:
        held = [e for e, ent in spec.entities.items() if ent.join_key in source.columns]
        if len(held) != 1:
            yield Issue(
                ("target", "entity"),
                f"source {target.source!r} holds the join keys of {held or 'no entity'}; "
                "name the target's entity",
            )


def _check_model(spec: ProjectSpec) -> Iterable[Issue]:
    model = spec.model
    if model is None:
        return
    task = spec.target.task if spec.target else None
    if task == "regression" and model.estimator == "logistic_regression":
        yield Issue(
            ("model", "estimator"), "logistic_regression is a classifier; the target's task is regression"
        )
    if task == "binary_classification" and model.estimator == "linear_regression":
        yield Issue(
            ("model", "estimator"),
            "linear_regression is a regressor; the target's task is binary_classification",
        )
    refs: list[tuple[tuple, str]] = []
    if model.features.include != "all":
        refs += [(("model", "features", "include", i), r) for i, r in enumerate(model.features.include)]
    refs += [(("model", "features", "exclude", i), r) for i, r in enumerate(model.features.exclude)]
    refs += [(("model", "sensitive", i), r) for i, r in enumerate(model.sensitive)]
    refs += [(("model", "segments", i), r) for i, r in enumerate(model.segments)]
    for path, ref in refs:
        try:
            resolve_feature(spec, ref)
        except KeyError as exc:
            yield Issue(path, str(exc.args[0]))


def _check_unique_names(spec: ProjectSpec) -> Iterable[Issue]:
    seen: dict[str, str] = {}
    reserved = {e.join_key: f"join key of entity {n!r}" for n, e in spec.entities.items()}
    if spec.target is not None:
        reserved[spec.target.column] = "the target column"
    for vname, view in spec.feature_views.items():
        for fname in view.features:
            if fname in seen:
                yield Issue(
                    ("feature_views", vname, "features", fname),
                    f"feature {fname!r} is also defined in view {seen[fname]!r}; feature names must be unique "
                    "across views (they are the training set's columns)",
                )
            elif fname in reserved:
                yield Issue(("feature_views", vname, "features", fname), f"{fname!r} is {reserved[fname]}")
            else:
                seen[fname] = vname


def check_project(spec: ProjectSpec, filters: bool = True) -> list[Issue]:
    """Every cross-reference problem of ``spec`` (empty when it is consistent).

    ``filters``: bind each SQL filter with DuckDB against the source's columns (imports DuckDB).
    """
    issues: list[Issue] = []
    if not spec.entities:
        issues.append(Issue(("entities",), "declare at least one entity"))
    if (
        isinstance(spec.partitions.end, type(spec.partitions.start))
        and spec.partitions.end < spec.partitions.start
    ):
        issues.append(
            Issue(("partitions", "end"), f"end {spec.partitions.end} is before start {spec.partitions.start}")
        )
    folders: dict[str, str] = {}
    for name, source in spec.sources.items():
        issues += _check_source(name, source)
        folder = spec.landing_folder(name)
        if folder in folders:
            issues.append(
                Issue(
                    ("sources", name, "landing"),
                    f"landing folder {folder!r} is also used by source {folders[folder]!r}",
                )
            )
        folders[folder] = name
    for vname, view in spec.feature_views.items():
        issues += _check_view(spec, vname, view, filters)
        if vname in spec.sources:
            issues.append(
                Issue(
                    ("feature_views", vname), f"{vname!r} is also a source's name; asset names must be unique"
                )
            )
    issues += _check_unique_names(spec)
    issues += _check_target(spec)
    issues += _check_model(spec)
    for i, source in enumerate(spec.monitoring.population.sources):
        if source not in spec.sources:
            issues.append(Issue(("monitoring", "population", "sources", i), f"unknown source {source!r}"))
        elif spec.sources[source].kind != "events":
            issues.append(
                Issue(
                    ("monitoring", "population", "sources", i), f"source {source!r} is not an events source"
                )
            )
    for i, ref in enumerate(spec.monitoring.trend_features):
        try:
            resolve_feature(spec, ref)
        except KeyError as exc:
            issues.append(Issue(("monitoring", "trend_features", i), str(exc.args[0])))
    return issues
