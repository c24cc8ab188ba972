"""The compiled single-row predict path reproduces the fitted pipeline (classifiers and regressors) and scores a row
the same whatever it is batched with; model swaps keep the old model on failure; batch scoring adds the shadow arm."""

from __future__ import annotations

import math
import time

import numpy as np
import pandas as pd
import pytest

from mlops_assets.project import Project
from mlops_assets.serving.batch import score_entities
from mlops_assets.serving.models import FeatureTypeError, InMemoryModelSource, ModelManager, compile_predictor
from mlops_assets.serving.routing import RolloutState
from mlops_assets.training.task import ModelTask
from mlops_assets.training.train import TrainConfig, fit_model, model_inputs, predict_scores
from mlops_assets_tests.conftest import BIKES_SPEC, CHURN_SPEC
from mlops_assets_tests.synthetic import CATEGORICAL_FEATURES, NUMERIC_FEATURES, synthetic_training_set

FEATURES = NUMERIC_FEATURES + CATEGORICAL_FEATURES


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1):  # as in the serving process; OpenMP spinning on a busy machine is slow
        yield


@pytest.fixture(scope="module")
def training():
    frame = synthetic_training_set(600, seed=5)
    # a regression target for the regressors (the bikes example's task kind): a noisy count
    rng = np.random.default_rng(5)
    return frame.assign(trips_next_7d=frame["logins_30d"] * 1.5 + rng.poisson(3.0, len(frame)))


def _task(kind: str) -> ModelTask:
    return ModelTask.from_project(
        Project.load(CHURN_SPEC if kind == "classifier" else BIKES_SPEC, "/nonexistent")
    )


def _fit(frame, model_type="hist_gradient_boosting", kind="classifier", **params):
    config = TrainConfig(model_type=model_type, hyperparameters=params)
    return fit_model(frame, config, _task(kind), NUMERIC_FEATURES, CATEGORICAL_FEATURES)


def _rows(frame, n=200):
    rows = []
    for rec in frame[FEATURES].head(n).to_dict("records"):
        rows.append({k: None if isinstance(v, float) and math.isnan(v) else v for k, v in rec.items()})
    rows[0]["plan"] = "never-seen-plan"  # unknown category: one-hot all zeros
    rows[1]["region"] = None
    rows[2]["total_spend_30d"] = None
    return rows


MODELS = [
    ("classifier", "hist_gradient_boosting", {"max_iter": 40}),
    ("classifier", "logistic_regression", {}),
    ("classifier", "random_forest", {"n_estimators": 10}),
    ("regressor", "hist_gradient_boosting", {"max_iter": 40}),
    ("regressor", "linear_regression", {}),
    ("regressor", "random_forest", {"n_estimators": 10}),
]


@pytest.mark.parametrize(("kind", "model_type", "params"), MODELS)
def test_compiled_predictor_matches_the_pipeline(training, kind, model_type, params):
    model = _fit(training, model_type, kind, **params)
    pred = compile_predictor(model)
    assert pred.fast
    assert pred.features == FEATURES
    rows = _rows(training)
    edited = training.head(200).assign(
        plan=[r["plan"] for r in rows],
        region=[r["region"] for r in rows],
        total_spend_30d=[r["total_spend_30d"] for r in rows],
    )
    # the pipeline's own output: the positive-class probability of a classifier, the prediction of a regressor
    inputs = model_inputs(edited, NUMERIC_FEATURES, CATEGORICAL_FEATURES)
    reference = model.predict_proba(inputs)[:, 1] if kind == "classifier" else model.predict(inputs)
    scale = 1.0 if kind == "classifier" else float(np.abs(reference).max())
    np.testing.assert_allclose(pred.predict_rows(rows), reference, rtol=0, atol=1e-12 * scale)
    np.testing.assert_allclose(
        [pred.predict_one(r) for r in rows[:20]], reference[:20], rtol=0, atol=1e-12 * scale
    )
    np.testing.assert_allclose(pred.predict_frame(edited), reference, rtol=0, atol=1e-12 * scale)


