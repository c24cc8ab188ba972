"""`mlops report`: challenger vs champion, quality gates and drift of the small churn world; a saved evaluation
judged again; an empty data folder."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import pytest

from mlops_assets.cli import main
from mlops_assets.project import Project
from mlops_assets.settings import DataPaths
from mlops_assets.spec.model import GoldenCase
from mlops_assets.training import promotion, registry
from mlops_assets.training.gates import GATE_NAMES, NOT_APPLICABLE, evaluate_gates
from mlops_assets.training.metrics import CLASSIFICATION_METRICS
from mlops_assets.training.model_report import REPORT_MARKER, build_model_report
from mlops_assets.training.report_cli import dagster_home, instance_gate_lookup
from mlops_assets.training.tracking import TrackingConfig, client_for
from mlops_assets_tests.conftest import CHURN_SPEC, copy_mlflow_db, definitions
from mlops_assets_tests.synthetic import CATEGORICAL_FEATURES, NUMERIC_FEATURES, SYNTHETIC_TASK

LOWER_IS_BETTER = ("log_loss", "brier")


@dataclass
class World:
    project: Project
    home: Path
    after_first: dict  # `mlops report --json` right after v1 was evaluated and promoted
    first_run: str
    second_run: str
    checks: dict[str, dg.AssetCheckEvaluation]  # the second evaluation's gate verdicts
    drift_days: list[str]

    @property
    def paths(self) -> DataPaths:
        return self.project.paths


def _with_gates(project: Project, **gates) -> Project:
    spec = project.spec.model_copy(update={"gates": project.spec.gates.model_copy(update=gates)})
    return Project(spec, project.paths, project.spec_path)


def _retrain(project: Project, instance, candidate: dict) -> dg.ExecuteInProcessResult:
    job = definitions(project).resolve_job_def("retraining_job")
    run_config = {
        "ops": {
            "candidate_model": {"config": {"importance_repeats": 1, **candidate}},
            "evaluation_report": {"config": {"latency_calls": 20}},
        }
    }
    return job.execute_in_process(instance=instance, run_config=run_config, raise_on_error=False)


@pytest.fixture(scope="module")
def world(tmp_path_factory, small_world_template, empty_mlflow_db) -> World:
    """The small churn world: v1 (logistic regression) trained, evaluated and promoted; two drift days against
    it; v2 (the same estimator retrained with the cache disabled) on the same training set evaluated against v1 under a spec whose latency limit
    cannot be met and whose metric drop is unlimited (the run stops at the blocking p99_latency gate)."""
    root = tmp_path_factory.mktemp("report")
    shutil.copytree(small_world_template, root / "data")
    copy_mlflow_db(empty_mlflow_db, root / "data")
    home = root / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    project = Project.load(CHURN_SPEC, root / "data")
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)
        patch.setenv("DAGSTER_HOME", str(home))
        with dg.DagsterInstance.from_config(str(home)) as instance:
            roomy = _with_gates(project, max_p99_latency_ms=10_000.0)  # a loaded machine must not fail v1
            first = _retrain(roomy, instance, {"model_type": "logistic_regression"})
            assert first.success
            out = root / "after_first.json"
            assert (
                main(
                    [
                        "report",
                        "--json",
                        "--spec",
                        str(CHURN_SPEC),
                        "--data-dir",
                        str(project.paths.root),
                        "-o",
                        str(out),
                    ]
                )
                == 0
            )
            after_first = json.loads(out.read_text())

            days = project.partition_days()[-2:]
            drift_job = definitions(project).resolve_implicit_global_asset_job_def()
            for day in days:
                ran = drift_job.execute_in_process(
                    instance=instance,
                    asset_selection=[dg.AssetKey("drift_report")],
                    partition_key=day,
                    run_config={"ops": {"drift_report": {"config": {"histograms": "none", "alert": False}}}},
                )
                assert ran.success

            strict = _with_gates(project, max_p99_latency_ms=0.0001, max_metric_drop=1.0)
            second = _retrain(strict, instance, {"model_type": "logistic_regression", "use_cache": False})
            assert not second.success  # the blocking p99_latency gate stopped the run
            checks = {
                c.check_name: c
                for c in second.get_asset_check_evaluations()
                if c.asset_key == dg.AssetKey("evaluation_report")
            }
            assert [n for n, c in checks.items() if not c.passed] == ["p99_latency"], {
                n: c.description for n, c in checks.items()
            }
        yield World(project, home, after_first, first.run_id, second.run_id, checks, days)


@pytest.fixture
def in_world(world, monkeypatch) -> World:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("DAGSTER_HOME", str(world.home))
    return world


def _report(world: World, *extra: str) -> tuple[int, str]:
    out = world.paths.root.parent / f"report-{os.getpid()}-{len(extra)}.out"
    argv = ["report", "--spec", str(CHURN_SPEC), "--data-dir", str(world.paths.root), "-o", str(out)]
    code = main([*argv, *extra])
    return code, out.read_text()


def _version_metrics(tracking: TrackingConfig, version: int) -> dict[str, float]:
    """The holdout metrics MLflow logged when ``version`` was trained."""
    client = client_for(tracking)
    run = client.get_run(client.get_model_version(tracking.model_name, str(version)).run_id)
    return {m: run.data.metrics[f"holdout_{m}"] for m in CLASSIFICATION_METRICS}


def _verdict(delta: float, metric: str) -> str:
    if abs(delta) < 5e-5:
        return "same"
    return "better" if (delta > 0) == (metric not in LOWER_IS_BETTER) else "worse"


@pytest.mark.slow
def test_report_puts_challenger_and_champion_side_by_side_as_mlflow_recorded_them(in_world):
    tracking = TrackingConfig.for_project(in_world.project)
    client = client_for(tracking)
    champion = int(registry.alias_version(client, registry.CHAMPION, "churn-model").version)
    challenger = int(registry.alias_version(client, registry.CHALLENGER, "churn-model").version)
    assert (champion, challenger) == (1, 2)
    # both versions were trained on the same training set: the evaluation's shared holdout is the one each
    # run logged its holdout metrics on
    champ, chall = _version_metrics(tracking, champion), _version_metrics(tracking, challenger)

    code, markdown = _report(in_world, "--markdown")
    assert code == 0 and markdown.startswith(REPORT_MARKER)
    assert "Challenger v2 (against champion v1) FAILED 1 blocking quality gate(s): p99_latency" in markdown
    assert "| metric | champion v1 | challenger v2 | delta | challenger is |" in markdown
    for m in CLASSIFICATION_METRICS:
        delta = chall[m] - champ[m]
        direction = "lower" if m in LOWER_IS_BETTER else "higher"
        row = f"| {m} ({direction} is better) | {champ[m]:.4f} | {chall[m]:.4f} | {delta:+.4f} | {_verdict(delta, m)} |"
        assert row in markdown
    assert (
        "Challenger v2 (logistic_regression, staging) against champion v1 (logistic_regression, production)"
        in markdown
    )
    assert "golden-input sanity not applicable (no golden cases)" in markdown

    code, text = _report(in_world, "--json")
    data = json.loads(text)
    assert code == 0 and data["status"] == "failed" and data["failed_gates"] == ["p99_latency"]
    rows = {r["metric"]: r for r in data["comparison"]}
    for m in CLASSIFICATION_METRICS:
        assert rows[m]["champion"] == pytest.approx(champ[m], abs=1e-12)
        assert rows[m]["challenger"] == pytest.approx(chall[m], abs=1e-12)
    evaluation = json.loads((in_world.paths.reports / "evaluation_v2.json").read_text())
    for model in ("challenger", "champion"):
        assert rows["p99_latency_ms"][model] == evaluation["latency_ms"][model]["p99"]
        assert rows["robust_p99_latency_ms"][model] == evaluation["latency_ms"][model]["robust_p99"]
        scores = [
            r["score"] for r in evaluation["fairness"] if r["model"] == model and r["score"] is not None
        ]
        assert rows["bias_score"][model] == (max(scores) if scores else None)
    assert data["registry"]["aliases"] == {"champion": 1, "challenger": 2}
    assert data["registry"]["versions"]["1"]["holdout_metrics"]["roc_auc"] == pytest.approx(champ["roc_auc"])
    assert [m["action"] for m in data["registry"]["history"]] == ["promote"]


@pytest.mark.slow
def test_gate_rows_are_the_recorded_blocking_checks_and_fail_on_gate_exits_1(in_world):
    code, text = _report(in_world, "--json", "--fail-on-gate")
    data = json.loads(text)
    assert code == 1
    assert data["gates_source"].endswith(in_world.second_run[:8])
    gates = {g["name"]: g for g in data["gates"]}
    assert list(gates) == list(GATE_NAMES)
    client = client_for(TrackingConfig.for_project(in_world.project))
    recorded = json.loads(client.get_model_version("churn-model", "2").tags[promotion.GATES_TAG])
    skipped = {name for name, status in recorded.items() if status == NOT_APPLICABLE}
    assert set(in_world.checks) == set(GATE_NAMES)  # every gate has a check result, applicable or not
    for name in GATE_NAMES:
        check = in_world.checks[name]
        if name in skipped:  # recorded as passed with its reason; the report shows it skipped
            assert check.passed and check.metadata["status"].value == NOT_APPLICABLE, name
            assert gates[name]["status"] == "skipped" and gates[name]["detail"] == check.description, name
            continue
        assert gates[name]["status"] == ("pass" if check.passed else "FAIL"), name
        assert gates[name]["detail"] == check.description
        if "measured" in check.metadata:
            assert gates[name]["measured"] == pytest.approx(check.metadata["measured"].value)
    assert gates["p99_latency"]["status"] == "FAIL" and gates["p99_latency"]["threshold"] == 0.0001
    assert gates["metric_vs_champion"]["status"] == "pass"  # judged: there is a champion, any drop allowed
    _, markdown = _report(in_world, "--markdown")
    p99 = gates["p99_latency"]["measured"]
    assert f"| p99_latency | FAIL | {p99:.4f} | 0.0001 |" in markdown

    # without the instance the gates are recomputed from the saved evaluation at the spec's thresholds (the
    # example's defaults): p99 passes 100 ms, the data gate is unknown, the other verdicts and values are the
    # recorded ones
    code, text = _report(in_world, "--json", "--no-instance", "--fail-on-gate")
    data = json.loads(text)
    recomputed = {g["name"]: g for g in data["gates"]}
    assert "recomputed from evaluation_v2.json" in data["gates_source"]
    p99_gate = recomputed["p99_latency"]
    assert p99_gate["threshold"] == 100.0 and p99_gate["measured"] == pytest.approx(p99, abs=1e-6)
    assert p99_gate["status"] == ("pass" if p99 <= 100.0 else "FAIL")  # a loaded machine may exceed it
    assert recomputed["training_data_valid"]["status"] == "unknown"
    for name in ("beats_baseline", "bias", "test_coverage", "sanity", "overfitting"):
        assert recomputed[name]["status"] == gates[name]["status"], name
        if gates[name]["measured"] is not None:
            assert recomputed[name]["measured"] == pytest.approx(gates[name]["measured"], abs=1e-6), name
    drop = recomputed["metric_vs_champion"]  # the run allowed any drop; the example's spec allows 0.02
    assert drop["measured"] == pytest.approx(gates["metric_vs_champion"]["measured"], abs=1e-6)
    assert drop["threshold"] == 0.02
    assert drop["status"] == ("pass" if drop["measured"] <= 0.02 + 1e-12 else "FAIL")
    assert code == (1 if "FAIL" in (drop["status"], p99_gate["status"]) else 0)


@pytest.mark.slow
def test_instance_verdicts_are_used_only_for_the_evaluation_file_they_recorded(in_world):
    path = in_world.paths.reports / "evaluation_v2.json"
    with dg.DagsterInstance.from_config(str(in_world.home)) as instance:
        lookup = instance_gate_lookup(instance)
        source, rows = lookup(path)
        assert in_world.second_run[:8] in source and len(rows) == len(GATE_NAMES)
        assert lookup(in_world.paths.reports / "evaluation_v1.json") is None  # an older evaluation
        stat = path.stat()
        try:  # the file rewritten after the recorded run (an evaluation elsewhere): not its verdicts
            os.utime(path, (stat.st_atime, stat.st_mtime + 60))
            assert lookup(path) is None
        finally:
            os.utime(path, (stat.st_atime, stat.st_mtime))

    def unreachable(path):
        raise ConnectionError("could not connect to the instance database")

    report = build_model_report(in_world.project, gate_lookup=unreachable)
    assert report.gates_source.startswith("recomputed from evaluation_v2.json")
    assert any("could not connect to the instance database" in n for n in report.notes)


@pytest.mark.slow
def test_drift_summary_shows_the_latest_days_against_the_champion(in_world):
    code, text = _report(in_world, "--json")
    days = json.loads(text)["drift"]
    assert [d["day"] for d in days] == in_world.drift_days
    for day in days:
        saved = json.loads((in_world.paths.reports / f"drift_report_{day['day']}.json").read_text())
        assert day["champion_version"] == 1 == saved["summary"]["champion_version"]
        assert day["drift_share"] == pytest.approx(saved["drift_share"])
        assert day["dataset_drift"] == saved["dataset_drift"]
        assert [f["feature"] for f in day["drifted"]] == [
            f["feature"] for f in saved["features"] if f["drifted"]
        ]
        assert day["current_rows"] == saved["summary"]["current_rows"] > 0
        assert day["estimated"]["accuracy"] == pytest.approx(saved["summary"]["estimated_accuracy"])
        assert day["realized"]["accuracy"] == pytest.approx(saved["summary"]["realized_accuracy"])
        assert day["realized_labels"] == saved["summary"]["realized_labels"]

    _, markdown = _report(in_world, "--markdown", "--drift-days", "1")
    first_day, last_day = days
    verdict = "DATASET DRIFT" if last_day["dataset_drift"] else "no dataset drift"
    assert (
        f"Latest day {last_day['day']} (champion v1, {last_day['current_rows']} rows): {verdict}" in markdown
    )
    assert f"| {first_day['day']} |" not in markdown  # only the last day listed
    for f in last_day["drifted"]:
        assert f"| {f['feature']} | {f['test']} | {f['statistic']:.4f} |" in markdown


@pytest.mark.slow
def test_first_model_is_judged_alone_then_shown_as_promoted(in_world):
    first = in_world.after_first
    assert first["status"] == "passed" and first["failed_gates"] == []
    assert first["evaluation"]["challenger_version"] == 1 and first["evaluation"]["champion_version"] is None
    assert all(r["champion"] is None and r["delta"] is None for r in first["comparison"])
    gates = {g["name"]: g["status"] for g in first["gates"]}
    assert gates["metric_vs_champion"] == "skipped" and gates["training_data_valid"] == "pass"
    assert first["gates_source"].endswith(in_world.first_run[:8])
    assert "v1 has been promoted since this evaluation: it is the champion now" in first["notes"]
    assert first["drift"] == []


# ------------------------------------------------------------------------------ a saved evaluation, no instance


def _saved_evaluation(project: Project, version: int, golden=()) -> dict:
    """Evaluate a challenger against a champion on the synthetic set as the pipeline does, and save the evaluation
    under the project's reports/ (no MLflow, no Dagster)."""
    from mlops_assets.training.evaluate import evaluate
    from mlops_assets.training.metrics import baseline_scores
    from mlops_assets.training.train import TrainConfig, fit_model, time_split
    from mlops_assets_tests.synthetic import synthetic_training_set

    task = dataclasses.replace(SYNTHETIC_TASK, sensitive=("age_group", "region"))
    frame = synthetic_training_set(n_rows=600, n_days=10, seed=1)
    train, holdout = time_split(frame, 0.25, task.time, task.entity)
    model = fit_model(
        train, TrainConfig(hyperparameters={"max_iter": 30}), task, NUMERIC_FEATURES, CATEGORICAL_FEATURES
    )
    champion = fit_model(
        train, TrainConfig("logistic_regression"), task, NUMERIC_FEATURES, CATEGORICAL_FEATURES
    )
    baselines = baseline_scores(
        task.kind,
        train,
        holdout,
        train["churned"].to_numpy(),
        holdout["churned"].to_numpy(),
        entity=task.entity,
        time=task.time,
        observed=task.observed,
    )
    report = evaluate(
        task,
        model,
        champion,
        train,
        holdout,
        numeric_features=NUMERIC_FEATURES,
        categorical_features=CATEGORICAL_FEATURES,
        challenger_version=version,
        champion_version=version - 1,
        golden_cases=golden,
        latency_calls=3,
        min_group_size=20,
        baselines=baselines,
    )
    report.save(project.paths.reports)
    return {"report": report, "gates": {g.name: g for g in evaluate_gates(report, project.spec.gates)}}


