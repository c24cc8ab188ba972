"""Serving by entity, honest about freshness: per-view status judged at the request's time, the stale policy, and
``as_of`` replays on the offline store equal to the batch point-in-time score; a regressor through a real server."""

from __future__ import annotations

import math
import shutil
from datetime import UTC, datetime

import httpx
import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from fastapi.testclient import TestClient

from mlops_assets.features.layout import select_features
from mlops_assets.features.store import FeatureStore
from mlops_assets.features.tiles import partition_path
from mlops_assets.project import Project
from mlops_assets.serving import prediction_log as plog
from mlops_assets.serving.app import ServingConfig, ServingError, ServingService, create_app
from mlops_assets.serving.batch import score_as_of, score_entities
from mlops_assets.serving.models import InMemoryModelSource, ServedModel, compile_predictor
from mlops_assets.serving.rollout import metrics_window
from mlops_assets.serving.routing import MemoryAssignments
from mlops_assets.storage import write_partition
from mlops_assets.training.task import ModelTask, select_inputs
from mlops_assets.training.train import TrainConfig, fit_model, model_inputs, predict_scores
from mlops_assets_tests.conftest import BIKES_SPEC, CHURN_SPEC, Clock
from mlops_assets_tests.serving_world import CHURN_DAYS, T, bikes_world, churn_world
from mlops_assets_tests.synthetic import CATEGORICAL_FEATURES, NUMERIC_FEATURES, synthetic_training_set

FEATURES = NUMERIC_FEATURES + CATEGORICAL_FEATURES
EVENT_VIEWS = ["purchase_activity", "engagement", "support"]
ALL_VIEWS = sorted([*EVENT_VIEWS, "customer_profile"])
FRESH_AT = T(
    "2026-01-11 12:00"
)  # the online store holds values as of 01-11 00:00; event views' TTL is 2 days
EXPIRED_AT = T("2026-01-13 12:00")


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    root = tmp_path_factory.mktemp("churn-serving") / "data"
    store = churn_world(Project.load(CHURN_SPEC, root))
    store.refresh_online(now=T("2026-01-11 01:00"))
    return root


@pytest.fixture(scope="module")
def model():
    task = ModelTask.from_project(Project.load(CHURN_SPEC, "/nonexistent"))
    frame = synthetic_training_set(500, seed=21)
    config = TrainConfig(model_type="hist_gradient_boosting", hyperparameters={"max_iter": 40})
    return fit_model(frame, config, task, NUMERIC_FEATURES, CATEGORICAL_FEATURES)


@pytest.fixture
def world(template, tmp_path, monkeypatch):
    root = tmp_path / "data"
    shutil.copytree(template, root)
    monkeypatch.setenv("MLOPS_DATA_DIR", str(root))
    monkeypatch.setenv("MLOPS_SPEC", str(CHURN_SPEC))
    return Project.load(CHURN_SPEC, root)


@pytest.fixture
def app(world, model):
    """A client factory: the app on the world's online and offline stores, its clock set by the test."""

    def start(now=FRESH_AT, **config) -> tuple[TestClient, Clock]:
        clock = Clock(now)
        service_config = ServingConfig(
            project=world,
            model_source=InMemoryModelSource({"champion": ("1", model)}),
            assignments=MemoryAssignments(),
            poll_interval_s=0,
            clock=clock,
            **config,
        )
        return TestClient(create_app(service_config)), clock

    return start


def _pipeline_score(model, frame: pd.DataFrame) -> float:
    """The fitted pipeline's own score on a one-row feature frame (independent of the serving code)."""
    return float(predict_scores(model, model_inputs(frame, NUMERIC_FEATURES, CATEGORICAL_FEATURES))[0])


def _online(world, customer, now):
    return FeatureStore(world).get_online_features([customer], FEATURES, now=now.to_pydatetime())


def _views(body) -> dict[str, str]:
    return {v: s["status"] for v, s in body["features"]["views"].items()}


