"""`mlops demo --live` / `make live`: the example's lifecycle driven by a real ``dagster-daemon``, watched in the UI.

The replay starts ``dagster-webserver`` and ``dagster-daemon`` on 127.0.0.1 against its own Dagster instance (its own
``DAGSTER_HOME``, the project's ``workspace.yaml``), simulates the example's landing files into a staging folder and
moves them into the real landing folders one day every ``drip_seconds``. Nothing else is launched by this process:
the landing sensor requests each day's ingestion, the automation conditions compute the feature views, the training
set, the online store and the drift reports, the first-champion sensor trains and gates a first model once the
training set is large enough, the drift sensor requests retraining when a drift check fails, and a gated challenger
goes through a canary judged by the canary sensor on the serving app's prediction log — the only thing this process
adds there is the traffic: simulated users calling the serving app (the registry's champion and challenger) on
127.0.0.1 while a canary is in progress.

The daemon executes runs in its own process (:class:`mlops_assets.launcher.InProcessRunLauncher`, one after another,
steps in process): a run process per run would spend the replay importing the code location.

Ctrl-C (SIGINT) or SIGTERM stops every process the replay started: each was started in its own process group and
the group is terminated (then killed); anything still running with this instance's ``DAGSTER_HOME`` in its
environment (a code server the daemon started in another group) is stopped by pid. The example names its simulator
in its spec (``demo:``); nothing here knows its domain.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path

from mlops_assets.dayranges import run_days_text
from mlops_assets.instance import open_instance
from mlops_assets.project import PARTITIONS_END_ENV, Project, project_root

LIVE_MARKER = ".mlops-live"  # a DAGSTER_HOME this replay created (and may wipe on the next start)
STAGING = ".replay"  # under the data root: the simulated landing files not yet dripped
LIVE_DAGSTER_YAML = """\
# The live replay's Dagster instance (written by `mlops demo --live`; wiped on its next start).
telemetry:
  enabled: false
run_coordinator:
  module: dagster._core.run_coordinator
  class: DefaultRunCoordinator
run_launcher:
  module: mlops_assets.launcher
  class: InProcessRunLauncher
  config:
    threads: {threads}
"""


@dataclass(frozen=True)
class LiveConfig:
    """The replay's settings (None keeps the spec's ``demo:`` value)."""

    dagster_home: Path
    size: int | None = None
    days: int | None = None
    seed: int | None = None
    scenarios: tuple[str, ...] | None = None
    drip_seconds: float = 5.0
    port: int = 3000  # the Dagster UI on 127.0.0.1
    serving_port: int | None = None  # the canary's serving app (None: a free port)
    sensor_interval_s: int = 1
    run_threads: int = 1
    canary: bool = True
    # hold the drip after the history days (the spec's demo.history_days, scaled) until the first retraining run
    # finished: the first model is trained on the history, and the new days arrive after it, as drift
    hold_for_champion: bool = False
    history_days: int | None = None
    ready_timeout_s: float = 240.0  # longest wait for the UI and the daemon's first ticks


def _say(message: str) -> None:
    print(f"[live] {message}", flush=True)


class Stop(Exception):
    """SIGINT or SIGTERM arrived."""


def _raise_stop(signum, frame) -> None:  # noqa: ANN001 - signal handler
    raise Stop(signal.Signals(signum).name)


# ------------------------------------------------------------------ processes


def processes_with_home(home: Path) -> list[int]:
    """Live processes whose environment names ``home`` as DAGSTER_HOME (this process excepted)."""
    marker = f"DAGSTER_HOME={home}".encode()
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue
        if marker in environ.split(b"\0"):
            pids.append(int(entry.name))
    return pids


class Processes:
    """The processes the replay started, each in its own process group; ``stop()`` ends all of them."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.started: list[tuple[str, subprocess.Popen]] = []

    def start(self, name: str, args: list[str], env: dict, cwd: Path, log: Path) -> subprocess.Popen:
        with open(log, "ab") as out:
            proc = subprocess.Popen(
                args,
                cwd=cwd,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # its own process group: stopped as one, untouched by the terminal's Ctrl-C
            )
        self.started.append((name, proc))
        _say(f"started {name} (pid {proc.pid}, log {log})")
        return proc

    def check_alive(self) -> None:
        for name, proc in self.started:
            if proc.poll() is not None:
                raise RuntimeError(f"{name} (pid {proc.pid}) exited with code {proc.returncode}")

    def stop(self, timeout: float = 30.0) -> None:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for _, proc in self.started:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, sig)
            deadline = time.monotonic() + timeout
            for _, proc in self.started:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            for pid in processes_with_home(self.home):  # e.g. a code server started in a group of its own
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, sig)
            while processes_with_home(self.home) and time.monotonic() < deadline:
                time.sleep(0.2)
            if not processes_with_home(self.home) and all(p.poll() is not None for _, p in self.started):
                break
        for name, proc in self.started:
            _say(f"stopped {name} (pid {proc.pid}, exit {proc.returncode})")
        left = processes_with_home(self.home)
        if left:
            _say(f"WARNING: processes still running with DAGSTER_HOME={self.home}: {left}")


