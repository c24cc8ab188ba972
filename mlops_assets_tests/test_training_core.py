"""Training core without MLflow: time split, pipelines, metrics, fairness, coverage, sanity, gates, alerts."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer

import numpy as np
import pytest
import skops.io as sio

from mlops_assets.training.alerts import AlertSink, gate_failure_alert, read_alerts
from mlops_assets.training.evaluate import (
    GoldenPair,
    evaluate,
    fairness_differences,
    group_rates,
)
from mlops_assets.training.gates import GATE_NAMES, GateThresholds, all_passed, evaluate_gates, failed_gates
from mlops_assets.training.metrics import classification_metrics
from mlops_assets.training.synthetic import CATEGORICAL_FEATURES, NUMERIC_FEATURES, synthetic_training_set
from mlops_assets.training.train import (
    MODEL_TYPES,
    TrainConfig,
    churn_scores,
    fit_model,
    model_inputs,
    skops_trusted_types,
    time_split,
)

FEATURES = {"numeric_features": NUMERIC_FEATURES, "categorical_features": CATEGORICAL_FEATURES}
FAST = TrainConfig(hyperparameters={"max_iter": 40}, seed=3)


@pytest.fixture(scope="module")
def data():
    df = synthetic_training_set(n_rows=600, n_days=10, seed=1)
    train, holdout = time_split(df, 0.25)
    good = fit_model(train, FAST, NUMERIC_FEATURES, CATEGORICAL_FEATURES)
    return df, train, holdout, good


class Inverted:
    """A model whose churn ranking is upside down."""

    def __init__(self, model):
        self.model = model

    def predict_proba(self, frame):
        p = self.model.predict_proba(frame)
        return p[:, ::-1]


class RegionBiased:
    """Flags every customer of one region as churning, whatever their behaviour."""

    def __init__(self, model, region="north"):
        self.model, self.region = model, region

    def predict_proba(self, frame):
        p = self.model.predict_proba(frame)[:, 1].copy()
        p[(frame["region"] == self.region).to_numpy()] = 0.99
        return np.column_stack([1 - p, p])


class Slow:
    """Adds a fixed delay to every call."""

    def __init__(self, model, delay_s=0.03):
        self.model, self.delay_s = model, delay_s

    def predict_proba(self, frame):
        time.sleep(self.delay_s)
        return self.model.predict_proba(frame)


def _report(challenger, champion, holdout, **kwargs):
    return evaluate(
        challenger,
        champion,
        holdout,
        **FEATURES,
        latency_calls=kwargs.pop("latency_calls", 20),
        min_group_size=kwargs.pop("min_group_size", 20),
        min_group_positives=kwargs.pop("min_group_positives", 5),
        **kwargs,
    )


def test_time_split_holds_out_the_latest_days_whole(data):
    df, train, holdout, _ = data
    assert len(train) + len(holdout) == len(df)
    assert train["label_timestamp"].max() < holdout["label_timestamp"].min()
    train_days = set(train["label_timestamp"].dt.floor("D"))
    holdout_days = set(holdout["label_timestamp"].dt.floor("D"))
    assert not train_days & holdout_days
    # the fewest latest days reaching 25% of rows: dropping the earliest holdout day falls short
    per_day = df["label_timestamp"].dt.floor("D").value_counts()
    earliest = min(holdout_days)
    assert len(holdout) >= 0.25 * len(df) > len(holdout) - per_day[earliest]


def test_time_split_needs_two_days():
    df = synthetic_training_set(n_rows=50, n_days=1)
    with pytest.raises(ValueError, match="at least two days"):
        time_split(df)


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_every_model_type_learns_and_survives_skops_round_trip(data, model_type):
    _, train, holdout, _ = data
    hp = {"hist_gradient_boosting": {"max_iter": 40}, "random_forest": {"n_estimators": 40}}.get(
        model_type, {}
    )
    model = fit_model(train, TrainConfig(model_type, hp, seed=1), NUMERIC_FEATURES, CATEGORICAL_FEATURES)
    x = model_inputs(holdout, NUMERIC_FEATURES, CATEGORICAL_FEATURES)
    x.loc[x.index[:5], "plan"] = "platinum"  # unseen category: ignored, not an error
    x.loc[x.index[5:10], "days_since_last_login"] = np.nan
    proba = churn_scores(model, x)
    assert classification_metrics(holdout["churned"], proba)["roc_auc"] > 0.65
    loaded = sio.loads(sio.dumps(model), trusted=skops_trusted_types(model))
    np.testing.assert_array_equal(churn_scores(loaded, x), proba)


def test_classification_metrics_match_hand_computation():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 200)
    p = np.clip(0.3 * y + rng.random(200) * 0.7, 1e-6, 1 - 1e-6)
    m = classification_metrics(y, p, threshold=0.5)
    pred = p >= 0.5
    tp, fp, fn = np.sum(pred & (y == 1)), np.sum(pred & (y == 0)), np.sum(~pred & (y == 1))
    assert m["accuracy"] == pytest.approx(np.mean(pred == y))
    assert m["precision"] == pytest.approx(tp / (tp + fp))
    assert m["recall"] == pytest.approx(tp / (tp + fn))
    assert m["f1"] == pytest.approx(2 * tp / (2 * tp + fp + fn))
    assert m["brier"] == pytest.approx(np.mean((p - y) ** 2))
    assert m["log_loss"] == pytest.approx(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))
    pos, neg = p[y == 1], p[y == 0]
    pairs = (pos[:, None] > neg[None, :]).mean() + 0.5 * (pos[:, None] == neg[None, :]).mean()
    assert m["roc_auc"] == pytest.approx(pairs)


def _brute_force_fairness(y, pred, groups, min_n, min_pos):
    rates, tprs = {}, {}
    for g in set(groups):
        idx = [i for i in range(len(y)) if groups[i] == g]
        if len(idx) >= min_n:
            rates[g] = sum(pred[i] for i in idx) / len(idx)
        pos = [i for i in idx if y[i] == 1]
        if len(pos) >= min_pos:
            tprs[g] = sum(pred[i] for i in pos) / len(pos)
    return max(rates.values()) - min(rates.values()), max(tprs.values()) - min(tprs.values())


def test_fairness_differences_match_brute_force():
    rng = np.random.default_rng(5)
    groups = list(rng.choice(["a", "b", "c", "tiny"], 400, p=[0.4, 0.3, 0.28, 0.02]))
    y = list(rng.integers(0, 2, 400))
    pred = list((rng.random(400) < np.where(np.array(groups) == "a", 0.7, 0.4)).astype(int))
    dpd, eod = fairness_differences(group_rates(np.array(y), np.array(pred), groups), 20, 5)
    ref_dpd, ref_eod = _brute_force_fairness(y, pred, groups, 20, 5)
    assert dpd == pytest.approx(ref_dpd)
    assert eod == pytest.approx(ref_eod)


def test_report_fairness_is_brute_force_of_the_models_predictions(data):
    _, _, holdout, good = data
    report = _report(good, None, holdout, challenger_version=1)
    pred = list(
        (churn_scores(good, model_inputs(holdout, NUMERIC_FEATURES, CATEGORICAL_FEATURES)) >= 0.5).astype(int)
    )
    y = list(holdout["churned"])
    for attr in ("age_group", "region"):
        row = report.fairness[(report.fairness["attribute"] == attr)].iloc[0]
        dpd, eod = _brute_force_fairness(y, pred, list(holdout[attr]), 20, 5)
        assert row["demographic_parity_difference"] == pytest.approx(dpd)
        assert row["equal_opportunity_difference"] == pytest.approx(eod)
    assert report.bias_score() == pytest.approx(
        report.fairness[["demographic_parity_difference", "equal_opportunity_difference"]].max().max()
    )


def test_good_model_passes_every_gate_without_champion(data, tmp_path):
    _, _, holdout, good = data
    report = _report(good, None, holdout, challenger_version=1)
    results = evaluate_gates(report, GateThresholds(max_bias_score=1.0), training_data_valid=True)
    assert [g.name for g in results] == list(GATE_NAMES)
    assert all_passed(results), [g.message for g in failed_gates(results)]
    accuracy_gate = results[0]
    assert accuracy_gate.skipped and "no champion" in accuracy_gate.message
    paths = report.save(tmp_path / "reports")
    assert all("evaluation" in p.name and p.stat().st_size > 0 for p in paths.values())
    text = paths["markdown"].read_text()
    assert "| roc_auc |" in text and "evaluation_v1_roc.png" in text


def test_degraded_challenger_fails_accuracy_gate_against_champion(data):
    df, train, holdout, good = data
    shuffled = train.assign(churned=np.random.default_rng(0).permutation(train["churned"].to_numpy()))
    degraded = fit_model(shuffled, FAST, NUMERIC_FEATURES, CATEGORICAL_FEATURES)
    report = _report(degraded, good, holdout, challenger_version=2, champion_version=1)
    results = {g.name: g for g in evaluate_gates(report)}
    gate = results["accuracy_vs_champion"]
    challenger_acc = report.metrics["challenger"]["accuracy"]
    champion_acc = report.metrics["champion"]["accuracy"]
    assert champion_acc - challenger_acc > 0.02
    assert not gate.passed
    assert f"{challenger_acc:.4f}" in gate.message and f"{champion_acc:.4f}" in gate.message
    assert "max_accuracy_drop 0.02" in gate.message
    # the same challenger is also below the absolute floor on its own
    alone = {
        g.name: g for g in evaluate_gates(_report(degraded, None, holdout), GateThresholds(min_roc_auc=0.6))
    }
    assert not alone["min_roc_auc"].passed and "min_roc_auc 0.6" in alone["min_roc_auc"].message


def test_biased_model_fails_bias_gate(data):
    _, _, holdout, good = data
    report = _report(RegionBiased(good), None, holdout)
    gate = {g.name: g for g in evaluate_gates(report)}["bias"]
    assert not gate.passed
    assert "region" in gate.message and "max_bias_score 0.25" in gate.message
    assert gate.measured == pytest.approx(report.bias_score()) and gate.measured > 0.25


def test_slow_model_fails_latency_gate(data):
    _, _, holdout, good = data
    report = _report(Slow(good, 0.03), None, holdout, latency_calls=10)
    gate = {g.name: g for g in evaluate_gates(report, GateThresholds(max_p99_latency_ms=20.0))}["p99_latency"]
    assert not gate.passed and gate.measured >= 30.0
    assert f"{gate.measured:.2f} ms" in gate.message and "max_p99_latency_ms 20.0" in gate.message


def test_inverted_model_fails_sanity(data):
    _, _, holdout, good = data
    report = _report(Inverted(good), None, holdout)
    assert report.golden and not any(g.passed for g in report.golden)
    gate = {g.name: g for g in evaluate_gates(report)}["sanity"]
    assert not gate.passed and "0 of 2" in gate.message
    # explicit golden pairs are honoured as given
    pair = GoldenPair("explicit", report_row(holdout, tickets=8.0), report_row(holdout, tickets=0.0))
    explicit = _report(good, None, holdout, golden_pairs=[pair])
    assert [g.name for g in explicit.golden] == ["explicit"] and explicit.golden[0].passed


def test_golden_tolerance_forgives_a_flat_pair_but_not_a_reversal():
    from mlops_assets.training.evaluate import GOLDEN_TOLERANCE, GoldenResult

    # the login-only pair of a real model (ROC AUC 0.84): nearly flat, slightly reversed
    flat = GoldenResult("inactive_vs_active_logins", 0.0372, 0.0400, GOLDEN_TOLERANCE)
    assert flat.passed
    assert not GoldenResult("strict", 0.0372, 0.0400).passed
    assert not GoldenResult("reversed", 0.03, 0.03 + GOLDEN_TOLERANCE + 1e-6, GOLDEN_TOLERANCE).passed
    assert not GoldenResult("tie", 0.04, 0.04).passed  # without tolerance a tie does not hold


def report_row(holdout, tickets):
    row = {c: float(holdout[c].median()) for c in NUMERIC_FEATURES}
    row |= {"plan": "basic", "region": "north", "tickets_30d": tickets, "logins_30d": 1.0}
    return row


def test_coverage_counts_incomplete_rows_and_missing_segments(data):
    _, _, holdout, good = data
    broken = holdout[holdout["region"] != "west"].copy()
    broken.loc[broken.index[:10], "plan"] = np.nan
    report = _report(good, None, broken)
    assert report.row_coverage == pytest.approx(1 - 10 / len(broken))
    assert "region=west" in report.uncovered_segments
    n_segments = 3 + 4 + 4  # plans, regions, age groups
    assert report.segment_coverage == pytest.approx(1 - len(report.uncovered_segments) / n_segments)
    gate = {g.name: g for g in evaluate_gates(report)}["test_coverage"]
    assert not gate.passed and "region=west" in gate.message and "min_test_coverage 0.95" in gate.message


def test_invalid_training_data_fails_its_gate(data):
    _, _, holdout, good = data
    gate = {g.name: g for g in evaluate_gates(_report(good, None, holdout), training_data_valid=False)}
    assert not gate["training_data_valid"].passed


class _Hook(BaseHTTPRequestHandler):
    received: list = []

    def do_POST(self):  # noqa: N802
        body = self.rfile.read(int(self.headers["Content-Length"]))
        _Hook.received.append(json.loads(body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args):
        pass


def test_alert_sink_writes_file_and_posts_webhook(tmp_path, data):
    _, _, holdout, good = data
    failed = failed_gates(evaluate_gates(_report(RegionBiased(good), None, holdout)))
    server = HTTPServer(("127.0.0.1", 0), _Hook)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        sink = AlertSink(tmp_path / "alerts" / "alerts.jsonl", f"http://127.0.0.1:{server.server_port}/hook")
        result = sink.send(gate_failure_alert(failed, model_name="churn-model", version=7))
    finally:
        server.shutdown()
    assert result.webhook_status == 204
    stored = read_alerts(tmp_path / "alerts" / "alerts.jsonl")
    assert len(stored) == 1 and stored[0]["kind"] == "quality_gate_failed"
    assert [g["name"] for g in stored[0]["details"]["gates"]] == [g.name for g in failed]
    assert _Hook.received[-1]["title"] == stored[0]["title"]
    # an unreachable webhook is reported, and the alert still lands in the file
    dead = AlertSink(tmp_path / "alerts" / "alerts.jsonl", "http://127.0.0.1:9/none", timeout_s=1)
    assert dead.send(gate_failure_alert(failed, model_name="churn-model", version=8)).webhook_error
    assert len(read_alerts(tmp_path / "alerts" / "alerts.jsonl")) == 2


def test_tracking_defaults_follow_data_root_and_environment(tmp_path, monkeypatch):
    from mlops_assets.training.tracking import TrackingConfig, sqlite_path

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    local = TrackingConfig.for_data_root(tmp_path)
    assert sqlite_path(local.tracking_uri) == tmp_path / "mlflow" / "mlflow.db"
    assert local.artifact_location == str(tmp_path / "mlflow" / "artifacts")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    server = TrackingConfig.for_data_root(tmp_path)
    assert server.tracking_uri == "http://127.0.0.1:5000" and server.artifact_location == ""
    assert sqlite_path(server.tracking_uri) is None