def test_fresh_features_report_their_as_of_and_per_view_status(app, world, model):
    client, _ = app()
    with client:
        body = client.post("/predict", json={"customer_id": "C1"}).json()
    assert body["model_version"] == "1" and body["arm"] == "champion" and body["fallback"] == []
    # the views reported are those the model's features come from
    assert sorted(select_features(world.spec, FEATURES)) == ALL_VIEWS
    assert _views(body) == dict.fromkeys(ALL_VIEWS, "fresh")
    assert body["features"]["source"] == "online"
    assert body["features"]["as_of"] == "2026-01-11T00:00:00+00:00"  # the day's end of the newest stored day
    assert body["features"]["judged_at"] == FRESH_AT.isoformat()
    assert all(
        v["feature_timestamp"] == "2026-01-11T00:00:00+00:00" for v in body["features"]["views"].values()
    )
    assert body["score"] == pytest.approx(_pipeline_score(model, _online(world, "C1", FRESH_AT)), abs=1e-9)


def test_expired_views_are_visible_and_scored_as_nulls(app, world, model):
    client, _ = app(now=EXPIRED_AT)
    with client:
        body = client.post("/predict", json={"customer_id": "C1"}).json()
        fresh_metric = client.get("/metrics").text
    assert _views(body) == {v: "expired" for v in EVENT_VIEWS} | {"customer_profile": "fresh"}
    (fallback,) = body["fallback"]
    assert fallback["kind"] == "features" and fallback["used"] == "imputed"
    assert sorted(fallback["views"]) == sorted(EVENT_VIEWS) and "expired" in fallback["reason"]
    # the values served are what the online store returns at that time: nulls for the expired views
    online = _online(world, "C1", EXPIRED_AT)
    assert online[["logins_30d", "tickets_30d", "total_spend_30d"]].isna().all(axis=None)
    assert online["plan"].iloc[0] == "standard"
    assert body["score"] == pytest.approx(_pipeline_score(model, online), abs=1e-9)
    assert body["score"] != pytest.approx(_pipeline_score(model, _online(world, "C1", FRESH_AT)), abs=1e-6)
    assert body["features"]["as_of"] == "2026-01-11T00:00:00+00:00"  # only customer_profile is fresh
    assert 'mlops_serving_stale_features_total{feature_status="partial"} 1.0' in fresh_metric


@pytest.mark.parametrize("policy", ["serve", "409", "422"])
def test_no_fresh_view_is_served_visibly_or_refused_by_configuration(app, model, policy):
    client, _ = app(now=EXPIRED_AT, stale_features=policy)
    with client:
        # C3 has events (now expired) and no customer record; C404 is known nowhere
        c3 = client.post("/predict", json={"customer_id": "C3"})
        unknown = client.post("/predict", json={"customer_id": "C404"})
        health = client.get("/health").json()
    assert health["stale_features"] == policy
    # C3 never filed a ticket: it has no row in the support view at all
    expected_c3 = {"purchase_activity": "expired", "engagement": "expired", "support": "missing"}
    expected_c3["customer_profile"] = "missing"
    if policy == "serve":
        assert c3.status_code == 200 and unknown.status_code == 200
        assert _views(c3.json()) == expected_c3
        assert _views(unknown.json()) == dict.fromkeys(ALL_VIEWS, "missing")
        assert c3.json()["features"]["as_of"] is None
        for answer in (c3.json(), unknown.json()):
            (fallback,) = answer["fallback"]
            assert fallback["used"] == "imputed" and sorted(fallback["views"]) == ALL_VIEWS
        # every feature is null: the score is the pipeline's on an all-null row, and it says so
        nulls = pd.DataFrame([dict.fromkeys(FEATURES)])
        assert unknown.json()["score"] == pytest.approx(_pipeline_score(model, nulls), abs=1e-9)
    else:
        for response, views in ((c3, expected_c3), (unknown, dict.fromkeys(ALL_VIEWS, "missing"))):
            assert response.status_code == int(policy), response.text
            body = response.json()
            assert "no fresh features" in body["error"] and "score" not in body
            assert _views(body) == views  # the status stays visible on the refusal


