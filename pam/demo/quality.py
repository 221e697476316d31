"""The demo report's measured comparison: personal models (PAM, Prior-PAM, FPMF) and rating
strategies (Active-PAM's eq. 6, the posterior strategy, random) on the demo's simulated users.

In process, on the served feature table and the panel's cleaned data, with `pam eval`'s
protocols (personalize.protocols): every method sees the same seeded splits, and each is reported
as its mean correlation improvement over the generic score with the paired difference to the
reference (PAM for models, random for strategies, the same scoring model) and its standard error
over users. The prior is the one the prior stage stored; FPMF's network is fit on the training
raters here. Sized for a few seconds: REPEATS random splits per user and k, TRIALS strategy runs
per user, one process. With the demo's handful of users the standard errors are wide: this
shows the pipeline's methods side by side, `pam eval` on a full panel measures them.
"""

from __future__ import annotations

import html

import numpy as np

KS = (10, 20)  # ratings per user for the models
BUDGETS = (10, 20, 30)  # ratings per user for the strategies
REPEATS = 10
TRIALS = 4
HOLDOUT = 0.3  # strategies are scored on a fixed held-out part of each user's photos
FPMF_ITER = 150
MODELS = ("PAM", "Prior-PAM", "FPMF", "Oracle")
STRATEGIES = ("active-pam", "posterior", "random")
LABELS = {"active-pam": "Active-PAM (eq. 6)", "posterior": "posterior strategy", "random": "random"}


def measure(panel, features, prior=None, *, w_aes: float | None = None, seed: int = 0) -> dict:
    """panel: the demo's personalize.simulate.Panel; features: the served FeatureMatrix;
    prior: the stored TastePrior (None: Prior-PAM and the posterior strategy are left out)."""
    from personalize import protocols as P
    from personalize.blas import single_blas_thread
    from personalize.data import FlickrAES

    data = panel.dataset()
    known = np.isin(data.ratings.images, features.image_ids)
    data = FlickrAES(data.ratings.subset(known), data.test_workers, data.worker_performance,
                     data.excluded_workers, data.source)
    users = sorted(data.test_workers)
    counts = [int((data.ratings.workers == w).sum()) for w in users]
    n_min = min(counts) if counts else 0
    ks = [k for k in KS if k + 3 <= n_min]
    album = n_min - round(HOLDOUT * n_min)
    budgets = [b for b in BUDGETS if b <= album]
    out = {"users": len(users), "ratings_per_user": [n_min, max(counts, default=0)], "repeats": REPEATS,
           "trials": TRIALS, "holdout": HOLDOUT, "prior": prior is not None, "ks": ks, "budgets": budgets,
           "models": {}, "strategies": {}}
    if not users:
        return out
    with single_blas_thread():
        if ks:
            fpmf = P.fpmf_for(data, features, max_iter=FPMF_ITER, seed=seed)
            t4 = P.table4(data, features, ks=ks, repeats=REPEATS, seed=seed, n_jobs=1, fpmf=fpmf, prior=prior,
                          oracle=panel.true_taste)
            out["models"] = {str(k): {m: _clean(row) for m, row in t4["rows"][k].items() if m in MODELS}
                             for k in ks}
        if budgets:
            strategies = [s for s in STRATEGIES if s != "posterior" or prior is not None]
            ac = P.active_curves(data, features, budgets=budgets, trials=TRIALS, strategies=strategies, seed=seed,
                                 n_jobs=1, w_aes=w_aes, holdout=HOLDOUT, prior=prior)
            out["strategies"] = {name: {k: _clean(v) for k, v in curve.items() if k != "strategy"}
                                 for name, curve in ac["curves"].items()}
    return out


def _clean(value):
    """JSON-safe: NaN -> None, numpy scalars -> floats."""
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    if isinstance(value, float | np.floating):
        return float(value) if np.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    return value


def _pm(mean, se) -> str:
    if mean is None:
        return "n/a"
    return f"{mean:+.3f}" + ("" if se is None else f" ± {se:.3f}")


def html_section(q: dict) -> list[str]:
    from pam.demo.report import _table

    parts = ["<h2>Personal models and rating strategies, measured</h2>",
             f"<p>In process, on the {q['users']} SIMULATED users ({q['ratings_per_user'][0]}-"
             f"{q['ratings_per_user'][1]} rated photos each), with the protocols of <code>pam eval</code>: every "
             "method sees the same seeded splits; each figure is the mean improvement of Spearman's rho over the "
             "generic score on the photos held out, and the paired difference to the reference with its standard "
             f"error over users. Models: {q['repeats']} random sets of k ratings per user, FPMF's network fit on "
             "the training raters, Prior-PAM on the prior of the prior stage, the oracle knows each user's true "
             f"simulated taste. Strategies: {q['trials']} runs per user from the same 10 random photos, scored on "
             f"a fixed {round(100 * q['holdout'])}% of each user's photos that no strategy may pick. With this few "
             "users the standard errors are wide; <code>pam eval</code> on a full panel measures the methods.</p>"]
    if not q.get("prior"):
        parts.append("<p>No taste prior: Prior-PAM and the posterior strategy are left out.</p>")
    if q.get("models"):
        rows = []
        for k, by_model in q["models"].items():
            for m in MODELS:
                row = by_model.get(m)
                if row is None:
                    continue
                diff = "reference" if m == "PAM" else _pm(row.get("diff_vs_PAM"), row.get("se_vs_PAM"))
                rows.append([k, html.escape(m), _pm(row["mean"], None), diff,
                             f"{row['helped']} / {row['hurt']}"])
        parts.append(_table(["k ratings", "model", "improvement", "paired difference to PAM ± s.e.",
                             "users helped / hurt"], rows))
    if q.get("strategies"):
        budgets = q["budgets"]
        rows = []
        for name, curve in q["strategies"].items():
            strategy, model = name.split(" / ")
            cells = []
            for b in range(len(budgets)):
                mean = curve["mean"][b]
                if "diff_vs_random" in curve:
                    cells.append(f"{_pm(mean, None)} ({_pm(curve['diff_vs_random'][b], curve['se_vs_random'][b])})")
                else:
                    cells.append(_pm(mean, None))
            rows.append([html.escape(LABELS.get(strategy, strategy)), html.escape(model), *cells])
        parts.append(_table(["strategy", "scored with", *(f"{b} ratings: improvement (vs random ± s.e.)"
                                                          for b in budgets)], rows))
    return parts
