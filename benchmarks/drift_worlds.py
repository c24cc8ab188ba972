"""Simulated churn worlds with a champion, for the drift scenario benchmark and the slow scenario tests.

A world is the churn example simulated for ``days`` days from its spec's start, ingested through the
ingestion core (no Dagster run: much cheaper over many days), its feature views materialized, and a
champion trained on the labels of the first ``history_days`` days (the demo's phase 1) and promoted.
Worlds are built once per parameter set under a cache folder and reused (``build_world``).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from datetime import date, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CHURN_SPEC = ROOT / "examples" / "churn" / "spec.yaml"
CACHE = ROOT / ".bench" / "drift-worlds"


@dataclass(frozen=True)
class WorldConfig:
    """One simulated world: size, length, seed, scenarios and the champion's history."""

    size: int = 5000
    days: int = 120
    seed: int = 7
    scenarios: tuple[str, ...] = ()  # NAME, NAME@dayN, or NAME@dayN:key=value,key=value
    history_days: int = 90  # the champion is trained on the labels of these first days
    model_type: str | None = None  # None: the spec's estimator
    spec: str = str(CHURN_SPEC)
    extra: dict = field(default_factory=dict)

    def key(self) -> str:
        text = json.dumps(asdict(self), sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    @property
    def start(self) -> str:
        return _spec_start(self.spec)

    def day(self, offset: int) -> str:
        return (date.fromisoformat(self.start) + timedelta(days=offset)).isoformat()


@functools.cache
def _spec_start(spec: str) -> str:
    """The spec's first partition day (the spec is read once per process: a world asks for it once per day)."""
    from mlops_assets.spec.load import load_spec

    return load_spec(spec).partitions.start.isoformat()


def parse_scenario_with_params(text: str):
    """``covariate_drift@day100:region=south,amount_factor=1.8`` -> a simulator Scenario with those parameters."""
    from examples.churn.simulator import Scenario, parse_scenario

    head, _, tail = text.partition(":")
    scenario = parse_scenario(head)
    if not tail:
        return scenario
    params = {}
    for item in tail.split(","):
        key, _, value = item.partition("=")
        try:
            params[key] = float(value)
        except ValueError:
            params[key] = value
    return Scenario(scenario.name, scenario.start, params)


def _ingest(project, sources, days) -> None:
    from mlops_assets.ingestion.validate import ingest_day, write_day

    for source in sources:
        contract = project.contract(source)
        landing = project.landing_dir(source)
        for day in days:
            write_day(
                ingest_day(contract, landing, day),
                project.paths.partition_dir(source, day),
                project.paths.quarantine_dir(source, day),
                landing,
            )


def _train_champion(project, config: WorldConfig, history_end: str) -> int:
    """Train on the labels observed up to ``history_end`` and promote the model to champion."""
    import pandas as pd

    from mlops_assets.features.store import FeatureStore
    from mlops_assets.training import registry
    from mlops_assets.training.task import ModelTask
    from mlops_assets.training.tracking import TrackingConfig, client_for
    from mlops_assets.training.train import TrainConfig, train_and_log

    store = FeatureStore(project)
    labels = store.load_labels()
    cutoff = pd.Timestamp(history_end, tz="UTC") + pd.Timedelta(days=1)
    labels = labels.loc[labels[store.observed_column] < cutoff].reset_index(drop=True)
    frame, meta = store.build_training_set(labels)
    store.write_training_set(frame, meta)
    task = ModelTask.from_project(project)
    tracking = TrackingConfig.for_project(project)
    trained = train_and_log(
        frame,
        task,
        TrainConfig.from_task(task, model_type=config.model_type),
        tracking=tracking,
        importance_repeats=1,
    )
    registry.promote(
        client_for(tracking),
        trained.version,
        "drift scenario champion",
        model_name=project.model_name,
        history_path=registry.default_history_path(project.paths.root),
    )
    return int(trained.version)


def build_world(config: WorldConfig, cache: Path = CACHE, log=print):
    """The world's :class:`~mlops_assets.project.Project` (built on first use, then read from the cache)."""
    from mlops_assets.project import Project

    folder = Path(cache) / config.key()
    data = folder / "data"
    done = folder / "world.json"
    if done.exists():
        return Project.load(config.spec, data)
    shutil.rmtree(folder, ignore_errors=True)
    data.mkdir(parents=True)
    saved = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_URI", "MLOPS_DATA_DIR")}
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    try:
        t0 = time.monotonic()
        from examples.churn.simulator import simulate_world
        from mlops_assets.features.store import FeatureStore

        project = Project.load(config.spec, data)
        simulate_world(
            out=project.paths.landing,
            customers=config.size,
            days=config.days,
            start=config.start,
            seed=config.seed,
            scenarios=[parse_scenario_with_params(s) for s in config.scenarios],
        )
        project = Project.load(config.spec, data)
        days = [config.day(i) for i in range(config.days)]
        log(f"world {config.key()}: simulated in {time.monotonic() - t0:.1f}s")
        _ingest(project, list(project.spec.sources), days)
        log(f"world {config.key()}: ingested in {time.monotonic() - t0:.1f}s")
        FeatureStore(project).materialize(days)
        log(f"world {config.key()}: features in {time.monotonic() - t0:.1f}s")
        version = _train_champion(project, config, config.day(config.history_days - 1))
        log(f"world {config.key()}: champion v{version} in {time.monotonic() - t0:.1f}s")
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    done.write_text(json.dumps({**asdict(config), "champion_version": version}, indent=2, default=str))
    return Project.load(config.spec, data)
