"""The serving app in process (HTTP semantics through FastAPI's TestClient): routing, shadow, fallback, rollback,
validation, metrics, hot swap; and the demo's canary against its real local server."""

from __future__ import annotations

import math
import threading
import time
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from fastapi.testclient import TestClient

from mlops_assets.project import Project
from mlops_assets.serving import prediction_log as plog
from mlops_assets.serving.app import MappingFeatureSource, ServingConfig, ServingService, create_app
from mlops_assets.serving.models import InMemoryModelSource, compile_predictor
from mlops_assets.serving.rollout import Guardrails, RolloutController, metrics_window
from mlops_assets.serving.routing import MemoryAssignments, RolloutState, bucket, write_state
from mlops_assets.training.task import ModelTask
from mlops_assets.training.train import TrainConfig, fit_model, model_inputs, predict_scores
from mlops_assets_tests.conftest import CHURN_SPEC
from mlops_assets_tests.synthetic import CATEGORICAL_FEATURES, NUMERIC_FEATURES, synthetic_training_set

FEATURES = NUMERIC_FEATURES + CATEGORICAL_FEATURES


def _task() -> ModelTask:
    return ModelTask.from_project(Project.load(CHURN_SPEC, "/nonexistent"))


def _fit(frame, model_type="hist_gradient_boosting", **params):
    return fit_model(
        frame,
        TrainConfig(model_type=model_type, hyperparameters=params),
        _task(),
        NUMERIC_FEATURES,
        CATEGORICAL_FEATURES,
    )


def _feature_rows(frame, prefix: str) -> dict[str, dict]:
    return {
        f"{prefix}{i:05d}": {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in rec.items()}
        for i, rec in enumerate(frame[FEATURES].to_dict("records"))
    }


@pytest.fixture(scope="module")
def world():
    frame = synthetic_training_set(500, seed=9)
    champion = _fit(frame, "logistic_regression")
    challenger = _fit(frame, max_iter=30)
    return champion, challenger, _feature_rows(frame, "C")


@pytest.fixture
def configure(world, tmp_path):
    """(config, model source) serving the world's models from in-memory features, under a rollout state."""
    champion, challenger, rows = world

    def build(state: RolloutState | None = None, challenger_model=challenger, poll: float = 0.0, **config):
        models = {"champion": ("1", champion)}
        if challenger_model is not None:
            models["challenger"] = ("2", challenger_model)
        source = InMemoryModelSource(models)
        app_config = ServingConfig(
            data_root=tmp_path,
            model_source=source,
            feature_source=MappingFeatureSource(rows),
            entity_key="customer_id",
            assignments=MemoryAssignments(),
            poll_interval_s=poll,
            **config,
        )
        if state is not None:
            write_state(state, tmp_path / "serving" / "rollout_state.json")
        return app_config, source

    return build


@pytest.fixture
def serve(configure):
    """An in-process HTTP client of the app (and its model source)."""

    def start(*args, **kwargs):
        config, source = configure(*args, **kwargs)
        return TestClient(create_app(config)), source

    return start


def _predict(client: TestClient, customer: str, **extra):
    response = client.post("/predict", json={"customer_id": customer, **extra})
    assert response.status_code == 200, response.text
    return response.json()


def test_canary_share_within_tolerance_and_sticky_per_customer(configure, world):
    _, _, rows = world
    customers = list(rows)[:400]
    config, _ = configure(RolloutState(mode="canary", challenger_share=0.25, experiment="exp-7"))
    with ServingService(config) as service:  # routing is the service's decision: no HTTP needed
        first = {c: service.predict(c).arm for c in customers}
        again = {c: service.predict(c).arm for c in customers[:100]}
    assert all(first[c] == again[c] for c in again)
    share = np.mean([a == "challenger" for a in first.values()])
    assert abs(share - 0.25) < 4 * math.sqrt(0.25 * 0.75 / len(customers))
    # the arm is exactly the one the hash assigns
    assert all((first[c] == "challenger") == (bucket(c, "exp-7") < 0.25) for c in customers)


