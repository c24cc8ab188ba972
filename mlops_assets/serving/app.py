"""The serving app: ``POST /predict``, ``POST /invocations``, ``GET /ping``, ``GET /health``, ``GET /metrics``.

The scoring decision is a plain method, :meth:`ServingService.predict`: routing by the rollout state,
the feature lookup and its freshness, the fallbacks, the prediction log and the metrics. The FastAPI
routes built by ``create_app(ServingConfig(...))`` only parse requests and serialize answers; ``serve()``
runs the app under uvicorn (the ``mlops serve`` command). Models come from a
:class:`~mlops_assets.serving.models.ModelSource` (the MLflow registry by alias by default, hash-verified)
and are swapped in by a background poller; features come from a :class:`FeatureSource` (the online store
by default, the offline store for a request with ``as_of``) unless the request carries them.

HTTP contract of ``POST /predict``: ``{<entity key>: ..., "features": {...}?, "as_of": "<ISO time>"?}``.
A body declared as anything but ``application/json`` or ``application/*+json`` is a 415 (a request without
``Content-Type`` is read as JSON; its body must still parse, or it is a 422). The answer carries the score,
the arm and model version, the features' freshness (``features``: where they came from, their ``as_of``
and each view's ``status`` — ``fresh``, ``expired`` or ``missing`` — judged at the request's time, or at
``as_of``) and every ``fallback`` used (the champion answering for a challenger, features scored as
imputed values). A request none of whose views is fresh is scored with that status visible, or answered
409 / 422 with it (``stale_features``, ``$MLOPS_STALE_FEATURES``). With ``as_of`` the features are read
from the offline store point-in-time at that time (a replay: the batch score of that time, exactly).
A categorical value the served model's one-hot encoder never saw is a 422 naming the feature, the value
and the known categories, or with ``unknown_category="warn"`` (``$MLOPS_UNKNOWN_CATEGORY``) is scored as
"no category" with a ``warnings`` list in the response.

``POST /invocations`` and ``GET /ping`` speak MLflow's scoring protocol (see
:mod:`mlops_assets.serving.invocations`): explicit feature rows scored by the champion.

``GET /health`` is 200 ``ok``; 200 ``degraded`` with a ``reason`` when the registry is lost (missing,
unreadable or unreachable) while loaded models keep serving; 503 ``unavailable`` when no champion is
loaded. The app never creates an MLflow store. Malformed input is a 4xx, never a 5xx.
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Protocol

import pandas as pd
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from pydantic import (
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictFloat,
    StrictInt,
    StrictStr,
    ValidationError,
    create_model,
)
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool

from mlops_assets.project import Project
from mlops_assets.serving import invocations as mlflow_protocol
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

#: Largest accepted ``/predict`` body; larger bodies get a 413.
MAX_BODY_BYTES = 16_384
#: Largest accepted ``/invocations`` body and number of rows in it.
MAX_INVOCATION_BYTES = 4 * 1024 * 1024
MAX_INVOCATION_ROWS = 10_000
#: What an unknown categorical value in explicit features gets: a 422, or a score with a warning.
UNKNOWN_CATEGORY_ENV = "MLOPS_UNKNOWN_CATEGORY"
UNKNOWN_CATEGORY_POLICIES = ("reject", "warn")
#: What a request none of whose feature views is fresh gets: a score with the status visible, a 409 or a 422.
STALE_FEATURES_ENV = "MLOPS_STALE_FEATURES"
STALE_FEATURES_POLICIES = ("serve", "409", "422")
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
FRESH, EXPIRED, MISSING = "fresh", "expired", "missing"

FeatureValue = StrictFloat | StrictInt | StrictStr | None


def _iso_time(value: Any) -> Any:
    """``as_of`` is an ISO-8601 time with its offset (a number or a bare date is not)."""
    if not isinstance(value, str):
        raise ValueError("as_of must be an ISO-8601 time with a time zone, e.g. 2026-02-01T00:00:00Z")
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(f"as_of {value!r} is not an ISO-8601 time, e.g. 2026-02-01T00:00:00Z") from None
    if parsed.tzinfo is None or len(value) <= 10:
        raise ValueError(f"as_of {value!r} needs a time and a time zone, e.g. 2026-02-01T00:00:00Z")
    return parsed.astimezone(UTC)


AsOf = Annotated[AwareDatetime, BeforeValidator(_iso_time)]


def request_model(entity_key: str, dtype: str = "string") -> type[BaseModel]:
    """The request body of ``POST /predict``: ``{<join key>: ..., "features": {...}?, "as_of": ...?}``."""
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
            "as_of": (AsOf | None, None),
        },
    )


# --------------------------------------------------------------------------------------- features


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.astimezone(UTC).isoformat()


@dataclass(frozen=True)
class ViewStatus:
    """How fresh one feature view's values are: ``fresh``, ``expired`` or ``missing``, and their feature time."""

    status: str
    feature_timestamp: datetime | None = None


