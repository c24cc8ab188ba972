"""MLflow-compatible scoring: ``POST /invocations`` and ``GET /ping`` answer like ``mlflow models serve`` for the same
model and bodies (MLflow's own scoring app, in process, is the reference), score as ``/predict`` does, and never
answer a malformed body with a 5xx."""

from __future__ import annotations

import json
import math

import pytest
from fastapi.testclient import TestClient

from mlops_assets.project import Project
from mlops_assets.serving.app import MappingFeatureSource, ServingConfig, create_app
from mlops_assets.serving.models import InMemoryModelSource
from mlops_assets.serving.routing import MemoryAssignments
from mlops_assets.training.task import ModelTask
from mlops_assets.training.train import TrainConfig, fit_model, model_inputs, skops_trusted_types
from mlops_assets_tests.conftest import BIKES_SPEC, CHURN_SPEC
from mlops_assets_tests.synthetic import CATEGORICAL_FEATURES, NUMERIC_FEATURES, synthetic_training_set

FEATURES = NUMERIC_FEATURES + CATEGORICAL_FEATURES


def _records(frame) -> list[dict]:
    return [
        {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in r.items()}
        for r in frame[FEATURES].to_dict("records")
    ]


def _mlflow_app(model, tmp_path, name: str, classifier: bool) -> TestClient:
    """MLflow's scoring server for ``model``, logged the way training logs it (signature, predict_proba)."""
    import mlflow.pyfunc
    import mlflow.sklearn
    from mlflow.models import infer_signature
    from mlflow.pyfunc import scoring_server

    example = model_inputs(synthetic_training_set(20, seed=2), NUMERIC_FEATURES, CATEGORICAL_FEATURES)
    out = model.predict_proba(example) if classifier else model.predict(example)
    path = tmp_path / name
    mlflow.sklearn.save_model(
        model,
        path,
        signature=infer_signature(example, out),
        pyfunc_predict_fn="predict_proba" if classifier else "predict",
        pip_requirements=["scikit-learn"],
        skops_trusted_types=skops_trusted_types(model),
    )
    return TestClient(scoring_server.init(mlflow.pyfunc.load_model(str(path))), raise_server_exceptions=False)


@pytest.fixture(scope="module")
def models():
    frame = synthetic_training_set(400, seed=31)
    churn = ModelTask.from_project(Project.load(CHURN_SPEC, "/nonexistent"))
    classifier = fit_model(
        frame, TrainConfig(hyperparameters={"max_iter": 30}), churn, NUMERIC_FEATURES, CATEGORICAL_FEATURES
    )
    # a regressor on the same inputs (the bikes example's task kind) with a made-up weekly count as its target
    regression = ModelTask.from_project(Project.load(BIKES_SPEC, "/nonexistent"))
    frame = frame.assign(trips_next_7d=frame["logins_30d"] * 2.0 + frame["tickets_30d"])
    regressor = fit_model(
        frame,
        TrainConfig(model_type="linear_regression"),
        regression,
        NUMERIC_FEATURES,
        CATEGORICAL_FEATURES,
    )
    return classifier, regressor


@pytest.fixture(scope="module")
def references(models, tmp_path_factory):
    classifier, regressor = models
    root = tmp_path_factory.mktemp("mlflow-models")
    return _mlflow_app(classifier, root, "classifier", True), _mlflow_app(regressor, root, "regressor", False)


@pytest.fixture(scope="module")
def rows():
    records = _records(synthetic_training_set(12, seed=33))
    records[1]["total_spend_30d"] = None
    records[2]["region"] = None
    return records


def _ours(model, tmp_path, rows=(), **config) -> TestClient:
    source = InMemoryModelSource({"champion": ("3", model)} if model is not None else {})
    return TestClient(
        create_app(
            ServingConfig(
                data_root=tmp_path,
                model_source=source,
                feature_source=MappingFeatureSource({f"C{i}": r for i, r in enumerate(rows)}),
                entity_key="customer_id",
                assignments=MemoryAssignments(),
                log_predictions=False,
                poll_interval_s=0,
                **config,
            )
        )
    )


