"""The GitHub workflows and the local composite action only run things that exist: Makefile targets,
`mlops` subcommands and options, Dagster assets of the project they run (the spec named in pyproject.toml),
run config the assets accept, test files, Dockerfiles, action inputs."""

from __future__ import annotations

import fnmatch
import glob
import os
import re
import shlex
import subprocess
import tempfile
import tomllib
from functools import cache
from pathlib import Path

import dagster as dg
import pytest
import yaml

from mlops_assets.cli import build_parser
from mlops_assets.training.model_report import REPORT_MARKER
from mlops_assets_tests.conftest import REPO

PROJECT_ROOT = REPO
GITHUB = PROJECT_ROOT / ".github"
WORKFLOWS = sorted((GITHUB / "workflows").glob("*.yml"))
ACTIONS = sorted((GITHUB / "actions").glob("*/action.yml"))
SEPARATORS = {"&&", "||", ";", "|", ">", ">>", "2>&1"}


def _load(path: Path) -> dict:
    data = yaml.safe_load(path.read_text())
    assert isinstance(data, dict), path
    if True in data:  # YAML 1.1 reads the key `on` as a boolean
        data["on"] = data.pop(True)
    return data


def _steps(data: dict) -> list[dict]:
    if "jobs" in data:
        return [step for job in data["jobs"].values() for step in job.get("steps", [])]
    return list(data["runs"].get("steps", []))


def _scripts(path: Path) -> list[str]:
    """Shell scripts of the file: each `run:` and each matrix value that is run as a command line."""
    data = _load(path)
    scripts = [step["run"] for step in _steps(data) if "run" in step]
    for job in data.get("jobs", {}).values():
        for entry in job.get("strategy", {}).get("matrix", {}).get("include", []):
            scripts += [v for k, v in entry.items() if k == "smoke"]
    return scripts


def _commands(script: str) -> list[list[str]]:
    """Simple commands of a script as token lists (continuation lines joined, `${{ }}` kept as words)."""
    script = re.sub(r"\$\{\{.*?\}\}", "EXPR", script.replace("\\\n", " "))
    commands = []
    for line in script.splitlines():
        try:
            tokens = shlex.split(line, comments=True)
        except ValueError:  # an unbalanced quote across lines (none expected)
            pytest.fail(f"cannot parse shell line {line!r}")
        current: list[str] = []
        for token in tokens:
            if token in SEPARATORS or token.endswith(";"):
                if token.endswith(";") and token != ";":
                    current.append(token[:-1])
                commands.append(current)
                current = []
            else:
                current.append(token)
        commands.append(current)
    return [c for c in commands if c]


def _all_commands() -> list[tuple[str, list[str]]]:
    return [
        (path.relative_to(PROJECT_ROOT).as_posix(), command)
        for path in [*WORKFLOWS, *ACTIONS]
        for script in _scripts(path)
        for command in _commands(script)
    ]


def _calls(program: str) -> list[tuple[str, list[str]]]:
    """(file, arguments) of every call of ``program`` (also as ``.venv/bin/program`` or via `uv run`)."""
    calls = []
    for where, command in _all_commands():
        for i, token in enumerate(command):
            if token == program or token.endswith(f"/bin/{program}"):
                calls.append((where, command[i + 1 :]))
                break
    return calls


@cache
def _make_targets() -> set[str]:
    text = (PROJECT_ROOT / "Makefile").read_text()
    targets = set()
    for match in re.finditer(r"^([A-Za-z0-9_. -]+?)\s*:(?![=:])", text, flags=re.MULTILINE):
        targets.update(match.group(1).split())
    return targets


def test_there_are_the_three_workflows_and_each_parses():
    names = {p.name for p in WORKFLOWS}
    assert {"ci.yml", "continuous-training.yml", "model-report.yml"} <= names
    for path in WORKFLOWS:
        data = _load(path)
        assert data.get("on") and data.get("jobs"), path
        assert "permissions" in data, f"{path.name}: set the token's permissions explicitly"
        for job_id, job in data["jobs"].items():
            assert job.get("timeout-minutes"), f"{path.name}: job {job_id} has no timeout"


def test_continuous_training_is_scheduled_and_model_report_runs_on_pull_requests():
    ct = _load(GITHUB / "workflows" / "continuous-training.yml")["on"]
    assert ct["schedule"][0]["cron"] and "workflow_dispatch" in ct
    report = _load(GITHUB / "workflows" / "model-report.yml")
    assert "pull_request" in report["on"]
    assert report["permissions"]["pull-requests"] == "write"
    script = next(s["with"]["script"] for s in _steps(report) if "github-script" in s.get("uses", ""))
    assert REPORT_MARKER in script  # the comment updated in place is found by the report's first line


def test_every_make_target_exists_in_the_makefile():
    calls = _calls("make")
    assert calls
    targets = _make_targets()
    for where, args in calls:
        wanted = [a for a in args if "=" not in a and not a.startswith("-")]
        assert wanted, f"{where}: `make` without a target"
        for target in wanted:
            assert target in targets, f"{where}: make {target}: no such Makefile target"


