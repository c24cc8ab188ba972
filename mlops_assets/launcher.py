"""A run launcher for a laptop: runs execute in the launching process (the daemon, or the webserver for a run launched
from the UI), one after another in a worker thread, with the code location imported once.

Dagster's default launcher starts a process per run, and each run process imports the code location again (5–12 s
here on 2 shared cores) before doing a second of work: a live replay that ingests three sources a day spends its time
importing. This launcher trades isolation for that time: a run that crashes the interpreter takes the launching
process with it, and a run cannot be terminated from the UI. Use Dagster's default launcher (or Kubernetes, Celery)
for anything but a local replay.

In ``dagster.yaml``::

    run_coordinator:
      module: dagster._core.run_coordinator
      class: DefaultRunCoordinator
    run_launcher:
      module: mlops_assets.launcher
      class: InProcessRunLauncher
      config:
        threads: 1        # 0: execute the run before launch_run returns (the demo)
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Mapping
from typing import Any

import dagster._check as check
from dagster._core.launcher import LaunchRunContext, RunLauncher
from dagster._serdes import ConfigurableClass
from dagster._serdes.config_class import ConfigurableClassData

log = logging.getLogger(__name__)

LAUNCHER = {"module": "mlops_assets.launcher", "class": "InProcessRunLauncher"}
DEFAULT_COORDINATOR = {"module": "dagster._core.run_coordinator", "class": "DefaultRunCoordinator"}


def instance_overrides(threads: int) -> dict[str, Any]:
    """``dagster.yaml`` keys that make an instance launch runs with this launcher, immediately (no queue)."""
    return {
        "run_coordinator": dict(DEFAULT_COORDINATOR),
        "run_launcher": {**LAUNCHER, "config": {"threads": threads}},
    }


class InProcessRunLauncher(RunLauncher, ConfigurableClass):
    """Executes launched runs in this process: synchronously (``threads: 0``) or in worker threads, in launch order."""

    def __init__(self, threads: int = 1, inst_data: ConfigurableClassData | None = None) -> None:
        self._inst_data = inst_data
        self.threads = check.int_param(threads, "threads")
        self._queue: queue.Queue = queue.Queue()
        self._workers: list[threading.Thread] = []
        self._lock = threading.Lock()
        super().__init__()

    @property
    def inst_data(self) -> ConfigurableClassData | None:
        return self._inst_data

    @classmethod
    def config_type(cls) -> dict:
        from dagster import Field, IntSource

        return {"threads": Field(IntSource, is_required=False, default_value=1)}

    @classmethod
    def from_config_value(cls, inst_data: ConfigurableClassData, config_value: Mapping[str, Any]):
        return cls(threads=config_value.get("threads", 1), inst_data=inst_data)

    def _execute(self, run_id: str, origin) -> None:
        from dagster._core.execution.api import execute_run
        from dagster._utils.hosted_user_process import recon_job_from_origin

        run = self._instance.get_run_by_id(run_id)
        if run is None:
            return
        try:
            execute_run(recon_job_from_origin(origin), run, self._instance)
        except Exception:  # execute_run records a step's failure itself; this is a failure to start
            log.exception("run %s could not be executed in process", run_id)
            self._instance.report_run_failed(run, "the run could not be executed in process (see the log)")

    def _worker(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            try:
                self._execute(*item)
            finally:
                self._queue.task_done()

    def launch_run(self, context: LaunchRunContext) -> None:
        origin = check.not_none(
            context.job_code_origin, "a run launched in process needs its job's code origin"
        )
        if self.threads <= 0:
            self._execute(context.dagster_run.run_id, origin)
            return
        with self._lock:
            while len(self._workers) < self.threads:
                worker = threading.Thread(target=self._worker, name="mlops-run-worker", daemon=True)
                worker.start()
                self._workers.append(worker)
        self._queue.put((context.dagster_run.run_id, origin))

    def terminate(self, run_id: str) -> bool:
        return False  # a run executing in this process cannot be stopped from outside it

    def dispose(self) -> None:
        for _ in self._workers:
            self._queue.put(None)

    def join(self, timeout: int = 30) -> None:
        for worker in self._workers:
            worker.join(timeout)
