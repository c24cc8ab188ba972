"""Validation core: clean data, every kind of bad input, row conservation, idempotency, and every contract
feature a source of the spec can declare (closed and open value sets, bounds, optional columns, file name
pattern, file format, CSV encoding)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mlops_assets.ingestion.schema import TableContract, contract_for
from mlops_assets.ingestion.validate import (
    QUARANTINE_MANIFEST,
    QUARANTINE_ROWS_FILE,
    REASON_COLUMN,
    IngestionError,
    ingest_day,
    write_day,
)
from mlops_assets.spec.model import Column, Source
from mlops_assets_tests.conftest import events_frame, write_events, write_parquet

DAY = "2026-01-05"


def _ingest(project, source: str = "raw_events", day: str = DAY):
    result = ingest_day(project.contract(source), project.landing_dir(source), day)
    assert result.rows_read == result.rows_kept + result.rows_quarantined  # nothing lost
    return result


def _reasons(result) -> list[set[str]]:
    """The failed checks of each quarantined row, as sets."""
    return [set(r.split(";")) for r in result.quarantined[REASON_COLUMN]]


def _landing_digest(paths) -> dict[str, str]:
    return {
        str(p.relative_to(paths.landing)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(paths.landing.rglob("*"))
        if p.is_file()
    }


# ---------------------------------------------------------------------------------------------- the churn example


def test_clean_day_keeps_every_row_with_the_contract_schema(churn):
    write_events(churn.paths, DAY, events_frame(DAY, n=60).sample(frac=1.0, random_state=1))
    result = _ingest(churn)
    assert (result.rows_read, result.rows_kept, result.rows_quarantined) == (60, 60, 0)
    assert result.kept.schema.equals(churn.contract("raw_events").schema)
    assert [f.name for f in result.kept.schema] == list(churn.source("raw_events").columns)
    assert result.schema_errors == [] and result.schema_warnings == []
    kept = result.kept.to_pandas()
    assert kept["event_timestamp"].is_monotonic_increasing  # sorted by the source's timestamp
    expected = events_frame(DAY, n=60)
    assert sorted(kept["event_id"]) == sorted(expected["event_id"])


def test_bad_rows_are_quarantined_with_their_reason(churn):
    frame = events_frame(DAY, n=30)
    frame.loc[0, "customer_id"] = None  # null key
    frame.loc[3, "amount"] = -5.0  # negative amount (row 3 is a purchase)
    frame.loc[4, "event_type"] = "refund"  # outside the closed set of event types
    frame.loc[5, "event_timestamp"] = pd.Timestamp("2026-01-06 00:00:00", tz="UTC")  # next day
    frame.loc[7, "event_timestamp"] = pd.Timestamp("2026-01-04 23:59:59", tz="UTC")  # previous day
    duplicate = frame.iloc[[10, 11]].copy()  # two repeated event ids
    write_events(churn.paths, DAY, pd.concat([frame, duplicate], ignore_index=True))
    result = _ingest(churn)
    assert result.rows_read == 32
    assert result.quarantined_by_reason == {
        "below_minimum:amount": 1,
        "duplicate:event_id": 2,
        "not_allowed:event_type": 1,
        "null:customer_id": 1,
        "outside_partition:event_timestamp": 2,
    }
    assert result.rows_kept == 25
    kept_ids = result.kept.column("event_id").to_pylist()
    assert len(kept_ids) == len(set(kept_ids))
    # the quarantined rows keep what arrived, and say where they came from
    rejected = result.quarantined.set_index(REASON_COLUMN)
    assert rejected.loc["below_minimum:amount", "amount"] == "-5.0"
    assert rejected.loc["not_allowed:event_type", "event_type"] == "refund"
    assert set(result.quarantined["_source_file"]) == {f"events_{DAY}.parquet"}
    assert sorted(result.quarantined["_row_number"].dropna().astype(int)) == [0, 3, 4, 5, 7, 30, 31]


def test_a_row_failing_several_checks_lists_every_one_and_counts_once(churn):
    frame = events_frame(DAY, n=12)
    frame.loc[0, "customer_id"] = None
    frame.loc[0, "amount"] = -1.0  # row 0 is a purchase: null key and a negative amount
    frame.loc[1, "event_type"] = "refund"
    frame.loc[1, "event_timestamp"] = pd.Timestamp("2026-01-07 08:00", tz="UTC")  # unknown type, wrong day
    frame.loc[2, "customer_id"] = None  # one failure only
    write_events(churn.paths, DAY, frame)
    result = _ingest(churn)
    assert result.rows_quarantined == 3 and result.rows_kept == 9
    by_row = dict(zip(result.quarantined["event_id"], _reasons(result), strict=True))
    assert by_row == {
        f"{DAY}-00000": {"null:customer_id", "below_minimum:amount"},
        f"{DAY}-00001": {"not_allowed:event_type", "outside_partition:event_timestamp"},
        f"{DAY}-00002": {"null:customer_id"},
    }
    # per-reason counts count a row under each check it failed
    assert result.quarantined_by_reason == {
        "below_minimum:amount": 1,
        "not_allowed:event_type": 1,
        "null:customer_id": 2,
        "outside_partition:event_timestamp": 1,
    }


def test_a_csv_row_with_an_unparsable_value_and_a_null_lists_both(churn):
    landing = churn.landing_dir("raw_events")
    landing.mkdir(parents=True)
    (landing / f"events_{DAY}.csv").write_text(
        "event_id,customer_id,event_timestamp,event_type,amount\n"
        f"e1,,not-a-time,purchase,12.5\n"
        f"e2,C2,{DAY}T02:00:00Z,purchase,12,5\n"  # one field too many: a malformed line
        f"e3,C3,{DAY}T03:00:00Z,purchase,abc\n"
    )
    result = _ingest(churn)
    assert result.rows_read == 3 and result.rows_kept == 0
    assert sorted(map(sorted, _reasons(result))) == [
        ["invalid_type:amount"],
        ["invalid_type:event_timestamp", "null:customer_id"],
        ["malformed_csv_line"],
    ]


def test_csv_with_garbage_lines_and_unparsable_values(churn):
    landing = churn.landing_dir("raw_events")
    landing.mkdir(parents=True)
    (landing / f"events_{DAY}.csv").write_text(
        "event_id,customer_id,event_timestamp,event_type,amount\n"
        f"e1,C1,{DAY}T01:00:00Z,purchase,12.5\n"
        "this line is garbage\n"
        f"e2,C2,{DAY}T02:00:00Z,purchase,n/a\n"
        f"e3,C3,not-a-time,login,\n"
        f"e4,C4,{DAY}T03:00:00+00:00,login,\n"
        "\x00\x01\x02,,,,,,,\n"
    )
    result = _ingest(churn)
    assert result.rows_read == 6
    assert result.rows_kept == 2
    assert result.kept.column("event_id").to_pylist() == ["e1", "e4"]
    assert result.kept.column("amount").to_pylist() == [12.5, None]
    assert result.quarantined_by_reason == {
        "invalid_type:amount": 1,
        "invalid_type:event_timestamp": 1,
        "malformed_csv_line": 2,
    }
    raw_lines = result.quarantined["_raw_line"].dropna().tolist()
    assert "this line is garbage" in raw_lines
    assert sorted(result.quarantined["_line_number"].dropna().astype(int)) == [3, 7]


@pytest.mark.parametrize(
    "name,content,reason_start",
    [
        (f"events_{DAY}_b.parquet", b"", "empty file"),
        (f"events_{DAY}_extra.parquet", b"PAR1 this is not parquet at all", "unreadable parquet file"),
        (f"events_{DAY}.json", b"{}", "unsupported file type .json"),
        (f"events..{DAY}.parquet", b"x", "unsafe file name"),
        (f"events {DAY} (copy).parquet", b"x", "unsafe file name"),
        (f"événements_{DAY}.csv", b"x", "unsafe file name"),
    ],
)
def test_unreadable_or_unsafe_files_are_quarantined_whole(churn, name, content, reason_start):
    write_events(churn.paths, DAY)  # a good file beside the bad one still lands
    bad = churn.landing_dir("raw_events") / name
    bad.write_bytes(content)
    result = _ingest(churn)
    assert result.rows_kept == 40
    [outcome] = result.files_quarantined
    assert outcome.name == name and outcome.reason.startswith(reason_start)
    assert any(name in w for w in result.schema_warnings)
    quarantine = churn.paths.quarantine_dir("raw_events", DAY)
    write_day(result, churn.paths.partition_dir("raw_events", DAY), quarantine, bad.parent)
    copied = list((quarantine / "files").iterdir())
    assert len(copied) == 1 and copied[0].read_bytes() == content
    assert ".." not in copied[0].name and " " not in copied[0].name
    manifest = json.loads((quarantine / QUARANTINE_MANIFEST).read_text())
    assert any(f["name"] == name and f["status"] == "quarantined" for f in manifest["files"])
    assert bad.read_bytes() == content  # the landing file itself is never touched


def test_missing_columns_is_a_schema_error_and_rows_are_quarantined(churn):
    frame = events_frame(DAY, n=12).drop(columns=["event_type"])
    write_events(churn.paths, DAY, frame)
    result = _ingest(churn)
    assert result.rows_kept == 0 and result.rows_quarantined == 12
    assert result.quarantined_by_reason == {"missing_columns:event_type": 12}
    assert result.schema_errors == [f"events_{DAY}.parquet: missing required columns event_type"]


def test_wrong_typed_column_is_coerced_and_unparsable_values_quarantined(churn):
    frame = events_frame(DAY, n=9)
    frame["amount"] = frame["amount"].map(lambda v: "n/a" if v == 13.0 else (None if pd.isna(v) else str(v)))
    write_events(churn.paths, DAY, frame)
    result = _ingest(churn)
    assert set(result.files[0].coerced_columns) == {"amount"}
    assert result.quarantined_by_reason == {"invalid_type:amount": 1}
    kept = result.kept.to_pandas()
    assert kept["amount"].dtype == "float64"
    assert set(kept["amount"].dropna()) == {10.0, 16.0}
    assert any("amount arrived as" in w for w in result.schema_warnings)


def test_empty_parquet_with_the_right_schema_is_an_empty_day(churn):
    write_events(churn.paths, DAY, events_frame(DAY, n=0))
    result = _ingest(churn)
    assert result.rows_read == 0 and result.rows_kept == 0 and result.files_quarantined == []


def test_day_without_files_is_empty_and_warned(churn):
    result = _ingest(churn)
    assert result.rows_read == 0 and result.kept.num_rows == 0
    assert result.schema_warnings == ["no landing files for this day"]
    assert result.quarantine_rate == 0.0


def test_bad_day_argument_is_a_clear_error(churn):
    with pytest.raises(IngestionError, match="expected a day as YYYY-MM-DD"):
        ingest_day(churn.contract("raw_events"), churn.landing_dir("raw_events"), "05/01/2026")


def test_reingesting_gives_the_same_content_and_never_touches_landing(churn):
    paths = churn.paths
    frame = events_frame(DAY, n=50).sample(frac=1.0, random_state=3)  # unsorted input
    frame.loc[frame.index[0], "amount"] = -1.0
    write_events(paths, DAY, frame)
    before = _landing_digest(paths)
    hashes, quarantines = [], []
    for _ in range(2):
        result = _ingest(churn)
        partition, quarantine = (
            paths.partition_dir("raw_events", DAY),
            paths.quarantine_dir("raw_events", DAY),
        )
        write_day(result, partition, quarantine, churn.landing_dir("raw_events"))
        hashes.append(result.content_hash)
        stored = pq.read_table(partition / "part-0.parquet")
        assert stored.equals(result.kept)
        quarantines.append(pq.read_table(quarantine / QUARANTINE_ROWS_FILE).to_pandas())
    assert hashes[0] == hashes[1]
    pd.testing.assert_frame_equal(quarantines[0], quarantines[1])
    assert _landing_digest(paths) == before
    assert not list(paths.warehouse.rglob(".*tmp*"))  # no staging folders left behind


def test_a_clean_rerun_retires_the_old_quarantine(churn):
    bad = events_frame(DAY, n=5)
    bad.loc[0, "customer_id"] = None
    path = write_events(churn.paths, DAY, bad)
    quarantine = churn.paths.quarantine_dir("raw_events", DAY)
    partition = churn.paths.partition_dir("raw_events", DAY)
    write_day(_ingest(churn), partition, quarantine, path.parent)
    assert quarantine.exists()
    write_events(churn.paths, DAY, events_frame(DAY, n=5))
    write_day(_ingest(churn), partition, quarantine, path.parent)
    assert not quarantine.exists()
    assert pq.read_table(partition).num_rows == 5


def test_labels_contract_has_a_closed_integer_set(churn):
    labels = pd.DataFrame(
        {
            "customer_id": ["C1", "C2", "C3", "C4"],
            "label_timestamp": pd.to_datetime([f"{DAY} 10:00"] * 4, utc=True),
            "churned": [0, 1, 2, None],
        }
    )
    write_parquet(labels, churn.landing_dir("raw_labels") / f"labels_{DAY}.parquet")
    result = _ingest(churn, "raw_labels")
    assert result.kept.column("customer_id").to_pylist() == ["C1", "C2"]
    assert result.kept.column("churned").to_pylist() == [0, 1]
    assert result.quarantined_by_reason == {"not_allowed:churned": 1, "null:churned": 1}
    assert result.kept.schema.equals(churn.contract("raw_labels").schema)


def test_customers_csv_open_value_sets_keep_unknown_values_and_bad_dates_are_quarantined(churn):
    customers = pd.DataFrame(
        {
            "customer_id": ["C1", "C2", "C2", "C3"],
            "signup_date": ["2025-03-01", "2025-13-45", "2025-04-01", "2025-05-01"],
            "plan": ["basic", "premium", "premium", "platinum"],  # platinum: not among the known plans
            "region": ["north", "west", "west", "atlantis"],
            "age_group": ["18-24", "50+", "50+", "25-34"],
            "updated_at": [f"{DAY}T00:00:00Z"] * 4,
        }
    )
    landing = churn.landing_dir("customers")
    landing.mkdir(parents=True)
    customers.to_csv(landing / f"customers_{DAY}.csv", index=False)
    result = _ingest(churn, "customers")
    assert result.quarantined_by_reason == {"invalid_type:signup_date": 1}
    assert result.kept.schema.equals(churn.contract("customers").schema)
    kept = result.kept.to_pandas().set_index("customer_id")
    assert list(kept.index) == ["C1", "C2", "C3"]
    # plan and region declare `values` without `closed: true`: an unknown value is kept as it arrived
    assert kept.loc["C3", "plan"] == "platinum" and kept.loc["C3", "region"] == "atlantis"
    assert str(kept.loc["C2", "signup_date"]) == "2025-04-01"


# ------------------------------------------------------------------------- a source built in Python, feature by feature


def readings(landing: Path, **fields) -> tuple[TableContract, Path]:
    """A small sensor-readings source: a closed set, both bounds, an optional column; ``fields`` override."""
    columns = {
        "reading_id": Column(type="string"),
        "sensor": Column(type="string", values=("a", "b"), closed=True),
        "taken_at": Column(type="timestamp"),
        "celsius": Column(type="float64", min=-40, max=60),
        "note": Column(type="string", required=False, nullable=True),
    }
    source = Source(
        kind="events",
        timestamp="taken_at",
        unique_key=("reading_id",),
        columns=columns,
        landing="readings",
        **fields,
    )
    folder = landing / "readings"
    folder.mkdir(parents=True, exist_ok=True)
    return contract_for("readings", source), folder


def _csv(rows: list[str], header: str = "reading_id,sensor,taken_at,celsius") -> str:
    return "\n".join([header, *rows]) + "\n"


def _ingest_readings(contract: TableContract, folder: Path, day: str = DAY):
    result = ingest_day(contract, folder, day)
    assert result.rows_read == result.rows_kept + result.rows_quarantined
    return result


def test_minimum_and_maximum_are_inclusive_bounds(tmp_path):
    contract, folder = readings(tmp_path)
    (folder / f"readings_{DAY}.csv").write_text(
        _csv(
            [
                f"r1,a,{DAY}T01:00:00Z,60",
                f"r2,a,{DAY}T01:00:00Z,60.5",
                f"r3,b,{DAY}T01:00:00Z,-40",
                f"r4,b,{DAY}T01:00:00Z,-40.01",
                f"r5,c,{DAY}T01:00:00Z,99",
            ]
        )
    )
    result = _ingest_readings(contract, folder)
    assert result.kept.column("reading_id").to_pylist() == ["r1", "r3"]
    by_row = dict(zip(result.quarantined["reading_id"], _reasons(result), strict=True))
    assert by_row == {
        "r2": {"above_maximum:celsius"},
        "r4": {"below_minimum:celsius"},
        "r5": {"not_allowed:sensor", "above_maximum:celsius"},
    }


def test_an_optional_column_absent_from_a_file_is_filled_with_nulls(tmp_path):
    contract, folder = readings(tmp_path)
    (folder / f"readings_{DAY}_a.csv").write_text(_csv([f"r1,a,{DAY}T01:00:00Z,20"]))
    (folder / f"readings_{DAY}_b.csv").write_text(
        _csv([f"r2,b,{DAY}T02:00:00Z,21,recalibrated"], header="reading_id,sensor,taken_at,celsius,note")
    )
    write_parquet(
        pd.DataFrame(
            {
                "reading_id": ["r3"],
                "sensor": ["a"],
                "taken_at": [pd.Timestamp(f"{DAY} 03:00", tz="UTC")],
                "celsius": [22.0],
            }
        ),
        folder / f"readings_{DAY}_c.parquet",
    )
    result = _ingest_readings(contract, folder)
    assert result.rows_quarantined == 0 and result.schema_errors == []
    assert all(f.missing_columns == [] for f in result.files)
    assert result.kept.schema.equals(contract.schema)
    kept = result.kept.to_pydict()
    assert kept["reading_id"] == ["r1", "r2", "r3"]
    assert kept["note"] == [None, "recalibrated", None]


def test_a_missing_required_column_still_quarantines_the_file_beside_an_optional_one(tmp_path):
    contract, folder = readings(tmp_path)
    (folder / f"readings_{DAY}.csv").write_text(
        _csv([f"r1,{DAY}T01:00:00Z,20,x"], header="reading_id,taken_at,celsius,note")
    )
    result = _ingest_readings(contract, folder)
    assert result.rows_kept == 0
    assert result.quarantined_by_reason == {"missing_columns:sensor": 1}
    assert result.schema_errors == [f"readings_{DAY}.csv: missing required columns sensor"]


def test_only_files_matching_the_source_pattern_are_read_and_the_others_are_named(tmp_path):
    contract, folder = readings(tmp_path, pattern="readings_*.csv")
    (folder / f"readings_{DAY}.csv").write_text(_csv([f"r1,a,{DAY}T01:00:00Z,20"]))
    (folder / f"export_{DAY}.csv").write_text(_csv([f"x1,a,{DAY}T01:00:00Z,20"]))
    result = _ingest_readings(contract, folder)
    assert [f.name for f in result.files] == [f"readings_{DAY}.csv"]
    assert result.rows_read == 1 and result.kept.column("reading_id").to_pylist() == ["r1"]
    [note] = [w for w in result.schema_warnings if f"export_{DAY}.csv" in w]
    assert "readings_*.csv" in note


def test_a_declared_format_reads_files_whatever_their_suffix(tmp_path):
    text = _csv([f"r1,a,{DAY}T01:00:00Z,20", f"r2,b,{DAY}T02:00:00Z,21"])
    contract, folder = readings(tmp_path / "csv", format="csv")
    (folder / f"readings_{DAY}.txt").write_text(text)
    result = _ingest_readings(contract, folder)
    assert result.rows_kept == 2 and result.files_quarantined == []

    contract, folder = readings(tmp_path / "auto")  # by suffix: a .txt is not a landing file type
    (folder / f"readings_{DAY}.txt").write_text(text)
    result = _ingest_readings(contract, folder)
    assert result.rows_kept == 0
    [outcome] = result.files_quarantined
    assert outcome.reason.startswith("unsupported file type .txt")

    contract, folder = readings(tmp_path / "parquet", format="parquet")
    frame = pd.DataFrame(
        {
            "reading_id": ["r1"],
            "sensor": ["b"],
            "taken_at": [pd.Timestamp(f"{DAY} 01:00", tz="UTC")],
            "celsius": [5.5],
        }
    )
    write_parquet(frame, folder / f"readings_{DAY}.dat")
    (folder / f"readings_{DAY}.csv").write_text(text)  # declared parquet: a CSV file is unreadable as one
    result = _ingest_readings(contract, folder)
    assert result.kept.to_pydict()["celsius"] == [5.5]
    [outcome] = result.files_quarantined
    assert outcome.name == f"readings_{DAY}.csv" and outcome.reason.startswith("unreadable parquet file")


def test_csv_encoding_is_the_sources_and_a_wrong_one_quarantines_the_file_naming_it(tmp_path):
    latin1 = _csv(
        [f"r1,a,{DAY}T01:00:00Z,20,café crème", f"r2,b,{DAY}T02:00:00Z,21,Ørsted"],
        header="reading_id,sensor,taken_at,celsius,note",
    ).encode("latin-1")
    contract, folder = readings(tmp_path / "declared", encoding="latin-1")
    (folder / f"readings_{DAY}.csv").write_bytes(latin1)
    result = _ingest_readings(contract, folder)
    assert result.files_quarantined == []
    assert result.kept.to_pydict()["note"] == ["café crème", "Ørsted"]

    contract, folder = readings(tmp_path / "default")  # utf-8 unless declared
    (folder / f"readings_{DAY}.csv").write_bytes(latin1)
    result = _ingest_readings(contract, folder)
    assert result.rows_kept == 0
    [outcome] = result.files_quarantined
    assert "utf-8" in outcome.reason and "encoding" in outcome.reason
    assert any(f"readings_{DAY}.csv: quarantined whole" in w and "utf-8" in w for w in result.schema_warnings)
    quarantine = tmp_path / "quarantine"
    write_day(result, tmp_path / "warehouse", quarantine, folder)
    assert (quarantine / "files" / f"readings_{DAY}.csv").read_bytes() == latin1


def test_utf8_csv_with_a_byte_order_mark_reads_its_first_column(tmp_path):
    contract, folder = readings(tmp_path)
    (folder / f"readings_{DAY}.csv").write_bytes(
        ("\ufeff" + _csv([f"r1,a,{DAY}T01:00:00Z,20"])).encode("utf-8")
    )
    result = _ingest_readings(contract, folder)
    assert result.schema_errors == [] and result.kept.column("reading_id").to_pylist() == ["r1"]


def test_contract_types_follow_the_spec_column_types(tmp_path):
    contract, _ = readings(tmp_path)
    assert contract.schema == pa.schema(
        [
            pa.field("reading_id", pa.string(), nullable=False),
            pa.field("sensor", pa.string(), nullable=False),
            pa.field("taken_at", pa.timestamp("us", tz="UTC"), nullable=False),
            pa.field("celsius", pa.float64(), nullable=False),
            pa.field("note", pa.string(), nullable=True),
        ]
    )
    assert contract.required_columns == ["reading_id", "sensor", "taken_at", "celsius"]
    assert contract.column("sensor").allowed == ("a", "b")
