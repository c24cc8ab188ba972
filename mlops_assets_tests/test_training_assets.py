"""The training shell in Dagster: train → evaluate (blocking gates; one that does not apply passes, naming why) →
the promotion policy, the alert sensor, rollback, caching, and the one policy behind every path that promotes."""

from __future__ import annotations

import asyncio
import base64
import json
import re
from argparse import Namespace

import dagster as dg
import pandas as pd
import pytest

from mlops_assets.cli import main
from mlops_assets.features.store import FeatureStore
from mlops_assets.project import Project
from mlops_assets.resources import DataDirResource
from mlops_assets.storage import combine_hashes, frame_hash
from mlops_assets.training import promotion, registry
from mlops_assets.training.alerts import default_alerts_path, read_alerts
from mlops_assets.training.assets import build_training_assets
from mlops_assets.training.cli import reproduce_command, rollback_command
from mlops_assets.training.gates import FAIL, GATE_NAMES, NOT_APPLICABLE, PASS, GateResult
from mlops_assets.training.jobs import rollback_job
from mlops_assets.training.reproduce import ReproductionResult
from mlops_assets.training.resources import MlflowResource
from mlops_assets.training.sensors import alert_for_failed_run, quality_gate_alert_sensor
from mlops_assets.training.task import ModelTask
from mlops_assets.training.tracking import TrackingConfig, client_for, ensure_tracking_store
from mlops_assets_tests.conftest import CHURN_SPEC, copy_mlflow_db, definitions, materialize_range
from mlops_assets_tests.synthetic import synthetic_training_set

FAST = {
    "candidate_model": {"config": {"hyperparameters": {"max_iter": 30}, "importance_repeats": 2}},
    "evaluation_report": {"config": {"latency_calls": 20}},
}
ASSETS = ("candidate_model", "evaluation_report", "promotion")
#: Latency limits a loaded 2-core machine always meets: the tests of the graph are not about speed.
ROOMY = {"max_p99_latency_ms": 10_000.0, "max_latency_ratio": 100.0}


def _with_gates(project: Project, **gates) -> Project:
    """The project with other quality-gate thresholds in its spec."""
    spec = project.spec.model_copy(update={"gates": project.spec.gates.model_copy(update=gates)})
    return Project(spec, project.paths, project.spec_path)


def _write_training_set(project: Project, seed: int = 2, drop: int = 0) -> str:
    frame = synthetic_training_set(n_rows=300, n_days=8, seed=seed).iloc[drop:].reset_index(drop=True)
    FeatureStore(project).write_training_set(frame, {"content_hash": frame_hash(frame)})
    return frame_hash(frame)


def _resources(project: Project) -> dict:
    data = DataDirResource(root=str(project.paths.root))
    return {
        "data": data,
        "mlflow": MlflowResource(data=data, model_name=project.model_name, experiment_name=project.name),
    }


def _run(project, instance, only=ASSETS, evaluation=None, candidate=None, promote=None):
    assets = [a for a in build_training_assets(project) if a.key.path[-1] in only]
    ops = {
        "candidate_model": {"config": FAST["candidate_model"]["config"] | (candidate or {})},
        "evaluation_report": {"config": FAST["evaluation_report"]["config"] | (evaluation or {})},
        "promotion": {"config": promote or {}},
    }
    return dg.materialize(
        assets,
        instance=instance,
        resources=_resources(project),
        run_config={"ops": {k: v for k, v in ops.items() if k in only}},
        raise_on_error=False,
    )


def _meta(result, node):
    (mat,) = result.asset_materializations_for_node(node)
    return {k: v.value for k, v in mat.metadata.items()}


def _client(project):
    return client_for(TrackingConfig.for_project(project))


def _alias(project, alias):
    mv = registry.alias_version(_client(project), alias, project.model_name)
    return None if mv is None else int(mv.version)


def _history(project) -> pd.DataFrame:
    return registry.read_promotion_history(registry.default_history_path(project.paths.root))


