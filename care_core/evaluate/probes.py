"""Probes on frozen embeddings, as the CARE paper runs them (CARE_METHOD.md §5), scikit-learn style:
``__init__`` stores keyword-only parameters, ``fit`` returns self, fitted attributes end in ``_``.

- ``LogisticProbe``: L2 logistic regression (lbfgs), C = 1/λ over 45 log-spaced λ in [1e-5, 1e6] chosen by
  validation log-loss; without validation C = 0.5, max_iter 10000. The λ path runs from strong to weak
  regularisation, each fit warm-started from the previous solution (same optimum, far fewer iterations).
- ``KNNProbe``: kNN on standardised inputs; with validation k in {3, 5, ..., 23} x {uniform, distance} chosen
  by balanced accuracy, otherwise k = odd(sqrt(n_train)) clipped to [3, 13] with distance weights.
- ``CoxProbe``: ridge-penalised Cox proportional hazards (lifelines' objective, fitted by L-BFGS along the
  penalty path), penalty chosen by validation C-index.

Every probe predicts with plain numpy from its fitted arrays, so a saved head needs no scikit-learn.
"""

from __future__ import annotations

import warnings

import numpy as np

__all__ = ["LAMBDAS", "LogisticProbe", "KNNProbe", "CoxProbe", "cox_objective", "knn_proba", "linear_proba"]

LAMBDAS = np.logspace(-5, 6, 45)  # the paper's grid; C = 1 / lambda
KNN_KS = tuple(range(3, 24, 2))  # odd k from 3 to 23
COX_PENALIZERS = np.logspace(-3, 2, 11)  # our choice: lifelines' L2 penalizer grid (on standardised inputs)


def _blas_one_thread():
    """BLAS on one thread while probes fit: their matrices are small (hundreds to thousands x 512), and extra
    BLAS threads only contend (measured on 2 busy cores: the 45-λ path of a tiny problem 6.8 s -> 0.66 s)."""
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=1, user_api="blas")


def _check_xy(X: np.ndarray, name: str = "X") -> np.ndarray:
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2:
        raise ValueError(f"{name} has shape {X.shape}; expected [n_samples, n_features]")
    if not np.isfinite(X).all():
        raise ValueError(f"{name} holds NaN or Inf values")
    return X


def linear_proba(X: np.ndarray, coef: np.ndarray, intercept: np.ndarray) -> np.ndarray:
    """Class probabilities of a (multinomial) logistic model: [n, C]. One coefficient row = binary
    (scikit-learn's layout: row 0 scores class 1)."""
    logits = np.asarray(X, dtype=np.float64) @ np.asarray(coef, dtype=np.float64).T + intercept
    if logits.shape[1] == 1:
        p1 = 1.0 / (1.0 + np.exp(-logits[:, 0]))
        return np.stack([1.0 - p1, p1], axis=1)
    logits -= logits.max(axis=1, keepdims=True)
    e = np.exp(logits)
    return e / e.sum(axis=1, keepdims=True)


def knn_proba(X: np.ndarray, train_x: np.ndarray, train_y: np.ndarray, n_classes: int, k: int, weights: str) -> np.ndarray:
    """kNN class probabilities [n, C] exactly as scikit-learn's KNeighborsClassifier (euclidean; "distance"
    weights 1/d, and a query that coincides with training points takes only those)."""
    X = np.asarray(X, dtype=np.float64)
    d2 = (X**2).sum(1)[:, None] - 2.0 * X @ train_x.T + (train_x**2).sum(1)[None, :]
    dist = np.sqrt(np.maximum(d2, 0.0))
    idx = np.argsort(dist, axis=1, kind="stable")[:, :k]
    nd = np.take_along_axis(dist, idx, axis=1)
    if weights == "uniform":
        w = np.ones_like(nd)
    else:
        with np.errstate(divide="ignore"):
            w = 1.0 / nd
        zero = nd == 0
        rows = zero.any(axis=1)
        w[rows] = zero[rows].astype(np.float64)
    proba = np.zeros((len(X), n_classes))
    np.add.at(proba, (np.repeat(np.arange(len(X)), idx.shape[1]), train_y[idx].ravel()), w.ravel())
    return proba / proba.sum(axis=1, keepdims=True)


