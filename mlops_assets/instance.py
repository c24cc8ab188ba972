"""The Dagster instance the CLI and demo run against: $DAGSTER_HOME, default <project>/.dagster_home."""

from __future__ import annotations

import os
import time
from pathlib import Path

from mlops_assets.project import project_root

DEFAULT_DAGSTER_YAML = """\
# Local Dagster instance for mlops_assets (SQLite storage under this folder).
telemetry:
  enabled: false
concurrency:
  runs:
    max_concurrent_runs: 2
"""


def ensure_dagster_home() -> Path:
    """Set DAGSTER_HOME to the project-local folder when unset and give it a dagster.yaml."""
    home = Path(os.environ.get("DAGSTER_HOME") or project_root() / ".dagster_home").resolve()
    home.mkdir(parents=True, exist_ok=True)
    config = home / "dagster.yaml"
    if not config.exists():
        config.write_text(DEFAULT_DAGSTER_YAML)
    os.environ["DAGSTER_HOME"] = str(home)
    return home


def open_instance(home: Path):  # noqa: ANN202 - DagsterInstance
    """The instance under ``home``, its storage created if needed; another process creating it at the same moment
    (a reader polling it) makes SQLite report a table that already exists: open it again, it is complete then."""
    import dagster as dg
    from dagster._core.instance.ref import InstanceRef
    from sqlalchemy.exc import OperationalError

    for attempt in range(5):
        try:
            instance = dg.DagsterInstance.from_ref(InstanceRef.from_dir(str(home)))
            instance.get_runs(limit=1)
            return instance
        except OperationalError as exc:
            if "already exists" not in str(exc) or attempt == 4:
                raise
            time.sleep(1.0)
    raise AssertionError("unreachable")
