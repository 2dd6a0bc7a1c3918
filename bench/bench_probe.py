"""The paper's logistic-regression protocol (5 folds x 45 λ, validation log-loss) on n slides x d dims:
``LogisticProbe`` (λ path from strong to weak regularisation, each fit warm-started from the last) against
the authors' loop (a fresh scikit-learn fit per λ), on the same folds, both with BLAS on one thread
(what ``LogisticProbe`` uses) so the ratio measures the path, not thread contention.

Embeddings are synthetic: a 32-d latent (class-dependent mean) mapped linearly to d dims plus noise, so
the classes overlap like real slide embeddings do. Times are process CPU time and wall time.

    python bench/bench_probe.py [--n 1000] [--dim 512] [--classes 2] [--folds 5]

Target: ratio (plain / ours) > 1, same λ chosen on every fold, same test AUROC.
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np


def cohort(n: int, dim: int, n_classes: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % n_classes
    latent = rng.normal(size=(n, 32)) + rng.normal(scale=0.25, size=(n_classes, 32))[y]
    X = latent @ rng.normal(size=(32, dim)) / np.sqrt(32) + 1.0 * rng.normal(size=(n, dim))
    return X.astype(np.float64), y


def plain_sklearn(X, y, Xv, yv, n_classes: int):
    """The authors' loop: one cold LogisticRegression per λ, best validation log-loss kept."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import log_loss

    from care_core.evaluate.probes import LAMBDAS

    best = (np.inf, None, None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        for lam in LAMBDAS:
            model = LogisticRegression(C=1 / lam, max_iter=1000, random_state=0).fit(X, y)
            loss = log_loss(yv, model.predict_proba(Xv), labels=np.arange(n_classes))
            if loss < best[0]:
                best = (loss, lam, model)
    return best[1], best[2]


def main() -> None:
    from threadpoolctl import threadpool_limits

    from care_core.evaluate import LabelTable, LogisticProbe, classification_metrics, make_splits

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--classes", type=int, default=2)
    ap.add_argument("--folds", type=int, default=5)
    args = ap.parse_args()

    X, y = cohort(args.n, args.dim, args.classes)
    ids = np.array([f"s{i}" for i in range(args.n)], dtype=object)
    table = LabelTable(ids, ids.copy(), label=np.array([f"c{v}" for v in y], dtype=object))
    folds = make_splits(table, n_folds=args.folds, seed=0)
    index = {s: i for i, s in enumerate(ids.tolist())}
    parts = [[np.array([index[s] for s in part]) for part in (f.train, f.val, f.test)] for f in folds]
    metric = "auroc" if args.classes == 2 else "weighted_f1"

    def run(fn):
        t0, c0 = time.perf_counter(), time.process_time()
        out = [fn(tr, va, te) for tr, va, te in parts]
        return out, time.perf_counter() - t0, time.process_time() - c0

    def ours(tr, va, te):
        probe = LogisticProbe().fit(X[tr], y[tr], X[va], y[va])
        return probe.lambda_, classification_metrics(y[te], probe.predict_proba(X[te]))[metric], probe.n_iter_

    def plain(tr, va, te):
        lam, model = plain_sklearn(X[tr], y[tr], X[va], y[va], args.classes)
        return lam, classification_metrics(y[te], model.predict_proba(X[te]))[metric], None

    with threadpool_limits(limits=1, user_api="blas"):
        res_ours, wall_o, cpu_o = run(ours)
        res_plain, wall_p, cpu_p = run(plain)
    print(f"{args.n} slides x {args.dim}-d, {args.classes} classes, {args.folds} folds x 45 λ (BLAS 1 thread)")
    print(f"plain scikit-learn (cold fit per λ): wall {wall_p:6.2f} s  cpu {cpu_p:6.2f} s")
    print(f"LogisticProbe (warm-started path):   wall {wall_o:6.2f} s  cpu {cpu_o:6.2f} s  "
          f"lbfgs iterations {sum(r[2] for r in res_ours)}")
    print(f"ratio plain / ours: wall {wall_p / wall_o:.2f}x  cpu {cpu_p / cpu_o:.2f}x")
    for k, (a, b) in enumerate(zip(res_ours, res_plain)):
        print(f"fold {k}: λ ours {a[0]:.3g} plain {b[0]:.3g}   test {metric} ours {a[1]:.4f} plain {b[1]:.4f}")


if __name__ == "__main__":
    main()
