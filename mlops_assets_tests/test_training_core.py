"""Training core without MLflow: the task, time split, estimators, metrics, baselines, fairness, coverage,
golden cases, the gates (with "not applicable"), their Dagster check results, alerts and tracking defaults."""

from __future__ import annotations

import dataclasses
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer

import numpy as np
import pandas as pd
import pytest
import skops.io as sio
import yaml
from sklearn import metrics as skm

from mlops_assets.spec.model import Gates, GoldenCase
from mlops_assets.training.alerts import AlertSink, gate_failure_alert, read_alerts
from mlops_assets.training.checks import gate_check_results
from mlops_assets.training.evaluate import CHALLENGER, coverage, evaluate, fairness_rows
from mlops_assets.training.gates import (
    FAIL,
    GATE_NAMES,
    NOT_APPLICABLE,
    PASS,
    all_passed,
    evaluate_gates,
    failed_gates,
)
from mlops_assets.training.metrics import baseline_scores, classification_metrics, regression_metrics
from mlops_assets.training.task import CLASSIFICATION, REGRESSION, ModelTask, select_inputs
from mlops_assets.training.train import (
    CLASSIFIERS,
    REGRESSORS,
    TrainConfig,
    fit_model,
    model_inputs,
    predict_scores,
    skops_trusted_types,
    time_split,
)
from mlops_assets_tests.conftest import BIKES_SPEC, CHURN_SPEC
from mlops_assets_tests.synthetic import (
    CATEGORICAL_FEATURES,
    NUMERIC_FEATURES,
    REGRESSION_CATEGORICAL,
    REGRESSION_NUMERIC,
    SYNTHETIC_REGRESSION_TASK,
    SYNTHETIC_TASK,
    synthetic_regression_set,
    synthetic_training_set,
)

TASK, REG_TASK = SYNTHETIC_TASK, SYNTHETIC_REGRESSION_TASK
ENTITY, TIME, LABEL = TASK.entity, TASK.time, TASK.label
FAST = TrainConfig(hyperparameters={"max_iter": 40}, seed=3)
LENIENT = Gates(max_bias_score=1.0, max_p99_latency_ms=10_000.0, max_latency_ratio=1_000.0)


def _fit(train, task=TASK, config=FAST):
    numeric, categorical = task.split_inputs(task.candidates)
    return fit_model(train, config, task, numeric, categorical)


def _scores(model, frame, task=TASK):
    numeric, categorical = task.split_inputs(task.candidates)
    return predict_scores(model, model_inputs(frame, numeric, categorical))


def _baselines(train, holdout, task=TASK):
    return baseline_scores(
        task.kind,
        train,
        holdout,
        task.target_values(train),
        task.target_values(holdout),
        entity=task.entity,
        time=task.time,
        observed=task.observed,
    )


def _report(challenger, champion, train, holdout, task=TASK, **kwargs):
    numeric, categorical = task.split_inputs(task.candidates)
    return evaluate(
        task,
        challenger,
        champion,
        train,
        holdout,
        numeric_features=numeric,
        categorical_features=categorical,
        latency_calls=kwargs.pop(
            "latency_calls", 3
        ),  # single-row calls are slow: only the latency test needs many
        min_group_size=kwargs.pop("min_group_size", 20),
        baselines=kwargs.pop("baselines", _baselines(train, holdout, task)),
        **kwargs,
    )


def _gates(report, gates=LENIENT, training_data_valid=True):
    return {g.name: g for g in evaluate_gates(report, gates, training_data_valid)}


def _shuffled(frame, label, seed=0):
    return frame.assign(**{label: np.random.default_rng(seed).permutation(frame[label].to_numpy())})


@pytest.fixture(scope="module")
def data():
    df = synthetic_training_set(n_rows=600, n_days=10, seed=1)
    train, holdout = time_split(df, 0.25, TIME, ENTITY)
    return df, train, holdout, _fit(train)


@pytest.fixture(scope="module")
def regression_data():
    df = synthetic_regression_set(n_entities=40, n_days=20, seed=5)
    train, holdout = time_split(df, 0.25, REG_TASK.time, REG_TASK.entity)
    return df, train, holdout, _fit(train, REG_TASK, TrainConfig(hyperparameters={"max_iter": 60}, seed=3))


class Inverted:
    """A model whose churn ranking is upside down."""

    def __init__(self, model):
        self.model = model

    def predict_proba(self, frame):
        return self.model.predict_proba(frame)[:, ::-1]


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

    def __init__(self, model, delay_s):
        self.model, self.delay_s = model, delay_s

    def predict_proba(self, frame):
        time.sleep(self.delay_s)
        return self.model.predict_proba(frame)


# ----------------------------------------------------------------------------------------- the task


