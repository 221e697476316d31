"""The paper's evaluation protocols on a FLICKR-AES-format data set plus its feature table.

- `table4`: Table 4. For every test worker and each k, 50 times: k random rated images train
  SVM (direct SVR), FPMF and PAM; the rest test them; the score is the correlation improvement
  rho(method) - rho(generic) on the held-out images. Reported: the mean over workers and repeats,
  and the standard deviation over repeats of the worker-averaged improvement.
- `active_curves`: Figure 6. For every test worker, 10 trials: all strategies start from the same
  10 random images, then each picks one image at a time up to the largest budget; at every
  budget the improvement is measured on the worker's images not yet rated (each strategy then
  scores a different set), or with `holdout` on a fixed held-out part no strategy may pick.
- `taste_experiment`: Figure 4 (does personal taste exist?). Real training workers with more
  than 150 ratings and m fake workers (IM_j + Gaussian noise) each get k images; wc = sum over
  the 20 features of |rho(feature, offset)|; all are ranked low to high by wc; the fake workers'
  mean rank is reported. Near the middle means fakes look like people; falling with k means the
  real workers' offsets follow x and the fakes' do not.
- `tune_pam`: the hyperparameter grid, on TRAINING workers only.

Work is spread over processes with joblib (one task per worker); every task draws from its own
generator seeded by (seed, worker index, ...), so results do not depend on n_jobs.
"""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np
from joblib import Parallel, delayed

from personalize.active import ActivePAM
from personalize.baselines import DirectSVR, FPMFNetwork, train_fpmf
from personalize.data import FeatureMatrix, FlickrAES
from personalize.metrics import spearman_rho
from personalize.pam import PAM
from personalize.prior import PriorPAM, RaterData, TastePrior, fit_prior
from personalize.selection import SELECTORS
from personalize.strategy import PosteriorStrategy

TABLE4_METHODS = ("SVM", "FPMF", "PAM", "Prior-PAM", "Oracle")
ACTIVE_STRATEGIES = ("posterior", "active-pam", "random", "greedy", "mcal", "qbc")
SCORING_MODELS = ("PAM", "Prior-PAM")  # every strategy's rated set is scored with both
PAPER_TABLE4 = {  # correlation improvement, mean +- std (Table 4)
    10: {"SVM": (-0.352, 0.050), "FPMF": (-0.001, 0.003), "PAM": (0.006, 0.003)},
    100: {"SVM": (-0.176, 0.064), "FPMF": (0.010, 0.007), "PAM": (0.039, 0.012)},
}


@dataclass
class UserData:
    worker: str
    X: np.ndarray  # [n, 21] = [x, aes_score]
    V: np.ndarray  # [n, 177] visual vectors
    y: np.ndarray  # the worker's scores
    taste: np.ndarray | None = None  # the worker's true taste on these images (simulated panels)


def user_data(data: FlickrAES, features: FeatureMatrix, workers: Iterable[str],
              w_aes: float | None = None, oracle: Callable | None = None) -> list[UserData]:
    """oracle(worker, image_ids) -> the worker's true taste on those images, when known."""
    users = []
    for worker in workers:
        images, scores = data.worker_ratings(worker)
        rows = features.rows(images)
        V = features.V(rows) if w_aes is None else features.V(rows, w_aes)
        taste = None if oracle is None else np.asarray(oracle(worker, images), dtype=np.float64)
        users.append(UserData(worker, features.X(rows), V, scores.astype(np.float64), taste))
    return users


def prior_for(data: FlickrAES, features: FeatureMatrix, **kwargs) -> TastePrior:
    """The population taste prior from the training workers' ratings (never a test worker's);
    the feature statistics come from the photos they rated."""
    raters = [RaterData(u.X, u.y) for u in user_data(data, features, data.train_workers)]
    train = data.ratings.subset(~np.isin(data.ratings.workers, np.asarray(sorted(data.test_workers) or [""])))
    X_images = features.X(features.rows(np.unique(train.images)))
    return fit_prior(raters, X_images, **kwargs)