def _check_status(instance, name):
    """How the Dagster UI shows a gate's latest execution (a planned check no result came for: skipped)."""
    from dagster._core.loader import LoadingContextForTest

    key = dg.AssetCheckKey(dg.AssetKey("evaluation_report"), name)
    record = instance.event_log_storage.get_latest_asset_check_execution_by_key([key])[key]
    return asyncio.run(record.resolve_status(LoadingContextForTest(instance))).value


@pytest.mark.slow
def test_graph_trains_evaluates_and_promotes_a_first_champion(churn, mlflow_store):
    ts_hash = _write_training_set(churn)
    instance = dg.DagsterInstance.ephemeral()
    result = _run(_with_gates(churn, **ROOMY), instance)
    assert result.success
    cand = _meta(result, "candidate_model")
    version = cand["version"]
    assert cand["cached"] is False and cand["training_set_hash"] == ts_hash
    assert cand["model_uri"] == f"models:/churn-model/{version}"
    assert "age_group" not in cand["features"] and "plan" in cand["features"]
    task = ModelTask.from_project(churn)
    dropped = dict(re.findall(r"- `([^`]+)`: (.+)", cand["dropped_inputs"]))
    assert sorted(cand["features"] + list(dropped)) == sorted(task.candidates)
    assert dropped["logins_7d"] == "not in the training set"  # a churn feature the synthetic frame lacks
    assert "| roc_auc |" in cand["metrics"]
    client = _client(churn)
    mv = client.get_model_version("churn-model", str(version))
    (mat,) = result.asset_materializations_for_node("candidate_model")
    assert mat.tags["dagster/data_version"] == combine_hashes(
        [ts_hash, mv.tags["params_hash"], mv.tags["code_version"]]
    )
    assert client.get_run(cand["run_id"]).data.tags["dagster_run_id"] == result.run_id

    # the verdicts recorded on the version; a check result for every gate, the ones that do not apply passed
    # with the reason (the UI's Checks tab shows no gate "not executed")
    verdicts = json.loads(mv.tags[promotion.GATES_TAG])
    assert list(verdicts) == sorted(GATE_NAMES) and mv.tags[promotion.EVALUATED_AGAINST_TAG] == "none"
    skipped = {name for name, status in verdicts.items() if status == NOT_APPLICABLE}
    assert {
        "metric_vs_champion",
        "sanity",
        "overfitting",
    } <= skipped  # no champion, no golden cases, no limit
    checks = {
        e.check_name: e
        for e in result.get_asset_check_evaluations()
        if e.asset_key == dg.AssetKey("evaluation_report")
    }
    assert set(checks) == set(GATE_NAMES) and all(c.passed for c in checks.values())
    reasons = {}
    for name in GATE_NAMES:
        assert _check_status(instance, name) == "SUCCEEDED", name
        record = instance.get_latest_asset_check_evaluation_record(
            dg.AssetCheckKey(dg.AssetKey("evaluation_report"), name)
        )
        latest = record.event.asset_check_evaluation
        assert record.run_id == result.run_id and latest.passed, name
        meta = {k: v.value for k, v in latest.metadata.items()}
        assert meta["status"] == verdicts[name], name
        if "reason" in meta:
            reasons[name] = meta["reason"]
    assert set(reasons) == skipped
    assert reasons["metric_vs_champion"] == "no champion yet"
    assert "no golden cases" in reasons["sanity"]

    report = _meta(result, "evaluation_report")
    assert report["challenger_version"] == version and report["champion_version"] == "none"
    assert report["gates_failed"] == []
    assert "## Quality" in report["report"] and "| roc_auc |" in report["report"]
    assert "| metric_vs_champion | skipped (not applicable) |" in report["gates"]
    for key in ("roc", "calibration"):
        payload = re.fullmatch(r"!\[[^\]]+\]\(data:image/png;base64,([A-Za-z0-9+/=]+)\)", report[key]).group(
            1
        )
        assert base64.b64decode(payload).startswith(b"\x89PNG")
    saved = churn.paths.reports / f"evaluation_v{version}.md"
    assert report["report_path"] == str(saved) and saved.exists()

    promo = _meta(result, "promotion")
    assert promo["champion_version"] == version == _alias(churn, registry.CHAMPION)
    assert promo["previous_champion"] == "none" and promo["moved"] is True
    assert _alias(churn, registry.CHALLENGER) is None
    history = _history(churn)
    assert history[["action", "version", "dagster_run_id"]].values.tolist() == [
        ["promote", version, result.run_id]
    ]
    assert history["reason"].iloc[0].endswith("[via promotion asset]")