class LogisticProbe:
    """Logistic-regression probe (the paper's protocol). Labels are ints 0..n_classes-1.

    Fitted: ``coef_`` [1 or C, D], ``intercept_``, ``lambda_`` (chosen λ; None without validation), ``C_``,
    ``val_loss_`` [45] validation log-loss along the path (None without validation), ``n_iter_`` total
    lbfgs iterations.
    """

    def __init__(self, *, lambdas=LAMBDAS, max_iter: int = 1000, no_val_C: float = 0.5, no_val_max_iter: int = 10000,
                 warm_start: bool = True, n_classes: int | None = None) -> None:
        self.lambdas = lambdas
        self.max_iter = max_iter
        self.no_val_C = no_val_C
        self.no_val_max_iter = no_val_max_iter
        self.warm_start = warm_start
        self.n_classes = n_classes

    def fit(self, X, y, X_val=None, y_val=None) -> LogisticProbe:
        """Fit on (X [n, D], y [n]); with (X_val, y_val) choose λ on the validation log-loss."""
        with _blas_one_thread():
            return self._fit(X, y, X_val, y_val)

    def _fit(self, X, y, X_val, y_val) -> LogisticProbe:
        from sklearn.exceptions import ConvergenceWarning
        from sklearn.linear_model import LogisticRegression
        from sklearn.metrics import log_loss

        X, y = _check_xy(X), np.asarray(y, dtype=np.int64)
        self.n_classes_ = int(self.n_classes or y.max() + 1)
        present = np.unique(y)
        if len(present) < 2:
            raise ValueError(f"the training split holds only class {present.tolist()}; a classifier needs two")
        self.n_iter_ = 0
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)  # the paper caps iterations on purpose
            if X_val is None or len(X_val) == 0:
                model = LogisticRegression(C=self.no_val_C, max_iter=self.no_val_max_iter, random_state=0).fit(X, y)
                self._take(model, present)
                self.lambda_, self.C_, self.val_loss_ = None, float(self.no_val_C), None
                self.n_iter_ = int(np.sum(model.n_iter_))
                return self
            X_val, y_val = _check_xy(X_val, "X_val"), np.asarray(y_val, dtype=np.int64)
            lambdas = np.sort(np.asarray(self.lambdas, dtype=np.float64))[::-1]  # strong -> weak regularisation
            model = LogisticRegression(max_iter=self.max_iter, random_state=0, warm_start=self.warm_start)
            losses = np.empty(len(lambdas))
            best = None
            for i, lam in enumerate(lambdas):
                model.set_params(C=1.0 / lam).fit(X, y)
                self.n_iter_ += int(np.sum(model.n_iter_))
                proba = self._full(model.predict_proba(X_val), model.classes_)
                losses[i] = log_loss(y_val, proba, labels=np.arange(self.n_classes_))
                if best is None or losses[i] < losses[best[0]]:  # first minimum wins (stronger penalty on ties)
                    best = (i, model.coef_.copy(), model.intercept_.copy())
        i, self.coef_, self.intercept_ = best
        self._classes = present
        self.lambda_ = float(lambdas[i])
        self.C_ = 1.0 / self.lambda_
        order = np.argsort(lambdas)  # report the path in ascending λ, like self.lambdas
        self.lambdas_, self.val_loss_ = lambdas[order], losses[order]
        return self

    def _full(self, proba: np.ndarray, classes: np.ndarray) -> np.ndarray:
        out = np.zeros((len(proba), self.n_classes_))
        out[:, classes] = proba
        return out

    def _take(self, model, present) -> None:
        self.coef_, self.intercept_, self._classes = model.coef_.copy(), model.intercept_.copy(), present

    def predict_proba(self, X) -> np.ndarray:
        """[n, n_classes] probabilities (a class absent from training gets 0)."""
        return self._full(linear_proba(_check_xy(X), self.coef_, self.intercept_), self._classes)

    def linear_parameters(self) -> tuple[np.ndarray, np.ndarray]:
        """(coef [C, D], intercept [C]) over all ``n_classes_`` columns, for a saved head: binary models as
        two rows (0, w) so that a softmax gives the same probabilities; absent classes get -inf bias."""
        if self.coef_.shape[0] == 1:
            coef = np.zeros((2, self.coef_.shape[1]))
            coef[1] = self.coef_[0]
            intercept = np.array([0.0, self.intercept_[0]])
            rows = self._classes
        else:
            coef, intercept, rows = self.coef_, self.intercept_, self._classes
        full_c = np.zeros((self.n_classes_, coef.shape[1]))
        full_b = np.full(self.n_classes_, -np.inf)
        full_c[rows], full_b[rows] = coef, intercept
        return full_c, full_b


