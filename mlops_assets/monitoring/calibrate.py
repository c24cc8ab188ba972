"""Drift thresholds calibrated on the natural variation of a reference period (NannyML-style), no Dagster.

The reference is a set of **chunks** (one chunk = one day's snapshot of the monitored population over
the champion's training window; a monitored day is one chunk of the same size). For every statistic,
each chunk is compared with the rest of the reference, exactly as a monitored day is compared with the
whole reference, and the spread of those chunk values is the statistic's **band**:

* ``upper = mean + k * sd`` of the chunk values (``k = band_sigmas``, default 3; or their
  ``band_quantile`` when given), never below the statistic's floor (``floors``: changes smaller
  than that are not worth an alarm whatever the reference's variation), and ``lower = mean - k * sd``
  for two-sided statistics (the multivariate reconstruction error, estimated performance);
* **severity** ``(value - mean) / (upper - mean)``: 1 at the band's edge, ranks the features.

Statistics (each computed on the non-null values; null shares are compared as a statistic of their own):

* numeric: normalized Wasserstein (``wasserstein``: ``scipy.stats.wasserstein_distance(ref, cur)``
  divided by the reference's population std), the KS statistic (``ks``) and PSI over ``psi_bins``
  equal-frequency bins of the reference (``psi``); the KS p-value is reported as information.
* categorical: Jensen-Shannon distance in base 2 (``jensenshannon``) and PSI; the two-sample
  chi-squared p-value is reported as information.

P-values are not used for alarms: at n = 5,000 rows any test is significant, and the chunks of a
reference are overlapping snapshots of the same entities, not independent samples.

**Trend features** grow with time by construction (ages, lifetime counters, windows still filling
with history): declared in the spec (``monitoring.trend_features``), implied by their aggregation
(``days_since`` a date, lifetime counts, sums, distinct counts, minima and maxima), or detected (the
chunk means move monotonically with time, Spearman |rho| >= ``trend_rho`` and by at least
``trend_min_change`` reference standard deviations over the period). They are judged on the **shape**
of their distribution: each chunk (and the monitored day) is standardized by its own mean and std
before the statistics are computed, so a shift of the whole distribution is not an alarm, a change
in its shape is.

**Multivariate drift** (NannyML's data reconstruction error): the features are standardized with
the reference's means and stds (trend features left out: their shape still evolves; nulls at the mean) and
categorical features one-hot encoded and standardized, a PCA fitted on the reference keeps the
components explaining ``pca_variance`` of the variance, and the statistic is the mean Euclidean
distance between a row and its reconstruction. A change of the joint distribution (a correlation
that flips, with unchanged marginals) moves rows off the reference's principal subspace and raises
it; the band is the static mean ± k sd of the reference chunks' mean errors (a level extrapolated along a
reference-period trend alarmed on quiet days). Estimated performance has the same static, two-sided band.

**Drift share**: the share of tested features beyond their band. Each reference chunk is judged against
bands computed without it (leave one out); the mean of those chunk shares is a feature's rate of leaving its
band on a quiet day, and the day alarms when its count of drifted features is one a binomial at that rate
reaches with probability at most the band rule's tail (:func:`drift_share_band`; floor ``min_drift_share``,
default 0). The same count is judged at 2, 4 and 8 times the band's distance (``SEVERITY_LEVELS``, the tail
shared among the four levels). A reference in which no chunk had a feature beyond its band makes one clearly
drifted feature dataset drift; a reference whose chunks do show such features asks for more, or for one
feature further out than any reference chunk went. A fixed floor (e.g. 0.2, one
feature in five) would let one strongly drifted feature among many pass unnoticed.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

NUMERIC = "numeric"
CATEGORICAL = "categorical"
DISTRIBUTION = "distribution"  # values compared as they are
SHAPE = "shape"  # values standardized within each chunk first (trend features)
EXCLUDED = "excluded"  # shown, never alarms (the reason is in its note)

NUMERIC_STATISTICS = ("wasserstein", "ks", "psi")
CATEGORICAL_STATISTICS = ("jensenshannon", "psi")
NULL_SHARE = "null_share"
#: Severity levels at which drifted features are counted (drift_share_band): beyond the band (1), and at 2, 4 and
#: 8 times its distance from the center, each count against the reference chunks' rate of features at that level.
#: One feature far beyond its band among many is dataset drift when no reference chunk went that far.
SEVERITY_LEVELS = (1.0, 2.0, 4.0, 8.0)

CALIBRATION_FORMAT = "5"


# --------------------------------------------------------------------------- settings and bands


@dataclass(frozen=True)
class CalibrationSettings:
    """How bands are derived from the reference chunks and which statistic decides each feature's alarm."""

    band_sigmas: float = 3.0  # band = mean +- band_sigmas * sd of the chunk values
    band_quantile: float | None = None  # instead: this upper quantile of the chunk values (e.g. 0.99)
    numeric_method: str = "wasserstein"  # wasserstein, ks or psi
    categorical_method: str = "jensenshannon"  # jensenshannon or psi
    # the smallest change worth an alarm, whatever the band (a very stable reference gives narrow bands)
    floors: Mapping[str, float] = field(
        default_factory=lambda: {
            "wasserstein": 0.03,
            "ks": 0.03,
            "psi": 0.02,
            "jensenshannon": 0.02,
            NULL_SHARE: 0.02,
            "prediction": 0.03,
            "multivariate": 0.0,
            "estimate": 0.01,
        }
    )
    # floor of the drift-share band; 0: on a day when no reference chunk had a feature beyond its band, one such
    # feature is dataset drift (the per-feature bands already bound false alarms: see the module docstring)
    min_drift_share: float = 0.0
    psi_bins: int = 10
    psi_epsilon: float = 1e-4
    pca_variance: float = 0.65  # share of the reference's variance the PCA keeps (NannyML's default)
    detect_trends: bool = True
    trend_rho: float = 0.9  # |Spearman rho| of chunk means against time
    trend_min_change: float = 0.2  # change of the chunk mean over the period, in reference stds
    min_chunks: int = 10  # fewer usable (warm) reference chunks: the feature is not judged
    trend_bands: bool = True  # bands follow a significant trend of the chunk values (see Band)
    trend_t: float = 3.0  # |t statistic| of the slope from which a trend is significant

    def __post_init__(self) -> None:
        if self.numeric_method not in NUMERIC_STATISTICS:
            raise ValueError(
                f"numeric_method must be one of {NUMERIC_STATISTICS}, got {self.numeric_method!r}"
            )
        if self.categorical_method not in CATEGORICAL_STATISTICS:
            raise ValueError(
                f"categorical_method must be one of {CATEGORICAL_STATISTICS}, got {self.categorical_method!r}"
            )
        if self.band_quantile is not None and not 0.5 < self.band_quantile < 1.0:
            raise ValueError(f"band_quantile must be within (0.5, 1), got {self.band_quantile}")

    def floor(self, statistic: str) -> float:
        return float(self.floors.get(statistic, 0.0))

    def rule(self) -> str:
        """The band rule in words."""
        if self.band_quantile is not None:
            return f"upper {self.band_quantile:g} quantile of the reference chunks"
        return f"mean ± {self.band_sigmas:g} sd of the reference chunks"

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["floors"] = dict(sorted(self.floors.items()))
        return out


