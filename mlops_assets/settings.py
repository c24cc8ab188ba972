"""Paths and thresholds in one place, overridable by environment variables."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent

#: Tables produced by ingestion, each a daily-partitioned asset.
INGESTED_TABLES = ("raw_events", "raw_labels", "customers")

#: Landing folder name of each ingested table (``data/landing/<folder>/``).
LANDING_FOLDERS = {"raw_events": "events", "raw_labels": "labels", "customers": "customers"}


def _env_path(name: str, default: Path) -> Path:
    value = os.environ.get(name)
    return Path(value).expanduser().resolve() if value else default


@dataclass(frozen=True)
class DataPaths:
    """The storage layout under one data root (see README: data layout)."""

    root: Path

    @property
    def landing(self) -> Path:
        return self.root / "landing"

    @property
    def warehouse(self) -> Path:
        return self.root / "warehouse"

    @property
    def quarantine(self) -> Path:
        return self.root / "quarantine"

    @property
    def online(self) -> Path:
        return self.root / "online"

    @property
    def mlflow(self) -> Path:
        return self.root / "mlflow"

    @property
    def serving(self) -> Path:
        return self.root / "serving"

    @property
    def reports(self) -> Path:
        return self.root / "reports"

    @property
    def alerts(self) -> Path:
        return self.root / "alerts"

    def landing_dir(self, table: str) -> Path:
        return self.landing / LANDING_FOLDERS.get(table, table)

    def table_dir(self, table: str) -> Path:
        return self.warehouse / table

    def partition_dir(self, table: str, day: str) -> Path:
        return self.warehouse / table / f"date={day}"

    def quarantine_dir(self, table: str, day: str) -> Path:
        return self.quarantine / table / f"date={day}"


def data_root() -> Path:
    """The data folder: ``$MLOPS_DATA_DIR`` or ``<project>/data``."""
    return _env_path("MLOPS_DATA_DIR", PROJECT_ROOT / "data")


def data_paths(root: str | Path | None = None) -> DataPaths:
    return DataPaths(Path(root).resolve() if root is not None else data_root())


@dataclass(frozen=True)
class IngestionSettings:
    """Thresholds of the ingestion gates."""

    max_quarantine_rate: float = float(os.environ.get("MLOPS_MAX_QUARANTINE_RATE", "0.05"))


@dataclass(frozen=True)
class Settings:
    data: DataPaths = field(default_factory=data_paths)
    partitions_start: str = os.environ.get("MLOPS_PARTITIONS_START", "2026-01-01")
    ingestion: IngestionSettings = field(default_factory=IngestionSettings)


def partitions_start() -> str:
    """First day of the daily partitions (``$MLOPS_PARTITIONS_START``, default 2026-01-01)."""
    value = os.environ.get("MLOPS_PARTITIONS_START", "2026-01-01")
    date.fromisoformat(value)  # fail early with a clear ValueError on a malformed date
    return value
