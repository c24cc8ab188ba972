"""Confidence-based performance estimation against brute force, sklearn and simulated labels."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, roc_auc_score

from mlops_assets.monitoring.estimate import (
    compare_performance,
    estimate_performance,
    expected_accuracy,
    expected_roc_auc,
    performance_decay,
    realized_metrics,
)


@pytest.mark.parametrize("threshold", [0.5, 0.3])
def test_expected_accuracy_is_the_exact_expectation_over_all_label_outcomes(threshold: float) -> None:
    p = np.array([0.05, 0.2, 0.35, 0.5, 0.62, 0.8, 0.97])
    predicted = p >= threshold
    exact = 0.0
    for labels in itertools.product((0, 1), repeat=p.size):  # brute force over 2^7 label vectors
        y = np.array(labels)
        prob = np.prod(np.where(y == 1, p, 1 - p))
        exact += prob * np.mean(predicted == y)
    assert expected_accuracy(p, threshold) == pytest.approx(exact, abs=1e-12)


def test_expected_roc_auc_is_the_auc_of_probability_weighted_rows() -> None:
    rng = np.random.default_rng(0)
    p = np.round(rng.beta(2, 3, 3000), 2)  # ties
    y = np.r_[np.ones(p.size), np.zeros(p.size)]
    weighted = roc_auc_score(y, np.r_[p, p], sample_weight=np.r_[p, 1 - p])
    assert expected_roc_auc(p) == pytest.approx(weighted, abs=1e-9)


def test_realized_metrics_equal_sklearn() -> None:
    rng = np.random.default_rng(1)
    p = np.round(rng.uniform(size=2000), 2)
    y = rng.binomial(1, p)
    got = realized_metrics(y, p, threshold=0.4)
    assert got["accuracy"] == pytest.approx(accuracy_score(y, p >= 0.4), abs=1e-12)
    assert got["roc_auc"] == pytest.approx(roc_auc_score(y, p), abs=1e-9)
    assert math.isnan(realized_metrics(np.ones(5), np.full(5, 0.7))["roc_auc"])


def test_estimates_match_realized_metrics_when_labels_follow_calibrated_probabilities() -> None:
    rng = np.random.default_rng(2026)
    acc_z, auc_err = [], []
    for _ in range(40):
        p = 1 / (1 + np.exp(-rng.normal(-1.0, 1.5, 5000)))  # calibrated scores of a fair model
        y = rng.binomial(1, p)
        est = estimate_performance(p)
        real = realized_metrics(y, p)
        acc_z.append((real["accuracy"] - est.accuracy) / est.accuracy_std)
        auc_err.append(real["roc_auc"] - est.roc_auc)
    acc_z, auc_err = np.array(acc_z), np.array(auc_err)
    assert np.all(np.abs(acc_z) < 4)  # each day within sampling error
    assert abs(acc_z.mean()) < 4 / np.sqrt(acc_z.size)  # unbiased
    assert 0.6 < acc_z.std() < 1.5  # the std reported is the real sampling std
    assert np.all(np.abs(auc_err) < 0.03)
    assert abs(auc_err.mean()) < 4 * auc_err.std() / np.sqrt(auc_err.size)


def test_estimate_misses_concept_drift_and_comparison_shows_it() -> None:
    rng = np.random.default_rng(3)
    p = rng.uniform(size=20000)
    y = rng.binomial(1, 0.5 * np.ones_like(p))  # the relation between scores and labels is gone
    cmp = compare_performance(estimate_performance(p), realized_metrics(y, p))
    assert cmp["accuracy"]["estimated"] == pytest.approx(0.75, abs=0.01)
    assert cmp["accuracy"]["error"] < -0.2 and cmp["accuracy"]["error_in_std"] < -10
    assert cmp["roc_auc"]["realized"] == pytest.approx(0.5, abs=0.02)


def test_performance_decay_flags_drops_beyond_the_limit() -> None:
    training = {"accuracy": 0.85, "roc_auc": 0.90, "log_loss": 0.35, "n": 5000}
    ok = performance_decay(training, {"accuracy": 0.84, "roc_auc": 0.89, "log_loss": 0.36}, max_drop=0.05)
    assert not ok.decayed and set(ok.drops) == {"accuracy", "roc_auc", "log_loss"}
    assert ok.drops["log_loss"] == pytest.approx(0.01)  # lower is better: an increase is a drop
    bad = performance_decay(training, {"accuracy": 0.84, "roc_auc": 0.80, "log_loss": 0.50}, max_drop=0.05)
    assert bad.decayed and bad.decayed_metrics == ["roc_auc", "log_loss"]
    only_acc = performance_decay(training, {"accuracy": 0.70, "roc_auc": 0.5}, max_drop={"accuracy": 0.2})
    assert not only_acc.decayed and list(only_acc.drops) == ["accuracy"]
    est = estimate_performance(np.full(100, 0.6))
    assert performance_decay(training, est, max_drop=0.1).decayed_metrics == ["accuracy", "roc_auc"]


def test_bad_probabilities_are_refused() -> None:
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        estimate_performance([0.2, 1.3])
    with pytest.raises(ValueError, match="labels"):
        realized_metrics([0, 1, 1], [0.2, 0.4])