def test_shadow_mode_answers_with_the_champion_and_logs_the_challenger(serve, world, tmp_path):
    champion, challenger, rows = world
    customers = list(rows)[:30]
    client, _ = serve(RolloutState(mode="shadow"))
    with client:
        answers = [_predict(client, c) for c in customers]  # shadow scores are written after each response
    champ, chall = compile_predictor(champion), compile_predictor(challenger)
    for answer, c in zip(answers, customers, strict=True):
        assert answer["arm"] == "champion" and answer["model_version"] == "1" and answer["fallback"] == []
        assert answer["score"] == pytest.approx(champ.predict_one(rows[c]), abs=1e-12)
    day = plog.read_day(datetime.now(UTC).date(), tmp_path)
    shadow = day.loc[day["shadow"]]
    assert len(shadow) == len(customers) and set(shadow["arm"]) == {"challenger"}
    by_request = shadow.set_index("request_id")
    for answer, c in zip(answers, customers, strict=True):
        logged = by_request.loc[answer["request_id"], "score"]
        assert logged == pytest.approx(chall.predict_one(rows[c]), abs=1e-12)
        assert logged != pytest.approx(answer["score"], abs=1e-9)  # the two models really differ


class _Broken:
    """A challenger that fails on every request (the injected error spike)."""

    feature_names_in_ = np.array(FEATURES, dtype=object)

    def predict_proba(self, frame):
        raise RuntimeError("injected failure")


def test_a_failing_challenger_is_answered_by_the_champion_and_says_so(serve, world, tmp_path):
    champion, _, rows = world
    client, _ = serve(
        RolloutState(mode="canary", challenger_share=1.0, experiment="e"), challenger_model=_Broken()
    )
    with client:
        answer = _predict(client, "C00003")
    assert answer["arm"] == "champion" and answer["model_version"] == "1"
    (fallback,) = answer["fallback"]
    assert fallback == {
        "kind": "model",
        "used": "champion",
        "reason": "challenger v2 failed (RuntimeError)",  # the message itself stays in the log
    }
    logged = plog.read_day(datetime.now(UTC).date(), tmp_path)
    assert list(logged["arm"]) == ["challenger", "champion"] and list(logged["status"]) == ["error", "ok"]
    assert logged["error"].iloc[0] == "RuntimeError: injected failure"
    expected = predict_scores(
        champion, model_inputs(_frame(rows["C00003"]), NUMERIC_FEATURES, CATEGORICAL_FEATURES)
    )
    assert answer["score"] == pytest.approx(float(expected[0]), abs=1e-9)
    # a canary whose challenger is not loaded at all is answered by the champion, visibly too
    client, _ = serve(
        RolloutState(mode="canary", challenger_share=1.0, experiment="e"), challenger_model=None
    )
    with client:
        answer = _predict(client, "C00003")
    assert answer["arm"] == "champion"
    assert answer["fallback"] == [
        {"kind": "model", "used": "champion", "reason": "no challenger model is loaded"}
    ]


def _frame(row: dict):
    import pandas as pd

    return pd.DataFrame([row])


def test_error_spike_rolls_back_and_the_server_follows_the_state_file(configure, world, tmp_path):
    _, _, rows = world
    customers = list(rows)[:300]
    controller = RolloutController(tmp_path)
    start = datetime.now(UTC) - timedelta(seconds=1)
    config, _ = configure(challenger_model=_Broken())
    controller.start_canary("exp-9")
    controller.step(metrics_window(plog.read_since(start, tmp_path)), Guardrails(min_requests=0))  # 5% -> 25%
    assert controller.state().challenger_share == 0.25
    with ServingService(config) as service:
        answers = [
            service.predict(c) for c in customers
        ]  # callers never see the failures: the champion answers
        assert {a.arm for a in answers} == {"champion"}
        assert sum(bool(a.fallback) for a in answers) > 40  # and each such answer names its fallback
        window = metrics_window(plog.read_since(start, tmp_path))
        assert window.arm("challenger").errors > 40
        decision = controller.step(window, Guardrails())
        assert decision.action == "rollback" and "error rate" in decision.reason
        after = [service.predict(c) for c in customers[:50]]
    with TestClient(create_app(config)) as client:
        health = client.get("/health").json()
    assert health["rollout"]["mode"] == "direct"
    assert {a.mode for a in after} == {"direct"} and not any(a.fallback for a in after)
    assert list(controller.history()["action"]) == ["start", "advance", "rollback"]


