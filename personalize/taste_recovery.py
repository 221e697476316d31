"""Does the explained taste match the taste a simulated worker really has? (`pam eval explain`)

For each test worker of a simulated panel and each number of ratings k, k of the worker's rated
photos are drawn (seeded, the same draws for every method), PAM is fit on them and its taste
(personalize.explain, over the worker's photos) is compared with the worker's true taste in the
same units (the average partial effect over the worker's photos, score per s.d., content centred
along the simplex) by Spearman's rank correlation over the 20 features. The true taste:

- default panel (personalize.simulate): linear in x, from the worker's weights u over the
  attributes and z over the content (explain.true_taste);
- robustness panel (personalize.robust_panel): non-linear in the TRUE x, so the average partial
  effect of the worker's exact offset function (RobustTaste, differentiated analytically) over
  the worker's photos, per s.d. of the true attribute (the model only sees noisy copies).

Beside PAM's:

- oracle: PAM fit on the same k photos with noise-free ratings, the generic score plus the
  worker's visible taste only (no bias, no noise, no hidden-style taste, no generic-score error;
  on the robustness panel the whole taste, which lies on the true x): how much of the truth the
  model and its explanation can recover from k photos at best;
- permutation: the recovered taste against the true taste shuffled over the 20 features (the
  null distribution of the correlation, mean about 0).

Any panel with the `Panel` shape works (the default frozen panel, or another simulated panel).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from personalize import explain
from personalize.metrics import spearman_rho
from personalize.pam import PAM
from personalize.robust_panel import RobustTaste

METHODS = ("pam", "oracle", "permutation")


def _true_offsets(panel, attributes: np.ndarray, content: np.ndarray, worker: dict) -> np.ndarray:
    """The worker's visible taste on the 1-5 scale, as the simulator adds it."""
    from personalize.simulate import DEVIATION, HIDDEN_TASTE, TASTE_SHARE

    sd_t = DEVIATION * np.sqrt(TASTE_SHARE)
    mix = np.sqrt(1 - HIDDEN_TASTE) / np.sqrt(2)
    c_mean = panel.properties.content.mean(0)
    return sd_t * mix * (attributes @ np.asarray(worker["attribute_taste"])
                         + (content - c_mean) @ np.asarray(worker["content_taste"]))


def true_score_effects(panel, worker: dict, X: np.ndarray) -> np.ndarray:
    """The worker's true visible taste in explain's units, on the 1-5 scale: the change in the
    worker's latent score per s.d. of each feature over the photos X [n, 21] (content centred)."""
    from personalize.simulate import DEVIATION, HIDDEN_TASTE, TASTE_SHARE

    del panel  # the frozen defaults set the scale
    scale = DEVIATION * np.sqrt(TASTE_SHARE) * np.sqrt(1 - HIDDEN_TASTE) / np.sqrt(2)
    return scale * explain.true_taste(worker["attribute_taste"], worker["content_taste"], X)


def worker_inputs(panel, worker_id: str, data=None, fm=None) -> tuple[np.ndarray, ...]:
    """(X [n, 21] of the worker's rated photos, the worker's ratings, the noise-free oracle
    ratings, the true taste [20])."""
    data = data if data is not None else panel.dataset()
    fm = fm if fm is not None else panel.properties.features()
    images, scores = data.worker_ratings(worker_id)
    rows = fm.rows(images)
    X = fm.X(rows)
    taste_fn = panel.raters.taste if panel.raters is not None else None
    if isinstance(taste_fn, RobustTaste):
        index = panel.worker_index[worker_id]
        truth = explain.average_partial_effect(taste_fn.raw_gradient(index, rows), taste_fn.x_raw[rows])
        offsets = taste_fn(np.full(rows.size, index), rows)
    else:
        worker = panel.workers[worker_id]
        truth = explain.true_taste(worker["attribute_taste"], worker["content_taste"], X)
        offsets = _true_offsets(panel, fm.attributes[rows], fm.content[rows], worker)
    return X, scores.astype(np.float64), np.clip(X[:, -1] + offsets, 1.0, 5.0), truth


def worker_recovery(X: np.ndarray, y: np.ndarray, y_oracle: np.ndarray, truth: np.ndarray, ks: Sequence[int],
                    repeats: int, seed: list[int], pam_params: dict | None = None) -> np.ndarray:
    """[len(ks), repeats, 3] Spearman rho of (pam, oracle, permutation) with the truth; NaN where
    k exceeds the worker's ratings."""
    out = np.full((len(ks), repeats, len(METHODS)), np.nan)
    rng = np.random.default_rng(seed)
    params = pam_params or {}
    for a, k in enumerate(ks):
        if k > len(y):
            continue
        for r in range(repeats):
            pick = rng.choice(len(y), k, replace=False)
            recovered = explain.taste(PAM(**params).fit(X[pick], y[pick]), X, X[pick], y[pick]).effect
            oracle = explain.taste(PAM(**params).fit(X[pick], y_oracle[pick]), X, X[pick], y_oracle[pick]).effect
            out[a, r] = (spearman_rho(recovered, truth), spearman_rho(oracle, truth),
                         spearman_rho(recovered, rng.permutation(truth)))
    return out


def taste_recovery(panel, *, ks: Sequence[int] = (10, 20, 50, 100), repeats: int = 10, seed: int = 0,
                   n_jobs: int = 1, progress: Callable[[], None] | None = None,
                   pam_params: dict | None = None) -> dict:
    """Mean (over workers of their mean over repeats) rank correlation per k and method, with the
    standard error over workers and the paired difference pam - permutation."""
    from joblib import Parallel, delayed

    workers = sorted(panel.test_workers)
    data, fm = panel.dataset(), panel.properties.features()
    inputs = [worker_inputs(panel, w, data, fm) for w in workers]
    results = []
    for result in Parallel(n_jobs=n_jobs, return_as="generator")(
            delayed(worker_recovery)(*inp, ks, repeats, [seed, j], pam_params) for j, inp in enumerate(inputs)):
        results.append(result)
        if progress is not None:
            progress()
    raw = np.stack(results)  # [workers, ks, repeats, methods]
    per_worker = np.nanmean(raw, axis=2)  # [workers, ks, methods]
    rows = {}
    for a, k in enumerate(ks):
        row = {}
        for m, method in enumerate(METHODS):
            v = per_worker[:, a, m]
            v = v[np.isfinite(v)]
            row[method] = {"mean": float(v.mean()) if v.size else float("nan"),
                           "se": float(v.std(ddof=1) / np.sqrt(v.size)) if v.size > 1 else float("nan"),
                           "workers": int(v.size)}
        diff = per_worker[:, a, 0] - per_worker[:, a, 2]
        diff = diff[np.isfinite(diff)]
        row["pam_minus_permutation"] = {"mean": float(diff.mean()) if diff.size else float("nan"),
                                        "se": float(diff.std(ddof=1) / np.sqrt(diff.size)) if diff.size > 1
                                        else float("nan")}
        rows[int(k)] = row
    return {"ks": [int(k) for k in ks], "repeats": repeats, "n_workers": len(workers), "rows": rows,
            "raw": raw}
