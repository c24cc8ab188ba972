"""Data and prediction drift statistics: per-feature tests and distances, and a dataset-level verdict.

Per feature, every applicable statistic is computed (they share one sort or one count table), and
the feature's *method* decides which one sets the drifted flag:

* numeric columns: two-sample Kolmogorov-Smirnov (``ks``, statistic and p-value as
  ``scipy.stats.ks_2samp``), normalized Wasserstein (``wasserstein``) and PSI (``psi``);
* categorical columns: two-sample chi-squared on the 2 x k contingency table of reference counts
  against current counts (``chi2``, as ``scipy.stats.chi2_contingency(correction=False)``),
  Jensen-Shannon distance in base 2 (``jensenshannon``) and PSI (``psi``).

Default methods: ``ks`` for numeric columns and ``chi2`` for categorical columns, both at
alpha = 0.05. They keep the false-alarm rate at alpha on data that has not drifted, whatever the
sample sizes; with very large samples they also flag shifts too small to matter, so use
``method="psi"`` (or ``wasserstein`` / ``jensenshannon``) when practical size matters more than
statistical evidence.

The chi-squared test compares two samples, each with its own sampling noise. Testing current counts
against reference frequencies taken as exact (a goodness-of-fit test) ignores the reference's noise
and, with equal sample sizes, about doubles the statistic's variance under no drift, so it raises
false alarms far more often than alpha.

Definitions:

* normalized Wasserstein = ``scipy.stats.wasserstein_distance(ref, cur) / std(ref)`` (population
  std, ddof=0), so a shift of the whole distribution by 0.1 reference std gives 0.1. A constant
  reference is scaled by the pooled std instead (and two equal constants give 0).
* PSI = sum over bins of ``(c - r) * ln(c / r)`` where r and c are the reference and current shares
  per bin. Numeric bins are cut at the reference's quantiles (``psi_bins`` equal-frequency bins,
  duplicate edges merged, the outer bins open to -inf/+inf so current values outside the reference
  range are counted); a bin is ``[lower, upper)``. Categorical bins are the categories seen in
  either sample. An empty bin's share is replaced by ``psi_epsilon`` (no renormalization).
* Nulls (and non-finite numbers) are left out of every statistic; their share in each sample is
  reported. A feature with values on one side and none on the other is flagged as drifted.
* Dataset drift: ``drift_share = drifted features / tested features`` (a feature with no values in
  either sample is reported but not counted) and the dataset has drifted when
  ``drift_share >= thresholds.drift_share``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats
from scipy.special import gammaln, rel_entr

NUMERIC = "numeric"
CATEGORICAL = "categorical"

#: Methods that can decide the drifted flag, per column kind.
METHODS: dict[str, tuple[str, ...]] = {
    NUMERIC: ("ks", "wasserstein", "psi"),
    CATEGORICAL: ("chi2", "jensenshannon", "psi"),
}
#: Method used when none is asked for.
DEFAULT_METHODS: dict[str, str] = {NUMERIC: "ks", CATEGORICAL: "chi2"}
#: Methods whose flag is ``p_value < alpha``; the others flag ``statistic >= threshold``.
P_VALUE_METHODS = frozenset({"ks", "chi2"})

# scipy.stats.ks_2samp computes exact p-values up to this sample size and uses the asymptotic
# Kolmogorov distribution above it; the same split is kept here.
_KS_EXACT_MAX_N = 10_000
# A categorical column with more distinct values than this share of its rows is taken for an
# identifier and skipped when columns are chosen automatically.
_ID_LIKE_UNIQUE_SHARE = 0.5
_ID_LIKE_MIN_ROWS = 50


class DriftInputError(ValueError):
    """Input to a drift computation that cannot be used (unreadable file, no common columns, ...)."""


@dataclass(frozen=True)
class DriftThresholds:
    """Per-method drift thresholds, the dataset drift share, and the PSI binning settings."""

    ks_alpha: float = 0.05  # drifted when the KS p-value is below
    chi2_alpha: float = 0.05  # drifted when the chi-squared p-value is below
    psi: float = 0.2  # drifted when PSI is at or above
    wasserstein: float = 0.1  # drifted when the normalized Wasserstein distance is at or above
    jensenshannon: float = 0.1  # drifted when the Jensen-Shannon distance (base 2) is at or above
    drift_share: float = 0.5  # dataset drifted when this share of tested features drifted (or more)
    psi_bins: int = 10  # equal-frequency reference bins for numeric PSI
    psi_epsilon: float = 1e-4  # share used for an empty PSI bin

    def for_method(self, method: str) -> float:
        """The threshold that applies to ``method``."""
        return {
            "ks": self.ks_alpha,
            "chi2": self.chi2_alpha,
            "psi": self.psi,
            "wasserstein": self.wasserstein,
            "jensenshannon": self.jensenshannon,
        }[method]

    def is_drifted(self, method: str, statistic: float | None, p_value: float | None) -> bool:
        """Whether a method's result crosses its threshold."""
        if method in P_VALUE_METHODS:
            return p_value is not None and p_value < self.for_method(method)
        return statistic is not None and statistic >= self.for_method(method)


