"""The compiled single-row predict path reproduces the fitted pipeline; model swaps keep the old model on failure."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest

from mlops_assets.serving.models import FeatureTypeError, InMemoryModelSource, ModelManager, compile_predictor
from mlops_assets.training.synthetic import CATEGORICAL_FEATURES, NUMERIC_FEATURES, synthetic_training_set
from mlops_assets.training.train import TrainConfig, fit_model, model_inputs

FEATURES = NUMERIC_FEATURES + CATEGORICAL_FEATURES


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1):  # as in the serving process; OpenMP spinning on a busy machine is slow
        yield


@pytest.fixture(scope="module")
def training():
    return synthetic_training_set(600, seed=5)


def _rows(frame, n=200):
    rows = []
    for rec in frame[FEATURES].head(n).to_dict("records"):
        rows.append({k: None if isinstance(v, float) and math.isnan(v) else v for k, v in rec.items()})
    rows[0]["plan"] = "never-seen-plan"  # unknown category: one-hot all zeros
    rows[1]["region"] = None
    rows[2]["total_spend_30d"] = None
    return rows


@pytest.mark.parametrize(
    ("model_type", "params"),
    [
        ("hist_gradient_boosting", {"max_iter": 40}),
        ("logistic_regression", {}),
        ("random_forest", {"n_estimators": 10}),
    ],
)
def test_compiled_predictor_matches_pipeline_predict_proba(training, model_type, params):
    model = fit_model(
        training,
        TrainConfig(model_type=model_type, hyperparameters=params),
        NUMERIC_FEATURES,
        CATEGORICAL_FEATURES,
    )
    pred = compile_predictor(model)
    assert pred.fast
    assert pred.features == FEATURES
    rows = _rows(training)
    frame = model_inputs(
        training.head(200).assign(
            plan=[r["plan"] for r in rows],
            region=[r["region"] for r in rows],
            total_spend_30d=[r["total_spend_30d"] for r in rows],
        ),
        NUMERIC_FEATURES,
        CATEGORICAL_FEATURES,
    )
    reference = model.predict_proba(frame)[:, 1]
    np.testing.assert_allclose(pred.predict_rows(rows), reference, rtol=0, atol=1e-12)
    np.testing.assert_allclose([pred.predict_one(r) for r in rows[:20]], reference[:20], rtol=0, atol=1e-12)
    np.testing.assert_allclose(
        pred.predict_frame(
            training.head(200).assign(
                plan=frame["plan"], region=frame["region"], total_spend_30d=frame["total_spend_30d"]
            )
        ),
        reference,
        atol=1e-12,
    )


def test_fast_path_is_faster_than_a_one_row_dataframe(training):
    model = fit_model(
        training, TrainConfig(hyperparameters={"max_iter": 40}), NUMERIC_FEATURES, CATEGORICAL_FEATURES
    )
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
    pred = compile_predictor(
        fit_model(
            training, TrainConfig(model_type="logistic_regression"), NUMERIC_FEATURES, CATEGORICAL_FEATURES
        )
    )
    good = _rows(training)[3]
    pred.check_types(good)
    for name, value in [("logins_30d", "7"), ("logins_30d", True), ("logins_30d", float("inf")), ("plan", 3)]:
        with pytest.raises(FeatureTypeError, match=name):
            pred.check_types(good | {name: value})


class _Exploding:
    feature_names_in_ = np.array(FEATURES, dtype=object)

    def predict_proba(self, frame):
        raise RuntimeError("boom")


def test_model_manager_swaps_on_alias_move_and_keeps_serving_on_a_bad_load(training):
    m1 = fit_model(
        training, TrainConfig(model_type="logistic_regression"), NUMERIC_FEATURES, CATEGORICAL_FEATURES
    )
    m2 = fit_model(
        training,
        TrainConfig(model_type="hist_gradient_boosting", hyperparameters={"max_iter": 20}),
        NUMERIC_FEATURES,
        CATEGORICAL_FEATURES,
    )
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

    broken = Broken({"champion": ("3", m1)})
    manager.source = broken
    manager.refresh()
    assert manager.get("champion").version == "2"  # still serving the last good model
    assert "SHA-256" in manager.last_error["champion"]
    assert swaps == [("champion", "1"), ("champion", "2")]


def test_batch_scoring_adds_the_challenger_only_in_shadow_mode(training):
    import pandas as pd

    from mlops_assets.serving.batch import score_customers
    from mlops_assets.serving.routing import RolloutState

    m1 = fit_model(
        training, TrainConfig(model_type="logistic_regression"), NUMERIC_FEATURES, CATEGORICAL_FEATURES
    )
    m2 = fit_model(
        training, TrainConfig(hyperparameters={"max_iter": 20}), NUMERIC_FEATURES, CATEGORICAL_FEATURES
    )
    manager = ModelManager(InMemoryModelSource({"champion": ("1", m1), "challenger": ("2", m2)}))
    manager.refresh()
    frame = training.head(50)
    direct = score_customers(frame, manager.models)
    assert len(direct) == 50 and set(direct["model_version"]) == {"1"}
    np.testing.assert_allclose(
        direct["score"], m1.predict_proba(model_inputs(frame, NUMERIC_FEATURES, CATEGORICAL_FEATURES))[:, 1]
    )
    shadow = score_customers(frame, manager.models, RolloutState(mode="shadow"))
    assert len(shadow) == 100
    ch = shadow.loc[shadow["shadow"]]
    assert set(ch["arm"]) == {"challenger"} and set(ch["model_version"]) == {"2"}
    assert isinstance(shadow["scored_at"].dtype, pd.DatetimeTZDtype)


def test_online_feature_source_reads_the_online_store(tmp_path):
    from datetime import timedelta

    import pandas as pd

    from mlops_assets.features.compute import feature_partition_dir
    from mlops_assets.featurestore import Feature, FeatureStore, FeatureView
    from mlops_assets.serving.app import OnlineFeatureSource
    from mlops_assets.storage import write_partition

    views = [
        FeatureView(
            "vx",
            (Feature("x", "int64", "x", "count", event_type="login", window_days=1),),
            "x",
            "team",
            ttl=timedelta(days=2),
            lookback_days=1,
        ),
        FeatureView(
            "vy",
            (Feature("y", "string", "y", "latest", column="plan"),),
            "y",
            "team",
            source="customers",
            ttl=None,
            lookback_days=None,
        ),
    ]
    store = FeatureStore(tmp_path, views=views)
    stamp = pd.Timestamp("2026-01-02", tz="UTC")
    write_partition(
        pd.DataFrame({"customer_id": ["C1", "C2"], "feature_timestamp": [stamp] * 2, "x": [4, 5]}),
        feature_partition_dir(store.paths, "vx", "2026-01-01"),
    )
    write_partition(
        pd.DataFrame({"customer_id": ["C1"], "feature_timestamp": [stamp], "y": ["basic"]}),
        feature_partition_dir(store.paths, "vy", "2026-01-01"),
    )
    store.refresh_online(now=stamp)
    source = OnlineFeatureSource(tmp_path, views=views)
    # read now (long after the 2-day TTL of vx): x has expired to null, the customer is still known
    assert source.get("C1", ["x", "y"]) == {"x": None, "y": "basic"}
    assert source.get("C2", ["y", "x"]) == {"y": None, "x": None}
    assert source.get("C9", ["x", "y"]) is None  # unknown everywhere: the app answers 404
