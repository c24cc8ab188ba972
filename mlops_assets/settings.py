"""Where a project's data lives: the storage layout under one data root (see README: data layout)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

#: The repository this package was installed from (a source checkout), used for defaults only.
PACKAGE_ROOT = Path(__file__).resolve().parent.parent
DATA_DIR_ENV = "MLOPS_DATA_DIR"


@dataclass(frozen=True)
class DataPaths:
    """The storage layout under one data root."""

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

    @property
    def features(self) -> Path:
        return self.warehouse / "features"

    def landing_dir(self, folder: str) -> Path:
        """``<root>/landing/<folder>`` (a source's landing folder: see ``Project.landing_dir``)."""
        return self.landing / folder

    def table_dir(self, table: str) -> Path:
        return self.warehouse / table

    def partition_dir(self, table: str, day: str) -> Path:
        return self.warehouse / table / f"date={day}"

    def quarantine_dir(self, table: str, day: str) -> Path:
        return self.quarantine / table / f"date={day}"

    def manifest_path(self, table: str, day: str) -> Path:
        """Which landing content a table's day was ingested from."""
        return self.warehouse / "_manifests" / table / f"{day}.json"


def data_root(environ: dict[str, str] | None = None) -> Path:
    """The data folder: ``$MLOPS_DATA_DIR``, else ``./data`` of the working directory's project."""
    env = os.environ if environ is None else environ
    value = env.get(DATA_DIR_ENV)
    if value:
        return Path(value).expanduser().resolve()
    from mlops_assets.project import project_root

    return project_root() / "data"


def data_paths(root: str | Path | None = None) -> DataPaths:
    return DataPaths(Path(root).expanduser().resolve() if root is not None else data_root())
