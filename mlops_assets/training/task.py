"""What a project's model learns: the target and its task, the label columns, the inputs (no Dagster here)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from mlops_assets.project import Project
from mlops_assets.spec.check import feature_dtype, resolve_feature

if TYPE_CHECKING:  # a task is read when Dagster definitions load: pandas only where frames are handled
    import numpy as np
    import pandas as pd

#: The version of the training code: a registered version trained from the same training set and params by
#: the same code version is reused instead of retrained (bump it when what training produces changes).
CODE_VERSION = "train-2"

CLASSIFICATION = "binary_classification"
REGRESSION = "regression"

#: The metric champion comparison uses by default, per task.
DEFAULT_METRIC = {CLASSIFICATION: "roc_auc", REGRESSION: "mae"}
#: Metrics where higher is better (the others: lower is better).
HIGHER_IS_BETTER = {"accuracy", "precision", "recall", "f1", "roc_auc", "pr_auc", "r2"}


@dataclass(frozen=True)
class ModelTask:
    """The target of a project's model and how its rows are keyed, as plain values."""

    kind: str  # binary_classification or regression
    entity: str  # join key of the labelled entity
    time: str  # label column holding the time features are read at
    label: str  # target column
    observed: str  # label column holding when the label became known (the labels source's timestamp)
    model_name: str
    experiment: str
    estimator: str = "hist_gradient_boosting"
    hyperparameters: dict = field(default_factory=dict)
    holdout_fraction: float = 0.2
    seed: int = 42
    threshold: float = 0.5
    positive_class: str | None = None
    sensitive: tuple[str, ...] = ()  # feature names used by fairness checks, never as inputs
    segments: tuple[str, ...] = ()  # categorical features whose observed values the coverage gate checks
    candidates: tuple[str, ...] = ()  # model inputs the spec selects, in spec order
    categorical: frozenset[str] = frozenset()  # which candidates are categorical (string / bool)
    metric: str = ""  # champion comparison metric
    train_from: datetime | None = None  # labels read earlier are not training rows (the spec's model.warmup)

    @property
    def is_classification(self) -> bool:
        return self.kind == CLASSIFICATION

    @property
    def higher_is_better(self) -> bool:
        return self.metric in HIGHER_IS_BETTER

    @classmethod
    def from_project(cls, project: Project) -> ModelTask:
        spec = project.spec
        if spec.target is None or spec.model is None:
            raise ValueError(f"spec {spec.name!r} needs `target:` and `model:` sections to train a model")
        model, target = spec.model, spec.target
        sensitive = tuple(resolve_feature(spec, ref)[1] for ref in model.sensitive)
        sensitive += tuple(
            name
            for v in spec.feature_views.values()
            for name, f in v.features.items()
            if f.sensitive and name not in sensitive
        )
        selection = model.features
        owners = {name: vname for vname, v in spec.feature_views.items() for name in v.features}
        if selection.include == "all":
            names = list(owners)
        else:
            names = [resolve_feature(spec, ref)[1] for ref in selection.include]
        if selection.tags:
            tagged = {
                name
                for vname, v in spec.feature_views.items()
                for name, f in v.features.items()
                if set(selection.tags) & (set(f.tags) | set(v.tags))
            }
            names = [n for n in names if n in tagged]
        excluded = {resolve_feature(spec, ref)[1] for ref in selection.exclude} | set(sensitive)
        names = [n for n in names if n not in excluded]
        categorical = frozenset(
            n
            for n in names
            if feature_dtype(spec, spec.feature_views[owners[n]], spec.feature_views[owners[n]].features[n])
            in ("string", "bool")
        )
        segments = tuple(resolve_feature(spec, ref)[1] for ref in model.segments)
        gates_metric = spec.gates.metric or DEFAULT_METRIC[target.task]
        return cls(
            kind=target.task,
            entity=project.target_entity.join_key,
            time=project.target_timestamp,
            label=target.column,
            observed=project.source(target.source).timestamp,
            model_name=model.name,
            experiment=spec.name,
            estimator=model.estimator,
            hyperparameters=dict(model.hyperparameters),
            holdout_fraction=model.holdout_fraction,
            seed=model.seed,
            threshold=model.threshold,
            positive_class=target.positive_class,
            sensitive=sensitive,
            segments=segments,
            candidates=tuple(names),
            categorical=categorical,
            metric=gates_metric,
            train_from=(
                datetime.combine(spec.partitions.start, datetime.min.time(), tzinfo=UTC)
                + timedelta(days=model.warmup)
                if model.warmup
                else None
            ),
        )

    def trainable(self, frame: pd.DataFrame) -> pd.DataFrame:
        """The rows a model is trained and evaluated on: labels read after the warm-up (``model.warmup``)."""
        if self.train_from is None or frame.empty:
            return frame
        kept = frame.loc[frame[self.time] >= self.train_from].reset_index(drop=True)
        if kept.empty:
            raise ValueError(
                f"every label is read within the warm-up (before {self.train_from:%Y-%m-%d}); "
                "lower model.warmup or add later labels"
            )
        return kept

    def target_values(self, frame: pd.DataFrame) -> np.ndarray:
        """The label column as the model's target: 0/1 for classification, float for regression."""
        import pandas as pd

        values = frame[self.label]
        if values.isna().any():
            raise ValueError(f"{values.isna().sum()} rows have no value in the target column {self.label!r}")
        if not self.is_classification:
            return pd.to_numeric(values, errors="raise").astype("float64").to_numpy()
        if self.positive_class is not None:
            return (values.astype(str) == str(self.positive_class)).astype(int).to_numpy()
        if pd.api.types.is_bool_dtype(values):
            return values.astype(int).to_numpy()
        numeric = pd.to_numeric(values, errors="coerce")
        found = sorted(pd.unique(values.astype(str)))
        if numeric.isna().any() or not set(numeric.unique()) <= {0, 1}:
            raise ValueError(
                f"binary target {self.label!r} must hold 0/1 (or true/false), found {found[:10]}; "
                "set `target.positive_class` to name the value meaning yes"
            )
        return numeric.astype(int).to_numpy()

    def split_inputs(self, names: Sequence[str]) -> tuple[list[str], list[str]]:
        """(numeric, categorical) of the given input names, in order."""
        return [n for n in names if n not in self.categorical], [n for n in names if n in self.categorical]


