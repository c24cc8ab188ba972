"""Real servers for the scale-out tests, started on 127.0.0.1 and stopped by the test that started them.

PostgreSQL and Redis come from Debian's packages (``make services`` installs them); the MLflow
tracking server is the one installed in the project environment. Nothing here listens beyond loopback.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from mlops_assets_tests.conftest import free_port, stop_process

BIN = Path(sys.executable).parent
INSTALL_HINT = "run `make services` (installs Debian's postgresql and redis-server)"


def _postgres_bindir() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    if initdb:
        return Path(initdb).parent
    raise RuntimeError(f"PostgreSQL server binaries not found: {INSTALL_HINT}")


def _as_postgres_user(cmd: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root: run its binaries as the ``postgres`` account when we are root."""
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


def _wait_for(predicate, what: str, timeout: float, log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.25)
    tail = log.read_text()[-3000:] if log and log.exists() else ""
    raise RuntimeError(f"{what} did not become ready within {timeout:.0f} s\n{tail}")


@dataclass(frozen=True)
class Postgres:
    host: str
    port: int
    user: str
    password: str
    bindir: Path

    def url(self, db: str, scheme: str = "postgresql+psycopg2") -> str:
        return f"{scheme}://{self.user}:{self.password}@{self.host}:{self.port}/{db}"

    def create_database(self, name: str) -> str:
        """Create a database and return its SQLAlchemy URL."""
        env = {**os.environ, "PGPASSWORD": self.password}
        subprocess.run(
            [self.bindir / "createdb", "-h", self.host, "-p", str(self.port), "-U", self.user, name],
            check=True,
            env=env,
            capture_output=True,
            timeout=60,
        )
        return self.url(name)

    def dagster_env(self, db: str) -> dict[str, str]:
        """The variables ``deploy/dagster.postgres.yaml`` reads."""
        return {
            "DAGSTER_PG_HOST": self.host,
            "DAGSTER_PG_PORT": str(self.port),
            "DAGSTER_PG_USER": self.user,
            "DAGSTER_PG_PASSWORD": self.password,
            "DAGSTER_PG_DB": db,
        }


@contextlib.contextmanager
def postgres_server() -> Iterator[Postgres]:
    """A throw-away PostgreSQL cluster on a free loopback port, with password authentication."""
    bindir = _postgres_bindir()
    root = Path(tempfile.mkdtemp(prefix="mlops-pg-"))
    data, sockets, log = root / "data", root / "sock", root / "postgres.log"
    sockets.mkdir()
    pwfile = root / "pw"
    password = "mlops-test"
    pwfile.write_text(password + "\n")
    if os.geteuid() == 0:
        account = pwd.getpwnam("postgres")
        for path in (root, sockets, pwfile):
            os.chown(path, account.pw_uid, account.pw_gid)
    port = free_port()
    try:
        subprocess.run(
            _as_postgres_user(
                [str(bindir / "initdb"), "-D", str(data), "-U", "mlops", "--pwfile", str(pwfile)]
                + ["-A", "scram-sha-256", "--no-sync", "-E", "UTF8", "--locale", "C"]
            ),
            check=True,
            capture_output=True,
            timeout=120,
        )
        options = (
            f"-h 127.0.0.1 -p {port} -k {sockets} -c fsync=off -c synchronous_commit=off "
            "-c full_page_writes=off -c max_connections=200"
        )
        subprocess.run(
            _as_postgres_user([str(bindir / "pg_ctl"), "-D", str(data), "-l", str(log), "-o", options, "-w"])
            + ["start"],
            check=True,
            capture_output=True,
            timeout=120,
        )
        server = Postgres("127.0.0.1", port, "mlops", password, bindir)

        def ready() -> bool:
            probe = [bindir / "pg_isready", "-h", server.host, "-p", str(port)]
            return subprocess.run(probe, capture_output=True).returncode == 0

        _wait_for(ready, "PostgreSQL", 60, log)
        yield server
    finally:
        if (data / "postmaster.pid").exists():
            subprocess.run(
                _as_postgres_user([str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"]),
                capture_output=True,
                timeout=120,
            )
        shutil.rmtree(root, ignore_errors=True)


@dataclass(frozen=True)
class Redis:
    host: str
    port: int

    def url(self, db: int = 0) -> str:
        return f"redis://{self.host}:{self.port}/{db}"


@contextlib.contextmanager
def redis_server() -> Iterator[Redis]:
    """A Redis server without persistence on a free loopback port."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError(f"redis-server not found: {INSTALL_HINT}")
    root = Path(tempfile.mkdtemp(prefix="mlops-redis-"))
    port = free_port()
    log = root / "redis.log"
    args = [binary, "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no"]
    proc = subprocess.Popen(args + ["--dir", str(root), "--logfile", str(log)])
    try:
        import redis

        client = redis.Redis(host="127.0.0.1", port=port, socket_connect_timeout=1)

        def ready() -> bool:
            try:
                return bool(client.ping())
            except redis.exceptions.ConnectionError:
                return False

        _wait_for(ready, "Redis", 30, log)
        yield Redis("127.0.0.1", port)
    finally:
        stop_process(proc)
        shutil.rmtree(root, ignore_errors=True)


@dataclass(frozen=True)
class MlflowServer:
    url: str
    artifacts: Path


@contextlib.contextmanager
def mlflow_server(backend_store_uri: str, workdir: Path) -> Iterator[MlflowServer]:
    """``mlflow server`` on a free loopback port: the given backend store, artifacts under ``workdir``."""
    artifacts = workdir / "mlflow-artifacts"
    artifacts.mkdir(parents=True, exist_ok=True)
    port = free_port()
    log = workdir / "mlflow-server.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [BIN / "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
            + ["--backend-store-uri", backend_store_uri, "--artifacts-destination", str(artifacts)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "MLFLOW_TRACKING_URI": ""},
        )
    url = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"mlflow server exited with {proc.returncode}\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                return response.status == 200
        except OSError:
            return False

    try:
        _wait_for(ready, "mlflow server", 180, log)
        yield MlflowServer(url, artifacts)
    finally:
        stop_process(proc)