@pytest.mark.slow
def test_unchanged_training_set_reuses_the_version_and_new_data_retrains(churn, mlflow_store):
    _write_training_set(churn)
    instance = dg.DagsterInstance.ephemeral()
    first = _run(churn, instance, only=("candidate_model",))
    again = _run(churn, instance, only=("candidate_model",))
    assert first.success and again.success
    a, b = _meta(first, "candidate_model"), _meta(again, "candidate_model")
    assert a["cached"] is False and b["cached"] is True
    assert b["version"] == a["version"] and b["run_id"] == a["run_id"]
    assert f"reused version {a['version']}" in b["cache_reason"]
    tags = [
        r.asset_materializations_for_node("candidate_model")[0].tags["dagster/data_version"]
        for r in (first, again)
    ]
    assert tags[0] == tags[1]

    _write_training_set(churn, drop=10)  # new data → new hash → retrain
    changed = _run(churn, instance, only=("candidate_model",))
    c = _meta(changed, "candidate_model")
    assert c["cached"] is False and c["version"] == a["version"] + 1
    assert "no registered version came from the same" in c["cache_reason"]
    assert (
        changed.asset_materializations_for_node("candidate_model")[0].tags["dagster/data_version"] != tags[0]
    )


@pytest.mark.slow
def test_failing_gates_stop_before_promotion_and_the_sensor_alerts(churn, mlflow_store):
    strict = _with_gates(churn, max_p99_latency_ms=0.0001)  # the spec's thresholds decide
    _write_training_set(strict)
    instance = dg.DagsterInstance.ephemeral()
    # an ingestion gate that failed earlier in this instance: the training data is not valid
    instance.report_runless_asset_event(
        dg.AssetCheckEvaluation(
            asset_key=dg.AssetKey("raw_events"),
            check_name="quarantine_rate_within_threshold",
            passed=False,
            description="2026-01-03: quarantine rate 10.00% > 5.00%",
        )
    )
    result = _run(strict, instance)
    assert not result.success
    assert result.asset_materializations_for_node("promotion") == []
    assert _alias(strict, registry.CHAMPION) is None and _history(strict).empty
    checks = {e.check_name: e for e in result.get_asset_check_evaluations()}
    failed = sorted(name for name, e in checks.items() if not e.passed)
    assert failed == ["p99_latency", "training_data_valid"]
    latency = checks["p99_latency"]
    measured = latency.metadata["measured"].value
    shown = re.search(r"latency ([0-9.]+) ms > max_p99_latency_ms 0\.0001", latency.description)
    assert shown, latency.description  # 4 significant digits of the same measurement the metadata carries
    assert float(shown.group(1)) == pytest.approx(measured, rel=1e-3)
    assert latency.metadata["threshold"].value == 0.0001
    data_gate = checks["training_data_valid"].description
    assert "raw_events.quarantine_rate_within_threshold failed" in data_gate and "10.00% > 5.00%" in data_gate

    context = dg.build_run_status_sensor_context(
        sensor_name="quality_gate_alert_sensor",
        dagster_instance=instance,
        dagster_run=result.dagster_run,
        dagster_event=result.get_run_failure_event(),
        resources={"data": _resources(strict)["data"]},
    )
    quality_gate_alert_sensor(context)
    (alert,) = read_alerts(default_alerts_path(strict.paths.root))
    assert alert["kind"] == "quality_gate_failed" and alert["details"]["dagster_run_id"] == result.run_id
    assert alert["details"]["model_name"] == "churn-model"
    assert [g["name"] for g in alert["details"]["gates"]] == ["p99_latency", "training_data_valid"]
    assert alert["details"]["gates"][0]["measured"] == pytest.approx(measured)
    assert "max_p99_latency_ms 0.0001" in alert["message"]


