"""Train a project's model on a time split, log it to MLflow and register it as the challenger (no Dagster).

scikit-learn and MLflow are imported where they are used, so importing this module is cheap.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mlops_assets.storage import frame_hash
from mlops_assets.training import registry
from mlops_assets.training.metrics import baseline_scores, metric_names, task_metrics
from mlops_assets.training.task import CLASSIFICATION, CODE_VERSION, InputSelection, ModelTask, select_inputs
from mlops_assets.training.tracking import TrackingConfig, client_for, ensure_tracking_store

CLASSIFIERS = ("hist_gradient_boosting", "logistic_regression", "random_forest")
REGRESSORS = ("hist_gradient_boosting", "linear_regression", "random_forest")
TRAINING_SET_ARTIFACT = "training_set/training_set.parquet"

#: Packages whose versions every run records; the model's pip requirements pin the first group.
MODEL_PACKAGES = ("scikit-learn", "skops", "numpy", "pandas", "scipy", "mlflow")
RECORDED_PACKAGES = (*MODEL_PACKAGES, "pyarrow", "matplotlib", "dagster")

#: Types a skops-serialized pipeline may contain beyond skops' defaults (checked, not blindly trusted).
TRUSTED_TYPE_PREFIXES = ("sklearn.", "numpy.")


@dataclass(frozen=True)
class TrainConfig:
    """What to train: the estimator, its hyperparameters, the holdout share, the seed and the decision threshold."""

    model_type: str = "hist_gradient_boosting"
    hyperparameters: Mapping[str, Any] = field(default_factory=dict)
    holdout_fraction: float = 0.2
    seed: int = 42
    threshold: float = 0.5

    def __post_init__(self) -> None:
        known = sorted(set(CLASSIFIERS) | set(REGRESSORS))
        if self.model_type not in known:
            raise ValueError(f"model_type must be one of {known}, got {self.model_type!r}")
        if not 0.0 < self.holdout_fraction < 1.0:
            raise ValueError(f"holdout_fraction must be in (0, 1), got {self.holdout_fraction}")

    @classmethod
    def from_task(cls, task: ModelTask, **overrides: Any) -> TrainConfig:
        values = {
            "model_type": task.estimator,
            "hyperparameters": dict(task.hyperparameters),
            "holdout_fraction": task.holdout_fraction,
            "seed": task.seed,
            "threshold": task.threshold,
        }
        values.update({k: v for k, v in overrides.items() if v is not None})
        if values["model_type"] != task.estimator and overrides.get("hyperparameters") is None:
            values["hyperparameters"] = {}  # the spec's hyperparameters are those of its own estimator
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return {
            "model_type": self.model_type,
            "hyperparameters": dict(sorted(self.hyperparameters.items())),
            "holdout_fraction": self.holdout_fraction,
            "seed": self.seed,
            "threshold": self.threshold,
        }


@dataclass(frozen=True)
class TrainResult:
    """The registered challenger version and how it came about (trained now or reused from cache)."""

    model_name: str
    version: int
    run_id: str
    model_uri: str
    cached: bool
    metrics: dict[str, float]
    training_set_hash: str
    params_hash: str
    code_version: str
    model_sha256: str
    numeric_features: list[str]
    categorical_features: list[str]
    holdout_start: datetime | None
    n_train: int
    n_holdout: int
    dropped_inputs: dict[str, str] = field(default_factory=dict)
    task: str = CLASSIFICATION
    model: Any = None  # the fitted pipeline when trained in this call


def params_hash(
    config: TrainConfig, task: ModelTask, numeric: Sequence[str], categorical: Sequence[str]
) -> str:
    """Hash of everything besides data and code that decides the model: config, task and inputs."""
    payload = config.to_dict() | {
        "task": task.kind,
        "label": task.label,
        "positive_class": task.positive_class,
        "numeric": list(numeric),
        "categorical": list(categorical),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def validate_training_set(df: pd.DataFrame, task: ModelTask) -> None:
    """Raise ValueError naming what is missing or misused in a training set."""
    required = [task.entity, task.time, task.label]
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise ValueError(f"training set lacks columns {missing}; it has {list(df.columns)}")
    if not isinstance(df[task.time].dtype, pd.DatetimeTZDtype):
        raise ValueError(f"{task.time!r} must be a UTC-aware timestamp column, got {df[task.time].dtype}")
    y = task.target_values(df)
    if task.is_classification and len(np.unique(y)) < 2:
        raise ValueError(
            f"target {task.label!r} holds a single class ({int(y[0]) if len(y) else 'none'}): nothing to learn"
        )


def time_split(
    df: pd.DataFrame, holdout_fraction: float, time_column: str, entity_column: str
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split by label day: earlier days train, the latest days (about ``holdout_fraction`` of rows) hold out."""
    if df.empty:
        raise ValueError("cannot split an empty training set")
    days = df[time_column].dt.tz_convert("UTC").dt.floor("D")
    counts = days.value_counts().sort_index()
    if len(counts) < 2:
        raise ValueError(
            f"a time split needs labels on at least two days; all labels fall on {counts.index[0]}"
        )
    from_end = counts[::-1].cumsum()
    target = holdout_fraction * len(df)
    n_days = int(np.searchsorted(from_end.to_numpy(), target) + 1)
    n_days = min(max(n_days, 1), len(counts) - 1)
    cutoff = counts.index[len(counts) - n_days]
    is_holdout = days >= cutoff
    order = [time_column, entity_column]
    train = df.loc[~is_holdout].sort_values(order, kind="stable").reset_index(drop=True)
    holdout = df.loc[is_holdout].sort_values(order, kind="stable").reset_index(drop=True)
    return train, holdout


