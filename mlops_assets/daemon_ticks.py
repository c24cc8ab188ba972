"""Sensor and automation-condition ticks evaluated through the Dagster daemon's own code path, in this process.

``make demo`` runs the lifecycle in one process; the decisions it relies on (the drift alarm requesting retraining,
each canary step, the serving log becoming partitions) are made by the code location's sensors exactly as
``dagster-daemon`` makes them: the code location is loaded as the daemon loads it, the sensor is evaluated by the
daemon's tick loop, its tick (cursor, skip reason, run ids) is stored in the instance, and the runs it requests are
submitted to the instance's run coordinator and launcher — :class:`mlops_assets.launcher.InProcessRunLauncher`
executes each before the tick returns. The Automation page then shows these ticks and the runs list shows each run
as launched by its sensor.

This module reaches into ``dagster._daemon`` (the daemon's loop is not a public API): it is the one place to adapt
when Dagster changes it.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import dagster as dg

LOCATION_NAME = "mlops_assets"
DEFINITIONS_MODULE = "mlops_assets.definitions"
log = logging.getLogger("mlops_assets.daemon_ticks")


@dataclass(frozen=True)
class Tick:
    """A recorded tick: its status, the runs it launched, why it skipped, or its error."""

    sensor: str
    status: str  # SUCCESS, SKIPPED or FAILURE
    run_ids: tuple[str, ...]
    skip_reason: str | None
    error: str | None

    def describe(self) -> str:
        if self.status == "SUCCESS":
            return f"{self.sensor}: tick requested {len(self.run_ids)} run(s)"
        if self.status == "SKIPPED":
            return f"{self.sensor}: tick skipped ({self.skip_reason or 'nothing to do'})"
        return f"{self.sensor}: tick FAILED ({(self.error or '')[:300]})"


class LocalDaemon:
    """The code location ``mlops_assets.definitions`` (as ``workspace.yaml`` names it) loaded in this process, and
    ticks of its sensors evaluated the way ``dagster-daemon`` evaluates them.

    The definitions module reads the project from ``$MLOPS_SPEC`` / ``$MLOPS_DATA_DIR``: set them before entering.
    """

    def __init__(self, instance: dg.DagsterInstance, working_directory: str | Path | None = None) -> None:
        self.instance = instance
        self.working_directory = str(working_directory or Path.cwd())
        self._context = None

    def __enter__(self) -> LocalDaemon:
        import importlib

        from dagster._core.remote_origin import InProcessCodeLocationOrigin
        from dagster._core.types.loadable_target_origin import LoadableTargetOrigin
        from dagster._core.workspace.context import WorkspaceProcessContext
        from dagster._core.workspace.load_target import InProcessWorkspaceLoadTarget

        if (
            DEFINITIONS_MODULE in sys.modules
        ):  # built for another project or data folder earlier in this process
            importlib.reload(sys.modules[DEFINITIONS_MODULE])
        origin = InProcessCodeLocationOrigin(
            LoadableTargetOrigin(
                executable_path=sys.executable,
                module_name=DEFINITIONS_MODULE,
                working_directory=self.working_directory,
            ),
            location_name=LOCATION_NAME,
        )
        self._context = WorkspaceProcessContext(self.instance, InProcessWorkspaceLoadTarget(origin))
        self._context.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._context is not None:
            self._context.__exit__(*exc)
            self._context = None

    # ------------------------------------------------------------------ looking things up

    def _repository(self):
        location = self._context.create_request_context().get_code_location(LOCATION_NAME)
        return next(iter(location.get_repositories().values()))

    def remote_sensor(self, name: str):
        return self._repository().get_sensor(name)

    def _state(self, sensor):
        from dagster._core.scheduler.instigation import (
            InstigatorState,
            InstigatorStatus,
            InstigatorType,
            SensorInstigatorData,
        )
        from dagster._time import get_current_timestamp

        state = self.instance.get_instigator_state(sensor.get_remote_origin_id(), sensor.selector_id)
        if state is None:  # as the daemon does for a sensor RUNNING by default that never ticked
            state = InstigatorState(
                sensor.get_remote_origin(),
                InstigatorType.SENSOR,
                InstigatorStatus.DECLARED_IN_CODE,
                SensorInstigatorData(
                    min_interval=sensor.min_interval_seconds,
                    last_sensor_start_timestamp=get_current_timestamp(),
                    sensor_type=sensor.sensor_type,
                ),
            )
            self.instance.add_instigator_state(state)
        return state

    def _wait_for_interval(self, sensor, state) -> None:
        """Sleep until the sensor's minimum interval since its last tick has passed (the daemon would wait too)."""
        data = state.instigator_data
        last = getattr(data, "last_tick_start_timestamp", None) or getattr(data, "last_tick_timestamp", None)
        if last:
            remaining = sensor.min_interval_seconds - (time.time() - last)
            if remaining > 0:
                time.sleep(remaining + 0.05)

    def _latest_tick(self, sensor, before: int | None) -> Tick:
        [tick] = self.instance.get_ticks(sensor.get_remote_origin_id(), sensor.selector_id, limit=1) or [None]
        if tick is None or (before is not None and tick.tick_id == before):
            return Tick(sensor.name, "NOT_EVALUATED", (), "the daemon did not evaluate the sensor", None)
        return Tick(
            sensor.name,
            tick.status.value,
            tuple(tick.run_ids),
            tick.skip_reason,
            tick.error.to_string() if tick.error else None,
        )

    def _previous_tick_id(self, sensor) -> int | None:
        ticks = self.instance.get_ticks(sensor.get_remote_origin_id(), sensor.selector_id, limit=1)
        return ticks[0].tick_id if ticks else None

    # ------------------------------------------------------------------ ticks

    def tick(self, name: str) -> Tick:
        """One tick of the sensor ``name`` through the daemon's loop: a plain sensor, or an automation-condition
        sensor (evaluated by the asset daemon unless it runs in the code server)."""
        sensor = self.remote_sensor(name)
        state = self._state(sensor)
        self._wait_for_interval(sensor, state)
        before = self._previous_tick_id(sensor)
        if sensor.sensor_type.is_handled_by_asset_daemon:
            self._tick_automation(sensor)
        else:
            self._tick_sensor(sensor, state)
        result = self._latest_tick(sensor, before)
        log.info(result.describe())
        return result

    def _tick_sensor(self, sensor, state) -> None:
        from dagster._daemon.sensor import _process_tick_generator

        logger = logging.getLogger("dagster.daemon.SensorDaemon")
        settings = self.instance.get_tick_retention_settings(state.instigator_type)
        for _ in _process_tick_generator(self._context, logger, sensor, state, None, settings, None):
            pass

    def _tick_automation(self, sensor) -> None:
        from dagster._daemon.asset_daemon import AssetDaemon

        daemon = AssetDaemon(settings={}, pre_sensor_interval_seconds=0)
        with self._context.create_request_context() as request_context:
            daemon._process_auto_materialize_tick(
                self._context, request_context, self._repository(), sensor, {}
            )


def demo_instance(home: Path) -> dg.DagsterInstance:
    """The instance in ``home`` (its storage, as the UI reads it), launching runs at once and in this process."""
    from dagster._core.instance.ref import InstanceRef

    from mlops_assets.launcher import instance_overrides

    return dg.DagsterInstance.from_ref(
        InstanceRef.from_dir(str(home), overrides=instance_overrides(threads=0))
    )


def project_environment(spec_path: Path | None, data_root: Path) -> dict[str, str]:
    """The variables the code location reads the project from."""
    env = {"MLOPS_DATA_DIR": str(Path(data_root).resolve())}
    if spec_path is not None:
        env["MLOPS_SPEC"] = str(Path(spec_path).resolve())
    return env


def set_environment(values: dict[str, str]) -> dict[str, str | None]:
    """Set ``values`` in ``os.environ``; what they were before (to restore with :func:`restore_environment`)."""
    before = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    return before


def restore_environment(before: dict[str, str | None]) -> None:
    for key, value in before.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
