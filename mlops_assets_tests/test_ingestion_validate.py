"""Validation core: clean data, every kind of bad input, row conservation, idempotency."""

from __future__ import annotations

import hashlib
import json

import pandas as pd
import pyarrow.parquet as pq
import pytest

from mlops_assets.ingestion.schema import CUSTOMERS, RAW_EVENTS, RAW_LABELS
from mlops_assets.ingestion.validate import (
    QUARANTINE_MANIFEST,
    QUARANTINE_ROWS_FILE,
    REASON_COLUMN,
    IngestionError,
    ingest_day,
    write_day,
)
from mlops_assets_tests.conftest import events_frame, write_events, write_parquet

DAY = "2026-01-05"


def _ingest(paths, contract=RAW_EVENTS, day=DAY):
    result = ingest_day(contract, paths.landing_dir(contract.name), day)
    assert result.rows_read == result.rows_kept + result.rows_quarantined  # nothing lost
    return result


def _landing_digest(paths) -> dict[str, str]:
    return {
        str(p.relative_to(paths.landing)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(paths.landing.rglob("*"))
        if p.is_file()
    }


def test_clean_day_keeps_every_row_with_the_contract_schema(data_dir):
    write_events(data_dir, DAY, events_frame(DAY, n=60))
    result = _ingest(data_dir)
    assert (result.rows_read, result.rows_kept, result.rows_quarantined) == (60, 60, 0)
    assert result.kept.schema.equals(RAW_EVENTS.schema)
    assert result.schema_errors == [] and result.schema_warnings == []
    kept = result.kept.to_pandas()
    assert kept["event_timestamp"].is_monotonic_increasing


def test_bad_rows_are_quarantined_with_their_reason(data_dir):
    frame = events_frame(DAY, n=30)
    frame.loc[0, "customer_id"] = None  # null key
    frame.loc[3, "amount"] = -5.0  # negative amount (row 3 is a purchase)
    frame.loc[4, "event_type"] = "refund"  # unknown event type
    frame.loc[5, "event_timestamp"] = pd.Timestamp("2026-01-06 00:00:00", tz="UTC")  # next day
    frame.loc[7, "event_timestamp"] = pd.Timestamp("2026-01-04 23:59:59", tz="UTC")  # previous day
    duplicate = frame.iloc[[10, 11]].copy()  # two repeated event ids
    write_events(data_dir, DAY, pd.concat([frame, duplicate], ignore_index=True))
    result = _ingest(data_dir)
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
    assert set(result.quarantined["_source_file"]) == {f"events_{DAY}.parquet"}


def test_csv_with_garbage_lines_and_unparsable_values(data_dir):
    landing = data_dir.landing_dir("raw_events")
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
    result = _ingest(data_dir)
    assert result.rows_read == 6
    assert result.rows_kept == 2
    assert result.quarantined_by_reason == {
        "invalid_type:amount": 1,
        "invalid_type:event_timestamp": 1,
        "malformed_csv_line": 2,
    }
    raw_lines = result.quarantined["_raw_line"].dropna().tolist()
    assert "this line is garbage" in raw_lines


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
def test_unreadable_or_unsafe_files_are_quarantined_whole(data_dir, name, content, reason_start):
    write_events(data_dir, DAY)  # a good file beside the bad one still lands
    bad = data_dir.landing_dir("raw_events") / name
    bad.write_bytes(content)
    result = _ingest(data_dir)
    assert result.rows_kept == 40
    [outcome] = result.files_quarantined
    assert outcome.name == name and outcome.reason.startswith(reason_start)
    assert any(name in w for w in result.schema_warnings)
    write_day(
        result,
        data_dir.partition_dir("raw_events", DAY),
        data_dir.quarantine_dir("raw_events", DAY),
        bad.parent,
    )
    copied = list((data_dir.quarantine_dir("raw_events", DAY) / "files").iterdir())
    assert len(copied) == 1 and copied[0].read_bytes() == content
    assert ".." not in copied[0].name and " " not in copied[0].name
    manifest = json.loads((data_dir.quarantine_dir("raw_events", DAY) / QUARANTINE_MANIFEST).read_text())
    assert any(f["name"] == name and f["status"] == "quarantined" for f in manifest["files"])


def test_missing_columns_is_a_schema_error_and_rows_are_quarantined(data_dir):
    frame = events_frame(DAY, n=12).drop(columns=["event_type"])
    write_events(data_dir, DAY, frame)
    result = _ingest(data_dir)
    assert result.rows_kept == 0 and result.rows_quarantined == 12
    assert result.quarantined_by_reason == {"missing_columns:event_type": 12}
    assert result.schema_errors == [f"events_{DAY}.parquet: missing required columns event_type"]


def test_wrong_typed_column_is_coerced_and_unparsable_values_quarantined(data_dir):
    frame = events_frame(DAY, n=9)
    frame["amount"] = frame["amount"].map(lambda v: "n/a" if v == 13.0 else (None if pd.isna(v) else str(v)))
    write_events(data_dir, DAY, frame)
    result = _ingest(data_dir)
    assert set(result.files[0].coerced_columns) == {"amount"}
    assert result.quarantined_by_reason == {"invalid_type:amount": 1}
    kept = result.kept.to_pandas()
    assert kept["amount"].dtype == "float64"
    assert set(kept["amount"].dropna()) == {10.0, 16.0}
    assert any("amount arrived as" in w for w in result.schema_warnings)


def test_empty_parquet_with_the_right_schema_is_an_empty_day(data_dir):
    write_events(data_dir, DAY, events_frame(DAY, n=0))
    result = _ingest(data_dir)
    assert result.rows_read == 0 and result.rows_kept == 0 and result.files_quarantined == []


def test_day_without_files_is_empty_and_warned(data_dir):
    result = _ingest(data_dir)
    assert result.rows_read == 0 and result.kept.num_rows == 0
    assert result.schema_warnings == ["no landing files for this day"]
    assert result.quarantine_rate == 0.0


def test_bad_day_argument_is_a_clear_error(data_dir):
    with pytest.raises(IngestionError, match="expected a day as YYYY-MM-DD"):
        ingest_day(RAW_EVENTS, data_dir.landing_dir("raw_events"), "05/01/2026")


def test_reingesting_gives_the_same_content_and_never_touches_landing(data_dir):
    frame = events_frame(DAY, n=50).sample(frac=1.0, random_state=3)  # unsorted input
    frame.loc[frame.index[0], "amount"] = -1.0
    write_events(data_dir, DAY, frame)
    before = _landing_digest(data_dir)
    hashes, quarantines = [], []
    for _ in range(2):
        result = _ingest(data_dir)
        partition, quarantine = (
            data_dir.partition_dir("raw_events", DAY),
            data_dir.quarantine_dir("raw_events", DAY),
        )
        write_day(result, partition, quarantine, data_dir.landing_dir("raw_events"))
        hashes.append(result.content_hash)
        stored = pq.read_table(partition / "part-0.parquet")
        assert stored.equals(result.kept)
        quarantines.append(pq.read_table(quarantine / QUARANTINE_ROWS_FILE).to_pandas())
    assert hashes[0] == hashes[1]
    pd.testing.assert_frame_equal(quarantines[0], quarantines[1])
    assert _landing_digest(data_dir) == before
    assert not list(data_dir.warehouse.rglob(".*tmp*"))  # no staging folders left behind


def test_a_clean_rerun_retires_the_old_quarantine(data_dir):
    bad = events_frame(DAY, n=5)
    bad.loc[0, "customer_id"] = None
    path = write_events(data_dir, DAY, bad)
    quarantine = data_dir.quarantine_dir("raw_events", DAY)
    write_day(_ingest(data_dir), data_dir.partition_dir("raw_events", DAY), quarantine, path.parent)
    assert quarantine.exists()
    write_events(data_dir, DAY, events_frame(DAY, n=5))
    write_day(_ingest(data_dir), data_dir.partition_dir("raw_events", DAY), quarantine, path.parent)
    assert not quarantine.exists()


def test_labels_and_customers_contracts(data_dir):
    labels = pd.DataFrame(
        {
            "customer_id": ["C1", "C2", "C3", "C4"],
            "label_timestamp": pd.to_datetime([f"{DAY} 10:00"] * 4, utc=True),
            "churned": [0, 1, 2, None],
        }
    )
    write_parquet(labels, data_dir.landing_dir("raw_labels") / f"labels_{DAY}.parquet")
    result = _ingest(data_dir, RAW_LABELS)
    assert result.rows_kept == 2
    assert result.quarantined_by_reason == {"not_allowed:churned": 1, "null:churned": 1}
    assert result.kept.schema.equals(RAW_LABELS.schema)

    customers = pd.DataFrame(
        {
            "customer_id": ["C1", "C2", "C2"],
            "signup_date": ["2025-03-01", "2025-13-45", "2025-04-01"],
            "plan": ["basic", "premium", "premium"],
            "region": ["north", "west", "west"],
            "age_group": ["18-24", "50+", "50+"],
            "updated_at": [f"{DAY}T00:00:00Z"] * 3,
        }
    )
    landing = data_dir.landing_dir("customers")
    landing.mkdir(parents=True)
    customers.to_csv(landing / f"customers_{DAY}.csv", index=False)
    result = _ingest(data_dir, CUSTOMERS)
    assert result.quarantined_by_reason == {"invalid_type:signup_date": 1}
    assert result.kept.schema.equals(CUSTOMERS.schema)
    assert result.kept.column("customer_id").to_pylist() == ["C1", "C2"]