class KNNProbe:
    """kNN probe on standardised inputs (the paper's protocol). Labels are ints 0..n_classes-1.

    Without validation: ``no_val_k`` (None: odd(sqrt(n_train)) in [3, 13]) with ``no_val_weights``.
    Fitted: ``mean_``, ``scale_`` (standardiser), ``train_x_`` (standardised), ``train_y_``, ``k_``,
    ``weights_``, ``val_score_`` (best validation balanced accuracy; None without validation).
    """

    def __init__(self, *, ks=KNN_KS, weights=("uniform", "distance"), no_val_k: int | None = None,
                 no_val_weights: str = "distance", n_classes: int | None = None) -> None:
        self.ks = ks
        self.weights = weights
        self.no_val_k = no_val_k
        self.no_val_weights = no_val_weights
        self.n_classes = n_classes

    def fit(self, X, y, X_val=None, y_val=None) -> KNNProbe:
        """Fit on (X [n, D], y [n]); with (X_val, y_val) choose k and weights on validation balanced accuracy."""
        with _blas_one_thread():
            return self._fit(X, y, X_val, y_val)

    def _fit(self, X, y, X_val, y_val) -> KNNProbe:
        from sklearn.metrics import balanced_accuracy_score
        from sklearn.preprocessing import StandardScaler

        X, y = _check_xy(X), np.asarray(y, dtype=np.int64)
        self.n_classes_ = int(self.n_classes or y.max() + 1)
        scaler = StandardScaler().fit(X)
        self.mean_, self.scale_ = scaler.mean_.copy(), scaler.scale_.copy()
        self.train_x_, self.train_y_ = scaler.transform(X), y
        n = len(X)
        if X_val is None or len(X_val) == 0:
            k = int(np.sqrt(n))
            k = int(np.clip(k if k % 2 else k + 1, 3, 13)) if self.no_val_k is None else int(self.no_val_k)
            self.k_, self.weights_, self.val_score_ = k, self.no_val_weights, None
        else:
            Xv = scaler.transform(_check_xy(X_val, "X_val"))
            best = None
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # y_pred classes absent from y_val
                for k in self.ks:
                    for w in self.weights:
                        pred = knn_proba(Xv, self.train_x_, y, self.n_classes_, min(k, n), w).argmax(1)
                        score = balanced_accuracy_score(y_val, pred)
                        if best is None or score > best[0]:  # first best wins, like the authors' grid
                            best = (score, k, w)
            self.val_score_, self.k_, self.weights_ = float(best[0]), int(best[1]), best[2]
        self.k_ = min(self.k_, n)
        return self

    def predict_proba(self, X) -> np.ndarray:
        Xs = (_check_xy(X) - self.mean_) / self.scale_
        return knn_proba(Xs, self.train_x_, self.train_y_, self.n_classes_, self.k_, self.weights_)


def cox_objective(beta: np.ndarray, X: np.ndarray, event: np.ndarray, tie_end: np.ndarray,
                  penalizer: float) -> tuple[float, np.ndarray]:
    """Mean negative Breslow partial log-likelihood + penalizer/2 ||beta||^2, and its gradient.

    X [n, D] sorted by time, longest first; tie_end[i]: the last row whose time equals row i's, so the
    risk set of row i is rows 0..tie_end[i]. O(n D) per call (cumulative sums, no per-event loop).
    """
    eta = X @ beta
    m = eta.max()
    w = np.exp(eta - m)
    W = np.cumsum(w)[tie_end]
    WX = np.cumsum(w[:, None] * X, axis=0)[tie_end]
    ev = event.astype(bool)
    n = len(X)
    loss = -(eta[ev] - m - np.log(W[ev])).sum() / n + 0.5 * penalizer * float(beta @ beta)
    grad = -(X[ev] - WX[ev] / W[ev, None]).sum(axis=0) / n + penalizer * beta
    return float(loss), grad