# ------------------------------------------------------------------ the instance and the data


def prepare_home(home: Path, threads: int) -> None:
    """A fresh instance folder with the replay's dagster.yaml; refuses a folder the replay did not create."""
    home = Path(home)
    if home.exists() and any(home.iterdir()) and not (home / LIVE_MARKER).exists():
        raise ValueError(
            f"{home} is a Dagster instance the live replay did not create: choose another --dagster-home"
        )
    shutil.rmtree(home, ignore_errors=True)
    home.mkdir(parents=True)
    (home / LIVE_MARKER).write_text("created by mlops demo --live\n")
    (home / "dagster.yaml").write_text(LIVE_DAGSTER_YAML.format(threads=int(threads)))


def staged_days(project: Project, staging: Path) -> dict[str, list[tuple[Path, Path]]]:
    """The staged landing files by day: (staged file, its place in the real landing folder)."""
    from mlops_assets.ingestion.files import list_landing_files

    by_day: dict[str, list[tuple[Path, Path]]] = {}
    for name, source in project.spec.sources.items():
        folder = project.spec.landing_folder(name)
        for landing in list_landing_files(staging / folder, source.pattern):
            target = project.landing_dir(name) / landing.path.name
            by_day.setdefault(landing.day, []).append((landing.path, target))
    return dict(sorted(by_day.items()))


def drip(files: list[tuple[Path, Path]]) -> None:
    """Move one day's files into the landing folders (a rename: the sensor never sees half a file)."""
    for staged, target in files:
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(staged, target)


# ------------------------------------------------------------------ watching