MALFORMED = [
    (b"", "empty body"),
    (b"not json", "not JSON"),
    (b'{"customer_id": "C00001"', "truncated JSON"),
    (b"[1, 2, 3]", "a list"),
    (b'"C00001"', "a string"),
    (b"{}", "missing customer_id"),
    (b'{"customer_id": 17}', "number id"),
    (b'{"customer_id": ""}', "empty id"),
    (b'{"customer_id": null}', "null id"),
    (b'{"customer_id": "' + b"x" * 300 + b'"}', "long id"),
    (b'{"customer_id": "a\\u0001b"}', "control character"),
    (b'{"customer_id": "C00001", "extra": 1}', "unknown field"),
    (b'{"customer_id": "C00001", "features": [1, 2]}', "features as a list"),
    (b'{"customer_id": "C00001", "features": {"logins_30d": [1]}}', "nested value"),
    (b'{"customer_id": "C00001", "features": {"logins_30d": 1}}', "missing features"),
    (b'{"customer_id": "C00001", "as_of": "yesterday"}', "as_of not a time"),
    (b'{"customer_id": "C00001", "as_of": "2026-01-01T00:00:00"}', "as_of without a time zone"),
    (b'{"customer_id": "C00001", "as_of": "2026-01-01T00:00:00Z"}', "as_of without an offline store"),
    (b'\xff\xfe{"customer_id": "C00001"}', "invalid UTF-8"),
    (b"[" * 5000 + b"]" * 5000, "deep nesting"),
]


def _full_features(rows, **change):
    return {"customer_id": "C00001", "features": dict(rows["C00001"]) | change}


def test_malformed_requests_get_a_4xx_with_a_message_never_a_500(serve, world):
    _, _, rows = world
    typed = [
        (_full_features(rows, logins_30d="many"), "string for a number"),
        (_full_features(rows, logins_30d=True), "bool for a number"),
        (_full_features(rows, plan=3), "number for a category"),
        (_full_features(rows, unknown_feature=1.0), "unknown feature"),
    ]
    client, _ = serve()
    with client:
        for body, what in MALFORMED:
            response = client.post("/predict", content=body, headers={"content-type": "application/json"})
            assert 400 <= response.status_code < 500, (what, response.status_code, response.text)
            assert response.json()["error"], what
        for body, what in typed:
            response = client.post("/predict", json=body)
            assert response.status_code == 422, (what, response.text)
        for literal in (b"NaN", b"Infinity", b"1e400"):
            body = b'{"customer_id": "C00001", "features": {"logins_30d": ' + literal + b"}}"
            assert 400 <= client.post("/predict", content=body).status_code < 500, literal
        big = client.post("/predict", content=b'{"customer_id": "' + b"x" * 20_000 + b'"}')
        assert big.status_code == 413 and "larger than" in big.json()["error"]

        def chunks():  # no content-length: the limit holds on the streamed body too
            for _ in range(40):
                yield b" " * 1000

        assert client.post("/predict", content=chunks()).status_code == 413
        assert client.get("/predict").status_code == 405
        assert client.get("/nowhere").status_code == 404
        assert (
            _predict(client, "C00001", features=rows["C00001"])["arm"] == "champion"
        )  # good ones still work
        # an entity without features is not an error: it is scored with its status visible
        unknown = _predict(client, "nobody")
        metrics = client.get("/metrics").text
    assert unknown["features"]["views"] == {"features": {"status": "missing", "feature_timestamp": None}}
    assert unknown["fallback"][0]["used"] == "imputed"
    assert 'mlops_serving_rejected_total{status_code="422"}' in metrics
    assert 'status_code="5' not in metrics


def test_prometheus_metrics_by_model_version_and_arm(serve, world):
    _, _, rows = world
    client, _ = serve(RolloutState(mode="ab", challenger_share=0.5, experiment="m"))
    with client:
        answers = [_predict(client, c) for c in list(rows)[:40]]
        text = client.get("/metrics").text
        health = client.get("/health").json()
    n_ch = sum(a["arm"] == "challenger" for a in answers)
    assert 0 < n_ch < 40
    assert (
        f'mlops_serving_requests_total{{arm="challenger",model_version="2",status="ok"}} {float(n_ch)}'
        in text
    )
    assert (
        f'mlops_serving_requests_total{{arm="champion",model_version="1",status="ok"}} {float(40 - n_ch)}'
        in text
    )
    assert 'mlops_serving_latency_seconds_bucket{arm="champion",le="0.005",model_version="1"}' in text
    assert 'mlops_serving_latency_seconds_count{arm="challenger",model_version="2"}' in text
    assert health["status"] == "ok" and health["models"]["champion"]["fast_path"] is True


