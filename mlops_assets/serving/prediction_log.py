"""Append-only prediction log: one JSON-lines file per process per UTC day.

Layout: ``<data_root>/serving/prediction_log/date=YYYY-MM-DD/<host>-<pid>.jsonl``. Each serving
process appends to its own file and flushes after every record, so several uvicorn workers never
interleave within a line; a reader skips a last line that is still being written.

A record of a replay (a request with ``as_of``, scored on the offline store's features at that time) carries
that ``as_of``; :func:`live` drops such records, and everything that judges live traffic (canary guardrails,
A/B outcomes) reads through it, so a backtest run during a rollout never counts as its traffic.
"""

from __future__ import annotations

import json
import os
import socket
import threading
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pandas as pd

from mlops_assets.settings import data_paths

LOG_DIR = "prediction_log"

COLUMNS = (
    "request_id",
    "entity_id",
    "arm",
    "model_version",
    "score",
    "latency_ms",
    "ts",
    "mode",
    "shadow",
    "status",
    "error",
    "experiment",
    "as_of",
    "feature_status",
)


@dataclass(frozen=True)
class PredictionRecord:
    """One scored (or failed) request on one arm."""

    request_id: str
    entity_id: str
    arm: str
    model_version: str | None
    score: float | None
    latency_ms: float
    ts: str  # ISO-8601 UTC
    mode: str
    shadow: bool = False  # True for a challenger score computed in shadow mode (never returned)
    status: str = "ok"  # "ok" or "error"
    error: str | None = None
    experiment: str | None = None  # the routing salt in force (A/B analysis groups by it)
    as_of: str | None = (
        None  # ISO-8601 UTC: a replay on the offline store as of that time (None: live traffic)
    )
    #: "fresh" (every view fresh), "partial", "stale" (no view fresh) or "request" (features sent in the request)
    feature_status: str | None = None


def log_dir(data_root: str | Path | None = None) -> Path:
    """``<data_root>/serving/prediction_log``."""
    return data_paths(data_root).serving / LOG_DIR


class PredictionLogger:
    """Appends records to this process's file of the current UTC day."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        self.name = f"{socket.gethostname()}-{os.getpid()}.jsonl"
        self._lock = threading.Lock()
        self._day: str | None = None
        self._handle = None

    def _file_for(self, day: str):
        if day != self._day or self._handle is None:
            if self._handle is not None:
                self._handle.close()
            folder = self.directory / f"date={day}"
            folder.mkdir(parents=True, exist_ok=True)
            self._handle = open(folder / self.name, "a", encoding="utf-8")  # noqa: SIM115 - kept open
            self._day = day
        return self._handle

    def write(self, record: PredictionRecord) -> None:
        """Append one record to the file of its day, and flush."""
        line = json.dumps(asdict(record), separators=(",", ":")) + "\n"
        day = record.ts[:10]
        with self._lock:
            handle = self._file_for(day)
            handle.write(line)
            handle.flush()

    def write_many(self, records: Iterable[PredictionRecord]) -> None:
        """Append several records."""
        for record in records:
            self.write(record)

    def close(self) -> None:
        """Close the open file."""
        with self._lock:
            if self._handle is not None:
                self._handle.close()
            self._handle = None
            self._day = None


def _read_lines(path: Path) -> list[dict]:
    rows = []
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            if not line.endswith("\n"):
                break  # a record still being written
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return rows


def _frame(rows: list[dict]) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=list(COLUMNS))
    frame["ts"] = pd.to_datetime(frame["ts"], utc=True, format="ISO8601")
    frame["score"] = pd.to_numeric(frame["score"], errors="coerce").astype("float64")
    frame["latency_ms"] = pd.to_numeric(frame["latency_ms"], errors="coerce").astype("float64")
    frame["shadow"] = frame["shadow"].astype(bool)
    for col in (
        "request_id",
        "entity_id",
        "arm",
        "model_version",
        "mode",
        "status",
        "error",
        "experiment",
        "as_of",
        "feature_status",
    ):
        frame[col] = frame[col].astype(object)
    return frame.sort_values(["ts", "request_id"], kind="stable").reset_index(drop=True)


def live(frame: pd.DataFrame) -> pd.DataFrame:
    """The records of live traffic: replays (records with an ``as_of``) left out."""
    if "as_of" not in frame.columns:
        return frame
    return frame.loc[frame["as_of"].isna()]


def read_day(
    day: str | date, data_root: str | Path | None = None, directory: str | Path | None = None
) -> pd.DataFrame:
    """Every complete record logged on ``day`` (UTC) by any process, oldest first."""
    day = day.isoformat() if isinstance(day, date) else date.fromisoformat(day).isoformat()
    folder = Path(directory) if directory is not None else log_dir(data_root)
    rows: list[dict] = []
    for path in sorted((folder / f"date={day}").glob("*.jsonl")):
        rows.extend(_read_lines(path))
    return _frame(rows)


def read_since(
    since: datetime,
    data_root: str | Path | None = None,
    directory: str | Path | None = None,
    until: datetime | None = None,
) -> pd.DataFrame:
    """Records with ``since <= ts < until`` (until defaults to now), across day files."""
    until = until or datetime.now(UTC)
    if since.tzinfo is None or until.tzinfo is None:
        raise ValueError("since and until must be timezone-aware (UTC)")
    day, frames = since.astimezone(UTC).date(), []
    while day <= until.astimezone(UTC).date():
        frames.append(read_day(day, data_root, directory))
        day += timedelta(days=1)
    frame = pd.concat(frames, ignore_index=True) if frames else _frame([])
    mask = (frame["ts"] >= pd.Timestamp(since)) & (frame["ts"] < pd.Timestamp(until))
    return frame.loc[mask].reset_index(drop=True)
