"""The `mlops` command: the project spec, the demo lifecycle, and the tools of each domain.

Every command works on one project: ``--spec PATH`` (or ``$MLOPS_SPEC``, or ``[tool.mlops] spec`` in
pyproject.toml) and its data folder ``--data-dir`` (or ``$MLOPS_DATA_DIR``, or ./data).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path


def _project(args: argparse.Namespace, filters: bool = True):
    from mlops_assets.project import Project

    return Project.load(getattr(args, "spec", None), getattr(args, "data_dir", None), filters=filters)


def _cmd_spec_validate(args: argparse.Namespace) -> int:
    from mlops_assets.project import configured_spec_path
    from mlops_assets.spec.load import SpecError, load_spec

    path = configured_spec_path(args.spec)
    try:
        spec = load_spec(path)
    except SpecError as exc:
        print(exc, file=sys.stderr)
        return 1
    features = sum(len(v.features) for v in spec.feature_views.values())
    print(
        f"{path}: valid: project {spec.name!r}, {len(spec.entities)} entit{'y' if len(spec.entities) == 1 else 'ies'}, "
        f"{len(spec.sources)} sources, {len(spec.feature_views)} feature views, {features} features"
        + (f", target {spec.target.source}.{spec.target.column} ({spec.target.task})" if spec.target else "")
    )
    return 0


def _cmd_spec_schema(args: argparse.Namespace) -> int:
    from mlops_assets.spec.schema import json_schema

    text = json.dumps(json_schema(), indent=2) + "\n"
    if args.output:
        Path(args.output).write_text(text)
        print(f"wrote {args.output}")
    else:
        sys.stdout.write(text)
    return 0


def _cmd_init(args: argparse.Namespace) -> int:
    from mlops_assets.spec.infer import init_project

    result = init_project(
        Path(args.landing),
        Path(args.output),
        name=args.name,
        force=args.force,
        labels=args.labels,
        target=args.target,
    )
    print(result.summary())
    return 0


def _cmd_simulate(args: argparse.Namespace) -> int:
    from mlops_assets.demo import load_simulator

    project = _project(args)
    demo = project.spec.demo
    if demo is None:
        print(f"spec {project.spec_path} has no `demo:` section naming a simulator", file=sys.stderr)
        return 2
    simulate = load_simulator(project)
    out = Path(args.out) if args.out else project.paths.landing
    summary = simulate(
        out,
        days=args.days or demo.days,
        start=args.start or project.spec.partitions.start.isoformat(),
        seed=demo.seed if args.seed is None else args.seed,
        size=args.size or demo.size,
        scenarios=tuple(args.scenario) if args.scenario else demo.scenarios,
    )
    print(summary)
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from mlops_assets.demo import DemoConfig, run_demo

    if args.live:
        from mlops_assets.live import LiveConfig, run_live
        from mlops_assets.project import project_root

        live = LiveConfig(
            dagster_home=Path(args.dagster_home) if args.dagster_home else project_root() / ".dagster_live",
            size=args.size,
            days=args.days,
            seed=args.seed,
            scenarios=tuple(args.scenario) if args.scenario else None,
            drip_seconds=args.drip_seconds,
            port=args.port,
            serving_port=args.serving_port,
            canary=not args.no_canary,
            hold_for_champion=args.hold_for_champion,
            history_days=args.history_days,
        )
        return run_live(_project(args), live)
    config = DemoConfig(
        size=args.size,
        days=args.days,
        seed=args.seed,
        scenarios=tuple(args.scenario) if args.scenario else None,
        fresh=args.fresh,
        canary=not args.no_canary,
    )
    return run_demo(_project(args), config)


def _cmd_features(args: argparse.Namespace) -> int:
    from mlops_assets.featurestore import FeatureStore

    catalog = FeatureStore(_project(args)).list_features(search=args.search)
    if catalog.empty:
        print(f"no feature matches {args.search!r}")
        return 1
    columns = ["reference", "dtype", "aggregation", "window", "ttl", "owner", "tags", "description"]
    print(catalog[columns].to_string(index=False, max_colwidth=60))
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    import os

    from mlops_assets.serving.app import serve

    if args.spec:
        os.environ["MLOPS_SPEC"] = str(Path(args.spec).resolve())
    serve(
        host=args.host,
        port=args.port,
        workers=args.workers,
        data_root=args.data_dir,
        log_level=args.log_level,
    )
    return 0


def _cmd_rollback(args: argparse.Namespace) -> int:
    from mlops_assets.training.cli import rollback_command

    return rollback_command(args, _project(args, filters=False))


def _cmd_promote(args: argparse.Namespace) -> int:
    from mlops_assets.training.cli import promote_command

    return promote_command(args, _project(args, filters=False))


def _cmd_reproduce(args: argparse.Namespace) -> int:
    from mlops_assets.training.cli import reproduce_command

    return reproduce_command(args.version, _project(args, filters=False))


def _cmd_report(args: argparse.Namespace) -> int:
    from mlops_assets.training.report_cli import report_command

    return report_command(args, _project(args, filters=False))


def _cmd_reconcile(args: argparse.Namespace) -> int:
    from mlops_assets.ingestion.reconcile import reconcile_command

    return reconcile_command(args, _project(args))


def _add_project_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--spec", default=None, help="the project spec (default $MLOPS_SPEC or [tool.mlops] spec)"
    )
    parser.add_argument(
        "--data-dir", default=None, help="the data folder (default $MLOPS_DATA_DIR or ./data)"
    )


def _add_world_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--size", type=int, default=None, help="entities to simulate (default: the spec's demo.size)"
    )
    parser.add_argument(
        "--days", type=int, default=None, help="days to simulate (default: the spec's demo.days)"
    )
    parser.add_argument("--seed", type=int, default=None, help="random seed (default: the spec's demo.seed)")
    parser.add_argument(
        "--scenario",
        action="append",
        metavar="NAME[@DATE|@dayN]",
        help="switch on a scenario of the example's simulator (repeatable; default: the spec's demo.scenarios)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mlops", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)

    spec = sub.add_parser("spec", help="check the project spec, or print its JSON Schema")
    spec_sub = spec.add_subparsers(dest="spec_command", required=True)
    validate = spec_sub.add_parser("validate", help="validate the spec; print every problem at once")
    validate.add_argument(
        "spec", nargs="?", default=None, help="spec file (default $MLOPS_SPEC or [tool.mlops] spec)"
    )
    validate.set_defaults(func=_cmd_spec_validate)
    schema = spec_sub.add_parser("schema", help="print the JSON Schema of spec files (for editors)")
    schema.add_argument("--output", "-o", default=None)
    schema.set_defaults(func=_cmd_spec_schema)

    init = sub.add_parser("init", help="write a starter spec from sample landing files")
    init.add_argument(
        "landing", help="a landing folder: one sub-folder per source, files named with their day"
    )
    init.add_argument(
        "--output", "-o", default="spec.yaml", help="the spec file to write (default spec.yaml)"
    )
    init.add_argument("--name", default=None, help="project name (default: the landing folder's parent name)")
    init.add_argument("--force", action="store_true", help="overwrite an existing spec file")
    init.add_argument(
        "--labels",
        default=None,
        help="the source folder holding the labels (default: a folder named *label*)",
    )
    init.add_argument(
        "--target", default=None, help="the labels' target column (default: its first numeric column)"
    )
    init.set_defaults(func=_cmd_init)

    simulate = sub.add_parser(
        "simulate", help="write the example's simulated landing files (the spec's demo.simulator)"
    )
    _add_project_arguments(simulate)
    _add_world_arguments(simulate)
    simulate.add_argument("--start", default=None, help="first day (default: partitions.start)")
    simulate.add_argument("--out", default=None, help="landing folder (default <data>/landing)")
    simulate.set_defaults(func=_cmd_simulate)

    demo = sub.add_parser("demo", help="run the example's whole lifecycle on its simulated data")
    _add_project_arguments(demo)
    _add_world_arguments(demo)
    demo.add_argument("--fresh", action="store_true", help="delete the data folder's runtime state first")
    demo.add_argument("--no-canary", action="store_true", help="stop after retraining (no canary rollout)")
    demo.add_argument(
        "--live",
        action="store_true",
        help="live replay: start dagster-webserver and dagster-daemon on 127.0.0.1 and drip the simulated landing "
        "files in one day at a time; the sensors and automation conditions do the rest (Ctrl-C stops everything)",
    )
    demo.add_argument(
        "--drip-seconds", type=float, default=5.0, help="--live: seconds between two landed days (default 5)"
    )
    demo.add_argument(
        "--hold-for-champion",
        action="store_true",
        help="--live: after the history days, hold the drip until a first model was trained and judged",
    )
    demo.add_argument(
        "--history-days",
        type=int,
        default=None,
        help="--live: the history days (default: the spec's demo.history_days, scaled to --days)",
    )
    demo.add_argument("--port", type=int, default=3000, help="--live: the Dagster UI's port on 127.0.0.1")
    demo.add_argument(
        "--serving-port",
        type=int,
        default=None,
        help="--live: the canary's serving app port (default: a free one)",
    )
    demo.add_argument(
        "--dagster-home",
        default=None,
        help="--live: the replay's own Dagster instance folder, wiped at start (default: <project>/.dagster_live)",
    )
    demo.set_defaults(func=_cmd_demo)

    drift = sub.add_parser(
        "drift",
        help="drift statistics between two Parquet/CSV files (mlops drift REFERENCE CURRENT [--json])",
        add_help=False,
    )
    drift.add_argument("args", nargs="*", help="see `mlops drift --help`")

    features = sub.add_parser("features", help="the feature catalog")
    features_sub = features.add_subparsers(dest="features_command", required=True)
    listing = features_sub.add_parser("list", help="list feature views and features")
    _add_project_arguments(listing)
    listing.add_argument("--search", default=None, help="match feature/view name, tag, owner or description")
    listing.set_defaults(func=_cmd_features)

    from mlops_assets.ingestion.reconcile import add_reconcile_arguments

    reconcile = sub.add_parser(
        "reconcile",
        help="compare the warehouse (manifests, partitions) with Dagster's event log; --fix re-materializes what disagrees",
    )
    _add_project_arguments(reconcile)
    add_reconcile_arguments(reconcile)
    reconcile.set_defaults(func=_cmd_reconcile)

    from mlops_assets.training.cli import (
        add_promote_arguments,
        add_reproduce_arguments,
        add_rollback_arguments,
    )

    rollback = sub.add_parser("rollback", help="restore the previous champion in one step")
    _add_project_arguments(rollback)
    add_rollback_arguments(rollback)
    rollback.set_defaults(func=_cmd_rollback)

    promote = sub.add_parser("promote", help="promote a registered version through the promotion policy")
    _add_project_arguments(promote)
    add_promote_arguments(promote)
    promote.set_defaults(func=_cmd_promote)

    reproduce = sub.add_parser("reproduce", help="retrain a registered version and compare its predictions")
    _add_project_arguments(reproduce)
    add_reproduce_arguments(reproduce)
    reproduce.set_defaults(func=_cmd_reproduce)

    from mlops_assets.training.report_cli import add_report_arguments

    report = sub.add_parser(
        "report", help="model report: challenger vs champion, quality gates, drift (markdown or --json)"
    )
    _add_project_arguments(report)
    add_report_arguments(report)
    report.set_defaults(func=_cmd_report)

    serve = sub.add_parser("serve", help="serve the champion over HTTP (FastAPI + uvicorn)")
    _add_project_arguments(serve)
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--workers", type=int, default=1)
    serve.add_argument("--log-level", default="warning")
    serve.set_defaults(func=_cmd_serve)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["drift"]:  # the drift command owns its options (argparse's REMAINDER skips leading flags)
        from mlops_assets.monitoring.report import drift_command

        return drift_command(argv[1:])
    from mlops_assets.training.tracking import RegistryUnavailable

    parser = build_parser()
    args = parser.parse_args(argv)
    from mlops_assets.project import ProjectConfigError
    from mlops_assets.spec.load import SpecError

    try:
        return args.func(args)
    except SpecError as exc:
        print(exc, file=sys.stderr)
        return 2
    except (ProjectConfigError, ValueError, FileNotFoundError, RegistryUnavailable) as exc:
        print(f"mlops {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