def test_every_pytest_selection_names_existing_test_files():
    seen = 0
    for where, args in _calls("make"):
        for arg in args:
            if not arg.startswith("PYTEST_ARGS="):
                continue
            for token in shlex.split(arg.removeprefix("PYTEST_ARGS=")):
                if token.startswith("--ignore-glob="):
                    pattern = token.removeprefix("--ignore-glob=")
                    files = [p.as_posix() for p in (PROJECT_ROOT / "mlops_assets_tests").glob("*.py")]
                    assert fnmatch.filter(files, pattern), f"{where}: {token} ignores nothing"
                    seen += 1
                elif token.startswith("mlops_assets_tests/"):
                    assert glob.glob(str(PROJECT_ROOT / token.split("::")[0])), (
                        f"{where}: no test file {token}"
                    )
                    seen += 1
    assert seen >= 5


@cache
def _subcommands() -> dict:
    parser = build_parser()
    (sub,) = [a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction"]
    return sub.choices


def test_every_mlops_call_uses_an_existing_subcommand_and_options():
    calls = _calls("mlops")
    assert {args[0] for _, args in calls} >= {"simulate", "report"}
    for where, args in calls:
        name, rest = args[0], args[1:]
        assert name in _subcommands(), f"{where}: mlops {name}: no such subcommand"
        options = {o for action in _subcommands()[name]._actions for o in action.option_strings}
        for token in rest:
            option = token.split("=", 1)[0]
            if option.startswith("-") and option != "-":
                assert option in options, f"{where}: mlops {name} has no option {option}"


def test_report_commands_parse_with_the_real_parser():
    for where, args in _calls("mlops"):
        if args[0] == "report":
            parsed = build_parser().parse_args(args)
            assert parsed.func.__name__ == "_cmd_report", where


def _workflow_spec() -> Path:
    """The spec the workflows' `mlops` and `dagster` commands use: none of them sets $MLOPS_SPEC, so the one
    pyproject.toml names."""
    for path in [*WORKFLOWS, *ACTIONS]:
        data = _load(path)
        envs = [data.get("env", {})] + [job.get("env", {}) for job in data.get("jobs", {}).values()]
        envs += [step.get("env", {}) for step in _steps(data)]
        assert not any("MLOPS_SPEC" in env for env in envs), f"{path.name} sets MLOPS_SPEC: test that spec"
    table = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())["tool"]["mlops"]
    return (PROJECT_ROOT / table["spec"]).resolve()


@cache
def _definitions() -> dg.Definitions:
    from mlops_assets.component import build_definitions
    from mlops_assets.project import Project

    with tempfile.TemporaryDirectory() as data:
        return build_definitions(Project.load(_workflow_spec(), data))


@cache
def _assets() -> dict:
    graph = _definitions().resolve_asset_graph()
    return {key.to_user_string(): graph.get(key) for key in graph.get_all_asset_keys()}


def test_every_dagster_materialization_selects_existing_assets():
    calls = [(w, a) for w, a in _calls("dagster") if a[:2] == ["asset", "materialize"]]
    assert len(calls) >= 4
    for where, args in calls:
        assert args[args.index("-m") + 1] == "mlops_assets.definitions", where
        selected = args[args.index("--select") + 1].split(",")
        unknown = sorted(set(selected) - set(_assets()))
        assert not unknown, f"{where}: no such assets {unknown}"
        if "--partition-range" in args:  # a range runs as one run: every asset needs a single-run policy
            for name in selected:
                node = _assets()[name]
                assert node.partitions_def is not None and node.backfill_policy is not None, (where, name)
                assert node.backfill_policy.max_partitions_per_run is None, (where, name)
        else:
            assert all(_assets()[n].partitions_def is None for n in selected), where


def _run_step(step: dict, env: dict[str, str], tmp_path: Path) -> tuple[int, dict[str, str]]:
    """Run a `run:` step of the action in bash with its env replaced by ``env``; (exit code, its outputs)."""
    out = tmp_path / "github_output"
    out.write_text("")
    full = {**os.environ, **env, "RUNNER_TEMP": str(tmp_path), "GITHUB_OUTPUT": str(out)}
    proc = subprocess.run(
        ["bash", "-e", "-c", step["run"]], env=full, capture_output=True, text=True, timeout=60
    )
    outputs = dict(line.split("=", 1) for line in out.read_text().splitlines() if "=" in line)
    return proc.returncode, outputs