@pytest.mark.parametrize(("kind", "model_type", "params"), MODELS)
def test_a_rows_score_does_not_depend_on_the_rows_scored_with_it(training, kind, model_type, params):
    pred = compile_predictor(_fit(training, model_type, kind, **params))
    rows = _rows(training, 64)
    together = pred.predict_rows(rows)
    alone = [pred.predict_one(r) for r in rows]
    reversed_ = pred.predict_rows(rows[::-1])[::-1]
    assert list(together) == alone == list(reversed_)  # exactly, not approximately


def test_fast_path_is_faster_than_a_one_row_dataframe(training):
    model = _fit(training, max_iter=40)
    pred = compile_predictor(model)
    row = _rows(training)[5]
    frame = model_inputs(training.iloc[[5]], NUMERIC_FEATURES, CATEGORICAL_FEATURES)

    def per_call(fn, n=50):
        fn()
        start = time.perf_counter()
        for _ in range(n):
            fn()
        return (time.perf_counter() - start) / n

    assert per_call(lambda: pred.predict_one(row)) < per_call(lambda: model.predict_proba(frame))


def test_feature_types_are_checked(training):
    pred = compile_predictor(_fit(training, "logistic_regression"))
    good = _rows(training)[3]
    pred.check_types(good)
    for name, value in [("logins_30d", "7"), ("logins_30d", True), ("logins_30d", float("inf")), ("plan", 3)]:
        with pytest.raises(FeatureTypeError, match=name):
            pred.check_types(good | {name: value})


def test_model_manager_swaps_on_alias_move_and_keeps_serving_on_a_bad_load(training):
    m1 = _fit(training, "logistic_regression")
    m2 = _fit(training, max_iter=20)
    source = InMemoryModelSource({"champion": ("1", m1)})
    swaps = []
    manager = ModelManager(source, on_swap=lambda alias, old, new: swaps.append((alias, new and new.version)))
    assert manager.refresh() == ["champion"]
    assert manager.refresh() == []  # unchanged version: nothing reloaded
    source.set("champion", "2", m2)
    assert manager.refresh() == ["champion"] and manager.get("champion").version == "2"

    class Broken(InMemoryModelSource):
        def load(self, alias):
            raise ValueError("artifact SHA-256 differs")

    manager.source = Broken({"champion": ("3", m1)})
    manager.refresh()
    assert manager.get("champion").version == "2"  # still serving the last good model
    assert "SHA-256" in manager.last_error["champion"]
    assert swaps == [("champion", "1"), ("champion", "2")]


def test_batch_scoring_adds_the_challenger_only_in_shadow_mode(training):
    m1 = _fit(training, "logistic_regression")
    m2 = _fit(training, max_iter=20)
    manager = ModelManager(InMemoryModelSource({"champion": ("1", m1), "challenger": ("2", m2)}))
    manager.refresh()
    frame = training.head(50)
    direct = score_entities(frame, "customer_id", manager.models)
    assert len(direct) == 50 and set(direct["model_version"]) == {"1"}
    assert list(direct["customer_id"]) == list(frame["customer_id"])
    expected = predict_scores(m1, model_inputs(frame, NUMERIC_FEATURES, CATEGORICAL_FEATURES))
    np.testing.assert_array_equal(direct["score"], expected)  # the batch path is the pipeline itself
    shadow = score_entities(frame, "customer_id", manager.models, RolloutState(mode="shadow"))
    assert len(shadow) == 100
    ch = shadow.loc[shadow["shadow"]]
    assert set(ch["arm"]) == {"challenger"} and set(ch["model_version"]) == {"2"}
    assert isinstance(shadow["scored_at"].dtype, pd.DatetimeTZDtype)
    with pytest.raises(ValueError, match="entity key column 'station_id'"):
        score_entities(frame, "station_id", manager.models)
