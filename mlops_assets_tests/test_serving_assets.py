"""The serving domain's Dagster shell: the prediction-log partition, the A/B report asset, and the rollout sensor,
which rolls a canary back on errors and, when it completes, promotes only through the promotion policy."""

from __future__ import annotations

import shutil
import time
from datetime import UTC, datetime, timedelta

import dagster as dg
import numpy as np
import pandas as pd
import pytest

from mlops_assets.project import Project
from mlops_assets.resources import DataDirResource
from mlops_assets.serving import abtest
from mlops_assets.serving.assets import build_serving_assets
from mlops_assets.serving.prediction_log import PredictionLogger, PredictionRecord, log_dir, read_day
from mlops_assets.serving.rollout import CANARY_STEPS, RolloutController
from mlops_assets.serving.routing import RolloutState, write_state
from mlops_assets.serving.sensors import build_canary_sensor
from mlops_assets.storage import read_partition, write_partition
from mlops_assets.training import promotion, registry
from mlops_assets.training.gates import GateResult
from mlops_assets.training.tracking import TrackingConfig, client_for, ensure_tracking_store
from mlops_assets_tests.conftest import CHURN_SPEC

PARTITIONS = dg.DailyPartitionsDefinition(start_date="2026-01-01", end_date="2026-12-31", timezone="UTC")


def _assets(project: Project) -> dict[str, dg.AssetsDefinition]:
    return {a.key.to_user_string(): a for a in build_serving_assets(project, PARTITIONS)}


def _resources(project: Project) -> dict:
    return {"data": DataDirResource(root=str(project.paths.root))}


def _log(root, n, start, arm_of, experiment="exp", error_arm=None, seed=0):
    rng = np.random.default_rng(seed)
    logger = PredictionLogger(log_dir(root))
    for i in range(n):
        customer = f"C{i:05d}"
        arm = arm_of(customer)
        failed = arm == error_arm and rng.random() < 0.3
        logger.write(
            PredictionRecord(
                f"r{i}",
                customer,
                arm,
                "2" if arm == "challenger" else "1",
                None if failed else float(rng.beta(2, 8)),
                2.0,
                (start + timedelta(milliseconds=i)).isoformat(),
                "canary",
                False,
                "error" if failed else "ok",
                "boom" if failed else None,
                experiment,
            )
        )
    logger.close()


def _wait_past(moment: datetime) -> None:
    while datetime.now(UTC) < moment:  # the log is read up to now: every record must lie in the past
        time.sleep(0.05)


def test_prediction_log_asset_writes_the_day_partition(churn, dagster_home):
    start = datetime(2026, 3, 1, 8, tzinfo=UTC)
    _log(churn.paths.root, 50, start, lambda c: "champion")
    result = dg.materialize(
        [_assets(churn)["prediction_log"]], partition_key="2026-03-01", resources=_resources(churn)
    )
    assert result.success
    stored = read_partition(churn.paths.partition_dir("prediction_log", "2026-03-01")).to_pandas()
    pd.testing.assert_frame_equal(stored, read_day("2026-03-01", churn.paths.root), check_dtype=False)
    assert len(stored) == 50 and stored["entity_id"].iloc[0] == "C00000"


def test_ab_test_report_asset_matches_the_core_analysis(churn, dagster_home):
    rng = np.random.default_rng(4)
    start = datetime(2026, 3, 1, tzinfo=UTC)
    n = 8000
    arm = np.where(rng.random(n) < 0.5, "champion", "challenger")
    log = pd.DataFrame(
        {
            "request_id": [f"r{i}" for i in range(n)],
            "entity_id": [f"C{i}" for i in range(n)],
            "arm": arm,
            "model_version": "1",
            "score": 0.2,
            "latency_ms": 1.0,
            "ts": pd.Timestamp(start),
            "mode": "ab",
            "shadow": False,
            "status": "ok",
            "error": None,
            "experiment": "exp",
        }
    )
    churned = (rng.random(n) < np.where(arm == "champion", 0.25, 0.15)).astype("int64")
    labels = pd.DataFrame(
        {
            "customer_id": log["entity_id"],
            "label_timestamp": pd.Timestamp(start) + pd.to_timedelta(rng.integers(1, 6, n), "D"),
            "churned": churned,
        }
    )
    write_partition(log, churn.paths.partition_dir("prediction_log", "2026-03-01"))
    for day, rows in labels.groupby(labels["label_timestamp"].dt.strftime("%Y-%m-%d")):
        write_partition(rows.reset_index(drop=True), churn.paths.partition_dir("raw_labels", day))
    result = dg.materialize(
        [_assets(churn)["ab_test_report"]],
        resources=_resources(churn),
        run_config={"ops": {"ab_test_report": {"config": {"experiment": "exp"}}}},
    )
    meta = result.asset_materializations_for_node("ab_test_report")[0].metadata
    outcomes = abtest.outcomes_from_log(
        log, labels, "exp", key="customer_id", time="label_timestamp", outcome="churned"
    )
    # the spec says fewer churners is better (target.higher_is_better: false)
    config = abtest.ABConfig(metric="churned", higher_is_better=False)
    reference = abtest.analyze(outcomes, config, time_column="labelled_at")
    assert meta["decision"].value == reference.decision == "promote_b"
    assert meta["always_valid_p_value"].value == pytest.approx(reference.sequential.p_value)
    assert meta["prob_b_better"].value == pytest.approx(reference.bayes.prob_b_better)
    assert (churn.paths.reports / "ab_test_report_exp.md").exists()


