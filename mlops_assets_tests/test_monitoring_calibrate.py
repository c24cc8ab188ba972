"""Calibrated drift bands (mlops_assets.monitoring.calibrate) against brute-force chunk loops and scipy, and the
alarm rule on synthetic populations: quiet days raise no alarm, a covariate drift in a quarter of the population
does, trend features are judged on their shape, and the multivariate error catches a correlation flip that no
marginal shows."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from scipy.spatial.distance import jensenshannon

from mlops_assets.monitoring.calibrate import (
    EXCLUDED,
    NULL_SHARE,
    SHAPE,
    CalibrationSettings,
    ReferenceData,
    band_from,
    calibrate,
    categorical_chunk_statistics,
    compare_day,
    load_calibration,
    null_share_chunk_statistics,
    numeric_chunk_statistics,
    save_calibration,
)
from mlops_assets_tests.test_monitoring_drift import TOL, reference_psi


def categorical_psi(r: np.ndarray, c: np.ndarray, eps: float = 1e-4) -> float:
    p, q = r / r.sum(), c / c.sum()
    p, q = np.where(p == 0, eps, p), np.where(q == 0, eps, q)
    return float(np.sum((q - p) * np.log(q / p)))


# --------------------------------------------------------------------------- statistics vs a brute-force loop


def test_numeric_chunk_statistics_equal_a_scipy_chunk_loop() -> None:
    rng = np.random.default_rng(1)
    n_chunks = 12
    chunks = rng.integers(0, n_chunks, 3000)
    values = np.round(rng.normal(5, 2, chunks.size) + 0.05 * chunks, 1)  # ties, a slight trend
    got = numeric_chunk_statistics(values, chunks, n_chunks)
    for c in range(n_chunks):
        cur, ref = values[chunks == c], values[chunks != c]
        assert got["wasserstein"][c] == pytest.approx(
            stats.wasserstein_distance(ref, cur) / np.std(ref), **TOL
        )
        assert got["ks"][c] == pytest.approx(stats.ks_2samp(ref, cur).statistic, **TOL)
        assert got["psi"][c] == pytest.approx(reference_psi(ref, cur), **TOL)


def test_categorical_and_null_share_chunk_statistics_equal_a_chunk_loop() -> None:
    rng = np.random.default_rng(2)
    n_chunks = 9
    chunks = rng.integers(0, n_chunks, 2000)
    codes = rng.choice(5, chunks.size, p=[0.4, 0.3, 0.2, 0.09, 0.01])
    codes[(chunks == 3) & (codes == 4)] = 0  # a category missing from one chunk
    got = categorical_chunk_statistics(codes, chunks, n_chunks, 5)
    for c in range(n_chunks):
        cur = np.bincount(codes[chunks == c], minlength=5).astype(float)
        ref = np.bincount(codes[chunks != c], minlength=5).astype(float)
        keep = (cur + ref) > 0
        assert got["jensenshannon"][c] == pytest.approx(jensenshannon(ref[keep], cur[keep], base=2), **TOL)
        assert got["psi"][c] == pytest.approx(categorical_psi(ref[keep], cur[keep]), **TOL)
    null = rng.random(chunks.size) < 0.1 + 0.02 * chunks / n_chunks
    shares = null_share_chunk_statistics(null, chunks, n_chunks)
    for c in range(n_chunks):
        assert shares[c] == pytest.approx(abs(null[chunks == c].mean() - null[chunks != c].mean()), **TOL)


def _reference(
    frame: pd.DataFrame, day_index: np.ndarray, n_days: int, numeric, categorical, **kw
) -> ReferenceData:
    days = [(pd.Timestamp("2026-01-01") + pd.Timedelta(days=i)).date().isoformat() for i in range(n_days)]
    return ReferenceData(
        days, frame.reset_index(drop=True), day_index, list(numeric), list(categorical), **kw
    )


def test_bands_equal_mean_plus_k_sd_of_the_brute_force_chunk_values_and_drift_share_is_leave_one_out() -> (
    None
):
    rng = np.random.default_rng(3)
    n_days, per_day = 30, 300
    chunks = np.repeat(np.arange(n_days), per_day)
    frame = pd.DataFrame(
        {
            "x": rng.normal(0, 1, chunks.size),
            "y": np.where(rng.random(chunks.size) < 0.1, np.nan, rng.exponential(2.0, chunks.size)),
            "plan": rng.choice(["a", "b", "c"], chunks.size, p=[0.5, 0.3, 0.2]),
        }
    )
    settings = CalibrationSettings(trend_bands=False, detect_trends=False)
    cal = calibrate(_reference(frame, chunks, n_days, ["x", "y"], ["plan"]), settings)
    k = settings.band_sigmas
    for name, method in (("x", "wasserstein"), ("y", "wasserstein"), ("plan", "jensenshannon")):
        col = frame[name]
        loop = []
        for c in range(n_days):
            cur, ref = col[chunks == c].dropna(), col[chunks != c].dropna()
            if method == "wasserstein":
                loop.append(stats.wasserstein_distance(ref, cur) / np.std(ref))
            else:
                cats = sorted(col.unique())
                r = np.array([(ref == v).sum() for v in cats], float)
                q = np.array([(cur == v).sum() for v in cats], float)
                loop.append(jensenshannon(r, q, base=2))
        loop = np.array(loop)
        baseline = cal.features[name]
        np.testing.assert_allclose(baseline.chunk_values[method], loop, rtol=1e-9, atol=1e-12)
        band = baseline.bands[method]
        expected = max(loop.mean() + k * loop.std(ddof=1), settings.floor(method))
        assert band.upper == pytest.approx(expected, **TOL) and band.n_chunks == n_days
        assert "mean ± 3 sd" in band.rule
    # drift share: each chunk judged against bands fitted without it
    flags = []
    for name in ("x", "y", "plan"):
        b = cal.features[name]
        per = []
        for stat in (b.method, NULL_SHARE):
            v = b.chunk_values[stat]
            out = []
            for i in range(n_days):
                o = np.delete(v, i)
                o = o[np.isfinite(o)]
                upper = max(o.mean() + k * o.std(ddof=1), settings.floor(stat)) if o.size else math.inf
                out.append(np.isfinite(v[i]) and v[i] > upper)
            per.append(out)
        flags.append(np.logical_or(*per))
    shares = np.mean(flags, axis=0)
    np.testing.assert_allclose(cal.chunk_drift_shares, shares)
    # counted at 4 severity levels together: each level's binomial tail gets a quarter of the 3-sd tail
    assert cal.drift_share.upper == pytest.approx(binomial_upper(shares.mean(), 3, k, tests=4), **TOL)


def binomial_upper(rate: float, n: int, k: float, tests: int = 1) -> float:
    """scipy's reference: the largest share of n features a day may show, its count's binomial tail above the
    k-sigma one-sided normal tail (over ``tests``)."""
    from scipy import stats

    alpha = stats.norm.sf(k) / tests
    counts = [c for c in range(1, n + 1) if stats.binom.sf(c - 1, n, rate) <= alpha]
    return ((counts[0] if counts else n + 1) - 1) / n


@pytest.mark.parametrize("rate", [0.0, 0.001, 0.01, 0.05, 0.2])
@pytest.mark.parametrize("n", [1, 9, 25])
def test_the_drift_share_band_is_the_binomial_tail_of_the_reference_rate(rate: float, n: int) -> None:
    from mlops_assets.monitoring.calibrate import drift_share_band

    shares = np.full(40, rate)
    band = drift_share_band(shares, n, CalibrationSettings())
    assert band.edges()[1] == pytest.approx(binomial_upper(rate, n, 3.0), abs=1e-12)
    if rate == 0.0:  # a reference whose chunks never left their bands: one feature is dataset drift
        assert band.exceeded(1 / n) and not band.exceeded(0.0)


def test_quantile_band_is_the_upper_quantile_of_the_chunk_values() -> None:
    values = np.random.default_rng(4).gamma(2.0, 0.01, 50)
    settings = CalibrationSettings(band_quantile=0.95)
    band = band_from(values, settings, "wasserstein", floor=0.0)
    assert band.upper == pytest.approx(np.quantile(values, 0.95), **TOL)
    assert "0.95 quantile" in band.rule


def test_a_days_statistics_equal_scipy_against_the_whole_reference() -> None:
    rng = np.random.default_rng(5)
    n_days, per_day = 12, 1000
    chunks = np.repeat(np.arange(n_days), per_day)
    frame = pd.DataFrame(
        {"x": np.round(rng.normal(0, 1, chunks.size), 2), "plan": rng.choice(["a", "b", "c"], chunks.size)}
    )
    cal = calibrate(
        _reference(frame, chunks, n_days, ["x"], ["plan"]), CalibrationSettings(detect_trends=False)
    )
    day = pd.DataFrame(
        {"x": np.round(rng.normal(0.2, 1.1, 15_000), 2), "plan": rng.choice(["a", "b", "c", "d"], 15_000)}
    )
    out = compare_day(cal, day)
    x = out.feature("x")
    ref = frame["x"].to_numpy()
    ks = stats.ks_2samp(ref, day["x"].to_numpy())
    assert x.statistics["ks"] == pytest.approx(ks.statistic, **TOL)
    assert x.p_value == pytest.approx(ks.pvalue, **TOL)
    assert x.statistic == pytest.approx(stats.wasserstein_distance(ref, day["x"]) / np.std(ref), **TOL)
    assert x.statistics["psi"] == pytest.approx(reference_psi(ref, day["x"].to_numpy()), **TOL)
    plan = out.feature("plan")
    cats = ["a", "b", "c", "d"]
    r = np.array([(frame["plan"] == c).sum() for c in cats], float)
    q = np.array([(day["plan"] == c).sum() for c in cats], float)
    assert plan.statistic == pytest.approx(jensenshannon(r, q, base=2), **TOL)
    assert plan.p_value == pytest.approx(
        stats.chi2_contingency(np.vstack([r, q]), correction=False).pvalue, **TOL
    )
    assert x.drifted and plan.drifted  # a 0.2 sd shift and a new category, far beyond the bands


# --------------------------------------------------------------------------- a synthetic monitored population


def population_days(
    n_entities: int,
    days: range,
    seed: int = 0,
    drift_from: int | None = None,
    flip_from: int | None = None,
) -> tuple[pd.DataFrame, np.ndarray]:
    """Daily snapshots of a persistent population (about 80% active each day), like the feature store's.

    Features: a persistent score with daily noise, a spend (lognormal), a 7-day count (ties), an age that
    grows by one a day (a trend by construction), a plan (categorical, 5% nulls in ``coupon``), and a
    pair ``u``/``v`` correlated +0.8. ``drift_from``: region south (a quarter) shifts ``score`` by 1 sd,
    spends 1.8x and counts twice as much. ``flip_from``: the ``u``/``v`` correlation flips to -0.8 with
    unchanged marginals.
    """
    rng = np.random.default_rng([seed, days.start])  # daily noise: fresh for each period
    ent = np.random.default_rng(seed)  # the entities: the same population in every period
    region = ent.choice(["north", "south", "east", "west"], n_entities)
    latent = ent.normal(0, 1, n_entities)
    rate = ent.gamma(2.0, 1.5, n_entities)
    spend = ent.normal(3.0, 0.5, n_entities)
    age0 = ent.integers(0, 400, n_entities)
    plan = ent.choice(["basic", "plus", "pro"], n_entities, p=[0.6, 0.3, 0.1])
    frames, chunks = [], []
    for i, d in enumerate(days):
        active = np.flatnonzero(rng.random(n_entities) < 0.8)
        n = active.size
        south = region[active] == "south"
        shifted = drift_from is not None and d >= drift_from
        u = rng.normal(0, 1, n)
        rho = -0.8 if flip_from is not None and d >= flip_from else 0.8
        v = rho * u + math.sqrt(1 - rho**2) * rng.normal(0, 1, n)
        frame = pd.DataFrame(
            {
                "score": latent[active] + 0.3 * rng.normal(0, 1, n) + (1.0 * south if shifted else 0.0),
                "spend": np.exp(spend[active] + 0.2 * rng.normal(0, 1, n))
                * np.where(shifted & south, 1.8, 1.0),
                "visits_7d": rng.poisson(rate[active] * 7 * np.where(shifted & south, 2.0, 1.0)).astype(
                    float
                ),
                "account_age_days": (age0[active] + d).astype(float),
                "coupon": np.where(rng.random(n) < 0.05, np.nan, rng.exponential(5.0, n)),
                "u": u,
                "v": v,
                "plan": plan[active],
                "region": region[active],
            }
        )
        frames.append(frame)
        chunks.append(np.full(n, i))
    return pd.concat(frames, ignore_index=True), np.concatenate(chunks)


NUMERIC = ["score", "spend", "visits_7d", "account_age_days", "coupon", "u", "v"]
CATEGORICAL = ["plan", "region"]


def monitor(n_entities: int, ref_days: int, monitored: int, seed: int, **scenario):
    frame, chunks = population_days(n_entities, range(ref_days), seed)
    cal = calibrate(_reference(frame, chunks, ref_days, NUMERIC, CATEGORICAL))
    later, later_chunks = population_days(n_entities, range(ref_days, ref_days + monitored), seed, **scenario)
    start = pd.Timestamp("2026-01-01")
    out = []
    for i in range(monitored):
        day = (start + pd.Timedelta(days=ref_days + i)).date().isoformat()
        out.append(compare_day(cal, later[later_chunks == i].reset_index(drop=True), day=day))
    return cal, out


def test_quiet_days_raise_no_alarm_and_the_age_is_judged_on_its_shape() -> None:
    cal, days = monitor(600, 40, 20, seed=11)
    assert cal.features["account_age_days"].mode == SHAPE
    assert "trend detected" in cal.features["account_age_days"].note
    assert not any(d.drift_alarm for d in days), [d.drift_share for d in days]
    assert not any(d.multivariate_alarm for d in days)
    judged = sum(len(d.tested) for d in days)
    assert sum(len(d.drifted_features) for d in days) / judged <= 0.05


def test_covariate_drift_in_a_quarter_of_the_population_alarms_from_its_first_day() -> None:
    _, days = monitor(600, 40, 10, seed=12, drift_from=45)
    before, after = days[:5], days[5:]
    assert not any(d.drift_alarm for d in before)
    assert all(d.drift_alarm for d in after), [d.drift_share for d in after]
    assert {"score", "spend", "visits_7d"} <= set(after[0].drifted_features)
    assert after[0].features[0].feature in {"score", "spend", "visits_7d"}  # worst first


def test_declared_trend_feature_is_judged_on_shape_and_a_short_warm_window_excludes_with_the_reason() -> None:
    frame, chunks = population_days(300, range(30), seed=3)
    ref = _reference(
        frame,
        chunks,
        30,
        NUMERIC,
        CATEGORICAL,
        trend_reasons={"coupon": "declared a trend feature in the spec (monitoring.trend_features)"},
        warm_from={"visits_7d": "2026-01-25", "spend": "2026-01-05"},
    )
    cal = calibrate(ref)
    assert cal.features["coupon"].mode == SHAPE and "declared" in cal.features["coupon"].note
    assert cal.features["visits_7d"].mode == EXCLUDED and "not judged" in cal.features["visits_7d"].note
    assert cal.features["spend"].chunks_used == 26 and "left out" in cal.features["spend"].note
    # the multivariate model is fitted on the chunks where every input's window is full
    errors = cal.multivariate.chunk_errors
    assert np.isnan(errors[:4]).all() and np.isfinite(errors[4:]).all()
    assert "visits_7d" not in cal.multivariate.numeric
    day = compare_day(cal, frame[chunks == 29].reset_index(drop=True))
    assert "visits_7d" not in [f.feature for f in day.tested]
    assert day.feature("visits_7d").note  # shown with its reason


def test_multivariate_error_catches_a_correlation_flip_no_marginal_shows() -> None:
    _, days = monitor(800, 40, 8, seed=13, flip_from=44)
    before, after = days[:4], days[4:]
    assert not any(d.multivariate_alarm for d in before)
    assert all(d.multivariate_alarm for d in after)
    assert not any(d.drift_alarm for d in after)  # univariate: no dataset-level alarm (marginals unchanged)


def test_calibration_round_trips_through_its_cache(tmp_path) -> None:
    frame, chunks = population_days(200, range(20), seed=4)
    cal = calibrate(_reference(frame, chunks, 20, NUMERIC, CATEGORICAL), key="k1")
    save_calibration(cal, tmp_path)
    again = load_calibration(tmp_path, "k1")
    assert again is not None and load_calibration(tmp_path, "other") is None
    day = frame[chunks == 19].reset_index(drop=True)
    a, b = compare_day(cal, day), compare_day(again, day)
    assert [f.to_dict() for f in a.features] == [f.to_dict() for f in b.features]
    assert a.multivariate_error == pytest.approx(b.multivariate_error, rel=1e-12)


@pytest.mark.slow
def test_realistic_size_quiet_then_regional_covariate_drift() -> None:
    """5,000 entities, 60 reference days, 30 quiet days then 10 drifted days (a quarter of the population)."""
    cal, quiet = monitor(5000, 60, 30, seed=21)
    assert not any(d.drift_alarm or d.multivariate_alarm for d in quiet), [d.drift_share for d in quiet]
    judged = sum(len(d.tested) for d in quiet)
    assert sum(len(d.drifted_features) for d in quiet) / judged <= 0.05
    _, drifted = monitor(5000, 60, 10, seed=22, drift_from=63)
    assert not any(d.drift_alarm for d in drifted[:3])
    assert all(d.drift_alarm for d in drifted[3:])