def test_the_stale_policy_comes_from_the_environment_and_is_validated(app, monkeypatch):
    monkeypatch.setenv("MLOPS_STALE_FEATURES", "409")
    client, _ = app(now=EXPIRED_AT)
    with client:
        assert client.post("/predict", json={"customer_id": "C404"}).status_code == 409
        assert (
            client.post("/predict", json={"customer_id": "C1"}).status_code == 200
        )  # one fresh view: served
    with pytest.raises(ValueError, match="MLOPS_STALE_FEATURES"):
        app(stale_features="500")


def test_ttl_is_judged_against_the_request_time(app, world):
    client, clock = app(now=T("2026-01-12 23:59"))
    with client:
        before = client.post("/predict", json={"customer_id": "C1"}).json()
        clock.now = T("2026-01-13 00:00").to_pydatetime()  # exactly two days after the feature time
        at_ttl = client.post("/predict", json={"customer_id": "C1"}).json()
        clock.now = T("2026-01-13 00:00:01").to_pydatetime()
        after = client.post("/predict", json={"customer_id": "C1"}).json()
    assert set(_views(before).values()) == set(_views(at_ttl).values()) == {"fresh"}
    assert _views(after)["engagement"] == "expired" and _views(after)["customer_profile"] == "fresh"
    assert after["features"]["judged_at"] == "2026-01-13T00:00:01+00:00"


def test_the_service_scores_without_http(world, model):
    config = ServingConfig(
        project=world,
        model_source=InMemoryModelSource({"champion": ("1", model)}),
        assignments=MemoryAssignments(),
        poll_interval_s=0,
        log_predictions=False,
        clock=Clock(FRESH_AT),
    )
    with ServingService(config) as service:
        fresh = service.predict("C1")  # judged at the configured clock
        stale = service.predict("C1", now=EXPIRED_AT.to_pydatetime())
        replay = service.predict("C1", as_of=T("2026-01-05").to_pydatetime())
        with pytest.raises(ServingError) as refused:
            service.predict("C1", {"logins_30d": 1.0})
    assert fresh.features.status == "fresh" and stale.features.status == "partial"
    assert fresh.model_version == "1" and fresh.fallback == [] and stale.fallback[0]["used"] == "imputed"
    assert replay.features.source == "offline" and replay.as_of == T("2026-01-05").to_pydatetime()
    assert refused.value.status == 422 and "missing features" in refused.value.message
    with TestClient(create_app(config)) as client:  # the route answers what the method decides
        body = client.post("/predict", json={"customer_id": "C1"}).json()
    assert body["score"] == fresh.score and body["features"] == fresh.features.to_dict()


def _as_of_iso(stamp: pd.Timestamp) -> str:
    return stamp.isoformat().replace("+00:00", "Z")