def _bodies(rows: list[dict]) -> dict[str, dict]:
    columns = list(rows[0])
    return {
        "dataframe_records": {"dataframe_records": rows},
        "dataframe_split": {
            "dataframe_split": {"columns": columns, "data": [[r[c] for c in columns] for r in rows]}
        },
        "dataframe_split with index": {
            "dataframe_split": {
                "index": list(range(100, 100 + len(rows))),
                "columns": columns[::-1],
                "data": [[r[c] for c in columns[::-1]] for r in rows],
            }
        },
        "inputs as columns": {"inputs": {c: [r[c] for r in rows] for c in columns}},
        "inputs as records": {"inputs": rows},
        "instances": {"instances": rows},
        "with params and other keys": {"dataframe_records": rows, "params": {"x": 1}, "note": "ignored"},
        "extra columns": {"dataframe_records": [r | {"age_group": "25-34", "junk": 1} for r in rows]},
    }


@pytest.mark.parametrize("kind", ["classifier", "regressor"])
def test_every_mlflow_body_scores_as_predict_does(models, rows, tmp_path, kind):
    model = models[0] if kind == "classifier" else models[1]
    with _ours(model, tmp_path, rows) as client:
        singles = [
            client.post("/predict", json={"customer_id": f"C{i}", "features": r}).json()["score"]
            for i, r in enumerate(rows)
        ]
        by_entity = [
            client.post("/predict", json={"customer_id": f"C{i}"}).json()["score"] for i in range(len(rows))
        ]
        answers = {name: client.post("/invocations", json=body) for name, body in _bodies(rows).items()}
        ping = client.get("/ping")
    assert ping.status_code == 200 and ping.text == "\n"
    assert singles == by_entity
    for name, response in answers.items():
        assert response.status_code == 200, (name, response.text)
        assert set(response.json()) == {"predictions"}
        got = response.json()["predictions"]
        if kind == "classifier":  # [P(0), P(1)] per row, as MLflow serves the project's classifiers
            assert all(isinstance(p, list) and len(p) == 2 and p[0] == 1.0 - p[1] for p in got), name
            got = [p[1] for p in got]
        else:
            assert all(isinstance(p, float) for p in got), name
        assert got == singles, name  # the same numbers /predict gives, to the bit, whatever the batch


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["classifier", "regressor"])
def test_invocations_answer_like_mlflow_models_serve(models, references, rows, tmp_path, kind):
    model = models[0] if kind == "classifier" else models[1]
    reference = references[0] if kind == "classifier" else references[1]
    with _ours(model, tmp_path, rows) as client:
        for name, body in _bodies(rows).items():
            ours = client.post("/invocations", json=body)
            theirs = reference.post("/invocations", json=body)
            assert ours.status_code == theirs.status_code == 200, (name, ours.text, theirs.text)
            got, expected = ours.json()["predictions"], theirs.json()["predictions"]
            assert len(got) == len(expected) == len(rows), name
            if kind == "classifier":
                assert all(isinstance(p, list) and len(p) == 2 for p in expected)
                for column in (0, 1):
                    assert [p[column] for p in got] == pytest.approx([p[column] for p in expected], abs=1e-12)
            else:
                assert got == pytest.approx(expected, abs=1e-9), name
        assert client.get("/ping").status_code == reference.get("/ping").status_code == 200


