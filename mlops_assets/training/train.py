"""Train the churn model on a time split, log it to MLflow and register it as the challenger."""

from __future__ import annotations

import contextlib
import hashlib
import json
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
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import HistGradientBoostingClassifier, RandomForestClassifier
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from mlops_assets.settings import PROJECT_ROOT
from mlops_assets.storage import frame_hash
from mlops_assets.training import registry
from mlops_assets.training.metrics import classification_metrics, plot_calibration, plot_importance, plot_roc
from mlops_assets.training.tracking import TrackingConfig, client_for, ensure_tracking_store

#: Bump when a change to this module changes what a given training set and config produce.
CODE_VERSION = "train-1"

MODEL_TYPES = ("hist_gradient_boosting", "logistic_regression", "random_forest")
LABEL_COLUMN = "churned"
TIME_COLUMN = "label_timestamp"
ENTITY_COLUMN = "customer_id"
TRAINING_SET_ARTIFACT = "training_set/training_set.parquet"

#: Packages whose versions every run records; the model's pip requirements pin the first group.
MODEL_PACKAGES = ("scikit-learn", "skops", "numpy", "pandas", "scipy", "mlflow")
RECORDED_PACKAGES = (*MODEL_PACKAGES, "pyarrow", "matplotlib", "dagster")

#: Types a skops-serialized pipeline may contain beyond skops' defaults (checked, not blindly trusted).
TRUSTED_TYPE_PREFIXES = ("sklearn.", "numpy.")


@dataclass(frozen=True)
class TrainConfig:
    """What to train: the estimator, its hyperparameters, the holdout share and the random seed."""

    model_type: str = "hist_gradient_boosting"
    hyperparameters: Mapping[str, Any] = field(default_factory=dict)
    holdout_fraction: float = 0.2
    seed: int = 42
    threshold: float = 0.5

    def __post_init__(self) -> None:
        if self.model_type not in MODEL_TYPES:
            raise ValueError(f"model_type must be one of {MODEL_TYPES}, got {self.model_type!r}")
        if not 0.0 < self.holdout_fraction < 1.0:
            raise ValueError(f"holdout_fraction must be in (0, 1), got {self.holdout_fraction}")

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
    model: Pipeline | None = None  # the fitted pipeline when trained in this call


def params_hash(
    config: TrainConfig, numeric_features: Sequence[str], categorical_features: Sequence[str]
) -> str:
    """Hash of everything besides data and code that decides the model: config and feature lists."""
    payload = config.to_dict() | {
        "numeric": list(numeric_features),
        "categorical": list(categorical_features),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def validate_training_set(
    df: pd.DataFrame,
    numeric_features: Sequence[str],
    categorical_features: Sequence[str],
    sensitive_attributes: Sequence[str] = (),
) -> None:
    """Raise ValueError naming what is missing or misused in a training set."""
    required = [ENTITY_COLUMN, TIME_COLUMN, LABEL_COLUMN, *numeric_features, *categorical_features]
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise ValueError(f"training set lacks columns {missing}; it has {list(df.columns)}")
    leaked = set(sensitive_attributes) & (set(numeric_features) | set(categorical_features))
    if leaked:
        raise ValueError(f"sensitive attributes {sorted(leaked)} must not be model inputs")
    labels = set(pd.unique(df[LABEL_COLUMN].dropna()))
    if not labels <= {0, 1} or len(labels) < 2:
        raise ValueError(f"{LABEL_COLUMN!r} must hold both 0 and 1, found {sorted(labels)}")
    if not isinstance(df[TIME_COLUMN].dtype, pd.DatetimeTZDtype):
        raise ValueError(f"{TIME_COLUMN!r} must be a UTC-aware timestamp column, got {df[TIME_COLUMN].dtype}")


def time_split(
    df: pd.DataFrame, holdout_fraction: float = 0.2, time_column: str = TIME_COLUMN
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
    # the fewest latest days holding at least the target share, leaving at least one day to train on
    n_days = int(np.searchsorted(from_end.to_numpy(), target) + 1)
    n_days = min(max(n_days, 1), len(counts) - 1)
    cutoff = counts.index[len(counts) - n_days]
    is_holdout = days >= cutoff
    train = (
        df.loc[~is_holdout].sort_values([time_column, ENTITY_COLUMN], kind="stable").reset_index(drop=True)
    )
    holdout = (
        df.loc[is_holdout].sort_values([time_column, ENTITY_COLUMN], kind="stable").reset_index(drop=True)
    )
    return train, holdout


def model_inputs(
    df: pd.DataFrame, numeric_features: Sequence[str], categorical_features: Sequence[str]
) -> pd.DataFrame:
    """The model's input frame: numeric features as float64, categorical as strings (missing as NaN)."""
    out = pd.DataFrame(index=df.index)
    for col in numeric_features:
        out[col] = pd.to_numeric(df[col], errors="coerce").astype("float64")
    for col in categorical_features:
        values = df[col].astype(object)
        out[col] = values.where(df[col].notna(), np.nan)
    return out


def build_estimator(config: TrainConfig):
    """The classifier named by the config, seeded and with the config's hyperparameters."""
    params = dict(config.hyperparameters)
    if config.model_type == "hist_gradient_boosting":
        return HistGradientBoostingClassifier(random_state=config.seed, **params)
    if config.model_type == "logistic_regression":
        return LogisticRegression(random_state=config.seed, **{"max_iter": 1000} | params)
    return RandomForestClassifier(random_state=config.seed, **{"n_estimators": 200, "n_jobs": 1} | params)


def build_pipeline(
    config: TrainConfig, numeric_features: Sequence[str], categorical_features: Sequence[str]
) -> Pipeline:
    """Preprocessing (impute + scale numeric, impute + one-hot categorical) followed by the classifier."""
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
                ("impute", SimpleImputer(strategy="constant", fill_value="missing")),
                ("onehot", OneHotEncoder(handle_unknown="ignore", sparse_output=False)),
            ]
        )
        transformers.append(("categorical", categorical, list(categorical_features)))
    if not transformers:
        raise ValueError("the model needs at least one feature")
    pre = ColumnTransformer(transformers, remainder="drop", verbose_feature_names_out=False)
    return Pipeline([("preprocess", pre), ("classifier", build_estimator(config))])


