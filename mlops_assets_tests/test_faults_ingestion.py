"""Fault battery for landing files: every record of a bad file is kept or quarantined, counted without the engine.

Each case builds a landing file the way a broken producer would (an unterminated quote, non-finite or
overflowing numbers, integers beyond int64, keys repeated across days, unsafe names colliding, folders
and pipes in the landing folder, a latin-1 export) and checks that ``rows read = kept + quarantined``
where ``rows read`` is counted here, from the file's bytes (CSV: non-blank lines after the header) or
its Parquet footer, never through the ingestion code.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import dagster as dg
import duckdb
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from mlops_assets.ingestion.assets import QUARANTINE_CHECK, SCHEMA_CHECK, build_ingestion_assets
from mlops_assets.ingestion.schema import contract_for
from mlops_assets.ingestion.validate import (
    FLOAT_LIMIT,
    QUARANTINE_MANIFEST,
    QUARANTINE_ROWS_FILE,
    REASON_COLUMN,
    KeyIndex,
    ingest_day,
    write_day,
)
from mlops_assets.partitions import daily_partitions
from mlops_assets.project import Project
from mlops_assets.resources import DataDirResource
from mlops_assets.spec.model import Column, Source
from mlops_assets_tests.conftest import RANGE_END_TAG, RANGE_START_TAG, events_frame, write_events

DAY = "2026-01-05"
HEADER = "event_id,customer_id,event_timestamp,event_type,amount"


def physical_records(path) -> int:
    """Data records of a landing file, counted from its bytes: CSV non-blank lines after the header; Parquet rows."""
    if path.suffix == ".parquet":
        return pq.ParquetFile(path).metadata.num_rows
    lines = path.read_bytes().replace(b"\r\n", b"\n").replace(b"\r", b"\n").split(b"\n")
    return sum(1 for line in lines[1:] if line.strip())


def _good_line(i: int, day: str = DAY) -> str:
    return f"e{i:05d},C{i:05d},{day}T{i % 24:02d}:{i % 60:02d}:00Z,purchase,{10 + i % 7}.5"


def _ingest(
    project: Project, source: str = "raw_events", day: str = DAY, expected_records: int | None = None
):
    result = ingest_day(project.contract(source), project.landing_dir(source), day)
    if expected_records is not None:
        assert result.rows_read == expected_records  # every physical record was read ...
    assert result.rows_read == result.rows_kept + result.rows_quarantined  # ... and kept or quarantined
    return result


def _by_id(result) -> dict[str, str]:
    return dict(zip(result.quarantined["event_id"], result.quarantined[REASON_COLUMN], strict=True))


def _materialize(project: Project, days: list[str], instance: dg.DagsterInstance, source: str = "raw_events"):
    partitions = daily_partitions(project)
    [asset] = [a for a in build_ingestion_assets(project, partitions) if a.key == dg.AssetKey(source)]
    return dg.materialize(
        [asset],
        instance=instance,
        resources={"data": DataDirResource(root=str(project.paths.root))},
        tags={RANGE_START_TAG: days[0], RANGE_END_TAG: days[-1]},
        raise_on_error=False,
    )


# ------------------------------------------------------------------------------------------- CSV records


@pytest.mark.parametrize("newline", ["\n", "\r\n"], ids=["lf", "crlf"])
def test_an_unterminated_quote_costs_its_own_line_alone_and_is_quarantined_in_full(churn, newline):
    """The incident's file: 100 good lines, one opening a quote it never closes (long), 101 good lines,
    6 garbage lines, 2 good lines: 210 records. The csv module would let the quote swallow what follows."""
    unterminated = f'e_bad,C_bad,{DAY}T05:00:00Z,purchase,"12.5 ' + "never closed " * 60
    garbage = [f"garbage line {i}" for i in range(6)]
    lines = [
        *[_good_line(i) for i in range(100)],
        unterminated,
        *[_good_line(i) for i in range(100, 201)],
        *garbage,
        *[_good_line(i) for i in range(201, 203)],
    ]
    landing = churn.landing_dir("raw_events")
    landing.mkdir(parents=True)
    path = landing / f"events_{DAY}.csv"
    path.write_bytes((newline.join([HEADER, *lines]) + newline).encode())
    assert physical_records(path) == 210 and len(unterminated) > 500

    result = _ingest(churn, expected_records=physical_records(path))
    assert result.rows_kept == 203 and result.rows_quarantined == 7
    assert result.quarantined_by_reason == {"malformed_csv_line": 7}
    kept_ids = set(result.kept.column("event_id").to_pylist())
    assert kept_ids == {f"e{i:05d}" for i in range(203)}  # the 101 lines after the quote are all read
    bad = result.quarantined.set_index("_line_number")
    assert bad.loc[102, "_raw_line"] == unterminated  # in full: no 500-character cut
    assert "unterminated quote" in bad.loc[102, "_parse_error"]
    assert sorted(bad.index) == [102, *range(204, 210)]
    assert any("7 malformed line(s)" in w for w in result.schema_warnings)

    quarantine = churn.paths.quarantine_dir("raw_events", DAY)
    write_day(result, churn.paths.partition_dir("raw_events", DAY), quarantine, landing)
    stored = pq.read_table(quarantine / QUARANTINE_ROWS_FILE).to_pandas()
    assert unterminated in stored["_raw_line"].tolist()


def test_blank_lines_and_a_final_line_without_a_newline_are_counted_as_records_only_when_they_hold_data(
    churn,
):
    landing = churn.landing_dir("raw_events")
    landing.mkdir(parents=True)
    path = landing / f"events_{DAY}.csv"
    path.write_text(f"{HEADER}\n{_good_line(1)}\n\n   \n{_good_line(2)}\r{_good_line(3)}")
    result = _ingest(churn, expected_records=physical_records(path))
    assert result.rows_read == 3 and result.rows_kept == 3


def test_a_quoted_field_holding_a_line_break_is_two_records_each_accounted_for(churn):
    """A record is one physical line: a field cannot continue on the next line, so both halves are quarantined."""
    landing = churn.landing_dir("raw_events")
    landing.mkdir(parents=True)
    path = landing / f"events_{DAY}.csv"
    path.write_text(f'{HEADER}\n{_good_line(1)}\ne2,C2,{DAY}T01:00:00Z,"purch\nase",3.0\n{_good_line(3)}\n')
    result = _ingest(churn, expected_records=physical_records(path))
    assert result.rows_read == 4 and result.rows_kept == 2
    assert result.quarantined_by_reason == {"malformed_csv_line": 2}


# ------------------------------------------------------------------------------------------- numbers


def test_non_finite_and_overflowing_amounts_in_a_csv_are_rejected_with_their_reason(churn):
    amounts = {
        "e_pinf": "+inf",
        "e_minf": "-inf",
        "e_nan": "NaN",
        "e_nan2": "nan",
        "e_infinity": "Infinity",
        "e_1e309": "1e309",  # overflows to inf when parsed
        "e_1e308": "1e308",  # finite, but two of them summed overflow
        "e_ok": "12.5",
        "e_big_ok": "1e299",
    }
    rows = [f"{i},C{n},{DAY}T01:0{n}:00Z,purchase,{a}" for n, (i, a) in enumerate(amounts.items())]
    rows.append(f"e_login,C9,{DAY}T02:00:00Z,login,")  # a null amount where nulls are allowed
    landing = churn.landing_dir("raw_events")
    landing.mkdir(parents=True)
    path = landing / f"events_{DAY}.csv"
    path.write_text("\n".join([HEADER, *rows]) + "\n")

    result = _ingest(churn, expected_records=physical_records(path))
    assert _by_id(result) == {
        "e_pinf": "non_finite:amount",
        "e_minf": "non_finite:amount",
        "e_nan": "non_finite:amount",
        "e_nan2": "non_finite:amount",
        "e_infinity": "non_finite:amount",
        "e_1e309": "non_finite:amount",
        "e_1e308": "too_large:amount",
    }
    kept = result.kept.to_pydict()
    assert dict(zip(kept["event_id"], kept["amount"], strict=True)) == {
        "e_ok": 12.5,
        "e_big_ok": 1e299,
        "e_login": None,
    }
    assert (
        1e308 > FLOAT_LIMIT and FLOAT_LIMIT * 1e8 < 1.7976931348623157e308
    )  # sums of 10^8 values stay finite


def test_a_stored_nan_in_a_parquet_file_is_rejected_while_a_null_is_kept(churn):
    frame = events_frame(DAY, n=6)
    frame["event_type"] = "purchase"
    table = pa.Table.from_pandas(frame.drop(columns=["amount"]), preserve_index=False).append_column(
        "amount", pa.array([float("inf"), float("-inf"), float("nan"), 1e308, 20.0, None], from_pandas=False)
    )
    path = churn.landing_dir("raw_events") / f"events_{DAY}.parquet"
    path.parent.mkdir(parents=True)
    pq.write_table(table, path)
    stored = pq.read_table(path).column("amount")
    assert stored.null_count == 1 and pc.is_nan(stored).to_pylist()[2]  # a NaN and a null: different things

    result = _ingest(churn, expected_records=physical_records(path))
    assert sorted(_by_id(result).values()) == ["non_finite:amount"] * 3 + ["too_large:amount"]
    assert result.kept.column("amount").to_pylist() == [20.0, None]
    assert all(v is None or math.isfinite(v) for v in result.kept.column("amount").to_pylist())


def _counts_source(tmp_path):
    source = Source(
        kind="events",
        timestamp="at",
        columns={"id": Column(type="string"), "at": Column(type="timestamp"), "n": Column(type="int64")},
        landing="counts",
    )
    folder = tmp_path / "counts"
    folder.mkdir()
    return contract_for("counts", source), folder


def test_integers_are_kept_exactly_or_rejected_never_wrapped_around(tmp_path):
    contract, folder = _counts_source(tmp_path)
    values = {
        "max": ("9223372036854775807", 2**63 - 1),
        "min": ("-9223372036854775808", -(2**63)),
        "above_2_53": ("9007199254740993", 2**53 + 1),  # not representable as a float: kept exactly
        "float_text": ("3.0", 3),
        "over": ("9223372036854775808", None),
        "sci": ("1e30", None),
        "fraction": ("2.5", None),
    }
    rows = [f"{k},{DAY}T01:00:00Z,{text}" for k, (text, _) in values.items()]
    path = folder / f"counts_{DAY}.csv"
    path.write_text("\n".join(["id,at,n", *rows]) + "\n")
    result = ingest_day(contract, folder, DAY)
    assert result.rows_read == physical_records(path) == result.rows_kept + result.rows_quarantined
    kept = dict(zip(result.kept.column("id").to_pylist(), result.kept.column("n").to_pylist(), strict=True))
    assert kept == {k: v for k, (_, v) in values.items() if v is not None}
    reasons = dict(zip(result.quarantined["id"], result.quarantined[REASON_COLUMN], strict=True))
    assert reasons == {"over": "invalid_type:n", "sci": "invalid_type:n", "fraction": "invalid_type:n"}

    path.unlink()  # a Parquet file with an unsigned 64-bit column: 2**64 - 1 does not fit in int64
    stamp = pd.Timestamp(f"{DAY} 01:00", tz="UTC")
    table = pa.table(
        {"id": ["u_max", "u_small"], "at": [stamp, stamp], "n": pa.array([2**64 - 1, 5], pa.uint64())}
    )
    pq.write_table(table, folder / f"counts_{DAY}.parquet")
    result = ingest_day(contract, folder, DAY)
    assert result.rows_read == physical_records(folder / f"counts_{DAY}.parquet") == 2
    assert result.kept.to_pydict()["n"] == [5]
    assert result.quarantined[REASON_COLUMN].tolist() == ["invalid_type:n"]


# ------------------------------------------------------------------------------------------- keys across days


def _frame_with_ids(day: str, ids: list[str]) -> pd.DataFrame:
    frame = events_frame(day, n=len(ids))
    frame["event_id"] = ids
    return frame


def _kept_duplicates(paths) -> tuple[int, int]:
    """(rows, distinct event ids) over every stored partition of raw_events, read by DuckDB."""
    glob = str(paths.table_dir("raw_events") / "**" / "*.parquet")
    return duckdb.sql(f"select count(*), count(distinct event_id) from read_parquet('{glob}')").fetchall()[0]


def test_a_key_kept_on_another_day_is_quarantined_naming_that_day_and_a_rerun_does_not_count_its_own_rows(
    churn,
):
    day1, day2 = "2026-01-01", "2026-01-02"
    ids = [f"ev{i:04d}" for i in range(300)]
    write_events(churn.paths, day1, _frame_with_ids(day1, ids))
    path2 = write_events(churn.paths, day2, _frame_with_ids(day2, ids + [f"new{i:03d}" for i in range(50)]))
    instance = dg.DagsterInstance.ephemeral()

    assert _materialize(churn, [day1], instance).success
    second = _materialize(churn, [day2], instance)
    [mat] = second.asset_materializations_for_node("raw_events")
    meta = mat.metadata
    assert meta["rows_read"].value == physical_records(path2) == 350
    assert (meta["rows_kept"].value, meta["rows_quarantined"].value) == (50, 300)
    assert f"`duplicate_of_day:{day1}` | 300" in meta["quarantined_by_reason"].value
    checks = {e.check_name: e for e in second.get_asset_check_evaluations()}
    assert not checks[QUARANTINE_CHECK].passed  # 300 of 350: the gate says so

    rerun = _materialize(churn, [day1], instance)  # its own earlier rows are not "another day"
    [mat] = rerun.asset_materializations_for_node("raw_events")
    assert (mat.metadata["rows_kept"].value, mat.metadata["rows_quarantined"].value) == (300, 0)
    rows, distinct = _kept_duplicates(churn.paths)
    assert rows == distinct == 350


def test_keys_repeated_across_days_of_one_range_run_are_caught_in_that_run(churn):
    days = ["2026-01-01", "2026-01-02", "2026-01-03"]
    shared = [f"dup{i:03d}" for i in range(20)]
    for n, day in enumerate(days):
        write_events(churn.paths, day, _frame_with_ids(day, shared + [f"{day}-{i}" for i in range(10 + n)]))
    result = _materialize(churn, days, dg.DagsterInstance.ephemeral())
    mats = {m.partition: m.metadata for m in result.asset_materializations_for_node("raw_events")}
    assert [mats[d]["rows_kept"].value for d in days] == [30, 11, 12]
    assert [mats[d]["rows_quarantined"].value for d in days] == [0, 20, 20]
    for day in days:
        path = churn.landing_dir("raw_events") / f"events_{day}.parquet"
        assert mats[day]["rows_read"].value == physical_records(path)
    assert f"duplicate_of_day:{days[0]}" in mats[days[2]]["quarantined_by_reason"].value
    rows, distinct = _kept_duplicates(churn.paths)
    assert rows == distinct == 53


def test_a_snapshot_key_is_unique_within_a_day_only(churn):
    """A snapshot's key names an entity whose record changes from day to day: its later records are kept."""
    contract = churn.contract("customers")
    assert contract.unique_scope == "day" and churn.contract("raw_events").unique_scope == "table"
    landing = churn.landing_dir("customers")
    landing.mkdir(parents=True)
    for day, plan in (("2026-01-01", "basic"), ("2026-01-02", "premium")):
        (landing / f"customers_{day}.csv").write_text(
            "customer_id,signup_date,plan,region,age_group,updated_at\n"
            f"C1,2025-12-01,{plan},north,18-24,{day}T08:00:00Z\n"
        )
    first = ingest_day(contract, landing, "2026-01-01")
    write_day(
        first,
        churn.paths.partition_dir("customers", "2026-01-01"),
        churn.paths.quarantine_dir("c", "x"),
        landing,
    )
    keys = KeyIndex(contract, churn.paths.table_dir("customers"), exclude=["2026-01-02"])
    second = ingest_day(contract, landing, "2026-01-02", other_days=keys)
    assert second.rows_kept == 1 and second.kept.column("plan").to_pylist() == ["premium"]