def _run_sensor(project: Project) -> dg.SensorResult:
    sensor = build_canary_sensor(project)
    with dg.build_sensor_context(resources=_resources(project)) as context:
        return sensor(context)


def test_rollout_sensor_rolls_back_on_errors_and_records_an_observation(churn, dagster_home):
    controller = RolloutController(churn.paths.root)
    controller.start_canary("exp")
    begun = datetime.fromisoformat(controller.state().changed_at)
    _log(
        churn.paths.root,
        600,
        begun + timedelta(milliseconds=1),
        lambda c: "challenger" if c.endswith("0") else "champion",
        error_arm="challenger",
    )
    _wait_past(begun + timedelta(seconds=1))
    result = _run_sensor(churn)
    assert controller.state().mode == "direct"
    (observation,) = result.asset_events
    assert observation.metadata["action"].value == "rollback"
    assert "error rate" in observation.metadata["reason"].value
    assert observation.metadata["promotion"].value == "not requested"


def test_a_canary_step_judges_only_its_own_experiments_traffic(churn, dagster_home):
    """Failing traffic of an earlier experiment, logged inside the new canary's window, is not the new canary's:
    the step is judged on the new experiment's healthy requests alone."""
    controller = RolloutController(churn.paths.root)
    controller.start_canary("new")
    begun = datetime.fromisoformat(controller.state().changed_at)
    _log(churn.paths.root, 400, begun + timedelta(milliseconds=1), lambda c: "challenger", experiment="new")
    _log(
        churn.paths.root,
        400,
        begun + timedelta(milliseconds=2),
        lambda c: "challenger",
        experiment="old",
        error_arm="challenger",
        seed=1,
    )
    _wait_past(begun + timedelta(seconds=1))
    decision = controller.step_from_log()
    assert decision.action == "advance", decision.reason
    assert decision.metrics["challenger_requests"] == 400.0


# --------------------------------------------------------------------------- canary completion -> promotion policy


@pytest.fixture(scope="module")
def registry_template(tmp_path_factory):
    """A registry with versions 1, 2, 3 of the churn model (runs without artifacts: promotion reads tags only)."""
    root = tmp_path_factory.mktemp("canary-registry") / "data"
    project = Project.load(CHURN_SPEC, root)
    tracking = TrackingConfig.for_project(project)
    experiment = ensure_tracking_store(tracking)
    client = client_for(tracking)
    for i in range(3):
        run = client.create_run(experiment)
        client.create_model_version(tracking.model_name, str(root / f"model-{i}"), run_id=run.info.run_id)
    return root


def _gates(passed: bool) -> list[GateResult]:
    verdict = "pass" if passed else "fail"
    return [
        GateResult("beats_baseline", verdict, 0.71, 0.60, f"roc_auc 0.71 vs baseline 0.60: {verdict}"),
        GateResult("p99_latency", "pass", 3.0, 50.0, "p99 3.0 ms <= 50 ms"),
        GateResult("bias", "not applicable", None, None, "no sensitive attribute"),
    ]


def _complete_canary(project: Project, experiment: str) -> None:
    """A canary at its last step (100%) whose healthy traffic lies in the past: the next evaluation completes it."""
    begun = datetime.now(UTC) - timedelta(seconds=3)
    state = RolloutState(
        mode="canary",
        challenger_share=CANARY_STEPS[-1],
        step=len(CANARY_STEPS) - 1,
        experiment=experiment,
        changed_at=begun.isoformat(),
    )
    write_state(state, project.paths.serving / "rollout_state.json")
    _log(
        project.paths.root,
        300,
        begun + timedelta(milliseconds=5),
        lambda c: "challenger",
        experiment=experiment,
    )
    _wait_past(begun + timedelta(seconds=1))


