"""MLflow tracking setup: where runs and artifacts live, and a safe first creation of the store."""

from __future__ import annotations

import fcntl
import os
import sqlite3
import urllib.error
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, urlparse

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
    """An ``MlflowClient`` bound to the config's tracking and registry URI.

    Constructing a client on a ``sqlite:///`` URI creates the database when it is absent: read paths
    use :func:`registry_client` instead; only paths that may create the store (training, after
    :func:`ensure_tracking_store`) use this directly.
    """
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=config.tracking_uri, registry_uri=config.tracking_uri)


# --------------------------------------------------------------------------- read paths

#: Tables a usable MLflow SQL store holds; without them MLflow would create (migrate) the schema.
STORE_TABLES = ("alembic_version", "experiments", "runs", "registered_models", "model_versions")
#: Seconds a tracking server gets to answer ``GET /health`` before it counts as unreachable.
SERVER_PROBE_TIMEOUT_S = 5.0


class RegistryUnavailable(RuntimeError):
    """The MLflow store a read path needs is missing, unreadable or unreachable; nothing was created.

    ``target`` is the database file, folder or URI; ``missing`` is True when it does not exist at all
    (a data folder where nothing was trained yet looks the same as one whose store was lost).
    """

    def __init__(self, target: str, reason: str, *, missing: bool = False) -> None:
        self.target = target
        self.reason = reason
        self.missing = missing
        super().__init__(f"MLflow registry unavailable: {reason}")


def require_registry(tracking_uri: str) -> None:
    """Raise :class:`RegistryUnavailable` unless the store behind ``tracking_uri`` exists and answers.

    The one check every read path makes before it builds an MLflow client (which would create an absent
    SQLite database, or migrate an empty one). It opens nothing for writing:

    - ``sqlite:///`` — the file must exist, be readable, be an SQLite database (opened read-only) and
      hold MLflow's tables; while :func:`ensure_tracking_store` creates the store, this waits for it;
    - ``http(s)://`` — the tracking server must answer ``GET /health`` (any answer below 500);
    - another SQLAlchemy URL (``postgresql://``...) — connect and find MLflow's tables;
    - ``file:`` or a plain path — the folder must exist.
    """
    parsed = urlparse(tracking_uri)
    scheme = parsed.scheme.lower()
    if scheme == "sqlite":
        _require_sqlite(sqlite_path(tracking_uri))
    elif scheme in ("http", "https"):
        _require_server(tracking_uri)
    elif scheme in ("", "file"):
        folder = Path(parsed.path if scheme == "file" else tracking_uri)
        if not folder.is_dir():
            raise RegistryUnavailable(str(folder), f"no MLflow file store at {folder}", missing=True)
    elif scheme.split("+")[0] in ("postgresql", "mysql", "mssql"):
        _require_sql_tables(tracking_uri)


def registry_client(config: TrackingConfig):
    """An ``MlflowClient`` for a store that already exists (:func:`require_registry`); never creates one."""
    require_registry(config.tracking_uri)
    return client_for(config)


def _require_sqlite(db: Path) -> None:
    lock = db.with_name(db.name + ".lock")
    try:  # the creator holds this lock while it migrates a fresh store: read only a finished one
        handle = open(lock)  # noqa: SIM115 - closed below; never created here
    except OSError:
        handle = None
    try:
        if handle is not None:
            fcntl.flock(handle, fcntl.LOCK_SH)
        if not db.exists():
            raise RegistryUnavailable(
                str(db), f"no MLflow store at {db} (the file does not exist)", missing=True
            )
        if not db.is_file():
            raise RegistryUnavailable(str(db), f"the MLflow store {db} is not a file")
        if not os.access(db, os.R_OK):
            raise RegistryUnavailable(str(db), f"the MLflow store {db} is not readable (permission denied)")
        try:
            conn = sqlite3.connect(f"file:{quote(str(db))}?mode=ro", uri=True, timeout=30)
            try:
                tables = {
                    row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
                }
            finally:
                conn.close()
        except sqlite3.Error as exc:
            raise RegistryUnavailable(str(db), f"the MLflow store {db} is not readable: {exc}") from exc
        absent = [t for t in STORE_TABLES if t not in tables]
        if absent:
            raise RegistryUnavailable(str(db), f"{db} is not an MLflow store (no {', '.join(absent)} table)")
    finally:
        if handle is not None:
            handle.close()


def _require_server(uri: str) -> None:
    url = uri.rstrip("/") + "/health"
    try:
        with urllib.request.urlopen(url, timeout=SERVER_PROBE_TIMEOUT_S) as response:  # noqa: S310 - http(s) only
            status = response.status
    except urllib.error.HTTPError as exc:
        status = exc.code
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise RegistryUnavailable(uri, f"the MLflow tracking server {uri} is unreachable ({reason})") from exc
    if status >= 500:
        raise RegistryUnavailable(uri, f"the MLflow tracking server {uri} answered HTTP {status} on /health")


def _require_sql_tables(uri: str) -> None:
    import sqlalchemy

    shown = urlparse(uri)._replace(netloc=urlparse(uri).hostname or "").geturl()  # no credentials in messages
    engine = sqlalchemy.create_engine(uri)
    try:
        tables = set(sqlalchemy.inspect(engine).get_table_names())
    except sqlalchemy.exc.SQLAlchemyError as exc:
        raise RegistryUnavailable(
            shown, f"the MLflow database {shown} is unreachable ({type(exc).__name__})"
        ) from exc
    finally:
        engine.dispose()
    absent = [t for t in STORE_TABLES if t not in tables]
    if absent:
        raise RegistryUnavailable(shown, f"{shown} is not an MLflow store (no {', '.join(absent)} table)")


# ------------------------------------------------------------------ links to the MLflow UI

MLFLOW_UI_ENV = "MLOPS_MLFLOW_UI_URL"


def mlflow_ui_url(environ: dict[str, str] | None = None) -> str | None:
    """The MLflow UI's base URL (``$MLOPS_MLFLOW_UI_URL``, e.g. http://127.0.0.1:5000 from ``make mlflow-ui``)."""
    value = ((os.environ if environ is None else environ).get(MLFLOW_UI_ENV) or "").strip().rstrip("/")
    return value or None


def run_url(base: str, experiment_id: str, run_id: str) -> str:
    """A run's page in the MLflow UI."""
    return f"{base}/#/experiments/{quote(str(experiment_id))}/runs/{quote(run_id)}"


def model_version_url(base: str, model_name: str, version: int | str) -> str:
    """A registered model version's page in the MLflow UI."""
    return f"{base}/#/models/{quote(model_name)}/versions/{quote(str(version))}"


def mlflow_links(
    client, model_name: str, version: int | str | None, run_id: str | None = None
) -> dict[str, str]:
    """``{"mlflow_run": url, "mlflow_model_version": url}`` when an MLflow UI URL is configured, else empty."""
    base = mlflow_ui_url()
    if base is None:
        return {}
    links = {}
    if version is not None:
        links["mlflow_model_version"] = model_version_url(base, model_name, version)
        if run_id is None:
            run_id = client.get_model_version(model_name, str(version)).run_id
    if run_id:
        links["mlflow_run"] = run_url(base, client.get_run(run_id).info.experiment_id, run_id)
    return links