def test_as_of_replays_equal_the_batch_point_in_time_scores(app, world, model):
    store = FeatureStore(world)
    served = {"champion": ServedModel("champion", "1", None, compile_predictor(model))}
    customers = ["C1", "C2", "C3", "C404"]
    client, _ = app(now=T("2026-02-01"))
    replies = {}
    # C1 files a ticket on 01-05 at 15:00 and changes plan on 01-06 at 08:00; a time reads as of its midnight
    days = [CHURN_DAYS[4], CHURN_DAYS[5]]
    with client:
        for day in days:
            for at in (T(day) + pd.Timedelta(days=1), T(day) + pd.Timedelta("13h30min")):
                for c in customers:
                    r = client.post("/predict", json={"customer_id": c, "as_of": _as_of_iso(at)})
                    assert r.status_code == 200, r.text
                    replies[(c, at)] = r.json()
    for day in days:
        end = T(day) + pd.Timedelta(days=1)
        # the batch path: the day's population snapshot through batch scoring (what batch_predictions does)
        batch = score_entities(store.features_at(day, customers, FEATURES), "customer_id", served)
        for c, score in zip(batch["customer_id"], batch["score"], strict=True):
            assert replies[(c, end)]["score"] == score, (c, day)  # the same float, not merely close
        # point-in-time features at any time, scored by the fitted pipeline itself
        for at in (end, T(day) + pd.Timedelta("13h30min")):
            frame = store.get_historical_features(
                pd.DataFrame({"customer_id": customers, "event_timestamp": at}), FEATURES
            )
            expected = predict_scores(model, model_inputs(frame, NUMERIC_FEATURES, CATEGORICAL_FEATURES))
            for c, score in zip(customers, expected, strict=True):
                body = replies[(c, at)]
                assert body["score"] == float(score), (c, at)
                assert body["features"]["source"] == "offline" and body["as_of"] == at.isoformat()
    # the replays move with time: as of 01-05 00:00 (01-05 13:30), 01-06 00:00 (and 01-06 13:30, the same
    # midnight: the ticket), 01-07 00:00 (the plan change) -- three different scores, not one constant
    c1 = {at: body["score"] for (c, at), body in replies.items() if c == "C1"}
    assert len(set(c1.values())) == 3
    assert c1[T("2026-01-06 13:30")] == c1[T("2026-01-06")]
    # batch scoring at a time is the same function of the offline store
    again = score_as_of(store, customers, T("2026-01-06 13:30").to_pydatetime(), served)
    assert list(again["score"]) == [replies[(c, T("2026-01-06 13:30"))]["score"] for c in customers]


def test_as_of_statuses_are_judged_at_that_time(app):
    client, _ = app(now=T("2026-02-01"))
    with client:

        def at(customer, when):
            response = client.post("/predict", json={"customer_id": customer, "as_of": when})
            assert response.status_code == 200, response.text
            return response.json()

        early = at("C1", "2026-01-01T00:00:00Z")  # nothing happened before the first midnight
        c3 = at("C3", "2026-01-04T06:00:00+00:00")  # events, but no customer record
        late = at("C1", "2026-01-20T00:00:00Z")  # nine days after the newest stored day
    assert _views(early) == dict.fromkeys(ALL_VIEWS, "missing")
    # by 01-04 C3 had logged in (engagement) but not yet bought (01-06), never filed a ticket, has no record
    assert _views(c3) == {
        "engagement": "fresh",
        "purchase_activity": "missing",
        "support": "missing",
        "customer_profile": "missing",
    }
    assert c3["features"]["views"]["engagement"]["feature_timestamp"] == "2026-01-04T00:00:00+00:00"
    assert _views(late) == dict.fromkeys(EVENT_VIEWS, "expired") | {"customer_profile": "fresh"}
    assert late["features"]["judged_at"] == "2026-01-20T00:00:00+00:00"
    assert late["features"]["views"]["customer_profile"]["feature_timestamp"] == "2026-01-11T00:00:00+00:00"


def test_replays_are_logged_with_their_as_of_and_are_not_live_traffic(app, world):
    client, _ = app(now=FRESH_AT)
    with client:
        client.post("/predict", json={"customer_id": "C1"})
        client.post("/predict", json={"customer_id": "C1", "as_of": "2026-01-07T00:00:00Z"})
        text = client.get("/metrics").text
    day = plog.read_day(datetime.now(UTC).date(), world.paths.root)
    assert len(day) == 2
    replay = day.loc[day["as_of"].notna()]
    assert list(replay["as_of"]) == ["2026-01-07T00:00:00+00:00"]
    assert list(day["feature_status"]) == ["fresh", "fresh"]
    assert metrics_window(day).arm("champion").requests == 1  # the canary judges live requests only
    assert 'mlops_serving_replays_total{arm="champion",model_version="1"} 1.0' in text
    assert 'mlops_serving_requests_total{arm="champion",model_version="1",status="ok"} 1.0' in text