@dataclass(frozen=True)
class Band:
    """The calibrated range of one statistic: what the reference chunks showed and where an alarm starts.

    A **static** band is ``mean ± k sd`` of the chunk values. When the chunk values trend significantly
    with a covariate ``x`` (``trend``), the band follows the fitted line instead: ``center(x) =
    mean + slope * (x - x_mean)`` with the least-squares prediction interval ``± k * sd * sqrt(1 + 1/n
    + (x - x_mean)^2 / sxx)`` (``sd`` the residual sd), which widens away from the reference.
    Covariates: ``gap`` (a distance statistic against the reference: the mean distance in days from the
    day to the reference's days; a population that evolves steadily drifts away from its reference in
    proportion to it) and ``time`` (a level statistic: days since the reference's first day).
    """

    statistic: str
    mean: float  # static: mean of the chunk values; trend: the fitted value at x_mean
    std: float  # static: sd of the chunk values; trend: residual sd
    upper: float  # upper edge at the reference's last day (for display)
    lower: float | None  # two-sided statistics only (at the reference's last day)
    n_chunks: int
    rule: str  # e.g. "mean ± 3 sd of 60 reference chunks, floor 0.03"
    k: float = 3.0  # half-width in sds (quantile bands: the residual quantile in sds)
    floor: float = 0.0
    two_sided: bool = False
    trend: str = ""  # "", "gap" or "time"
    slope: float = 0.0
    x_mean: float = 0.0
    sxx: float = 0.0
    times: tuple[float, ...] = ()  # the reference chunks' days (offsets from the first reference day)
    last: float = 0.0  # offset of the reference's last day

    def x(self, t: float | None) -> float:
        if not self.trend:
            return self.x_mean
        t = self.last if t is None else float(t)
        if self.trend == "time":
            return t
        times = np.asarray(self.times)
        return float(np.mean(np.abs(t - times))) if times.size else 0.0

    def center(self, t: float | None = None) -> float:
        return self.mean + self.slope * (self.x(t) - self.x_mean) if self.trend else self.mean

    def edges(self, t: float | None = None) -> tuple[float | None, float]:
        """(lower, upper) at day offset ``t`` (default: the reference's last day)."""
        if not math.isfinite(self.mean):
            return None, math.inf
        center = self.center(t)
        half = self.k * self.std
        if self.trend and self.n_chunks > 2 and self.sxx > 0:
            half *= math.sqrt(1.0 + 1.0 / self.n_chunks + (self.x(t) - self.x_mean) ** 2 / self.sxx)
        upper, lower = center + half, (center - half if self.two_sided else None)
        if self.floor > 0:
            if self.two_sided:
                upper, lower = max(upper, center + self.floor), min(lower, center - self.floor)
            else:
                upper = max(upper, self.floor)
        return lower, upper

    def exceeded(self, value: float | None, t: float | None = None) -> bool:
        if value is None or not math.isfinite(value):
            return False
        lower, upper = self.edges(t)
        return value > upper or (lower is not None and value < lower)

    def severity(self, value: float | None, t: float | None = None) -> float:
        """``(value - center) / (upper - center)`` (below the center: against the lower edge); 1 at the edge."""
        if value is None or not math.isfinite(value) or not math.isfinite(self.mean):
            return 0.0
        lower, upper = self.edges(t)
        return toward_edge(value, lower, self.center(t), upper)

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self)}  # flat: asdict's deep copy is slow
        out["times"] = list(self.times)
        return out


def toward_edge(value: float, lower: float | None, center: float, upper: float) -> float:
    """How far ``value`` is from ``center`` toward the edge on its side (1 at the edge)."""
    if lower is not None and value < center:
        return (center - value) / max(center - lower, 1e-12)
    return (value - center) / max(upper - center, 1e-12)


def _fit_line(x: np.ndarray, y: np.ndarray) -> tuple[float, float, float, float, float]:
    """(mean of y at x_mean, slope, residual sd, x_mean, sxx), and the slope's t statistic last."""
    x_mean = float(x.mean())
    sxx = float(np.sum((x - x_mean) ** 2))
    if sxx <= 0 or x.size < 4:
        return float(y.mean()), 0.0, float(y.std(ddof=1)) if y.size > 1 else 0.0, x_mean, sxx, 0.0
    slope = float(np.sum((x - x_mean) * (y - y.mean())) / sxx)
    residuals = y - y.mean() - slope * (x - x_mean)
    sd = float(np.sqrt(np.sum(residuals**2) / (x.size - 2)))
    t_stat = slope / (sd / math.sqrt(sxx)) if sd > 0 else math.inf
    return float(y.mean()), slope, sd, x_mean, sxx, t_stat


def gap_covariate(times: np.ndarray) -> np.ndarray:
    """Per chunk, its mean distance in days to the other chunks (what a chunk-vs-rest distance grows with)."""
    times = np.asarray(times, dtype="float64")
    if times.size < 2:
        return np.zeros_like(times)
    return np.abs(times[:, None] - times[None, :]).sum(axis=1) / (times.size - 1)


def band_from(
    values: np.ndarray,
    settings: CalibrationSettings,
    statistic: str,
    *,
    times: np.ndarray | None = None,
    trend: str = "",
    two_sided: bool = False,
    floor: float | None = None,
) -> Band:
    """The band of a statistic from its values on the reference chunks at day offsets ``times`` (NaNs left out).

    With ``trend`` (``gap`` for distances, ``time`` for levels) the band follows a significant linear
    trend of the values (slope t statistic >= ``settings.trend_t``; distances only when they grow).
    """
    values = np.asarray(values, dtype="float64")
    times = np.arange(values.size, dtype="float64") if times is None else np.asarray(times, dtype="float64")
    ok = np.isfinite(values)
    values, times_ok = values[ok], times[ok]
    floor = settings.floor(statistic) if floor is None else floor
    last = float(times.max()) if times.size else 0.0
    if values.size == 0:
        return Band(statistic, math.nan, math.nan, math.inf, None, 0, "no reference chunk", floor=floor)
    k = settings.band_sigmas
    mean = float(values.mean())
    std = float(values.std(ddof=1)) if values.size > 1 else 0.0
    fitted = ""
    slope = x_mean = sxx = 0.0
    if trend and settings.trend_bands and values.size >= max(settings.min_chunks, 4):
        x = gap_covariate(times_ok) if trend == "gap" else times_ok
        center, s, sd, xm, sx, t_stat = _fit_line(x, values)
        if abs(t_stat) >= settings.trend_t and (trend != "gap" or s > 0):
            fitted, mean, slope, std, x_mean, sxx = trend, center, s, sd, xm, sx
    if settings.band_quantile is not None:
        residuals = (
            values - (mean + slope * ((gap_covariate(times_ok) if fitted == "gap" else times_ok) - x_mean))
            if fitted
            else values - mean
        )
        k = float(np.quantile(residuals, settings.band_quantile)) / std if std > 0 else 0.0
    band = Band(
        statistic,
        mean,
        std,
        math.inf,
        None,
        int(values.size),
        "",
        k=k,
        floor=floor,
        two_sided=two_sided,
        trend=fitted,
        slope=slope,
        x_mean=x_mean,
        sxx=sxx,
        times=tuple(float(t) for t in times_ok),
        last=last,
    )
    lower, upper = band.edges(None)
    if fitted == "gap":
        rule = (
            f"trend-aware: the chunk values grow with the mean distance to the other reference days "
            f"({slope:+.2g} per day); {settings.rule()} around the fitted line, widening away from it "
            f"({values.size} chunks)"
        )
    elif fitted == "time":
        rule = (
            f"trend-aware: the chunk values trend over the reference period ({slope:+.2g} per day); "
            f"{settings.rule()} around the fitted line, widening away from it ({values.size} chunks)"
        )
    else:
        rule = f"{settings.rule()} ({values.size} chunks)"
    if floor > 0:
        rule += f", at least ±{floor:g} around the center" if two_sided else f", floor {floor:g}"
    return replace(band, upper=float(upper), lower=None if lower is None else float(lower), rule=rule)