# ------------------------------------------------------------------------------------------- files and folders


def test_two_unsafe_names_mapping_to_one_safe_name_are_both_kept_in_the_quarantine(churn):
    write_events(churn.paths, DAY, events_frame(DAY, n=5))
    landing = churn.landing_dir("raw_events")
    first, second = f"events {DAY}.csv", f"events?{DAY}.csv"  # both become events_<day>.csv when made safe
    (landing / first).write_bytes(b"first copy")
    (landing / second).write_bytes(b"second copy")
    result = _ingest(churn)
    assert sorted(f.name for f in result.files_quarantined) == sorted([first, second])

    quarantine = churn.paths.quarantine_dir("raw_events", DAY)
    write_day(result, churn.paths.partition_dir("raw_events", DAY), quarantine, landing)
    copies = {p.name: p.read_bytes() for p in (quarantine / "files").iterdir()}
    assert sorted(copies.values()) == [b"first copy", b"second copy"]
    manifest = json.loads((quarantine / QUARANTINE_MANIFEST).read_text())
    mapping = {f["name"]: f["quarantined_as"] for f in manifest["files"] if f["status"] == "quarantined"}
    assert copies[mapping[first]] == b"first copy" and copies[mapping[second]] == b"second copy"
    assert all(" " not in n and "?" not in n for n in copies)


