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
import re
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from mlops_assets.ingestion.schema import ColumnSpec, TableContract
from mlops_assets.storage import atomic_directory, remove_directory, table_hash, write_partition

SUPPORTED_SUFFIXES = (".parquet", ".csv")
SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
DAY_IN_NAME = re.compile(r"(\d{4}-\d{2}-\d{2})")

REASON_COLUMN = "_reason"
SOURCE_COLUMN = "_source_file"
ROW_COLUMN = "_row_number"  # position of the row among its file's data rows (0-based)
LINE_COLUMN = "_line_number"  # line number in a CSV file, for lines that could not be parsed
RAW_LINE_COLUMN = "_raw_line"
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
        if not self.files:
            warnings.append("no landing files for this day")
        warnings += [f"landing folder: {note}" for note in self.landing_notes]
        return warnings

    @property
    def content_hash(self) -> str:
        return table_hash(self.kept)

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
    return table.to_pandas(types_mapper=_keep_arrow_types)


def _keep_arrow_types(arrow_type: pa.DataType):  # noqa: ANN202 - pandas' types_mapper protocol
    if pa.types.is_string(arrow_type) or pa.types.is_large_string(arrow_type):
        return pd.StringDtype()
    return None


def _read_csv(data: bytes, encoding: str = "utf-8") -> tuple[pd.DataFrame, list[tuple[int, str]]]:
    """Read a CSV as strings; lines with the wrong number of fields are returned separately."""
    try:
        text = data.decode(encoding)
    except UnicodeDecodeError as exc:
        raise ValueError(
            f"not valid {encoding} at byte {exc.start}: declare the file's encoding in the source's 'encoding'"
        ) from None
    except LookupError:
        raise ValueError(f"unknown encoding {encoding!r} declared for the source") from None
    text = text.removeprefix("\ufeff")
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader)
    except StopIteration as exc:
        raise ValueError("CSV file has no header line") from exc
    except csv.Error as exc:
        raise ValueError(f"CSV header cannot be parsed: {exc}") from exc
    header = [h.strip() for h in header]
    if not any(header):
        raise ValueError("CSV header is empty")
    rows, bad = [], []
    while True:
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            bad.append((reader.line_num, f"unparseable line: {exc}"))
            continue
        if not row or (len(row) == 1 and not row[0].strip()):
            continue  # blank line
        if len(row) != len(header):
            bad.append((reader.line_num, ",".join(row)[:500]))
            continue
        rows.append(row)
    frame = pd.DataFrame(rows, columns=header, dtype="string")
    frame = frame.replace({"": pd.NA})
    return frame, bad


def _coerce(series: pd.Series, spec: ColumnSpec) -> tuple[pd.Series, pd.Series]:
    """Cast a column to the contract's type; return the values and a mask of values that failed."""
    was_null = series.isna()
    dtype = spec.dtype
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
        values = pd.to_numeric(series, errors="coerce").astype("float64")
    elif pa.types.is_integer(dtype):
        numeric = pd.to_numeric(series, errors="coerce")
        integral = numeric.notna() & (numeric == np.floor(numeric.astype("float64").fillna(0)))
        values = numeric.where(integral).astype("Int64")
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
    return values, failed


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
        values, failed = _coerce(raw, spec)
        failures.append((f"invalid_type:{spec.name}", failed))
        typed[spec.name] = values
    for spec in contract.columns:
        values = typed[spec.name]
        invalid = next((m for r, m in failures if r == f"invalid_type:{spec.name}"), None)
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


def _to_contract_table(kept: pd.DataFrame, contract: TableContract) -> pa.Table:
    if contract.sort_by and not kept.empty:
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


def ingest_day(contract: TableContract, landing_dir: Path, day: str) -> DayResult:
    """Validate every landing file of ``day`` for ``contract``; nothing is written."""
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
        data = landing.path.read_bytes()
        outcome.content_sha256 = _sha256(data)
        hashes.append((landing.name, outcome.content_sha256))
        if problem:
            outcome.status, outcome.reason = "quarantined", problem
            continue
        if not data:
            outcome.status, outcome.reason = "quarantined", "empty file (0 bytes)"
            continue
        bad_lines: list[tuple[int, str]] = []
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
        rows_read += outcome.rows_read
        if bad_lines:
            quarantine_parts.append(
                pd.DataFrame(
                    {
                        RAW_LINE_COLUMN: pd.Series([text for _, text in bad_lines], dtype="string"),
                        REASON_COLUMN: pd.Series(["malformed_csv_line"] * len(bad_lines), dtype="string"),
                        SOURCE_COLUMN: landing.name,
                        LINE_COLUMN: pd.Series([n for n, _ in bad_lines], dtype="int64"),
                    }
                )
            )
        outcome.missing_columns = [c for c in contract.required_columns if c not in frame.columns]
        outcome.extra_columns = [c for c in frame.columns if c not in contract.column_names]
        if outcome.missing_columns:
            reason = "missing_columns:" + ",".join(outcome.missing_columns)
            quarantine_parts.append(
                _quarantine_rows(frame, pd.Series([reason] * len(frame), index=frame.index), landing.name)
            )
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
        raw = repeats[contract.column_names]
        quarantine_parts.append(
            _quarantine_rows(raw, pd.Series([f"duplicate:{key}"] * len(raw), index=raw.index), "").assign(
                **{
                    SOURCE_COLUMN: repeats[SOURCE_COLUMN].to_numpy(),
                    ROW_COLUMN: repeats[ROW_COLUMN].to_numpy(),
                }
            )
        )
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
        for outcome in result.files_quarantined:
            files_dir.mkdir(exist_ok=True)
            source = Path(landing_dir) / outcome.name
            safe = re.sub(r"[^A-Za-z0-9._-]", "_", outcome.name).replace("..", "__").lstrip(".") or "file"
            if source.is_file() and not source.is_symlink():
                (files_dir / safe).write_bytes(source.read_bytes())
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


def _text_columns(result: DayResult) -> list[str]:
    return [c for c in result.quarantined.columns if c not in (ROW_COLUMN, LINE_COLUMN)]
