"""The reference period of a drift report: the monitored population's daily snapshots over the champion's
training window, calibrated once and cached on disk (no Dagster).

* **Reference days**: the days of the champion's training set (its label times, first to last), or
  a period given explicitly (``reference_period``), capped to the ``max_reference_days`` latest.
* **Chunks**: one per reference day: the entities of the spec's monitored population that day, with
  the champion's features as of D+1 00:00 UTC read through the feature store (the very read a
  monitored day gets) and the champion's scores on them.
* **Warm-up**: a windowed feature's values are biased on days whose window reaches before the first
  partition (``partitions.start``): those days are left out of its reference (and when that leaves
  too few, it is judged on its shape).
* **Trend features by construction**: declared in ``monitoring.trend_features``; ages
  (``days_since`` a date, ``days_since_first``) and lifetime counts, sums, distinct counts, minima
  and maxima of event sources.
* **Cache**: ``<data>/monitoring/reference/<key>/`` where the key hashes the champion (version, run),
  the reference days, the features, the calibration settings and the identity (size, mtime) of every
  stored file the reference reads, so any change recomputes it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import pandas as pd

from mlops_assets.features.store import FeatureStore
from mlops_assets.monitoring.calibrate import (
    Calibration,
    CalibrationSettings,
    ReferenceData,
    calibrate,
    calibration_key,
    load_calibration,
    save_calibration,
)
from mlops_assets.project import Project

REFERENCE_FOLDER = "monitoring/reference"
_GROWING_LIFETIME_AGGS = frozenset({"count", "sum", "distinct_count", "min", "max", "days_since_first"})


def day_range(first: str, last: str) -> list[str]:
    start, end = date.fromisoformat(first), date.fromisoformat(last)
    return [(start + timedelta(days=i)).isoformat() for i in range((end - start).days + 1)]


def parse_period(text: str) -> tuple[str, str]:
    """``YYYY-MM-DD..YYYY-MM-DD`` (or one day) -> (first, last), validated."""
    first, _, last = text.partition("..")
    first, last = first.strip(), (last.strip() or first.strip())
    try:
        a, b = date.fromisoformat(first), date.fromisoformat(last)
    except ValueError:
        raise ValueError(f"reference period {text!r}: expected YYYY-MM-DD..YYYY-MM-DD") from None
    if b < a:
        raise ValueError(f"reference period {text!r} ends before it starts")
    return a.isoformat(), b.isoformat()


def training_window(reference_rows: pd.DataFrame, time_column: str) -> tuple[str, str] | None:
    """First and last UTC day of the champion's training rows (None when it has none)."""
    if reference_rows.empty or time_column not in reference_rows:
        return None
    times = pd.to_datetime(reference_rows[time_column], utc=True)
    return times.min().date().isoformat(), times.max().date().isoformat()


def feature_traits(project: Project, features: Sequence[str]) -> tuple[dict[str, str], dict[str, str]]:
    """(first day each windowed feature's window is full, trend features with the reason) from the spec."""
    from mlops_assets.spec.check import resolve_feature

    spec = project.spec
    start = spec.partitions.start
    declared = set(spec.monitoring.trend_features)
    warm_from, trends = {}, {}
    for name in features:
        try:
            vname, fname = resolve_feature(spec, name)
        except KeyError:
            continue
        view = spec.feature_views[vname]
        feat = view.features[fname]
        kind = spec.source(view.source).kind
        if name in declared or f"{vname}:{fname}" in declared:
            trends[name] = "declared a trend feature in the spec (monitoring.trend_features)"
        elif feat.agg == "days_since":
            trends[name] = f"an age (days since {feat.column}): grows by one every day by construction"
        elif kind == "events" and feat.window is None and feat.agg in _GROWING_LIFETIME_AGGS:
            trends[name] = f"a lifetime {feat.agg}: grows with the history behind it by construction"
        if kind == "events" and feat.window is not None:
            warm_from[name] = (start + timedelta(days=int(feat.window) - 1)).isoformat()
    return warm_from, trends


def _file_identities(project: Project, features: Sequence[str], days: Sequence[str]) -> list:
    """(path, size, mtime) of every stored file a reference over ``days`` reads (views and population sources)."""
    from mlops_assets.features.layout import select_features

    paths = project.paths
    out = []
    first = project.spec.partitions.start.isoformat()
    span = day_range(first, days[-1]) if days else []
    folders = [paths.table_dir(v) for v in select_features(project.spec, list(features))]
    population = project.spec.monitoring.population
    key = project.target_entity.join_key
    sources = list(population.sources) or [
        n for n in project.sources_of_kind("events") if key in project.source(n).columns
    ]
    folders += [paths.table_dir(s) for s in sources]
    wanted = set(span)
    for folder in folders:
        if not folder.is_dir():
            continue
        for part in sorted(folder.iterdir()):
            day = part.name.removeprefix("date=")
            if part.is_dir() and day in wanted:
                for f in sorted(part.iterdir()):
                    st = f.stat()
                    out.append((str(f.relative_to(paths.root)), st.st_size, st.st_mtime_ns))
            elif part.is_file():
                st = part.stat()
                out.append((str(part.relative_to(paths.root)), st.st_size, st.st_mtime_ns))
    return out