def test_every_landing_entry_that_is_not_a_readable_file_is_named_in_a_warning(churn):
    good = write_events(churn.paths, DAY, events_frame(DAY, n=25))
    landing = good.parent
    folder = landing / "events_2026-03-18.parquet"  # a folder dressed as a landing file
    folder.mkdir()
    write_events(
        churn.paths,
        "2026-03-18",
        events_frame("2026-03-18", n=7),
        name="events_2026-03-18.parquet/part-0.parquet",
    )
    os.mkfifo(landing / f"events_{DAY}.pipe")
    (landing / f"events_{DAY}_link.parquet").symlink_to(landing / "gone.parquet")
    (landing / "README.txt").write_text("what is this folder")

    result = _materialize(churn, [DAY], dg.DagsterInstance.ephemeral())
    [mat] = result.asset_materializations_for_node("raw_events")
    assert mat.metadata["rows_read"].value == physical_records(good) == mat.metadata["rows_kept"].value
    check = {e.check_name: e for e in result.get_asset_check_evaluations()}[SCHEMA_CHECK]
    assert not check.passed and check.severity == dg.AssetCheckSeverity.WARN
    warnings = check.metadata["warnings"].value
    for name in (
        "events_2026-03-18.parquet: a folder",
        f"events_{DAY}.pipe: not a regular file",
        "README.txt",
    ):
        assert name in warnings, name
    assert f"events_{DAY}_link.parquet: quarantined whole (symbolic links" in warnings