def drift_share_band(
    shares: np.ndarray, n_features: int, settings: CalibrationSettings, level: float = 1.0, tests: int = 1
) -> Band:
    """The drift share's band: a count of drifted features no quiet day reaches but at the band rule's tail.

    The share is a count of features over ``n_features``, mostly zero on the reference chunks, so mean + k sd
    of the chunk shares is no k-sigma bound (one feature on a day crosses it). Instead the reference chunks
    give each feature's rate of leaving its band, ``p`` (their mean share, each chunk judged leave one out);
    the day alarms when its count ``c`` has ``P(X >= c) <= alpha`` for ``X ~ Binomial(n_features, p)``, with
    ``alpha`` the band rule's one-sided tail (3 sd: 0.00135; ``band_quantile`` q: 1 - q). A reference with no
    feature beyond its band gives ``p = 0``: one feature beyond its own band is dataset drift. With ``level``
    (one of SEVERITY_LEVELS) the shares count the features at that severity or more, and so does the rule;
    ``tests`` levels judged together share ``alpha`` (Bonferroni: each gets alpha / tests).
    """
    from statistics import NormalDist

    from scipy import stats

    shares = np.asarray(shares, dtype="float64")
    shares = shares[np.isfinite(shares)]
    if shares.size == 0 or n_features == 0:
        return Band("drift_share", math.nan, math.nan, math.inf, None, 0, "no reference chunk")
    alpha = (
        1.0 - settings.band_quantile
        if settings.band_quantile is not None
        else 1.0 - NormalDist().cdf(settings.band_sigmas)
    ) / tests
    rate = float(shares.mean())
    # the smallest count c with P(X >= c) <= alpha is one more than binom.isf: the largest k with P(X > k) > alpha
    # (n + 1, never reached, when even every feature at once is that likely)
    count = int(stats.binom.isf(alpha, n_features, rate)) + 1
    upper = max((count - 1) / n_features, settings.min_drift_share if level == 1.0 else 0.0)
    where = "beyond their band" if level == 1.0 else f"at {level:g}x their band's distance or more"
    rule = (
        f"at least {count} of {n_features} features {where}: P <= {alpha:.3g} for a binomial count "
        f"at the reference chunks' rate {rate:.3g} per feature ({shares.size} chunks)"
    )
    if settings.min_drift_share > 0 and level == 1.0:
        rule += f", floor {settings.min_drift_share:g}"
    std = float(shares.std(ddof=1)) if shares.size > 1 else 0.0
    # center: the quiet rate (at most the edge, which k = 0 and the floor then place exactly at ``upper``)
    name = "drift_share" if level == 1.0 else f"severe_share_{level:g}"
    return Band(name, min(rate, upper), std, upper, None, int(shares.size), rule, k=0.0, floor=upper)


def loo_severities(
    values: np.ndarray,
    settings: CalibrationSettings,
    statistic: str,
    times: np.ndarray,
    trend: str,
    floor: float,
) -> np.ndarray:
    """Per chunk, its severity against the band fitted on the other chunks (leave one out; 0 when not judged):
    above 1 exactly when the chunk is beyond that band."""
    values = np.asarray(values, dtype="float64")
    out = np.zeros(values.size, dtype="float64")
    ok = np.flatnonzero(np.isfinite(values))
    if ok.size < 4:
        return out
    for i in ok:
        others = np.setdiff1d(ok, [i])
        band = band_from(values[others], settings, statistic, times=times[others], trend=trend, floor=floor)
        severity = band.severity(values[i], times[i])
        out[i] = max(severity, 1.0 + 1e-9) if band.exceeded(values[i], times[i]) else min(severity, 1.0)
    return out


# --------------------------------------------------------------------------- numeric distances on a grid


def weighted_quantiles(grid: np.ndarray, cumulative: np.ndarray, q: np.ndarray) -> np.ndarray:
    """``np.quantile(values, q)`` (linear method) of the sample holding ``grid[i]`` with cumulative counts.

    ``cumulative[i]`` is the number of values <= ``grid[i]``. The arithmetic is numpy's own, so the
    result is bit-identical to ``np.quantile`` on the expanded sample.
    """
    n = int(cumulative[-1])
    q = np.asarray(q, dtype="float64")
    virtual = n * q + (1 + q * (1 - 1 - 1)) - 1
    previous = np.floor(virtual)
    nxt = previous + 1
    above = virtual >= n - 1
    previous[above] = n - 1
    nxt[above] = n - 1
    below = virtual < 0
    previous[below] = 0
    nxt[below] = 0
    gamma = virtual - np.floor(virtual)
    a = grid[np.searchsorted(cumulative, previous.astype(np.int64) + 1, side="left")]
    b = grid[np.searchsorted(cumulative, nxt.astype(np.int64) + 1, side="left")]
    diff = b - a
    out = a + diff * gamma
    return np.where(gamma >= 0.5, b - diff * (1 - gamma), out)


def _psi_from_counts(ref_counts: np.ndarray, cur_counts: np.ndarray, epsilon: float) -> float:
    r = ref_counts / ref_counts.sum()
    c = cur_counts / cur_counts.sum()
    r = np.where(r == 0, epsilon, r)
    c = np.where(c == 0, epsilon, c)
    return float(np.sum((c - r) * np.log(c / r)))


def grid_distances(
    grid: np.ndarray,
    ref_counts: np.ndarray,
    cur_counts: np.ndarray,
    psi_bins: int = 10,
    psi_epsilon: float = 1e-4,
) -> dict[str, float]:
    """Normalized Wasserstein, KS statistic and PSI of two samples given as counts on one ascending grid.

    Equal (within rounding) to :func:`mlops_assets.monitoring.drift.numeric_statistics` on the expanded
    samples: Wasserstein = ``scipy.stats.wasserstein_distance / std(ref)`` (pooled std when the
    reference is constant), PSI over the reference's ``psi_bins`` quantile bins ``[lo, hi)``.
    """
    n_ref, n_cur = ref_counts.sum(), cur_counts.sum()
    cum_ref, cum_cur = np.cumsum(ref_counts), np.cumsum(cur_counts)
    gap = cum_ref / n_ref - cum_cur / n_cur
    distance = float(np.sum(np.abs(gap[:-1]) * np.diff(grid))) if grid.size > 1 else 0.0
    mean = float(np.sum(ref_counts * grid) / n_ref)
    scale = math.sqrt(max(float(np.sum(ref_counts * (grid - mean) ** 2) / n_ref), 0.0))
    if scale == 0.0:
        pooled = ref_counts + cur_counts
        pooled_mean = float(np.sum(pooled * grid) / pooled.sum())
        scale = math.sqrt(max(float(np.sum(pooled * (grid - pooled_mean) ** 2) / pooled.sum()), 0.0))
    edges = np.unique(weighted_quantiles(grid, cum_ref, np.linspace(0.0, 1.0, psi_bins + 1))[1:-1])
    below = np.searchsorted(grid, edges, side="left")  # grid points < edge
    cum_ref0, cum_cur0 = np.concatenate([[0.0], cum_ref]), np.concatenate([[0.0], cum_cur])
    ref_bins = np.diff(np.concatenate([[0.0], cum_ref0[below], [n_ref]]))
    cur_bins = np.diff(np.concatenate([[0.0], cum_cur0[below], [n_cur]]))
    return {
        "wasserstein": distance / scale if scale > 0.0 else 0.0,
        "ks": float(np.abs(gap).max()),
        "psi": _psi_from_counts(ref_bins, cur_bins, psi_epsilon),
    }


def categorical_distances(
    ref_counts: np.ndarray, cur_counts: np.ndarray, psi_epsilon: float = 1e-4
) -> dict[str, float]:
    """Jensen-Shannon distance (base 2) and PSI of aligned category counts (categories seen in either)."""
    from scipy.special import rel_entr

    keep = (ref_counts + cur_counts) > 0
    r, c = ref_counts[keep], cur_counts[keep]
    p, q = r / r.sum(), c / c.sum()
    mid = (p + q) / 2.0
    js = math.sqrt(max((np.sum(rel_entr(p, mid)) + np.sum(rel_entr(q, mid))) / np.log(2.0) / 2.0, 0.0))
    return {"jensenshannon": float(js), "psi": _psi_from_counts(r, c, psi_epsilon)}