@dataclass(frozen=True)
class InputSelection:
    """The inputs a model is trained on, and the candidates dropped with the reason for each."""

    numeric: list[str]
    categorical: list[str]
    dropped: dict[str, str]  # feature -> why it is not an input

    @property
    def features(self) -> list[str]:
        return [*self.numeric, *self.categorical]


def select_inputs(task: ModelTask, train: pd.DataFrame) -> InputSelection:
    """The spec's candidate inputs minus those absent, all-null or constant on the training rows."""
    import numpy as np

    dropped: dict[str, str] = {}
    kept: list[str] = []
    for name in task.candidates:
        if name not in train.columns:
            dropped[name] = "not in the training set"
            continue
        values = train[name]
        present = values.dropna()
        if present.empty:
            dropped[name] = "all null on the training rows"
        elif present.astype(str).nunique() == 1 and values.notna().all():
            value = present.iloc[0]
            value = value.item() if isinstance(value, np.generic) else value  # 7.0, not np.float64(7.0)
            dropped[name] = f"constant on the training rows (always {value!r})"
        else:
            kept.append(name)
    numeric, categorical = task.split_inputs(kept)
    if not kept:
        reasons = "; ".join(f"{k}: {v}" for k, v in dropped.items()) or "the spec selects no feature"
        raise ValueError(f"no usable model input: {reasons}")
    return InputSelection(numeric, categorical, dropped)