def test_a_failed_run_without_gates_outside_training_raises_no_alert():
    @dg.asset
    def broken() -> None:
        raise ValueError("boom")

    instance = dg.DagsterInstance.ephemeral()
    result = dg.materialize([broken], instance=instance, raise_on_error=False)
    assert not result.success
    assert alert_for_failed_run(instance, result.dagster_run, "boom") is None


@pytest.mark.slow
def test_rollback_job_restores_the_previous_champion_and_the_cli_reproduces(churn, mlflow_store, capsys):
    lenient = _with_gates(churn, max_metric_drop=1.0, **ROOMY)
    instance = dg.DagsterInstance.ephemeral()
    versions = []
    for drop in (0, 10):
        _write_training_set(lenient, drop=drop)
        result = _run(lenient, instance)
        assert result.success
        versions.append(_meta(result, "promotion")["champion_version"])
    first, second = versions
    assert second == first + 1 and _alias(churn, registry.CHAMPION) == second

    resources = _resources(churn)
    rolled = rollback_job.execute_in_process(
        instance=instance,
        resources=resources,
        run_config={"ops": {"rollback_champion": {"config": {"reason": "test"}}}},
    )
    assert rolled.success and _alias(churn, registry.CHAMPION) == first
    client = _client(churn)
    assert (
        client.get_model_version("churn-model", str(second)).tags[registry.LIFECYCLE_TAG] == registry.ARCHIVED
    )
    history = _history(churn)
    moves = [
        (r.action, r.version, None if pd.isna(r.previous_version) else int(r.previous_version))
        for r in history.itertuples()
    ]
    assert moves == [("promote", first, None), ("promote", second, first), ("rollback", first, second)]
    assert history["dagster_run_id"].iloc[-1] == rolled.run_id and history["reason"].iloc[-1] == "test"

    # the next retrain on unchanged data reuses the rolled-back version: it passes the gates but stays out
    rerun = _run(lenient, instance)
    assert rerun.success and _meta(rerun, "candidate_model")["cached"] is True
    promo = _meta(rerun, "promotion")
    assert promo["moved"] is False and "rolled back" in promo["reason"] and promo["champion_version"] == first
    assert _alias(churn, registry.CHAMPION) == first
    # unless the run allows it
    forced = _run(lenient, instance, only=("promotion",), promote={"allow_rolled_back": True})
    assert forced.success and _meta(forced, "promotion")["moved"] is True
    assert _alias(churn, registry.CHAMPION) == second and _alias(churn, registry.PREVIOUS_CHAMPION) == first

    rollback_job.execute_in_process(instance=instance, resources=resources)
    again = rollback_job.execute_in_process(instance=instance, resources=resources, raise_on_error=False)
    assert (
        not again.success and _alias(churn, registry.CHAMPION) == first
    )  # one step only; a champion remains
    assert rollback_command(Namespace(reason="cli"), churn) == 1
    assert "rollback refused" in capsys.readouterr().out

    assert reproduce_command(second, churn) == 0
    out = capsys.readouterr().out
    assert "max |difference| of scores: 0 " in out and "reproduced: predictions are identical" in out


def test_reproduce_command_exits_non_zero_when_predictions_differ(churn, monkeypatch, capsys):
    def differing(version, task, tracking, tolerance):
        assert task.model_name == tracking.model_name == "churn-model"
        return ReproductionResult(
            "churn-model", version, 40, 0.125, tolerance, "train-1", "train-2", "a" * 40, "b" * 40
        )

    monkeypatch.setattr("mlops_assets.training.cli.reproduce", differing)
    assert reproduce_command(3, churn) == 1
    out = capsys.readouterr().out
    assert "0.125" in out and "NOT reproduced" in out
    assert (
        "recorded code version train-1, current train-2" in out and "recorded git commit aaaaaaaaaaaa" in out
    )