@dataclass(frozen=True)
class FeatureDrift:
    """Drift of one feature: the deciding test, its verdict, and every other statistic computed."""

    feature: str
    kind: str  # "numeric" or "categorical"
    test: str  # the method that decided `drifted`
    statistic: float | None
    p_value: float | None  # None for distances (wasserstein, jensenshannon, psi)
    threshold: float
    drifted: bool
    reference_count: int  # non-null values used
    current_count: int
    reference_null_share: float
    current_null_share: float
    ks_statistic: float | None = None
    ks_p_value: float | None = None
    wasserstein: float | None = None  # normalized by the reference std
    chi2_statistic: float | None = None
    chi2_p_value: float | None = None
    chi2_dof: int | None = None
    jensenshannon: float | None = None
    psi: float | None = None
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields; NaN and infinities become None."""
        return {k: _json_number(v) for k, v in asdict(self).items()}


@dataclass(frozen=True)
class DriftReport:
    """Per-feature drift rows and the dataset-level verdict."""

    features: list[FeatureDrift]
    drift_share: float
    dataset_drift: bool
    thresholds: DriftThresholds = field(default_factory=DriftThresholds)
    reference_rows: int = 0
    current_rows: int = 0
    skipped: dict[str, str] = field(default_factory=dict)  # column -> why it was not tested

    @property
    def drifted_features(self) -> list[str]:
        """Names of the features flagged as drifted."""
        return [f.feature for f in self.features if f.drifted]

    def feature(self, name: str) -> FeatureDrift:
        """The row of one feature."""
        for row in self.features:
            if row.feature == name:
                return row
        raise KeyError(name)

    def to_dict(self) -> dict[str, Any]:
        """``{"dataset_drift", "drift_share", "features": [{"feature", "test", "statistic", "p_value",
        "drifted", ...}], ...}``, JSON-ready."""
        return {
            "dataset_drift": bool(self.dataset_drift),
            "drift_share": float(self.drift_share),
            "drift_share_threshold": self.thresholds.drift_share,
            "n_features": len(self.features),
            "n_drifted": len(self.drifted_features),
            "reference_rows": self.reference_rows,
            "current_rows": self.current_rows,
            "features": [row.to_dict() for row in self.features],
            "skipped": dict(self.skipped),
        }


def _json_number(value: Any) -> Any:
    if isinstance(value, (float, np.floating)):
        value = float(value)
        return value if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.bool_):
        return bool(value)
    return value


# --------------------------------------------------------------------------- statistics


def numeric_statistics(
    reference: np.ndarray, current: np.ndarray, thresholds: DriftThresholds | None = None
) -> dict[str, float]:
    """KS statistic and p-value, normalized Wasserstein and PSI of two non-empty numeric samples."""
    thresholds = thresholds or DriftThresholds()
    ref = np.sort(np.asarray(reference, dtype="float64"))
    cur = np.sort(np.asarray(current, dtype="float64"))
    n_ref, n_cur = ref.size, cur.size
    if n_ref == 0 or n_cur == 0:
        raise ValueError("numeric_statistics needs two non-empty samples")

    # Both empirical CDFs at every observed value (right-continuous), from the sorted samples.
    pooled = np.concatenate([ref, cur])
    pooled.sort(kind="mergesort")
    cdf_gap = (
        np.searchsorted(ref, pooled, side="right") / n_ref
        - np.searchsorted(cur, pooled, side="right") / n_cur
    )

    if max(n_ref, n_cur) <= _KS_EXACT_MAX_N:
        ks = stats.ks_2samp(ref, cur)  # exact p-value; cheap at this size
        ks_statistic, ks_p_value = float(ks.statistic), float(ks.pvalue)
    else:
        ks_statistic = float(np.abs(cdf_gap).max())
        ks_p_value = _ks_asymptotic_p_value(ks_statistic, n_ref, n_cur)

    distance = float(np.sum(np.abs(cdf_gap[:-1]) * np.diff(pooled)))
    scale = float(np.std(ref))
    if scale == 0.0:
        scale = float(np.std(pooled))
    wasserstein = distance / scale if scale > 0.0 else 0.0

    edges = np.unique(np.quantile(ref, np.linspace(0.0, 1.0, thresholds.psi_bins + 1))[1:-1])
    psi = _psi(_bin_counts(ref, edges) / n_ref, _bin_counts(cur, edges) / n_cur, thresholds.psi_epsilon)
    return {
        "ks_statistic": ks_statistic,
        "ks_p_value": ks_p_value,
        "wasserstein": wasserstein,
        "psi": psi,
    }


def _ks_asymptotic_p_value(d: float, n_ref: int, n_cur: int) -> float:
    """``scipy.stats.ks_2samp``'s large-sample p-value: ``kstwo.sf(d, round(n_ref n_cur / (n_ref + n_cur)))``.

    In the tail (2.2 <= n d^2 < 370, n > 140, d < 0.5) scipy evaluates ``2 * smirnov(n, d)``, which
    costs ~0.1-0.4 s at n ~ 50,000; there the same quantity is computed with the Birnbaum-Tingey sum
    in log space (all terms positive, relative difference ~1e-10). Elsewhere scipy is called.
    """
    m, n = sorted([float(n_ref), float(n_cur)], reverse=True)
    en = float(np.round(m * n / (m + n)))
    t = en * d
    nd2 = t * d
    if en > 140 and 1.0 < t < en - 1 and d < 0.5 and nd2 >= 2.2:
        if nd2 >= 370.0:
            return 0.0
        return float(np.clip(2.0 * _smirnov_sf(en, d), 0.0, 1.0))
    return float(np.clip(stats.kstwo.sf(d, en), 0.0, 1.0))


def _smirnov_sf(n: float, x: float) -> float:
    """P(D+_n >= x) of the one-sided one-sample KS statistic (Birnbaum-Tingey sum, log space)."""
    j = np.arange(0, int(np.floor(n * (1.0 - x))) + 1, dtype="float64")
    with np.errstate(divide="ignore"):
        log_terms = (
            gammaln(n + 1)
            - gammaln(j + 1)
            - gammaln(n - j + 1)
            + (n - j) * np.log(1.0 - x - j / n)
            + (j - 1) * np.log(x + j / n)
        )
    log_terms = log_terms[np.isfinite(log_terms)]
    top = log_terms.max()
    return float(x * np.exp(top) * np.sum(np.exp(log_terms - top)))


def _bin_counts(sorted_values: np.ndarray, inner_edges: np.ndarray) -> np.ndarray:
    """Counts in (-inf, e1), [e1, e2), ..., [ek, +inf) of an ascending array."""
    below = np.searchsorted(sorted_values, inner_edges, side="left")
    return np.diff(np.concatenate([[0], below, [sorted_values.size]])).astype("float64")


def _psi(ref_share: np.ndarray, cur_share: np.ndarray, epsilon: float) -> float:
    ref_share = np.where(ref_share == 0, epsilon, ref_share)
    cur_share = np.where(cur_share == 0, epsilon, cur_share)
    return float(np.sum((cur_share - ref_share) * np.log(cur_share / ref_share)))


def categorical_statistics(
    reference_counts: np.ndarray, current_counts: np.ndarray, thresholds: DriftThresholds | None = None
) -> dict[str, float]:
    """Two-sample chi-squared, Jensen-Shannon distance (base 2) and PSI of aligned category counts."""
    thresholds = thresholds or DriftThresholds()
    ref = np.asarray(reference_counts, dtype="float64")
    cur = np.asarray(current_counts, dtype="float64")
    keep = (ref + cur) > 0
    ref, cur = ref[keep], cur[keep]
    n_ref, n_cur = ref.sum(), cur.sum()
    if n_ref == 0 or n_cur == 0:
        raise ValueError("categorical_statistics needs two non-empty samples")

    dof = ref.size - 1
    if dof == 0:
        chi2_statistic, chi2_p_value = 0.0, 1.0
    else:
        observed = np.vstack([ref, cur])
        expected = np.outer([n_ref, n_cur], ref + cur) / (n_ref + n_cur)
        chi2_statistic = float(np.sum((observed - expected) ** 2 / expected))
        chi2_p_value = float(stats.chi2.sf(chi2_statistic, dof))

    p, q = ref / n_ref, cur / n_cur
    mid = (p + q) / 2.0
    js = float(np.sqrt((np.sum(rel_entr(p, mid)) + np.sum(rel_entr(q, mid))) / np.log(2.0) / 2.0))
    return {
        "chi2_statistic": chi2_statistic,
        "chi2_p_value": chi2_p_value,
        "chi2_dof": int(dof),
        "jensenshannon": js,
        "psi": _psi(p, q, thresholds.psi_epsilon),
    }


# --------------------------------------------------------------------------- per feature


def _numeric_values(series: pd.Series) -> tuple[np.ndarray, float]:
    """Finite values as float64, and the share of rows that were null or non-finite."""
    values = pd.to_numeric(series).to_numpy(dtype="float64", na_value=np.nan)
    finite = values[np.isfinite(values)]
    return finite, (1.0 - finite.size / values.size) if values.size else 0.0


def _category_counts(reference: pd.Series, current: pd.Series) -> tuple[np.ndarray, np.ndarray, int, int]:
    """Counts of each category seen in either sample (nulls left out), aligned, and the non-null totals."""
    if isinstance(reference.dtype, pd.CategoricalDtype) or isinstance(current.dtype, pd.CategoricalDtype):
        reference, current = reference.astype(object), current.astype(object)
    codes, uniques = pd.factorize(pd.concat([reference, current], ignore_index=True), use_na_sentinel=True)
    ref_codes, cur_codes = codes[: len(reference)], codes[len(reference) :]
    ref_codes, cur_codes = ref_codes[ref_codes >= 0], cur_codes[cur_codes >= 0]
    return (
        np.bincount(ref_codes, minlength=len(uniques)).astype("float64"),
        np.bincount(cur_codes, minlength=len(uniques)).astype("float64"),
        int(ref_codes.size),
        int(cur_codes.size),
    )


def _null_share(series: pd.Series) -> float:
    return float(series.isna().mean()) if len(series) else 0.0


def feature_drift(
    name: str,
    reference: pd.Series | np.ndarray | Sequence[Any],
    current: pd.Series | np.ndarray | Sequence[Any],
    kind: str = NUMERIC,
    thresholds: DriftThresholds | None = None,
    method: str | None = None,
) -> FeatureDrift:
    """Drift of one feature between a reference and a current sample."""
    thresholds = thresholds or DriftThresholds()
    if kind not in METHODS:
        raise ValueError(f"kind must be 'numeric' or 'categorical', got {kind!r}")
    method = method or DEFAULT_METHODS[kind]
    if method not in METHODS[kind]:
        raise ValueError(
            f"method {method!r} does not apply to {kind} feature {name!r}; use one of {', '.join(METHODS[kind])}"
        )
    ref_series, cur_series = pd.Series(reference), pd.Series(current)

    if kind == NUMERIC:
        ref_values, ref_null = _numeric_values(ref_series)
        cur_values, cur_null = _numeric_values(cur_series)
        n_ref, n_cur = ref_values.size, cur_values.size
    else:
        ref_counts, cur_counts, n_ref, n_cur = _category_counts(ref_series, cur_series)
        ref_null, cur_null = _null_share(ref_series), _null_share(cur_series)

    base = {
        "feature": name,
        "kind": kind,
        "test": method,
        "threshold": thresholds.for_method(method),
        "reference_count": int(n_ref),
        "current_count": int(n_cur),
        "reference_null_share": ref_null,
        "current_null_share": cur_null,
    }
    if n_ref == 0 or n_cur == 0:
        if n_ref == 0 and n_cur == 0:
            note, drifted = "no non-null values in either sample", False
        else:
            side = "reference" if n_ref == 0 else "current"
            note, drifted = f"no non-null values in the {side} sample", True
        return FeatureDrift(statistic=None, p_value=None, drifted=drifted, note=note, **base)

    if kind == NUMERIC:
        computed: dict[str, Any] = numeric_statistics(ref_values, cur_values, thresholds)
    else:
        computed = categorical_statistics(ref_counts, cur_counts, thresholds)
    statistic, p_value = {
        "ks": ("ks_statistic", "ks_p_value"),
        "chi2": ("chi2_statistic", "chi2_p_value"),
        "wasserstein": ("wasserstein", None),
        "jensenshannon": ("jensenshannon", None),
        "psi": ("psi", None),
    }[method]
    stat_value = computed[statistic]
    p = computed[p_value] if p_value else None
    return FeatureDrift(
        statistic=stat_value,
        p_value=p,
        drifted=thresholds.is_drifted(method, stat_value, p),
        **base,
        **computed,
    )


def prediction_drift(
    reference_scores: np.ndarray | pd.Series | Sequence[float],
    current_scores: np.ndarray | pd.Series | Sequence[float],
    thresholds: DriftThresholds | None = None,
    method: str | None = None,
    name: str = "prediction",
) -> FeatureDrift:
    """Drift of the model's score distribution (a numeric feature named ``prediction``)."""
    return feature_drift(name, reference_scores, current_scores, NUMERIC, thresholds, method)