def fit_model(
    train: pd.DataFrame,
    config: TrainConfig,
    numeric_features: Sequence[str],
    categorical_features: Sequence[str],
    max_threads: int | None = 1,
) -> Pipeline:
    """Fit a fresh pipeline on the training rows (OpenMP/BLAS threads capped at ``max_threads``; None: no cap).

    The cap does not change the fitted model; on small data and shared cores one thread is many times faster.
    """
    pipeline = build_pipeline(config, numeric_features, categorical_features)
    with thread_limit(max_threads):
        pipeline.fit(
            model_inputs(train, numeric_features, categorical_features), train[LABEL_COLUMN].astype(int)
        )
    return pipeline


def thread_limit(max_threads: int | None):
    """Context capping OpenMP/BLAS threads (None: leave them alone)."""
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=max_threads) if max_threads is not None else contextlib.nullcontext()


def single_thread():
    """Cap OpenMP/BLAS threads at one: small predictions run far faster than with contended threads."""
    return thread_limit(1)


def churn_scores(model: Any, frame: pd.DataFrame) -> np.ndarray:
    """Predicted churn probability (class 1) per row."""
    with single_thread():
        return np.asarray(model.predict_proba(frame))[:, 1]


def git_state(root: Path = PROJECT_ROOT) -> tuple[str, bool | None]:
    """The checked-out commit and whether tracked files differ from it (``unknown``/None outside git)."""
    try:
        commit = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout.strip()
        status = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
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


def skops_trusted_types(model: Pipeline) -> list[str]:
    """Types skops must be told to trust to load this pipeline (e.g. HistGradientBoosting's TreePredictor)."""
    import skops.io as sio

    untrusted = sio.get_untrusted_types(data=sio.dumps(model))
    unexpected = [t for t in untrusted if not t.startswith(TRUSTED_TYPE_PREFIXES)]
    if unexpected:
        raise TypeError(
            f"the pipeline holds types outside scikit-learn/numpy that skops would load: {unexpected}"
        )
    return sorted(untrusted)


def find_cached_version(
    client,
    training_set_hash: str,
    params_hash: str,
    code_version: str,
    *,
    model_name: str = registry.MODEL_NAME,
):
    """The newest registered version trained from the same data, params and code, or ``None``."""
    query = (
        f"name = '{model_name}' and tags.training_set_hash = '{training_set_hash}' "
        f"and tags.params_hash = '{params_hash}' and tags.code_version = '{code_version}'"
    )
    versions = [v for v in client.search_model_versions(query) if v.tags.get(registry.MODEL_SHA256_TAG)]
    return max(versions, key=lambda v: int(v.version), default=None)


