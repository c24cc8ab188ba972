"""`mlops rollback`, `mlops promote --version N` and `mlops reproduce --version N`: the registry commands.

None creates an MLflow store: when it is missing, unreadable or unreachable they raise
:class:`~mlops_assets.training.tracking.RegistryUnavailable`, which `mlops` reports (naming the file or
URI) with exit code 2.
"""

from __future__ import annotations

import argparse

from mlops_assets.project import Project
from mlops_assets.training import promotion, registry
from mlops_assets.training.reproduce import reproduce
from mlops_assets.training.task import ModelTask
from mlops_assets.training.tracking import TrackingConfig, registry_client


def add_rollback_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--reason", default="manual rollback (mlops rollback)", help="recorded in the history"
    )


def add_promote_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--version", type=int, required=True, help="registered version to promote")
    parser.add_argument(
        "--allow-rolled-back", action="store_true", help="re-promote a version rolled back since"
    )


def add_reproduce_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--version", type=int, required=True, help="registered version to reproduce")


def rollback_command(args: argparse.Namespace, project: Project) -> int:
    """Restore the previous champion in one step; 0 on success, 1 when there is nothing to roll back to.

    Raises ``RegistryUnavailable`` (nothing created) when the registry is missing or unreadable.
    """
    tracking = TrackingConfig.for_project(project)
    reason = getattr(args, "reason", None) or "manual rollback (mlops rollback)"
    client = registry_client(tracking)
    try:
        record = registry.rollback(
            client,
            reason,
            model_name=tracking.model_name,
            history_path=registry.default_history_path(project.paths.root),
        )
    except registry.RegistryError as exc:
        print(f"rollback refused: {exc}")
        champion = registry.alias_version(client, registry.CHAMPION, tracking.model_name)
        print(f"champion unchanged: {f'version {champion.version}' if champion else 'none'}")
        return 1
    print(
        f"{tracking.model_name}: champion is now version {record.version} (was {record.previous_version}); reason: {record.reason}"
    )
    return 0


def promote_command(args: argparse.Namespace, project: Project) -> int:
    """Promote a version through the promotion policy; 0 when it moved, 1 when the policy refused."""
    tracking = TrackingConfig.for_project(project)
    decision, record = promotion.promote(
        registry_client(tracking),
        tracking.model_name,
        args.version,
        via="mlops promote",
        history_path=registry.default_history_path(project.paths.root),
        allow_rolled_back=args.allow_rolled_back,
    )
    if record is None:
        print(f"not promoted: {decision.reason}")
        return 1
    print(
        f"{tracking.model_name}: champion is now version {record.version} (was {record.previous_version}); {decision.reason}"
    )
    return 0


def reproduce_command(version: int, project: Project, tolerance: float = 0.0) -> int:
    """Retrain ``version`` from its recorded inputs; print the max prediction difference; 1 if they differ."""
    result = reproduce(
        version,
        ModelTask.from_project(project),
        tracking=TrackingConfig.for_project(project),
        tolerance=tolerance,
    )
    print(
        f"{result.model_name} version {result.version}: retrained from its recorded training set, params "
        f"and seed; compared on {result.n_holdout} holdout rows"
    )
    print(f"max |difference| of scores: {result.max_abs_difference:.3g} (tolerance {result.tolerance:g})")
    if not result.code_matches:
        print(
            f"note: recorded code version {result.recorded_code_version}, current {result.current_code_version}"
        )
    if result.recorded_git_commit != result.current_git_commit:
        print(
            f"note: recorded git commit {result.recorded_git_commit[:12]}, current {result.current_git_commit[:12]}"
        )
    if result.identical:
        print("reproduced: predictions are identical")
        return 0
    print("NOT reproduced: predictions differ")
    return 1
