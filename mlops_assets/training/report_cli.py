"""`mlops report`: the model report of a data folder, with the gate verdicts its Dagster instance recorded.

Exit codes: 0 when the report was written (whatever state the data folder is in); with ``--fail-on-gate``
1 when the newest evaluation failed a blocking quality gate, when there is no evaluation at all, or when
the MLflow registry is missing, unreadable or unreachable (a CI gate fails closed); 2 on a usage error.
The report never creates an MLflow store; a lost registry is named on stderr and in the headline.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from mlops_assets.project import project_root
from mlops_assets.training.model_report import (
    FAIL,
    PASS,
    SKIPPED,
    GateLookup,
    GateRow,
    build_model_report,
)

EVALUATION_ASSET = "evaluation_report"


def add_report_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `mlops report`."""
    form = parser.add_mutually_exclusive_group()
    form.add_argument(
        "--markdown", dest="format", action="store_const", const="markdown", help="markdown (the default)"
    )
    form.add_argument("--json", dest="format", action="store_const", const="json", help="JSON")
    parser.set_defaults(format="markdown")
    parser.add_argument("--output", "-o", default=None, help="write the report to FILE instead of stdout")
    parser.add_argument(
        "--drift-days", type=int, default=7, help="daily drift reports listed (default %(default)s)"
    )
    parser.add_argument(
        "--fail-on-gate",
        action="store_true",
        help="exit 1 when the newest evaluation failed a blocking gate, or when nothing was evaluated",
    )
    parser.add_argument(
        "--no-instance",
        action="store_true",
        help="do not read gate verdicts from the Dagster instance; recompute them from the saved evaluation",
    )


def dagster_home() -> Path | None:
    """``$DAGSTER_HOME``, else the project's ``.dagster_home``, when it holds an instance (none is created)."""
    home = os.environ.get("DAGSTER_HOME")
    path = Path(home) if home else project_root() / ".dagster_home"
    if any((path / name).exists() for name in ("dagster.yaml", "history", "storage")):
        return path
    return None


def instance_gate_lookup(instance) -> GateLookup:
    """Gate verdicts the instance recorded for exactly one saved evaluation file.

    The latest ``evaluation_report`` materialization must name that file and must not be older than it
    (an evaluation run elsewhere rewrites the file); the gates are its run's blocking checks.
    """
    import dagster as dg

    from mlops_assets.training.gates import GATE_NAMES, NOT_APPLICABLE

    def lookup(path: Path) -> tuple[str, list[GateRow]] | None:
        entry = instance.get_latest_materialization_event(dg.AssetKey(EVALUATION_ASSET))
        if entry is None or entry.asset_materialization is None:
            return None
        metadata = entry.asset_materialization.metadata
        recorded = metadata.get("report_json_path")
        if recorded is None or Path(str(recorded.value)).resolve() != path.resolve():
            return None
        if path.stat().st_mtime > entry.timestamp + 1.0:
            return None
        rows = []
        for name in GATE_NAMES:
            record = instance.get_latest_asset_check_evaluation_record(
                dg.AssetCheckKey(dg.AssetKey(EVALUATION_ASSET), name)
            )
            evaluation = record.event.asset_check_evaluation if record is not None and record.event else None
            if evaluation is None or record.run_id != entry.run_id:
                # no result of that run (an older instance emitted none for a gate that does not apply)
                rows.append(
                    GateRow(name, SKIPPED, None, None, "not applicable (see the evaluation's gate table)")
                )
                continue
            meta = {k: v.value for k, v in evaluation.metadata.items()}
            # a gate that does not apply is recorded as passed (it blocks nothing): shown as skipped
            status = (
                SKIPPED if meta.get("status") == NOT_APPLICABLE else (PASS if evaluation.passed else FAIL)
            )
            rows.append(
                GateRow(
                    name,
                    status,
                    meta.get("measured"),
                    meta.get("threshold"),
                    evaluation.description or "",
                )
            )
        return f"blocking checks of evaluation_report in Dagster run {entry.run_id[:8]}", rows

    return lookup


def report_command(args: argparse.Namespace, project) -> int:
    """Build, render and write the report; the exit code follows the module docstring."""
    home = None if getattr(args, "no_instance", False) else dagster_home()
    instance = None
    if home is not None:
        import dagster as dg

        try:
            instance = dg.DagsterInstance.from_config(str(home))
        except Exception as exc:  # e.g. a Postgres-backed instance without its credentials
            print(
                f"mlops report: Dagster instance {home} not readable ({exc}); gates recomputed",
                file=sys.stderr,
            )
    try:
        report = build_model_report(
            project,
            gate_lookup=instance_gate_lookup(instance) if instance is not None else None,
            drift_last=getattr(args, "drift_days", 7),
        )
    finally:
        if instance is not None:
            instance.dispose()
    if getattr(args, "format", "markdown") == "json":
        text = json.dumps(report.to_dict(), indent=2) + "\n"
    else:
        text = report.to_markdown()
    output = getattr(args, "output", None)
    if output:
        Path(output).parent.mkdir(parents=True, exist_ok=True)
        Path(output).write_text(text)
        print(f"mlops report: {report.headline()} (written to {output})", file=sys.stderr)
    else:
        sys.stdout.write(text)
        if report.registry_unavailable:  # not only inside a report a CI job may never show
            print(f"mlops report: {report.headline()}", file=sys.stderr)
    if getattr(args, "fail_on_gate", False) and report.status != "passed":
        return 1
    return 0
