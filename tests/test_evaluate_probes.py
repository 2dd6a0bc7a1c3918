"""Probes and metrics against scikit-learn / lifelines and hand-made cases with known answers."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from care_core.evaluate import (
    LAMBDAS,
    CoxProbe,
    KNNProbe,
    LogisticProbe,
    UndefinedMetricWarning,
    classification_metrics,
    concordance_index,
    markdown_table,
    summarise,
)


def _data(n_classes: int, seed: int = 0, n: int = 120, d: int = 12, spread: float = 1.5):
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(99).normal(scale=spread, size=(n_classes, d))
    y = np.arange(n) % n_classes
    return rng.normal(size=(n, d)) + centres[y], y


def test_lambda_grid_is_the_papers():
    assert len(LAMBDAS) == 45 and LAMBDAS[0] == pytest.approx(1e-5) and LAMBDAS[-1] == pytest.approx(1e6)


@pytest.mark.parametrize("n_classes", [2, 3])
def test_warm_started_path_matches_cold_sklearn_fits(n_classes):
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import log_loss

    X, y = _data(n_classes, 0, spread=0.3)  # overlapping classes: a finite optimum for every λ
    Xv, yv = _data(n_classes, 1, n=60, spread=0.3)
    probe = LogisticProbe().fit(X, y, Xv, yv)
    cold = [log_loss(yv, LogisticRegression(C=1 / lam, max_iter=1000).fit(X, y).predict_proba(Xv), labels=range(n_classes))
            for lam in LAMBDAS]
    np.testing.assert_allclose(probe.val_loss_, cold, rtol=2e-3, atol=2e-4)
    assert probe.lambda_ == pytest.approx(LAMBDAS[int(np.argmin(cold))])
    ref = LogisticRegression(C=probe.C_, max_iter=1000).fit(X, y)
    np.testing.assert_allclose(probe.predict_proba(Xv), ref.predict_proba(Xv), atol=1e-3)


def test_without_validation_C_is_half():
    from sklearn.linear_model import LogisticRegression

    X, y = _data(2)
    probe = LogisticProbe().fit(X, y)
    assert probe.C_ == 0.5 and probe.lambda_ is None
    ref = LogisticRegression(C=0.5, max_iter=10000).fit(X, y)
    np.testing.assert_allclose(probe.predict_proba(X), ref.predict_proba(X), atol=1e-5)


def test_linear_parameters_give_the_same_probabilities_binary_and_multiclass():
    from care_core.evaluate.probes import linear_proba

    for n_classes in (2, 4):
        X, y = _data(n_classes)
        probe = LogisticProbe(n_classes=n_classes).fit(X, y)
        coef, b = probe.linear_parameters()
        assert coef.shape == (n_classes, X.shape[1])
        np.testing.assert_allclose(linear_proba(X, coef, b), probe.predict_proba(X), atol=1e-12)


def test_knn_matches_sklearn_and_picks_on_balanced_accuracy():
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.preprocessing import StandardScaler

    X, y = _data(3, 0)
    Xv, yv = _data(3, 1, n=45)
    probe = KNNProbe().fit(X, y, Xv, yv)
    assert probe.k_ in range(3, 24, 2) and probe.weights_ in ("uniform", "distance")
    s = StandardScaler().fit(X)
    for k in (3, 9):
        for w in ("uniform", "distance"):
            ref = KNeighborsClassifier(n_neighbors=k, weights=w).fit(s.transform(X), y)
            probe.k_, probe.weights_ = k, w
            Xq = np.vstack([X[:5], Xv])  # includes exact training points (zero distance)
            np.testing.assert_allclose(probe.predict_proba(Xq), ref.predict_proba(s.transform(Xq)), atol=1e-6)


@pytest.mark.parametrize(("n", "k"), [(4, 3), (30, 5), (50, 7), (64, 9), (100, 11), (400, 13)])
def test_knn_default_k_without_validation(n, k):
    X, y = _data(2, n=n)
    probe = KNNProbe().fit(X, y)
    assert (probe.k_, probe.weights_) == (min(k, n), "distance")


def test_cox_recovers_the_risk_direction():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(200, 5))
    time = rng.exponential(np.exp(-1.5 * X[:, 0]))
    event = (rng.random(200) < 0.85).astype(int)
    probe = CoxProbe().fit(X[:140], time[:140], event[:140], X[140:], time[140:], event[140:])
    assert probe.coef_[0] > 0.2 and np.abs(probe.coef_[1:]).max() < 0.5 * probe.coef_[0]
    assert concordance_index(time[140:], event[140:], probe.predict_risk(X[140:])) > 0.7
    assert probe.penalizer_ in probe.penalizers_


def test_binary_metrics_known_values():
    y = np.array([0, 0, 1, 1])
    proba = np.array([[0.9, 0.1], [0.4, 0.6], [0.35, 0.65], [0.2, 0.8]])
    m = classification_metrics(y, proba)
    assert m["auroc"] == pytest.approx(1.0)
    assert m["balanced_accuracy"] == pytest.approx(0.75)  # class 0: 1/2 right, class 1: 2/2


def test_multiclass_metrics_known_values():
    y = np.array([0, 1, 2, 2])
    proba = np.eye(3)[[0, 1, 1, 2]] * 0.8 + 0.2 / 3
    m = classification_metrics(y, proba)
    assert m["balanced_accuracy"] == pytest.approx((1 + 1 + 0.5) / 3)
    assert m["weighted_f1"] == pytest.approx((1 * 1 + (2 / 3) * 1 + (2 / 3) * 2) / 4)
    assert set(m) == {"weighted_f1", "balanced_accuracy", "macro_auroc"}


def test_undefined_metrics_warn_and_are_nan():
    with pytest.warns(UndefinedMetricWarning, match="auroc is undefined"):
        m = classification_metrics(np.array([1, 1]), np.array([[0.3, 0.7], [0.6, 0.4]]))
    assert np.isnan(m["auroc"]) and np.isnan(m["balanced_accuracy"])
    with pytest.warns(UndefinedMetricWarning, match=r"class\(es\) \[2\] are absent"):
        m = classification_metrics(np.array([0, 1]), np.eye(3)[[0, 1]])
    assert np.isnan(m["macro_auroc"]) and m["balanced_accuracy"] == 1.0
    with pytest.warns(UndefinedMetricWarning, match="no comparable pairs"):
        assert np.isnan(concordance_index([1.0, 2.0], [0, 0], [0.1, 0.2]))


def test_concordance_index_hand_made():
    time = np.array([1.0, 2.0, 3.0, 4.0])
    event = np.array([1, 1, 1, 0])
    assert concordance_index(time, event, np.array([4.0, 3.0, 2.0, 1.0])) == 1.0  # higher risk dies first
    assert concordance_index(time, event, np.array([1.0, 2.0, 3.0, 4.0])) == 0.0
    # pairs (i<j comparable when event_i): 6 pairs; risk [4,1,2,3] orders 3 of them right
    assert concordance_index(time, event, np.array([4.0, 1.0, 2.0, 3.0])) == pytest.approx(0.5)


def test_summary_and_table_leave_nan_folds_out():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        s = summarise([{"auroc": 0.8}, {"auroc": float("nan")}, {"auroc": 0.6}])
    assert s["auroc"] == {"mean": pytest.approx(0.7), "sd": pytest.approx(np.std([0.8, 0.6], ddof=1)), "n": 2}
    table = markdown_table({"CARE": s, "empty": summarise([{"auroc": float("nan")}])})
    assert "| CARE | 70.0 ± 14.1 |" in table and "| empty | n/a |" in table


@pytest.mark.parametrize("penalizer", [0.1, 1.0])
def test_cox_fits_lifelines_objective(penalizer):
    """Our L-BFGS fit reaches lifelines' ridge-Cox optimum (distinct times, so Breslow = Efron)."""
    import pandas as pd
    from lifelines import CoxPHFitter

    rng = np.random.default_rng(1)
    X = rng.normal(size=(150, 4)) * [1.0, 2.0, 0.5, 1.0]
    time = rng.exponential(np.exp(-X[:, 0]))
    event = (rng.random(150) < 0.7).astype(int)
    ours = CoxProbe(no_val_penalizer=penalizer).fit(X, time, event)
    df = pd.DataFrame(X, columns=list("abcd")).assign(time=time, event=event)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = CoxPHFitter(penalizer=penalizer).fit(df, "time", "event").params_.to_numpy()
    np.testing.assert_allclose(ours.coef_, ref, atol=2e-4)


def test_cox_objective_gradient_with_ties():
    from scipy.optimize import check_grad

    from care_core.evaluate.probes import cox_objective

    rng = np.random.default_rng(2)
    X = rng.normal(size=(40, 3))
    time = np.sort(np.round(rng.exponential(size=40), 1))[::-1]  # longest first, with ties
    tie_end = np.searchsorted(-time, -time, side="right") - 1
    event = (rng.random(40) < 0.6).astype(int)
    f = lambda b: cox_objective(b, X, event, tie_end, 0.3)[0]  # noqa: E731
    g = lambda b: cox_objective(b, X, event, tie_end, 0.3)[1]  # noqa: E731
    assert check_grad(f, g, rng.normal(size=3)) < 1e-5
    # hand-made: one event at the longest time, risk set = itself: loss 0 + penalty
    assert cox_objective(np.ones(3), X[:1], np.array([1]), np.array([0]), 2.0)[0] == pytest.approx(3.0)
