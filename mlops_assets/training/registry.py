"""Model registry lifecycle: aliases, lifecycle tags, promotion, one-step rollback and their history."""

from __future__ import annotations

import hashlib
import json
import sqlite3
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from mlops_assets.settings import data_paths

CHALLENGER = "challenger"
CHAMPION = "champion"
PREVIOUS_CHAMPION = "previous-champion"

LIFECYCLE_TAG = "lifecycle"
STAGING = "staging"
PRODUCTION = "production"
ARCHIVED = "archived"

MODEL_SHA256_TAG = "model_sha256"

HISTORY_COLUMNS = (
    "id",
    "at",
    "action",
    "model_name",
    "version",
    "previous_version",
    "run_id",
    "dagster_run_id",
    "reason",
    "metrics",
)


class RegistryError(RuntimeError):
    """A registry operation could not be done (e.g. no rollback target)."""


class ModelIntegrityError(RuntimeError):
    """A model artifact's SHA-256 differs from the one recorded when it was registered."""


@dataclass(frozen=True)
class PromotionRecord:
    """One alias move: what became champion, what it replaced, and why."""

    at: datetime
    action: str  # "promote" or "rollback"
    model_name: str
    version: int
    previous_version: int | None
    run_id: str | None
    dagster_run_id: str | None
    reason: str
    metrics: dict[str, float]


def default_history_path(data_root: str | Path | None = None) -> Path:
    """``<data_root>/mlflow/promotion_history.sqlite``."""
    return data_paths(data_root).mlflow / "promotion_history.sqlite"