class CoxProbe:
    """Ridge-penalised Cox proportional hazards on embeddings; risk = (x - mean_) @ coef_ (higher = earlier).

    Objective (lifelines' ``CoxPHFitter(penalizer=p)`` with Breslow ties): mean negative partial
    log-likelihood on standardised inputs + p/2 ||beta||^2, minimised with L-BFGS from the previous
    penalizer's solution (path from strong to weak). We fit it ourselves because lifelines' Newton steps
    cost O(n D^2) each: 71 s per fold for 180 slides x 512-d here, against well under a second.
    With validation the penalizer is chosen from ``penalizers`` by validation C-index (ties: the stronger
    penalty); without it ``no_val_penalizer``. Fitted: ``coef_`` [D], ``mean_`` [D], ``penalizer_``,
    ``val_cindex_`` (per penalizer; None without validation).
    """

    def __init__(self, *, penalizers=COX_PENALIZERS, no_val_penalizer: float = 1.0, max_iter: int = 1000) -> None:
        self.penalizers = penalizers
        self.no_val_penalizer = no_val_penalizer
        self.max_iter = max_iter

    def fit(self, X, time, event, X_val=None, time_val=None, event_val=None) -> CoxProbe:
        """Fit on (X [n, D], time [n], event [n]); with validation data choose the penalizer by C-index."""
        with _blas_one_thread():
            return self._fit(X, time, event, X_val, time_val, event_val)

    def _fit(self, X, time, event, X_val, time_val, event_val) -> CoxProbe:
        from scipy.optimize import minimize

        from care_core.evaluate.metrics import concordance_index

        X = _check_xy(X)
        time, event = np.asarray(time, dtype=np.float64), np.asarray(event, dtype=np.int64)
        if event.sum() == 0:
            raise ValueError("the training split has no observed event; a Cox model needs events")
        self.mean_ = X.mean(axis=0)
        sd = X.std(axis=0, ddof=1)
        sd = np.where(sd > 0, sd, 1.0)
        order = np.argsort(-time, kind="stable")
        Xs, ev, t = (X[order] - self.mean_) / sd, event[order], time[order]
        tie_end = np.searchsorted(-t, -t, side="right") - 1  # last row of each run of equal times

        def solve(pen: float, start: np.ndarray) -> np.ndarray:
            res = minimize(cox_objective, start, args=(Xs, ev, tie_end, pen), jac=True, method="L-BFGS-B",
                           options={"maxiter": self.max_iter, "gtol": 1e-7})
            return res.x

        has_val = X_val is not None and len(X_val) > 0
        if not has_val:
            beta = solve(float(self.no_val_penalizer), np.zeros(X.shape[1]))
            self.coef_, self.penalizer_, self.val_cindex_ = beta / sd, float(self.no_val_penalizer), None
            return self
        X_val = _check_xy(X_val, "X_val")
        pens = np.sort(np.asarray(self.penalizers, dtype=np.float64))[::-1]  # strong first: ties keep the stronger
        scores, best, beta = np.full(len(pens), np.nan), None, np.zeros(X.shape[1])
        for i, pen in enumerate(pens):
            beta = solve(pen, beta)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                scores[i] = concordance_index(time_val, event_val, (X_val - self.mean_) @ (beta / sd))
            if best is None or (np.isfinite(scores[i]) and not scores[i] <= scores[best[0]]):
                best = (i, beta / sd)
        i, self.coef_ = best
        self.penalizer_ = float(pens[i])
        order = np.argsort(pens)
        self.penalizers_, self.val_cindex_ = pens[order], scores[order]
        return self

    def predict_risk(self, X) -> np.ndarray:
        """[n] log partial hazard relative to the training mean (higher = earlier event)."""
        return (_check_xy(X) - self.mean_) @ self.coef_