def _spec_features(path):
    """Every feature name the spec file declares (read as plain YAML, not through the engine)."""
    raw = yaml.safe_load(path.read_text())
    return [name for view in raw["feature_views"].values() for name in view["features"]]


def test_task_of_the_churn_example_keeps_the_sensitive_attribute_out_of_the_inputs(churn):
    task = ModelTask.from_project(churn)
    assert (task.kind, task.entity, task.time, task.label, task.observed) == (
        CLASSIFICATION,
        "customer_id",
        "label_timestamp",
        "churned",
        "label_timestamp",
    )
    assert task.model_name == "churn-model" and task.metric == "roc_auc" and task.higher_is_better
    assert task.sensitive == ("age_group",) and "age_group" not in task.candidates
    assert list(task.candidates) == [f for f in _spec_features(CHURN_SPEC) if f != "age_group"]
    assert task.categorical == {"plan", "region"}
    assert task.segments == ("plan", "region", "age_group")
    assert task.train_from is None


def test_task_of_the_bikes_example_is_a_regression_read_at_the_week_start(bikes):
    task = ModelTask.from_project(bikes)
    assert (task.kind, task.entity, task.time, task.label, task.observed) == (
        REGRESSION,
        "station_id",
        "as_of",
        "trips_next_7d",
        "observed_at",
    )
    assert task.metric == "mae" and not task.higher_is_better
    assert list(task.candidates) == _spec_features(BIKES_SPEC) and task.sensitive == ()
    assert task.categorical == {"district"}
    assert task.train_from == pd.Timestamp("2026-03-29", tz="UTC")  # partitions.start + warmup 28d
    frame = pd.DataFrame(
        {"as_of": pd.to_datetime(["2026-03-28", "2026-03-29", "2026-04-02"], utc=True), "x": [1, 2, 3]}
    )
    assert task.trainable(frame)["x"].tolist() == [2, 3]
    with pytest.raises(ValueError, match="warm-up"):
        task.trainable(frame.iloc[:1])


def test_target_values_are_0_1_or_float_and_a_non_binary_label_names_its_values():
    frame = pd.DataFrame({LABEL: ["yes", "no", "yes"]})
    assert dataclasses.replace(TASK, positive_class="yes").target_values(frame).tolist() == [1, 0, 1]
    with pytest.raises(ValueError, match="positive_class"):
        TASK.target_values(frame)
    assert TASK.target_values(pd.DataFrame({LABEL: [True, False]})).tolist() == [1, 0]
    with pytest.raises(ValueError, match=r"found \['0', '1', '2'\]"):
        TASK.target_values(pd.DataFrame({LABEL: [0, 1, 2]}))
    with pytest.raises(ValueError, match="1 rows have no value"):
        TASK.target_values(pd.DataFrame({LABEL: [0, None]}))
    values = REG_TASK.target_values(pd.DataFrame({"demand": [1, 2]}))
    assert values.dtype == np.float64 and values.tolist() == [1.0, 2.0]


def test_select_inputs_drops_absent_all_null_and_constant_features_with_the_reason(data):
    _, train, _, _ = data
    frame = train.assign(always_null=np.nan, constant=7.0, flag="x", no_plan=pd.Series([None] * len(train)))
    task = dataclasses.replace(
        TASK,
        candidates=(*TASK.candidates, "always_null", "constant", "flag", "no_plan", "absent"),
        categorical=TASK.categorical | {"flag", "no_plan"},
    )
    selection = select_inputs(task, frame)
    assert selection.dropped == {
        "always_null": "all null on the training rows",
        "constant": "constant on the training rows (always 7.0)",
        "flag": "constant on the training rows (always 'x')",
        "no_plan": "all null on the training rows",
        "absent": "not in the training set",
    }
    assert selection.numeric == NUMERIC_FEATURES and selection.categorical == CATEGORICAL_FEATURES
    nothing = dataclasses.replace(TASK, candidates=("always_null", "absent"))
    with pytest.raises(ValueError, match="no usable model input: always_null: all null"):
        select_inputs(nothing, frame)


# ----------------------------------------------------------------------------------------- split, estimators


def test_time_split_holds_out_the_latest_days_whole(data):
    df, train, holdout, _ = data
    assert len(train) + len(holdout) == len(df)
    assert train[TIME].max() < holdout[TIME].min()
    train_days = set(train[TIME].dt.floor("D"))
    holdout_days = set(holdout[TIME].dt.floor("D"))
    assert not train_days & holdout_days
    # the fewest latest days reaching 25% of rows: dropping the earliest holdout day falls short
    per_day = df[TIME].dt.floor("D").value_counts()
    assert len(holdout) >= 0.25 * len(df) > len(holdout) - per_day[min(holdout_days)]
    for part in (train, holdout):  # ordered by time then entity, whatever order the input had
        assert part.equals(part.sort_values([TIME, ENTITY]).reset_index(drop=True))
    shuffled = df.sample(frac=1.0, random_state=0)
    again = time_split(shuffled, 0.25, TIME, ENTITY)
    assert again[0].equals(train) and again[1].equals(holdout)