def wait_for_ui(url: str, procs: Processes, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        procs.check_alive()
        with contextlib.suppress(OSError):
            with urllib.request.urlopen(url + "/server_info", timeout=2) as response:
                if response.status == 200:
                    return True
        time.sleep(0.5)
    return False


def sensor_ticks(instance) -> dict[str, int]:  # noqa: ANN001 - DagsterInstance
    """How many ticks each sensor of the instance recorded."""
    from dagster._core.scheduler.instigation import InstigatorType

    counts = {}
    for state in instance.all_instigator_state(instigator_type=InstigatorType.SENSOR):
        counts[state.name] = len(instance.get_ticks(state.instigator_origin_id, state.selector_id, limit=5))
    return counts


def wait_for_daemon(instance, procs: Processes, sensors: set[str], timeout: float) -> bool:  # noqa: ANN001
    """Until each of ``sensors`` ticked once (an automation condition's first tick is its baseline)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        procs.check_alive()
        ticked = {name for name, n in sensor_ticks(instance).items() if n}
        if sensors <= ticked:
            return True
        time.sleep(1.0)
    return False


def first_model_judged(instance) -> bool:  # noqa: ANN001 - DagsterInstance
    """Whether a retraining_job run finished (its model judged by the gates, promoted or not)."""
    import dagster as dg

    finished = [dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED]
    return bool(
        instance.get_runs(filters=dg.RunsFilter(job_name="retraining_job", statuses=finished), limit=1)
    )


class Progress:
    """Prints every run once it finished: its job, trigger, partitions and, for training, the gates' verdict."""

    def __init__(self, instance) -> None:  # noqa: ANN001
        self.instance = instance
        self.printed: set[str] = set()
        self.counts: dict[str, int] = {}

    def poll(self) -> None:
        import dagster as dg

        runs = self.instance.get_runs(limit=200)
        for run in reversed(runs):
            if run.run_id in self.printed or not run.is_finished:
                continue
            self.printed.add(run.run_id)
            tags = run.tags
            status = "succeeded" if run.status == dg.DagsterRunStatus.SUCCESS else run.status.value
            self.counts[f"{run.job_name} {status}"] = self.counts.get(f"{run.job_name} {status}", 0) + 1
            part = run_days_text(tags)
            assets = sorted(k.to_user_string() for k in run.asset_selection or ())
            shown = ", ".join(assets[:5]) + (" ..." if len(assets) > 5 else "")
            _say(
                f"  run {run.run_id[:8]} {run.job_name} {status} "
                f"[{tags.get('mlops/trigger', tags.get('dagster/sensor_name', 'ui'))}] {part} {shown}".rstrip()
            )
            if run.job_name == "retraining_job":
                from mlops_assets.demo import RunEvents, training_summary

                for line in training_summary(RunEvents(self.instance, run.run_id)).splitlines():
                    _say(f"    {line}")


def online_day(project: Project) -> str | None:
    """The last day every view of the online store holds (its values are as of the next midnight), or None before
    the first refresh: the day whose population the simulated users are, with features that are fresh online."""
    from mlops_assets.featurestore import FeatureStore

    times = [v["feature_time"] for v in FeatureStore(project).online_store().views().values()]
    if not times or any(t is None for t in times):
        return None
    return (min(times) - timedelta(days=1)).date().isoformat()


class CanaryTraffic:
    """Simulated users calling the serving app while a canary is in progress (the daemon judges each step)."""

    def __init__(self, project: Project, port: int | None) -> None:
        self.project, self.port = project, port
        self.server = None
        self.ids: list = []
        self.sent: dict[str, int] = {}
        self.mode = None
        self.waiting = False

    def step(self, last_day: str | None, requests: int = 200) -> None:
        from mlops_assets.serving.rollout import RolloutController

        state = RolloutController(self.project.paths.root).state()
        if state.mode != self.mode:
            _say(f"rollout mode: {state.mode} ({state.reason or ''})".rstrip(" ()"))
            self.mode = state.mode
        if state.mode != "canary" or last_day is None:
            return
        import numpy as np

        if self.server is None and not self._start(self._traffic_day(), state):
            return
        from mlops_assets.serving.demo import send_traffic

        rng = np.random.default_rng(len(self.sent) + sum(self.sent.values()))
        for arm, n in send_traffic(
            self.server, self.project.target_entity.join_key, self.ids, requests, rng
        ).items():
            self.sent[arm] = self.sent.get(arm, 0) + n

    def _traffic_day(self) -> str | None:
        """The day whose population calls the serving app: the online store's day, once it caught up with the
        newest day of the offline views (the day of the challenger's score reference, see
        :func:`~mlops_assets.serving.canary.challenger_reference_scores`); None until then. Users served a lagging
        online store score differently from the reference, and the canary rolls back, rightly: that is the skew its
        guardrail is there to catch, not what the replay means to show."""
        from mlops_assets.serving.canary import reference_day

        day, offline = online_day(self.project), reference_day(self.project)
        return day if day is not None and offline is not None and day >= offline else None

    def _start(self, day: str | None, state) -> bool:  # noqa: ANN001
        """Start the serving app on ``day``'s monitored population and its online features; False while there is
        none (the daemon lags the drip: the landed days are not in the online store yet)."""
        from mlops_assets.demo import population_rows
        from mlops_assets.serving.app import MappingFeatureSource, ServingConfig, create_app
        from mlops_assets.serving.demo import LocalServer
        from mlops_assets.serving.routing import MemoryAssignments

        self.ids, rows = population_rows(self.project, day, 10_000) if day else ([], {})
        if not self.ids:
            if not self.waiting:
                _say(
                    f"canary of v{state.challenger_version}: waiting for the online store to catch up with the "
                    "feature views"
                )
                self.waiting = True
            return False
        config = ServingConfig(
            project=self.project,
            feature_source=MappingFeatureSource(rows),
            assignments=MemoryAssignments(),
            poll_interval_s=0.5,
        )
        self.server = LocalServer(create_app(config), port=self.port).__enter__()
        _say(
            f"canary of v{state.challenger_version} against v{state.champion_version}: simulated users call the "
            f"serving app on {self.server.url} for the {len(self.ids)} entities of {day}'s population; "
            "canary_rollout_sensor judges each step"
        )
        return True

    def close(self) -> None:
        if self.server is not None:
            self.server.__exit__(None, None, None)
            _say(f"serving app stopped; requests answered by arm: {self.sent}")
            self.server = None


# ------------------------------------------------------------------ the replay


def run_live(project: Project, config: LiveConfig) -> int:
    """Run the replay until SIGINT/SIGTERM; every process it started is stopped before it returns."""
    from mlops_assets.daemon_ticks import project_environment
    from mlops_assets.demo import fresh_data, load_simulator, scaled_scenarios

    demo = project.spec.demo
    if demo is None:
        _say(f"spec {project.spec_path or project.name} has no `demo:` section: nothing to replay")
        return 2
    home = Path(config.dagster_home).resolve()
    try:
        prepare_home(home, config.run_threads)
    except ValueError as exc:
        _say(str(exc))
        return 2
    paths = project.paths
    fresh_data(paths)
    staging = paths.root / STAGING
    shutil.rmtree(staging, ignore_errors=True)
    days = config.days or demo.days
    size = config.size or demo.size
    seed = demo.seed if config.seed is None else config.seed
    scenarios = config.scenarios if config.scenarios is not None else demo.scenarios
    if config.scenarios is None:
        scenarios, notes = scaled_scenarios(tuple(scenarios), days, demo.days)
        if notes:
            _say(f"{days} days instead of the spec's {demo.days}: scenario days scaled ({'; '.join(notes)})")
    start = project.spec.partitions.start.isoformat()
    last = (date.fromisoformat(start) + timedelta(days=days - 1)).isoformat()
    _say(f"project {project.name} ({project.spec_path}); data folder {paths.root}; Dagster instance {home}")
    _say(f"simulating {size} entities x {days} days from {start} {list(scenarios)} into {staging}")
    summary = load_simulator(project)(
        staging, days=days, start=start, seed=seed, size=size, scenarios=scenarios
    )
    _say(f"simulated: {summary}")
    by_day = staged_days(project, staging)

    root = project_root()
    workspace = root / "workspace.yaml"
    target = ["-w", str(workspace)] if workspace.is_file() else ["-m", "mlops_assets.definitions"]
    env = {
        **os.environ,
        **project_environment(project.spec_path, paths.root),
        "DAGSTER_HOME": str(home),
        PARTITIONS_END_ENV: last,  # the days about to land are partitions before their files exist
        "MLOPS_SENSOR_INTERVAL_S": str(config.sensor_interval_s),
        "MLOPS_ROLLOUT": "canary" if config.canary else "direct",
        "MLOPS_EXECUTOR": "in_process",
    }
    os.environ.update({k: env[k] for k in ("DAGSTER_HOME", PARTITIONS_END_ENV)})
    bin_dir = Path(sys.executable).parent
    procs = Processes(home)
    traffic = CanaryTraffic(project, config.serving_port)
    previous = {sig: signal.signal(sig, _raise_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    url = f"http://127.0.0.1:{config.port}"
    # the storage is created here, once: a daemon and a webserver creating it together stamp its schema twice
    instance = open_instance(home)
    try:
        procs.start(
            "dagster-daemon",
            [str(bin_dir / "dagster-daemon"), "run", *target],
            env,
            root,
            home / "daemon.log",
        )
        procs.start(
            "dagster-webserver",
            [str(bin_dir / "dagster-webserver"), *target, "-h", "127.0.0.1", "-p", str(config.port)],
            env,
            root,
            home / "webserver.log",
        )
        if wait_for_ui(url, procs, config.ready_timeout_s):
            _say(f"Dagster UI: {url} (Automation: the sensors' ticks; Runs: what they launched)")
        else:
            _say(
                f"the UI did not answer on {url} within {config.ready_timeout_s:.0f}s (see {home}/webserver.log)"
            )
        baseline = {"landing_files_sensor", "features_automation_sensor", "new_data_automation_sensor"}
        if not wait_for_daemon(instance, procs, baseline, config.ready_timeout_s):
            _say("the daemon's sensors have not ticked yet; dripping anyway (see daemon.log)")
        progress = Progress(instance)
        landed: str | None = None
        history_days = min(config.history_days or round(demo.history_days * days / demo.days), days)
        history_end = (date.fromisoformat(start) + timedelta(days=history_days - 1)).isoformat()
        history = sum(day <= history_end for day in by_day)
        _say(
            f"landing {len(by_day)} days into {paths.landing}: the {history} days of history at once, then one day "
            f"every {config.drip_seconds:g}s; Ctrl-C stops"
        )
        for i, (day, files) in enumerate(by_day.items(), 1):
            if config.hold_for_champion and day > history_end and not first_model_judged(instance):
                _say(f"history {start}..{history_end} landed: holding the drip until a first model is judged")
                while not first_model_judged(instance):
                    procs.check_alive()
                    progress.poll()
                    time.sleep(1.0)
                progress.poll()
                _say("a first model was judged: the new days arrive")
            drip(files)
            landed = day
            if i < history:  # the history lands at once, a backlog the landing sensor ingests in ranged runs
                continue
            if i == history:
                _say(f"landed the history {start}..{day} ({i}/{len(by_day)} days) at once")
            else:
                _say(f"landed {day} ({i}/{len(by_day)}): {', '.join(sorted(t.name for _, t in files))}")
            deadline = time.monotonic() + config.drip_seconds
            while True:
                procs.check_alive()
                progress.poll()
                traffic.step(landed)
                if time.monotonic() >= deadline:
                    break
                time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))
        _say(f"every day landed; the daemon carries on. UI: {url}; Ctrl-C stops")
        while True:
            procs.check_alive()
            progress.poll()
            traffic.step(landed)
            time.sleep(1.0)
    except Stop as stop:
        _say(f"{stop}: stopping")
        return 0
    except RuntimeError as exc:
        _say(f"FAILED: {exc}")
        return 1
    finally:
        for sig in previous:
            signal.signal(sig, signal.SIG_IGN)  # a second Ctrl-C does not interrupt the clean-up
        try:
            traffic.close()
            procs.stop()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