def test_pipeline_day_ranges_and_training_config_are_what_its_runs_accept(tmp_path):
    from datetime import date, timedelta

    from mlops_assets.project import Project
    from mlops_assets.training.assets import TrainingConfig
    from mlops_assets.training.task import ModelTask
    from mlops_assets.training.train import build_estimator

    action_path = GITHUB / "actions" / "small-pipeline" / "action.yml"
    action = _load(action_path)
    inputs = {name: spec.get("default") for name, spec in action["inputs"].items()}
    step = next(s for s in _steps(action) if s.get("id") == "days")
    ct = _load(GITHUB / "workflows" / "continuous-training.yml")
    model_types = {*ct["on"]["workflow_dispatch"]["inputs"]["model-type"]["options"], inputs["model-type"]}
    # the runs that take the written config, as the action calls them
    where = action_path.relative_to(PROJECT_ROOT).as_posix()
    config_runs = [a for w, a in _calls("dagster") if w == where and "-c" in a]
    assert len(config_runs) == 2  # the baseline champion and the challenger
    job = _definitions().resolve_implicit_global_asset_job_def()
    task = ModelTask.from_project(Project.load(_workflow_spec(), tmp_path / "data"))

    start, days, history = date(2026, 1, 1), 120, 90
    for model_type in sorted(model_types):
        env = {
            "DAYS": str(days),
            "HISTORY": str(history),
            "START": start.isoformat(),
            "MODEL_TYPE": model_type,
        }
        code, outputs = _run_step(step, env, tmp_path)
        assert code == 0
        assert outputs == {
            "history-end": (start + timedelta(days=history - 1)).isoformat(),
            "new-start": (start + timedelta(days=history)).isoformat(),
            "last": (start + timedelta(days=days - 1)).isoformat(),
        }
        for args in config_runs:
            path = Path(args[args.index("-c") + 1].replace("$RUNNER_TEMP", str(tmp_path)))
            config = yaml.safe_load(path.read_text())
            selected = {dg.AssetKey(k) for k in args[args.index("--select") + 1].split(",")}
            dg.validate_run_config(job.get_subset(asset_selection=selected), config)  # raises if rejected
            trained = TrainingConfig(**config["ops"]["candidate_model"]["config"]).train_config(task)
            assert trained.model_type == model_type
            build_estimator(trained, task.kind)  # raises for an estimator that does not fit the target
    # a history that leaves no new days is refused before anything runs
    code, _ = _run_step(step, {**env, "HISTORY": str(days)}, tmp_path)
    assert code == 1


def test_local_actions_exist_and_receive_declared_inputs():
    used = 0
    for path in WORKFLOWS:
        for step in _steps(_load(path)):
            uses = step.get("uses", "")
            if not uses.startswith("./"):
                continue
            action = PROJECT_ROOT / uses / "action.yml"
            assert action.exists(), f"{path.name}: {uses} has no action.yml"
            declared = set(_load(action).get("inputs", {}))
            assert set(step.get("with", {})) <= declared, f"{path.name}: unknown inputs for {uses}"
            used += 1
    assert used >= 2


def test_images_job_builds_the_existing_dockerfiles():
    ci = _load(GITHUB / "workflows" / "ci.yml")
    files = [entry["dockerfile"] for entry in ci["jobs"]["images"]["strategy"]["matrix"]["include"]]
    assert sorted(files) == ["deploy/Dockerfile", "deploy/Dockerfile.serving"]
    assert all((PROJECT_ROOT / f).is_file() for f in files)
    build = next(s for s in ci["jobs"]["images"]["steps"] if "build-push-action" in s.get("uses", ""))
    assert build["with"]["push"] is False


def _selection(target: str, pytest_args: str) -> set[tuple[str, str]]:
    """(test file, 'fast'|'slow') pairs one `make test`/`make test-fast` call runs."""
    tokens = shlex.split(pytest_args)
    kinds = {"fast"} if target == "test-fast" else {"fast", "slow"}
    if "-m" in tokens:
        marker = tokens[tokens.index("-m") + 1]
        assert marker in ("slow", "not slow"), f"unexpected marker expression {marker!r}"
        kinds &= {"slow"} if marker == "slow" else {"fast"}
    tests = PROJECT_ROOT / "mlops_assets_tests"
    every = sorted({*tests.glob("test_*.py"), *tests.glob("*_test.py")})
    paths = [t for t in tokens if t.startswith("mlops_assets_tests/")]
    files = sorted({Path(f) for t in paths for f in glob.glob(str(PROJECT_ROOT / t))}) if paths else every
    for token in tokens:
        if token.startswith("--ignore-glob="):
            pattern = token.removeprefix("--ignore-glob=")
            files = [f for f in files if not fnmatch.fnmatch(f.as_posix(), pattern)]
    return {(f.name, kind) for f in files for kind in kinds}


def test_ci_jobs_together_run_every_test_file_once():
    ci = _load(GITHUB / "workflows" / "ci.yml")
    runs: dict[tuple[str, str], list[str]] = {}
    for job_id, job in ci["jobs"].items():
        for step in job.get("steps", []):
            for command in _commands(step.get("run", "")):
                if command[0] != "make" or not {"test", "test-fast"} & set(command):
                    continue
                target = "test" if "test" in command else "test-fast"
                args = next(
                    (a.removeprefix("PYTEST_ARGS=") for a in command if a.startswith("PYTEST_ARGS=")), ""
                )
                for pair in _selection(target, args):
                    runs.setdefault(pair, []).append(job_id)
    tests = PROJECT_ROOT / "mlops_assets_tests"
    for path in sorted({*tests.glob("test_*.py"), *tests.glob("*_test.py")}):
        for kind in ("fast", "slow"):
            jobs = runs.get((path.name, kind), [])
            assert len(jobs) == 1, f"{path.name} ({kind} tests) runs in jobs {jobs}; expected exactly one"
