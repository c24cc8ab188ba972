"""Which executor runs the steps of a run, chosen by configuration (``MLOPS_EXECUTOR``), never by code edits.

- unset: Dagster's multiprocess executor (one process per step) with the ``forkserver`` start method: each step
  forks from a server process that imported the code location once, instead of importing it again (measured
  in ``benchmarks/results/import.md``); the linear retraining chain runs in process on a laptop;
- ``multiprocess``: one process per step for every job (forkserver);
- ``multiprocess_spawn``: one freshly spawned interpreter per step (Dagster's own default), for code that is
  not safe to fork;
- ``in_process``: every step in the run's own process;
- ``celery``: steps are sent to Celery workers (``make workers``) through the broker in
  ``MLOPS_CELERY_BROKER`` (default ``redis://127.0.0.1:6379/0``), results in ``MLOPS_CELERY_BACKEND``;
- ``k8s``: one Kubernetes job per step (dagster-k8s, configured by the Helm chart's run launcher).

The integrations are optional extras (``uv sync --extra celery`` / ``--extra k8s``); asking for one that
is not installed fails at load time with the command that installs it.
"""

import os

import dagster as dg

EXECUTOR_ENV = "MLOPS_EXECUTOR"
DEFAULT_BROKER = "redis://127.0.0.1:6379/0"
DEFAULT_BACKEND = "redis://127.0.0.1:6379/1"
CHOICES = ("multiprocess", "multiprocess_spawn", "in_process", "celery", "k8s")


def _missing_extra(kind: str, extra: str) -> dg.DagsterInvariantViolationError:
    return dg.DagsterInvariantViolationError(
        f"{EXECUTOR_ENV}={kind} needs the '{extra}' extra: uv sync --locked --extra {extra}"
    )


def celery_broker_config() -> dict[str, str]:
    """Broker and result backend, from the environment or the loopback Redis defaults."""
    return {
        "broker": os.environ.get("MLOPS_CELERY_BROKER") or DEFAULT_BROKER,
        "backend": os.environ.get("MLOPS_CELERY_BACKEND") or DEFAULT_BACKEND,
    }


def forkserver_executor() -> dg.ExecutorDefinition:
    """The multiprocess executor forking each step from a forkserver that preloaded the run's code location (the
    module the job was loaded from); ``DAGSTER_MULTIPROCESS_EXECUTOR_MAX_CONCURRENT`` still bounds the steps."""
    return dg.multiprocess_executor.configured({"start_method": {"forkserver": {}}}, name="multiprocess")


def default_executor(environ: dict[str, str] | None = None) -> dg.ExecutorDefinition:
    """The executor of the project's jobs: the one ``MLOPS_EXECUTOR`` names, else :func:`forkserver_executor`."""
    return executor_from_env(environ) or forkserver_executor()


def executor_from_env(environ: dict[str, str] | None = None) -> dg.ExecutorDefinition | None:
    """The executor named by ``MLOPS_EXECUTOR``; ``None`` when unset (each job keeps its own default)."""
    env = os.environ if environ is None else environ
    kind = (env.get(EXECUTOR_ENV) or "").strip().lower().replace("-", "_")
    if kind == "":
        return None
    if kind == "multiprocess":
        return forkserver_executor()
    if kind == "multiprocess_spawn":
        return dg.multiprocess_executor
    if kind == "in_process":
        return dg.in_process_executor
    if kind == "celery":
        try:
            from dagster_celery import celery_executor
        except ImportError as exc:
            raise _missing_extra(kind, "celery") from exc
        # Run config can still override these (e.g. `-c deploy/dagster.celery.yaml`).
        return celery_executor.configured(
            {**celery_broker_config(), "config_source": {"worker_prefetch_multiplier": 1}},
            name="celery",
        )
    if kind == "k8s":
        try:
            from dagster_k8s import k8s_job_executor
        except ImportError as exc:
            raise _missing_extra(kind, "k8s") from exc
        return k8s_job_executor
    raise dg.DagsterInvariantViolationError(
        f"{EXECUTOR_ENV}={env.get(EXECUTOR_ENV)!r} is not an executor; choose one of {', '.join(CHOICES)}"
    )