def test_time_split_needs_rows_on_two_days():
    df = synthetic_training_set(n_rows=50, n_days=1)
    with pytest.raises(ValueError, match="at least two days"):
        time_split(df, 0.2, TIME, ENTITY)
    with pytest.raises(ValueError, match="empty"):
        time_split(df.iloc[:0], 0.2, TIME, ENTITY)


def _hyperparameters(model_type):
    return {"hist_gradient_boosting": {"max_iter": 40}, "random_forest": {"n_estimators": 40}}.get(
        model_type, {}
    )


@pytest.mark.parametrize("model_type", CLASSIFIERS)
def test_every_classifier_learns_and_survives_a_skops_round_trip(data, model_type):
    _, train, holdout, _ = data
    model = _fit(train, config=TrainConfig(model_type, _hyperparameters(model_type), seed=1))
    x = model_inputs(holdout, NUMERIC_FEATURES, CATEGORICAL_FEATURES)
    x.loc[x.index[:5], "plan"] = "platinum"  # unseen category: ignored, not an error
    x.loc[x.index[5:10], "days_since_last_login"] = np.nan
    proba = predict_scores(model, x)
    assert ((proba >= 0) & (proba <= 1)).all()
    assert skm.roc_auc_score(holdout[LABEL], proba) > 0.65
    loaded = sio.loads(sio.dumps(model), trusted=skops_trusted_types(model))
    np.testing.assert_array_equal(predict_scores(loaded, x), proba)


@pytest.mark.parametrize("model_type", REGRESSORS)
def test_every_regressor_learns_and_survives_a_skops_round_trip(regression_data, model_type):
    _, train, holdout, _ = regression_data
    model = _fit(train, REG_TASK, TrainConfig(model_type, _hyperparameters(model_type), seed=1))
    assert not hasattr(model, "predict_proba")
    x = model_inputs(holdout, REGRESSION_NUMERIC, REGRESSION_CATEGORICAL)
    x.loc[x.index[:5], "zone"] = "z"  # unseen
    pred = predict_scores(model, x)
    assert skm.r2_score(holdout["demand"], pred) > 0.6
    loaded = sio.loads(sio.dumps(model), trusted=skops_trusted_types(model))
    np.testing.assert_array_equal(predict_scores(loaded, x), pred)


def test_the_seed_makes_training_reproducible(data):
    _, train, holdout, _ = data
    forest = {"n_estimators": 20, "max_features": 0.5}
    a, b, c = (_fit(train, config=TrainConfig("random_forest", forest, seed=s)) for s in (11, 11, 12))
    np.testing.assert_array_equal(_scores(a, holdout), _scores(b, holdout))
    assert not np.array_equal(_scores(a, holdout), _scores(c, holdout))  # the seed is what fixes the result


def test_an_unknown_estimator_or_holdout_share_is_refused():
    with pytest.raises(ValueError, match="model_type must be one of"):
        TrainConfig("xgboost")
    with pytest.raises(ValueError, match="holdout_fraction"):
        TrainConfig(holdout_fraction=1.0)


# ----------------------------------------------------------------------------------------- metrics, baselines


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
    assert m["base_rate"] == pytest.approx(y.mean())
    pos, neg = p[y == 1], p[y == 0]
    pairs = (pos[:, None] > neg[None, :]).mean() + 0.5 * (pos[:, None] == neg[None, :]).mean()
    assert m["roc_auc"] == pytest.approx(pairs)
    # average precision: the precision at the rank of each positive, averaged (scores have no ties)
    order = np.argsort(-p)
    hits = y[order] == 1
    precision_at = np.cumsum(hits) / np.arange(1, len(y) + 1)
    assert m["pr_auc"] == pytest.approx(precision_at[hits].mean())


def test_regression_metrics_match_hand_computation():
    rng = np.random.default_rng(1)
    y = rng.gamma(3.0, 5.0, 300) + 1.0
    pred = y + rng.normal(0.0, 2.0, 300)
    m = regression_metrics(y, pred)
    assert m["mae"] == pytest.approx(np.mean(np.abs(y - pred)))
    assert m["rmse"] == pytest.approx(np.sqrt(np.mean((y - pred) ** 2)))
    assert m["r2"] == pytest.approx(1 - np.sum((y - pred) ** 2) / np.sum((y - y.mean()) ** 2))
    assert m["mape"] == pytest.approx(np.mean(np.abs(y - pred) / np.abs(y)))
    assert m["target_mean"] == pytest.approx(y.mean())
    assert np.isnan(regression_metrics(np.array([0.0, 2.0]), np.array([1.0, 2.0]))["mape"])  # a true 0