# --------------------------------------------------------------------------- data frames


def _is_numeric(series: pd.Series) -> bool:
    return pd.api.types.is_numeric_dtype(series.dtype) and not pd.api.types.is_bool_dtype(series.dtype)


def _is_datetime(series: pd.Series) -> bool:
    return pd.api.types.is_datetime64_any_dtype(series.dtype) or isinstance(series.dtype, pd.PeriodDtype)


def _kind_of(column: str, reference: pd.Series, current: pd.Series, categorical: set[str]) -> str:
    if column in categorical:
        return CATEGORICAL
    ref_numeric, cur_numeric = _is_numeric(reference), _is_numeric(current)
    if ref_numeric and cur_numeric:
        return NUMERIC
    if ref_numeric != cur_numeric and not (reference.isna().all() or current.isna().all()):
        raise DriftInputError(
            f"column {column!r} is {reference.dtype} in the reference but {current.dtype} in the current data; "
            "cast one of them or list the column as categorical"
        )
    return NUMERIC if (ref_numeric or cur_numeric) else CATEGORICAL


def _looks_like_id(series: pd.Series) -> bool:
    values = series.dropna()
    return len(values) >= _ID_LIKE_MIN_ROWS and values.nunique() > _ID_LIKE_UNIQUE_SHARE * len(values)


