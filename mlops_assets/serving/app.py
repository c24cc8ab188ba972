"""The serving app: ``POST /predict``, ``GET /health``, ``GET /metrics``, routed by the rollout state.

``create_app(ServingConfig(...))`` builds a FastAPI app; ``serve()`` runs it under uvicorn (the
``mlops serve`` command). Models come from a :class:`~mlops_assets.serving.models.ModelSource`
(the MLflow registry by alias by default, hash-verified) and are swapped in by a background
poller; features come from a :class:`FeatureSource` (the online store by default) unless the
request carries them.

HTTP contract of ``POST /predict``: a body declared as anything but ``application/json`` or
``application/*+json`` is a 415 (a request without ``Content-Type`` is read as JSON; its body must
still parse, or it is a 422). A categorical value the served model's one-hot encoder never saw is a
422 naming the feature, the value and the known categories, or with
``unknown_category="warn"`` (``$MLOPS_UNKNOWN_CATEGORY``) is scored as "no category" with a
``warnings`` list in the response. ``GET /health`` is 200 ``ok``; 200 ``degraded`` with a ``reason``
when the registry is lost (missing, unreadable or unreachable) while loaded models keep serving; 503
``unavailable`` when no champion is loaded. The app never creates an MLflow store.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
import uuid
from collections.abc import Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Protocol

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictFloat,
    StrictInt,
    StrictStr,
    ValidationError,
    create_model,
)
from starlette.background import BackgroundTask

from mlops_assets.project import Project
from mlops_assets.serving.models import (
    FeatureTypeError,
    InMemoryModelSource,
    ModelManager,
    ModelSource,
    RegistryModelSource,
    ServedModel,
)
from mlops_assets.serving.prediction_log import PredictionLogger, PredictionRecord, log_dir
from mlops_assets.serving.routing import (
    CHALLENGER,
    CHAMPION,
    AssignmentStore,
    SqliteAssignments,
    StateFile,
    assign,
    state_path,
)
from mlops_assets.settings import data_paths

log = logging.getLogger(__name__)

#: Largest accepted request body; larger bodies get a 413.
MAX_BODY_BYTES = 16_384
#: What an unknown categorical value in explicit features gets: a 422, or a score with a warning.
UNKNOWN_CATEGORY_ENV = "MLOPS_UNKNOWN_CATEGORY"
UNKNOWN_CATEGORY_POLICIES = ("reject", "warn")
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)

FeatureValue = StrictFloat | StrictInt | StrictStr | None


class PredictRequest(BaseModel):
    """A prediction request: an entity (by the spec's join key), and optionally the feature values to score."""

    model_config = ConfigDict(extra="forbid")

    entity: str
    features: Annotated[dict[str, FeatureValue], Field(max_length=512)] | None = None


def request_model(entity_key: str, dtype: str = "string") -> type[BaseModel]:
    """The request body of ``POST /predict``: ``{<join key>: ..., "features": {...}?}``."""
    key_type = (
        Annotated[StrictStr, Field(min_length=1, max_length=128, pattern=r"^[^\x00-\x1f]+$")]
        if dtype == "string"
        else StrictInt
    )
    return create_model(
        "PredictRequest",
        __config__=ConfigDict(extra="forbid"),
        **{
            entity_key: (key_type, ...),
            "features": (Annotated[dict[str, FeatureValue], Field(max_length=512)] | None, None),
        },
    )


class FeatureSource(Protocol):
    """Latest feature values of one entity (None when the entity is unknown)."""

    def get(self, entity: str, features: list[str]) -> dict[str, Any] | None:
        """Feature dict for ``entity`` restricted to ``features``."""


class OnlineFeatureSource:
    """The online store through :class:`~mlops_assets.featurestore.FeatureStore` (expired values are null)."""

    def __init__(self, project: Project) -> None:
        from mlops_assets.featurestore import FeatureStore

        self.store = FeatureStore(project)
        self._wanted: dict[tuple[str, ...], dict[str, list[str]]] = {}

    def get(self, entity: str, features: list[str]) -> dict[str, Any] | None:
        from mlops_assets.features.layout import select_features

        key = tuple(features)
        wanted = self._wanted.get(key)
        if wanted is None:
            wanted = self._wanted[key] = select_features(self.store.spec, list(features))
        result = self.store.online_store().lookup(str(entity), wanted)
        if all(item["status"] == "missing" for item in result.values()):
            return None
        values: dict[str, Any] = {}
        for item in result.values():
            values.update(item["values"])
        return values


class MappingFeatureSource:
    """Features held in a dict ``{entity: {feature: value}}`` (tests, benchmarks)."""

    def __init__(self, rows: Mapping[str, Mapping[str, Any]]) -> None:
        self.rows = rows

    def get(self, entity: str, features: list[str]) -> dict[str, Any] | None:
        row = self.rows.get(str(entity))
        return None if row is None else {f: row.get(f) for f in features}


@dataclass
class ServingConfig:
    """Everything the app needs; defaults serve the registry's champion/challenger from the data folder."""

    project: Project | None = None  # default: the configured project ($MLOPS_SPEC or [tool.mlops] spec)
    data_root: str | Path | None = None  # default: the project's
    entity_key: str = ""  # the request's key field (default: the join key of the project's target entity)
    entity_dtype: str = "string"
    model_source: ModelSource | None = None  # default: the MLflow registry
    feature_source: FeatureSource | None = None  # default: the online store
    assignments: AssignmentStore | None = None  # default: SQLite under <data_root>/serving
    state_file: str | Path | None = None  # default: <data_root>/serving/rollout_state.json
    prediction_log_dir: str | Path | None = None  # default: <data_root>/serving/prediction_log
    log_predictions: bool = True
    poll_interval_s: float = 5.0  # how often the model source is asked whether an alias moved
    max_body_bytes: int = MAX_BODY_BYTES
    max_threads: int = 1  # OpenMP/BLAS threads in the serving process
    aliases: tuple[str, ...] = (CHAMPION, CHALLENGER)
    #: "reject" (422) or "warn" (scored, with a ``warnings`` field); default ``$MLOPS_UNKNOWN_CATEGORY`` or reject
    unknown_category: str = field(default_factory=lambda: os.environ.get(UNKNOWN_CATEGORY_ENV) or "reject")
    extra: dict[str, Any] = field(default_factory=dict)


class _Metrics:
    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.multiprocess = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "mlops_serving_requests",
            "Prediction requests answered, by arm and model version",
            ["arm", "model_version", "status"],
            registry=r,
        )
        self.errors = Counter(
            "mlops_serving_errors",
            "Model errors while scoring, by arm and model version",
            ["arm", "model_version", "kind"],
            registry=r,
        )
        self.latency = Histogram(
            "mlops_serving_latency_seconds",
            "Prediction latency, by arm and model version",
            ["arm", "model_version"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.rejected = Counter(
            "mlops_serving_rejected",
            "Requests rejected with a 4xx, by status code",
            ["status_code"],
            registry=r,
        )
        self.reloads = Counter(
            "mlops_serving_model_reloads", "Model swaps after an alias moved", ["alias"], registry=r
        )
        self.load_failures = Counter(
            "mlops_serving_model_load_failures",
            "Failed model loads (e.g. hash mismatch)",
            ["alias"],
            registry=r,
        )
        self.model_info = Gauge(
            "mlops_serving_model_version_info",
            "1 for the version served per alias",
            ["alias", "model_version"],
            registry=r,
            multiprocess_mode="livemax",
        )

    def render(self) -> bytes:
        from prometheus_client import CollectorRegistry, generate_latest, multiprocess

        if self.multiprocess:
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
            return generate_latest(registry)
        return generate_latest(self.registry)


def _problem(status: int, message: str, errors: list[dict[str, Any]] | None = None) -> JSONResponse:
    body: dict[str, Any] = {"error": message}
    if errors:
        body["detail"] = errors
    return JSONResponse(body, status_code=status)


async def _read_body(request: Request, limit: int) -> bytes | None:
    """The request body, or None when it is larger than ``limit`` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        return None
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def is_json_media_type(content_type: str) -> bool:
    """``application/json`` or ``application/<anything>+json``, whatever its parameters."""
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or (media.startswith("application/") and media.endswith("+json"))


def _validation_errors(exc: ValidationError) -> list[dict[str, Any]]:
    return [{"loc": [str(p) for p in e["loc"]], "msg": e["msg"], "type": e["type"]} for e in exc.errors()]


class _Service:
    """The state behind the routes: models, rollout state, features, log and metrics."""

    def __init__(self, config: ServingConfig) -> None:
        self.config = config
        project = config.project
        needs_project = config.model_source is None or config.feature_source is None or not config.entity_key
        if project is None and needs_project:
            project = Project.load(data_root=config.data_root)
        if project is not None and config.data_root is not None:
            project = project.with_data_root(config.data_root)
        root = config.data_root if config.data_root is not None else (project.paths.root if project else None)
        self.entity_key = config.entity_key or project.target_entity.join_key
        dtype = (
            project.target_entity.dtype
            if project is not None and not config.entity_key
            else config.entity_dtype
        )
        self.request_model = request_model(self.entity_key, dtype)
        self.metrics = _Metrics()
        if config.model_source is not None:
            source = config.model_source
        else:  # the registry of the served data folder
            from mlops_assets.training.tracking import TrackingConfig

            source = RegistryModelSource(TrackingConfig.for_project(project).tracking_uri, project.model_name)
        self.models = ModelManager(
            source, config.aliases, on_error=self._on_load_error, on_swap=self._on_swap
        )
        self.features = (
            config.feature_source if config.feature_source is not None else OnlineFeatureSource(project)
        )
        self.state = StateFile(config.state_file or state_path(root))
        self.assignments = (
            config.assignments
            if config.assignments is not None
            else SqliteAssignments(data_paths(root).serving / "bandit_assignments.sqlite")
        )
        self.logger = (
            PredictionLogger(config.prediction_log_dir or log_dir(root)) if config.log_predictions else None
        )
        self._limits = None

    def _on_load_error(self, alias: str, exc: Exception) -> None:
        self.metrics.load_failures.labels(alias).inc()

    def _on_swap(self, alias: str, old: ServedModel | None, new: ServedModel | None) -> None:
        self.metrics.reloads.labels(alias).inc()
        if old is not None:
            self.metrics.model_info.labels(alias, old.version).set(0)
        if new is not None:
            self.metrics.model_info.labels(alias, new.version).set(1)

    def start(self) -> None:
        from threadpoolctl import threadpool_limits

        self._limits = threadpool_limits(limits=self.config.max_threads)
        self.models.refresh()
        self.models.start(self.config.poll_interval_s)

    def stop(self) -> None:
        self.models.stop()
        if self.logger is not None:
            self.logger.close()

    def record(
        self,
        rid: str,
        entity: str,
        arm: str,
        model: ServedModel | None,
        score: float | None,
        latency_s: float,
        mode: str,
        shadow: bool = False,
        error: str | None = None,
        experiment: str | None = None,
    ) -> None:
        version = model.version if model is not None else "none"
        status = "error" if error else "ok"
        if not shadow:
            self.metrics.requests.labels(arm, version, status).inc()
        if error:
            self.metrics.errors.labels(arm, version, "shadow" if shadow else "predict").inc()
        else:
            self.metrics.latency.labels(arm, version).observe(latency_s)
        if self.logger is not None:
            self.logger.write(
                PredictionRecord(
                    rid,
                    entity,
                    arm,
                    version if model else None,
                    score,
                    round(latency_s * 1000.0, 4),
                    datetime.now(UTC).isoformat(),
                    mode,
                    shadow,
                    status,
                    error,
                    experiment,
                )
            )

    def score(self, model: ServedModel, entity: str, explicit: dict[str, Any] | None) -> float:
        pred = model.predictor
        values = explicit if explicit is not None else self.features.get(entity, pred.features)
        if values is None:
            raise LookupError(entity)
        return pred.predict_one(values)

    def shadow(self, rid: str, entity: str, explicit: dict[str, Any] | None, mode: str) -> None:
        model = self.models.get(CHALLENGER)
        if model is None:
            return
        start = time.perf_counter()
        try:
            if explicit is not None:
                model.predictor.check_types(explicit)
            score = self.score(model, entity, explicit)
            self.record(rid, entity, CHALLENGER, model, score, time.perf_counter() - start, mode, shadow=True)
        except Exception as exc:  # a shadow failure is logged, never seen by the caller
            self.record(
                rid,
                entity,
                CHALLENGER,
                model,
                None,
                time.perf_counter() - start,
                mode,
                shadow=True,
                error=f"{type(exc).__name__}: {exc}",
            )


def create_app(config: ServingConfig | None = None) -> FastAPI:
    """The FastAPI serving app for ``config``."""
    config = config or ServingConfig()
    if config.unknown_category not in UNKNOWN_CATEGORY_POLICIES:
        raise ValueError(
            f"unknown_category (${UNKNOWN_CATEGORY_ENV}) is {config.unknown_category!r}; "
            f"expected one of {', '.join(UNKNOWN_CATEGORY_POLICIES)}"
        )
    service = _Service(config)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        service.start()
        yield
        service.stop()

    app = FastAPI(title="mlops_assets serving", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.service = service

    @app.post("/predict")
    async def predict(request: Request) -> Response:
        start = time.perf_counter()
        content_type = request.headers.get("content-type")
        if content_type is not None and not is_json_media_type(content_type):
            service.metrics.rejected.labels("415").inc()
            return _problem(
                415, f"unsupported content type {content_type!r}: send the request as application/json"
            )
        body = await _read_body(request, config.max_body_bytes)
        if body is None:
            service.metrics.rejected.labels("413").inc()
            return _problem(413, f"request body larger than {config.max_body_bytes} bytes")
        try:
            parsed = service.request_model.model_validate_json(body)
        except ValidationError as exc:
            service.metrics.rejected.labels("422").inc()
            return _problem(422, "invalid request", _validation_errors(exc))
        req = PredictRequest(entity=str(getattr(parsed, service.entity_key)), features=parsed.features)
        entity_value = getattr(parsed, service.entity_key)
        state = service.state.get()
        arm = assign(state, req.entity, service.assignments).arm
        model = service.models.get(arm)
        if model is None and arm != CHAMPION:
            arm, model = CHAMPION, service.models.get(CHAMPION)
        if model is None:
            lost = service.models.source_error
            return _problem(503, "no champion model is loaded" + (f" ({lost})" if lost else ""))
        warnings: list[str] = []
        explicit = req.features
        if explicit is not None:
            wanted = model.predictor.features
            unknown = sorted(set(explicit) - set(wanted))
            missing = [f for f in wanted if f not in explicit]
            if unknown or missing:
                service.metrics.rejected.labels("422").inc()
                parts = ([f"unknown features {unknown}"] if unknown else []) + (
                    [f"missing features {missing}"] if missing else []
                )
                return _problem(
                    422, "; ".join(parts) + f"; the model takes {wanted} (null for unknown values)"
                )
            try:
                model.predictor.check_types(explicit)
            except FeatureTypeError as exc:
                service.metrics.rejected.labels("422").inc()
                return _problem(422, str(exc))
            unseen = model.predictor.unknown_categories(explicit)
            if unseen:
                text = [
                    f"{u['feature']}: {u['value']!r} is not a category the model was trained on "
                    f"(known: {', '.join(u['known'])})"
                    for u in unseen
                ]
                scorable = all(u["feature"] in model.predictor.ignores_unknown for u in unseen)
                if config.unknown_category == "reject" or not scorable:
                    service.metrics.rejected.labels("422").inc()
                    return _problem(422, "unknown categorical values: " + "; ".join(text), unseen)
                warnings = [t + "; scored as no category" for t in text]
        rid = request.headers.get("x-request-id") or uuid.uuid4().hex
        candidates = [(arm, model)]
        if arm != CHAMPION and service.models.get(CHAMPION) is not None:
            candidates.append(
                (CHAMPION, service.models.get(CHAMPION))
            )  # a failing challenger: the champion answers
        score, failure = None, ""
        for arm, model in candidates:  # noqa: B007 - the arm and model that answered are used below
            try:
                score = service.score(model, req.entity, explicit)
                break
            except LookupError:
                service.metrics.rejected.labels("404").inc()
                return _problem(
                    404,
                    f"{service.entity_key} {entity_value!r} has no features in the online store; send them in 'features'",
                )
            except Exception as exc:
                failure = type(exc).__name__
                service.record(
                    rid,
                    req.entity,
                    arm,
                    model,
                    None,
                    time.perf_counter() - start,
                    state.mode,
                    error=f"{failure}: {exc}",
                    experiment=state.experiment,
                )
        else:
            return _problem(503, f"model {arm} failed to score: {failure}")
        latency = time.perf_counter() - start
        service.record(rid, req.entity, arm, model, score, latency, state.mode, experiment=state.experiment)
        payload = {
            "request_id": rid,
            service.entity_key: entity_value,
            "score": score,
            "arm": arm,
            "model_version": model.version,
            "mode": state.mode,
        }
        if warnings:
            payload["warnings"] = warnings
        task = None
        if state.mode == "shadow":
            task = BackgroundTask(service.shadow, rid, req.entity, explicit, state.mode)
        return Response(json.dumps(payload), media_type="application/json", background=task)

    @app.get("/health")
    async def health() -> JSONResponse:
        models = {
            a: {"version": m.version, "sha256": m.sha256, "fast_path": m.predictor.fast}
            for a, m in service.models.models.items()
        }
        ok = CHAMPION in models
        lost = service.models.source_error
        if not ok:
            status, reason = "unavailable", "no champion model is loaded" + (f": {lost}" if lost else "")
        elif lost:
            status, reason = (
                "degraded",
                f"model registry unavailable, serving the models loaded before: {lost}",
            )
        else:
            status, reason = "ok", None
        body = {
            "status": status,
            "reason": reason,
            "registry_error": lost,
            "models": models,
            "rollout": service.state.get().to_dict(),
            "model_errors": dict(service.models.last_error),
            "rollout_state_error": service.state.last_error,
        }
        return JSONResponse(body, status_code=200 if ok else 503)

    @app.get("/metrics")
    async def metrics() -> Response:
        from prometheus_client import CONTENT_TYPE_LATEST

        return Response(service.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    return app


def app_from_env() -> FastAPI:
    """The default app (registry models, online features) for ``uvicorn --factory``."""
    return create_app(ServingConfig(poll_interval_s=float(os.environ.get("MLOPS_SERVING_POLL_S", "5"))))


def serve(
    host: str = "127.0.0.1",
    port: int = 8000,
    workers: int = 1,
    data_root: str | Path | None = None,
    log_level: str = "warning",
) -> None:
    """Run the serving app under uvicorn (blocks); ``mlops serve`` calls this."""
    import uvicorn

    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, "1")
    if data_root is not None:
        os.environ["MLOPS_DATA_DIR"] = str(Path(data_root).resolve())
    if workers > 1 and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="mlops-prometheus-")
    uvicorn.run(
        "mlops_assets.serving.app:app_from_env",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_level=log_level,
        access_log=False,
    )


__all__ = [
    "FeatureSource",
    "InMemoryModelSource",
    "MappingFeatureSource",
    "OnlineFeatureSource",
    "PredictRequest",
    "ServingConfig",
    "app_from_env",
    "create_app",
    "serve",
]
