"""Validate one day of landing files against a table contract: keep good rows, quarantine the rest.

Nothing is lost: every row read is either kept or quarantined with a reason, and a file that
cannot be read at all is copied to the quarantine whole, with its reason.
"""

from __future__ import annotations

import csv
import fnmatch
import hashlib
import io
import json
import os
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from mlops_assets.ingestion.schema import ColumnSpec, TableContract
from mlops_assets.storage import atomic_directory, remove_directory, write_partition

SUPPORTED_SUFFIXES = (".parquet", ".csv")
SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
DAY_IN_NAME = re.compile(r"(\d{4}-\d{2}-\d{2})")

REASON_COLUMN = "_reason"
SOURCE_COLUMN = "_source_file"
ROW_COLUMN = "_row_number"  # position of the row among its file's data rows (0-based)
LINE_COLUMN = "_line_number"  # line number in a CSV file, for lines that could not be parsed
RAW_LINE_COLUMN = "_raw_line"
ERROR_COLUMN = "_parse_error"  # why a CSV line could not be parsed
QUARANTINE_ROWS_FILE = "rows.parquet"
QUARANTINE_MANIFEST = "manifest.json"


class IngestionError(ValueError):
    """Bad arguments to ingestion (not bad data: bad data is quarantined)."""


@dataclass
class FileOutcome:
    """What happened to one landing file."""

    name: str
    status: str  # "read" or "quarantined"
    rows_read: int = 0
    reason: str | None = None  # why the whole file was quarantined
    missing_columns: list[str] = field(default_factory=list)
    extra_columns: list[str] = field(default_factory=list)
    coerced_columns: dict[str, str] = field(default_factory=dict)  # column -> type it arrived as
    content_sha256: str | None = None
    quarantined_as: str | None = None  # name of its copy under the day's quarantine files/
    malformed_lines: int = 0  # CSV lines that could not be parsed (each quarantined alone, in full)

    def as_dict(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if v not in (None, [], {})}


@dataclass
class DayResult:
    """The outcome of ingesting one table for one day."""

    table: str
    day: str
    kept: pa.Table
    quarantined: pd.DataFrame
    files: list[FileOutcome]
    rows_read: int
    landing_hash: str
    landing_notes: list[str] = field(default_factory=list)  # entries of the landing folder that were not read

    @property
    def rows_kept(self) -> int:
        return self.kept.num_rows

    @property
    def rows_quarantined(self) -> int:
        return len(self.quarantined)

    @property
    def quarantine_rate(self) -> float:
        return self.rows_quarantined / self.rows_read if self.rows_read else 0.0

    @property
    def quarantined_by_reason(self) -> dict[str, int]:
        """Rows per failed check (a row that failed several checks counts under each)."""
        counts: Counter = Counter()
        if len(self.quarantined):
            for reason in self.quarantined[REASON_COLUMN].dropna():
                counts.update(str(reason).split(REASON_SEPARATOR))
        return dict(sorted(counts.items()))

    @property
    def files_quarantined(self) -> list[FileOutcome]:
        return [f for f in self.files if f.status == "quarantined"]

    @property
    def schema_errors(self) -> list[str]:
        """Producer errors that make the day's schema invalid: files missing required columns."""
        return [
            f"{f.name}: missing required columns {', '.join(f.missing_columns)}"
            for f in self.files
            if f.missing_columns
        ]

    @property
    def schema_warnings(self) -> list[str]:
        warnings = []
        for f in self.files:
            if f.status == "quarantined" and not f.missing_columns:
                warnings.append(f"{f.name}: quarantined whole ({f.reason})")
            for col, arrived in f.coerced_columns.items():
                warnings.append(f"{f.name}: column {col} arrived as {arrived}, coerced")
            if f.extra_columns:
                warnings.append(f"{f.name}: extra columns ignored: {', '.join(f.extra_columns)}")
            if f.malformed_lines:
                warnings.append(
                    f"{f.name}: {f.malformed_lines} malformed line(s) quarantined (malformed_csv_line)"
                )
        if not self.files:
            warnings.append("no landing files for this day")
        warnings += [f"landing folder: {note}" for note in self.landing_notes]
        return warnings

    @cached_property
    def content_hash(self) -> str:
        """Hash of the kept rows, equal to the hash of the partition read back (see ``manifest.content_hash``)."""
        from mlops_assets.ingestion.manifest import content_hash

        return content_hash(self.kept)

    def check_conservation(self) -> None:
        if self.rows_read != self.rows_kept + self.rows_quarantined:
            raise AssertionError(
                f"{self.table} {self.day}: rows read {self.rows_read} != kept {self.rows_kept}"
                f" + quarantined {self.rows_quarantined}"
            )