def model_inputs(
    df: pd.DataFrame, numeric_features: Sequence[str], categorical_features: Sequence[str]
) -> pd.DataFrame:
    """The model's input frame: numeric features as float64, categorical as strings (missing as NaN)."""
    out = pd.DataFrame(index=df.index)
    for col in numeric_features:
        out[col] = pd.to_numeric(df[col], errors="coerce").astype("float64") if col in df.columns else np.nan
    for col in categorical_features:
        if col not in df.columns:
            out[col] = np.nan
            continue
        values = df[col].astype(object)
        out[col] = values.where(df[col].notna(), np.nan).map(lambda v: v if isinstance(v, float) else str(v))
    return out


def build_estimator(config: TrainConfig, task_kind: str):
    """The estimator named by the config for the task, seeded and with the config's hyperparameters."""
    params = dict(config.hyperparameters)
    classification = task_kind == CLASSIFICATION
    allowed = CLASSIFIERS if classification else REGRESSORS
    if config.model_type not in allowed:
        raise ValueError(f"{config.model_type!r} does not fit a {task_kind} target; use one of {allowed}")
    if config.model_type == "hist_gradient_boosting":
        from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor

        cls = HistGradientBoostingClassifier if classification else HistGradientBoostingRegressor
        return cls(random_state=config.seed, **params)
    if config.model_type == "random_forest":
        from sklearn.ensemble import RandomForestClassifier, RandomForestRegressor

        cls = RandomForestClassifier if classification else RandomForestRegressor
        return cls(random_state=config.seed, **{"n_estimators": 200, "n_jobs": 1} | params)
    if config.model_type == "logistic_regression":
        from sklearn.linear_model import LogisticRegression

        return LogisticRegression(random_state=config.seed, **{"max_iter": 1000} | params)
    from sklearn.linear_model import Ridge

    return Ridge(
        **{"alpha": 1.0} | params
    )  # linear regression with a little shrinkage: stable on collinear inputs


