"""The landing-file and warehouse contract of an ingested table, derived from a source of the project spec."""

from __future__ import annotations

from dataclasses import dataclass, field

import pyarrow as pa

from mlops_assets.spec.model import Source

UTC_TS = pa.timestamp("us", tz="UTC")

#: Arrow type of each spec column type, as stored in the warehouse.
ARROW_TYPES: dict[str, pa.DataType] = {
    "string": pa.string(),
    "int64": pa.int64(),
    "float64": pa.float64(),
    "bool": pa.bool_(),
    "timestamp": UTC_TS,
    "date": pa.date32(),
}


@dataclass(frozen=True)
class ColumnSpec:
    name: str
    dtype: pa.DataType
    description: str = ""
    required: bool = True  # column must be present in every landing file (else filled with nulls)
    nullable: bool = False  # null values allowed in kept rows
    allowed: tuple[str, ...] | None = None  # closed set of values, if any
    min_value: float | None = None
    max_value: float | None = None


@dataclass(frozen=True)
class TableContract:
    """One ingested table: its columns, its key, and the timestamp that places a row in a day."""

    name: str
    landing_folder: str
    description: str
    columns: tuple[ColumnSpec, ...]
    partition_column: str  # UTC timestamp that must fall inside the partition's day
    unique_key: tuple[str, ...] = field(default_factory=tuple)  # duplicates beyond the first are quarantined
    # "table": a key kept on one day is quarantined on every other (events, labels); "day": unique within a
    # day only (a snapshot's key names an entity whose record may change from day to day)
    unique_scope: str = "table"
    sort_by: tuple[str, ...] = field(default_factory=tuple)
    pattern: str = "*"  # glob of accepted landing file names
    file_format: str = "auto"  # parquet, csv, or auto (by suffix)
    encoding: str = "utf-8"

    @property
    def schema(self) -> pa.Schema:
        return pa.schema([pa.field(c.name, c.dtype, nullable=c.nullable) for c in self.columns])

    @property
    def column_names(self) -> list[str]:
        return [c.name for c in self.columns]

    @property
    def required_columns(self) -> list[str]:
        return [c.name for c in self.columns if c.required]

    def column(self, name: str) -> ColumnSpec:
        for col in self.columns:
            if col.name == name:
                return col
        raise KeyError(name)


def contract_for(name: str, source: Source) -> TableContract:
    """The ingestion contract of source ``name``: its columns as Arrow types, checks and sort order."""
    columns = tuple(
        ColumnSpec(
            name=cname,
            dtype=ARROW_TYPES[column.type],
            description=column.description,
            required=column.required,
            nullable=column.nullable,
            allowed=column.allowed,
            min_value=column.min,
            max_value=column.max,
        )
        for cname, column in source.columns.items()
    )
    sort_by = (source.timestamp, *[k for k in source.unique_key if k != source.timestamp])
    return TableContract(
        name=name,
        landing_folder=source.landing or name,
        description=source.description or f"{source.kind} records of {name}, one partition per UTC day.",
        columns=columns,
        partition_column=source.timestamp,
        unique_key=tuple(source.unique_key),
        unique_scope="day" if source.kind == "snapshot" else "table",
        sort_by=sort_by,
        pattern=source.pattern,
        file_format=source.format,
        encoding=source.encoding,
    )