def _run(tasks, n_jobs: int, progress: Callable[[], None] | None):
    results = []
    runner = Parallel(n_jobs=n_jobs, return_as="generator")
    for result in runner(tasks):
        results.append(result)
        if progress is not None:
            progress()
    return results


def _improvement(y, pred, generic) -> float:
    return spearman_rho(y, pred) - spearman_rho(y, generic)


# --- Table 4 ---------------------------------------------------------------------------------
def fpmf_for(data: FlickrAES, features: FeatureMatrix, **kwargs) -> FPMFNetwork:
    """FPMF's network and user prior from the training workers' ratings (never a test worker's)."""
    train = data.ratings.subset(~np.isin(data.ratings.workers, np.asarray(sorted(data.test_workers) or [""])))
    images, image_idx = np.unique(train.images, return_inverse=True)
    _, user_idx = np.unique(train.workers, return_inverse=True)
    return train_fpmf(features.X(features.rows(images)), image_idx, user_idx, train.scores, **kwargs)


def _table4_user(u: UserData, index: int, ks: Sequence[int], repeats: int, seed: int,
                 pam_params: dict, fpmf: FPMFNetwork | None, prior: TastePrior | None = None) -> np.ndarray:
    """[ks, repeats, methods] improvements; k = 0 scores the zero-rating models on every image."""
    out = np.full((len(ks), repeats, len(TABLE4_METHODS)), np.nan)
    n = u.y.size
    for a, k in enumerate(ks):
        if n < k + 3:
            continue
        rng = np.random.default_rng([seed, index, k])
        for r in range(repeats):
            perm = rng.permutation(n)
            tr, te = perm[:k], perm[k:]
            generic = u.X[te, -1]
            if u.taste is not None:
                out[a, r, 4] = _improvement(u.y[te], generic + u.taste[te], generic)
            if k == 0:
                out[a, r, 2] = 0.0
                if prior is not None:
                    zero = PriorPAM(prior).fit_empty(u.X.shape[1] - 1).predict(u.X[te])
                    out[a, r, 3] = _improvement(u.y[te], zero, generic)
                continue
            svm = DirectSVR(**pam_params).fit(u.X[tr], u.y[tr]).predict(u.X[te])
            pam = PAM(**pam_params).fit(u.X[tr], u.y[tr]).predict(u.X[te])
            out[a, r, 0] = _improvement(u.y[te], svm, generic)
            if fpmf is not None:
                out[a, r, 1] = _improvement(u.y[te], fpmf.fit_user(u.X[tr], u.y[tr]).predict(u.X[te]), generic)
            out[a, r, 2] = _improvement(u.y[te], pam, generic)
            if prior is not None:
                out[a, r, 3] = _improvement(u.y[te], PriorPAM(prior).fit(u.X[tr], u.y[tr]).predict(u.X[te]), generic)
    return out


def paired_summary(raw: np.ndarray, methods: Sequence[str], reference: str = "PAM") -> dict:
    """Per method, from raw [users, repeats, methods]: mean improvement, s.d. over repeats of the
    user-averaged improvement (Table 4's +-), the paired difference to `reference` with its
    standard error over users, users helped / hurt (their mean improvement > 0 / < 0), and the
    share of the headroom between the reference and the oracle."""
    ref = methods.index(reference)
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # methods not run are all-NaN columns
        per_user = np.nanmean(raw, axis=1)  # [users, methods]
    oracle = per_user[:, methods.index("Oracle")] if "Oracle" in methods else None
    out = {}
    for m, name in enumerate(methods):
        col = raw[:, :, m]
        if np.all(np.isnan(col)):
            continue
        users = per_user[:, m]
        ok = np.isfinite(users)
        diff = users - per_user[:, ref]
        okd = np.isfinite(diff)
        row = {"mean": float(np.nanmean(col)), "std": float(np.nanstd(np.nanmean(col, axis=0))),
               "std_over_users": float(np.nanstd(users)), "users": int(ok.sum()),
               "helped": int((users[ok] > 0).sum()), "hurt": int((users[ok] < 0).sum()),
               "diff_vs_" + reference: float(np.mean(diff[okd])) if okd.any() else float("nan"),
               "se_vs_" + reference: float(np.std(diff[okd], ddof=1) / np.sqrt(okd.sum())) if okd.sum() > 1
               else float("nan")}
        if oracle is not None and np.isfinite(oracle).any():
            room = float(np.nanmean(oracle) - np.nanmean(per_user[:, ref]))
            row["headroom_share"] = (float(np.nanmean(users) - np.nanmean(per_user[:, ref])) / room
                                     if room > 0 else float("nan"))
        out[name] = row
    return out