@dataclass(frozen=True)
class LandingFile:
    path: Path
    day: str

    @property
    def name(self) -> str:
        return self.path.name


def parse_day(day: str) -> date:
    """Parse an ISO day, with a clear error."""
    try:
        return date.fromisoformat(day)
    except (TypeError, ValueError) as exc:
        raise IngestionError(f"expected a day as YYYY-MM-DD, got {day!r}") from exc


def day_of_file(name: str) -> str | None:
    """The partition day a landing file belongs to: the first valid YYYY-MM-DD in its name."""
    for match in DAY_IN_NAME.finditer(name):
        try:
            date.fromisoformat(match.group(1))
        except ValueError:
            continue
        return match.group(1)
    return None


def list_landing_files(landing_dir: Path, pattern: str = "*") -> list[LandingFile]:
    """Every candidate landing file in a table's landing folder (not recursive, no dotfiles)."""
    return scan_landing_dir(landing_dir, pattern)[0]


def scan_landing_dir(landing_dir: Path, pattern: str = "*") -> tuple[list[LandingFile], list[str]]:
    """(landing files with a day in their name, notes on every other entry that is not one).

    Hidden names (a writer's temporary file) are skipped silently; anything else that is not a
    dated file matching ``pattern`` is named in a note, so nothing in the folder goes unmentioned.
    """
    landing_dir = Path(landing_dir)
    if not landing_dir.is_dir():
        return [], []
    found, notes = [], []
    for path in sorted(landing_dir.iterdir()):
        if path.name.startswith("."):
            continue
        if not fnmatch.fnmatchcase(path.name, pattern):
            notes.append(f"{path.name}: ignored, its name does not match the source's pattern {pattern!r}")
            continue
        day = day_of_file(path.name)
        if path.is_dir() and not path.is_symlink():
            notes.append(f"{path.name}: a folder, not a landing file; ignored")
            continue
        if day is None:
            notes.append(f"{path.name}: ignored, its name holds no day as YYYY-MM-DD (the day it belongs to)")
            continue
        if not path.is_file() and not path.is_symlink():
            notes.append(f"{path.name}: not a regular file; ignored")
            continue
        found.append(LandingFile(path, day))
    return found, notes


def files_for_day(landing_dir: Path, day: str, pattern: str = "*") -> list[LandingFile]:
    parse_day(day)
    return [f for f in list_landing_files(landing_dir, pattern) if f.day == day]


def file_problem(path: Path, file_format: str = "auto") -> str | None:
    """Why a landing file cannot be accepted by its name or kind, or None."""
    name = path.name
    if ".." in name or not SAFE_NAME.match(name):
        return "unsafe file name: only letters, digits, '.', '_' and '-' are accepted, and no '..'"
    if path.is_symlink():
        return "symbolic links are not accepted as landing files"
    if file_format == "auto" and path.suffix.lower() not in SUPPORTED_SUFFIXES:
        return f"unsupported file type {path.suffix or '(none)'}: expected .parquet or .csv"
    return None


def file_kind(path: Path, file_format: str = "auto") -> str:
    """``parquet`` or ``csv``: the source's declared format, else the file's suffix."""
    if file_format != "auto":
        return file_format
    return "parquet" if path.suffix.lower() == ".parquet" else "csv"


def _read_parquet(data: bytes) -> pd.DataFrame:
    table = pq.read_table(io.BytesIO(data))
    frame = table.to_pandas(types_mapper=_keep_arrow_types)
    for position, column in enumerate(table.columns):
        if pa.types.is_floating(column.type):  # a masked float keeps a stored NaN apart from a null
            values = column.to_numpy(zero_copy_only=False).astype("float64")
            nulls = column.is_null().to_numpy(zero_copy_only=False)
            frame.isetitem(position, pd.arrays.FloatingArray(values, nulls))
    return frame


def _keep_arrow_types(arrow_type: pa.DataType):  # noqa: ANN202 - pandas' types_mapper protocol
    if pa.types.is_string(arrow_type) or pa.types.is_large_string(arrow_type):
        return pd.StringDtype()
    return None


_LINE_BREAK = re.compile(r"\r\n|\r|\n")


def _split_lines(text: str) -> list[str]:
    """The physical lines of a text (``\\n``, ``\\r\\n`` or ``\\r`` ends a line; a final line break ends the last)."""
    lines = _LINE_BREAK.split(text)
    if lines and lines[-1] == "":
        lines.pop()
    return lines