def test_last_value_baseline_uses_only_labels_observed_strictly_before_the_row():
    """Weekly-style labels known ``delay`` days after their time: the last value a prediction at time t may use
    is the newest label observed before t, not the previous row's label (which is not known yet)."""
    rng = np.random.default_rng(4)
    start, delay, n_days = pd.Timestamp("2026-03-01 06:00", tz="UTC"), pd.Timedelta(days=5), 30
    rows = []
    for entity in range(6):
        walk = 50.0 + np.cumsum(rng.normal(0.0, 3.0, n_days))  # persistent: the latest label is informative
        for d in range(n_days):
            rows.append((entity, start + pd.Timedelta(days=d), walk[d]))
    for d in range(26, n_days):  # a station that opened late: no label known for its first holdout rows
        rows.append((99, start + pd.Timedelta(days=d), 70.0 + d))
    frame = pd.DataFrame(rows, columns=["station_id", "as_of", "demand"])
    frame["observed_at"] = frame["as_of"] + delay  # day d - 5 is observed exactly at day d: not before it
    train, holdout = time_split(frame, 0.3, "as_of", "station_id")
    y_train = REG_TASK.target_values(train)
    scores = _baselines(train, holdout, REG_TASK)

    everything = pd.concat([train, holdout], ignore_index=True)
    honest, leaky = [], []
    for row in holdout.itertuples():
        mine = everything[everything["station_id"] == row.station_id]
        known = mine[mine["observed_at"] < row.as_of].sort_values("observed_at")
        honest.append(known["demand"].iloc[-1] if len(known) else y_train.mean())
        earlier = mine[mine["as_of"] < row.as_of].sort_values("as_of")
        leaky.append(earlier["demand"].iloc[-1] if len(earlier) else y_train.mean())
    np.testing.assert_allclose(scores["last_value"], honest)
    np.testing.assert_allclose(scores["mean"], np.full(len(holdout), y_train.mean()))
    assert (holdout["station_id"] == 99).sum() == 4 and (
        scores["last_value"][holdout["station_id"] == 99]
    ).tolist() == [pytest.approx(y_train.mean())] * 4  # its first label is observed after the holdout ends
    y = holdout["demand"].to_numpy()
    # the case discriminates: a baseline peeking at labels not yet known would look far better
    assert np.mean(np.abs(y - np.array(leaky))) < 0.7 * np.mean(np.abs(y - np.array(honest)))


def test_classification_baseline_is_the_training_base_rate(data):
    _, train, holdout, _ = data
    scores = _baselines(train, holdout)
    assert list(scores) == ["prior"]
    np.testing.assert_allclose(scores["prior"], np.full(len(holdout), train[LABEL].mean()))


# ----------------------------------------------------------------------------------------- fairness, coverage


def _brute_force_fairness(y, pred, groups, min_n, min_pos):
    rates, tprs = {}, {}
    for g in set(groups):
        idx = [i for i in range(len(y)) if groups[i] == g]
        if len(idx) < min_n:
            continue
        rates[g] = sum(pred[i] for i in idx) / len(idx)
        pos = [i for i in idx if y[i] == 1]
        if len(pos) >= min_pos:
            tprs[g] = sum(pred[i] for i in pos) / len(pos)
    dpd = max(rates.values()) - min(rates.values())
    eod = max(tprs.values()) - min(tprs.values()) if len(tprs) >= 2 else None
    return dpd, eod


def test_fairness_score_is_the_larger_brute_force_difference():
    rng = np.random.default_rng(5)
    groups = list(rng.choice(["a", "b", "c", "tiny"], 400, p=[0.4, 0.3, 0.28, 0.02]))
    y = rng.integers(0, 2, 400)
    scores = np.where(np.array(groups) == "a", 0.45, 0.0) + rng.random(400) * 0.6
    pred = list((scores >= 0.5).astype(int))
    row = fairness_rows(TASK, CHALLENGER, y, scores, pd.Series(groups), "g", 20, min_group_positives=5)
    dpd, eod = _brute_force_fairness(list(y), pred, groups, 20, 5)
    assert row["groups"] == 3  # "tiny" has fewer than 20 rows
    assert row["score"] == pytest.approx(max(dpd, eod))
    assert f"demographic parity difference {dpd:.4g}" in row["detail"]
    # too few positives per group for equal opportunity: the parity difference alone
    alone = fairness_rows(TASK, CHALLENGER, y, scores, pd.Series(groups), "g", 20, min_group_positives=1000)
    assert alone["score"] == pytest.approx(dpd)