def test_definitions_wire_the_training_jobs_sensors_and_blocking_gates(churn):
    defs = definitions(churn)
    job = defs.resolve_job_def("retraining_job")
    keys = {k.to_user_string() for k in job.asset_layer.executable_asset_keys}
    # ... ending with the rollout state: in canary mode ($MLOPS_ROLLOUT=canary) a gated challenger starts a canary there
    assert keys == {"training_set", "candidate_model", "evaluation_report", "promotion", "rollout_state"}
    graph = job.asset_layer.asset_graph
    checks = {(k.asset_key.to_user_string(), k.name) for k in graph.asset_check_keys}
    assert {("evaluation_report", g) for g in GATE_NAMES} | {
        ("training_set", "no_feature_after_label")
    } <= checks
    evaluation = defs.resolve_assets_def("evaluation_report")
    assert evaluation.can_subset
    specs = {s.name: s for s in evaluation.check_specs}
    assert set(specs) == set(GATE_NAMES) and all(s.blocking for s in specs.values())
    assert defs.resolve_job_def("rollback_job") is not None
    assert (
        defs.resolve_sensor_def("quality_gate_alert_sensor").default_status == dg.DefaultSensorStatus.RUNNING
    )
    assert defs.resolve_sensor_def("canary_rollout_sensor") is not None
    assert defs.resolve_assets_def("promotion").keys == {dg.AssetKey("promotion")}


@pytest.mark.slow
def test_retraining_job_on_the_small_ingested_world(small_world, empty_mlflow_db, monkeypatch):
    """ingested sources and feature views → retraining_job (training_set → candidate → gates → promotion)."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)  # the default store under the data root
    copy_mlflow_db(empty_mlflow_db, small_world.paths.root)
    defs = definitions(_with_gates(small_world, **ROOMY))
    instance = dg.DagsterInstance.ephemeral()
    last = max(small_world.partition_days())
    # the sources' validation checks of the latest day recorded in this instance (the gate reads them)
    assert materialize_range(defs, list(small_world.spec.sources), last, last, instance).success

    job = defs.resolve_job_def("retraining_job")
    run_config = {
        "ops": {
            "candidate_model": {"config": {"model_type": "logistic_regression", "importance_repeats": 2}},
            "evaluation_report": {"config": {"latency_calls": 20}},
        }
    }
    result = job.execute_in_process(instance=instance, run_config=run_config)
    assert result.success
    checks = {(e.asset_key.to_user_string(), e.check_name): e for e in result.get_asset_check_evaluations()}
    assert checks[("training_set", "no_feature_after_label")].passed
    data_gate = checks[("evaluation_report", "training_data_valid")]
    assert data_gate.passed and "x 4 view timestamps" in data_gate.description
    for source in ("raw_events", "raw_labels", "customers"):
        assert f"{source}.schema_valid passed" in data_gate.description
    cand = _meta(result, "candidate_model")
    task = ModelTask.from_project(small_world)
    dropped = re.findall(r"- `([^`]+)`", cand["dropped_inputs"])
    assert (
        sorted(cand["features"] + dropped) == sorted(task.candidates) and "age_group" not in cand["features"]
    )
    assert "age_group" in _meta(result, "evaluation_report")["report"]  # judged for bias, never an input
    promo = _meta(result, "promotion")
    assert promo["champion_version"] == cand["version"] == 1
    assert (small_world.paths.mlflow / "mlflow.db").exists()

    again = job.execute_in_process(instance=instance, run_config=run_config)  # nothing changed upstream
    assert again.success
    assert _meta(again, "candidate_model")["cached"] is True
    assert _meta(again, "promotion")["moved"] is False and _meta(again, "promotion")["champion_version"] == 1


# ------------------------------------------------------------------------------ the one promotion policy

APPLICABLE_WHEN_PASSING = {name: PASS for name in GATE_NAMES} | {
    "bias": NOT_APPLICABLE,
    "sanity": NOT_APPLICABLE,
}


def _register_versions(project: Project, n: int) -> list[str]:
    """``n`` registered versions of the project's model, each from its own run (run ids returned)."""
    tracking = TrackingConfig.for_project(project)
    experiment = ensure_tracking_store(tracking)
    client = client_for(tracking)
    run_ids = []
    for _ in range(n):
        run = client.create_run(experiment)
        client.set_terminated(run.info.run_id)
        client.create_model_version(
            tracking.model_name, source=f"runs:/{run.info.run_id}/model", run_id=run.info.run_id
        )
        run_ids.append(run.info.run_id)
    return run_ids