def _parse_line(line: str) -> list[str]:
    """The fields of one CSV line; an opening quote that the line does not close is an error.

    A quoted field never continues on the next line: a record is one physical line, so an
    unterminated quote costs that line alone instead of swallowing the lines after it.
    """
    if '"' not in line:
        return line.split(",")
    try:
        return next(csv.reader((line,), strict=True))
    except csv.Error as exc:
        if "unexpected end of data" in str(exc):
            raise ValueError("unterminated quote: the line opens a quoted field it does not close") from None
    return next(csv.reader((line,)))  # a stray quote inside a field is kept as text, as before


def _read_csv(data: bytes, encoding: str = "utf-8") -> tuple[pd.DataFrame, list[tuple[int, str, str]]]:
    """Read a CSV as strings, one record per physical line after the header (blank lines skipped).

    Lines that cannot be parsed or have the wrong number of fields are returned separately as
    (line number, the whole line, what is wrong).
    """
    try:
        text = data.decode(encoding)
    except UnicodeDecodeError as exc:
        raise ValueError(
            f"not valid {encoding} at byte {exc.start}: declare the file's encoding in the source's 'encoding'"
        ) from None
    except LookupError:
        raise ValueError(f"unknown encoding {encoding!r} declared for the source") from None
    lines = _split_lines(text.removeprefix("\ufeff"))
    if not lines:
        raise ValueError("CSV file has no header line")
    try:
        header = [h.strip() for h in _parse_line(lines[0])]
    except ValueError as exc:
        raise ValueError(f"CSV header cannot be parsed: {exc}") from None
    if not any(header):
        raise ValueError("CSV header is empty")
    rows, bad = [], []
    for number, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue  # a blank line holds no record
        try:
            row = _parse_line(line)
        except ValueError as exc:
            bad.append((number, line, str(exc)))
            continue
        if len(row) != len(header):
            bad.append((number, line, f"{len(row)} fields, the header has {len(header)}"))
            continue
        rows.append(row)
    frame = pd.DataFrame(rows, columns=header, dtype="string")
    frame = frame.replace({"": pd.NA})
    return frame, bad


#: Largest magnitude a float value may have: sums of up to 10^8 such values stay finite in float64.
FLOAT_LIMIT = 1e300
_NAN_TEXT = re.compile(r"^\s*[+-]?nan\s*$", re.IGNORECASE)
_INT_TEXT = r"\s*[+-]?\d+\s*"
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
_EXACT_FLOAT_INT = 2**53  # larger integers arriving as floats may not be the ones that were written


def _to_float(series: pd.Series) -> tuple[pd.Series, pd.Series, pd.Series]:
    """(float64 values, mask of non-finite values: inf, -inf, NaN or a text overflowing to inf,
    mask of finite values beyond :data:`FLOAT_LIMIT`); those values are set to null."""
    if pd.api.types.is_numeric_dtype(series.dtype) and not pd.api.types.is_bool_dtype(series.dtype):
        present = series.notna().to_numpy(dtype=bool)  # a masked float keeps a stored NaN apart from a null
        raw = series.astype("Float64").to_numpy(dtype="float64", na_value=np.nan)
        values = pd.Series(raw, index=series.index, dtype="float64")
        non_finite = present & ~np.isfinite(raw)
    else:
        text = series.astype("string")
        values = pd.to_numeric(text, errors="coerce").astype("float64")
        raw = values.to_numpy(dtype="float64", na_value=np.nan)
        nan_text = text.str.match(_NAN_TEXT).fillna(False).astype(bool)
        non_finite = pd.Series(np.isinf(raw), index=series.index) | nan_text
    with np.errstate(invalid="ignore"):
        too_large = pd.Series(np.isfinite(raw) & (np.abs(raw) > FLOAT_LIMIT), index=series.index)
    non_finite = pd.Series(non_finite, index=series.index).astype(bool)
    values = values.where(~(non_finite | too_large), np.nan)
    return values, non_finite, too_large