def test_bad_as_of_requests_are_4xx(app, world):
    # the offline store loses a day the read needs
    shutil.rmtree(partition_path(world.paths, "engagement", "2026-01-04"))
    client, _ = app()
    with client:
        for as_of in (
            "2026-01-05T00:00:00",
            "2026-01-05",
            "soon",
            17,
            "1767571200",
            "2026-13-01T00:00:00Z",
        ):
            response = client.post("/predict", json={"customer_id": "C1", "as_of": as_of})
            assert response.status_code == 422, (as_of, response.text)
        both = client.post(
            "/predict", json={"customer_id": "C1", "as_of": "2026-01-05T00:00:00Z", "features": {}}
        )
        assert both.status_code == 422 and "either features" in both.json()["error"]
        gap = client.post("/predict", json={"customer_id": "C1", "as_of": "2026-01-06T00:00:00Z"})
        assert gap.status_code == 409 and "engagement" in gap.json()["error"], gap.text
        assert (
            client.post("/predict", json={"customer_id": "C1"}).status_code == 200
        )  # online reads unaffected
        assert 'status_code="5' not in client.get("/metrics").text


def test_a_re_materialized_day_is_read_afresh_by_a_running_server(app, world, model):
    """The server keeps one FeatureStore (it caches tiles): a day written again must not be served from the cache."""
    client, _ = app()
    when = {"customer_id": "C3", "as_of": "2026-01-07T00:00:00Z"}
    with client:
        before = client.post("/predict", json=when).json()
        events = world.paths.partition_dir("raw_events", "2026-01-06")
        late = pd.DataFrame(
            {
                "event_id": ["late-1"],
                "customer_id": ["C3"],
                "event_timestamp": [T("2026-01-06 20:00")],
                "event_type": ["support_ticket"],
                "amount": [None],
            }
        )
        frame = pd.concat([pd.read_parquet(events), late], ignore_index=True)
        schema = world.contract("raw_events").schema
        write_partition(pa.Table.from_pandas(frame, schema=schema, preserve_index=False), events)
        FeatureStore(world).materialize(["2026-01-06"])
        after = client.post("/predict", json=when).json()
    frame = FeatureStore(world).get_historical_features(
        pd.DataFrame({"customer_id": ["C3"], "event_timestamp": T("2026-01-07")}), FEATURES
    )
    assert frame["tickets_30d"].iloc[0] == 1  # the late ticket is in the store
    assert after["score"] == _pipeline_score(model, frame) != before["score"]


@pytest.mark.slow
def test_replays_equal_the_batch_predictions_asset_through_the_registry(world, dagster_home, monkeypatch):
    """The champion registered in MLflow scores the day in batch_predictions; the app (registry source, offline
    store) replays each entity at that day's end and answers the same float."""
    import dagster as dg

    from mlops_assets.resources import DataDirResource
    from mlops_assets.serving.assets import build_serving_assets
    from mlops_assets.storage import read_partition
    from mlops_assets.training import registry
    from mlops_assets.training.tracking import TrackingConfig, client_for, ensure_tracking_store
    from mlops_assets.training.train import train_and_log

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    tracking = TrackingConfig.for_project(world)
    ensure_tracking_store(tracking)
    task = ModelTask.from_project(world)
    frame = synthetic_training_set(400, seed=8)
    trained = train_and_log(
        frame, task, TrainConfig(hyperparameters={"max_iter": 30}), tracking=tracking, importance_repeats=1
    )
    registry.promote(
        client_for(tracking),
        trained.version,
        "replay test",
        model_name=tracking.model_name,
        history_path=registry.default_history_path(world.paths.root),
    )
    partitions = dg.DailyPartitionsDefinition(start_date="2026-01-01", end_date="2026-02-01", timezone="UTC")
    (batch_asset,) = [
        a for a in build_serving_assets(world, partitions) if a.key.path == ["batch_predictions"]
    ]
    result = dg.materialize(
        [batch_asset],
        partition_key="2026-01-06",
        resources={"data": DataDirResource(root=str(world.paths.root))},
    )
    assert result.success
    batch = read_partition(world.paths.partition_dir("batch_predictions", "2026-01-06")).to_pandas()
    assert sorted(batch["customer_id"]) == ["C1", "C2", "C3"]  # the monitored population of the day
    config = ServingConfig(project=world, assignments=MemoryAssignments(), poll_interval_s=0)  # the registry
    with TestClient(create_app(config)) as client:
        for customer, score, version in zip(
            batch["customer_id"], batch["score"], batch["model_version"], strict=True
        ):
            body = client.post(
                "/predict", json={"customer_id": customer, "as_of": "2026-01-07T00:00:00Z"}
            ).json()
            assert body["model_version"] == version == str(trained.version)
            assert body["score"] == score, customer  # bit for bit