def table4(data: FlickrAES, features: FeatureMatrix, *, ks: Sequence[int] = (10, 100), repeats: int = 50,
           seed: int = 0, n_jobs: int = 2, pam_params: dict | None = None, fpmf: FPMFNetwork | None = None,
           prior: TastePrior | None = None, oracle: Callable | None = None,
           progress: Callable[[], None] | None = None) -> dict:
    """Table 4 (k = 0 allowed: the zero-rating models); returns per-k, per-method summaries
    (paired_summary) and the raw [users, ks, repeats, methods] improvements."""
    users = user_data(data, features, sorted(data.test_workers), oracle=oracle)
    tasks = (delayed(_table4_user)(u, i, tuple(ks), repeats, seed, dict(pam_params or {}), fpmf, prior)
             for i, u in enumerate(users))
    raw = np.stack(_run(tasks, n_jobs, progress))  # [users, ks, repeats, methods]
    result = {"ks": list(ks), "repeats": repeats, "n_users": len(users), "methods": list(TABLE4_METHODS),
              "rows": {}, "raw": raw}
    for a, k in enumerate(ks):
        rows = paired_summary(raw[:, a], list(TABLE4_METHODS))
        if fpmf is None:
            rows.pop("FPMF", None)
        result["rows"][int(k)] = rows
    return result


# --- Figure 6 --------------------------------------------------------------------------------
def _active_user_trial(u: UserData, index: int, trial: int, budgets: Sequence[int], strategies: Sequence[str],
                       seed: int, pam_params: dict, holdout: float = 0.0,
                       prior: TastePrior | None = None) -> np.ndarray:
    """[strategies, scoring models, budgets]: each strategy's rated set scored with PAM and with
    Prior-PAM (NaN without a prior)."""
    n = u.y.size
    rng = np.random.default_rng([seed, index, trial])
    if holdout > 0:  # a fixed held-out part no strategy may pick; the rest is the album
        test = np.sort(rng.choice(n, size=round(holdout * n), replace=False))
        album = np.setdiff1d(np.arange(n), test)
    else:
        test, album = None, np.arange(n)
    V, X, y = u.V[album], u.X[album], u.y[album]
    m = album.size
    seed_set = rng.choice(m, size=min(10, m), replace=False)
    order_seed = int(rng.integers(2**31))
    out = np.full((len(strategies), len(SCORING_MODELS), len(budgets)), np.nan)
    top = min(max(budgets), m - 2 if test is None else m)
    for s, name in enumerate(strategies):
        if name == "active-pam":
            state = ActivePAM(V, X, seed=order_seed, seed_indices=seed_set, pam_params=pam_params)
        elif name == "posterior":
            if prior is None:
                continue
            state = PosteriorStrategy(V, X, prior=prior, seed=order_seed, seed_indices=seed_set)
        else:
            state = SELECTORS[name](V, X, seed=order_seed, seed_indices=seed_set, pam_params=pam_params)
        while True:
            rated = state.rated_indices
            n_rated = rated.size
            if n_rated in budgets:
                if test is None:  # the paper's reading: the album's photos not rated yet
                    rest = np.setdiff1d(np.arange(m), rated)
                    Xe, ye = X[rest], y[rest]
                else:
                    Xe, ye = u.X[test], u.y[test]
                b = budgets.index(n_rated)
                pam = PAM(**pam_params).fit(X[rated], y[rated])
                out[s, 0, b] = _improvement(ye, pam.predict(Xe), Xe[:, -1])
                if prior is not None:
                    model = PriorPAM(prior).fit(X[rated], y[rated])
                    out[s, 1, b] = _improvement(ye, model.predict(Xe), Xe[:, -1])
            if n_rated >= top:
                break
            (i,) = state.suggest(1)
            state.add_rating(i, y[i])
    return out


