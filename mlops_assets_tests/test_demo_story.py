"""What `make demo` leaves in the Dagster instance for the UI: named jobs tagged with their phase and trigger, the
sensor decisions as recorded ticks, the canary as rollout_state / prediction_log / ab_test_report materializations,
and a connected asset graph.

The session's small demo (conftest's ``small_demo``, with a concept drift so that the drift alarm fires) is run
once; each test reads what it left in the instance and on disk."""

from __future__ import annotations

import os
from pathlib import Path

import dagster as dg
import pytest
from dagster._core.scheduler.instigation import TickStatus

from mlops_assets.training.gates import GATE_NAMES
from mlops_assets_tests.conftest import DEMO_MLFLOW_UI, SmallDemo

NAMED_JOBS = {
    "ingestion_job",
    "feature_views_job",
    "retraining_job",
    "batch_scoring_job",
    "drift_report_job",
    "serving_report_job",
}


@pytest.fixture
def demo(small_demo: SmallDemo) -> SmallDemo:
    return small_demo


def _ticks(instance: dg.DagsterInstance) -> dict[str, list]:
    """Every recorded tick by sensor name (read through the instance's storage, as the Automation page does)."""
    ticks = {}
    for state in instance.all_instigator_state():
        ticks[state.name] = instance.get_ticks(state.instigator_origin_id, state.selector_id, limit=1000)
    return ticks


@pytest.mark.slow
def test_demo_runs_are_named_jobs_tagged_with_phase_and_trigger(demo: SmallDemo):
    assert demo.code == 0, demo.out[-4000:]
    with demo.instance() as instance:
        runs = instance.get_runs()
        assert NAMED_JOBS <= {r.job_name for r in runs}, sorted({r.job_name for r in runs})
        for run in runs:
            by_sensor = run.tags.get("dagster/sensor_name")
            # a run is either launched by the demo (a backfill of its phase) or by a sensor: never anonymous
            assert run.tags.get("mlops/demo_phase") or by_sensor, (run.job_name, run.tags)
            assert run.tags.get("mlops/trigger") or by_sensor, (run.job_name, run.tags)
            # only the automation-condition sensor launches the implicit asset job (what the UI shows for it)
            if run.job_name == "__ASSET_JOB":
                assert by_sensor == "features_automation_sensor", run.tags
            assert run.status == dg.DagsterRunStatus.SUCCESS, (run.job_name, run.status)
        phases = {r.tags.get("mlops/demo_phase") for r in runs} - {None}
        assert phases == {"1-history", "2-new-data"}
        [drift_retrain] = [r for r in runs if r.tags.get("dagster/sensor_name") == "drift_retraining_sensor"]
        assert drift_retrain.job_name == "retraining_job"
        assert drift_retrain.tags["mlops/trigger"] == "drift"
        [log_run] = [r for r in runs if r.tags.get("dagster/sensor_name") == "serving_log_sensor"]
        assert log_run.job_name == "serving_report_job" and log_run.tags["mlops/trigger"] == "serving_log"


@pytest.mark.slow
def test_the_sensor_decisions_of_the_demo_are_ticks_in_the_instance(demo: SmallDemo):
    assert demo.code == 0, demo.out[-4000:]
    with demo.instance() as instance:
        ticks = _ticks(instance)
        runs = {r.run_id: r for r in instance.get_runs()}

        def launched(sensor: str) -> list[str]:
            return [run_id for t in ticks.get(sensor, []) for run_id in t.run_ids]

        # the drift alarm: one successful tick whose run is the retraining run the sensor tagged
        successes = [t for t in ticks["drift_retraining_sensor"] if t.status == TickStatus.SUCCESS]
        assert len(successes) == 1 and len(successes[0].run_ids) == 1
        assert runs[successes[0].run_ids[0]].job_name == "retraining_job"
        # the landing sensor found every file ingested: a skip, with its reason
        landing = ticks["landing_files_sensor"]
        assert landing and all(t.status == TickStatus.SKIPPED for t in landing)
        assert "no new or changed landing files" in landing[0].skip_reason
        # the online store refreshed by its automation condition after each backfill of feature views
        refreshes = launched("features_automation_sensor")
        assert len(refreshes) == 2 and all(runs[r].job_name == "__ASSET_JOB" for r in refreshes)
        # ... after the second backfill too: the canary's traffic reads the new days' values
        online = instance.get_latest_materialization_event(dg.AssetKey("online_features"))
        views = [instance.get_latest_materialization_event(dg.AssetKey(v)) for v in demo.project.view_names]
        assert online.run_id in refreshes and online.timestamp > max(v.timestamp for v in views)
        # the canary steps were judged by the canary sensor; the serving log became a partition by its sensor
        assert len(ticks["canary_rollout_sensor"]) >= 1
        assert [runs[r].job_name for r in launched("serving_log_sensor")] == ["serving_report_job"]
        # the first-champion sensor stood down (a champion came from the history's training run)
        assert all(t.status == TickStatus.SKIPPED for t in ticks["first_champion_sensor"])
        # every run a tick launched is in the instance
        for sensor_ticks in ticks.values():
            for tick in sensor_ticks:
                assert set(tick.run_ids) <= set(runs), tick