def test_regression_fairness_is_the_spread_of_group_errors_relative_to_the_overall_error():
    rng = np.random.default_rng(6)
    groups = pd.Series(rng.choice(["x", "y", "z"], 300))
    y = rng.normal(10.0, 2.0, 300)
    pred = y + rng.normal(0.0, np.where(groups == "x", 3.0, 1.0))
    row = fairness_rows(REG_TASK, CHALLENGER, y, pred, groups, "zone", 50)
    errors = np.abs(y - pred)
    mae = {g: errors[(groups == g).to_numpy()].mean() for g in ("x", "y", "z")}
    assert row["score"] == pytest.approx((max(mae.values()) - min(mae.values())) / errors.mean())


def test_report_fairness_is_brute_force_of_the_models_predictions(data):
    _, train, holdout, good = data
    task = dataclasses.replace(TASK, sensitive=("age_group", "region"))
    report = _report(good, None, train, holdout, task)
    pred = list((_scores(good, holdout) >= 0.5).astype(int))
    y = list(holdout[LABEL])
    expected = {}
    for attr in ("age_group", "region"):
        dpd, eod = _brute_force_fairness(y, pred, list(holdout[attr]), 20, 20)
        expected[attr] = dpd if eod is None else max(dpd, eod)
        row = report.fairness[report.fairness["attribute"] == attr].iloc[0]
        assert row["score"] == pytest.approx(expected[attr])
    assert report.bias_score() == pytest.approx(max(expected.values()))


def test_bias_is_not_applicable_with_fewer_than_two_groups_large_enough_and_blocks_nothing(data):
    _, train, holdout, good = data
    sizes = holdout["age_group"].value_counts()
    assert sizes.iloc[0] > sizes.iloc[1]
    for min_size, large in ((int(sizes.iloc[0]), 1), (len(holdout) + 1, 0)):
        report = _report(good, None, train, holdout, min_group_size=min_size)
        gates = _gates(report)
        gate = gates["bias"]
        assert gate.status == NOT_APPLICABLE and gate.passed and not gate.applies
        assert gate.measured is None and report.bias_score() is None
        assert f"{len(sizes)} group(s), {large} with at least {min_size} rows" in gate.message
        assert gate.message.startswith("not applicable")
        assert all_passed(gates.values())
    no_attribute = _report(good, None, train, holdout, dataclasses.replace(TASK, sensitive=()))
    gate = _gates(no_attribute)["bias"]
    assert gate.status == NOT_APPLICABLE and "No sensitive attributes declared" in gate.message


def test_coverage_counts_unscored_rows_and_unseen_segments(data):
    _, train, holdout, good = data
    scores = _scores(good, holdout)
    scores[:10] = np.nan
    rows, segments, uncovered, checked = coverage(scores, holdout, train, ["plan", "region"])
    assert rows == pytest.approx(1 - 10 / len(holdout))
    assert (segments, uncovered, checked) == (1.0, [], 7)

    no_west = holdout[holdout["region"] != "west"].reset_index(drop=True)
    report = _report(good, None, train, no_west)
    assert report.row_coverage == 1.0 and report.uncovered_segments == ["region=west"]
    n_segments = 3 + 4 + 4  # plans, regions, age groups seen in the training rows
    assert report.segments_checked == n_segments
    assert report.segment_coverage == pytest.approx(1 - 1 / n_segments)
    gate = _gates(report)["test_coverage"]
    assert gate.status == FAIL and gate.measured == pytest.approx(1 - 1 / n_segments)
    assert "region=west" in gate.message and "min_test_coverage 0.95" in gate.message


# ----------------------------------------------------------------------------------------- gates


def test_good_model_passes_every_applicable_gate_without_champion(data, tmp_path):
    _, train, holdout, good = data
    report = _report(good, None, train, holdout, challenger_version=1)
    results = evaluate_gates(report, LENIENT, training_data_valid=True)
    assert [g.name for g in results] == list(GATE_NAMES)
    assert all_passed(results), [g.message for g in failed_gates(results)]
    status = {g.name: g.status for g in results}
    assert status == {
        "beats_baseline": PASS,
        "metric_vs_champion": NOT_APPLICABLE,  # no champion yet
        "overfitting": NOT_APPLICABLE,  # the spec sets no max_overfit_gap
        "p99_latency": PASS,
        "bias": PASS,
        "test_coverage": PASS,
        "sanity": NOT_APPLICABLE,  # no golden cases
        "training_data_valid": PASS,
    }
    gates = {g.name: g for g in results}
    assert gates["metric_vs_champion"].message == "not applicable: no champion yet"
    assert "gates.golden_cases" in gates["sanity"].message
    paths = report.save(tmp_path / "reports")
    assert set(paths) == {"markdown", "json", "roc", "calibration"}
    assert all(p.name.startswith("evaluation_v1") and p.stat().st_size > 0 for p in paths.values())
    text = paths["markdown"].read_text()
    assert "| roc_auc |" in text and "evaluation_v1_roc.png" in text and "No champion yet" in text
    saved = json.loads(paths["json"].read_text())
    proba = _scores(good, holdout)
    assert saved["summary"]["challenger_roc_auc"] == pytest.approx(skm.roc_auc_score(holdout[LABEL], proba))
    assert saved["summary"]["baseline_prior_log_loss"] == pytest.approx(
        skm.log_loss(holdout[LABEL], np.full(len(holdout), train[LABEL].mean()))
    )