def feature_columns(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    columns: Sequence[str] | None = None,
    categorical: Sequence[str] | None = None,
) -> tuple[dict[str, str], dict[str, str]]:
    """The columns to test with their kind (numeric or categorical), and the columns left out with why.

    ``columns`` defaults to the columns both frames share, leaving out datetimes and categorical
    columns that look like identifiers. Numeric dtypes are numeric unless named in ``categorical``;
    everything else is categorical.
    """
    categorical_set = set(categorical or ())
    skipped: dict[str, str] = {}

    if columns is None:
        common = [c for c in reference.columns if c in set(current.columns)]
        for col in reference.columns:
            if col not in set(current.columns):
                skipped[str(col)] = "missing from the current data"
        for col in current.columns:
            if col not in set(reference.columns):
                skipped[str(col)] = "missing from the reference data"
        if not common:
            raise DriftInputError(
                "reference and current data have no column in common "
                f"(reference: {list(reference.columns)[:10]}, current: {list(current.columns)[:10]})"
            )
        selected = []
        for col in common:
            if _is_datetime(reference[col]) or _is_datetime(current[col]):
                skipped[str(col)] = "datetime column"
            elif (
                col not in categorical_set
                and not _is_numeric(reference[col])
                and _looks_like_id(reference[col])
            ):
                skipped[str(col)] = "looks like an identifier (most values are distinct)"
            else:
                selected.append(col)
    else:
        missing = [c for c in columns if c not in reference.columns or c not in current.columns]
        if missing:
            raise DriftInputError(f"columns not found in both reference and current data: {missing}")
        for col in columns:
            if _is_datetime(reference[col]) or _is_datetime(current[col]):
                raise DriftInputError(
                    f"column {col!r} is a datetime; convert it to a number to test its drift"
                )
        selected = list(columns)

    return {col: _kind_of(col, reference[col], current[col], categorical_set) for col in selected}, skipped