def build_pipeline(
    config: TrainConfig, task_kind: str, numeric_features: Sequence[str], categorical_features: Sequence[str]
):
    """Preprocessing (impute + scale numeric, impute + one-hot categorical) followed by the estimator."""
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    transformers = []
    if numeric_features:
        numeric = Pipeline(
            [
                ("impute", SimpleImputer(strategy="median", keep_empty_features=True)),
                ("scale", StandardScaler()),
            ]
        )
        transformers.append(("numeric", numeric, list(numeric_features)))
    if categorical_features:
        categorical = Pipeline(
            [
                (
                    "impute",
                    SimpleImputer(strategy="constant", fill_value="missing", keep_empty_features=True),
                ),
                ("onehot", OneHotEncoder(handle_unknown="ignore", sparse_output=False)),
            ]
        )
        transformers.append(("categorical", categorical, list(categorical_features)))
    if not transformers:
        raise ValueError("the model needs at least one feature")
    pre = ColumnTransformer(transformers, remainder="drop", verbose_feature_names_out=False)
    step = "classifier" if task_kind == CLASSIFICATION else "regressor"
    return Pipeline([("preprocess", pre), (step, build_estimator(config, task_kind))])


def thread_limit(max_threads: int | None):
    """Context capping OpenMP/BLAS threads (None: leave them alone)."""
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=max_threads) if max_threads is not None else contextlib.nullcontext()


def single_thread():
    """Cap OpenMP/BLAS threads at one: small predictions run far faster than with contended threads."""
    return thread_limit(1)


def fit_model(
    train: pd.DataFrame,
    config: TrainConfig,
    task: ModelTask,
    numeric_features: Sequence[str],
    categorical_features: Sequence[str],
    max_threads: int | None = 1,
):
    """Fit a fresh pipeline on the training rows (OpenMP/BLAS threads capped at ``max_threads``)."""
    pipeline = build_pipeline(config, task.kind, numeric_features, categorical_features)
    with thread_limit(max_threads):
        pipeline.fit(model_inputs(train, numeric_features, categorical_features), task.target_values(train))
    return pipeline


def predict_scores(model: Any, frame: pd.DataFrame) -> np.ndarray:
    """The model's score per row: the positive class probability (classifier) or the prediction (regressor)."""
    with single_thread():
        if hasattr(model, "predict_proba"):
            return np.asarray(model.predict_proba(frame))[:, 1]
        return np.asarray(model.predict(frame), dtype=float)


