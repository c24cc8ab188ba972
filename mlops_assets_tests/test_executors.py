"""The executor is chosen by MLOPS_EXECUTOR alone: the same code location runs in process, per-step
processes, on Celery workers or Kubernetes jobs."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest

from mlops_assets.executors import executor_from_env
from mlops_assets_tests.conftest import CHURN_SPEC

PROJECT = Path(__file__).resolve().parent.parent


def test_unset_keeps_each_jobs_default():
    assert executor_from_env({}) is None
    assert executor_from_env({"MLOPS_EXECUTOR": "  "}) is None


@pytest.mark.parametrize(
    ("value", "expected"),
    [("multiprocess", "multiprocess"), ("in_process", "in_process"), ("In-Process", "in_process")],
)
def test_core_executors_by_name(value, expected):
    assert executor_from_env({"MLOPS_EXECUTOR": value}).name == expected


def _resolved(env: dict[str, str], data_root: Path) -> dict:
    """Executors and resolved execution config of two jobs, as a fresh process loading the code location
    (the churn example on an empty data folder) sees them."""
    script = (
        "import json, dagster as dg\n"
        "from mlops_assets.definitions import defs\n"
        "out = {}\n"
        "for name in ('ingestion_job', 'retraining_job'):\n"
        "    job = defs.resolve_job_def(name)\n"
        "    out[name] = [job.executor_def.name, dg.validate_run_config(job, {}).get('execution')]\n"
        "print(json.dumps(out))\n"
    )
    env = (
        {k: v for k, v in os.environ.items() if not k.startswith("MLOPS_")}
        | {"MLOPS_SPEC": str(CHURN_SPEC), "MLOPS_DATA_DIR": str(data_root)}
        | env
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], cwd=PROJECT, env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_jobs_follow_the_environment(tmp_path):
    # unset: per-step processes for asset jobs, the linear retraining chain in process
    default = _resolved({}, tmp_path)
    assert default["ingestion_job"][0] == "multi_or_in_process_executor"
    assert default["retraining_job"][0] == "in_process"
    # celery: every job, with the broker from the environment in the resolved run config (so runs
    # launched by sensors, schedules and backfills need no run config)
    celery = _resolved(
        {"MLOPS_EXECUTOR": "celery", "MLOPS_CELERY_BROKER": "redis://127.0.0.1:7777/0"}, tmp_path
    )
    for name in ("ingestion_job", "retraining_job"):
        executor, execution = celery[name]
        assert executor == "celery"
        assert execution["celery"]["broker"] == "redis://127.0.0.1:7777/0"
        assert execution["celery"]["backend"] == "redis://127.0.0.1:6379/1"
    assert _resolved({"MLOPS_EXECUTOR": "multiprocess"}, tmp_path)["retraining_job"][0] == "multiprocess"


@pytest.mark.skipif(importlib.util.find_spec("dagster_k8s") is not None, reason="k8s extra installed")
def test_missing_extra_names_the_install_command():
    with pytest.raises(dg.DagsterInvariantViolationError, match="uv sync --locked --extra k8s"):
        executor_from_env({"MLOPS_EXECUTOR": "k8s"})


def test_unknown_executor_lists_the_choices():
    with pytest.raises(dg.DagsterInvariantViolationError, match="multiprocess, in_process, celery, k8s"):
        executor_from_env({"MLOPS_EXECUTOR": "spark"})