def active_curves(data: FlickrAES, features: FeatureMatrix, *, budgets: Sequence[int] = tuple(range(10, 101, 10)),
                  trials: int = 10, strategies: Sequence[str] = ACTIVE_STRATEGIES, seed: int = 0, n_jobs: int = 2,
                  pam_params: dict | None = None, w_aes: float | None = None, holdout: float = 0.0,
                  prior: TastePrior | None = None, progress: Callable[[], None] | None = None) -> dict:
    """Figure 6. holdout > 0: that fraction of each worker's images is set aside per trial, the
    strategies pick from the rest, and every budget is scored on the same held-out images.
    Every strategy's rated set is scored with PAM and (given a prior) with Prior-PAM; each
    curve's paired difference to random (same scoring model) has its standard error over users."""
    users = user_data(data, features, sorted(data.test_workers), w_aes)
    budgets = list(budgets)
    strategies = [s for s in strategies if s != "posterior" or prior is not None]
    tasks = (delayed(_active_user_trial)(u, i, t, budgets, list(strategies), seed, dict(pam_params or {}),
                                         holdout, prior)
             for i, u in enumerate(users) for t in range(trials))
    raw = np.stack(_run(tasks, n_jobs, progress)).reshape(
        len(users), trials, len(strategies), len(SCORING_MODELS), len(budgets))
    curves = {}
    rnd = strategies.index("random") if "random" in strategies else None
    for s, name in enumerate(strategies):
        for mi, model in enumerate(SCORING_MODELS):
            cell = raw[:, :, s, mi, :]
            if np.all(np.isnan(cell)):
                continue
            per_trial = np.nanmean(cell, axis=0)  # [trials, budgets]
            curve = {"strategy": name, "model": model, "mean": np.nanmean(cell, axis=(0, 1)).tolist(),
                     "std_over_trials": np.nanstd(per_trial, axis=0).tolist()}
            if rnd is not None and s != rnd:
                diff = np.nanmean(cell - raw[:, :, rnd, mi, :], axis=1)  # [users, budgets]
                curve["diff_vs_random"] = np.nanmean(diff, axis=0).tolist()
                curve["se_vs_random"] = (np.nanstd(diff, axis=0, ddof=1) / np.sqrt(diff.shape[0])).tolist()
            curves[f"{name} / {model}"] = curve
    return {"budgets": budgets, "trials": trials, "n_users": len(users), "strategies": list(strategies),
            "models": list(SCORING_MODELS), "holdout": holdout, "curves": curves, "raw": raw}


# --- Figure 4 --------------------------------------------------------------------------------
def _wc(x: np.ndarray, offsets: np.ndarray) -> float:
    rhos = [spearman_rho(x[:, i], offsets) for i in range(x.shape[1])]
    return float(np.nansum(np.abs(rhos)))


def _taste_run(real: list[UserData], fake_pool_X: np.ndarray, fake_pool_im: np.ndarray, k: int, sigma: float,
               m: int, seed: int, run: int) -> float:
    rng = np.random.default_rng([seed, k, round(sigma * 1000), run])
    wc = []
    for u in real:
        idx = rng.choice(u.y.size, size=k, replace=False)
        wc.append(_wc(u.X[idx, :-1], u.y[idx] - u.X[idx, -1]))
    for _ in range(m):
        idx = rng.choice(fake_pool_im.size, size=k, replace=False)
        score = fake_pool_im[idx] + rng.normal(0, sigma, k)
        wc.append(_wc(fake_pool_X[idx, :-1], score - fake_pool_X[idx, -1]))
    ranks = np.argsort(np.argsort(np.asarray(wc), kind="stable"), kind="stable") + 1  # low -> high
    return float(ranks[len(real):].mean())


