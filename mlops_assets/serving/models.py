"""Served models: a fast single-row predict path over fitted pipelines, model sources and hot swapping.

A fitted scikit-learn pipeline called on a one-row DataFrame spends most of its time in input
validation, not arithmetic. :func:`compile_predictor` reads the fitted steps once and replays them
with plain numpy on a feature dict: imputers, scalers and one-hot encoders inside a
``ColumnTransformer``, then a linear model (one dot product) or a histogram gradient boosting
model (all trees traversed together, one numpy step per tree level), classifier or regressor.
A classifier's score is its positive-class probability, a regressor's its prediction. Every
compiled predictor is checked against the pipeline's own scores on probe rows when it is built;
when a step is unknown or the check fails, it falls back to the pipeline itself.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)

#: Largest |fast - pipeline| difference on probe rows for the compiled path to be used.
COMPILE_TOLERANCE = 1e-9


class FeatureTypeError(ValueError):
    """A feature value has the wrong type for the model (e.g. a string for a numeric feature)."""


def _is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


# --------------------------------------------------------------------------------------- transforms


class _Numeric:
    """Numeric columns through imputer / scaler steps."""

    def __init__(self, columns: list[str], steps: list[Any]) -> None:
        from sklearn.impute import SimpleImputer
        from sklearn.preprocessing import StandardScaler

        self.columns = columns
        self.ops: list[tuple[str, Any, Any]] = []
        for step in steps:
            if isinstance(step, SimpleImputer) and not step.add_indicator:
                stats = np.asarray(step.statistics_, dtype=float)
                keep = np.ones(len(stats), dtype=bool)
                if not getattr(step, "keep_empty_features", False) and step.strategy != "constant":
                    keep = ~np.isnan(stats)
                self.ops.append(("impute", stats, keep))
            elif isinstance(step, StandardScaler):
                mean = np.asarray(step.mean_, dtype=float) if step.with_mean else None
                scale = np.asarray(step.scale_, dtype=float) if step.with_std else None
                self.ops.append(("scale", mean, scale))
            elif step == "passthrough" or step is None:
                continue
            else:
                raise TypeError(f"no fast path for numeric step {type(step).__name__}")

    def transform(self, x: np.ndarray) -> np.ndarray:
        for kind, a, b in self.ops:
            if kind == "impute":
                x = np.where(np.isnan(x), a, x)[:, b]
            else:
                if a is not None:
                    x = x - a
                if b is not None:
                    x = x / b
        return x


class _Categorical:
    """Categorical columns through a constant imputer and a one-hot encoder."""

    def __init__(self, columns: list[str], steps: list[Any]) -> None:
        from sklearn.impute import SimpleImputer
        from sklearn.preprocessing import OneHotEncoder

        self.columns = columns
        self.fill: Any = None
        self.categories: list[dict[Any, int]] | None = None
        for step in steps:
            if isinstance(step, SimpleImputer) and step.strategy == "constant" and not step.add_indicator:
                self.fill = step.statistics_[0] if len(set(map(str, step.statistics_))) == 1 else None
                if self.fill is None:
                    raise TypeError("no fast path for per-column fill values")
            elif isinstance(step, OneHotEncoder):
                if step.drop is not None or getattr(step, "_infrequent_enabled", False):
                    raise TypeError("no fast path for one-hot encoders with drop or infrequent categories")
                if step.handle_unknown not in ("ignore", "infrequent_if_exist"):
                    raise TypeError("no fast path for one-hot encoders that raise on unknown categories")
                self.categories = [{c: i for i, c in enumerate(cats)} for cats in step.categories_]
            else:
                raise TypeError(f"no fast path for categorical step {type(step).__name__}")
        if self.categories is None:
            raise TypeError("categorical columns need a one-hot encoder for the fast path")
        self.width = sum(len(c) for c in self.categories)
        self.offsets = np.cumsum([0] + [len(c) for c in self.categories])[:-1]

    def transform_rows(self, rows: list[list[Any]]) -> np.ndarray:
        out = np.zeros((len(rows), self.width))
        for r, values in enumerate(rows):
            for j, value in enumerate(values):
                if _is_missing(value):
                    value = self.fill
                pos = self.categories[j].get(value)
                if pos is not None:
                    out[r, self.offsets[j] + pos] = 1.0
        return out


# --------------------------------------------------------------------------------------- classifiers


def _row_dot(z: np.ndarray, coef: np.ndarray) -> np.ndarray:
    """Each row's dot product with ``coef``, summed the same way whatever the number of rows.

    A BLAS matrix-vector product may add a row's terms in another order for 1 row than for 100, so a
    row's score would depend on the rows it is scored with; a row-wise reduction does not.
    """
    return np.multiply(z, coef).sum(axis=1)


class _Logistic:
    def __init__(self, clf: Any) -> None:
        if clf.coef_.shape[0] != 1:
            raise TypeError("the fast path handles binary logistic regression only")
        self.coef = np.asarray(clf.coef_[0], dtype=float)
        self.intercept = float(clf.intercept_[0])

    def score(self, z: np.ndarray) -> np.ndarray:
        return 1.0 / (1.0 + np.exp(-(_row_dot(z, self.coef) + self.intercept)))


class _Linear:
    """A linear regressor: one dot product."""

    def __init__(self, reg: Any) -> None:
        coef = np.asarray(reg.coef_, dtype=float)
        if coef.ndim != 1:
            raise TypeError("the fast path handles a single-output linear regressor only")
        self.coef = coef
        self.intercept = (
            float(np.asarray(reg.intercept_).ravel()[0]) if np.ndim(reg.intercept_) else float(reg.intercept_)
        )

    def score(self, z: np.ndarray) -> np.ndarray:
        return _row_dot(z, self.coef) + self.intercept


class _HistGradientBoosting:
    """All trees of a binary HistGradientBoostingClassifier or a HistGradientBoostingRegressor, walked together
    level by level; the classifier's raw sum goes through the logistic link, the regressor's is the prediction."""

    def __init__(self, clf: Any, logistic: bool = True) -> None:
        self.logistic = logistic
        if clf.n_trees_per_iteration_ != 1 or getattr(clf, "is_categorical_", None) is not None:
            raise TypeError("the fast path handles binary models without native categorical splits")
        nodes = [p[0].nodes for p in clf._predictors]
        if any(n["is_categorical"].any() for n in nodes):
            raise TypeError("the fast path handles numeric splits only")
        offsets = np.cumsum([0] + [len(n) for n in nodes])
        allnodes = np.concatenate(nodes)
        own = np.arange(len(allnodes))
        tree_of = np.repeat(np.arange(len(nodes)), [len(n) for n in nodes])
        base = offsets[:-1][tree_of]
        leaf = allnodes["is_leaf"].astype(bool)
        self.left = np.where(leaf, own, allnodes["left"].astype(np.int64) + base)
        self.right = np.where(leaf, own, allnodes["right"].astype(np.int64) + base)
        self.feature = np.where(leaf, 0, allnodes["feature_idx"]).astype(np.int64)
        self.threshold = allnodes["num_threshold"].astype(float)
        self.missing_left = allnodes["missing_go_to_left"].astype(bool)
        self.value = np.where(leaf, allnodes["value"], 0.0)
        self.children = np.stack([self.right, self.left], axis=1)  # column 1: where "go left" leads
        self.roots = offsets[:-1].astype(np.int64)
        self.depth = int(allnodes["depth"].max()) if len(allnodes) else 0
        self.baseline = float(np.asarray(clf._baseline_prediction).ravel()[0])

    def score(self, z: np.ndarray) -> np.ndarray:
        n = z.shape[0]
        if n == 1:  # one row: 1-d indexing is several times cheaper than the 2-d form
            x_row = z[0]
            has_nan = bool(np.isnan(x_row).any())
            idx = self.roots
            for _ in range(self.depth):
                x = x_row[self.feature[idx]]
                go_left = x <= self.threshold[idx]
                if has_nan:
                    go_left |= np.isnan(x) & self.missing_left[idx]
                idx = self.children[idx, go_left.view(np.uint8)]
            raw = np.array([self.baseline + self.value[idx].sum()])
        else:
            idx = np.broadcast_to(self.roots, (n, len(self.roots))).copy()
            rows = np.arange(n)[:, None]
            for _ in range(self.depth):
                x = z[rows, self.feature[idx]]
                go_left = (x <= self.threshold[idx]) | (np.isnan(x) & self.missing_left[idx])
                idx = self.children[idx, go_left.view(np.uint8)]
            raw = self.baseline + self.value[idx].sum(axis=1)
        return 1.0 / (1.0 + np.exp(-raw)) if self.logistic else raw


def estimator_scores(estimator: Any, inputs: Any) -> np.ndarray:
    """The positive-class probability of a classifier, or the prediction of a regressor."""
    if hasattr(estimator, "predict_proba"):
        return np.asarray(estimator.predict_proba(inputs))[:, 1]
    return np.asarray(estimator.predict(inputs), dtype=float)


class _Estimator:
    """Any fitted estimator on the transformed numpy rows."""

    def __init__(self, clf: Any) -> None:
        self.clf = clf

    def score(self, z: np.ndarray) -> np.ndarray:
        return estimator_scores(self.clf, z)


def _final_step(clf: Any) -> Any:
    from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor
    from sklearn.linear_model import LinearRegression, LogisticRegression, Ridge

    try:
        if isinstance(clf, LogisticRegression):
            return _Logistic(clf)
        if isinstance(clf, LinearRegression | Ridge):
            return _Linear(clf)
        if isinstance(clf, HistGradientBoostingClassifier):
            return _HistGradientBoosting(clf, logistic=True)
        if isinstance(clf, HistGradientBoostingRegressor):
            return _HistGradientBoosting(clf, logistic=False)
    except (TypeError, AttributeError, KeyError, ValueError) as exc:
        log.info("estimator %s uses its own predict: %s", type(clf).__name__, exc)
    return _Estimator(clf)


# --------------------------------------------------------------------------------------- predictor


@dataclass
class Predictor:
    """Scores feature dicts with a fitted pipeline (a classifier's probability, or a regressor's prediction)."""

    model: Any
    features: list[str]
    numeric: list[str]
    categorical: list[str]
    fast: bool
    _blocks: list[Any] = field(default_factory=list, repr=False)
    _clf: Any = field(default=None, repr=False)
    #: feature -> the categories its fitted one-hot encoder knows (empty when the model has none)
    known_categories: dict[str, list[Any]] = field(default_factory=dict)
    #: categorical features whose encoder scores an unknown value as "no category" instead of raising
    ignores_unknown: frozenset[str] = frozenset()

    def unknown_categories(self, values: Mapping[str, Any]) -> list[dict[str, Any]]:
        """``{"feature", "value", "known"}`` per categorical value the fitted encoder has not seen (nulls are fine)."""
        found = []
        for name, known in self.known_categories.items():
            value = values.get(name)
            if value is None or value in known:
                continue
            found.append(
                {
                    "feature": name,
                    "value": value,
                    "known": sorted(str(k) for k in known if isinstance(k, str)),
                }
            )
        return found

    def check_types(self, values: Mapping[str, Any]) -> None:
        """Raise FeatureTypeError naming features whose values have the wrong type."""
        wrong = []
        for name in self.numeric:
            v = values.get(name)
            if v is not None and (
                isinstance(v, bool)
                or not isinstance(v, int | float)
                or (isinstance(v, float) and not math.isfinite(v))
            ):
                wrong.append(f"{name} (expected a finite number or null, got {v!r})")
        for name in self.categorical:
            v = values.get(name)
            if v is not None and not isinstance(v, str):
                wrong.append(f"{name} (expected a string or null, got {v!r})")
        if wrong:
            raise FeatureTypeError("wrong feature types: " + "; ".join(wrong))

    def predict_rows(self, rows: Sequence[Mapping[str, Any]]) -> np.ndarray:
        """The score of each feature dict (missing keys count as null)."""
        if not self.fast:
            return self.predict_frame(pd.DataFrame([{f: r.get(f) for f in self.features} for r in rows]))
        parts = []
        for block in self._blocks:
            if isinstance(block, _Numeric):
                x = np.array(
                    [[np.nan if r.get(c) is None else r.get(c) for c in block.columns] for r in rows],
                    dtype=float,
                )
                parts.append(block.transform(x))
            else:
                parts.append(block.transform_rows([[r.get(c) for c in block.columns] for r in rows]))
        z = np.hstack(parts) if len(parts) > 1 else parts[0]
        return self._clf.score(z)

    def predict_one(self, values: Mapping[str, Any]) -> float:
        """The score of one feature dict."""
        return float(self.predict_rows([values])[0])

    def predict_frame(self, frame: pd.DataFrame) -> np.ndarray:
        """The score of each row through the pipeline itself (the batch path)."""
        columns = {}
        for col in self.features:
            values = frame[col] if col in frame else pd.Series(None, index=frame.index, dtype=object)
            if col in self.numeric:
                columns[col] = pd.to_numeric(values, errors="coerce").astype("float64")
            else:
                values = values.astype(object)
                columns[col] = values.where(values.notna(), np.nan)
        return estimator_scores(self.model, pd.DataFrame(columns, index=frame.index, columns=self.features))


def _split_columns(pre: Any) -> tuple[list[Any], list[str], list[str]]:
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder

    blocks: list[Any] = []
    numeric: list[str] = []
    categorical: list[str] = []
    for name, transformer, columns in pre.transformers_:
        if name == "remainder" and transformer == "drop":
            continue
        if transformer == "drop":
            continue
        if isinstance(columns, str) or not all(isinstance(c, str) for c in columns):
            raise TypeError("the fast path needs columns selected by name")
        steps = [s for _, s in transformer.steps] if isinstance(transformer, Pipeline) else [transformer]
        if any(isinstance(s, OneHotEncoder) for s in steps):
            blocks.append(_Categorical(list(columns), steps))
            categorical.extend(columns)
        else:
            blocks.append(_Numeric(list(columns), steps))
            numeric.extend(columns)
    return blocks, numeric, categorical


def _encoder_categories(model: Any) -> tuple[dict[str, list[Any]], frozenset[str]]:
    """Per categorical column of a ``Pipeline([ColumnTransformer, ...])``: its one-hot encoder's categories.

    Also the columns whose encoder ignores unknown values. Anything else (no pipeline, no encoder,
    columns not selected by name) gives no categories: nothing is checked.
    """
    from sklearn.compose import ColumnTransformer
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder

    if not isinstance(model, Pipeline) or not isinstance(model.steps[0][1], ColumnTransformer):
        return {}, frozenset()
    known: dict[str, list[Any]] = {}
    ignoring: set[str] = set()
    for _, transformer, columns in getattr(model.steps[0][1], "transformers_", []):
        steps = [s for _, s in transformer.steps] if isinstance(transformer, Pipeline) else [transformer]
        encoders = [s for s in steps if isinstance(s, OneHotEncoder)]
        if not encoders or isinstance(columns, str) or not all(isinstance(c, str) for c in columns):
            continue
        encoder = encoders[0]
        for column, cats in zip(columns, encoder.categories_, strict=True):
            known[column] = [c for c in cats.tolist() if not _is_missing(c)]
            if encoder.handle_unknown in ("ignore", "infrequent_if_exist"):
                ignoring.add(column)
    return known, frozenset(ignoring)


def _probe_rows(pred: Predictor, n: int = 64, seed: int = 0) -> list[dict[str, Any]]:
    rng = np.random.default_rng(seed)
    cats: dict[str, list[Any]] = {}
    for block in pred._blocks:
        if isinstance(block, _Categorical):
            for col, mapping in zip(block.columns, block.categories, strict=True):
                cats[col] = list(mapping) + ["__unseen__", None]
    rows = []
    for _ in range(n):
        row: dict[str, Any] = {}
        for col in pred.numeric:
            row[col] = (
                None if rng.random() < 0.1 else float(rng.lognormal(1.5, 1.5) * rng.choice([-1, 1, 1, 1]))
            )
        for col in pred.categorical:
            row[col] = cats[col][rng.integers(len(cats[col]))]
        rows.append(row)
    return rows


def compile_predictor(model: Any, verify: bool = True) -> Predictor:
    """A :class:`Predictor` for a fitted pipeline, with the numpy path when it reproduces the pipeline."""
    from sklearn.compose import ColumnTransformer
    from sklearn.pipeline import Pipeline

    features = [str(f) for f in getattr(model, "feature_names_in_", [])]
    try:
        known, ignoring = _encoder_categories(model)
    except (TypeError, AttributeError, ValueError) as exc:
        log.info("no category check for this model: %s", exc)
        known, ignoring = {}, frozenset()
    is_pipeline = (
        isinstance(model, Pipeline)
        and len(model.steps) == 2
        and isinstance(model.steps[0][1], ColumnTransformer)
    )
    try:
        if not is_pipeline:
            raise TypeError("the fast path handles Pipeline([ColumnTransformer, estimator])")
        blocks, numeric, categorical = _split_columns(model.steps[0][1])
        pred = Predictor(
            model,
            features or numeric + categorical,
            numeric,
            categorical,
            True,
            blocks,
            _final_step(model.steps[1][1]),
            known_categories=known,
            ignores_unknown=ignoring,
        )
    except (TypeError, AttributeError) as exc:
        log.info("model uses the pipeline path: %s", exc)
        # untyped: values go to the model as given
        return Predictor(model, features, [], [], False, known_categories=known, ignores_unknown=ignoring)
    if verify:
        rows = _probe_rows(pred)
        fast = pred.predict_rows(rows)
        pred.fast = False
        reference = pred.predict_rows(rows)
        diff = float(np.max(np.abs(fast - reference)))
        pred.fast = diff <= COMPILE_TOLERANCE
        if not pred.fast:
            log.warning("compiled path differs from the pipeline by %.3g; using the pipeline", diff)
    return pred


# --------------------------------------------------------------------------------------- sources


@dataclass(frozen=True)
class ServedModel:
    """A loaded model ready to serve: its version, the alias it was loaded by and its predictor."""

    alias: str
    version: str
    sha256: str | None
    predictor: Predictor
    loaded_at: float = field(default_factory=time.time)


class ModelSource(Protocol):
    """Where models come from: a cheap version lookup per alias, and a (hash-verified) load.

    A source may also have ``check()``, raising when the source itself is unavailable (e.g. the
    registry's store was lost): :class:`ModelManager` then keeps the loaded models and reports why.
    """

    def current_version(self, alias: str) -> str | None:
        """The version behind ``alias`` now, or None when the alias is not set."""

    def load(self, alias: str) -> tuple[str, Any, str | None]:
        """(version, fitted model, artifact sha256) of the version behind ``alias``, verified."""


class InMemoryModelSource:
    """Fitted models held in memory by alias (tests, notebooks, benchmarks)."""

    def __init__(self, models: Mapping[str, tuple[str, Any]] | None = None) -> None:
        self._models: dict[str, tuple[str, Any]] = dict(models or {})
        self._lock = threading.Lock()

    def set(self, alias: str, version: str, model: Any) -> None:
        """Point ``alias`` at ``model`` under ``version``."""
        with self._lock:
            self._models[alias] = (str(version), model)

    def remove(self, alias: str) -> None:
        """Unset ``alias``."""
        with self._lock:
            self._models.pop(alias, None)

    def current_version(self, alias: str) -> str | None:
        with self._lock:
            item = self._models.get(alias)
        return None if item is None else item[0]

    def load(self, alias: str) -> tuple[str, Any, str | None]:
        with self._lock:
            if alias not in self._models:
                raise LookupError(f"no model with alias {alias!r}")
            version, model = self._models[alias]
        return version, model, None


class RegistryModelSource:
    """The MLflow registry: versions by alias, loads verified against the registered SHA-256."""

    def __init__(self, tracking_uri: str, model_name: str) -> None:
        self.tracking_uri = tracking_uri
        self.model_name = model_name
        self._client = None

    @property
    def client(self):
        if self._client is None:
            from mlflow import MlflowClient

            self.check()  # a client on a missing SQLite file would create it
            self._client = MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri)
        return self._client

    def check(self) -> None:
        """Raise ``RegistryUnavailable`` unless the store exists and answers; never creates it.

        Every lookup checks again: a client opened before the file was deleted would otherwise keep
        reading the deleted file, or create an empty one on its next connection.
        """
        from mlops_assets.training.tracking import require_registry

        try:
            require_registry(self.tracking_uri)
        except Exception:
            self._client = None  # a store restored later is opened afresh
            raise

    def current_version(self, alias: str) -> str | None:
        from mlops_assets.training.registry import alias_version

        self.check()
        mv = alias_version(self.client, alias, self.model_name)
        return None if mv is None else str(mv.version)

    def load(self, alias: str) -> tuple[str, Any, str | None]:
        from mlops_assets.training.registry import load_model_by_alias

        self.check()
        loaded = load_model_by_alias(self.client, alias, model_name=self.model_name, verify=True)
        return str(loaded.version), loaded.model, loaded.sha256


class ModelManager:
    """Holds the served model per alias and swaps in a new one when its alias moves.

    Reads take the current dict without a lock; a refresh loads the new model first and then
    replaces the dict in one assignment, so a request sees the old model or the new one.
    """

    def __init__(
        self,
        source: ModelSource,
        aliases: Sequence[str] = ("champion", "challenger"),
        on_error: Callable[[str, Exception], None] | None = None,
        on_swap: Callable[[str, ServedModel | None, ServedModel | None], None] | None = None,
    ) -> None:
        self.source = source
        self.aliases = tuple(aliases)
        self.on_error = on_error
        self.on_swap = on_swap
        self.models: dict[str, ServedModel] = {}
        self.last_error: dict[str, str] = {}
        self.source_error: str | None = None  # why the source itself is unavailable (None: it answers)
        self._refresh_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def get(self, alias: str) -> ServedModel | None:
        """The served model of ``alias`` (None when not loaded)."""
        return self.models.get(alias)

    def refresh(self) -> list[str]:
        """Load aliases whose version changed; return the aliases swapped or dropped."""
        changed = []
        with self._refresh_lock:
            current = dict(self.models)
            check = getattr(self.source, "check", None)
            if check is not None:
                try:
                    check()
                except Exception as exc:  # the source is gone: keep every loaded model, say why
                    message = f"{type(exc).__name__}: {exc}"
                    if message != self.source_error:
                        log.error("model source unavailable, keeping the loaded models: %s", message)
                    self.source_error = message
                    for alias in self.aliases:
                        self.last_error[alias] = message
                        if self.on_error is not None:
                            self.on_error(alias, exc)
                    return changed
                self.source_error = None
            for alias in self.aliases:
                try:
                    version = self.source.current_version(alias)
                    held = current.get(alias)
                    if version is None:
                        self.last_error.pop(alias, None)
                        if held is not None:
                            current.pop(alias)
                            changed.append(alias)
                        continue
                    if held is not None and held.version == version:
                        self.last_error.pop(alias, None)  # up to date: an earlier failure no longer applies
                        continue
                    loaded_version, model, sha = self.source.load(alias)
                    current[alias] = ServedModel(alias, loaded_version, sha, compile_predictor(model))
                    self.last_error.pop(alias, None)
                    changed.append(alias)
                except Exception as exc:  # keep serving the model we have; report why the new one failed
                    self.last_error[alias] = f"{type(exc).__name__}: {exc}"
                    log.error("could not load model alias %s: %s", alias, exc)
                    if self.on_error is not None:
                        self.on_error(alias, exc)
            previous, self.models = self.models, current
        if self.on_swap is not None:
            for alias in changed:
                self.on_swap(alias, previous.get(alias), current.get(alias))
        return changed

    def start(self, interval_s: float) -> None:
        """Poll the source every ``interval_s`` seconds in a daemon thread."""
        if self._thread is not None or interval_s <= 0:
            return
        self._stop.clear()

        def loop() -> None:
            while not self._stop.wait(interval_s):
                self.refresh()

        self._thread = threading.Thread(target=loop, name="model-poller", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop polling."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._thread = None
