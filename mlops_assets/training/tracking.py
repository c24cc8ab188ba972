"""MLflow tracking setup: where runs and artifacts live, and a safe first creation of the store."""

from __future__ import annotations

import fcntl
import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from mlops_assets.settings import data_paths

# The platform runs offline by default: no usage telemetry leaves the machine.
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

TRACKING_URI_ENV = "MLFLOW_TRACKING_URI"


def default_tracking_uri(data_root: str | Path | None = None) -> str:
    """``$MLFLOW_TRACKING_URI`` if set, else ``sqlite:///<data_root>/mlflow/mlflow.db``."""
    env = os.environ.get(TRACKING_URI_ENV)
    if env:
        return env
    return f"sqlite:///{data_paths(data_root).mlflow / 'mlflow.db'}"


def default_artifact_location(data_root: str | Path | None = None, tracking_uri: str | None = None) -> str:
    """``<data_root>/mlflow/artifacts`` for a local store; empty (the server's default) for a tracking server."""
    if tracking_uri and urlparse(tracking_uri).scheme not in ("", "file", "sqlite"):
        return ""
    return str(data_paths(data_root).mlflow / "artifacts")


@dataclass(frozen=True)
class TrackingConfig:
    """Where MLflow keeps runs, artifacts and the model registry."""

    tracking_uri: str
    artifact_location: str
    experiment_name: str
    model_name: str

    @classmethod
    def for_data_root(
        cls, data_root: str | Path | None, *, model_name: str, experiment_name: str, tracking_uri: str = ""
    ) -> TrackingConfig:
        """The default layout under a data root (the tracking URI honours ``$MLFLOW_TRACKING_URI``)."""
        uri = tracking_uri or default_tracking_uri(data_root)
        return cls(
            tracking_uri=uri,
            artifact_location=default_artifact_location(data_root, uri),
            experiment_name=experiment_name,
            model_name=model_name,
        )

    @classmethod
    def for_project(cls, project, tracking_uri: str = "") -> TrackingConfig:
        """The tracking layout of a project: its data root, model name and (as the experiment) its name."""
        return cls.for_data_root(
            project.paths.root,
            model_name=project.model_name,
            experiment_name=project.name,
            tracking_uri=tracking_uri,
        )


def sqlite_path(tracking_uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI, else ``None``."""
    parsed = urlparse(tracking_uri)
    if parsed.scheme != "sqlite":
        return None
    path = tracking_uri[len("sqlite:///") :]
    return Path(path) if path.startswith("/") else Path(path).resolve()


@contextmanager
def _file_lock(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def ensure_tracking_store(config: TrackingConfig) -> str:
    """Create the tracking database, the experiment and the registered model once; return the experiment id.

    SQLite stores run their schema migrations on first use, which races when two processes start
    together; the first use therefore happens under a file lock next to the database.
    """
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    db = sqlite_path(config.tracking_uri)
    lock = _file_lock(db.with_name(db.name + ".lock")) if db is not None else _no_lock()
    with lock:
        client = MlflowClient(tracking_uri=config.tracking_uri, registry_uri=config.tracking_uri)
        client.search_experiments(max_results=1)
        experiment = client.get_experiment_by_name(config.experiment_name)
        if experiment is None:
            artifact_location = config.artifact_location or None  # None: the tracking server decides
            if artifact_location and "://" not in artifact_location:
                Path(artifact_location).mkdir(parents=True, exist_ok=True)
            try:
                experiment_id = client.create_experiment(
                    config.experiment_name, artifact_location=artifact_location
                )
            except MlflowException as exc:  # another process (no file lock on a server) created it first
                if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                    raise
                experiment_id = client.get_experiment_by_name(config.experiment_name).experiment_id
        else:
            experiment_id = experiment.experiment_id
        try:
            client.create_registered_model(
                config.model_name,
                description=f"Model of experiment {config.experiment_name}; aliases challenger, champion, "
                "previous-champion.",
            )
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
    return experiment_id


@contextmanager
def _no_lock():
    yield


def client_for(config: TrackingConfig):
    """An ``MlflowClient`` bound to the config's tracking and registry URI."""
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=config.tracking_uri, registry_uri=config.tracking_uri)
