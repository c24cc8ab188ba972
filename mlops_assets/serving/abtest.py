"""A/B statistics on realized labels: frequentist tests, Bayesian beta-binomial, mSPRT, power, a decision.

Arm A is the champion, arm B the challenger. Rates are compared as "good" outcomes: with
``higher_is_better=False`` (an outcome to avoid) the counts are flipped first, so "B better" always means
B has the better outcome.

Sequential test: the mixture sequential probability ratio test (mSPRT) of Johari, Koomen,
Pekelis and Walsh ("Always valid inference", 2017/2022) for the difference of two proportions,
with a normal mixing distribution N(0, tau^2) over the difference and the pooled (null)
variance of the observed difference. Its likelihood ratio is a nonnegative martingale under
the null, so by Ville's inequality ``P(sup_n Lambda_n >= 1/alpha) <= alpha``: the always-valid
p-value ``p_n = min(1, min_{k<=n} 1/Lambda_k)`` may be looked at after every batch, as often as
one likes, without inflating the false-positive rate (normal approximation of the counts).
``tau`` is the size of difference the test is most sensitive to (default 0.05 absolute).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd
from scipy import integrate, special, stats

Alternative = Literal["two-sided", "larger", "smaller"]
DecisionAction = Literal["continue", "promote_b", "stop"]


@dataclass(frozen=True)
class TestResult:
    """A test statistic and its p-value."""

    statistic: float
    p_value: float


def _p_from_z(z, alternative: Alternative):
    if alternative == "two-sided":
        return 2.0 * stats.norm.sf(np.abs(z))
    if alternative == "larger":
        return stats.norm.sf(z)
    return stats.norm.cdf(z)


def two_proportion_ztest(x_a, n_a, x_b, n_b, alternative: Alternative = "two-sided"):
    """Pooled two-proportion z-test of rate B vs rate A (z > 0 when B's rate is higher); vectorised.

    Returns a :class:`TestResult` for scalar input, else a tuple of arrays (z, p).
    """
    x_a, n_a, x_b, n_b = (np.asarray(v, dtype=float) for v in (x_a, n_a, x_b, n_b))
    pooled = (x_a + x_b) / (n_a + n_b)
    se = np.sqrt(pooled * (1 - pooled) * (1 / n_a + 1 / n_b))
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.where(se > 0, (x_b / n_b - x_a / n_a) / np.where(se > 0, se, 1.0), 0.0)
    p = _p_from_z(z, alternative)
    if z.ndim == 0:
        return TestResult(float(z), float(p))
    return z, p


def chi_squared_test(x_a: int, n_a: int, x_b: int, n_b: int, correction: bool = False) -> TestResult:
    """Pearson chi-squared test of independence of arm and outcome on the 2x2 table (Yates optional)."""
    observed = np.array([[x_a, n_a - x_a], [x_b, n_b - x_b]], dtype=float)
    expected = observed.sum(axis=1, keepdims=True) * observed.sum(axis=0, keepdims=True) / observed.sum()
    if (expected == 0).any():
        return TestResult(0.0, 1.0)
    diff = np.abs(observed - expected)
    if correction:
        diff = np.maximum(diff - 0.5, 0.0)  # every cell of a 2x2 table has the same |O - E|
    stat = float(np.sum(diff**2 / expected))
    return TestResult(stat, float(stats.chi2.sf(stat, 1)))


def welch_ttest(a, b, alternative: Alternative = "two-sided") -> TestResult:
    """Welch's unequal-variance t-test of mean(B) vs mean(A) (t > 0 when B's mean is higher)."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    t = (b.mean() - a.mean()) / math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    if alternative == "two-sided":
        p = 2.0 * stats.t.sf(abs(t), df)
    elif alternative == "larger":
        p = stats.t.sf(t, df)
    else:
        p = stats.t.cdf(t, df)
    return TestResult(float(t), float(p))


