"""``mlops reconcile [--fix]``: compare every source day's manifest and partition, and every feature view
day, with the materializations Dagster's event log recorded; report what disagrees, and with ``--fix``
materialize those partitions again through Dagster so that disk and event log agree."""

from __future__ import annotations

import argparse
import json
import os
import sys

from mlops_assets.dayranges import consecutive_days, range_tags
from mlops_assets.project import Project


def add_reconcile_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--fix", action="store_true", help="materialize every disagreeing partition again through Dagster"
    )
    parser.add_argument(
        "--include-unverified",
        action="store_true",
        help="with --fix, also re-ingest days written by runs this Dagster instance never recorded",
    )
    parser.add_argument(
        "--asset", action="append", default=None, help="only this source or view (repeatable)"
    )
    parser.add_argument("--json", action="store_true", help="print the result as JSON")


def check(instance, project: Project, assets: list[str]) -> dict:  # noqa: ANN001 - a DagsterInstance
    """Asset -> its :class:`~mlops_assets.agreement.Agreement` (sources first, then views)."""
    from mlops_assets.agreement import source_agreement, view_agreement
    from mlops_assets.features.tiles import partition_path, stored_days

    paths = project.paths
    out = {}
    for name in assets:
        if name in project.spec.sources:
            out[name] = source_agreement(instance, paths, name)
        else:
            out[name] = view_agreement(
                instance,
                paths,
                name,
                lambda day, n=name: partition_path(paths, n, day),
                stored_days(paths, name),
            )
    return out


def _as_json(reports: dict, running: set[str]) -> dict:
    return {
        name: {
            "checked": r.checked,
            "agree": r.agree,
            "unverified": r.unverified,
            "disagreements": [
                {
                    "day": d.day,
                    "kind": d.kind,
                    "detail": d.detail,
                    "run_id": d.run_id,
                    "run_in_progress": d.run_id in running,
                }
                for d in r.disagreements
            ],
        }
        for name, r in reports.items()
    }


def _print(reports: dict, running: set[str]) -> None:
    for name, r in reports.items():
        line = f"{name}: {r.checked} day(s) on disk or in the event log: {r.agree} agree"
        if r.disagreements:
            line += f", {len(r.disagreements)} DISAGREE"
        if r.unverified:
            line += f", {len(r.unverified)} written by runs this instance never recorded (not judged)"
        print(line)
        for d in r.disagreements:
            note = " [its run is still marked in progress: running, or killed]" if d.run_id in running else ""
            print(f"  {d.day}  {d.kind}: {d.detail}{note}")


def _fix(instance, project: Project, todo: dict[str, list[str]]) -> list[str]:  # noqa: ANN001
    """Materialize each asset's days (one run per consecutive range); messages of runs that failed."""
    import dagster as dg

    from mlops_assets.component import build_definitions

    defs = build_definitions(project)
    job = defs.resolve_implicit_global_asset_job_def()
    valid = set(project.partition_days())
    failures = []
    for name, days in todo.items():
        outside = [d for d in days if d not in valid]
        if outside:
            failures.append(
                f"{name}: {len(outside)} day(s) outside the partitions ({', '.join(outside[:5])})"
            )
        for run in consecutive_days([d for d in days if d in valid]):
            first, last = run[0], run[-1]
            print(f"re-materializing {name} {first}..{last}")
            result = job.execute_in_process(
                instance=instance,
                asset_selection=[dg.AssetKey(name)],
                tags={**range_tags(first, last), "mlops/trigger": "reconcile"},
                raise_on_error=False,
            )
            if not result.success:
                failures.append(f"{name} {first}..{last}: run {result.run_id} failed")
    return failures


def reconcile_command(args: argparse.Namespace, project: Project) -> int:
    import dagster as dg

    from mlops_assets.agreement import in_progress_runs

    if not os.environ.get("DAGSTER_HOME"):
        print(
            "mlops reconcile: error: DAGSTER_HOME is not set: it names the Dagster instance whose event log "
            "the warehouse is compared with (e.g. `make dagster-home`, then export DAGSTER_HOME=.dagster_home)",
            file=sys.stderr,
        )
        return 2
    known = [*project.spec.sources, *project.view_names]
    assets = args.asset or known
    unknown = [a for a in assets if a not in known]
    if unknown:
        print(f"mlops reconcile: error: no source or view {unknown}; known: {known}", file=sys.stderr)
        return 2
    with dg.DagsterInstance.get() as instance:
        reports = check(instance, project, assets)
        running = in_progress_runs(instance)
        fixed = None
        if args.fix:
            todo = {
                name: sorted(
                    {d.day for d in r.disagreements}
                    | (set(r.unverified) if args.include_unverified else set())
                )
                for name, r in reports.items()
            }
            todo = {k: v for k, v in todo.items() if v}
            if todo:
                if not args.json:
                    _print(reports, running)
                failures = _fix(instance, project, todo)
                fixed = {"fixed": {k: v for k, v in todo.items()}, "failures": failures}
                for failure in failures:
                    print(f"mlops reconcile: {failure}", file=sys.stderr)
                reports = check(instance, project, assets)
                running = in_progress_runs(instance)
        disagree = sum(len(r.disagreements) for r in reports.values())
        if args.json:
            payload = {"assets": _as_json(reports, running), "disagreements": disagree}
            if fixed is not None:
                payload["fix"] = fixed
            print(json.dumps(payload, indent=2, sort_keys=True))
        else:
            _print(reports, running)
            print(
                "disk and the event log agree"
                if not disagree
                else f"{disagree} partition(s) disagree: `mlops reconcile --fix` materializes them again"
            )
    return 1 if disagree else 0