def _to_int64(series: pd.Series) -> pd.Series:
    """Integers exactly as written (null where a value is not an integer that fits in int64)."""
    integers = pd.api.types.is_integer_dtype(series.dtype)
    if integers:
        try:
            return series.astype("Int64")
        except (OverflowError, TypeError, ValueError):  # e.g. uint64 beyond int64: judged value by value
            pass
    out = pd.Series(pd.NA, index=series.index, dtype="Int64")
    if not integers and (
        pd.api.types.is_numeric_dtype(series.dtype) or pd.api.types.is_bool_dtype(series.dtype)
    ):
        floats = series.astype("Float64").to_numpy(dtype="float64", na_value=np.nan)
        rest = np.ones(len(series), dtype=bool)
        candidates = pd.Series(floats, index=series.index)
    else:
        text = series.astype("string")
        digits = text.str.fullmatch(_INT_TEXT).fillna(False).to_numpy(dtype=bool)
        if digits.any():
            ints = [int(t) for t in text[digits]]
            fits = np.array([_INT64_MIN <= v <= _INT64_MAX for v in ints], dtype=bool)
            positions = np.flatnonzero(digits)[fits]
            out.iloc[positions] = [v for v, f in zip(ints, fits, strict=True) if f]
        rest = ~digits & text.notna().to_numpy(dtype=bool)
        candidates = pd.to_numeric(text.where(rest), errors="coerce").astype("float64")
    floats = candidates.to_numpy(dtype="float64", na_value=np.nan)
    with np.errstate(invalid="ignore"):
        ok = rest & np.isfinite(floats) & (floats == np.floor(floats)) & (np.abs(floats) <= _EXACT_FLOAT_INT)
    if ok.any():
        out.iloc[np.flatnonzero(ok)] = floats[ok].astype(np.int64)
    return out


def _coerce(series: pd.Series, spec: ColumnSpec) -> tuple[pd.Series, pd.Series, list[tuple[str, pd.Series]]]:
    """Cast a column to the contract's type: the values, a mask of values that failed to parse, and
    further (reason prefix, mask) failures (non-finite or too large floats) that are not type errors."""
    was_null = series.isna()
    dtype = spec.dtype
    extra: list[tuple[str, pd.Series]] = []
    if pa.types.is_timestamp(dtype):
        if pd.api.types.is_datetime64_any_dtype(series):
            values = series if getattr(series.dt, "tz", None) is not None else series.dt.tz_localize("UTC")
            values = values.dt.tz_convert("UTC")
        else:
            values = pd.to_datetime(series.astype("string"), utc=True, errors="coerce", format="ISO8601")
        values = values.astype("datetime64[us, UTC]")
    elif pa.types.is_date32(dtype):
        if pd.api.types.is_datetime64_any_dtype(series):
            parsed = series
        else:
            parsed = pd.to_datetime(series.astype("string"), errors="coerce", format="ISO8601")
        values = parsed.dt.date if hasattr(parsed, "dt") else parsed
        values = pd.Series(values, index=series.index, dtype="object").where(parsed.notna(), None)
    elif pa.types.is_floating(dtype):
        values, non_finite, too_large = _to_float(series)
        extra = [("non_finite", non_finite), ("too_large", too_large)]
        was_null = was_null | non_finite | too_large  # rejected with their own reason, not as a type error
    elif pa.types.is_integer(dtype):
        values = _to_int64(series)
    elif pa.types.is_boolean(dtype):
        if pd.api.types.is_bool_dtype(series):
            values = series.astype("boolean")
        else:
            text = series.astype("string").str.strip().str.lower()
            mapping = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}
            values = text.map(mapping, na_action="ignore").astype("boolean")
    else:
        values = series.astype("string").str.strip()
        values = values.where(values != "", pd.NA)
    failed = ~was_null & pd.Series(pd.isna(values), index=series.index)
    return values, failed, extra


def _type_matches(series: pd.Series, spec: ColumnSpec) -> bool:
    dtype = spec.dtype
    kind = series.dtype
    if series.isna().all():
        return True  # an all-null column carries no type to judge
    if pa.types.is_timestamp(dtype):
        return pd.api.types.is_datetime64_any_dtype(kind)
    if pa.types.is_date32(dtype):
        return pd.api.types.is_object_dtype(kind) or pd.api.types.is_datetime64_any_dtype(kind)
    if pa.types.is_floating(dtype) or pa.types.is_integer(dtype):
        return pd.api.types.is_numeric_dtype(kind) and not pd.api.types.is_bool_dtype(kind)
    if pa.types.is_boolean(dtype):
        return pd.api.types.is_bool_dtype(kind)
    return pd.api.types.is_string_dtype(kind) or pd.api.types.is_object_dtype(kind)