@dataclass(frozen=True)
class FeatureLookup:
    """One entity's feature values and, per view, how fresh they were when judged.

    ``source`` is where they came from (``online``, ``offline`` for an ``as_of`` read, ``request`` for features
    sent with the request, or a custom source's name); ``judged_at`` the time TTLs were judged against (the
    request's time, or its ``as_of``). ``frame`` holds the offline read itself (scored as the batch scores it).
    """

    values: Mapping[str, Any]
    views: Mapping[str, ViewStatus]
    source: str
    judged_at: datetime | None = None
    frame: Any = None

    @property
    def stale_views(self) -> list[str]:
        """Views whose values are not fresh (their features are scored as what the store answers: null)."""
        return [v for v, s in self.views.items() if s.status != FRESH]

    @property
    def none_fresh(self) -> bool:
        """True when the lookup had views and none of them was fresh."""
        return bool(self.views) and len(self.stale_views) == len(self.views)

    @property
    def status(self) -> str:
        """``request``, ``fresh`` (every view), ``partial`` or ``stale`` (no view fresh)."""
        if not self.views:
            return "request"
        stale = len(self.stale_views)
        return FRESH if not stale else "stale" if stale == len(self.views) else "partial"

    @property
    def as_of(self) -> datetime | None:
        """The oldest feature time of the fresh views: every value served is as of that time or later."""
        stamps = [
            s.feature_timestamp for s in self.views.values() if s.status == FRESH and s.feature_timestamp
        ]
        return min(stamps) if stamps else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "as_of": _iso(self.as_of),
            "judged_at": _iso(self.judged_at),
            "views": {
                v: {"status": s.status, "feature_timestamp": _iso(s.feature_timestamp)}
                for v, s in self.views.items()
            },
        }


class FeatureSource(Protocol):
    """Feature values of one entity with their per-view freshness, judged at ``at``."""

    def lookup(self, entity: Any, features: list[str], at: datetime) -> FeatureLookup:
        """The ``features`` of ``entity``; a view the entity has no row in is ``missing`` (values null)."""


class FeatureUnavailable(RuntimeError):
    """The feature store cannot answer this read: the offline store lacks days an ``as_of`` read needs (409), or
    the online store was built before the views changed (503: the server's store, not the request, is at fault)."""

    def __init__(self, message: str, status: int = 409) -> None:
        super().__init__(message)
        self.status = status


class OnlineFeatureSource:
    """The online store through :class:`~mlops_assets.featurestore.FeatureStore`; TTLs judged at the request's time."""

    name = "online"

    def __init__(self, project: Project) -> None:
        from mlops_assets.featurestore import FeatureStore

        self.store = FeatureStore(project)
        self._wanted: dict[tuple[str, ...], dict[str, list[str]]] = {}

    def lookup(self, entity: Any, features: list[str], at: datetime) -> FeatureLookup:
        from mlops_assets.features.layout import select_features

        key = tuple(features)
        wanted = self._wanted.get(key)
        if wanted is None:
            wanted = self._wanted[key] = select_features(self.store.spec, list(features))
        try:
            result = self.store.online_store().lookup(str(entity), wanted, at)
        except KeyError as exc:  # the online database predates a view change
            raise FeatureUnavailable(str(exc.args[0] if exc.args else exc), status=503) from None
        values: dict[str, Any] = {}
        views: dict[str, ViewStatus] = {}
        for view, item in result.items():
            values.update(item["values"])
            views[view] = ViewStatus(item["status"], item["feature_timestamp"])
        return FeatureLookup(values, views, self.name, at)