def compute_drift(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    columns: Sequence[str] | None = None,
    categorical: Sequence[str] | None = None,
    thresholds: DriftThresholds | None = None,
    method: str | None = None,
    *,
    numeric_method: str | None = None,
    categorical_method: str | None = None,
    per_column_method: Mapping[str, str] | None = None,
) -> DriftReport:
    """Per-feature and dataset drift of ``current`` against ``reference``.

    ``columns`` defaults to the columns both frames share, leaving out datetimes and categorical
    columns that look like identifiers (listed in ``skipped``). Numeric dtypes are numeric unless
    named in ``categorical``; everything else is categorical. The method of a column is the first
    given of ``per_column_method[column]``, ``method``, ``numeric_method``/``categorical_method``,
    and the default (``ks`` numeric, ``chi2`` categorical).
    """
    thresholds = thresholds or DriftThresholds()
    per_column_method = dict(per_column_method or {})
    kinds, skipped = feature_columns(reference, current, columns, categorical)
    rows = []
    for col, kind in kinds.items():
        col_method = (
            per_column_method.get(col)
            or method
            or (numeric_method if kind == NUMERIC else categorical_method)
            or DEFAULT_METHODS[kind]
        )
        rows.append(feature_drift(str(col), reference[col], current[col], kind, thresholds, col_method))

    drift_share, dataset_drift = _dataset_verdict(rows, thresholds)
    return DriftReport(
        features=rows,
        drift_share=drift_share,
        dataset_drift=dataset_drift,
        thresholds=thresholds,
        reference_rows=len(reference),
        current_rows=len(current),
        skipped=skipped,
    )