def taste_experiment(data: FlickrAES, features: FeatureMatrix, *, ks: Sequence[int] = (10, 25, 50, 100, 150),
                     sigmas: Sequence[float] = (0.25, 0.5, 1.0), m: int = 10, runs: int = 50,
                     min_ratings: int = 150, seed: int = 0, n_jobs: int = 2,
                     progress: Callable[[], None] | None = None) -> dict:
    counts = {w: int((data.ratings.workers == w).sum()) for w in data.train_workers}
    real = user_data(data, features, [w for w, c in counts.items() if c > min_ratings])
    images, im, _, n = data.weighted_means(data.train_workers)
    pool = n >= 2
    pool_X = features.X(features.rows(images[pool]))
    tasks = (delayed(_taste_run)(real, pool_X, im[pool], k, s, m, seed, r)
             for k, s, r in itertools.product(ks, sigmas, range(runs)))
    raw = np.asarray(_run(tasks, n_jobs, progress)).reshape(len(ks), len(sigmas), runs)
    return {"ks": list(ks), "sigmas": list(sigmas), "m": m, "runs": runs, "n_real_workers": len(real),
            "n_ranked": len(real) + m, "chance_rank": (len(real) + m + 1) / 2,
            "mean_fake_rank": raw.mean(axis=2).tolist(), "std_fake_rank": raw.std(axis=2).tolist(), "raw": raw}


# --- hyperparameters, on training workers only ---------------------------------------------------
def _tune_user(u: UserData, index: int, grid: list[dict], ks: Sequence[int], repeats: int, seed: int,
               max_test: int) -> np.ndarray:
    out = np.full((len(grid), len(ks), repeats), np.nan)
    for a, k in enumerate(ks):
        rng = np.random.default_rng([seed, index, k])
        for r in range(repeats):
            perm = rng.permutation(u.y.size)
            tr, te = perm[:k], perm[k:k + max_test]
            for g, params in enumerate(grid):
                pred = PAM(**params).fit(u.X[tr], u.y[tr]).predict(u.X[te])
                out[g, a, r] = _improvement(u.y[te], pred, u.X[te, -1])
    return out


def tune_pam(data: FlickrAES, features: FeatureMatrix, grid: Sequence[dict], *, ks: Sequence[int] = (10, 100),
             n_workers: int = 40, repeats: int = 5, max_test: int = 300, min_ratings: int = 250, seed: int = 0,
             n_jobs: int = 2, progress: Callable[[], None] | None = None) -> dict:
    """Mean correlation improvement of each PAM setting on random training workers."""
    rng = np.random.default_rng(seed)
    eligible = [w for w in data.train_workers if (data.ratings.workers == w).sum() >= min_ratings]
    chosen = sorted(rng.choice(eligible, size=min(n_workers, len(eligible)), replace=False).tolist())
    users = user_data(data, features, chosen)
    grid = [dict(g) for g in grid]
    tasks = (delayed(_tune_user)(u, i, grid, tuple(ks), repeats, seed, max_test) for i, u in enumerate(users))
    raw = np.stack(_run(tasks, n_jobs, progress))  # [users, grid, ks, repeats]
    means = np.nanmean(raw, axis=(0, 3))  # [grid, ks]
    best = int(np.argmax(means.mean(axis=1)))
    return {"workers": chosen, "ks": list(ks), "grid": grid, "mean_improvement": means.tolist(),
            "best": grid[best], "best_by_k": {int(k): grid[int(np.argmax(means[:, a]))] for a, k in enumerate(ks)}}