# --------------------------------------------------------------------------- a regressor through a real server


@pytest.mark.slow
def test_a_regression_model_is_served_by_station_through_a_real_server(data_dir, monkeypatch):
    from mlops_assets.serving.demo import LocalServer

    monkeypatch.setenv("MLOPS_SPEC", str(BIKES_SPEC))
    project = Project.load(BIKES_SPEC, data_dir.root)
    store = bikes_world(project)
    store.refresh_online(now=T("2026-03-25 01:00"))
    task = ModelTask.from_project(project)
    frame, _ = store.build_training_set()
    inputs = select_inputs(task, frame)
    regressor = fit_model(
        frame,
        TrainConfig(
            model_type="hist_gradient_boosting", hyperparameters={"max_iter": 30, "min_samples_leaf": 5}
        ),
        task,
        inputs.numeric,
        inputs.categorical,
    )
    features = inputs.numeric + inputs.categorical
    assert not hasattr(regressor, "predict_proba") and len(features) >= 8
    config = ServingConfig(
        project=project,
        model_source=InMemoryModelSource({"champion": ("4", regressor)}),
        assignments=MemoryAssignments(),
        poll_interval_s=0,
        clock=lambda: T("2026-03-25 12:00").to_pydatetime(),
    )
    online = store.get_online_features(list(range(1, 7)), features, now=T("2026-03-25 12:00").to_pydatetime())
    server = LocalServer(create_app(config))
    with server, httpx.Client(base_url=server.url, timeout=30) as http:
        answers = [http.post("/predict", json={"station_id": s}).json() for s in range(1, 7)]
        as_text = http.post("/predict", json={"station_id": "3"})
        replay = http.post("/predict", json={"station_id": 3, "as_of": "2026-03-20T00:00:00Z"}).json()
        records = [
            {f: None if isinstance(v, float) and math.isnan(v) else v for f, v in row.items()}
            for row in online[features].astype(object).to_dict("records")
        ]
        invoked = http.post("/invocations", json={"dataframe_records": records}).json()
        ping = http.get("/ping")
    assert not server.thread.is_alive()  # the server stopped with the test
    assert [a["station_id"] for a in answers] == list(range(1, 7))  # integer keys, end to end
    assert {s for a in answers for s in _views(a).values()} == {"fresh"}
    expected = predict_scores(regressor, model_inputs(online, inputs.numeric, inputs.categorical))
    np.testing.assert_allclose([a["score"] for a in answers], expected, rtol=0, atol=1e-9)
    assert len(set(np.round(expected, 6))) > 1  # stations really differ
    assert as_text.status_code == 422  # the key's type comes from the spec: an int64 station id
    served = {"champion": ServedModel("champion", "4", None, compile_predictor(regressor))}
    batch = score_entities(store.features_at("2026-03-19", [3], features), "station_id", served)
    assert replay["score"] == float(batch["score"].iloc[0])
    assert invoked["predictions"] == pytest.approx([a["score"] for a in answers], abs=1e-12)
    assert all(isinstance(p, float) for p in invoked["predictions"])  # a regressor: one value per row
    assert ping.status_code == 200