class OfflineFeatureSource:
    """The offline store point-in-time (``as_of`` requests): the read batch scoring makes, for one entity.

    Holds one :class:`~mlops_assets.featurestore.FeatureStore` (it caches the tiles it reads); reads are serialized.
    """

    name = "offline"

    def __init__(self, project: Project) -> None:
        from mlops_assets.featurestore import FeatureStore

        self.store = FeatureStore(project)
        self._lock = threading.Lock()

    def lookup(self, entity: Any, features: list[str], at: datetime) -> FeatureLookup:
        from mlops_assets.features.layout import select_features
        from mlops_assets.features.pit import TS_SUFFIX
        from mlops_assets.features.tiles import FeatureInputError
        from mlops_assets.serving.batch import STATUS_SUFFIX, features_as_of

        try:
            with self._lock:
                frame = features_as_of(self.store, [entity], at, list(features))
        except FeatureInputError as exc:
            raise FeatureUnavailable(str(exc)) from None
        except (ValueError, TypeError) as exc:  # e.g. an entity value the view's key type cannot hold
            raise FeatureUnavailable(f"the offline store cannot read {entity!r}: {exc}") from None
        row = frame.iloc[0]
        views = {}
        for view in select_features(self.store.spec, list(features)):
            stamp = row[f"{view}{TS_SUFFIX}"]
            views[view] = ViewStatus(
                row[f"{view}{STATUS_SUFFIX}"], None if pd.isna(stamp) else stamp.to_pydatetime()
            )
        values = {f: _plain(row[f]) for f in features}
        return FeatureLookup(values, views, self.name, at, frame)


def _plain(value: Any) -> Any:
    """A frame cell as a JSON-ready Python value (missing values as None)."""
    if value is None or value is pd.NA or value is pd.NaT:
        return None
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


class MappingFeatureSource:
    """Features held in a dict ``{entity: {feature: value}}`` (tests, benchmarks, demos): one always-fresh view."""

    name = "mapping"

    def __init__(self, rows: Mapping[str, Mapping[str, Any]], view: str = "features") -> None:
        self.rows = rows
        self.view = view

    def lookup(self, entity: Any, features: list[str], at: datetime) -> FeatureLookup:
        row = self.rows.get(str(entity))
        if row is None:
            return FeatureLookup(dict.fromkeys(features), {self.view: ViewStatus(MISSING)}, self.name, at)
        return FeatureLookup({f: row.get(f) for f in features}, {self.view: ViewStatus(FRESH)}, self.name, at)


class _GetAdapter:
    """A source with only ``get(entity, features) -> dict | None`` (the earlier protocol) as one view."""

    def __init__(self, source: Any) -> None:
        self.source = source
        self.name = type(source).__name__

    def lookup(self, entity: Any, features: list[str], at: datetime) -> FeatureLookup:
        values = self.source.get(str(entity), features)
        if values is None:
            return FeatureLookup(dict.fromkeys(features), {"features": ViewStatus(MISSING)}, self.name, at)
        return FeatureLookup(dict(values), {"features": ViewStatus(FRESH)}, self.name, at)


# --------------------------------------------------------------------------------------- config