def permutation_importance_frame(
    model: Pipeline, holdout_inputs: pd.DataFrame, y: np.ndarray, seed: int, n_repeats: int = 5
) -> pd.DataFrame:
    """Mean and spread of the ROC AUC drop when each input feature is shuffled on the holdout."""
    from sklearn.inspection import permutation_importance

    scoring = "roc_auc" if len(np.unique(y)) == 2 else "accuracy"
    with single_thread():
        result = permutation_importance(
            model, holdout_inputs, y, scoring=scoring, n_repeats=n_repeats, random_state=seed, n_jobs=1
        )
    frame = pd.DataFrame(
        {
            "feature": list(holdout_inputs.columns),
            "importance_mean": result.importances_mean,
            "importance_std": result.importances_std,
        }
    )
    return frame.sort_values("importance_mean", ascending=False).reset_index(drop=True)


def _input_example(inputs: pd.DataFrame, n: int = 5) -> pd.DataFrame:
    complete = inputs.dropna()
    return (complete if len(complete) >= n else inputs).head(n).reset_index(drop=True)


def _result_from_version(mv, client, cached: bool, model: Pipeline | None = None) -> TrainResult:
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
        model=model,
    )


def registered_result(client, version: int | str, *, model_name: str = registry.MODEL_NAME) -> TrainResult:
    """The :class:`TrainResult` of an already registered version (``cached`` is False, no fitted model)."""
    return _result_from_version(client.get_model_version(model_name, str(version)), client, cached=False)


