"""Drift statistics against scipy/numpy references, false-alarm rates under no drift, and verdicts."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from scipy.spatial.distance import jensenshannon
from scipy.special import rel_entr

from mlops_assets.monitoring.drift import (
    DriftInputError,
    DriftThresholds,
    compute_drift,
    feature_drift,
    prediction_drift,
    with_thresholds,
)

TOL = {"rel": 1e-9, "abs": 1e-9}


def reference_psi(ref: np.ndarray, cur: np.ndarray, bins: int = 10, eps: float = 1e-4) -> float:
    """Brute-force PSI: reference-quantile bins [lo, hi) with open outer bins, eps for empty bins."""
    inner = np.unique(np.quantile(ref, np.linspace(0, 1, bins + 1))[1:-1])
    edges = np.concatenate([[-np.inf], inner, [np.inf]])
    r = np.array([np.mean((ref >= lo) & (ref < hi)) for lo, hi in zip(edges[:-1], edges[1:], strict=True)])
    c = np.array([np.mean((cur >= lo) & (cur < hi)) for lo, hi in zip(edges[:-1], edges[1:], strict=True)])
    r[r == 0] = eps
    c[c == 0] = eps
    return float(np.sum(rel_entr(c, r) + rel_entr(r, c)))


# exact KS regime, then the asymptotic regime in its central and tail branches
@pytest.mark.parametrize(
    "n_ref,n_cur,shift",
    [(300, 450, 0.3), (12_000, 15_000, 0.3), (30_000, 30_000, 0.0), (30_000, 30_000, 0.1)],
)
def test_numeric_statistics_equal_scipy_on_tied_data(n_ref: int, n_cur: int, shift: float) -> None:
    rng = np.random.default_rng(7)
    ref = np.round(rng.normal(10, 2, n_ref), 1)  # ties
    cur = np.round(rng.normal(10 + shift, 2.0, n_cur), 1)
    row = feature_drift("x", ref, cur)
    ks = stats.ks_2samp(ref, cur)
    assert row.ks_statistic == pytest.approx(ks.statistic, **TOL)
    assert row.ks_p_value == pytest.approx(ks.pvalue, **TOL)
    assert row.wasserstein == pytest.approx(stats.wasserstein_distance(ref, cur) / np.std(ref), **TOL)
    assert row.psi == pytest.approx(reference_psi(ref, cur), **TOL)
    assert (row.test, row.statistic, row.p_value) == ("ks", row.ks_statistic, row.ks_p_value)


def test_categorical_statistics_equal_scipy_with_categories_missing_on_one_side() -> None:
    rng = np.random.default_rng(3)
    ref = rng.choice(["a", "b", "c", "e"], 800, p=[0.4, 0.3, 0.2, 0.1])  # "e" only in reference
    cur = rng.choice(["a", "b", "c", "d"], 600, p=[0.35, 0.3, 0.25, 0.1])  # "d" only in current
    row = feature_drift("plan", ref, cur, kind="categorical")
    cats = sorted(set(ref) | set(cur))
    r = np.array([(ref == k).sum() for k in cats], dtype=float)
    c = np.array([(cur == k).sum() for k in cats], dtype=float)
    chi2, p, dof, _ = stats.chi2_contingency(np.vstack([r, c]), correction=False)
    assert row.chi2_statistic == pytest.approx(chi2, **TOL)
    assert row.chi2_p_value == pytest.approx(p, **TOL)
    assert row.chi2_dof == dof == 4
    assert row.jensenshannon == pytest.approx(jensenshannon(r / r.sum(), c / c.sum(), base=2), **TOL)
    rs, cs = r / r.sum(), c / c.sum()
    rs[rs == 0], cs[cs == 0] = 1e-4, 1e-4
    assert row.psi == pytest.approx(float(np.sum((cs - rs) * np.log(cs / rs))), **TOL)


def test_two_category_chi2_has_no_continuity_correction() -> None:
    ref = np.array(["y"] * 40 + ["n"] * 60)
    cur = np.array(["y"] * 55 + ["n"] * 45)
    row = feature_drift("flag", ref, cur, kind="categorical")
    table = np.array([[60, 40], [45, 55]])
    assert row.chi2_statistic == pytest.approx(stats.chi2_contingency(table, correction=False)[0], **TOL)
    assert row.chi2_statistic != pytest.approx(stats.chi2_contingency(table, correction=True)[0], rel=1e-3)


def test_nulls_are_reported_and_left_out_of_the_statistics() -> None:
    rng = np.random.default_rng(11)
    ref = rng.normal(size=400)
    cur = rng.normal(size=500)
    ref_nulls = ref.copy()
    ref_nulls[::4] = np.nan
    cur_nulls = np.concatenate([cur, [np.nan] * 100, [np.inf]])
    row = feature_drift("x", ref_nulls, cur_nulls)
    kept = ref_nulls[np.isfinite(ref_nulls)]
    assert row.ks_statistic == pytest.approx(stats.ks_2samp(kept, cur).statistic, **TOL)
    assert row.reference_null_share == pytest.approx(0.25)
    assert row.current_null_share == pytest.approx(101 / 601)
    assert (row.reference_count, row.current_count) == (300, 500)

    cats = pd.Series(["a", None, "b", "a", None], dtype="object")
    crow = feature_drift("c", cats, pd.Series(["a", "b", "b"]), kind="categorical")
    assert crow.reference_null_share == pytest.approx(0.4)
    assert crow.chi2_statistic == pytest.approx(
        stats.chi2_contingency(np.array([[2, 1], [1, 2]]), correction=False)[0], **TOL
    )


def test_all_null_and_constant_columns_do_not_crash() -> None:
    n = 200
    ref = pd.DataFrame(
        {
            "empty": [np.nan] * n,
            "gone": np.arange(n, dtype=float),
            "const": 3.0,
            "moved": 1.0,
            "cat_const": "a",
        }
    )
    cur = pd.DataFrame(
        {"empty": [np.nan] * n, "gone": [np.nan] * n, "const": 3.0, "moved": 2.0, "cat_const": "a"}
    )
    report = compute_drift(ref, cur)
    empty, gone = report.feature("empty"), report.feature("gone")
    assert not empty.drifted and empty.statistic is None and "either" in empty.note
    assert gone.drifted and "current" in gone.note
    const, moved, cat_const = report.feature("const"), report.feature("moved"), report.feature("cat_const")
    assert not const.drifted and const.p_value == pytest.approx(1.0) and const.wasserstein == 0.0
    assert moved.drifted and np.isfinite(moved.wasserstein) and moved.wasserstein > 0
    assert not cat_const.drifted and cat_const.chi2_p_value == 1.0
    # the all-null feature is reported but not counted in the share: 2 drifted of 4 with data
    assert report.drift_share == pytest.approx(2 / 4)


def _false_alarm_rate(draw, kind: str, reps: int) -> tuple[float, np.random.Generator]:
    rng = np.random.default_rng(20260101)
    alarms = 0
    for _ in range(reps):
        a, b = draw(rng), draw(rng)
        alarms += feature_drift("f", a, b, kind=kind).drifted
    return alarms / reps, rng


def test_ks_false_alarm_rate_is_alpha_on_continuous_data_without_drift() -> None:
    rate, _ = _false_alarm_rate(lambda rng: rng.lognormal(0.0, 1.0, 500), "numeric", reps=1000)
    assert 0.03 <= rate <= 0.07


CAT_P = [0.45, 0.3, 0.15, 0.07, 0.03]


def test_chi2_false_alarm_rate_is_alpha_on_categorical_data_without_drift() -> None:
    rate, _ = _false_alarm_rate(lambda rng: rng.choice(list("abcde"), 500, p=CAT_P), "categorical", reps=1000)
    assert 0.03 <= rate <= 0.07


def test_goodness_of_fit_chi2_against_reference_frequencies_over_alarms() -> None:
    """Why the two-sample test: treating reference frequencies as exact doubles the alarm rate or worse."""
    rng = np.random.default_rng(5)
    alarms = 0
    reps = 400
    for _ in range(reps):
        ref = np.bincount(rng.choice(5, 500, p=CAT_P), minlength=5)
        cur = np.bincount(rng.choice(5, 500, p=CAT_P), minlength=5)
        alarms += stats.chisquare(cur, ref * cur.sum() / ref.sum()).pvalue < 0.05
    assert alarms / reps > 0.10


def test_drift_is_flagged_on_shifted_data_and_dataset_verdict_follows_share() -> None:
    rng = np.random.default_rng(9)
    n = 2000
    ref = pd.DataFrame(
        {
            "spend": rng.gamma(2.0, 30.0, n),
            "logins": rng.poisson(5, n),
            "plan": rng.choice(["basic", "standard", "premium"], n, p=[0.5, 0.3, 0.2]),
            "region": rng.choice(["north", "south"], n),
        }
    )
    cur = pd.DataFrame(
        {
            "spend": rng.gamma(2.0, 36.0, n),  # scale up 20%
            "logins": ref["logins"].to_numpy(),  # identical: cannot drift
            "plan": rng.choice(["basic", "standard", "premium"], n, p=[0.3, 0.3, 0.4]),
            "region": ref["region"].to_numpy(),
        }
    )
    report = compute_drift(ref, cur)
    assert set(report.drifted_features) == {"spend", "plan"}
    assert report.feature("plan").kind == "categorical" and report.feature("plan").test == "chi2"
    assert report.drift_share == pytest.approx(0.5) and report.dataset_drift
    stricter = with_thresholds(report, DriftThresholds(drift_share=0.75))
    assert not stricter.dataset_drift and stricter.drifted_features == report.drifted_features

    psi = compute_drift(ref, cur, method="psi", thresholds=DriftThresholds(psi=0.05))
    assert all(r.test == "psi" and r.p_value is None for r in psi.features)
    assert {r.feature for r in psi.features if r.drifted} == {
        r.feature for r in psi.features if r.psi >= 0.05
    }
    as_cat = compute_drift(ref, cur, columns=["logins"], categorical=["logins"])
    assert as_cat.feature("logins").kind == "categorical" and as_cat.feature("logins").chi2_statistic == 0.0


def test_thresholds_decide_the_flag_per_method() -> None:
    rng = np.random.default_rng(2)
    ref, cur = rng.normal(0, 1, 3000), rng.normal(0.08, 1, 3000)
    ks = feature_drift("x", ref, cur)
    assert ks.drifted == (ks.p_value < 0.05)
    strict = feature_drift("x", ref, cur, thresholds=DriftThresholds(ks_alpha=ks.p_value / 2))
    assert not strict.drifted
    w = feature_drift("x", ref, cur, method="wasserstein", thresholds=DriftThresholds(wasserstein=0.05))
    assert w.drifted == (w.wasserstein >= 0.05) and w.threshold == 0.05


def test_method_that_does_not_fit_the_column_kind_is_refused() -> None:
    ref = pd.DataFrame({"plan": ["a", "b"] * 10})
    with pytest.raises(ValueError, match="does not apply to categorical"):
        compute_drift(ref, ref, method="ks")


def test_no_common_columns_and_mismatched_types_give_clear_errors() -> None:
    with pytest.raises(DriftInputError, match="no column in common"):
        compute_drift(pd.DataFrame({"a": [1.0]}), pd.DataFrame({"b": [1.0]}))
    with pytest.raises(DriftInputError, match="'a'"):
        compute_drift(pd.DataFrame({"a": [1.0, 2.0]}), pd.DataFrame({"a": ["x", "y"]}))


def test_identifier_and_datetime_columns_are_skipped_when_columns_are_not_given() -> None:
    n = 100
    ts = pd.date_range("2026-01-01", periods=n, freq="h", tz="UTC")
    ref = pd.DataFrame(
        {"customer_id": [f"C{i:05d}" for i in range(n)], "ts": ts, "x": np.arange(n, dtype=float)}
    )
    report = compute_drift(ref, ref)
    assert [r.feature for r in report.features] == ["x"]
    assert set(report.skipped) == {"customer_id", "ts"}


def test_prediction_drift_is_ks_on_scores_by_default() -> None:
    rng = np.random.default_rng(4)
    ref, cur = rng.beta(2, 5, 1000), rng.beta(3, 4, 1000)
    row = prediction_drift(ref, cur)
    assert row.feature == "prediction" and row.drifted
    assert row.p_value == pytest.approx(stats.ks_2samp(ref, cur).pvalue, **TOL)


def test_report_dict_has_the_documented_shape_and_is_json_safe() -> None:
    rng = np.random.default_rng(1)
    ref = pd.DataFrame({"x": rng.normal(size=50), "c": rng.choice(["a", "b"], 50), "e": np.nan})
    out = compute_drift(ref, ref.assign(x=ref["x"] + 5)).to_dict()
    assert isinstance(out["dataset_drift"], bool) and isinstance(out["drift_share"], float)
    for feat in out["features"]:
        assert {"feature", "test", "statistic", "p_value", "drifted"} <= set(feat)
    assert next(f for f in out["features"] if f["feature"] == "x")["drifted"] is True
    e = next(f for f in out["features"] if f["feature"] == "e")
    assert e["statistic"] is None and e["p_value"] is None