def _malformed(rows: list[dict]) -> list[tuple[object, str]]:
    row = rows[0]
    columns = list(row)
    return [
        (b"", "empty body"),
        (b"not json", "not JSON"),
        (b'{"dataframe_records": [', "truncated"),
        (b"[1, 2]", "a list"),
        (b'"rows"', "a string"),
        (b"{}", "no input key"),
        ({"dataframe_records": [row], "inputs": [row]}, "two input keys"),
        ({"dataframe_record": [row]}, "misspelt key"),
        ({"dataframe_records": []}, "no rows"),
        ({"dataframe_records": row}, "records as an object"),
        ({"dataframe_records": [1, 2]}, "records not objects"),
        ({"dataframe_split": [[1]]}, "split as a list"),
        ({"dataframe_split": {"data": [list(row.values())]}}, "split without columns"),
        ({"dataframe_split": {"columns": columns, "data": [[1, 2]]}}, "short split row"),
        ({"dataframe_split": {"columns": columns, "data": "x"}}, "split data not rows"),
        (
            {"dataframe_split": {"columns": columns + columns[:1], "data": [[*row.values(), 1]]}},
            "duplicate column",
        ),
        ({"inputs": [list(row.values())]}, "inputs without column names"),
        ({"inputs": {"logins_30d": [1.0, 2.0], "plan": ["basic"]}}, "columns of different lengths"),
        ({"inputs": 3}, "inputs a number"),
        ({"dataframe_records": [{k: v for k, v in row.items() if k != "plan"}]}, "missing column"),
        ({"dataframe_records": [row | {"logins_30d": "many"}]}, "string for a number"),
        ({"dataframe_records": [row | {"logins_30d": True}]}, "bool for a number"),
        ({"dataframe_records": [row | {"plan": 3}]}, "number for a category"),
        ({"dataframe_records": [row | {"logins_30d": [1]}]}, "nested value"),
        ({"dataframe_records": [row | {"plan": "platinum"}]}, "unknown category"),
        (
            json.dumps({"dataframe_records": [row]}).replace('"logins_30d": ', '"logins_30d": NaN, "x": '),
            "NaN",
        ),
        (
            json.dumps({"dataframe_records": [row | {"logins_30d": 1e308}]}).replace("1e+308", "1e999"),
            "overflow",
        ),
        (b'{"inputs": ' * 3000 + b"1" + b"}" * 3000, "deep nesting"),
        (b'\xff\xfe{"inputs": []}', "invalid UTF-8"),
    ]


def test_malformed_mlflow_bodies_get_a_4xx_never_a_5xx(models, rows, tmp_path):
    with _ours(models[0], tmp_path, max_invocation_rows=50) as client:
        for body, what in _malformed(rows):
            content = body if isinstance(body, bytes) else body.encode() if isinstance(body, str) else None
            response = (
                client.post("/invocations", content=content, headers={"content-type": "application/json"})
                if content is not None
                else client.post("/invocations", json=body)
            )
            assert 400 <= response.status_code < 500, (what, response.status_code, response.text)
            error = response.json()
            assert error["error_code"] and error["message"], what
        too_many = client.post("/invocations", json={"dataframe_records": rows * 5})
        assert too_many.status_code == 413 and "at most 50" in too_many.json()["message"]
        big = client.post(
            "/invocations",
            content=b'{"inputs": "' + b"x" * 5_000_000 + b'"}',
            headers={"content-type": "application/json"},
        )
        assert big.status_code == 413
        csv = client.post("/invocations", content=b"a,b\n1,2\n", headers={"content-type": "text/csv"})
        assert csv.status_code == 415 and "application/json" in csv.json()["message"]
        # without a content type the body is read as JSON (mlflow models serve answers that with a 500)
        bare = client.post("/invocations", content=json.dumps({"dataframe_records": rows[:2]}).encode())
        assert bare.status_code == 200 and len(bare.json()["predictions"]) == 2
        metrics = client.get("/metrics").text
    assert 'mlops_serving_rejected_total{status_code="400"}' in metrics
    assert 'status_code="5' not in metrics
    assert 'mlops_serving_invocations_total{model_version="3",status="ok"} 1.0' in metrics


@pytest.mark.slow
def test_unknown_categories_follow_the_policy(models, references, rows, tmp_path):
    body = {"dataframe_records": [rows[0] | {"plan": "platinum"}, rows[1]]}
    with _ours(models[0], tmp_path) as client:
        refused = client.post("/invocations", json=body)
    assert refused.status_code == 400 and "platinum" in refused.json()["message"]
    with _ours(models[0], tmp_path, unknown_category="warn") as client:
        warned = client.post("/invocations", json=body).json()
    assert "row 0: plan: 'platinum'" in warned["warnings"][0]
    # scored as "no category", exactly what MLflow's server does with the encoder's handle_unknown="ignore"
    expected = references[0].post("/invocations", json=body).json()["predictions"]
    assert [p[1] for p in warned["predictions"]] == pytest.approx([p[1] for p in expected], abs=1e-12)


def test_without_a_champion_ping_and_invocations_are_503(rows, tmp_path):
    with _ours(None, tmp_path) as client:
        ping = client.get("/ping")
        invoked = client.post("/invocations", json={"dataframe_records": rows[:1]})
    assert ping.status_code == 503 and "no champion" in ping.json()["reason"]
    assert invoked.status_code == 503 and "no champion" in invoked.json()["message"]
