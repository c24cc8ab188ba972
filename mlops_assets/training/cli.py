"""`mlops rollback` and `mlops reproduce --version N`: the registry commands the main CLI dispatches to.

Neither creates an MLflow store: when it is missing, unreadable or unreachable they raise
:class:`~mlops_assets.training.tracking.RegistryUnavailable`, which `mlops` reports (naming the file or
URI) with exit code 2.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from mlops_assets.settings import data_paths
from mlops_assets.training import registry
from mlops_assets.training.reproduce import reproduce
from mlops_assets.training.tracking import MODEL_NAME, TrackingConfig, registry_client


def _tracking(model_name: str, data_dir: str | Path | None) -> TrackingConfig:
    return TrackingConfig.for_data_root(data_paths(data_dir).root, model_name=model_name)


def add_rollback_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `mlops rollback`."""
    parser.add_argument(
        "--reason", default="manual rollback (mlops rollback)", help="recorded in the history"
    )
    parser.add_argument("--model-name", default=MODEL_NAME, help="registered model (default %(default)s)")


def add_reproduce_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `mlops reproduce`."""
    parser.add_argument("--version", type=int, required=True, help="registered version to reproduce")
    parser.add_argument("--model-name", default=MODEL_NAME, help="registered model (default %(default)s)")


def rollback_command(args: argparse.Namespace) -> int:
    """Restore the previous champion in one step; 0 on success, 1 when there is nothing to roll back to.

    Raises ``RegistryUnavailable`` (nothing created) when the registry is missing or unreadable.
    """
    model_name = getattr(args, "model_name", None) or MODEL_NAME
    reason = getattr(args, "reason", None) or "manual rollback (mlops rollback)"
    data_dir = getattr(args, "data_dir", None)
    tracking = _tracking(model_name, data_dir)
    client = registry_client(tracking)
    try:
        record = registry.rollback(
            client,
            reason,
            model_name=model_name,
            history_path=registry.default_history_path(data_paths(data_dir).root),
        )
    except registry.RegistryError as exc:
        print(f"rollback refused: {exc}")
        champion = registry.alias_version(client, registry.CHAMPION, model_name)
        print(f"champion unchanged: {f'version {champion.version}' if champion else 'none'}")
        return 1
    print(
        f"{model_name}: champion is now version {record.version} (was {record.previous_version}); "
        f"reason: {record.reason}"
    )
    return 0


def reproduce_command(
    version: int, model_name: str = MODEL_NAME, data_dir: str | Path | None = None, tolerance: float = 0.0
) -> int:
    """Retrain ``version`` from its recorded inputs; print the max prediction difference; 1 if they differ."""
    result = reproduce(version, tracking=_tracking(model_name, data_dir), tolerance=tolerance)
    print(
        f"{result.model_name} version {result.version}: retrained from its recorded training set, params "
        f"and seed; compared on {result.n_holdout} holdout rows"
    )
    print(
        f"max |difference| of churn scores: {result.max_abs_difference:.3g} (tolerance {result.tolerance:g})"
    )
    if not result.code_matches:
        print(
            f"note: recorded code version {result.recorded_code_version}, current "
            f"{result.current_code_version}"
        )
    if result.recorded_git_commit != result.current_git_commit:
        print(
            f"note: recorded git commit {result.recorded_git_commit[:12]}, current "
            f"{result.current_git_commit[:12]}"
        )
    if result.identical:
        print("reproduced: predictions are identical")
        return 0
    print("NOT reproduced: predictions differ")
    return 1
