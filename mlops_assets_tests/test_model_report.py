"""`mlops report`: challenger vs champion, quality gates and drift of a small real world, and an empty one."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import pytest

from mlops_assets.cli import main
from mlops_assets.features.store import FeatureStore
from mlops_assets.monitoring.assets import drift_report
from mlops_assets.resources import DataDirResource
from mlops_assets.settings import DataPaths
from mlops_assets.storage import frame_hash
from mlops_assets.training import registry
from mlops_assets.training.assets import candidate_model, evaluation_report, promotion
from mlops_assets.training.gates import GATE_NAMES
from mlops_assets.training.model_report import REPORT_MARKER, build_model_report
from mlops_assets.training.report_cli import dagster_home, instance_gate_lookup
from mlops_assets.training.resources import MlflowResource
from mlops_assets.training.synthetic import synthetic_training_set
from mlops_assets.training.tracking import TrackingConfig, client_for
from mlops_assets_tests.test_monitoring_assets import DRIFT_DAY, NO_DRIFT_DAY, drifted, write_day

METRICS = ("accuracy", "precision", "recall", "f1", "roc_auc", "log_loss", "brier")


@dataclass
class World:
    paths: DataPaths
    home: Path
    after_first: dict  # `mlops report --json` right after v1 was evaluated and promoted
    first_run: str
    second_run: str
    checks: dict[str, dg.AssetCheckEvaluation]  # the second evaluation's gate verdicts


def _training_run(paths, instance, assets, candidate: dict, evaluation: dict) -> dg.ExecuteInProcessResult:
    data = DataDirResource(root=str(paths.root))
    return dg.materialize(
        assets,
        instance=instance,
        resources={"data": data, "mlflow": MlflowResource(data=data)},
        run_config={
            "ops": {
                "candidate_model": {"config": {"importance_repeats": 1, **candidate}},
                "evaluation_report": {"config": {"latency_calls": 30, **evaluation}},
            }
        },
        raise_on_error=False,
    )


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> World:
    """v1 (logistic regression) evaluated and promoted; drift days against it; v2 (gradient boosting) on the
    same training set evaluated against v1 with an unreachable latency threshold and no accuracy limit (the run stops there)."""
    root = tmp_path_factory.mktemp("report")
    paths, home = DataPaths(root / "data"), root / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)
        patch.setenv("DAGSTER_HOME", str(home))
        frame = synthetic_training_set(n_rows=300, n_days=8, seed=2)
        FeatureStore(paths.root).write_training_set(frame, {"content_hash": frame_hash(frame)})
        with dg.DagsterInstance.from_config(str(home)) as instance:
            first = _training_run(
                paths,
                instance,
                [candidate_model, evaluation_report, promotion],
                {"model_type": "logistic_regression"},
                {},
            )
            assert first.success
            out = root / "after_first.json"
            assert main(["report", "--json", "--data-dir", str(paths.root), "-o", str(out)]) == 0
            after_first = json.loads(out.read_text())

            resources = {"data": DataDirResource(root=str(paths.root))}
            resources["mlflow"] = MlflowResource(data=resources["data"])
            current = synthetic_training_set(n_rows=300, n_days=1, seed=7)
            labelled = synthetic_training_set(n_rows=200, n_days=1, seed=17)
            write_day(paths, NO_DRIFT_DAY, current, labelled)
            write_day(paths, DRIFT_DAY, drifted(current), labelled)
            for day in (NO_DRIFT_DAY, DRIFT_DAY):
                ran = dg.materialize(
                    [drift_report],
                    partition_key=day,
                    instance=instance,
                    resources=resources,
                    run_config={"ops": {"drift_report": {"config": {"histograms": "none", "alert": False}}}},
                )
                assert ran.success

            second = _training_run(
                paths,
                instance,
                [candidate_model, evaluation_report],
                {"model_type": "hist_gradient_boosting", "hyperparameters": {"max_iter": 30}},
                {"max_p99_latency_ms": 0.0001, "max_accuracy_drop": 1.0},
            )
            assert not second.success  # the blocking p99_latency gate stopped the run
            checks = {
                c.check_name: c
                for c in second.get_asset_check_evaluations()
                if c.asset_key == dg.AssetKey("evaluation_report")
            }
        yield World(paths, home, after_first, first.run_id, second.run_id, checks)


@pytest.fixture
def in_world(world, monkeypatch) -> World:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("DAGSTER_HOME", str(world.home))
    return world


def _report(world: World, *extra: str) -> tuple[int, str]:
    out = world.paths.root.parent / f"report-{os.getpid()}-{len(extra)}.out"
    code = main(["report", "--data-dir", str(world.paths.root), "-o", str(out), *extra])
    return code, out.read_text()


def _version_metrics(tracking: TrackingConfig, version: int) -> dict[str, float]:
    """The holdout metrics MLflow logged when ``version`` was trained."""
    client = client_for(tracking)
    run = client.get_run(client.get_model_version(tracking.model_name, str(version)).run_id)
    return {m: run.data.metrics[f"holdout_{m}"] for m in METRICS}


@pytest.mark.slow
def test_report_puts_challenger_and_champion_side_by_side_as_mlflow_recorded_them(in_world):
    tracking = TrackingConfig.for_data_root(in_world.paths.root)
    client = client_for(tracking)
    champion = int(registry.alias_version(client, registry.CHAMPION).version)
    challenger = int(registry.alias_version(client, registry.CHALLENGER).version)
    assert (champion, challenger) == (1, 2)
    # both versions were trained on the same training set: the evaluation's shared holdout is the one each
    # run logged its holdout metrics on
    champ, chall = _version_metrics(tracking, champion), _version_metrics(tracking, challenger)

    code, markdown = _report(in_world, "--markdown")
    assert code == 0 and markdown.startswith(REPORT_MARKER)
    assert "Challenger v2 (against champion v1) FAILED 1 blocking quality gate(s): p99_latency" in markdown
    assert "| metric | champion v1 | challenger v2 | delta | challenger is |" in markdown
    for m in METRICS:
        delta = chall[m] - champ[m]
        direction = "lower" if m in ("log_loss", "brier") else "higher"
        verdict = (
            "same" if abs(delta) < 5e-5 else ("better" if (delta > 0) == (direction == "higher") else "worse")
        )
        row = f"| {m} ({direction} is better) | {champ[m]:.4f} | {chall[m]:.4f} | {delta:+.4f} | {verdict} |"
        assert row in markdown
    assert "(hist_gradient_boosting, staging)" in markdown and "(logistic_regression, production)" in markdown

    code, text = _report(in_world, "--json")
    data = json.loads(text)
    assert code == 0 and data["status"] == "failed" and data["failed_gates"] == ["p99_latency"]
    rows = {r["metric"]: r for r in data["comparison"]}
    for m in METRICS:
        assert rows[m]["champion"] == pytest.approx(champ[m], abs=1e-12)
        assert rows[m]["challenger"] == pytest.approx(chall[m], abs=1e-12)
    evaluation = json.loads((in_world.paths.reports / "evaluation_v2.json").read_text())
    assert rows["p99_latency_ms"]["challenger"] == evaluation["latency_ms"]["challenger"]["p99"]
    assert rows["p99_latency_ms"]["champion"] == evaluation["latency_ms"]["champion"]["p99"]
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
    for name, check in in_world.checks.items():
        skipped = check.metadata["skipped"].value
        expected = "skipped" if skipped else ("pass" if check.passed else "FAIL")
        assert gates[name]["status"] == expected, name
        assert gates[name]["detail"] == check.description
        if "measured" in check.metadata:
            assert gates[name]["measured"] == pytest.approx(check.metadata["measured"].value)
    assert gates["p99_latency"]["status"] == "FAIL" and gates["p99_latency"]["threshold"] == 0.0001
    assert gates["accuracy_vs_champion"]["status"] == "pass"  # judged: there is a champion
    _, markdown = _report(in_world, "--markdown")
    p99 = gates["p99_latency"]["measured"]
    assert f"| p99_latency | FAIL | {p99:.4f} | 0.0001 |" in markdown

    # without the instance the gates are recomputed from the saved evaluation at the default thresholds:
    # p99 passes 100 ms, the data gate is unknown, the other verdicts and values are the recorded ones
    code, text = _report(in_world, "--json", "--no-instance", "--fail-on-gate")
    recomputed = {g["name"]: g for g in json.loads(text)["gates"]}
    assert "recomputed from evaluation_v2.json" in json.loads(text)["gates_source"]
    assert recomputed["p99_latency"]["status"] == "pass" and recomputed["p99_latency"]["threshold"] == 100.0
    assert recomputed["training_data_valid"]["status"] == "unknown"
    for name in ("min_roc_auc", "bias", "test_coverage", "sanity"):
        assert recomputed[name]["status"] == gates[name]["status"], name
        assert recomputed[name]["measured"] == pytest.approx(gates[name]["measured"]), name
    accuracy = recomputed["accuracy_vs_champion"]  # the run allowed any drop; the default allows 0.02
    champion_accuracy = json.loads(text)["comparison"][0]["champion"]
    assert accuracy["measured"] == pytest.approx(gates["accuracy_vs_champion"]["measured"])
    assert accuracy["threshold"] == pytest.approx(champion_accuracy - 0.02)
    assert accuracy["status"] == ("pass" if accuracy["measured"] >= accuracy["threshold"] - 1e-12 else "FAIL")
    assert code == (1 if accuracy["status"] == "FAIL" else 0)


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

    report = build_model_report(in_world.paths.root, gate_lookup=unreachable)
    assert report.gates_source.startswith("recomputed from evaluation_v2.json")
    assert any("could not connect to the instance database" in n for n in report.notes)


@pytest.mark.slow
def test_drift_summary_shows_the_latest_days_against_the_champion(in_world):
    code, text = _report(in_world, "--json")
    days = json.loads(text)["drift"]
    assert [d["day"] for d in days] == [NO_DRIFT_DAY, DRIFT_DAY]
    for day in days:
        saved = json.loads((in_world.paths.reports / f"drift_report_{day['day']}.json").read_text())
        assert day["champion_version"] == 1 == saved["summary"]["champion_version"]
        assert day["drift_share"] == pytest.approx(saved["drift_share"])
        assert day["dataset_drift"] == saved["dataset_drift"]
        assert [f["feature"] for f in day["drifted"]] == [
            f["feature"] for f in saved["features"] if f["drifted"]
        ]
        assert day["estimated"]["accuracy"] == pytest.approx(saved["summary"]["estimated_accuracy"])
        assert day["realized"]["accuracy"] == pytest.approx(saved["summary"]["realized_accuracy"])
        assert day["realized_labels"] == saved["summary"]["realized_labels"] > 0
    calm, shifted = days
    assert not calm["dataset_drift"] and shifted["dataset_drift"]
    assert "logins_30d" in [f["feature"] for f in shifted["drifted"]]

    _, markdown = _report(in_world, "--markdown", "--drift-days", "1")
    assert f"Latest day {DRIFT_DAY} (champion v1, 300 rows): DATASET DRIFT" in markdown
    assert f"| {NO_DRIFT_DAY} |" not in markdown  # only the last day listed
    for f in shifted["drifted"]:
        assert f"| {f['feature']} | {f['test']} | {f['statistic']:.4f} |" in markdown
    realized = f"{shifted['realized']['accuracy']:.4f} ({shifted['realized_labels']} labels)"
    assert (
        f"| accuracy | {shifted['training']['accuracy']:.4f} | {shifted['estimated']['accuracy']:.4f} | {realized} |"
        in markdown
    )


@pytest.mark.slow
def test_first_model_is_judged_alone_then_shown_as_promoted(in_world):
    first = in_world.after_first
    assert first["status"] == "passed" and first["failed_gates"] == []
    assert first["evaluation"]["challenger_version"] == 1 and first["evaluation"]["champion_version"] is None
    assert all(r["champion"] is None and r["delta"] is None for r in first["comparison"])
    gates = {g["name"]: g["status"] for g in first["gates"]}
    assert gates["accuracy_vs_champion"] == "skipped" and gates["training_data_valid"] == "pass"
    assert first["gates_source"].endswith(in_world.first_run[:8])
    assert "v1 has been promoted since this evaluation: it is the champion now" in first["notes"]
    assert first["drift"] == []


def test_empty_data_dir_says_nothing_was_evaluated_and_creates_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    root = tmp_path / "data"
    root.mkdir()
    assert main(["report", "--data-dir", str(root), "--no-instance"]) == 0
    markdown = capsys.readouterr().out
    assert markdown.startswith(REPORT_MARKER)
    assert "No model has been trained and evaluated" in markdown
    assert "No quality gate has been evaluated." in markdown and "no MLflow store at" in markdown
    assert "No daily drift report" in markdown
    assert list(root.iterdir()) == []  # reading created no MLflow store

    assert main(["report", "--data-dir", str(root), "--no-instance", "--json", "--fail-on-gate"]) == 1
    data = json.loads(capsys.readouterr().out)
    assert data["status"] == "not_evaluated" and data["evaluation"] is None and data["gates"] == []


def test_report_reads_a_registry_without_evaluations_and_skips_unreadable_files(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    paths = DataPaths(tmp_path / "data")
    paths.reports.mkdir(parents=True)
    (paths.reports / "evaluation_v3.json").write_text("{not json")
    (paths.reports / "drift_report_2026-02-01.json").write_text("[]")
    report = build_model_report(paths.root)
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