def test_a_model_trained_on_shuffled_labels_fails_beats_baseline_while_a_good_one_passes(data):
    _, train, holdout, good = data
    noise = _fit(_shuffled(train, LABEL), config=TrainConfig(hyperparameters={"max_iter": 100}, seed=3))
    y = holdout[LABEL].to_numpy()
    prior = np.full(len(holdout), train[LABEL].mean())
    for model, verdict in ((good, PASS), (noise, FAIL)):
        proba = _scores(model, holdout)
        margin = min(
            skm.log_loss(y, prior) - skm.log_loss(y, proba),
            skm.brier_score_loss(y, prior) - skm.brier_score_loss(y, proba),
        )
        gate = _gates(_report(model, None, train, holdout))["beats_baseline"]
        assert gate.status == verdict and gate.measured == pytest.approx(margin)
        assert (margin > 0) == (verdict == PASS)
        assert "vs prior" in gate.message and "min_baseline_improvement 0.0" in gate.message
    # an improvement required above what the good model achieves fails it too
    report = _report(good, None, train, holdout)
    margin = _gates(report)["beats_baseline"].measured
    assert _gates(report, Gates(min_baseline_improvement=margin + 1e-6))["beats_baseline"].status == FAIL


def test_a_regression_model_reports_mae_rmse_r2_and_beats_the_mean_and_last_value(regression_data, tmp_path):
    _, train, holdout, good = regression_data
    report = _report(good, None, train, holdout, REG_TASK, challenger_version=4)
    y, pred = holdout["demand"].to_numpy(), _scores(good, holdout, REG_TASK)
    challenger = report.metrics[CHALLENGER]
    assert challenger["mae"] == pytest.approx(np.mean(np.abs(y - pred)))
    assert challenger["rmse"] == pytest.approx(np.sqrt(np.mean((y - pred) ** 2)))
    assert challenger["r2"] == pytest.approx(1 - np.sum((y - pred) ** 2) / np.sum((y - y.mean()) ** 2))
    assert set(report.baselines) == {"mean", "last_value"}
    mean_mae = np.mean(np.abs(y - train["demand"].mean()))
    assert report.baselines["mean"]["mae"] == pytest.approx(mean_mae)
    gates = _gates(report)
    gate = gates["beats_baseline"]
    expected = min(mean_mae, report.baselines["last_value"]["mae"]) - challenger["mae"]
    assert gate.status == PASS and gate.measured == pytest.approx(expected) and expected > 0
    assert "vs mean" in gate.message and "vs last_value" in gate.message
    assert gates["bias"].status == NOT_APPLICABLE
    paths = report.save(tmp_path)
    assert set(paths) == {"markdown", "json", "residuals", "predicted_vs_actual"}
    text = paths["markdown"].read_text()
    assert "| mae |" in text and "| r2 |" in text and "lower is better" in text

    noise = _fit(_shuffled(train, "demand"), REG_TASK)
    assert _gates(_report(noise, None, train, holdout, REG_TASK))["beats_baseline"].status == FAIL


def test_a_worse_challenger_fails_metric_vs_champion_in_the_metrics_direction(data, regression_data):
    _, train, holdout, good = data
    degraded = _fit(_shuffled(train, LABEL))
    report = _report(degraded, good, train, holdout, challenger_version=2, champion_version=1)
    gate = _gates(report)["metric_vs_champion"]
    chall, champ = report.metrics["challenger"]["roc_auc"], report.metrics["champion"]["roc_auc"]
    assert champ - chall > 0.02 and gate.measured == pytest.approx(champ - chall)
    assert gate.status == FAIL
    assert f"challenger {chall:.4g} vs champion {champ:.4g}" in gate.message
    assert "max_metric_drop 0.02" in gate.message
    # the other way round the drop is negative: it passes
    assert _gates(_report(good, degraded, train, holdout))["metric_vs_champion"].status == PASS

    _, rtrain, rholdout, rgood = (
        regression_data  # MAE: lower is better, the drop is challenger minus champion
    )
    noise = _fit(_shuffled(rtrain, "demand"), REG_TASK)
    report = _report(noise, rgood, rtrain, rholdout, REG_TASK)
    gate = _gates(report, Gates(max_metric_drop=0.5))["metric_vs_champion"]
    drop = report.metrics["challenger"]["mae"] - report.metrics["champion"]["mae"]
    assert drop > 0.5 and gate.measured == pytest.approx(drop) and gate.status == FAIL


