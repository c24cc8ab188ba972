"""A/B statistics against statsmodels / scipy / Monte Carlo references, and the sequential test under peeking."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from scipy.stats import chi2_contingency
from statsmodels.stats.proportion import proportions_ztest

from mlops_assets.serving import abtest


@pytest.mark.parametrize(
    ("x_a", "n_a", "x_b", "n_b"), [(120, 1000, 150, 1000), (30, 400, 22, 650), (5, 50, 9, 45)]
)
def test_two_proportion_ztest_matches_statsmodels(x_a, n_a, x_b, n_b):
    ours = abtest.two_proportion_ztest(x_a, n_a, x_b, n_b)
    z, p = proportions_ztest([x_b, x_a], [n_b, n_a])
    assert ours.statistic == pytest.approx(z, rel=1e-10)
    assert ours.p_value == pytest.approx(p, rel=1e-10)
    larger = abtest.two_proportion_ztest(x_a, n_a, x_b, n_b, alternative="larger")
    assert larger.p_value == pytest.approx(proportions_ztest([x_b, x_a], [n_b, n_a], alternative="larger")[1])


@pytest.mark.parametrize("correction", [False, True])
@pytest.mark.parametrize(("x_a", "n_a", "x_b", "n_b"), [(120, 1000, 150, 1000), (3, 40, 11, 38)])
def test_chi_squared_matches_scipy(x_a, n_a, x_b, n_b, correction):
    ours = abtest.chi_squared_test(x_a, n_a, x_b, n_b, correction=correction)
    ref = chi2_contingency(np.array([[x_a, n_a - x_a], [x_b, n_b - x_b]]), correction=correction)
    assert ours.statistic == pytest.approx(ref.statistic, rel=1e-10)
    assert ours.p_value == pytest.approx(ref.pvalue, rel=1e-10)


def test_welch_and_mann_whitney_match_scipy():
    rng = np.random.default_rng(3)
    a = rng.gamma(2.0, 10.0, 300)
    b = np.round(rng.gamma(2.2, 10.0, 250))  # rounded: ties exercise the tie correction
    a = np.round(a)
    welch = abtest.welch_ttest(a, b)
    ref = stats.ttest_ind(b, a, equal_var=False)
    assert welch.statistic == pytest.approx(ref.statistic, rel=1e-10)
    assert welch.p_value == pytest.approx(ref.pvalue, rel=1e-9)
    mw = abtest.mann_whitney_u(a, b)
    ref_mw = stats.mannwhitneyu(b, a, alternative="two-sided", method="asymptotic", use_continuity=True)
    assert mw.statistic == pytest.approx(ref_mw.statistic)
    assert mw.p_value == pytest.approx(ref_mw.pvalue, rel=1e-9)


@pytest.mark.parametrize(
    ("x_a", "n_a", "x_b", "n_b"), [(40, 400, 55, 410), (12, 100, 9, 100), (300, 3000, 310, 3000)]
)
def test_beta_binomial_matches_monte_carlo(x_a, n_a, x_b, n_b):
    ours = abtest.beta_binomial(x_a, n_a, x_b, n_b)
    rng = np.random.default_rng(11)
    pa = rng.beta(1 + x_a, 1 + n_a - x_a, 2_000_000)
    pb = rng.beta(1 + x_b, 1 + n_b - x_b, 2_000_000)
    assert ours.prob_b_better == pytest.approx(np.mean(pb > pa), abs=2e-3)
    assert ours.expected_loss_b == pytest.approx(np.mean(np.maximum(pa - pb, 0)), rel=0.02, abs=2e-5)
    assert ours.expected_loss_a == pytest.approx(np.mean(np.maximum(pb - pa, 0)), rel=0.02, abs=2e-5)


def test_prob_greater_quadrature_matches_closed_form():
    closed = abtest.prob_greater(13.0, 90.0, 21.0, 85.0)
    quad = abtest.prob_greater(13.0, 90.0, 21.0 + 1e-9, 85.0)  # non-integer: the quadrature branch
    assert closed == pytest.approx(quad, abs=1e-6)


def test_sample_size_matches_closed_form_and_power():
    p0, effect = 0.10, 0.02
    n = abtest.sample_size_per_arm(p0, effect, alpha=0.05, power=0.8)
    h = abs(2 * math.asin(math.sqrt(p0 + effect)) - 2 * math.asin(math.sqrt(p0)))
    # arcsine-transformed rates have variance 1/n each, so the difference has 2/n
    closed = 2 * ((stats.norm.isf(0.025) + stats.norm.isf(0.2)) / h) ** 2
    assert abs(n - closed) <= 1.5
    assert abtest.power_at(n, p0, effect) == pytest.approx(0.8, abs=0.01)
    # more power or a smaller effect needs more customers
    assert abtest.sample_size_per_arm(p0, effect, power=0.9) > n
    assert abtest.sample_size_per_arm(p0, effect / 2) > 3 * n


def _simulate_peeks(
    effect: float, sims: int = 2000, peeks: int = 20, batch: int = 250, base: float = 0.1, seed: int = 0
) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(seed)
    x_a = rng.binomial(batch, base, size=(sims, peeks)).cumsum(axis=1)
    x_b = rng.binomial(batch, base + effect, size=(sims, peeks)).cumsum(axis=1)
    n = np.broadcast_to(np.arange(1, peeks + 1) * batch, (sims, peeks))
    return x_a, n, x_b, n


def test_sequential_test_controls_false_positives_under_peeking_while_naive_ztests_do_not():
    alpha = 0.05
    x_a, n_a, x_b, n_b = _simulate_peeks(effect=0.0)
    _, naive_p = abtest.two_proportion_ztest(x_a, n_a, x_b, n_b)
    naive_fpr = float(np.mean((naive_p <= alpha).any(axis=1)))
    seq_p = abtest.always_valid_p_values(x_a, n_a, x_b, n_b)
    seq_fpr = float(np.mean(seq_p[:, -1] <= alpha))
    assert seq_fpr <= alpha
    assert naive_fpr > 2 * alpha  # peeking 20 times with a fixed-horizon test inflates the error
    # and the sequential test still finds a real effect
    x_a, n_a, x_b, n_b = _simulate_peeks(effect=0.03, sims=500, seed=1)
    power = float(np.mean(abtest.always_valid_p_values(x_a, n_a, x_b, n_b)[:, -1] <= alpha))
    assert power > 0.8


def test_always_valid_p_values_never_increase():
    x_a, n_a, x_b, n_b = _simulate_peeks(effect=0.01, sims=50)
    p = abtest.always_valid_p_values(x_a, n_a, x_b, n_b)
    assert (np.diff(p, axis=1) <= 0).all()


def _outcomes(n: int, rate_a: float, rate_b: float, seed: int = 0, days: int = 10) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    arm = np.where(rng.random(n) < 0.5, "champion", "challenger")
    rate = np.where(arm == "champion", rate_a, rate_b)
    return pd.DataFrame(
        {
            "customer_id": [f"C{i}" for i in range(n)],
            "arm": arm,
            "churned": (rng.random(n) < rate).astype(int),
            "spend": rng.gamma(2.0, 10.0, n),
            "label_timestamp": pd.Timestamp("2026-03-01", tz="UTC")
            + pd.to_timedelta(rng.integers(0, days, n), "D"),
        }
    )


CHURN = abtest.ABConfig(metric="churned", higher_is_better=False)  # fewer churners is better


def test_analyze_promotes_a_clearly_better_challenger_and_stops_a_worse_one():
    better = abtest.analyze(
        _outcomes(20_000, 0.20, 0.14),
        abtest.ABConfig(metric="churned", higher_is_better=False, value_column="spend"),
        time_column="label_timestamp",
    )
    assert better.decision == "promote_b", better.reason
    assert better.bayes.prob_b_better > 0.99
    assert better.welch is not None and better.mann_whitney is not None
    assert better.sequential.peeks == 10
    worse = abtest.analyze(_outcomes(20_000, 0.14, 0.20, seed=1), CHURN, time_column="label_timestamp")
    assert worse.decision == "stop" and "worse" in worse.reason
    early = abtest.analyze(_outcomes(300, 0.20, 0.19, seed=2), CHURN, time_column="label_timestamp")
    assert early.decision == "continue"
    assert "**Decision: continue**" in early.to_markdown()
    # the direction comes from the config: the same data with "higher is better" stops the challenger
    flipped = abtest.analyze(_outcomes(20_000, 0.20, 0.14), abtest.ABConfig(metric="churned"))
    assert flipped.decision == "stop"


def test_analyze_stops_on_a_broken_guardrail():
    report = abtest.analyze(
        _outcomes(20_000, 0.20, 0.14),
        CHURN,
        guardrails={"challenger": {"error_rate": 0.2, "p99_latency_ms": 5.0, "requests": 100.0}},
    )
    assert report.decision == "stop"
    assert "error rate" in report.reason


def test_outcomes_from_log_take_the_first_served_arm_and_the_first_later_label():
    t0 = pd.Timestamp("2026-03-01 10:00", tz="UTC")
    log = pd.DataFrame(
        {
            "entity_id": ["C1", "C1", "C2", "C3", "C4", "C2"],
            "arm": ["challenger", "champion", "champion", "challenger", "champion", "challenger"],
            "ts": [t0, t0 + pd.Timedelta("1h"), t0, t0, t0, t0 - pd.Timedelta("1h")],
            "shadow": [False, False, False, False, False, True],
            "status": ["ok", "ok", "ok", "ok", "error", "ok"],
            "experiment": ["e1"] * 6,
        }
    )
    labels = pd.DataFrame(
        {
            "customer_id": ["C1", "C1", "C2", "C3", "C4"],
            "label_timestamp": [
                t0 + pd.Timedelta("3D"),
                t0 + pd.Timedelta("1D"),
                t0 - pd.Timedelta("1D"),
                t0 + pd.Timedelta("2D"),
                t0 + pd.Timedelta("2D"),
            ],
            "churned": [0, 1, 1, 0, 1],
        }
    )
    columns = {"key": "customer_id", "time": "label_timestamp", "outcome": "churned"}
    out = abtest.outcomes_from_log(log, labels, "e1", **columns).set_index("entity_id")
    assert list(out.index) == ["C1", "C3"]  # C2's only label predates its assignment; C4's request failed
    assert (
        out.loc["C1", "arm"] == "challenger" and out.loc["C1", "churned"] == 1
    )  # first label after assignment
    assert out.loc["C1", "labelled_at"] == t0 + pd.Timedelta("1D")
    assert abtest.outcomes_from_log(log, labels, "other", **columns).empty
    # a replay (a request with as_of) is not an assignment of the experiment
    replayed = pd.concat(
        [
            log.assign(as_of=None),
            log.iloc[[3]].assign(entity_id="C4", status="ok", as_of="2026-02-01T00:00:00Z"),
        ]
    )
    again = abtest.outcomes_from_log(replayed, labels, "e1", **columns)
    assert list(again["entity_id"]) == ["C1", "C3"]
    # integer keys (the bikes example's station ids) join the log's text ids
    stations = labels.assign(customer_id=[1, 1, 2, 3, 4])
    by_station = log.assign(entity_id=log["entity_id"].str[1:])
    assert list(abtest.outcomes_from_log(by_station, stations, "e1", **columns)["entity_id"]) == ["1", "3"]