def test_alias_change_is_picked_up_without_downtime(serve, world):
    _, challenger, rows = world
    client, source = serve(poll=0.1)
    customers = list(rows)[:50]
    statuses, versions, stop = [], [], threading.Event()

    def hammer():
        while not stop.is_set():
            for c in customers:
                r = client.post("/predict", json={"customer_id": c})
                statuses.append(r.status_code)
                if r.status_code == 200:
                    versions.append(r.json()["model_version"])

    with client:
        worker = threading.Thread(target=hammer)
        worker.start()
        time.sleep(0.3)
        source.set("champion", "7", challenger)
        deadline = time.monotonic() + 10
        while (not versions or versions[-1] != "7") and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.2)
        stop.set()
        worker.join()
        text = client.get("/metrics").text
    assert set(statuses) == {200}
    assert versions[0] == "1" and versions[-1] == "7"
    switch = versions.index("7")
    assert set(versions[switch:]) == {"7"}  # once swapped, never back
    assert 'mlops_serving_model_reloads_total{alias="champion"} 2.0' in text


@pytest.mark.slow
def test_canary_demo_promotes_a_healthy_challenger_and_rolls_back_a_broken_one(world, tmp_path):
    """The demo's canary (``make demo``) against its real local server: a close retrain passes, a broken one is rolled back."""
    from mlops_assets.serving.demo import canary_demo

    champion, _, _ = world
    challenger = _fit(synthetic_training_set(500, seed=10), "logistic_regression", C=0.5)  # a close retrain
    # a canary at 5% needs many distinct customers for its score distribution to mean anything
    rows = _feature_rows(synthetic_training_set(4000, seed=11), "D")
    # the challenger's reference: its scores on a holdout it was not trained on
    holdout = synthetic_training_set(1000, seed=12)
    reference = predict_scores(challenger, model_inputs(holdout, NUMERIC_FEATURES, CATEGORICAL_FEATURES))
    lines: list[str] = []
    good = canary_demo(
        tmp_path / "a",
        champion,
        challenger,
        rows,
        key="customer_id",
        requests_per_step=200,
        printer=lines.append,
        challenger_reference_scores=reference,
    )
    assert [d.action for d in good] == ["advance"] * 4 and good[-1].promote
    assert all(d.metrics["reference_samples"] == 1000 for d in good)  # judged against the reference
    # the distribution is judged once a step has 100 distinct challenger entities (repeats count once)
    judged = [d for d in good if d.metrics["challenger_entities"] >= 100]
    assert len(judged) >= 3 and all("score_psi" in d.metrics for d in judged)
    assert all(d.metrics["score_psi"] <= 0.25 for d in judged)
    assert any("rollout complete" in line for line in lines)
    bad = canary_demo(
        tmp_path / "b",
        champion,
        challenger,
        rows,
        key="customer_id",
        requests_per_step=200,
        break_challenger_at_step=1,
        printer=lines.append,
    )
    assert [d.action for d in bad] == ["advance", "rollback"] and "error rate" in bad[-1].reason


def test_a_feature_source_with_only_get_still_serves(world, tmp_path):
    """A custom source written for the earlier protocol (``get(entity, features) -> dict | None``) keeps working."""
    champion, _, rows = world

    class Legacy:
        def get(self, entity, features):
            row = rows.get(entity)
            return None if row is None else {f: row[f] for f in features}

    config = ServingConfig(
        data_root=tmp_path,
        model_source=InMemoryModelSource({"champion": ("1", champion)}),
        feature_source=Legacy(),
        entity_key="customer_id",
        assignments=MemoryAssignments(),
        poll_interval_s=0,
        log_predictions=False,
    )
    with ServingService(config) as service:
        known, unknown = service.predict("C00002"), service.predict("nobody")
    assert known.features.status == "fresh" and known.fallback == []
    assert known.score == pytest.approx(compile_predictor(champion).predict_one(rows["C00002"]), abs=1e-12)
    assert unknown.features.status == "stale" and unknown.features.views["features"].status == "missing"