def test_overfitting_is_gated_only_when_the_spec_sets_a_limit(data):
    _, train, holdout, _ = data
    forest = _fit(train, config=TrainConfig("random_forest", {"n_estimators": 40}, seed=1))
    report = _report(forest, None, train, holdout)
    gap = skm.roc_auc_score(train[LABEL], _scores(forest, train)) - skm.roc_auc_score(
        holdout[LABEL], _scores(forest, holdout)
    )
    assert gap > 0.1  # a full-depth forest memorizes its training rows
    reported = _gates(report)["overfitting"]
    assert reported.status == NOT_APPLICABLE and reported.measured == pytest.approx(gap)
    assert "reported only" in reported.message
    gated = _gates(report, Gates(max_overfit_gap=0.05))["overfitting"]
    assert (
        gated.status == FAIL
        and gated.measured == pytest.approx(gap)
        and "max_overfit_gap 0.05" in gated.message
    )
    assert _gates(report, Gates(max_overfit_gap=gap + 0.01))["overfitting"].status == PASS


def test_biased_model_fails_bias_gate(data):
    _, train, holdout, good = data
    task = dataclasses.replace(TASK, sensitive=("age_group", "region"))
    report = _report(RegionBiased(good), None, train, holdout, task)
    gate = _gates(report, Gates())["bias"]
    assert gate.status == FAIL
    assert "worst attribute region" in gate.message and "max_bias_score 0.25" in gate.message
    assert gate.measured == pytest.approx(report.bias_score()) and gate.measured > 0.25


def test_slow_model_fails_latency_gate_alone_and_against_the_champion(data):
    _, train, holdout, good = data
    report = _report(Slow(good, 0.1), good, train, holdout, latency_calls=5)
    latency = report.latency_ms
    assert latency["challenger"]["robust_p99"] >= 100.0 and latency["challenger"]["n"] == 15
    assert latency["champion"]["n"] == 15  # both measured, interleaved, on the same rows
    gate = _gates(report, Gates(max_p99_latency_ms=20.0))["p99_latency"]
    assert gate.status == FAIL and gate.measured == latency["challenger"]["robust_p99"]
    assert f"{gate.measured:.4g} ms > max_p99_latency_ms 20.0" in gate.message
    # within the absolute limit, but more than max_latency_ratio times the champion's (the champion needs less
    # than the 100 ms the challenger sleeps: true even on a loaded machine)
    ratio = latency["challenger"]["robust_p99"] / latency["champion"]["robust_p99"]
    relative = _gates(report, Gates(max_p99_latency_ms=10_000.0, max_latency_ratio=1.5))["p99_latency"]
    assert ratio > 1.5 and relative.status == FAIL
    assert f"{ratio:.4g}x the champion's" in relative.message and "max_latency_ratio 1.5" in relative.message
    assert _gates(report, Gates(max_p99_latency_ms=10_000.0, max_latency_ratio=ratio + 1))[
        "p99_latency"
    ].passed


def _customer(**overrides):
    row = {
        "logins_30d": 20.0,
        "total_purchases_30d": 5.0,
        "total_spend_30d": 200.0,
        "avg_order_value_30d": 40.0,
        "days_since_last_login": 1.0,
        "tickets_30d": 0.0,
        "account_age_days": 900.0,
        "plan": "premium",
        "region": "north",
    }
    return row | overrides


CALM = _customer()
RISKY = _customer(
    logins_30d=0.0,
    total_purchases_30d=0.0,
    total_spend_30d=0.0,
    avg_order_value_30d=None,
    days_since_last_login=None,
    tickets_30d=6.0,
    plan="basic",
)
GOLDEN = (
    GoldenCase(name="engaged_customer", features=CALM, expect_max=0.3),
    GoldenCase(
        name="silent_unhappy_customer", features=RISKY, expect_min=0.6, higher_than="engaged_customer"
    ),
)


def test_golden_cases_pass_for_a_sensible_model_and_fail_when_an_expectation_breaks(data):
    _, train, holdout, good = data
    report = _report(good, None, train, holdout, golden_cases=GOLDEN)
    assert [g.passed for g in report.golden] == [True, True]
    scores = predict_scores(
        good, model_inputs(pd.DataFrame([CALM, RISKY]), NUMERIC_FEATURES, CATEGORICAL_FEATURES)
    )
    assert [g.score for g in report.golden] == pytest.approx(scores.tolist())
    gate = _gates(report)["sanity"]
    assert gate.status == PASS and "2 of 2 golden cases" in gate.message

    inverted = _gates(_report(Inverted(good), None, train, holdout, golden_cases=GOLDEN))["sanity"]
    assert inverted.status == FAIL and "0 of 2" in inverted.message
    assert "failed: engaged_customer, silent_unhappy_customer" in inverted.message

    strict = (*GOLDEN, GoldenCase(name="engaged_never_leaves", features=CALM, expect_max=1e-9))
    report = _report(good, None, train, holdout, golden_cases=strict)
    gate = _gates(report)["sanity"]
    assert [g.passed for g in report.golden] == [True, True, False]
    assert (
        gate.status == FAIL and "2 of 3" in gate.message and "(failed: engaged_never_leaves)" in gate.message
    )
    assert gate.measured == 2.0 and gate.threshold == 3.0