@pytest.mark.slow
def test_the_canary_is_recorded_on_rollout_state_prediction_log_and_ab_test_report(demo: SmallDemo):
    assert demo.code == 0, demo.out[-4000:]
    from mlops_assets.training import registry
    from mlops_assets.training.tracking import TrackingConfig, client_for

    paths = demo.project.paths
    with demo.instance() as instance:
        steps = instance.fetch_materializations(dg.AssetKey("rollout_state"), limit=100).records
        metas = [r.asset_materialization.metadata for r in reversed(steps)]  # oldest first
        actions = [m["action"].value for m in metas]
        # the retraining run started the canary; the canary sensor recorded each judged step
        assert "start" in actions, actions
        judged = [m for m in metas[actions.index("start") + 1 :] if "judged_step" in m]
        assert judged, actions
        final = judged[-1]
        assert final["mode"].value == "direct"  # the canary ended: completed or rolled back
        start = metas[actions.index("start")]
        assert start["mode"].value == "canary" and start["challenger_version"].value == "2"
        assert "canary-v2" in start["history"].value  # the controller's transitions, as the UI shows them

        client = client_for(TrackingConfig.for_project(demo.project))
        champion = registry.alias_version(client, registry.CHAMPION, demo.project.model_name)
        if final["action"].value == "advance":  # completed: the promotion policy moved the champion
            assert "promoted" in final["promotion"].value
            assert int(champion.version) == 2
        else:
            assert final["action"].value == "rollback"
            assert int(champion.version) == 1

        # the serving app's log of the canary is a prediction_log partition: one row per logged request
        [log] = instance.fetch_materializations(dg.AssetKey("prediction_log"), limit=10).records
        day = log.asset_materialization.partition
        logged = sum(
            sum(1 for _ in f.open())
            for f in (paths.root / "serving" / "prediction_log" / f"date={day}").glob("*.jsonl")
        )
        assert log.asset_materialization.metadata["dagster/row_count"].value == logged > 0
        assert "rollout_steps" in log.asset_materialization.metadata
        assert day in instance.get_dynamic_partitions("prediction_log_days")

        [report] = instance.fetch_materializations(dg.AssetKey("ab_test_report"), limit=10).records
        meta = report.asset_materialization.metadata
        assert meta["experiment"].value == "canary-v2"
        assert "rollout_steps" in meta and "canary-v2" in meta["rollout_steps"].value


@pytest.mark.slow
def test_the_demo_prints_its_story(demo: SmallDemo):
    assert demo.code == 0, demo.out[-4000:]
    out = demo.out
    for line in (
        "== phase 1",
        "== phase 2",
        "== phase 3: retraining triggered by the drift sensor",
        "drift_retraining_sensor launched retraining_job",
        "== phase 4: canary rollout",
        f"serving app on http://127.0.0.1:{demo.serving_port}",
        "serving_report_job run",
    ):
        assert line in out, line
    assert os.environ.get("MLOPS_ROLLOUT") is None  # the demo restores the environment it set


@pytest.mark.slow
def test_training_metadata_links_to_the_mlflow_run_and_model_version(demo: SmallDemo):
    assert demo.code == 0, demo.out[-4000:]
    from mlops_assets.training.tracking import TrackingConfig, client_for

    client = client_for(TrackingConfig.for_project(demo.project))
    name = demo.project.model_name
    with demo.instance() as instance:
        for asset in ("candidate_model", "evaluation_report"):
            records = instance.fetch_materializations(dg.AssetKey(asset), limit=10).records
            assert records, asset
            for record in records:
                meta = record.asset_materialization.metadata
                version = meta["challenger_version"].value if "challenger_version" in meta else None
                link = meta["mlflow_model_version"]
                assert isinstance(link, dg.UrlMetadataValue), asset
                assert link.url.startswith(f"{DEMO_MLFLOW_UI}/#/models/")
                run_link = meta["mlflow_run"].url
                run_id = run_link.rsplit("/", 1)[-1]
                # the run linked is the registered version's own run
                linked_version = int(link.url.rsplit("/", 1)[-1])
                assert client.get_model_version(name, str(linked_version)).run_id == run_id
                if version is not None:
                    assert linked_version == int(version)
        [*_, first] = instance.fetch_materializations(dg.AssetKey("promotion"), limit=10).records
        assert first.asset_materialization.metadata["mlflow_model_version"].url.endswith("/versions/1")


@pytest.mark.slow
def test_gate_verdicts_reach_the_mlflow_run_and_the_version_description(demo: SmallDemo):
    """The evaluation_report's checks as Dagster recorded them are the gate tags on the evaluated version's MLflow
    run, its ``evaluation/gates.json`` artifact and its registry description."""
    assert demo.code == 0, demo.out[-4000:]
    from mlops_assets.training.tracking import TrackingConfig, client_for

    client = client_for(TrackingConfig.for_project(demo.project))
    name = demo.project.model_name
    with demo.instance() as instance:
        [*_, first] = instance.fetch_materializations(dg.AssetKey("evaluation_report"), limit=10).records
        run_id = first.run_id
        checks = {
            e.asset_check_evaluation.check_name: e.asset_check_evaluation
            for e in instance.all_logs(run_id, of_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION)
            if e.asset_check_evaluation.asset_key == dg.AssetKey("evaluation_report")
        }
    assert set(checks) == set(GATE_NAMES), "every gate records a check result, applicable or not"
    version = client.get_model_version(name, "1")
    run = client.get_run(version.run_id)
    for check_name, evaluation in checks.items():
        tag = run.data.tags[f"gate.{check_name}"]
        assert tag == evaluation.metadata["status"].value, (check_name, tag)
        assert (tag != "fail") == evaluation.passed, (check_name, tag, evaluation.passed)
    assert checks["metric_vs_champion"].metadata["reason"].value == "no champion yet"  # the first model
    assert run.data.tags["evaluation.against"] == "none"
    assert any(k.startswith("gate_") and k.endswith("_measured") for k in run.data.metrics)
    assert "every applicable quality gate passed" in version.description
    for check_name in checks:
        assert f"| {check_name} |" in version.description
    local = client.download_artifacts(version.run_id, "evaluation/gates.json")
    import json

    gates = {g["name"]: g for g in json.loads(Path(local).read_text())["gates"]}
    assert set(checks) <= set(gates)