def git_state(root: Path | None = None) -> tuple[str, bool | None]:
    """The checked-out commit and whether tracked files differ from it (``unknown``/None outside git)."""
    where = str(root or Path.cwd())
    try:
        commit = subprocess.run(
            ["git", "-C", where, "rev-parse", "HEAD"], capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()
        status = subprocess.run(
            ["git", "-C", where, "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout
        return commit, bool(status.strip())
    except (OSError, subprocess.SubprocessError):
        return "unknown", None


def package_versions(names: Sequence[str] = RECORDED_PACKAGES) -> dict[str, str]:
    """Installed versions of the named distributions (``missing`` when absent), plus Python's."""
    versions = {"python": platform.python_version()}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "missing"
    return versions


def pip_requirements() -> list[str]:
    """Pinned requirements of a logged model (explicit: inferring them costs seconds per call)."""
    versions = package_versions(MODEL_PACKAGES)
    return [f"{name}=={versions[name]}" for name in MODEL_PACKAGES if versions[name] != "missing"]


def skops_trusted_types(model: Any) -> list[str]:
    """Types skops must be told to trust to load this pipeline (e.g. HistGradientBoosting's TreePredictor)."""
    import skops.io as sio

    untrusted = sio.get_untrusted_types(data=sio.dumps(model))
    unexpected = [t for t in untrusted if not t.startswith(TRUSTED_TYPE_PREFIXES)]
    if unexpected:
        raise TypeError(
            f"the pipeline holds types outside scikit-learn/numpy that skops would load: {unexpected}"
        )
    return sorted(untrusted)


def find_cached_version(client, model_name: str, training_set_hash: str, params_hash: str, code_version: str):
    """The newest registered version trained from the same data, params and code, or ``None``."""
    query = (
        f"name = '{model_name}' and tags.training_set_hash = '{training_set_hash}' "
        f"and tags.params_hash = '{params_hash}' and tags.code_version = '{code_version}'"
    )
    versions = [v for v in client.search_model_versions(query) if v.tags.get(registry.MODEL_SHA256_TAG)]
    return max(versions, key=lambda v: int(v.version), default=None)


def permutation_importance_frame(
    model: Any, inputs: pd.DataFrame, y: np.ndarray, task: ModelTask, seed: int, n_repeats: int = 5
) -> pd.DataFrame:
    """Mean and spread of the score drop when each input feature is shuffled on the holdout."""
    from sklearn.inspection import permutation_importance

    if task.is_classification:
        scoring = "roc_auc" if len(np.unique(y)) == 2 else "accuracy"
    else:
        scoring = "neg_mean_absolute_error"
    with single_thread():
        result = permutation_importance(
            model, inputs, y, scoring=scoring, n_repeats=n_repeats, random_state=seed, n_jobs=1
        )
    frame = pd.DataFrame(
        {
            "feature": list(inputs.columns),
            "importance_mean": result.importances_mean,
            "importance_std": result.importances_std,
        }
    )
    return frame.sort_values("importance_mean", ascending=False).reset_index(drop=True)


def _input_example(inputs: pd.DataFrame, n: int = 5) -> pd.DataFrame:
    complete = inputs.dropna()
    return (complete if len(complete) >= n else inputs).head(n).reset_index(drop=True)


def _result_from_version(mv, client, cached: bool, model: Any = None) -> TrainResult:
    run = client.get_run(mv.run_id)
    params = run.data.params
    tags = mv.tags
    holdout_start = tags.get("holdout_start")
    return TrainResult(
        model_name=mv.name,
        version=int(mv.version),
        run_id=mv.run_id,
        model_uri=f"models:/{mv.name}/{mv.version}",
        cached=cached,
        metrics={k: float(v) for k, v in run.data.metrics.items()},
        training_set_hash=tags["training_set_hash"],
        params_hash=tags["params_hash"],
        code_version=tags["code_version"],
        model_sha256=tags[registry.MODEL_SHA256_TAG],
        numeric_features=json.loads(params["numeric_features"]),
        categorical_features=json.loads(params["categorical_features"]),
        holdout_start=datetime.fromisoformat(holdout_start) if holdout_start else None,
        n_train=int(params["n_train"]),
        n_holdout=int(params["n_holdout"]),
        dropped_inputs=json.loads(params.get("dropped_inputs", "{}")),
        task=params.get("task", CLASSIFICATION),
        model=model,
    )


def registered_result(client, model_name: str, version: int | str) -> TrainResult:
    """The :class:`TrainResult` of an already registered version (``cached`` is False, no fitted model)."""
    return _result_from_version(client.get_model_version(model_name, str(version)), client, cached=False)


def _dataset(frame: pd.DataFrame, name: str, digest: str, targets: str):
    import mlflow.data

    return mlflow.data.from_pandas(frame, name=name, digest=digest[:32], targets=targets)


def train_and_log(
    training_set: pd.DataFrame,
    task: ModelTask,
    config: TrainConfig,
    *,
    tracking: TrackingConfig,
    training_set_hash: str | None = None,
    dagster_run_id: str | None = None,
    code_version: str = CODE_VERSION,
    use_cache: bool = True,
    importance_repeats: int = 5,
    max_threads: int | None = 1,
    git_root: Path | None = None,
) -> TrainResult:
    """Fit on earlier label days, log everything to MLflow, register a version and alias it ``challenger``.

    Inputs all-null or constant on the training rows are dropped (their names and reasons are logged).
    When a registered version already came from the same training-set hash, params and code version,
    that version becomes the challenger again and nothing is retrained (``TrainResult.cached``).
    """
    import mlflow
    import mlflow.artifacts
    import mlflow.sklearn
    from mlflow.models import infer_signature

    validate_training_set(training_set, task)
    training_set_hash = training_set_hash or frame_hash(training_set)
    train, holdout = time_split(task.trainable(training_set), config.holdout_fraction, task.time, task.entity)
    y_train = task.target_values(train)
    if task.is_classification and len(np.unique(y_train)) < 2:
        raise ValueError("the training days hold only one class; add more label days")
    inputs: InputSelection = select_inputs(task, train)
    numeric, categorical = inputs.numeric, inputs.categorical
    p_hash = params_hash(config, task, numeric, categorical)
    experiment_id = ensure_tracking_store(tracking)
    client = client_for(tracking)
    model_name = tracking.model_name

    if use_cache:
        cached = find_cached_version(client, model_name, training_set_hash, p_hash, code_version)
        if cached is not None:
            client.set_registered_model_alias(model_name, registry.CHALLENGER, cached.version)
            return _result_from_version(cached, client, cached=True)

    model = fit_model(train, config, task, numeric, categorical, max_threads)
    x_holdout = model_inputs(holdout, numeric, categorical)
    y_holdout = task.target_values(holdout)
    holdout_scores = predict_scores(model, x_holdout)
    holdout_metrics = task_metrics(task.kind, y_holdout, holdout_scores, config.threshold)
    train_metrics = task_metrics(
        task.kind, y_train, predict_scores(model, model_inputs(train, numeric, categorical)), config.threshold
    )
    baselines = baseline_scores(
        task.kind,
        train,
        holdout,
        y_train,
        y_holdout,
        entity=task.entity,
        time=task.time,
        observed=task.observed,
    )
    baseline_metrics = {
        name: task_metrics(task.kind, y_holdout, scores, config.threshold)
        for name, scores in baselines.items()
    }
    holdout_start = holdout[task.time].min()
    commit, dirty = git_state(git_root)
    versions = package_versions()

    saved_env = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
    mlflow.set_tracking_uri(tracking.tracking_uri)
    mlflow.set_registry_uri(tracking.tracking_uri)
    for key, value in saved_env.items():  # set_tracking_uri exports the URI to the environment: undo that
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    run_tags = {
        "training_set_hash": training_set_hash,
        "params_hash": p_hash,
        "code_version": code_version,
        "git_commit": commit,
        "git_dirty": str(dirty).lower(),
        "dagster_run_id": dagster_run_id or "none",
        "seed": str(config.seed),
        "model_type": config.model_type,
        "task": task.kind,
        **{f"package.{name}": version for name, version in versions.items()},
    }
    last_label = pd.Timestamp(training_set[task.time].max())
    run_name = (
        f"candidate_model-{last_label:%Y-%m-%d}-{training_set_hash[:8]}"  # asset, data up to, training set
    )
    with (
        mlflow.start_run(experiment_id=experiment_id, tags=run_tags, run_name=run_name) as run,
        tempfile.TemporaryDirectory(prefix="mlops-train-") as tmp_text,
    ):
        tmp = Path(tmp_text)
        mlflow.log_params(
            {
                "model_type": config.model_type,
                "task": task.kind,
                "label": task.label,
                "hyperparameters": json.dumps(dict(config.hyperparameters), sort_keys=True),
                **{f"hp.{k}": v for k, v in sorted(config.hyperparameters.items())},
                "holdout_fraction": config.holdout_fraction,
                "seed": config.seed,
                "threshold": config.threshold,
                "numeric_features": json.dumps(numeric),
                "categorical_features": json.dumps(categorical),
                "sensitive_attributes": json.dumps(list(task.sensitive)),
                "dropped_inputs": json.dumps(inputs.dropped, sort_keys=True)[:6000],
                "n_train": len(train),
                "n_holdout": len(holdout),
                "holdout_start": holdout_start.isoformat(),
                "training_set_hash": training_set_hash,
                "code_version": code_version,
            }
        )
        finite = lambda d: {k: v for k, v in d.items() if np.isfinite(v)}  # noqa: E731
        mlflow.log_metrics({f"holdout_{k}": v for k, v in finite(holdout_metrics).items()})
        mlflow.log_metrics({f"train_{k}": v for k, v in finite(train_metrics).items()})
        for name, values in baseline_metrics.items():
            mlflow.log_metrics({f"baseline_{name}_{k}": v for k, v in finite(values).items()})
        holdout_hash = frame_hash(holdout)
        mlflow.log_input(_dataset(train, "training_rows", frame_hash(train), task.label), context="training")
        mlflow.log_input(_dataset(holdout, "holdout_rows", holdout_hash, task.label), context="evaluation")

        features_doc = {
            "task": task.kind,
            "label": task.label,
            "numeric": numeric,
            "categorical": categorical,
            "dropped": inputs.dropped,
            "sensitive_attributes_not_inputs": list(task.sensitive),
        }
        (tmp / "features.json").write_text(json.dumps(features_doc, indent=2))
        (tmp / "package_versions.json").write_text(json.dumps(versions, indent=2, sort_keys=True))
        mlflow.log_artifact(str(tmp / "features.json"))
        mlflow.log_artifact(str(tmp / "package_versions.json"))

        training_file = tmp / "training_set.parquet"
        training_set.to_parquet(training_file, index=False)
        mlflow.log_artifact(str(training_file), artifact_path="training_set")
        mlflow.set_tag("training_set_file_sha256", hashlib.sha256(training_file.read_bytes()).hexdigest())

        from mlops_assets.training.metrics import plot_importance, task_plots

        importance = permutation_importance_frame(
            model, x_holdout, y_holdout, task, config.seed, importance_repeats
        )
        importance.to_csv(tmp / "permutation_importance.csv", index=False)
        plot_importance(
            importance,
            tmp / "permutation_importance.png",
            "ROC AUC" if task.is_classification else "MAE (negated)",
        )
        plots = task_plots(
            task.kind, [(f"{config.model_type} (holdout)", y_holdout, holdout_scores)], tmp, "holdout"
        )
        mlflow.log_artifact(str(tmp / "permutation_importance.csv"))
        for path in [tmp / "permutation_importance.png", *plots.values()]:
            mlflow.log_artifact(str(path), artifact_path="plots")

        example = _input_example(x_holdout)
        predict = model.predict_proba if task.is_classification else model.predict
        signature = infer_signature(example, predict(example))
        info = mlflow.sklearn.log_model(
            model,
            name="model",
            signature=signature,
            input_example=example,
            pip_requirements=pip_requirements(),
            skops_trusted_types=skops_trusted_types(model),
            pyfunc_predict_fn="predict_proba" if task.is_classification else "predict",
        )
        local_model = mlflow.artifacts.download_artifacts(
            artifact_uri=info.artifact_path, dst_path=str(tmp / "model_copy")
        )
        model_sha = registry.model_artifact_sha256(local_model)
        mlflow.set_tag(registry.MODEL_SHA256_TAG, model_sha)
        run_id = run.info.run_id
        with contextlib.suppress(Exception):  # metrics on the LoggedModel itself (MLflow 3 lineage)
            mlflow.log_metrics(
                {f"holdout_{k}": v for k, v in finite(holdout_metrics).items()}, model_id=info.model_id
            )

    version_tags = {
        "training_set_hash": training_set_hash,
        "params_hash": p_hash,
        "code_version": code_version,
        registry.MODEL_SHA256_TAG: model_sha,
        registry.LIFECYCLE_TAG: registry.STAGING,
        "git_commit": commit,
        "holdout_start": holdout_start.isoformat(),
        "model_type": config.model_type,
        "task": task.kind,
    }
    mv = client.create_model_version(
        model_name, source=info.model_uri, run_id=run_id, tags=version_tags, model_id=info.model_id
    )
    client.set_registered_model_alias(model_name, registry.CHALLENGER, mv.version)
    mv = client.get_model_version(model_name, mv.version)
    return _result_from_version(mv, client, cached=False, model=model)


__all__ = [
    "CODE_VERSION",
    "TRAINING_SET_ARTIFACT",
    "TrainConfig",
    "TrainResult",
    "fit_model",
    "metric_names",
    "model_inputs",
    "predict_scores",
    "registered_result",
    "time_split",
    "train_and_log",
]
