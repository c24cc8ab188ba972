"""Disk and Dagster agree: partitions on disk against the materializations the event log recorded.

For each day of a source, its manifest (:mod:`mlops_assets.ingestion.manifest`) is compared with the
latest materialization of that partition in the event log (its ``content_hash`` metadata) and with the
partition on disk (by fingerprint, hashed only when the fingerprint differs). For a feature view, the
recorded ``content_hash`` / ``partition_files`` are compared with the partition on disk. Used by steps
before they read their inputs (:func:`require_inputs`), by the landing sensor and by ``mlops reconcile``.

A day whose manifest was written by a run this instance never saw (the data folder was copied, or
ingested under another Dagster home) cannot be judged against this event log: it is *unverified*,
reported apart, and never blocks a step (the disk check still applies).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import dagster as dg

from mlops_assets.ingestion.manifest import (
    Fingerprint,
    disk_problem,
    manifest_days,
    partition_fingerprint,
    read_manifest,
)
from mlops_assets.settings import DataPaths

_FETCH_CHUNK = 500
IN_PROGRESS = [
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
]


@dataclass(frozen=True)
class Recorded:
    """The latest materialization of one partition in the event log."""

    run_id: str
    content_hash: str | None
    files: Fingerprint | None


@dataclass(frozen=True)
class Disagreement:
    asset: str
    day: str
    kind: str  # not_recorded | hash_mismatch | missing_on_disk | partition_missing | partition_changed
    detail: str
    run_id: str | None = None  # the run that wrote what is on disk, when known

    def describe(self) -> str:
        return f"{self.asset} {self.day}: {self.kind}: {self.detail}"


@dataclass
class Agreement:
    """One asset's days: how many were checked, which disagree, which cannot be judged here."""

    asset: str
    checked: int = 0
    disagreements: list[Disagreement] = field(default_factory=list)
    unverified: list[str] = field(default_factory=list)  # days written by runs unknown to this instance

    @property
    def agree(self) -> int:
        return self.checked - len(self.disagreements) - len(self.unverified)


def recorded_partitions(
    instance: dg.DagsterInstance, asset: str, days: Iterable[str] | None = None
) -> dict[str, Recorded]:
    """Day -> the latest materialization the event log recorded for that partition of ``asset``."""
    key = dg.AssetKey(asset)
    wanted = set(days) if days is not None else None
    latest = instance.get_latest_storage_id_by_partition(
        key, dg.DagsterEventType.ASSET_MATERIALIZATION, partitions=wanted
    )
    ids = list(latest.values())
    out: dict[str, Recorded] = {}
    for i in range(0, len(ids), _FETCH_CHUNK):
        chunk = ids[i : i + _FETCH_CHUNK]
        records = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=key, storage_ids=chunk), limit=len(chunk)
        ).records
        for record in records:
            mat = record.asset_materialization
            if mat is None or mat.partition is None:
                continue
            meta = mat.metadata
            content = meta.get("content_hash")
            files = meta.get("partition_files")
            out[mat.partition] = Recorded(
                run_id=record.run_id,
                content_hash=getattr(content, "value", None),
                files=_fingerprint(getattr(files, "value", None)),
            )
    return out


def _fingerprint(value) -> Fingerprint | None:  # noqa: ANN001 - JSON metadata of any shape
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            return None
    return value if isinstance(value, dict) else None