def mann_whitney_u(a, b) -> TestResult:
    """Two-sided Mann-Whitney U of B vs A (statistic: U of B), normal approximation with tie and continuity corrections."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    n_a, n_b = len(a), len(b)
    n = n_a + n_b
    ranks = stats.rankdata(np.concatenate([b, a]))
    u_b = ranks[:n_b].sum() - n_b * (n_b + 1) / 2.0
    _, counts = np.unique(np.concatenate([a, b]), return_counts=True)
    tie = float(np.sum(counts**3 - counts))
    sigma = math.sqrt(n_a * n_b / 12.0 * ((n + 1) - tie / (n * (n - 1))))
    mu = n_a * n_b / 2.0
    u = max(u_b, n_a * n_b - u_b)
    z = (u - mu - 0.5) / sigma if sigma > 0 else 0.0
    return TestResult(float(u_b), float(min(1.0, 2.0 * stats.norm.sf(z))))


# --------------------------------------------------------------------------------------- Bayesian


def prob_greater(a1: float, b1: float, a2: float, b2: float) -> float:
    """P(X2 > X1) for X1 ~ Beta(a1, b1), X2 ~ Beta(a2, b2): closed form for integer a2, else quadrature."""
    if float(a2).is_integer() and a2 <= 1e6:
        i = np.arange(int(a2))
        terms = (
            special.betaln(a1 + i, b1 + b2)
            - np.log(b2 + i)
            - special.betaln(1 + i, b2)
            - special.betaln(a1, b1)
        )
        return float(min(1.0, np.exp(special.logsumexp(terms))))
    lo = min(stats.beta.ppf(1e-12, a1, b1), stats.beta.ppf(1e-12, a2, b2))
    hi = max(stats.beta.isf(1e-12, a1, b1), stats.beta.isf(1e-12, a2, b2))
    value, _ = integrate.quad(
        lambda x: stats.beta.pdf(x, a2, b2) * stats.beta.cdf(x, a1, b1), lo, hi, limit=200, epsabs=1e-12
    )
    return float(min(1.0, max(0.0, value)))


@dataclass(frozen=True)
class BayesResult:
    """Beta-binomial comparison: P(B > A) and the expected loss of choosing each arm."""

    prob_b_better: float
    expected_loss_a: float  # E[max(pB - pA, 0)]: what choosing A costs if B is better
    expected_loss_b: float  # E[max(pA - pB, 0)]: what choosing B costs if A is better
    posterior_a: tuple[float, float]
    posterior_b: tuple[float, float]


def beta_binomial(
    x_a: int, n_a: int, x_b: int, n_b: int, prior: tuple[float, float] = (1.0, 1.0)
) -> BayesResult:
    """Posterior comparison of two rates under independent Beta priors."""
    a1, b1 = prior[0] + x_a, prior[1] + n_a - x_a
    a2, b2 = prior[0] + x_b, prior[1] + n_b - x_b
    p_b = prob_greater(a1, b1, a2, b2)
    mean_a, mean_b = a1 / (a1 + b1), a2 / (a2 + b2)
    # E[X1 1{X1 > X2}] = E[X1] P(X1' > X2) with X1' ~ Beta(a1 + 1, b1); likewise for X2
    loss_b = mean_a * prob_greater(a2, b2, a1 + 1, b1) - mean_b * prob_greater(a2 + 1, b2, a1, b1)
    loss_a = mean_b * prob_greater(a1, b1, a2 + 1, b2) - mean_a * prob_greater(a1 + 1, b1, a2, b2)
    return BayesResult(p_b, max(loss_a, 0.0), max(loss_b, 0.0), (a1, b1), (a2, b2))


# --------------------------------------------------------------------------------------- sequential


def msprt_likelihood_ratio(x_a, n_a, x_b, n_b, tau: float = 0.05):
    """mSPRT mixture likelihood ratio for rate B - rate A at the current counts (vectorised)."""
    x_a, n_a, x_b, n_b = (np.asarray(v, dtype=float) for v in (x_a, n_a, x_b, n_b))
    diff = x_b / n_b - x_a / n_a
    pooled = (x_a + x_b) / (n_a + n_b)
    var = pooled * (1 - pooled) * (1 / n_a + 1 / n_b)
    tau2 = tau * tau
    with np.errstate(divide="ignore", invalid="ignore"):
        log_lr = 0.5 * np.log(var / (var + tau2)) + diff**2 * tau2 / (2 * var * (var + tau2))
    return np.where(var > 0, np.exp(np.minimum(log_lr, 700.0)), 1.0)


def always_valid_p_values(x_a, n_a, x_b, n_b, tau: float = 0.05) -> np.ndarray:
    """Always-valid p-values along the last axis (one entry per peek, cumulative counts)."""
    lr = msprt_likelihood_ratio(x_a, n_a, x_b, n_b, tau)
    return np.minimum.accumulate(np.minimum(1.0, 1.0 / lr), axis=-1)


@dataclass(frozen=True)
class SequentialResult:
    """mSPRT at the latest peek."""

    likelihood_ratio: float
    p_value: float  # always-valid over the peeks given
    reject: bool
    peeks: int


def sequential_test(peeks: pd.DataFrame, alpha: float = 0.05, tau: float = 0.05) -> SequentialResult:
    """mSPRT over cumulative counts per peek (columns x_a, n_a, x_b, n_b, in time order)."""
    if peeks.empty:
        return SequentialResult(1.0, 1.0, False, 0)
    cols = [peeks[c].to_numpy(dtype=float) for c in ("x_a", "n_a", "x_b", "n_b")]
    p = always_valid_p_values(*cols, tau=tau)
    lr = msprt_likelihood_ratio(*(c[-1] for c in cols), tau=tau)
    return SequentialResult(float(lr), float(p[-1]), bool(p[-1] <= alpha), len(peeks))


# --------------------------------------------------------------------------------------- power


def sample_size_per_arm(
    baseline_rate: float,
    minimum_effect: float,
    alpha: float = 0.05,
    power: float = 0.8,
    ratio: float = 1.0,
    alternative: str = "two-sided",
) -> int:
    """Entities needed in arm A to detect ``baseline_rate -> baseline_rate + minimum_effect`` (B gets ratio x that)."""
    from statsmodels.stats.power import NormalIndPower
    from statsmodels.stats.proportion import proportion_effectsize

    if not 0 < baseline_rate < 1 or not 0 < baseline_rate + minimum_effect < 1 or minimum_effect == 0:
        raise ValueError(
            "baseline_rate and baseline_rate + minimum_effect must be in (0, 1), effect non-zero"
        )
    effect = proportion_effectsize(baseline_rate + minimum_effect, baseline_rate)
    n = NormalIndPower().solve_power(
        effect_size=abs(effect), alpha=alpha, power=power, ratio=ratio, alternative=alternative
    )
    return int(math.ceil(float(np.asarray(n).ravel()[0])))


def power_at(
    n_per_arm: int, baseline_rate: float, minimum_effect: float, alpha: float = 0.05, ratio: float = 1.0
) -> float:
    """Power of the two-sided test with ``n_per_arm`` entities in arm A."""
    from statsmodels.stats.power import NormalIndPower
    from statsmodels.stats.proportion import proportion_effectsize

    effect = abs(proportion_effectsize(baseline_rate + minimum_effect, baseline_rate))
    return float(NormalIndPower().power(effect_size=effect, nobs1=n_per_arm, alpha=alpha, ratio=ratio))


# --------------------------------------------------------------------------------------- report


@dataclass(frozen=True)
class ABConfig:
    """What the A/B analysis judges and the thresholds of its decision."""

    metric: str = "outcome"  # 0/1 outcome column
    higher_is_better: bool = True  # False for an outcome to avoid
    value_column: str | None = None  # optional continuous per-entity metric (Welch, Mann-Whitney)
    alpha: float = 0.05
    power: float = 0.8
    minimum_effect: float = 0.02  # absolute change of the good-outcome rate worth detecting
    tau: float = 0.05  # mSPRT mixing scale
    max_expected_loss: float = 0.002  # promote B only when choosing it costs at most this much in expectation
    guardrail_max_error_rate: float = 0.01
    guardrail_max_p99_latency_ms: float = 100.0


@dataclass
class ABReport:
    """Per-arm numbers, every test and the decision."""

    arms: dict[str, dict[str, float]]
    ztest: TestResult
    chi_squared: TestResult
    bayes: BayesResult
    sequential: SequentialResult
    required_n_per_arm: int
    welch: TestResult | None = None
    mann_whitney: TestResult | None = None
    guardrails: dict[str, dict[str, float]] = field(default_factory=dict)
    guardrail_breaches: list[str] = field(default_factory=list)
    decision: DecisionAction = "continue"
    reason: str = ""

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return asdict(self)

    def to_markdown(self) -> str:
        """A short human-readable report."""
        lines = ["| arm | entities | outcome rate | good rate |", "|---|---:|---:|---:|"]
        for arm, m in self.arms.items():
            lines.append(f"| {arm} | {int(m['n'])} | {m['rate']:.4f} | {m['good_rate']:.4f} |")
        lines += [
            "",
            f"- two-proportion z = {self.ztest.statistic:.3f}, p = {self.ztest.p_value:.4g}",
            f"- chi-squared = {self.chi_squared.statistic:.3f}, p = {self.chi_squared.p_value:.4g}",
            f"- P(B better) = {self.bayes.prob_b_better:.4f}; expected loss of B = {self.bayes.expected_loss_b:.5f}",
            f"- mSPRT always-valid p = {self.sequential.p_value:.4g} over {self.sequential.peeks} peeks",
            f"- required entities per arm: {self.required_n_per_arm}",
        ]
        if self.welch is not None and self.mann_whitney is not None:
            lines.append(
                f"- Welch t = {self.welch.statistic:.3f} (p = {self.welch.p_value:.4g}); "
                f"Mann-Whitney U = {self.mann_whitney.statistic:.0f} (p = {self.mann_whitney.p_value:.4g})"
            )
        if self.guardrail_breaches:
            lines.append("- guardrails broken: " + "; ".join(self.guardrail_breaches))
        lines.append(f"\n**Decision: {self.decision}** — {self.reason}")
        return "\n".join(lines)


def decide(
    good_a: int,
    n_a: int,
    good_b: int,
    n_b: int,
    sequential: SequentialResult,
    bayes: BayesResult,
    required_n: int,
    breaches: list[str],
    config: ABConfig,
) -> tuple[DecisionAction, str]:
    """Continue, promote B or stop, from the sequential test, the expected loss and the guardrails."""
    if breaches:
        return "stop", "guardrail broken: " + "; ".join(breaches)
    b_better = good_b / max(n_b, 1) > good_a / max(n_a, 1)
    if sequential.reject:
        if b_better and bayes.expected_loss_b <= config.max_expected_loss:
            return "promote_b", (
                f"B is better (always-valid p = {sequential.p_value:.4g}, "
                f"P(B better) = {bayes.prob_b_better:.3f}, expected loss {bayes.expected_loss_b:.5f})"
            )
        if not b_better:
            return "stop", f"B is worse (always-valid p = {sequential.p_value:.4g})"
        return "continue", f"B leads but its expected loss {bayes.expected_loss_b:.5f} is above the threshold"
    if min(n_a, n_b) >= required_n:
        return (
            "stop",
            f"no significant difference after {min(n_a, n_b)} entities per arm (planned {required_n})",
        )
    return (
        "continue",
        f"{min(n_a, n_b)} of {required_n} planned entities per arm; no significant difference yet",
    )


def guardrail_metrics(log: pd.DataFrame) -> dict[str, dict[str, float]]:
    """Error rate and p99 latency per arm from prediction-log rows (shadow rows and replays excluded)."""
    from mlops_assets.serving.prediction_log import live

    out: dict[str, dict[str, float]] = {}
    log = live(log)
    if log.empty:
        return out
    served = log.loc[~log["shadow"].astype(bool)]
    for arm, rows in served.groupby("arm"):
        ok = rows["status"] == "ok"
        lat = rows.loc[ok, "latency_ms"].to_numpy(dtype=float)
        out[str(arm)] = {
            "requests": float(len(rows)),
            "error_rate": float((~ok).mean()),
            "p99_latency_ms": float(np.percentile(lat, 99)) if len(lat) else 0.0,
        }
    return out


def _peeks(
    outcomes: pd.DataFrame, arm_a: str, arm_b: str, good: pd.Series, time_column: str | None
) -> pd.DataFrame:
    """Cumulative counts at the end of each period (one peek per day when a time column is given)."""
    frame = pd.DataFrame({"arm": outcomes["arm"].to_numpy(), "good": good.to_numpy()})
    frame["period"] = (
        pd.to_datetime(outcomes[time_column], utc=True).dt.floor("D").to_numpy() if time_column else 0
    )
    grouped = frame.groupby(["period", "arm"])["good"].agg(["sum", "count"]).unstack("arm", fill_value=0)
    grouped = grouped.sort_index().cumsum()
    get = lambda stat, arm: grouped[(stat, arm)] if (stat, arm) in grouped.columns else 0  # noqa: E731
    peeks = pd.DataFrame(
        {
            "x_a": get("sum", arm_a),
            "n_a": get("count", arm_a),
            "x_b": get("sum", arm_b),
            "n_b": get("count", arm_b),
        }
    )
    return peeks.loc[(peeks["n_a"] > 0) & (peeks["n_b"] > 0)].reset_index(drop=True)


def outcomes_from_log(
    log: pd.DataFrame,
    labels: pd.DataFrame,
    experiment: str | None = None,
    *,
    key: str,
    time: str,
    outcome: str,
) -> pd.DataFrame:
    """One row per entity of an experiment: the first arm that answered it and its first label after that.

    ``log`` holds prediction-log rows (shadow and failed rows and replays are ignored; ``entity_id`` is the
    entity's key as text), ``labels`` the label rows with the entity's ``key``, their ``time`` and the ``outcome``.
    Entities without a label after their first assignment are left out: their outcome is not realized yet.
    """
    from mlops_assets.serving.prediction_log import live

    log = live(log)
    served = log.loc[~log["shadow"].astype(bool) & (log["status"] == "ok")]
    if experiment is not None:
        served = served.loc[served["experiment"] == experiment]
    first = (
        served.sort_values("ts", kind="stable")
        .drop_duplicates("entity_id")[["entity_id", "arm", "ts"]]
        .rename(columns={"ts": "assigned_at"})
    )
    lab = pd.DataFrame(
        {
            "entity_id": labels[key].astype(str).to_numpy(),
            "labelled_at": pd.to_datetime(labels[time], utc=True).to_numpy(),
            outcome: labels[outcome].to_numpy(),
        }
    )
    lab["labelled_at"] = pd.to_datetime(lab["labelled_at"], utc=True)
    joined = first.merge(lab, on="entity_id", how="inner")
    joined = joined.loc[joined["labelled_at"] > joined["assigned_at"]]
    joined = joined.sort_values(["entity_id", "labelled_at"], kind="stable").drop_duplicates("entity_id")
    return joined.reset_index(drop=True)


def analyze(
    outcomes: pd.DataFrame,
    config: ABConfig = ABConfig(),
    arm_a: str = "champion",
    arm_b: str = "challenger",
    time_column: str | None = None,
    guardrails: Mapping[str, Mapping[str, float]] | None = None,
) -> ABReport:
    """Full A/B analysis of realized outcomes (one row per entity: ``arm``, the metric, optional value/time)."""
    missing = [c for c in ("arm", config.metric) if c not in outcomes.columns]
    if missing:
        raise ValueError(f"outcomes lack columns {missing}; they have {list(outcomes.columns)}")
    rows = outcomes.loc[outcomes["arm"].isin([arm_a, arm_b]) & outcomes[config.metric].notna()]
    y = rows[config.metric].astype(int)
    good = y if config.higher_is_better else 1 - y
    in_a, in_b = (rows["arm"] == arm_a).to_numpy(), (rows["arm"] == arm_b).to_numpy()
    n_a, n_b = int(in_a.sum()), int(in_b.sum())
    if n_a == 0 or n_b == 0:
        raise ValueError(f"both arms need outcomes: {arm_a}={n_a}, {arm_b}={n_b}")
    g_a, g_b = int(good[in_a].sum()), int(good[in_b].sum())
    arms = {
        arm: {"n": float(n), "rate": float(y[mask].mean()), "good_rate": g / n}
        for arm, n, g, mask in ((arm_a, n_a, g_a, in_a), (arm_b, n_b, g_b, in_b))
    }
    base = min(max(g_a / n_a, 1e-3), 1 - 1e-3)
    effect = config.minimum_effect if base + config.minimum_effect < 1 else -config.minimum_effect
    required = sample_size_per_arm(base, effect, config.alpha, config.power)
    seq = sequential_test(_peeks(rows, arm_a, arm_b, good, time_column), config.alpha, config.tau)
    bayes = beta_binomial(g_a, n_a, g_b, n_b)
    report = ABReport(
        arms,
        two_proportion_ztest(g_a, n_a, g_b, n_b),
        chi_squared_test(g_a, n_a, g_b, n_b),
        bayes,
        seq,
        required,
    )
    if config.value_column is not None:
        values = rows[config.value_column].astype(float)
        a_vals, b_vals = values[in_a].dropna().to_numpy(), values[in_b].dropna().to_numpy()
        if len(a_vals) > 1 and len(b_vals) > 1:
            report.welch = welch_ttest(a_vals, b_vals)
            report.mann_whitney = mann_whitney_u(a_vals, b_vals)
    report.guardrails = {k: dict(v) for k, v in (guardrails or {}).items()}
    g_b_metrics = report.guardrails.get(arm_b, {})
    if g_b_metrics.get("error_rate", 0.0) > config.guardrail_max_error_rate:
        report.guardrail_breaches.append(
            f"{arm_b} error rate {g_b_metrics['error_rate']:.3f} > {config.guardrail_max_error_rate}"
        )
    if g_b_metrics.get("p99_latency_ms", 0.0) > config.guardrail_max_p99_latency_ms:
        report.guardrail_breaches.append(
            f"{arm_b} p99 latency {g_b_metrics['p99_latency_ms']:.1f} ms > {config.guardrail_max_p99_latency_ms} ms"
        )
    report.decision, report.reason = decide(
        g_a, n_a, g_b, n_b, seq, bayes, required, report.guardrail_breaches, config
    )
    return report