def _chunk_order(chunks: np.ndarray, n_chunks: int) -> tuple[np.ndarray, np.ndarray]:
    order = np.argsort(chunks, kind="stable")
    bounds = np.searchsorted(chunks[order], np.arange(n_chunks + 1), side="left")
    return order, bounds


def numeric_chunk_statistics(
    values: np.ndarray, chunks: np.ndarray, n_chunks: int, psi_bins: int = 10, psi_epsilon: float = 1e-4
) -> dict[str, np.ndarray]:
    """Each chunk's Wasserstein, KS and PSI against the rest of the sample (NaN for an empty chunk or rest).

    ``values`` are finite; ``chunks[i]`` in ``0 .. n_chunks - 1`` is the chunk of ``values[i]``.
    """
    out = {s: np.full(n_chunks, np.nan) for s in NUMERIC_STATISTICS}
    if values.size == 0:
        return out
    grid, inverse = np.unique(values, return_inverse=True)
    total = np.bincount(inverse, minlength=grid.size).astype("float64")
    order, bounds = _chunk_order(chunks, n_chunks)
    for c in range(n_chunks):
        idx = inverse[order[bounds[c] : bounds[c + 1]]]
        if idx.size == 0 or idx.size == values.size:
            continue
        mine = np.bincount(idx, minlength=grid.size).astype("float64")
        for name, value in grid_distances(grid, total - mine, mine, psi_bins, psi_epsilon).items():
            out[name][c] = value
    return out


def categorical_chunk_statistics(
    codes: np.ndarray, chunks: np.ndarray, n_chunks: int, n_categories: int, psi_epsilon: float = 1e-4
) -> dict[str, np.ndarray]:
    """Each chunk's Jensen-Shannon distance and PSI against the rest (codes >= 0; nulls left out)."""
    out = {s: np.full(n_chunks, np.nan) for s in CATEGORICAL_STATISTICS}
    if codes.size == 0:
        return out
    table = np.zeros((n_chunks, max(n_categories, 1)))
    np.add.at(table, (chunks, codes), 1.0)
    total = table.sum(axis=0)
    for c in range(n_chunks):
        mine = table[c]
        rest = total - mine
        if mine.sum() == 0 or rest.sum() == 0:
            continue
        for name, value in categorical_distances(rest, mine, psi_epsilon).items():
            out[name][c] = value
    return out


def null_share_chunk_statistics(null: np.ndarray, chunks: np.ndarray, n_chunks: int) -> np.ndarray:
    """Each chunk's |null share - null share of the rest|."""
    rows = np.bincount(chunks, minlength=n_chunks).astype("float64")
    nulls = np.bincount(chunks, weights=null.astype("float64"), minlength=n_chunks)
    rest_rows, rest_nulls = rows.sum() - rows, nulls.sum() - nulls
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.abs(nulls / rows - rest_nulls / rest_rows)
    out[(rows == 0) | (rest_rows == 0)] = np.nan
    return out


def standardize_within(values: np.ndarray, chunks: np.ndarray, n_chunks: int) -> np.ndarray:
    """Values standardized by their own chunk's mean and population std (0 where a chunk is constant)."""
    counts = np.bincount(chunks, minlength=n_chunks).astype("float64")
    sums = np.bincount(chunks, weights=values, minlength=n_chunks)
    with np.errstate(invalid="ignore", divide="ignore"):
        means = sums / counts
        centred = values - means[chunks]
        sds = np.sqrt(np.bincount(chunks, weights=centred**2, minlength=n_chunks) / counts)
        z = centred / sds[chunks]
    z[~np.isfinite(z)] = 0.0
    return z


def standardize(values: np.ndarray) -> np.ndarray:
    """One sample standardized by its own mean and population std (0 when constant)."""
    if values.size == 0:
        return values
    sd = float(values.std())
    return (values - values.mean()) / sd if sd > 0 else np.zeros_like(values)


# --------------------------------------------------------------------------- reference and baselines


def day_offsets(days: Sequence[str], origin: str) -> np.ndarray:
    """Days as offsets (in days) from ``origin``."""
    from datetime import date

    zero = date.fromisoformat(origin)
    return np.array([(date.fromisoformat(d) - zero).days for d in days], dtype="float64")


@dataclass
class ReferenceData:
    """The reference period: each chunk's rows (features), their chunk index, and the champion's scores."""

    days: list[str]  # chunk labels, oldest first
    frame: pd.DataFrame  # feature columns
    chunks: np.ndarray  # chunk index of each row
    numeric: list[str]
    categorical: list[str]
    scores: np.ndarray | None = None
    warm_from: dict[str, str] = field(default_factory=dict)  # feature -> first day with its full window
    trend_reasons: dict[str, str] = field(default_factory=dict)  # declared / by construction, with why

    @property
    def n_chunks(self) -> int:
        return len(self.days)

    @property
    def times(self) -> np.ndarray:
        """Each chunk's day as an offset in days from the first reference day."""
        return day_offsets(self.days, self.days[0]) if self.days else np.empty(0)


@dataclass
class FeatureBaseline:
    """One feature's reference, preprocessed for fast daily comparisons, and its calibrated bands."""

    feature: str
    kind: str
    mode: str  # distribution, shape, or excluded
    note: str
    method: str  # the statistic that decides the alarm
    chunks_used: int
    reference_rows: int
    null_share: float
    bands: dict[str, Band]
    chunk_values: dict[str, np.ndarray]  # statistic -> value of each reference chunk against the rest
    grid: np.ndarray | None = None  # numeric: ascending distinct values (standardized in shape mode)
    counts: np.ndarray | None = None  # numeric: their counts; categorical: counts per category
    categories: list | None = None
    mean: float = 0.0  # numeric, distribution mode: reference mean and std (for the multivariate model)
    std: float = 1.0
    loo_severity: np.ndarray | None = None  # per chunk: severity against the band computed without that chunk

    @property
    def loo_alarms(self) -> np.ndarray:
        """Per chunk: beyond the band computed without it."""
        return np.asarray(self.loo_severity) > 1.0

    @property
    def tested(self) -> bool:
        return self.mode != EXCLUDED


