"""The `mlops` command: simulate data, run the demo lifecycle, and the tools of each domain."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path


def _cmd_simulate(args: argparse.Namespace) -> int:
    from mlops_assets.simulate.world import simulate

    summary = simulate(
        out=Path(args.out),
        customers=args.customers,
        days=args.days,
        start=args.start,
        seed=args.seed,
        scenarios=args.scenario or (),
        file_format=args.format,
    )
    print(summary)
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from mlops_assets.demo import DemoConfig, run_demo

    config = DemoConfig(
        customers=args.customers,
        days=args.days,
        start=args.start,
        seed=args.seed,
        scenarios=tuple(args.scenario) if args.scenario else DemoConfig().scenarios,
        fresh=args.fresh,
    )
    return run_demo(config)


def _cmd_features(args: argparse.Namespace) -> int:
    from mlops_assets.featurestore import FeatureStore

    catalog = FeatureStore().list_features(search=args.search)
    if catalog.empty:
        print(f"no feature matches {args.search!r}")
        return 1
    columns = ["reference", "dtype", "aggregation", "ttl", "owner", "tags", "description"]
    print(catalog[columns].to_string(index=False, max_colwidth=60))
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    from mlops_assets.serving.app import serve

    serve(host=args.host, port=args.port, workers=args.workers, log_level=args.log_level)
    return 0


def _cmd_rollback(args: argparse.Namespace) -> int:
    from mlops_assets.training.cli import rollback_command

    return rollback_command(args)


def _cmd_reproduce(args: argparse.Namespace) -> int:
    from mlops_assets.training.cli import reproduce_command

    return reproduce_command(args.version, model_name=args.model_name)


def _cmd_report(args: argparse.Namespace) -> int:
    from mlops_assets.training.report_cli import report_command

    return report_command(args)


def _add_world_arguments(parser: argparse.ArgumentParser, customers: int, days: int) -> None:
    parser.add_argument(
        "--customers", type=int, default=customers, help=f"number of customers (default {customers})"
    )
    parser.add_argument("--days", type=int, default=days, help=f"number of days (default {days})")
    parser.add_argument("--start", default="2026-01-01", help="first day, YYYY-MM-DD (default 2026-01-01)")
    parser.add_argument("--seed", type=int, default=7, help="random seed (default 7)")
    parser.add_argument(
        "--scenario",
        action="append",
        metavar="NAME[@DATE|@dayN]",
        help="switch on a scenario (repeatable): covariate_drift, concept_drift, quality_incident",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mlops", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    simulate = sub.add_parser("simulate", help="write simulated landing files (customers, events, labels)")
    _add_world_arguments(simulate, customers=5000, days=120)
    simulate.add_argument("--out", default="data/landing", help="landing folder (default data/landing)")
    simulate.add_argument("--format", default="parquet", choices=("parquet", "csv"), help="file format")
    simulate.set_defaults(func=_cmd_simulate)

    demo = sub.add_parser("demo", help="run the whole lifecycle on simulated data with embedded defaults")
    _add_world_arguments(demo, customers=5000, days=120)
    demo.add_argument("--fresh", action="store_true", help="delete data/ runtime state first")
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
    listing.add_argument("--search", default=None, help="match feature/view name, tag or owner")
    listing.set_defaults(func=_cmd_features)

    from mlops_assets.training.cli import add_reproduce_arguments, add_rollback_arguments

    rollback = sub.add_parser("rollback", help="restore the previous champion in one step")
    add_rollback_arguments(rollback)
    rollback.set_defaults(func=_cmd_rollback)

    reproduce = sub.add_parser("reproduce", help="retrain a registered version and compare its predictions")
    add_reproduce_arguments(reproduce)
    reproduce.set_defaults(func=_cmd_reproduce)

    from mlops_assets.training.report_cli import add_report_arguments

    report = sub.add_parser(
        "report",
        help="model report: challenger vs champion, quality gates, drift (markdown for PRs, or --json)",
    )
    add_report_arguments(report)
    report.set_defaults(func=_cmd_report)

    serve = sub.add_parser("serve", help="serve the champion over HTTP (FastAPI + uvicorn)")
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
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, RegistryUnavailable) as exc:
        print(f"mlops {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