def _evaluated(project: Project, version: int, against: int | None, failed: tuple[str, ...] = ()) -> None:
    """Record an evaluation of ``version`` judged against champion ``against``, failing the ``failed`` gates."""
    statuses = APPLICABLE_WHEN_PASSING | {name: FAIL for name in failed}
    gates = [GateResult(name, statuses[name], None, None, f"{name}: {statuses[name]}") for name in GATE_NAMES]
    promotion.record_gate_verdicts(
        _client(project), project.model_name, version, gates, against, "test evaluation"
    )


def _promote_with_function(project, version, allow, instance):
    decision, record = promotion.promote(
        _client(project),
        project.model_name,
        version,
        via="test",
        history_path=registry.default_history_path(project.paths.root),
        allow_rolled_back=allow,
    )
    assert (record is not None) == decision.promote
    return decision.promote, decision.reason, "ok"


def _promote_with_asset(project, version, allow, instance):
    instance.report_runless_asset_event(
        dg.AssetMaterialization("evaluation_report", metadata={"challenger_version": version})
    )
    result = _run(project, instance, only=("promotion",), promote={"allow_rolled_back": allow})
    if not result.success:
        (failure,) = result.get_step_failure_events()
        return False, failure.step_failure_data.error.message, "run failed"
    meta = _meta(result, "promotion")
    assert meta["evaluated_version"] == version
    return meta["moved"], meta["reason"], "ok"


def _promote_with_cli(project, version, allow, instance, capsys):
    argv = [
        "promote",
        "--version",
        str(version),
        "--spec",
        str(CHURN_SPEC),
        "--data-dir",
        str(project.paths.root),
    ]
    code = main([*argv, "--allow-rolled-back"] if allow else argv)
    out = capsys.readouterr().out
    return code == 0, out, f"exit {code}"


PATHS = {
    "function": (_promote_with_function, "test", {"refused": "ok", "quiet": "ok"}),
    "asset": (_promote_with_asset, "promotion asset", {"refused": "run failed", "quiet": "ok"}),
    "cli": (_promote_with_cli, "mlops promote", {"refused": "exit 1", "quiet": "exit 1"}),
}


def _assert_history(rows: pd.DataFrame, expected, run_ids, via: str, dagster_run: bool) -> None:
    """The promotion history holds exactly the ``expected`` (action, version, previous) moves, each row complete."""
    assert list(rows.columns) == list(registry.HISTORY_COLUMNS)
    moves = [
        (r.action, int(r.version), None if pd.isna(r.previous_version) else int(r.previous_version))
        for r in rows.itertuples()
    ]
    assert moves == expected
    assert rows["at"].is_monotonic_increasing and str(rows["at"].dt.tz) == "UTC"
    assert list(rows["run_id"]) == [run_ids[v - 1] for _, v, _ in expected]
    assert all(isinstance(m, dict) for m in rows["metrics"])
    for row in rows[rows["action"] == "promote"].itertuples():
        assert row.model_name == "churn-model"
        assert row.reason.endswith(f"[via {via}]") and "quality gates passed" in row.reason
        assert (isinstance(row.dagster_run_id, str) and len(row.dagster_run_id) == 36) == dagster_run