# --------------------------------------------------------------------------- files


def read_table(path: str | Path, role: str = "input") -> pd.DataFrame:
    """Read a Parquet file or folder, or a CSV file, with an error naming the file when it cannot."""
    path = Path(path)
    if not path.exists():
        raise DriftInputError(f"{role} file not found: {path}")
    suffix = path.suffix.lower()
    try:
        if path.is_dir() or suffix in (".parquet", ".pq"):
            frame = pd.read_parquet(path)
        elif suffix in (".csv", ".txt") or path.name.lower().endswith(".csv.gz"):
            frame = pd.read_csv(path)
        else:
            raise DriftInputError(f"{role} file {path} is neither Parquet (.parquet) nor CSV (.csv)")
    except DriftInputError:
        raise
    except Exception as exc:  # pandas/pyarrow raise many types for a bad file
        raise DriftInputError(f"cannot read {role} file {path}: {type(exc).__name__}: {exc}") from exc
    if frame.shape[1] == 0:
        raise DriftInputError(f"{role} file {path} has no columns")
    return frame


def drift_from_files(
    reference_path: str | Path,
    current_path: str | Path,
    columns: Sequence[str] | None = None,
    categorical: Sequence[str] | None = None,
    thresholds: DriftThresholds | None = None,
    method: str | None = None,
    **kwargs: Any,
) -> DriftReport:
    """:func:`compute_drift` on two Parquet/CSV files."""
    reference = read_table(reference_path, "reference")
    current = read_table(current_path, "current")
    try:
        return compute_drift(reference, current, columns, categorical, thresholds, method, **kwargs)
    except DriftInputError as exc:
        raise DriftInputError(f"{exc} [reference: {reference_path}, current: {current_path}]") from exc


def with_thresholds(report: DriftReport, thresholds: DriftThresholds) -> DriftReport:
    """The same statistics judged against other thresholds (PSI binning settings are not re-applied)."""
    rows = [
        replace(
            r,
            threshold=thresholds.for_method(r.test),
            drifted=(
                r.drifted if r.statistic is None else thresholds.is_drifted(r.test, r.statistic, r.p_value)
            ),
        )
        for r in report.features
    ]
    share, dataset_drift = _dataset_verdict(rows, thresholds)
    return replace(
        report, features=rows, drift_share=share, dataset_drift=dataset_drift, thresholds=thresholds
    )


def _dataset_verdict(rows: Sequence[FeatureDrift], thresholds: DriftThresholds) -> tuple[float, bool]:
    """Share of drifted features among those with values in either sample, and whether it crosses the threshold."""
    tested = [r for r in rows if r.reference_count or r.current_count]
    if not tested:
        return 0.0, False
    share = sum(r.drifted for r in tested) / len(tested)
    return float(share), share >= thresholds.drift_share