def fit_feature(
    name: str, kind: str, reference: ReferenceData, settings: CalibrationSettings
) -> FeatureBaseline:
    """Calibrate one feature: choose its mode (trend features on their shape), compute chunk statistics and bands."""
    column = reference.frame[name]
    chunks = reference.chunks
    n_chunks = reference.n_chunks
    warm = reference.warm_from.get(name)
    usable = np.ones(n_chunks, dtype=bool)
    notes = []
    mode = DISTRIBUTION
    if warm is not None:
        usable = np.array([d >= warm for d in reference.days])
        if usable.sum() < settings.min_chunks:
            usable[:] = True
            mode = EXCLUDED
            notes.append(
                f"not judged: its window reaches back before the first partition on most reference days (full "
                f"only from {warm}, {int(sum(d >= warm for d in reference.days))} of {n_chunks} reference days), "
                "so its reference values are biased low"
            )
        elif not usable.all():
            notes.append(f"reference days before {warm} left out (its window was not yet full)")
    if name in reference.trend_reasons and mode != EXCLUDED:
        mode = SHAPE
        notes.append(reference.trend_reasons[name] + ": judged on the shape of its distribution")

    rows = usable[chunks]
    sub_chunks_full = chunks[rows]
    # renumber the usable chunks 0..k-1
    remap = np.cumsum(usable) - 1
    sub_chunks = remap[sub_chunks_full]
    k = int(usable.sum())
    values = column[rows]

    if kind == CATEGORICAL:
        series = values.astype(object)
        null = series.isna().to_numpy()
        codes, uniques = pd.factorize(series, use_na_sentinel=True)
        stats_ = categorical_chunk_statistics(
            codes[~null], sub_chunks[~null], k, len(uniques), settings.psi_epsilon
        )
        counts = np.bincount(codes[~null], minlength=len(uniques)).astype("float64")
        baseline = FeatureBaseline(
            feature=name,
            kind=kind,
            mode=EXCLUDED if mode == EXCLUDED else DISTRIBUTION,
            note="; ".join(notes),
            method=settings.categorical_method,
            chunks_used=k,
            reference_rows=int(len(series)),
            null_share=float(null.mean()) if null.size else 0.0,
            bands={},
            chunk_values=stats_,
            counts=counts,
            categories=list(uniques),
        )
    else:
        numbers = pd.to_numeric(values).to_numpy(dtype="float64", na_value=np.nan)
        finite = np.isfinite(numbers)
        null = ~finite
        vals, vchunks = numbers[finite], sub_chunks[finite]
        if mode == DISTRIBUTION and settings.detect_trends and vals.size and k >= settings.min_chunks:
            trend = detect_trend(vals, vchunks, k, settings)
            if trend:
                mode = SHAPE
                notes.append(trend + ": judged on the shape of its distribution")
        mean = float(vals.mean()) if vals.size else 0.0
        std = float(vals.std()) if vals.size else 0.0
        if mode == SHAPE:
            vals = standardize_within(vals, vchunks, k)
        stats_ = numeric_chunk_statistics(vals, vchunks, k, settings.psi_bins, settings.psi_epsilon)
        grid, counts = np.unique(vals, return_counts=True)
        baseline = FeatureBaseline(
            feature=name,
            kind=kind,
            mode=mode,
            note="; ".join(notes),
            method=settings.numeric_method,
            chunks_used=k,
            reference_rows=int(numbers.size),
            null_share=float(null.mean()) if null.size else 0.0,
            bands={},
            chunk_values=stats_,
            grid=grid,
            counts=counts.astype("float64"),
            mean=mean,
            std=std if std > 0 else 1.0,
        )
        if vals.size == 0:
            baseline.mode, baseline.note = EXCLUDED, "not judged: no non-null value in the reference"
    baseline.chunk_values[NULL_SHARE] = null_share_chunk_statistics(null, sub_chunks, k)
    times = reference.times[usable]
    for stat, chunk_values in baseline.chunk_values.items():
        baseline.bands[stat] = band_from(chunk_values, settings, stat, times=times, trend="gap")
    loo = np.maximum(
        loo_severities(
            baseline.chunk_values[baseline.method],
            settings,
            baseline.method,
            times,
            "gap",
            settings.floor(baseline.method),
        ),
        loo_severities(
            baseline.chunk_values[NULL_SHARE], settings, NULL_SHARE, times, "gap", settings.floor(NULL_SHARE)
        ),
    )
    baseline.loo_severity = np.zeros(n_chunks, dtype="float64")
    baseline.loo_severity[usable] = loo
    if k < 3 and baseline.mode != EXCLUDED:
        baseline.mode = EXCLUDED
        baseline.note = f"only {k} usable reference chunk(s): no band can be calibrated"
    return baseline