def _validate_rows(
    frame: pd.DataFrame,
    contract: TableContract,
    day: date,
    source: str,
    outcome: FileOutcome,
    typed_file: bool,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split one file's rows into (kept, quarantined); a quarantined row's reason lists every check it failed."""
    failures: list[tuple[str, pd.Series]] = []
    typed = {}
    rejected: dict[str, pd.Series] = {}  # per column: values rejected by a parse check (not nulls)
    for spec in contract.columns:
        if spec.name not in frame.columns:  # an optional column absent from this file: all null
            typed[spec.name] = pd.Series(pd.NA, index=frame.index, dtype="object")
            continue
        raw = frame[spec.name]
        if not typed_file:
            pass  # CSV carries no types: every column is parsed from text
        elif not _type_matches(raw, spec):
            outcome.coerced_columns[spec.name] = str(raw.dtype)
        elif pa.types.is_timestamp(spec.dtype) and getattr(raw.dt, "tz", None) is None:
            outcome.coerced_columns[spec.name] = "timestamp without time zone (read as UTC)"
        values, failed, extra = _coerce(raw, spec)
        failures.append((f"invalid_type:{spec.name}", failed))
        failures += [(f"{reason}:{spec.name}", mask) for reason, mask in extra]
        rejected[spec.name] = failed
        for _, mask in extra:
            rejected[spec.name] = rejected[spec.name] | mask
        typed[spec.name] = values
    for spec in contract.columns:
        values = typed[spec.name]
        invalid = rejected.get(spec.name)
        if not spec.nullable:
            is_null = values.isna() if invalid is None else values.isna() & ~invalid
            failures.append((f"null:{spec.name}", is_null))
        if spec.allowed is not None:
            as_text = values.astype("string")
            failures.append((f"not_allowed:{spec.name}", values.notna() & ~as_text.isin(spec.allowed)))
        if spec.min_value is not None:
            failures.append(
                (f"below_minimum:{spec.name}", values.notna() & (values.astype("float64") < spec.min_value))
            )
        if spec.max_value is not None:
            failures.append(
                (f"above_maximum:{spec.name}", values.notna() & (values.astype("float64") > spec.max_value))
            )
    start = pd.Timestamp(datetime(day.year, day.month, day.day, tzinfo=UTC))
    end = start + timedelta(days=1)
    ts = typed[contract.partition_column]
    outside = ts.notna() & ((ts < start) | (ts >= end))
    failures.append((f"outside_partition:{contract.partition_column}", outside))
    reasons = _joined_reasons(frame.index, failures)
    kept_frame = pd.DataFrame({name: typed[name] for name in contract.column_names}, index=frame.index)
    bad_mask = reasons.notna()
    quarantined = _quarantine_rows(frame.loc[bad_mask], reasons[bad_mask], source)
    return kept_frame.loc[~bad_mask], quarantined


REASON_SEPARATOR = ";"


def _joined_reasons(index: pd.Index, failures: list[tuple[str, pd.Series]]) -> pd.Series:
    """Per row, every failed check's reason joined by ``;`` in check order (NA when none failed)."""
    out = pd.Series(pd.NA, index=index, dtype="string")
    for reason, mask in failures:
        mask = pd.Series(mask, index=index).fillna(False).astype(bool)
        if not mask.any():
            continue
        out = out.mask(mask & out.isna(), reason).mask(
            mask & out.notna() & (out != reason), out + REASON_SEPARATOR + reason
        )
    return out


def _quarantine_rows(raw: pd.DataFrame, reasons: pd.Series, source: str) -> pd.DataFrame:
    """Rejected rows as text (exactly what arrived), with reason, source file and row number."""
    out = raw.astype("string")
    out[REASON_COLUMN] = reasons.astype("string").to_numpy()
    out[SOURCE_COLUMN] = source
    out[ROW_COLUMN] = raw.index.to_numpy(dtype="int64")
    return out.reset_index(drop=True)


def _apply_unique_key(kept: pd.DataFrame, contract: TableContract) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Quarantine every repeat of a unique key after its first occurrence (in landing order)."""
    if not contract.unique_key or kept.empty:
        return kept, kept.iloc[0:0]
    dup = kept.duplicated(subset=list(contract.unique_key), keep="first")
    return kept.loc[~dup], kept.loc[dup]


def _to_contract_table(kept: pd.DataFrame, contract: TableContract, sort: bool = True) -> pa.Table:
    if sort and contract.sort_by and not kept.empty:
        kept = kept.sort_values(list(contract.sort_by), kind="mergesort")
    arrays = []
    for spec in contract.columns:
        values = kept[spec.name]
        if pa.types.is_date32(spec.dtype):
            arrays.append(pa.array(list(values), type=spec.dtype))
        elif pa.types.is_integer(spec.dtype):
            ints = values.astype("Int64")
            mask = ints.isna().to_numpy()
            arrays.append(
                pa.array(
                    ints.to_numpy(dtype="int64", na_value=0),
                    type=spec.dtype,
                    mask=mask if mask.any() else None,
                )
            )
        elif values.dtype == object and values.isna().all():
            arrays.append(pa.nulls(len(values), type=spec.dtype))
        else:
            arrays.append(pa.Array.from_pandas(values, type=spec.dtype))
    return pa.Table.from_arrays(arrays, schema=contract.schema)


def landing_hash(entries: list[tuple[str, str]]) -> str:
    """Hash of a day's landing files: their names and content hashes, order-independent."""
    return _sha256("\n".join(sorted(f"{name}:{sha}" for name, sha in entries)).encode())


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class KeyIndex:
    """The unique keys a table keeps on its other days, to quarantine a key already kept on one of them.

    Built from the table's partitions on disk, minus the days being ingested (a re-run of a day never
    counts its own earlier rows); each ingested day is added as it is kept. Keys are held as 64-bit
    hashes with the day that kept them (12 bytes per row), in a few sorted levels merged as they grow
    (a lookup is a binary search per level); a hash found in another day is confirmed on that day's keys.
    """

    def __init__(
        self, contract: TableContract, table_dir: Path | None = None, exclude: Iterable[str] = ()
    ) -> None:
        self.columns = list(contract.unique_key)
        self.table_dir = Path(table_dir) if table_dir is not None else None
        self._days: list[str] = []  # day index -> day
        self._levels: list[tuple[np.ndarray, np.ndarray]] = []  # (sorted hashes, day index of each)
        self._keys: dict[str, pa.Table] = {}  # days added by this run: their kept keys
        self._exact: dict[str, set] = {}
        excluded = set(exclude)
        if self.columns and self.table_dir is not None and self.table_dir.is_dir():
            for part in sorted(self.table_dir.glob("date=*")):
                day = part.name[len("date=") :]
                keys = None if day in excluded else self._read_keys(part)
                if keys is not None and keys.num_rows:
                    self._push(day, keys)

    def _read_keys(self, part: Path) -> pa.Table | None:
        try:
            names = sorted(n for n in os.listdir(part) if n.endswith(".parquet"))
        except (FileNotFoundError, NotADirectoryError):
            return None
        tables = []
        for name in names:
            with pa.OSFile(str(part / name)) as handle:
                tables.append(pq.read_table(handle, columns=self.columns))
        return pa.concat_tables(tables) if tables else None

    def _push(self, day: str, keys: pa.Table) -> None:
        hashes = _key_hashes(keys)
        order = np.argsort(hashes, kind="stable")
        self._levels.append((hashes[order], np.full(len(hashes), len(self._days), dtype=np.int32)))
        self._days.append(day)
        while len(self._levels) > 1 and len(self._levels[-2][0]) <= 2 * len(self._levels[-1][0]):
            (h2, o2), (h1, o1) = self._levels.pop(), self._levels.pop()
            hashes, owners = np.concatenate([h1, h2]), np.concatenate([o1, o2])
            order = np.argsort(hashes, kind="stable")
            self._levels.append((hashes[order], owners[order]))

    def add(self, day: str, kept: pa.Table) -> None:
        """Record the keys kept on ``day`` by this run."""
        keys = kept.select(self.columns)
        self._keys[day] = keys
        self._exact.pop(day, None)
        if keys.num_rows:
            self._push(day, keys)

    def _exact_keys(self, day: str) -> set:
        if day not in self._exact:
            keys = self._keys.get(day)
            if keys is None and self.table_dir is not None:
                keys = self._read_keys(self.table_dir / f"date={day}")
            self._exact[day] = set() if keys is None else set(_key_rows(keys, self.columns))
        return self._exact[day]

    def days_holding(self, keys: pa.Table, day: str) -> list[str | None]:
        """Per row of ``keys``: another day that kept the same key (None when no other day did)."""
        out: list[str | None] = [None] * keys.num_rows
        if not keys.num_rows or not self._levels:
            return out
        hashes = _key_hashes(keys)
        order = np.argsort(hashes)  # sorted needles: the searches walk each level once
        needles = hashes[order]
        candidates: dict[int, list[int]] = {}  # row -> day indexes holding its hash
        for level, owners in self._levels:
            first = np.searchsorted(level, needles, side="left")
            last = np.searchsorted(level, needles, side="right")
            for i in np.flatnonzero(last > first):
                row = int(order[i])
                candidates.setdefault(row, []).extend(int(o) for o in owners[first[i] : last[i]])
        if not candidates:
            return out
        rows = _key_rows(keys.take(pa.array(sorted(candidates))), self.columns)
        for (row, owners), key in zip(sorted(candidates.items()), rows, strict=True):
            for other in sorted({self._days[o] for o in owners} - {day}):
                if key in self._exact_keys(other):
                    out[row] = other
                    break
        return out


def _key_rows(keys: pa.Table, columns: list[str]) -> list[tuple]:
    return list(zip(*(keys.column(c).to_pylist() for c in columns), strict=True))


def _key_hashes(keys: pa.Table) -> np.ndarray:
    return pd.util.hash_pandas_object(keys.to_pandas(), index=False).to_numpy(dtype=np.uint64)


def ingest_day(
    contract: TableContract, landing_dir: Path, day: str, other_days: KeyIndex | None = None
) -> DayResult:
    """Validate every landing file of ``day`` for ``contract``; nothing is written.

    ``other_days`` holds the unique keys kept on the table's other days: a row whose key one of them
    kept is quarantined with ``duplicate_of_day:<that day>`` (for a contract whose keys are unique
    across the table; without it, keys are checked within the day only).
    """
    parsed_day = parse_day(day)
    listed, notes = scan_landing_dir(landing_dir, contract.pattern)
    files = [f for f in listed if f.day == day]
    outcomes: list[FileOutcome] = []
    kept_parts: list[pd.DataFrame] = []
    quarantine_parts: list[pd.DataFrame] = []
    rows_read = 0
    hashes: list[tuple[str, str]] = []
    for landing in files:
        outcome = FileOutcome(name=landing.name, status="read")
        outcomes.append(outcome)
        problem = file_problem(landing.path, contract.file_format)
        kind = file_kind(landing.path, contract.file_format)
        if landing.path.is_symlink():
            outcome.status, outcome.reason = "quarantined", problem
            continue
        try:
            data = landing.path.read_bytes()
        except OSError as exc:
            outcome.status, outcome.reason = "quarantined", f"unreadable file: {type(exc).__name__}: {exc}"
            notes.append(f"{landing.name}: cannot be read ({exc.strerror or exc}); quarantined")
            continue
        outcome.content_sha256 = _sha256(data)
        hashes.append((landing.name, outcome.content_sha256))
        if problem:
            outcome.status, outcome.reason = "quarantined", problem
            continue
        if not data:
            outcome.status, outcome.reason = "quarantined", "empty file (0 bytes)"
            continue
        bad_lines: list[tuple[int, str, str]] = []
        try:
            if kind == "parquet":
                frame = _read_parquet(data)
            else:
                frame, bad_lines = _read_csv(data, contract.encoding)
        except Exception as exc:  # any reader failure means the file is unreadable: quarantine it whole
            outcome.status = "quarantined"
            outcome.reason = f"unreadable {kind} file: {type(exc).__name__}: {exc}"[:500]
            continue
        frame = frame.reset_index(drop=True)
        outcome.rows_read = len(frame) + len(bad_lines)
        outcome.malformed_lines = len(bad_lines)
        rows_read += outcome.rows_read
        if bad_lines:
            quarantine_parts.append(
                pd.DataFrame(
                    {
                        RAW_LINE_COLUMN: pd.Series([text for _, text, _ in bad_lines], dtype="string"),
                        REASON_COLUMN: pd.Series(["malformed_csv_line"] * len(bad_lines), dtype="string"),
                        ERROR_COLUMN: pd.Series([why for _, _, why in bad_lines], dtype="string"),
                        SOURCE_COLUMN: landing.name,
                        LINE_COLUMN: pd.Series([n for n, _, _ in bad_lines], dtype="int64"),
                    }
                )
            )
        outcome.missing_columns = [c for c in contract.required_columns if c not in frame.columns]
        outcome.extra_columns = [c for c in frame.columns if c not in contract.column_names]
        if outcome.missing_columns:
            reason = "missing_columns:" + ",".join(outcome.missing_columns)
            quarantined = _quarantine_rows(
                frame, pd.Series([reason] * len(frame), index=frame.index), landing.name
            )
            quarantine_parts.append(quarantined)
            continue
        kept, quarantined = _validate_rows(
            frame,
            contract,
            parsed_day,
            landing.name,
            outcome,
            typed_file=kind == "parquet",
        )
        kept_parts.append(kept.assign(**{SOURCE_COLUMN: landing.name, ROW_COLUMN: kept.index.to_numpy()}))
        if len(quarantined):
            quarantine_parts.append(quarantined)

    kept_all = _concat(kept_parts, contract.column_names + [SOURCE_COLUMN, ROW_COLUMN])
    kept_all, repeats = _apply_unique_key(kept_all, contract)
    if len(repeats):
        key = ",".join(contract.unique_key)
        quarantine_parts.append(_repeats(repeats, contract, pd.Series([f"duplicate:{key}"] * len(repeats))))
    if other_days is not None and contract.unique_key and contract.unique_scope == "table" and len(kept_all):
        keys = _to_contract_table(kept_all[contract.column_names], contract, sort=False).select(
            list(contract.unique_key)
        )
        holders = pd.Series(other_days.days_holding(keys, day), index=kept_all.index, dtype="object")
        elsewhere = holders.notna()
        if elsewhere.any():
            reasons = "duplicate_of_day:" + holders[elsewhere].astype(str)
            quarantine_parts.append(_repeats(kept_all.loc[elsewhere], contract, reasons))
            kept_all = kept_all.loc[~elsewhere]
    quarantined_all = _concat(quarantine_parts, None)
    for column in (ROW_COLUMN, LINE_COLUMN):
        if column in quarantined_all.columns:
            quarantined_all[column] = quarantined_all[column].astype("Int64")
    result = DayResult(
        table=contract.name,
        day=day,
        kept=_to_contract_table(kept_all[contract.column_names], contract),
        quarantined=quarantined_all,
        files=outcomes,
        rows_read=rows_read,
        landing_hash=landing_hash(hashes),
        landing_notes=notes,
    )
    result.check_conservation()
    return result


def _repeats(rows: pd.DataFrame, contract: TableContract, reasons: pd.Series) -> pd.DataFrame:
    """Kept rows rejected for their key, as quarantine rows (with their file, row and line)."""
    raw = rows[contract.column_names]
    out = _quarantine_rows(raw, pd.Series(reasons.to_numpy(), index=raw.index), "")
    return out.assign(
        **{SOURCE_COLUMN: rows[SOURCE_COLUMN].to_numpy(), ROW_COLUMN: rows[ROW_COLUMN].to_numpy()}
    )


def _concat(parts: list[pd.DataFrame], columns: list[str] | None) -> pd.DataFrame:
    parts = [p for p in parts if len(p)]
    if not parts:
        return pd.DataFrame(columns=columns or [REASON_COLUMN, SOURCE_COLUMN, ROW_COLUMN])
    return pd.concat(parts, ignore_index=True)


def write_day(result: DayResult, partition_dir: Path, quarantine_dir: Path, landing_dir: Path) -> None:
    """Write the kept rows and the quarantine of one day, each folder replaced atomically."""
    write_partition(result.kept, partition_dir)
    quarantine_dir = Path(quarantine_dir)
    if not result.rows_quarantined and not result.files_quarantined:
        # this run rejected nothing: retire the old quarantine of the day (moved out of the table in one
        # rename, then deleted; a concurrent run of the same day retiring it first is not an error)
        remove_directory(quarantine_dir)
        return
    with atomic_directory(quarantine_dir) as staging:
        if result.rows_quarantined:
            table = pa.Table.from_pandas(
                result.quarantined.astype({c: "string" for c in _text_columns(result)}), preserve_index=False
            )
            pq.write_table(table, staging / QUARANTINE_ROWS_FILE, compression="zstd")
        files_dir = staging / "files"
        used: set[str] = set()
        for outcome in result.files_quarantined:
            source = Path(landing_dir) / outcome.name
            if not source.is_file() or source.is_symlink():
                continue
            files_dir.mkdir(exist_ok=True)
            outcome.quarantined_as = quarantine_file_name(outcome.name, used)
            try:
                (files_dir / outcome.quarantined_as).write_bytes(source.read_bytes())
            except PermissionError as exc:  # unreadable: its reason is recorded, its bytes cannot be copied
                outcome.quarantined_as = None
                outcome.reason = f"{outcome.reason}; not copied: {exc.strerror}"
        manifest = {
            "table": result.table,
            "day": result.day,
            "rows_read": result.rows_read,
            "rows_kept": result.rows_kept,
            "rows_quarantined": result.rows_quarantined,
            "quarantined_by_reason": result.quarantined_by_reason,
            "files": [f.as_dict() for f in result.files],
        }
        (staging / QUARANTINE_MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True))


def quarantine_file_name(name: str, used: set[str]) -> str:
    """A safe name for a quarantined copy of landing file ``name``, distinct from every name in ``used``.

    A name that had to be changed carries a hash of the original, so two unsafe names that map to
    the same safe text (``a b.csv``, ``a:b.csv``) are both kept; ``used`` is updated.
    """
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", name).replace("..", "__").lstrip(".") or "file"
    if safe != name or safe in used:
        stem, dot, suffix = safe.rpartition(".")
        tag = hashlib.sha256(name.encode("utf-8", "surrogateescape")).hexdigest()[:12]
        safe = f"{stem}-{tag}.{suffix}" if dot and stem else f"{safe}-{tag}"
    candidate, n = safe, 1
    while candidate in used:
        n += 1
        candidate = f"{safe}-{n}"
    used.add(candidate)
    return candidate


def _text_columns(result: DayResult) -> list[str]:
    return [c for c in result.quarantined.columns if c not in (ROW_COLUMN, LINE_COLUMN)]