def test_invalid_training_data_fails_its_gate(data):
    _, train, holdout, good = data
    gates = _gates(_report(good, None, train, holdout), training_data_valid=False)
    assert gates["training_data_valid"].status == FAIL and not all_passed(gates.values())


def test_every_gate_becomes_a_dagster_check_result_not_applicable_ones_passed_with_the_reason(data):
    import dagster as dg

    _, train, holdout, good = data
    task = dataclasses.replace(TASK, sensitive=("region",))
    results = evaluate_gates(_report(RegionBiased(good), None, train, holdout, task), Gates())
    checks = gate_check_results(results, 3, "synthetic-churn")
    not_applicable = {g.name for g in results if g.status == NOT_APPLICABLE}
    assert {"metric_vs_champion", "sanity"} <= not_applicable
    assert [c.check_name for c in checks] == [g.name for g in results]  # every declared gate, in order
    for check, gate in zip(checks, results, strict=True):
        assert check.passed == (gate.status != FAIL) and check.severity == dg.AssetCheckSeverity.ERROR
        assert check.description == gate.message
        assert check.metadata["challenger_version"].value == 3
        assert check.metadata["status"].value == gate.status
        if gate.measured is not None:
            assert check.metadata["measured"].value == pytest.approx(gate.measured, abs=1e-6)
        assert ("reason" in check.metadata) == (gate.name in not_applicable)
    by_name = {c.check_name: c for c in checks}
    assert not by_name["bias"].passed
    champion = by_name["metric_vs_champion"]
    assert champion.passed and champion.metadata["status"].value == "not applicable"
    assert champion.metadata["reason"].value == "no champion yet"
    assert "no golden cases declared" in by_name["sanity"].metadata["reason"].value


# ----------------------------------------------------------------------------------------- alerts, tracking


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
    _, train, holdout, good = data
    task = dataclasses.replace(TASK, sensitive=("region",))
    failed = failed_gates(evaluate_gates(_report(RegionBiased(good), None, train, holdout, task)))
    assert "bias" in [g.name for g in failed]
    server = HTTPServer(("127.0.0.1", 0), _Hook)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        sink = AlertSink(tmp_path / "alerts" / "alerts.jsonl", f"http://127.0.0.1:{server.server_port}/hook")
        result = sink.send(gate_failure_alert(failed, model_name="synthetic-churn", version=7))
    finally:
        server.shutdown()
    assert result.webhook_status == 204
    stored = read_alerts(tmp_path / "alerts" / "alerts.jsonl")
    assert len(stored) == 1 and stored[0]["kind"] == "quality_gate_failed"
    assert [g["name"] for g in stored[0]["details"]["gates"]] == [g.name for g in failed]
    assert stored[0]["details"]["gates"][0]["measured"] == pytest.approx(failed[0].measured)
    assert _Hook.received[-1]["title"] == stored[0]["title"]
    # an unreachable webhook is reported, and the alert still lands in the file
    dead = AlertSink(tmp_path / "alerts" / "alerts.jsonl", "http://127.0.0.1:9/none", timeout_s=1)
    assert dead.send(gate_failure_alert(failed, model_name="synthetic-churn", version=8)).webhook_error
    assert len(read_alerts(tmp_path / "alerts" / "alerts.jsonl")) == 2


def test_tracking_defaults_follow_data_root_and_environment(tmp_path, monkeypatch, churn):
    from mlops_assets.training.tracking import TrackingConfig, sqlite_path

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    local = TrackingConfig.for_data_root(tmp_path, model_name="m", experiment_name="e")
    assert sqlite_path(local.tracking_uri) == tmp_path / "mlflow" / "mlflow.db"
    assert local.artifact_location == str(tmp_path / "mlflow" / "artifacts")
    assert (local.model_name, local.experiment_name) == ("m", "e")
    project = TrackingConfig.for_project(churn)
    assert (project.model_name, project.experiment_name) == ("churn-model", "churn")
    assert sqlite_path(project.tracking_uri) == churn.paths.root / "mlflow" / "mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    server = TrackingConfig.for_data_root(tmp_path, model_name="m", experiment_name="e")
    assert server.tracking_uri == "http://127.0.0.1:5000" and server.artifact_location == ""
    assert sqlite_path(server.tracking_uri) is None