def detect_trend(values: np.ndarray, chunks: np.ndarray, n_chunks: int, settings: CalibrationSettings) -> str:
    """Why the chunk means trend with time ('' when they do not)."""
    from scipy import stats

    counts = np.bincount(chunks, minlength=n_chunks)
    ok = counts > 0
    if ok.sum() < settings.min_chunks:
        return ""
    means = np.bincount(chunks, weights=values, minlength=n_chunks)[ok] / counts[ok]
    sd = float(values.std())
    if sd == 0 or np.ptp(means) == 0:
        return ""
    rho = float(stats.spearmanr(np.flatnonzero(ok), means).statistic)
    head, tail = means[: max(1, means.size // 5)].mean(), means[-max(1, means.size // 5) :].mean()
    change = abs(tail - head) / sd
    if abs(rho) >= settings.trend_rho and change >= settings.trend_min_change:
        return (
            f"trend detected: its daily mean moves with time over the reference period (Spearman rho {rho:+.2f}, "
            f"{change:.2f} sd from the first to the last fifth)"
        )
    return ""


# --------------------------------------------------------------------------- multivariate


@dataclass
class MultivariateBaseline:
    """PCA reconstruction error (NannyML's data reconstruction drift) fitted on the reference."""

    columns: list[str]  # the encoded columns, e.g. "x" or "<column>=<category>"
    numeric: list[str]
    shape_numeric: list[str]  # numeric features standardized within their chunk (trend features)
    categorical: dict[str, list]  # feature -> categories one-hot encoded
    center: np.ndarray
    scale: np.ndarray
    components: np.ndarray  # k x columns
    chunk_errors: np.ndarray
    band: Band
    explained: float

    def encode(
        self, frame: pd.DataFrame, standardized_shape: Mapping[str, np.ndarray] | None = None
    ) -> np.ndarray:
        """The rows as the PCA sees them (standardized, nulls at the reference mean, categories one-hot)."""
        parts = []
        for name in self.numeric:
            if standardized_shape is not None and name in standardized_shape:
                values = standardized_shape[name]
            else:
                values = pd.to_numeric(frame[name]).to_numpy(dtype="float64", na_value=np.nan)
            parts.append(values[:, None])
        for name, categories in self.categorical.items():
            series = frame[name].astype(object)
            parts.append(np.stack([(series == c).to_numpy(dtype="float64") for c in categories], axis=1))
        matrix = np.concatenate(parts, axis=1) if parts else np.zeros((len(frame), 0))
        matrix = (matrix - self.center) / self.scale
        matrix[~np.isfinite(matrix)] = 0.0
        return matrix

    def errors(self, encoded: np.ndarray) -> np.ndarray:
        """Each row's Euclidean distance to its reconstruction from the kept components."""
        projected = encoded @ self.components.T @ self.components
        return np.sqrt(np.sum((encoded - projected) ** 2, axis=1))


def _shape_columns(
    frame: pd.DataFrame, names: Sequence[str], chunks: np.ndarray | None, n_chunks: int
) -> dict:
    out = {}
    for name in names:
        values = pd.to_numeric(frame[name]).to_numpy(dtype="float64", na_value=np.nan)
        finite = np.isfinite(values)
        z = np.full(values.size, np.nan)
        if chunks is None:
            z[finite] = standardize(values[finite])
        else:
            z[finite] = standardize_within(values[finite], chunks[finite], n_chunks)
        out[name] = z
    return out


def fit_multivariate(
    reference: ReferenceData, baselines: Mapping[str, FeatureBaseline], settings: CalibrationSettings
) -> MultivariateBaseline | None:
    """The PCA reconstruction-error model and its band over the reference chunks (None without inputs)."""
    # trend features stay out: their shape still evolves with the history behind them (a lifetime count's
    # skew grows), which would make the reconstruction error trend on quiet days
    numeric = [n for n, b in baselines.items() if b.kind == NUMERIC and b.tested and b.mode != SHAPE]
    shape: list[str] = []
    categorical = {}
    for n, b in baselines.items():
        if b.kind == CATEGORICAL and b.tested and b.categories:
            kept = [c for c, k in zip(b.categories, b.counts, strict=True) if k > 0][:30]
            if len(kept) > 1:
                categorical[n] = kept
    if len(numeric) + sum(len(c) for c in categorical.values()) < 2:
        return None
    columns = numeric + [f"{n}={c}" for n, cats in categorical.items() for c in cats]
    shaped = _shape_columns(reference.frame, shape, reference.chunks, reference.n_chunks)
    model = MultivariateBaseline(
        columns=columns,
        numeric=numeric,
        shape_numeric=shape,
        categorical=categorical,
        center=np.zeros(len(columns)),
        scale=np.ones(len(columns)),
        components=np.zeros((0, len(columns))),
        chunk_errors=np.empty(0),
        band=Band("multivariate", math.nan, math.nan, math.inf, None, 0, "not fitted"),
        explained=0.0,
    )
    # only the chunks on which every input's window is full (the warm-up days bias the joint distribution)
    warm = max((reference.warm_from[n] for n in numeric if n in reference.warm_from), default="")
    usable = np.array([d >= warm for d in reference.days], dtype=bool)
    rows = usable[reference.chunks]
    raw = model.encode(reference.frame, shaped)  # identity scaling: raw encoded values
    fit = raw[rows]
    with np.errstate(invalid="ignore"):
        center = np.nanmean(np.where(np.isfinite(fit), fit, np.nan), axis=0)
    center = np.nan_to_num(center)
    centred = np.where(np.isfinite(raw), raw - center, 0.0)
    scale = centred[rows].std(axis=0)
    scale[scale == 0] = 1.0
    model.center, model.scale = center, scale
    encoded = centred / scale
    _, singular, vt = np.linalg.svd(encoded[rows] - encoded[rows].mean(axis=0), full_matrices=False)
    variance = singular**2
    share = np.cumsum(variance) / variance.sum() if variance.sum() > 0 else np.ones_like(variance)
    keep = int(np.searchsorted(share, settings.pca_variance) + 1)
    model.components = vt[:keep]
    model.explained = float(share[keep - 1])
    errors = model.errors(encoded)
    counts = np.bincount(reference.chunks, minlength=reference.n_chunks)
    sums = np.bincount(reference.chunks, weights=errors, minlength=reference.n_chunks)
    with np.errstate(invalid="ignore", divide="ignore"):
        model.chunk_errors = np.where(usable, sums / counts, np.nan)
    # a static band (NannyML's): a level extrapolated along a reference-period trend alarms on quiet days
    model.band = band_from(
        model.chunk_errors, settings, "multivariate", times=reference.times, two_sided=True
    )
    return model


# --------------------------------------------------------------------------- calibration


@dataclass
class Calibration:
    """Everything a day is compared with: per-feature baselines, multivariate model, prediction and estimate bands."""

    key: str
    days: list[str]
    settings: CalibrationSettings
    features: dict[str, FeatureBaseline]
    multivariate: MultivariateBaseline | None
    drift_share: Band
    chunk_drift_shares: np.ndarray
    prediction: FeatureBaseline | None = None
    severe_bands: dict[str, Band] = field(default_factory=dict)  # level -> the same rule at that severity
    estimate_bands: dict[str, Band] = field(default_factory=dict)
    chunk_estimates: dict[str, np.ndarray] = field(default_factory=dict)
    reference_rows: int = 0

    @property
    def tested(self) -> list[str]:
        return [n for n, b in self.features.items() if b.tested]

    def summary(self) -> dict[str, Any]:
        """JSON-ready description of the reference and its bands."""
        return {
            "key": self.key,
            "reference_days": [self.days[0], self.days[-1]] if self.days else [],
            "chunks": len(self.days),
            "reference_rows": self.reference_rows,
            "rule": self.settings.rule(),
            "features": {
                n: {
                    "mode": b.mode,
                    "method": b.method,
                    "note": b.note,
                    "chunks": b.chunks_used,
                    "band": b.bands.get(b.method).to_dict() if b.bands.get(b.method) else None,
                }
                for n, b in self.features.items()
            },
            "drift_share_band": self.drift_share.to_dict(),
            "severe_bands": {level: b.to_dict() for level, b in self.severe_bands.items()},
            "multivariate_band": self.multivariate.band.to_dict() if self.multivariate else None,
            "prediction_band": (
                self.prediction.bands[self.prediction.method].to_dict() if self.prediction else None
            ),
            "estimate_bands": {m: b.to_dict() for m, b in self.estimate_bands.items()},
        }


def calibrate(
    reference: ReferenceData,
    settings: CalibrationSettings | None = None,
    *,
    key: str = "",
    estimate_metrics: Mapping[str, Any] | None = None,
) -> Calibration:
    """Fit every baseline and band on the reference chunks.

    ``estimate_metrics`` maps a metric name to a function of one chunk's scores (e.g. the CBPE
    estimate of accuracy); its values over the chunks give the two-sided band of that estimate.
    """
    settings = settings or CalibrationSettings()
    features: dict[str, FeatureBaseline] = {}
    for name in reference.numeric:
        features[name] = fit_feature(name, NUMERIC, reference, settings)
    for name in reference.categorical:
        features[name] = fit_feature(name, CATEGORICAL, reference, settings)
    tested = [b for b in features.values() if b.tested]
    severity = np.stack([b.loo_severity for b in tested]) if tested else np.zeros((1, reference.n_chunks))
    shares = np.mean(severity > 1.0, axis=0)
    tests = len(SEVERITY_LEVELS)
    share_band = drift_share_band(shares, len(tested), settings, tests=tests)
    severe_bands = {
        f"{lv:g}": drift_share_band(
            np.mean(severity >= lv, axis=0), len(tested), settings, level=lv, tests=tests
        )
        for lv in SEVERITY_LEVELS[1:]
    }
    multivariate = fit_multivariate(reference, features, settings)
    prediction = None
    estimate_bands: dict[str, Band] = {}
    chunk_estimates: dict[str, np.ndarray] = {}
    if reference.scores is not None and reference.scores.size == len(reference.frame):
        scores_ref = ReferenceData(
            days=reference.days,
            frame=pd.DataFrame({"prediction": reference.scores}),
            chunks=reference.chunks,
            numeric=["prediction"],
            categorical=[],
        )
        pred_settings = CalibrationSettings(
            **{
                **settings.to_dict(),
                "detect_trends": False,
                "floors": {
                    **settings.floors,
                    "wasserstein": settings.floor("prediction"),
                    "ks": settings.floor("prediction"),
                },
            }
        )
        prediction = fit_feature("prediction", NUMERIC, scores_ref, pred_settings)
        order, bounds = _chunk_order(reference.chunks, reference.n_chunks)
        for metric, fn in (estimate_metrics or {}).items():
            values = np.array(
                [
                    fn(reference.scores[order[bounds[c] : bounds[c + 1]]])
                    if bounds[c + 1] > bounds[c]
                    else np.nan
                    for c in range(reference.n_chunks)
                ]
            )
            chunk_estimates[metric] = values
            estimate_bands[metric] = band_from(
                values,
                settings,
                f"estimated_{metric}",
                times=reference.times,
                two_sided=True,
                floor=settings.floor("estimate"),
            )
    return Calibration(
        key=key,
        days=list(reference.days),
        settings=settings,
        features=features,
        multivariate=multivariate,
        drift_share=share_band,
        chunk_drift_shares=shares,
        severe_bands=severe_bands,
        prediction=prediction,
        estimate_bands=estimate_bands,
        chunk_estimates=chunk_estimates,
        reference_rows=len(reference.frame),
    )


# --------------------------------------------------------------------------- comparing a day


@dataclass(frozen=True)
class CalibratedFeature:
    """One feature (or the scores) on one day, against its calibrated band."""

    feature: str
    kind: str
    mode: str
    test: str  # the statistic deciding the alarm
    statistic: float | None
    band_mean: float | None
    threshold: float | None  # the band's upper edge
    severity: float
    drifted: bool
    reason: str  # why it alarmed ("" when it did not)
    p_value: float | None  # KS / chi-squared, information only
    reference_count: int
    current_count: int
    reference_null_share: float
    current_null_share: float
    statistics: dict[str, float]  # every statistic computed
    bands: dict[str, dict]  # statistic -> band
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        return json.loads(json.dumps(out, default=_json_default, allow_nan=True).replace("NaN", "null"))


def _json_default(value):
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(type(value).__name__)


def _merge_counts(
    grid: np.ndarray, counts: np.ndarray, current: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Reference counts and current counts on the union of the reference grid and the current values.

    ``grid`` is sorted and distinct: the current values not on it are inserted in place (linear in the
    grid's size, no sort of the reference).
    """
    cur_grid, cur_counts = np.unique(current, return_counts=True)
    pos = np.searchsorted(grid, cur_grid)
    on_grid = (pos < grid.size) & (grid[np.minimum(pos, max(grid.size - 1, 0))] == cur_grid)
    new = ~on_grid
    union = np.insert(grid, pos[new], cur_grid[new])
    ref = np.insert(np.asarray(counts, dtype="float64"), pos[new], 0.0)
    cur = np.zeros(union.size)
    cur[np.searchsorted(union, cur_grid)] = cur_counts
    return union, ref, cur


def compare_feature(
    baseline: FeatureBaseline, series: pd.Series, settings: CalibrationSettings, t: float | None = None
) -> CalibratedFeature:
    """One day's values of a feature against its baseline; ``t`` is the day's offset from the first reference day."""
    from scipy import stats

    n = len(series)
    bands = baseline.bands
    stats_: dict[str, float] = {}
    p_value = None
    if baseline.kind == CATEGORICAL:
        values = series.astype(object)
        null = values.isna().to_numpy()
        known = {c: i for i, c in enumerate(baseline.categories or [])}
        present = values[~null]
        codes = present.map(known)
        new = present[codes.isna()]
        extra = list(pd.unique(new)) if len(new) else []
        k = len(known) + len(extra)
        ref_counts = (
            np.concatenate([baseline.counts, np.zeros(len(extra))])
            if baseline.counts is not None
            else np.zeros(k)
        )
        all_codes = codes.copy()
        for j, cat in enumerate(extra):
            all_codes[present == cat] = len(known) + j
        cur_counts = (
            np.bincount(all_codes.to_numpy(dtype="int64"), minlength=k).astype("float64")
            if len(present)
            else np.zeros(k)
        )
        current_count = int(cur_counts.sum())
        if current_count and ref_counts.sum():
            stats_.update(categorical_distances(ref_counts, cur_counts, settings.psi_epsilon))
            keep = (ref_counts + cur_counts) > 0
            if keep.sum() > 1:
                table = np.vstack([ref_counts[keep], cur_counts[keep]])
                expected = np.outer(table.sum(axis=1), table.sum(axis=0)) / table.sum()
                chi2 = float(np.sum((table - expected) ** 2 / expected))
                p_value = float(stats.chi2.sf(chi2, keep.sum() - 1))
                stats_["chi2"] = chi2
            else:
                p_value = 1.0
    else:
        numbers = pd.to_numeric(series).to_numpy(dtype="float64", na_value=np.nan)
        finite = np.isfinite(numbers)
        null = ~finite
        values = numbers[finite]
        if baseline.mode == SHAPE:
            values = standardize(values)
        current_count = int(values.size)
        if current_count and baseline.grid is not None and baseline.grid.size:
            grid, ref_counts, cur_counts = _merge_counts(baseline.grid, baseline.counts, values)
            stats_.update(
                grid_distances(grid, ref_counts, cur_counts, settings.psi_bins, settings.psi_epsilon)
            )
            from mlops_assets.monitoring.drift import _ks_asymptotic_p_value

            p_value = _ks_asymptotic_p_value(stats_["ks"], int(ref_counts.sum()), current_count)
    null_share = float(null.mean()) if n else 0.0
    stats_[NULL_SHARE] = abs(null_share - baseline.null_share)
    reasons = []
    main = stats_.get(baseline.method)
    if baseline.tested:
        if main is None and current_count == 0 and baseline.reference_rows:
            reasons.append("no non-null value today")
        elif bands[baseline.method].exceeded(main, t):
            reasons.append(
                f"{baseline.method} {main:.4f} above its band {bands[baseline.method].edges(t)[1]:.4f}"
            )
        if bands[NULL_SHARE].exceeded(stats_[NULL_SHARE], t):
            reasons.append(
                f"null share {null_share:.3f} vs {baseline.null_share:.3f} in the reference "
                f"(change {stats_[NULL_SHARE]:.3f} above its band {bands[NULL_SHARE].edges(t)[1]:.3f})"
            )
    band = bands.get(baseline.method)
    severity = max(
        band.severity(main, t) if band is not None and main is not None else 0.0,
        bands[NULL_SHARE].severity(stats_[NULL_SHARE], t) if NULL_SHARE in bands else 0.0,
    )
    if reasons and main is None:
        severity = max(severity, 10.0)
    return CalibratedFeature(
        feature=baseline.feature,
        kind=baseline.kind,
        mode=baseline.mode,
        test=baseline.method,
        statistic=main,
        band_mean=None if band is None else band.center(t),
        threshold=None if band is None else band.edges(t)[1],
        severity=float(severity) if baseline.tested else 0.0,
        drifted=bool(reasons) and baseline.tested,
        reason="; ".join(reasons),
        p_value=p_value,
        reference_count=int(baseline.counts.sum()) if baseline.counts is not None else 0,
        current_count=current_count,
        reference_null_share=baseline.null_share,
        current_null_share=null_share,
        statistics=stats_,
        bands={s: b.to_dict() for s, b in bands.items()},
        note=baseline.note,
    )


@dataclass
class DayComparison:
    """One day against the calibration: per-feature rows (worst first), drift share, multivariate, scores."""

    features: list[CalibratedFeature]  # ranked by severity, worst first
    drift_share: float
    drift_share_band: Band
    drift_alarm: bool
    multivariate_error: float | None
    multivariate_band: Band | None
    multivariate_alarm: bool
    prediction: CalibratedFeature | None
    current_rows: int
    reference_rows: int
    t: float | None = None  # the day's offset from the first reference day
    multivariate_edges: tuple[float | None, float] | None = None  # the band at this day
    severe_level: float = 0.0  # the severity level judged below: the one furthest toward its band's edge
    severe_share: float = 0.0  # share of the judged features at severe_level or more
    severe_share_band: Band | None = None
    severe_alarm: bool = False  # severe_share beyond its band (part of drift_alarm)

    @property
    def drift_share_upper(self) -> float:
        return self.drift_share_band.edges(self.t)[1]

    @property
    def tested(self) -> list[CalibratedFeature]:
        return [f for f in self.features if f.mode != EXCLUDED]

    @property
    def drifted_features(self) -> list[str]:
        return [f.feature for f in self.features if f.drifted]

    @property
    def dataset_drift(self) -> bool:
        return self.drift_alarm or self.multivariate_alarm

    def feature(self, name: str) -> CalibratedFeature:
        for row in self.features:
            if row.feature == name:
                return row
        raise KeyError(name)


def compare_day(
    calibration: Calibration, frame: pd.DataFrame, scores: np.ndarray | None = None, day: str | None = None
) -> DayComparison:
    """A day's population (its feature rows, and the champion's scores) against the calibration.

    ``day`` (ISO date) places trend-aware bands; without it they are taken at the reference's last day.
    """
    settings = calibration.settings
    t = float(day_offsets([day], calibration.days[0])[0]) if day and calibration.days else None
    rows = [compare_feature(b, frame[n], settings, t) for n, b in calibration.features.items()]
    rows.sort(key=lambda r: (r.mode == EXCLUDED, -r.severity, r.feature))
    tested = [r for r in rows if r.mode != EXCLUDED]
    share = sum(r.drifted for r in tested) / len(tested) if tested else 0.0
    levels = [  # (severity toward the edge, level, share of the features at that level or more, band)
        (b.severity(s, t), float(key), s, b)
        for key, b in calibration.severe_bands.items()
        for s in [sum(r.severity >= float(key) for r in tested) / len(tested) if tested else 0.0]
    ]
    _, severe_level, severe, severe_band = max(levels, key=lambda x: x[0], default=(0.0, 0.0, 0.0, None))
    severe_alarm = severe_band is not None and severe_band.exceeded(severe, t)
    error = None
    mv_alarm = False
    mv_edges = None
    if calibration.multivariate is not None and len(frame):
        mv = calibration.multivariate
        shaped = _shape_columns(frame, mv.shape_numeric, None, 1)
        row_errors = mv.errors(mv.encode(frame, shaped))
        error = float(row_errors.mean())
        # the reference chunks overlap (the same entities day after day), so their spread can be narrower
        # than the day's own sampling noise: the band is at least k standard errors of the day's mean
        lower, upper = mv.band.edges(t)
        if lower is not None and math.isfinite(mv.band.mean):
            center = mv.band.center(t)
            half = (
                mv.band.k * float(row_errors.std(ddof=1)) / math.sqrt(row_errors.size)
                if row_errors.size > 1
                else 0.0
            )
            lower, upper = min(lower, center - half), max(upper, center + half)
        mv_edges = (lower, upper)
        mv_alarm = error > upper or (lower is not None and error < lower)
    prediction = None
    if calibration.prediction is not None and scores is not None and len(scores):
        prediction = compare_feature(calibration.prediction, pd.Series(scores), settings, t)
    return DayComparison(
        features=rows,
        drift_share=float(share),
        drift_share_band=calibration.drift_share,
        drift_alarm=bool(share > calibration.drift_share.edges(t)[1] or severe_alarm),
        multivariate_error=error,
        multivariate_band=calibration.multivariate.band if calibration.multivariate else None,
        multivariate_alarm=bool(mv_alarm),
        prediction=prediction,
        current_rows=len(frame),
        reference_rows=calibration.reference_rows,
        t=t,
        multivariate_edges=mv_edges,
        severe_level=severe_level,
        severe_share=float(severe),
        severe_share_band=severe_band,
        severe_alarm=bool(severe_alarm),
    )


# --------------------------------------------------------------------------- cache


def calibration_key(parts: Mapping[str, Any]) -> str:
    """A content hash of everything a calibration depends on."""
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def save_calibration(calibration: Calibration, folder: str | Path) -> Path:
    """Write the calibration as ``<folder>/<key>/{calibration.json, arrays.npz}`` (no pickle), atomically."""
    from mlops_assets.storage import atomic_directory

    target = Path(folder) / calibration.key
    arrays: dict[str, np.ndarray] = {"chunk_drift_shares": calibration.chunk_drift_shares}
    meta: dict[str, Any] = {
        "format": CALIBRATION_FORMAT,
        "key": calibration.key,
        "days": calibration.days,
        "settings": calibration.settings.to_dict(),
        "drift_share": calibration.drift_share.to_dict(),
        "severe_bands": {k: b.to_dict() for k, b in calibration.severe_bands.items()},
        "reference_rows": calibration.reference_rows,
        "estimate_bands": {m: b.to_dict() for m, b in calibration.estimate_bands.items()},
        "features": [],
    }
    for m, values in calibration.chunk_estimates.items():
        arrays[f"estimate/{m}"] = values

    def baseline_meta(b: FeatureBaseline, prefix: str) -> dict:
        for stat, values in b.chunk_values.items():
            arrays[f"{prefix}/chunk/{stat}"] = values
        for name in ("grid", "counts", "loo_severity"):
            if getattr(b, name) is not None:
                arrays[f"{prefix}/{name}"] = np.asarray(getattr(b, name))
        return {
            "feature": b.feature,
            "kind": b.kind,
            "mode": b.mode,
            "note": b.note,
            "method": b.method,
            "chunks_used": b.chunks_used,
            "reference_rows": b.reference_rows,
            "null_share": b.null_share,
            "bands": {s: band.to_dict() for s, band in b.bands.items()},
            "categories": None if b.categories is None else [_plain(c) for c in b.categories],
            "mean": b.mean,
            "std": b.std,
            "chunk_stats": list(b.chunk_values),
        }

    for i, b in enumerate(calibration.features.values()):
        meta["features"].append(baseline_meta(b, f"f{i}"))
    if calibration.prediction is not None:
        meta["prediction"] = baseline_meta(calibration.prediction, "prediction")
    if calibration.multivariate is not None:
        mv = calibration.multivariate
        meta["multivariate"] = {
            "columns": mv.columns,
            "numeric": mv.numeric,
            "shape_numeric": mv.shape_numeric,
            "categorical": {k: [_plain(c) for c in v] for k, v in mv.categorical.items()},
            "band": mv.band.to_dict(),
            "explained": mv.explained,
        }
        for name in ("center", "scale", "components", "chunk_errors"):
            arrays[f"mv/{name}"] = getattr(mv, name)
    with atomic_directory(target) as staging:
        np.savez(staging / "arrays.npz", **arrays)
        (staging / "calibration.json").write_text(json.dumps(meta, indent=1, default=_json_default))
    return target


def _plain(value):
    return value.item() if isinstance(value, np.generic) else value


def load_calibration(folder: str | Path, key: str) -> Calibration | None:
    """The cached calibration with this key, or None (missing, or written by another format)."""
    target = Path(folder) / key
    try:
        meta = json.loads((target / "calibration.json").read_text())
        if meta.get("format") != CALIBRATION_FORMAT:
            return None
        with np.load(target / "arrays.npz", allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except (OSError, ValueError, KeyError):
        return None
    settings_dict = dict(meta["settings"])
    settings = CalibrationSettings(**settings_dict)

    def band(d: dict) -> Band:
        return Band(**{**d, "times": tuple(d.get("times", ()))})

    def baseline(d: dict, prefix: str) -> FeatureBaseline:
        return FeatureBaseline(
            feature=d["feature"],
            kind=d["kind"],
            mode=d["mode"],
            note=d["note"],
            method=d["method"],
            chunks_used=d["chunks_used"],
            reference_rows=d["reference_rows"],
            null_share=d["null_share"],
            bands={s: band(b) for s, b in d["bands"].items()},
            chunk_values={s: arrays[f"{prefix}/chunk/{s}"] for s in d["chunk_stats"]},
            grid=arrays.get(f"{prefix}/grid"),
            counts=arrays.get(f"{prefix}/counts"),
            categories=d["categories"],
            mean=d["mean"],
            std=d["std"],
            loo_severity=arrays.get(f"{prefix}/loo_severity"),
        )

    features = {d["feature"]: baseline(d, f"f{i}") for i, d in enumerate(meta["features"])}
    multivariate = None
    if "multivariate" in meta:
        m = meta["multivariate"]
        multivariate = MultivariateBaseline(
            columns=m["columns"],
            numeric=m["numeric"],
            shape_numeric=m["shape_numeric"],
            categorical=m["categorical"],
            center=arrays["mv/center"],
            scale=arrays["mv/scale"],
            components=arrays["mv/components"],
            chunk_errors=arrays["mv/chunk_errors"],
            band=band(m["band"]),
            explained=m["explained"],
        )
    return Calibration(
        key=meta["key"],
        days=meta["days"],
        settings=settings,
        features=features,
        multivariate=multivariate,
        drift_share=band(meta["drift_share"]),
        chunk_drift_shares=arrays["chunk_drift_shares"],
        severe_bands={k: band(v) for k, v in meta["severe_bands"].items()},
        prediction=baseline(meta["prediction"], "prediction") if "prediction" in meta else None,
        estimate_bands={k: band(v) for k, v in meta["estimate_bands"].items()},
        chunk_estimates={k.split("/", 1)[1]: v for k, v in arrays.items() if k.startswith("estimate/")},
        reference_rows=meta["reference_rows"],
    )