@pytest.mark.parametrize("path", list(PATHS))
def test_every_promotion_path_applies_the_one_policy(path, churn, mlflow_store, capsys):
    """Not evaluated, a failed gate, a stale evaluation and a rolled-back version are refused; gates that do not
    apply block nothing; the champion moves with previous-champion kept and `challenger` cleared."""
    promote, via, quiet = PATHS[path][0], PATHS[path][1], PATHS[path][2]
    instance = dg.DagsterInstance.ephemeral()

    def attempt(version, allow=False):
        args = (churn, version, allow, instance) + ((capsys,) if path == "cli" else ())
        return promote(*args)

    run_ids = _register_versions(churn, 3)
    client = _client(churn)
    moved, reason, how = attempt(1)
    assert not moved and "has no recorded evaluation" in reason and how == quiet["refused"]

    _evaluated(churn, 1, against=None)
    _evaluated(churn, 3, against=None)  # judged while there was no champion
    moved, reason, how = attempt(1)
    assert moved and "with no champion yet" in reason and "not applicable: bias, sanity" in reason
    assert _alias(churn, registry.CHAMPION) == 1

    moved, reason, how = attempt(3)
    assert not moved and how == quiet["refused"]
    assert "evaluated against champion none, but the champion is now 1" in reason

    _evaluated(churn, 2, against=1, failed=("beats_baseline",))
    moved, reason, how = attempt(2)
    assert not moved and "failed beats_baseline" in reason and how == quiet["refused"]
    assert _alias(churn, registry.CHAMPION) == 1

    _evaluated(churn, 2, against=1)
    client.set_registered_model_alias("churn-model", registry.CHALLENGER, "2")
    moved, reason, how = attempt(2)
    assert moved and "against champion v1" in reason
    assert (_alias(churn, registry.CHAMPION), _alias(churn, registry.PREVIOUS_CHAMPION)) == (2, 1)
    assert _alias(churn, registry.CHALLENGER) is None  # it names a candidate not yet promoted

    registry.rollback(
        client,
        "bad canary",
        model_name="churn-model",
        history_path=registry.default_history_path(churn.paths.root),
    )
    _evaluated(
        churn, 2, against=1
    )  # evaluated again against the restored champion: only the rollback blocks it
    moved, reason, how = attempt(2)
    assert not moved and "was rolled back at" in reason and how == quiet["quiet"]
    assert _alias(churn, registry.CHAMPION) == 1
    moved, reason, how = attempt(2, allow=True)
    assert moved and _alias(churn, registry.CHAMPION) == 2

    _assert_history(
        _history(churn),
        [("promote", 1, None), ("promote", 2, 1), ("rollback", 1, 2), ("promote", 2, 1)],
        run_ids,
        via,
        dagster_run=path == "asset",
    )


def test_a_completed_canary_promotes_only_through_the_policy(churn, mlflow_store):
    from mlops_assets.serving.sensors import promote_after_canary

    run_ids = _register_versions(churn, 2)
    client = _client(churn)
    assert "no challenger alias" in promote_after_canary(churn, "canary at 100%", {})

    _evaluated(churn, 1, against=None, failed=("p99_latency",))
    client.set_registered_model_alias("churn-model", registry.CHALLENGER, "1")
    text = promote_after_canary(churn, "canary at 100%", {"error_rate": 0.0})
    assert text.startswith("canary complete: not promoted") and "failed p99_latency" in text
    assert _alias(churn, registry.CHAMPION) is None and _history(churn).empty

    _evaluated(churn, 1, against=None)
    text = promote_after_canary(churn, "canary at 100%", {"error_rate": 0.0})
    assert text.startswith("canary complete: promoted")
    assert _alias(churn, registry.CHAMPION) == 1 and _alias(churn, registry.CHALLENGER) is None
    rows = _history(churn)
    _assert_history(
        rows, [("promote", 1, None)], run_ids, "canary rollout (canary at 100%)", dagster_run=False
    )
    assert rows["metrics"].iloc[0] == {"error_rate": 0.0}