def train_and_log(
    training_set: pd.DataFrame,
    config: TrainConfig,
    *,
    numeric_features: Sequence[str],
    categorical_features: Sequence[str],
    sensitive_attributes: Sequence[str] = ("age_group",),
    training_set_hash: str | None = None,
    tracking: TrackingConfig | None = None,
    dagster_run_id: str | None = None,
    code_version: str = CODE_VERSION,
    use_cache: bool = True,
    importance_repeats: int = 5,
    max_threads: int | None = 1,
) -> TrainResult:
    """Fit on earlier label days, log everything to MLflow, register a version and alias it ``challenger``.

    When a registered version already came from the same training-set hash, params and code version,
    that version becomes the challenger again and nothing is retrained (``TrainResult.cached``).
    """
    import mlflow
    import mlflow.artifacts
    import mlflow.sklearn
    from mlflow.models import infer_signature

    numeric_features, categorical_features = list(numeric_features), list(categorical_features)
    validate_training_set(training_set, numeric_features, categorical_features, sensitive_attributes)
    tracking = tracking or TrackingConfig.for_data_root()
    training_set_hash = training_set_hash or frame_hash(training_set)
    p_hash = params_hash(config, numeric_features, categorical_features)
    experiment_id = ensure_tracking_store(tracking)
    client = client_for(tracking)
    model_name = tracking.model_name

    if use_cache:
        cached = find_cached_version(client, training_set_hash, p_hash, code_version, model_name=model_name)
        if cached is not None:
            client.set_registered_model_alias(model_name, registry.CHALLENGER, cached.version)
            return _result_from_version(cached, client, cached=True)

    train, holdout = time_split(training_set, config.holdout_fraction)
    if train[LABEL_COLUMN].nunique() < 2:
        raise ValueError("the training days hold only one class; add more label days")
    model = fit_model(train, config, numeric_features, categorical_features, max_threads)
    x_holdout = model_inputs(holdout, numeric_features, categorical_features)
    y_holdout = holdout[LABEL_COLUMN].astype(int).to_numpy()
    proba = churn_scores(model, x_holdout)
    holdout_metrics = classification_metrics(y_holdout, proba, config.threshold)
    train_proba = churn_scores(model, model_inputs(train, numeric_features, categorical_features))
    train_metrics = classification_metrics(
        train[LABEL_COLUMN].astype(int).to_numpy(), train_proba, config.threshold
    )
    holdout_start = holdout[TIME_COLUMN].min()
    commit, dirty = git_state()
    versions = package_versions()

    mlflow.set_tracking_uri(tracking.tracking_uri)
    mlflow.set_registry_uri(tracking.tracking_uri)
    run_tags = {
        "training_set_hash": training_set_hash,
        "params_hash": p_hash,
        "code_version": code_version,
        "git_commit": commit,
        "git_dirty": str(dirty).lower(),
        "dagster_run_id": dagster_run_id or "none",
        "seed": str(config.seed),
        "model_type": config.model_type,
        **{f"package.{name}": version for name, version in versions.items()},
    }
    with (
        mlflow.start_run(experiment_id=experiment_id, tags=run_tags) as run,
        tempfile.TemporaryDirectory(prefix="mlops-train-") as tmp_text,
    ):
        tmp = Path(tmp_text)
        mlflow.log_params(
            {
                "model_type": config.model_type,
                "hyperparameters": json.dumps(dict(config.hyperparameters), sort_keys=True),
                **{f"hp.{k}": v for k, v in sorted(config.hyperparameters.items())},
                "holdout_fraction": config.holdout_fraction,
                "seed": config.seed,
                "threshold": config.threshold,
                "numeric_features": json.dumps(numeric_features),
                "categorical_features": json.dumps(categorical_features),
                "sensitive_attributes": json.dumps(list(sensitive_attributes)),
                "n_train": len(train),
                "n_holdout": len(holdout),
                "holdout_start": holdout_start.isoformat(),
                "training_set_hash": training_set_hash,
                "code_version": code_version,
            }
        )
        mlflow.log_metrics({f"holdout_{k}": v for k, v in holdout_metrics.items() if np.isfinite(v)})
        mlflow.log_metrics({f"train_{k}": v for k, v in train_metrics.items() if np.isfinite(v)})
        mlflow.log_metrics(
            {
                "holdout_churn_rate": float(y_holdout.mean()),
                "train_churn_rate": float(train[LABEL_COLUMN].mean()),
            }
        )

        features_doc = {
            "numeric": numeric_features,
            "categorical": categorical_features,
            "sensitive_attributes_not_inputs": list(sensitive_attributes),
            "label": LABEL_COLUMN,
        }
        (tmp / "features.json").write_text(json.dumps(features_doc, indent=2))
        (tmp / "package_versions.json").write_text(json.dumps(versions, indent=2, sort_keys=True))
        mlflow.log_artifact(str(tmp / "features.json"))
        mlflow.log_artifact(str(tmp / "package_versions.json"))

        training_file = tmp / "training_set.parquet"
        training_set.to_parquet(training_file, index=False)
        training_file_sha = hashlib.sha256(training_file.read_bytes()).hexdigest()
        mlflow.log_artifact(str(training_file), artifact_path="training_set")
        mlflow.set_tag("training_set_file_sha256", training_file_sha)

        importance = permutation_importance_frame(
            model, x_holdout, y_holdout, config.seed, importance_repeats
        )
        importance.to_csv(tmp / "permutation_importance.csv", index=False)
        plot_importance(importance, tmp / "permutation_importance.png")
        curves = [(f"{config.model_type} (holdout)", y_holdout, proba)]
        plot_roc(curves, tmp / "roc_curve.png")
        plot_calibration(curves, tmp / "calibration_curve.png")
        for name in (
            "permutation_importance.csv",
            "permutation_importance.png",
            "roc_curve.png",
            "calibration_curve.png",
        ):
            mlflow.log_artifact(str(tmp / name), artifact_path="plots" if name.endswith(".png") else None)

        example = _input_example(x_holdout)
        signature = infer_signature(example, model.predict_proba(example))
        info = mlflow.sklearn.log_model(
            model,
            name="model",
            signature=signature,
            input_example=example,
            pip_requirements=pip_requirements(),
            skops_trusted_types=skops_trusted_types(model),
            pyfunc_predict_fn="predict_proba",
        )
        local_model = mlflow.artifacts.download_artifacts(
            artifact_uri=info.artifact_path, dst_path=str(tmp / "model_copy")
        )
        model_sha = registry.model_artifact_sha256(local_model)
        mlflow.set_tag(registry.MODEL_SHA256_TAG, model_sha)
        run_id = run.info.run_id

    version_tags = {
        "training_set_hash": training_set_hash,
        "params_hash": p_hash,
        "code_version": code_version,
        registry.MODEL_SHA256_TAG: model_sha,
        registry.LIFECYCLE_TAG: registry.STAGING,
        "git_commit": commit,
        "holdout_start": holdout_start.isoformat(),
        "model_type": config.model_type,
    }
    mv = client.create_model_version(
        model_name, source=info.model_uri, run_id=run_id, tags=version_tags, model_id=info.model_id
    )
    client.set_registered_model_alias(model_name, registry.CHALLENGER, mv.version)
    mv = client.get_model_version(model_name, mv.version)
    return _result_from_version(mv, client, cached=False, model=model)