def model_artifact_sha256(model_dir: str | Path) -> str:
    """SHA-256 of the serialized model file of a local MLflow sklearn model folder."""
    model_dir = Path(model_dir)
    meta = yaml.safe_load((model_dir / "MLmodel").read_text())
    filename = meta["flavors"]["sklearn"]["pickled_model"]
    digest = hashlib.sha256()
    with open(model_dir / filename, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def alias_version(client, alias: str, model_name: str):
    """The model version carrying ``alias``, or ``None`` when the alias is not set."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(model_name, alias)
    except MlflowException as exc:
        if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            return None
        raise


def _append_history(path: Path, record: PromotionRecord) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with sqlite3.connect(path, timeout=30) as conn:
        conn.execute(
            "CREATE TABLE IF NOT EXISTS promotion_history ("
            "id INTEGER PRIMARY KEY AUTOINCREMENT, at TEXT NOT NULL, action TEXT NOT NULL, "
            "model_name TEXT NOT NULL, version INTEGER NOT NULL, previous_version INTEGER, run_id TEXT, "
            "dagster_run_id TEXT, reason TEXT NOT NULL, metrics TEXT NOT NULL)"
        )
        conn.execute(
            "INSERT INTO promotion_history (at, action, model_name, version, previous_version, run_id, "
            "dagster_run_id, reason, metrics) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                record.at.isoformat(),
                record.action,
                record.model_name,
                record.version,
                record.previous_version,
                record.run_id,
                record.dagster_run_id,
                record.reason,
                json.dumps(record.metrics, sort_keys=True),
            ),
        )
    conn.close()


def read_promotion_history(path: str | Path | None = None) -> pd.DataFrame:
    """Every recorded alias move, oldest first (empty frame when nothing was recorded)."""
    path = Path(path) if path is not None else default_history_path()
    if not path.exists():
        return pd.DataFrame(columns=list(HISTORY_COLUMNS))
    with sqlite3.connect(path, timeout=30) as conn:
        frame = pd.read_sql_query("SELECT * FROM promotion_history ORDER BY id", conn)
    conn.close()
    frame["at"] = pd.to_datetime(frame["at"], utc=True)
    frame["metrics"] = frame["metrics"].map(json.loads)
    return frame


def _float_metrics(metrics: Mapping[str, Any] | None) -> dict[str, float]:
    return {str(k): float(v) for k, v in (metrics or {}).items() if v is not None}


def promote(
    client,
    version: int | str,
    reason: str,
    metrics: Mapping[str, Any] | None = None,
    *,
    model_name: str,
    dagster_run_id: str | None = None,
    history_path: str | Path | None = None,
) -> PromotionRecord | None:
    """Make ``version`` the champion, keep the old champion as previous-champion; ``None`` if already champion."""
    version = int(version)
    history_path = Path(history_path) if history_path is not None else default_history_path()
    current = alias_version(client, CHAMPION, model_name)
    if current is not None and int(current.version) == version:
        return None
    target = client.get_model_version(model_name, str(version))
    now = datetime.now(UTC)
    if current is not None:
        client.set_registered_model_alias(model_name, PREVIOUS_CHAMPION, current.version)
        client.set_model_version_tag(model_name, current.version, LIFECYCLE_TAG, ARCHIVED)
    # Moving the alias overwrites it in one statement: there is always a champion once there was one.
    client.set_registered_model_alias(model_name, CHAMPION, str(version))
    client.set_model_version_tag(model_name, str(version), LIFECYCLE_TAG, PRODUCTION)
    client.set_model_version_tag(model_name, str(version), "promoted_at", now.isoformat())
    client.set_model_version_tag(model_name, str(version), "promotion_reason", reason[:5000])
    record = PromotionRecord(
        at=now,
        action="promote",
        model_name=model_name,
        version=version,
        previous_version=int(current.version) if current is not None else None,
        run_id=target.run_id,
        dagster_run_id=dagster_run_id,
        reason=reason,
        metrics=_float_metrics(metrics),
    )
    _append_history(history_path, record)
    return record


def rollback(
    client,
    reason: str,
    *,
    model_name: str,
    dagster_run_id: str | None = None,
    history_path: str | Path | None = None,
) -> PromotionRecord:
    """Restore the previous champion in one step; raise :class:`RegistryError` when there is none.

    ``client`` must come from :func:`~mlops_assets.training.tracking.registry_client` (the CLI, the
    ``rollback_job`` and ``MlflowResource.client`` do so): a client built on a missing SQLite file has
    already created an empty store, in which there is nothing to roll back to.
    """
    history_path = Path(history_path) if history_path is not None else default_history_path()
    previous = alias_version(client, PREVIOUS_CHAMPION, model_name)
    if previous is None:
        raise RegistryError(
            f"cannot roll back {model_name!r}: no {PREVIOUS_CHAMPION!r} alias is set "
            "(nothing was promoted over an earlier champion, or a rollback already used it)"
        )
    current = alias_version(client, CHAMPION, model_name)
    now = datetime.now(UTC)
    client.set_registered_model_alias(model_name, CHAMPION, previous.version)
    client.set_model_version_tag(model_name, previous.version, LIFECYCLE_TAG, PRODUCTION)
    client.set_model_version_tag(model_name, previous.version, "restored_at", now.isoformat())
    if current is not None and current.version != previous.version:
        client.set_model_version_tag(model_name, current.version, LIFECYCLE_TAG, ARCHIVED)
        client.set_model_version_tag(model_name, current.version, "rolled_back_at", now.isoformat())
    # Only after the champion moved: the rollback target is used up (rollback is one step).
    client.delete_registered_model_alias(model_name, PREVIOUS_CHAMPION)
    record = PromotionRecord(
        at=now,
        action="rollback",
        model_name=model_name,
        version=int(previous.version),
        previous_version=int(current.version) if current is not None else None,
        run_id=previous.run_id,
        dagster_run_id=dagster_run_id,
        reason=reason,
        metrics={},
    )
    _append_history(history_path, record)
    return record


@dataclass(frozen=True)
class LoadedModel:
    """A registry model loaded after its artifact hash was verified."""

    model: Any
    model_name: str
    version: int
    alias: str | None
    run_id: str | None
    sha256: str


def load_model_version(
    client, version: int | str, *, model_name: str, alias: str | None = None, verify: bool = True
) -> LoadedModel:
    """Download, verify (SHA-256 against the version tag) and load one registered version."""
    import mlflow.sklearn

    mv = client.get_model_version(model_name, str(version))
    with tempfile.TemporaryDirectory(prefix="mlops-model-") as tmp:
        local = _download_version(client, mv, tmp)
        digest = model_artifact_sha256(local)
        expected = mv.tags.get(MODEL_SHA256_TAG)
        if verify:
            if not expected:
                raise ModelIntegrityError(
                    f"{model_name} version {mv.version} has no {MODEL_SHA256_TAG} tag to verify"
                )
            if digest != expected:
                raise ModelIntegrityError(
                    f"{model_name} version {mv.version}: artifact SHA-256 {digest} differs from the registered "
                    f"{expected}; refusing to load"
                )
        model = mlflow.sklearn.load_model(local)
    return LoadedModel(model, model_name, int(mv.version), alias, mv.run_id, digest)


def _download_version(client, mv, dst: str) -> str:
    """Download a model version's artifacts to ``dst`` through the client's own stores."""
    source = client.get_model_version_download_uri(mv.name, mv.version)
    from mlflow.artifacts import download_artifacts

    return download_artifacts(artifact_uri=source, dst_path=dst, tracking_uri=client.tracking_uri)


def load_model_by_alias(
    client, alias: str = CHAMPION, *, model_name: str, verify: bool = True
) -> LoadedModel:
    """Load the version behind ``alias`` (default champion) after verifying its artifact hash."""
    mv = alias_version(client, alias, model_name)
    if mv is None:
        raise RegistryError(f"{model_name!r} has no version with alias {alias!r}")
    return load_model_version(client, mv.version, model_name=model_name, alias=alias, verify=verify)