ENGAGED = {"logins_30d": 20.0, "total_purchases_30d": 5.0, "tickets_30d": 0.0, "plan": "premium"}


def test_a_saved_evaluation_is_judged_again_with_the_spec_thresholds(
    churn, empty_mlflow_db, monkeypatch, capsys
):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    copy_mlflow_db(
        empty_mlflow_db, churn.paths.root
    )  # a registry that answers (a lost one is its own status)
    impossible = GoldenCase(name="engaged_never_leaves", features=ENGAGED, expect_max=1e-9)
    saved = _saved_evaluation(churn, 3, golden=[impossible])
    evaluation, expected = saved["report"], saved["gates"]
    report = build_model_report(churn)
    assert report.evaluation.challenger_version == 3 and report.status == "failed"
    assert "recomputed from evaluation_v3.json" in report.gates_source
    rows = {r.metric: r for r in report.comparison}
    markdown = report.to_markdown()
    assert "| metric | champion v2 | challenger v3 | delta | challenger is |" in markdown
    for m in CLASSIFICATION_METRICS:
        champ, chall = evaluation.metrics["champion"][m], evaluation.metrics["challenger"][m]
        assert (rows[m].champion, rows[m].challenger) == (pytest.approx(champ), pytest.approx(chall))
        direction = "lower" if m in LOWER_IS_BETTER else "higher"
        delta = chall - champ
        row = f"| {m} ({direction} is better) | {champ:.4f} | {chall:.4f} | {delta:+.4f} | {_verdict(delta, m)} |"
        assert row in markdown
    for model in ("challenger", "champion"):
        assert evaluation.bias_score(model) is not None  # two sensitive attributes with groups of 20 rows
        assert getattr(rows["bias_score"], model) == pytest.approx(evaluation.bias_score(model))
        assert getattr(rows["robust_p99_latency_ms"], model) == evaluation.latency_ms[model]["robust_p99"]
    for gate in report.gates:
        if gate.name == "training_data_valid":
            assert gate.status == "unknown"  # only the Dagster instance records it
            continue
        judged = expected[gate.name]
        status = {"pass": "pass", "fail": "FAIL", NOT_APPLICABLE: "skipped"}[judged.status]
        assert (gate.status, gate.detail) == (status, judged.message), gate.name
    assert report.failed_gates == [g.name for g in expected.values() if g.status == "fail"]
    assert "sanity" in report.failed_gates
    assert "golden-input sanity FAILS" in markdown

    assert main(["report", "--data-dir", str(churn.paths.root), "--no-instance", "--fail-on-gate"]) == 1
    assert "FAILED" in capsys.readouterr().out