def populations(store: FeatureStore, days: Sequence[str]) -> dict[str, list]:
    """The monitored population of each day."""
    from mlops_assets.monitoring.daily import current_population

    return {d: current_population(store, d) for d in days}


def snapshot_frame(
    store: FeatureStore, ids_by_day: dict[str, list], features: Sequence[str]
) -> tuple[pd.DataFrame, np.ndarray]:
    """Every (entity, day) snapshot's features as of D+1 00:00 UTC in one read, and each row's day index."""
    key = store.project.target_entity.join_key
    days = list(ids_by_day)
    pieces = [
        pd.DataFrame(
            {key: ids, "event_timestamp": pd.Timestamp(date.fromisoformat(d) + timedelta(days=1), tz="UTC")}
        )
        for d, ids in ids_by_day.items()
    ]
    frame = pd.concat(pieces, ignore_index=True) if pieces else pd.DataFrame({key: [], "event_timestamp": []})
    chunks = np.repeat(np.arange(len(days)), [len(ids_by_day[d]) for d in days])
    if frame.empty:
        return frame, chunks
    return store.get_historical_features(frame, list(features)), chunks


def build_reference(store: FeatureStore, champion, days: Sequence[str]) -> ReferenceData:
    """The reference chunks of ``days`` for the champion's features, and its scores on them."""
    from mlops_assets.monitoring.daily import MonitoringInputError

    project = store.project
    features = champion.features
    ids = populations(store, days)
    kept = [d for d in days if ids[d]]
    if not kept:
        raise MonitoringInputError(
            f"no entity of the monitored population on any reference day {days[0]}..{days[-1]}"
        )
    ids = {d: ids[d] for d in kept}
    frame, chunks = snapshot_frame(store, ids, features)
    warm_from, trends = feature_traits(project, features)
    reference = ReferenceData(
        days=kept,
        frame=frame[features].reset_index(drop=True),
        chunks=chunks,
        numeric=list(champion.numeric_features),
        categorical=list(champion.categorical_features),
        warm_from=warm_from,
        trend_reasons=trends,
    )
    reference.scores = champion.score(frame)
    return reference


def reference_days(
    champion, project: Project, period: tuple[str, str] | None, max_days: int | None
) -> list[str]:
    """The reference days: the given period, else the champion's training window (the newest ``max_days``)."""
    if period is None:
        window = training_window(
            champion.reference, champion.task.time if champion.task else project.target_timestamp
        )
        if window is None:
            raise ValueError("the champion's training set has no rows: give a reference period")
        period = window
    days = day_range(*period)
    first = project.spec.partitions.start.isoformat()
    days = [d for d in days if d >= first]
    if max_days is not None and len(days) > max_days:
        days = days[-max_days:]
    return days


def cache_folder(project: Project) -> Path:
    return project.paths.root / REFERENCE_FOLDER


def load_or_calibrate(
    store: FeatureStore,
    champion,
    settings: CalibrationSettings,
    *,
    period: tuple[str, str] | None = None,
    max_days: int | None = None,
    estimate_metrics=None,
    use_cache: bool = True,
    log=None,
) -> Calibration:
    """The champion's calibration over its reference period, from the cache when nothing it reads changed."""
    project = store.project
    days = reference_days(champion, project, period, max_days)
    key = calibration_key(
        {
            "champion": [champion.version, champion.run_id],
            "days": [days[0], days[-1]] if days else [],
            "features": [champion.numeric_features, champion.categorical_features],
            "settings": settings.to_dict(),
            "estimates": sorted(estimate_metrics or {}),
            "spec": [
                project.spec.monitoring.model_dump(mode="json"),
                project.spec.partitions.model_dump(mode="json"),
            ],
            "files": _file_identities(project, champion.features, days),
        }
    )
    folder = cache_folder(project)
    if use_cache:
        cached = load_calibration(folder, key)
        if cached is not None:
            return cached
    reference = build_reference(store, champion, days)
    calibration = calibrate(reference, settings, key=key, estimate_metrics=estimate_metrics)
    try:
        save_calibration(calibration, folder)
        _prune(folder, keep=key)
    except OSError as exc:  # a read-only data folder still gets its report
        if log:
            log(f"could not cache the reference calibration under {folder}: {exc}")
    return calibration


def _prune(folder: Path, keep: str, max_entries: int = 8) -> None:
    """Keep the newest ``max_entries`` cached calibrations."""
    entries = sorted(
        (p for p in folder.iterdir() if p.is_dir() and p.name != keep and not p.name.startswith(".")),
        key=lambda p: p.stat().st_mtime,
    )
    for old in entries[: max(0, len(entries) - (max_entries - 1))]:
        from mlops_assets.storage import remove_directory

        remove_directory(old)
    os.utime(folder / keep)