@dataclass
class ServingConfig:
    """Everything the app needs; defaults serve the registry's champion/challenger from the data folder."""

    project: Project | None = None  # default: the configured project ($MLOPS_SPEC or [tool.mlops] spec)
    data_root: str | Path | None = None  # default: the project's
    entity_key: str = ""  # the request's key field (default: the join key of the project's target entity)
    entity_dtype: str = "string"
    model_source: ModelSource | None = None  # default: the MLflow registry
    feature_source: FeatureSource | None = None  # default: the online store
    offline_source: FeatureSource | None = None  # for ``as_of``; default: the project's offline store
    assignments: AssignmentStore | None = None  # default: SQLite under <data_root>/serving
    state_file: str | Path | None = None  # default: <data_root>/serving/rollout_state.json
    prediction_log_dir: str | Path | None = None  # default: <data_root>/serving/prediction_log
    log_predictions: bool = True
    poll_interval_s: float = 5.0  # how often the model source is asked whether an alias moved
    max_body_bytes: int = MAX_BODY_BYTES
    max_invocation_bytes: int = MAX_INVOCATION_BYTES
    max_invocation_rows: int = MAX_INVOCATION_ROWS
    max_threads: int = 1  # OpenMP/BLAS threads in the serving process
    aliases: tuple[str, ...] = (CHAMPION, CHALLENGER)
    #: "reject" (422) or "warn" (scored, with a ``warnings`` field); default ``$MLOPS_UNKNOWN_CATEGORY`` or reject
    unknown_category: str = field(default_factory=lambda: os.environ.get(UNKNOWN_CATEGORY_ENV) or "reject")
    #: no fresh view: "serve" (200, statuses visible), "409" or "422"; default ``$MLOPS_STALE_FEATURES`` or serve
    stale_features: str = field(default_factory=lambda: os.environ.get(STALE_FEATURES_ENV) or "serve")
    #: the request's time, which TTLs are judged against (default: the wall clock, UTC)
    clock: Callable[[], datetime] = field(default=lambda: datetime.now(UTC))
    extra: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> None:
        if self.unknown_category not in UNKNOWN_CATEGORY_POLICIES:
            raise ValueError(
                f"unknown_category (${UNKNOWN_CATEGORY_ENV}) is {self.unknown_category!r}; "
                f"expected one of {', '.join(UNKNOWN_CATEGORY_POLICIES)}"
            )
        if str(self.stale_features) not in STALE_FEATURES_POLICIES:
            raise ValueError(
                f"stale_features (${STALE_FEATURES_ENV}) is {self.stale_features!r}; "
                f"expected one of {', '.join(STALE_FEATURES_POLICIES)}"
            )


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
        self.stale = Counter(
            "mlops_serving_stale_features",
            "Predictions whose features were not all fresh, by feature status (partial, stale)",
            ["feature_status"],
            registry=r,
        )
        self.replays = Counter(
            "mlops_serving_replays",
            "Requests with as_of scored on the offline store (not counted as live requests)",
            ["arm", "model_version"],
            registry=r,
        )
        self.invocations = Counter(
            "mlops_serving_invocations",
            "POST /invocations requests answered, by model version",
            ["model_version", "status"],
            registry=r,
        )
        self.invocation_rows = Counter(
            "mlops_serving_invocation_rows", "Rows scored through /invocations", ["model_version"], registry=r
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


# --------------------------------------------------------------------------------------- results


class ServingError(Exception):
    """A request the service answers with an error status: a message, and fields added to the error body."""

    def __init__(
        self, status: int, message: str, detail: list[dict[str, Any]] | None = None, **extra: Any
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.detail = detail
        self.extra = extra

    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"error": self.message}
        if self.detail:
            body["detail"] = self.detail
        body.update(self.extra)
        return body


@dataclass
class Prediction:
    """What :meth:`ServingService.predict` decided for one request."""

    request_id: str
    entity: Any
    score: float
    arm: str
    model_version: str
    mode: str
    features: FeatureLookup
    fallback: list[dict[str, Any]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    as_of: datetime | None = None
    #: work left for after the response (the shadow score), when predict was asked to defer it
    after: Callable[[], None] | None = None

    def to_dict(self, entity_key: str) -> dict[str, Any]:
        payload: dict[str, Any] = {
            "request_id": self.request_id,
            entity_key: self.entity,
            "score": self.score,
            "arm": self.arm,
            "model_version": self.model_version,
            "mode": self.mode,
            "features": self.features.to_dict(),
            "fallback": self.fallback,
        }
        if self.as_of is not None:
            payload["as_of"] = _iso(self.as_of)
        if self.warnings:
            payload["warnings"] = self.warnings
        return payload


@dataclass
class Invocation:
    """What :meth:`ServingService.invoke` scored: MLflow's ``predictions`` and the model that scored them."""

    predictions: list
    scores: list[float]
    model_version: str
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {"predictions": self.predictions}
        if self.warnings:
            body["warnings"] = self.warnings
        return body


def _unknown_category_text(unseen: list[dict[str, Any]]) -> list[str]:
    return [
        f"{u['feature']}: {u['value']!r} is not a category the model was trained on (known: {', '.join(u['known'])})"
        for u in unseen
    ]


# --------------------------------------------------------------------------------------- the service


class ServingService:
    """The state behind the routes (models, rollout state, features, log, metrics) and the scoring decision.

    ``with ServingService(config) as service: service.predict(...)`` serves without HTTP: it loads the
    models (and starts the alias poller when ``poll_interval_s > 0``) on entry and stops on exit.
    """

    def __init__(self, config: ServingConfig) -> None:
        config.validate()
        self.config = config
        project = config.project
        needs_project = config.model_source is None or config.feature_source is None or not config.entity_key
        if project is None and needs_project:
            project = Project.load(data_root=config.data_root)
        if project is not None and config.data_root is not None:
            project = project.with_data_root(config.data_root)
        self.project = project
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
        features = (
            config.feature_source if config.feature_source is not None else OnlineFeatureSource(project)
        )
        self.features = features if hasattr(features, "lookup") else _GetAdapter(features)
        self._offline = config.offline_source
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
        self._worker = threading.local()

    # ------------------------------------------------------------------ lifecycle

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

    def in_worker(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Call ``fn`` in a worker thread of the server: OpenMP's thread limit is per thread, so it is set here too."""
        if not getattr(self._worker, "limited", False):
            from threadpoolctl import threadpool_limits

            threadpool_limits(limits=self.config.max_threads)
            self._worker.limited = True
        return fn(*args, **kwargs)

    def __enter__(self) -> ServingService:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def offline(self) -> FeatureSource:
        """The source ``as_of`` requests read (created on first use: most servers never replay)."""
        if self._offline is None:
            if self.project is None:
                raise ServingError(422, "as_of needs the project's offline store; this server has no project")
            self._offline = OfflineFeatureSource(self.project)
        return self._offline

    # ------------------------------------------------------------------ recording

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
        as_of: datetime | None = None,
        feature_status: str | None = None,
    ) -> None:
        version = model.version if model is not None else "none"
        status = "error" if error else "ok"
        if as_of is not None:
            if not shadow:
                self.metrics.replays.labels(arm, version).inc()
        else:
            if not shadow:
                self.metrics.requests.labels(arm, version, status).inc()
                if feature_status in ("partial", "stale"):
                    self.metrics.stale.labels(feature_status).inc()
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
                    _iso(as_of),
                    feature_status,
                )
            )

    # ------------------------------------------------------------------ the scoring decision

    def _check_explicit(self, model: ServedModel, explicit: Mapping[str, Any]) -> list[str]:
        """Raise a 422 for features that do not fit the model; the warnings of a scorable request."""
        pred = model.predictor
        wanted = pred.features
        unknown = sorted(set(explicit) - set(wanted))
        missing = [f for f in wanted if f not in explicit]
        if unknown or missing:
            parts = ([f"unknown features {unknown}"] if unknown else []) + (
                [f"missing features {missing}"] if missing else []
            )
            raise ServingError(
                422, "; ".join(parts) + f"; the model takes {wanted} (null for unknown values)"
            )
        try:
            pred.check_types(explicit)
        except FeatureTypeError as exc:
            raise ServingError(422, str(exc)) from None
        unseen = pred.unknown_categories(explicit)
        if not unseen:
            return []
        text = _unknown_category_text(unseen)
        scorable = all(u["feature"] in pred.ignores_unknown for u in unseen)
        if self.config.unknown_category == "reject" or not scorable:
            raise ServingError(422, "unknown categorical values: " + "; ".join(text), unseen)
        return [t + "; scored as no category" for t in text]

    def _lookup(
        self, entity: Any, features: list[str], now: datetime, as_of: datetime | None
    ) -> FeatureLookup:
        source = self.offline if as_of is not None else self.features
        try:
            return source.lookup(entity, features, as_of if as_of is not None else now)
        except FeatureUnavailable as exc:
            where = f"as of {_iso(as_of)}" if as_of is not None else "now"
            raise ServingError(
                exc.status, f"the feature store cannot answer for {self.entity_key} {entity!r} {where}: {exc}"
            ) from None
        except KeyError as exc:  # the model takes features the project's views do not define
            raise ServingError(
                503, f"the served model's features are not in the feature views: {exc}"
            ) from None

    def _stale_fallback(self, lookup: FeatureLookup) -> dict[str, Any] | None:
        stale = lookup.stale_views
        if not stale:
            return None
        states = ", ".join(f"{v} {lookup.views[v].status}" for v in stale)
        scored = (
            "as the offline store answers at that time (null, 0 for counts of an entity without rows)"
            if lookup.source == "offline"
            else "as null (the model imputes them)"
        )
        return {
            "kind": "features",
            "used": "imputed",
            "views": stale,
            "reason": f"{states}: their features scored {scored}",
        }

    def _score(self, model: ServedModel, lookup: FeatureLookup) -> float:
        if lookup.frame is not None:  # an offline read: scored by the pipeline, as batch scoring does
            return float(model.predictor.predict_frame(lookup.frame)[0])
        return model.predictor.predict_one(lookup.values)

    def predict(
        self,
        entity: Any,
        features: Mapping[str, Any] | None = None,
        *,
        as_of: datetime | None = None,
        request_id: str | None = None,
        now: datetime | None = None,
        started: float | None = None,
        defer_shadow: bool = False,
    ) -> Prediction:
        """Score one entity: route it, look its features up (or check the given ones), fall back, log, count.

        ``now`` is the request's time (default: the wall clock) that TTLs are judged against; ``as_of`` reads
        the offline store point-in-time instead (a replay, logged with its ``as_of`` and not counted as live
        traffic; no shadow score). Raises :class:`ServingError` for what is answered with an error status.
        In shadow mode the challenger's score is computed before returning, or left in ``Prediction.after``
        with ``defer_shadow``.
        """
        started = time.perf_counter() if started is None else started
        now = now or self.config.clock()
        if as_of is not None and features is not None:
            raise ServingError(
                422, "send either features (scored as given) or as_of (read from the offline store), not both"
            )
        if as_of is not None and as_of.tzinfo is None:
            raise ServingError(422, "as_of needs a time zone (e.g. 2026-02-01T00:00:00Z)")
        entity_id = str(entity)
        state = self.state.get()
        routed = assign(state, entity_id, self.assignments).arm
        arm, model = routed, self.models.get(routed)
        fallback: list[dict[str, Any]] = []
        if model is None and arm != CHAMPION:
            arm, model = CHAMPION, self.models.get(CHAMPION)
            if model is not None:
                fallback.append({"kind": "model", "used": CHAMPION, "reason": f"no {routed} model is loaded"})
        if model is None:
            lost = self.models.source_error
            raise ServingError(503, "no champion model is loaded" + (f" ({lost})" if lost else ""))
        warnings: list[str] = []
        lookups: dict[tuple[str, ...], FeatureLookup] = {}

        def lookup_for(m: ServedModel) -> FeatureLookup:
            names = tuple(m.predictor.features)
            if names not in lookups:
                if features is not None:
                    lookups[names] = FeatureLookup(dict(features), {}, "request", None)
                else:
                    lookups[names] = self._lookup(entity, list(names), now, as_of)
            return lookups[names]

        if features is not None:
            warnings = self._check_explicit(model, features)
        lookup = lookup_for(model)
        if lookup.none_fresh and self.config.stale_features != "serve":
            states = ", ".join(f"{v} {s.status}" for v, s in lookup.views.items())
            raise ServingError(
                int(self.config.stale_features),
                f"no fresh features for {self.entity_key} {entity!r} ({states}); not scored "
                f"(stale_features={self.config.stale_features})",
                **{self.entity_key: entity, "features": lookup.to_dict()},
            )
        rid = request_id or uuid.uuid4().hex
        candidates = [(arm, model)]
        champion = self.models.get(CHAMPION)
        if arm != CHAMPION and champion is not None:
            candidates.append((CHAMPION, champion))  # a failing challenger: the champion answers
        score, failure, failed = None, "", None
        for arm, model in candidates:  # noqa: B007 - the arm and model that answered are used below
            try:
                lookup = lookup_for(model)
                score = self._score(model, lookup)
                break
            except ServingError:
                raise
            except Exception as exc:
                failure = f"{type(exc).__name__}: {exc}"  # logged in full; the caller sees the type only
                failed = failed or (arm, model.version, type(exc).__name__)
                self.record(
                    rid,
                    entity_id,
                    arm,
                    model,
                    None,
                    time.perf_counter() - started,
                    state.mode,
                    error=failure,
                    experiment=state.experiment,
                    as_of=as_of,
                    feature_status=lookup.status,
                )
        else:
            raise ServingError(503, f"model {arm} failed to score: {failure.split(':')[0]}")
        if failed is not None:
            fallback.append(
                {"kind": "model", "used": arm, "reason": f"{failed[0]} v{failed[1]} failed ({failed[2]})"}
            )
        stale = self._stale_fallback(lookup)
        if stale is not None:
            fallback.append(stale)
        self.record(
            rid,
            entity_id,
            arm,
            model,
            score,
            time.perf_counter() - started,
            state.mode,
            experiment=state.experiment,
            as_of=as_of,
            feature_status=lookup.status,
        )
        prediction = Prediction(
            rid, entity, score, arm, model.version, state.mode, lookup, fallback, warnings, as_of
        )
        if state.mode == "shadow" and as_of is None:
            task = lambda: self.shadow(rid, entity, features, state.mode, now)  # noqa: E731
            if defer_shadow:
                prediction.after = task
            else:
                task()
        return prediction

    def shadow(
        self,
        rid: str,
        entity: Any,
        explicit: Mapping[str, Any] | None,
        mode: str,
        now: datetime | None = None,
    ) -> None:
        """Score the challenger for a request the champion answered; logged as a shadow row, never returned."""
        model = self.models.get(CHALLENGER)
        if model is None:
            return
        start = time.perf_counter()
        status = None
        try:
            if explicit is not None:
                model.predictor.check_types(explicit)
                lookup = FeatureLookup(dict(explicit), {}, "request", None)
            else:
                lookup = self._lookup(entity, model.predictor.features, now or self.config.clock(), None)
            status = lookup.status
            score = self._score(model, lookup)
            self.record(
                rid,
                str(entity),
                CHALLENGER,
                model,
                score,
                time.perf_counter() - start,
                mode,
                shadow=True,
                feature_status=status,
            )
        except Exception as exc:  # a shadow failure is logged, never seen by the caller
            message = exc.message if isinstance(exc, ServingError) else f"{type(exc).__name__}: {exc}"
            self.record(
                rid,
                str(entity),
                CHALLENGER,
                model,
                None,
                time.perf_counter() - start,
                mode,
                shadow=True,
                error=message,
                feature_status=status,
            )

    def invoke(self, rows: list[Mapping[str, Any]]) -> Invocation:
        """Score explicit feature rows with the champion (MLflow's ``/invocations``: no entity, no routing).

        Columns the model does not take are ignored (as MLflow does); a missing column, a value of the wrong
        type or (unless ``unknown_category="warn"``) an unknown category is a 400 naming the row.
        """
        model = self.models.get(CHAMPION)
        if model is None:
            lost = self.models.source_error
            raise mlflow_protocol.InvocationError(
                "no champion model is loaded" + (f" ({lost})" if lost else ""), 503, "TEMPORARILY_UNAVAILABLE"
            )
        if len(rows) > self.config.max_invocation_rows:
            raise mlflow_protocol.InvocationError(
                f"{len(rows)} rows; at most {self.config.max_invocation_rows} per request", 413
            )
        pred = model.predictor
        wanted = pred.features
        missing = [f for f in wanted if any(f not in r for r in rows)]
        if missing:
            raise mlflow_protocol.InvocationError(
                f"the model needs the columns {missing}; send null for unknown values"
            )
        clean = []
        warnings: list[str] = []
        for i, row in enumerate(rows):
            values = {f: row[f] for f in wanted}
            nested = [f for f, v in values.items() if v is not None and not isinstance(v, str | int | float)]
            if nested:
                raise mlflow_protocol.InvocationError(f"row {i}: {nested} must be numbers, strings or null")
            try:
                pred.check_types(values)
            except FeatureTypeError as exc:
                raise mlflow_protocol.InvocationError(f"row {i}: {exc}") from None
            unseen = pred.unknown_categories(values)
            if unseen:
                text = _unknown_category_text(unseen)
                scorable = all(u["feature"] in pred.ignores_unknown for u in unseen)
                if self.config.unknown_category == "reject" or not scorable:
                    raise mlflow_protocol.InvocationError(
                        f"row {i}: unknown categorical values: " + "; ".join(text)
                    )
                warnings.extend(f"row {i}: {t}; scored as no category" for t in text)
            clean.append(values)
        try:
            scores = [float(s) for s in pred.predict_rows(clean)]
        except Exception as exc:
            self.metrics.invocations.labels(model.version, "error").inc()
            raise mlflow_protocol.InvocationError(
                f"the model failed to score: {type(exc).__name__}", 503, "INTERNAL_ERROR"
            ) from None
        self.metrics.invocations.labels(model.version, "ok").inc()
        self.metrics.invocation_rows.labels(model.version).inc(len(clean))
        classifier = hasattr(pred.model, "predict_proba")
        return Invocation(mlflow_protocol.predictions(scores, classifier), scores, model.version, warnings)

    def health(self) -> tuple[int, dict[str, Any]]:
        """``GET /health``: its status code and body."""
        models = {
            a: {"version": m.version, "sha256": m.sha256, "fast_path": m.predictor.fast}
            for a, m in self.models.models.items()
        }
        ok = CHAMPION in models
        lost = self.models.source_error
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
            "rollout": self.state.get().to_dict(),
            "model_errors": dict(self.models.last_error),
            "rollout_state_error": self.state.last_error,
            "stale_features": self.config.stale_features,
        }
        return (200 if ok else 503), body