@pytest.mark.slow
def test_a_completed_canary_promotes_only_through_the_promotion_policy(
    registry_template, data_dir, dagster_home, monkeypatch
):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    shutil.rmtree(data_dir.root)
    shutil.copytree(registry_template, data_dir.root)
    project = Project.load(CHURN_SPEC, data_dir.root)
    tracking = TrackingConfig.for_project(project)
    client = client_for(tracking)
    name = tracking.model_name
    history = registry.default_history_path(project.paths.root)
    # version 1 became champion by `mlops promote`, after passing its gates with no champion before it
    promotion.record_gate_verdicts(client, name, 1, _gates(True), None, origin="run-1")
    _, first = promotion.promote(client, name, 1, via="mlops promote", history_path=history)
    assert first is not None

    # version 2 failed a quality gate; a canary of it completes with healthy traffic: it is not promoted
    promotion.record_gate_verdicts(client, name, 2, _gates(False), 1, origin="run-2")
    client.set_registered_model_alias(name, registry.CHALLENGER, "2")
    _complete_canary(project, "exp-2")
    refused = _run_sensor(project)
    (observation,) = refused.asset_events
    assert observation.metadata["action"].value == "advance"
    assert observation.metadata["promotion"].value.startswith(
        "canary complete: not promoted: version 2 failed"
    )
    assert "beats_baseline" in observation.metadata["promotion"].value
    assert int(registry.alias_version(client, registry.CHAMPION, name).version) == 1
    assert len(registry.read_promotion_history(history)) == 1  # nothing recorded
    assert RolloutController(project.paths.root).state().mode == "direct"  # traffic is back on the champion

    # version 3 passed its gates against champion 1: the completed canary promotes it
    promotion.record_gate_verdicts(client, name, 3, _gates(True), 1, origin="run-3")
    client.set_registered_model_alias(name, registry.CHALLENGER, "3")
    _complete_canary(project, "exp-3")
    promoted = _run_sensor(project)
    (observation,) = promoted.asset_events
    assert observation.metadata["promotion"].value.startswith("canary complete: promoted")
    assert int(registry.alias_version(client, registry.CHAMPION, name).version) == 3
    assert int(registry.alias_version(client, registry.PREVIOUS_CHAMPION, name).version) == 1
    assert registry.alias_version(client, registry.CHALLENGER, name) is None  # the candidate was promoted
    rows = registry.read_promotion_history(history)
    assert len(rows) == 2
    by_cli, by_canary = rows.iloc[0], rows.iloc[1]
    # the same row as every other promotion: same columns, same kinds of values
    assert list(rows.columns) == list(registry.HISTORY_COLUMNS)
    for column in registry.HISTORY_COLUMNS:
        assert type(by_canary[column]) is type(by_cli[column]) or column == "previous_version", column
    assert (by_canary["action"], by_canary["version"], by_canary["previous_version"]) == ("promote", 3, 1)
    assert "[via canary rollout" in by_canary["reason"] and "[via mlops promote]" in by_cli["reason"]
    assert "quality gates passed against champion v1 (evaluation run-3)" in by_canary["reason"]
    assert by_canary["metrics"]["challenger_requests"] == 300.0  # the canary's numbers are kept with it
    assert by_canary["run_id"] == client.get_model_version(name, "3").run_id


def test_batch_predictions_score_each_arriving_day_once_a_champion_is_promoted(churn):
    """The live replay's daemon materializes batch_predictions through its automation condition: every day whose
    feature views arrived, once a champion was promoted; a later promotion does not re-score past days."""
    batch = _assets(churn)["batch_predictions"]
    upstream = [
        dg.AssetSpec("promotion"),
        *(dg.AssetSpec(v, partitions_def=PARTITIONS) for v in churn.view_names),
    ]
    defs = dg.Definitions(assets=[batch, *upstream], resources=_resources(churn))
    instance = dg.DagsterInstance.ephemeral()
    cursor = None

    def tick() -> set[str]:
        nonlocal cursor
        result = dg.evaluate_automation_conditions(
            defs=defs, instance=instance, asset_selection=dg.AssetSelection.assets(batch.key), cursor=cursor
        )
        cursor = result.cursor
        return set(result.get_requested_partitions(batch.key))

    def land(*keys: str, days=()) -> None:
        for key in keys:
            for day in days or [None]:
                instance.report_runless_asset_event(dg.AssetMaterialization(key, partition=day))

    assert tick() == set()  # the first evaluation is the baseline
    days = ["2026-01-05", "2026-01-06"]
    land(*churn.view_names, days=days)
    assert tick() == set()  # no champion promoted yet: nothing to score with
    land("promotion")
    assert tick() == set(days)
    assert tick() == set()  # requested once
    land("promotion")  # a new champion
    assert tick() == set()
    land(*churn.view_names, days=["2026-01-07"])
    assert tick() == {"2026-01-07"}