def test_empty_data_dir_says_nothing_was_evaluated_and_creates_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    root = tmp_path / "data"
    root.mkdir()
    assert main(["report", "--spec", str(CHURN_SPEC), "--data-dir", str(root), "--no-instance"]) == 0
    markdown = capsys.readouterr().out
    assert markdown.startswith(REPORT_MARKER)
    assert "No model has been trained and evaluated" in markdown
    assert "No quality gate has been evaluated." in markdown and "no MLflow store at" in markdown
    assert "No daily drift report" in markdown
    assert list(root.iterdir()) == []  # reading created no MLflow store

    argv = [
        "report",
        "--spec",
        str(CHURN_SPEC),
        "--data-dir",
        str(root),
        "--no-instance",
        "--json",
        "--fail-on-gate",
    ]
    assert main(argv) == 1
    data = json.loads(capsys.readouterr().out)
    assert data["status"] == "not_evaluated" and data["evaluation"] is None and data["gates"] == []


def test_report_reads_a_registry_without_evaluations_and_skips_unreadable_files(churn, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    churn.paths.reports.mkdir(parents=True)
    (churn.paths.reports / "evaluation_v3.json").write_text("{not json")
    (churn.paths.reports / "drift_report_2026-02-01.json").write_text("[]")
    report = build_model_report(churn)
    assert report.status == "not_evaluated"
    assert any("evaluation_v3.json" in n for n in report.notes)
    assert any("drift_report_2026-02-01.json" in n for n in report.notes)
    assert "## Notes" in report.to_markdown()


def test_an_empty_dagster_home_is_not_opened(tmp_path, monkeypatch):
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    assert dagster_home() is None  # opening it would create instance storage in it
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    assert dagster_home() == home