#: The earlier private name of :class:`ServingService`.
_Service = ServingService


# --------------------------------------------------------------------------------------- HTTP


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


def _json(body: Mapping[str, Any], status: int = 200, background: BackgroundTask | None = None) -> Response:
    return Response(
        json.dumps(body), status_code=status, media_type="application/json", background=background
    )


def create_app(config: ServingConfig | None = None) -> FastAPI:
    """The FastAPI serving app for ``config``: thin routes over a :class:`ServingService`."""
    config = config or ServingConfig()
    service = ServingService(config)
    metrics = service.metrics

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        service.start()
        yield
        service.stop()

    app = FastAPI(title="mlops_assets serving", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.service = service

    def rejected(status: int, body: Mapping[str, Any]) -> Response:
        if 400 <= status < 500:
            metrics.rejected.labels(str(status)).inc()
        return _json(body, status)

    @app.post("/predict")
    async def predict(request: Request) -> Response:
        started = time.perf_counter()
        now = config.clock()
        content_type = request.headers.get("content-type")
        if content_type is not None and not is_json_media_type(content_type):
            return rejected(
                415,
                {"error": f"unsupported content type {content_type!r}: send the request as application/json"},
            )
        body = await _read_body(request, config.max_body_bytes)
        if body is None:
            return rejected(413, {"error": f"request body larger than {config.max_body_bytes} bytes"})
        try:
            parsed = service.request_model.model_validate_json(body)
        except ValidationError as exc:
            return rejected(422, ServingError(422, "invalid request", _validation_errors(exc)).body())
        kwargs = {
            "as_of": parsed.as_of,
            "request_id": request.headers.get("x-request-id"),
            "now": now,
            "started": started,
            "defer_shadow": True,
        }
        entity = getattr(parsed, service.entity_key)
        try:
            if parsed.as_of is not None:  # an offline read: off the event loop
                result = await run_in_threadpool(
                    service.in_worker, service.predict, entity, parsed.features, **kwargs
                )
            else:
                result = service.predict(entity, parsed.features, **kwargs)
        except ServingError as exc:
            return rejected(exc.status, exc.body())
        task = BackgroundTask(result.after) if result.after is not None else None
        return _json(result.to_dict(service.entity_key), background=task)

    @app.post("/invocations")
    async def invocations(request: Request) -> Response:
        content_type = request.headers.get("content-type")
        try:
            if content_type is not None and not is_json_media_type(content_type):
                raise mlflow_protocol.InvocationError(
                    f"unsupported content type {content_type!r}: this server reads application/json "
                    "(dataframe_split, dataframe_records, inputs or instances)",
                    415,
                )
            body = await _read_body(request, config.max_invocation_bytes)
            if body is None:
                raise mlflow_protocol.InvocationError(
                    f"request body larger than {config.max_invocation_bytes} bytes", 413
                )
            rows = mlflow_protocol.parse(mlflow_protocol.decode(body))
            result = (
                await run_in_threadpool(service.in_worker, service.invoke, rows)
                if len(rows) > 100
                else service.invoke(rows)
            )
        except mlflow_protocol.InvocationError as exc:
            return rejected(exc.status, exc.body())
        return _json(result.to_dict())

    @app.get("/ping")
    async def ping() -> Response:
        if service.models.get(CHAMPION) is None:
            return _json({"status": "unavailable", "reason": "no champion model is loaded"}, 503)
        return Response("\n", media_type="application/json")

    @app.get("/health")
    async def health() -> JSONResponse:
        status, body = service.health()
        return JSONResponse(body, status_code=status)

    @app.get("/metrics")
    async def metrics_route() -> Response:
        from prometheus_client import CONTENT_TYPE_LATEST

        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

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
    "FeatureLookup",
    "FeatureSource",
    "InMemoryModelSource",
    "MappingFeatureSource",
    "OfflineFeatureSource",
    "OnlineFeatureSource",
    "Prediction",
    "ServingConfig",
    "ServingError",
    "ServingService",
    "ViewStatus",
    "app_from_env",
    "create_app",
    "request_model",
    "serve",
]