def test_a_landing_file_that_cannot_be_read_is_quarantined_and_named(churn, monkeypatch):
    good = write_events(churn.paths, DAY, events_frame(DAY, n=12))
    locked = write_events(
        churn.paths, DAY, events_frame(DAY, n=3, prefix="locked"), name=f"events_{DAY}_b.parquet"
    )
    real = Path.read_bytes

    def read_bytes(path):  # noqa: ANN001, ANN202 - root reads any file: deny this one as a mode 000 file would
        if path == locked:
            raise PermissionError(13, "Permission denied", str(path))
        return real(path)

    monkeypatch.setattr(Path, "read_bytes", read_bytes)
    result = _ingest(churn, expected_records=physical_records(good))
    [outcome] = result.files_quarantined
    assert outcome.name == locked.name and "PermissionError" in outcome.reason
    assert any(locked.name in w and "cannot be read" in w for w in result.schema_warnings)


def test_a_latin1_file_is_quarantined_whole_unless_its_source_declares_the_encoding(churn, tmp_path):
    text = "customer_id,signup_date,plan,region,age_group,updated_at\n" + "".join(
        f"Cé{i:04d},2025-12-01,basic,north,18-24,{DAY}T08:00:00Z\n" for i in range(10)
    )
    landing = churn.landing_dir("customers")
    landing.mkdir(parents=True)
    path = landing / f"customers_{DAY}.csv"
    path.write_bytes(text.encode("latin-1"))

    undeclared = _ingest(churn, "customers")
    assert undeclared.rows_kept == 0 and [f.name for f in undeclared.files_quarantined] == [path.name]
    assert "not valid utf-8" in undeclared.files_quarantined[0].reason
    quarantine = churn.paths.quarantine_dir("customers", DAY)
    write_day(undeclared, churn.paths.partition_dir("customers", DAY), quarantine, landing)
    assert (quarantine / "files" / path.name).read_bytes() == path.read_bytes()  # kept whole, byte for byte

    source = churn.source("customers").model_copy(update={"encoding": "latin-1"})
    declared = ingest_day(contract_for("customers", source), landing, DAY)
    assert declared.rows_read == physical_records(path) == declared.rows_kept == 10
    ids = declared.kept.column("customer_id").to_pylist()
    assert ids == [f"Cé{i:04d}" for i in range(10)] and not any("\ufffd" in i for i in ids)