def source_agreement(
    instance: dg.DagsterInstance,
    paths: DataPaths,
    table: str,
    days: Iterable[str] | None = None,
    recorded: Mapping[str, Recorded] | None = None,
    verified: dict[str, list] | None = None,
) -> Agreement:
    """Compare every day of source ``table`` (default: each with a manifest or a recorded materialization).

    ``verified`` ("table:day" -> [content hash, fingerprint]) remembers partitions whose files differ
    from their manifest's fingerprint but were hashed and found equal (e.g. a data folder copied without
    modification times), so a caller that checks often (the sensor) hashes each of them once.
    """
    wanted = None if days is None else sorted(set(days))
    if recorded is None:
        recorded = recorded_partitions(instance, table, wanted)
    on_disk = manifest_days(paths, table)
    if wanted is None:
        candidates = sorted(set(on_disk) | set(recorded))
    else:
        present = set(on_disk)
        candidates = [d for d in wanted if d in present or d in recorded]
    report = Agreement(table)
    known_runs: dict[str, bool] = {}

    def known(run_id: str | None) -> bool:
        if not run_id:
            return False
        if run_id not in known_runs:
            known_runs[run_id] = instance.has_run(run_id)
        return known_runs[run_id]

    for day in candidates:
        report.checked += 1
        manifest = read_manifest(paths, table, day)
        rec = recorded.get(day)
        if manifest is None:
            report.disagreements.append(
                Disagreement(
                    table,
                    day,
                    "missing_on_disk",
                    f"the event log records run {rec.run_id}'s materialization "
                    f"(content {str(rec.content_hash)[:12]}) but the warehouse holds no manifest of the day",
                    None,
                )
            )
            continue
        folder = paths.partition_dir(table, day)
        memo_key = f"{table}:{day}"
        now = partition_fingerprint(folder) if verified is not None else None
        if verified is not None and verified.get(memo_key) == [manifest.content_hash, now]:
            problem = None
        else:
            problem = disk_problem(folder, manifest.content_hash, manifest.files)
            if problem is None and verified is not None and now != manifest.files:
                verified[memo_key] = [manifest.content_hash, now]
        if problem is not None:
            report.disagreements.append(Disagreement(table, day, problem[0], problem[1], manifest.run_id))
            continue
        if rec is None:
            if known(manifest.run_id):
                status = instance.get_run_by_id(manifest.run_id).status.value
                report.disagreements.append(
                    Disagreement(
                        table,
                        day,
                        "not_recorded",
                        f"written by run {manifest.run_id} ({status}), which recorded no materialization of it",
                        manifest.run_id,
                    )
                )
            else:
                report.unverified.append(day)
            continue
        if rec.content_hash is not None and rec.content_hash != manifest.content_hash:
            report.disagreements.append(
                Disagreement(
                    table,
                    day,
                    "hash_mismatch",
                    f"manifest content {manifest.content_hash[:12]} (run {manifest.run_id}), event log's latest "
                    f"materialization {rec.content_hash[:12]} (run {rec.run_id})",
                    manifest.run_id,
                )
            )
    return report


def view_agreement(
    instance: dg.DagsterInstance, paths: DataPaths, view: str, folder_of, days: Iterable[str]
) -> Agreement:
    """Compare the given stored days of a feature view with its recorded materializations.

    ``folder_of(day)`` is the partition folder of a day. A day the event log never recorded cannot be
    judged (views keep no manifest naming their run): it is unverified.
    """
    days = sorted(set(days))
    recorded = recorded_partitions(instance, view, days)
    report = Agreement(view)
    for day in days:
        report.checked += 1
        rec = recorded.get(day)
        if rec is None:
            report.unverified.append(day)
            continue
        problem = disk_problem(folder_of(day), rec.content_hash, rec.files)
        if problem is not None:
            kind, detail = problem
            report.disagreements.append(
                Disagreement(view, day, kind, f"{detail} (recorded by run {rec.run_id})", rec.run_id)
            )
    return report


def in_progress_runs(instance: dg.DagsterInstance) -> set[str]:
    return set(instance.get_run_ids(filters=dg.RunsFilter(statuses=IN_PROGRESS)))


def require_inputs(
    context: dg.AssetExecutionContext,
    paths: DataPaths,
    sources: Mapping[str, Iterable[str]] = (),
    views: Mapping[str, tuple] = (),
    step: str = "",
) -> None:
    """Fail the step (``dg.Failure`` naming every partition) when an input partition it reads disagrees
    with the event log or is missing/changed on disk; warn about inputs this instance cannot judge.

    ``sources``: source -> days; ``views``: view -> (folder_of, days).
    """
    reports = [source_agreement(context.instance, paths, s, days) for s, days in dict(sources).items()]
    reports += [
        view_agreement(context.instance, paths, v, folder_of, days)
        for v, (folder_of, days) in dict(views).items()
    ]
    problems = [d for r in reports for d in r.disagreements]
    unverified = [(r.asset, d) for r in reports for d in r.unverified]
    if unverified:
        shown = ", ".join(f"{a} {d}" for a, d in unverified[:5]) + (" ..." if len(unverified) > 5 else "")
        context.log.warning(
            f"{step}: {len(unverified)} input partition(s) were not recorded by this Dagster instance "
            f"(written by another instance or outside Dagster), so only their files were checked: {shown}"
        )
    if problems:
        lines = "\n".join(f"- {d.describe()}" for d in problems[:20])
        more = f"\n- ... and {len(problems) - 20} more" if len(problems) > 20 else ""
        first = problems[0]
        raise dg.Failure(
            description=(
                f"{step}: input partition {first.asset} {first.day} does not match what Dagster recorded "
                f"({len(problems)} input partition(s) disagree); re-materialize them (or run `mlops reconcile "
                f"--fix`) first:\n{lines}{more}"
            ),
            metadata={
                "disagreements": dg.MetadataValue.json(
                    [{"asset": d.asset, "day": d.day, "kind": d.kind, "detail": d.detail} for d in problems]
                )
            },
        )
