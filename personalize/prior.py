"""A population taste prior, learned from many raters, and the personal model built on it.

The prior is an empirical-Bayes hierarchical model of the offsets r = y - aes_score:

    r_ij = phi(x_i) . theta_j + e_ij,   theta_j ~ N(mu, Sigma),   e_ij ~ N(0, noise_var)

with phi(x) = [1, z], z = (x - x_mean) / x_scale the 20 features standardized with statistics of
the training raters' photos. mu is the population's mean offset function (what everyone shares:
e.g. the generic network's systematic error), Sigma the covariance of the raters' tastes (full, or
a low-rank taste basis plus an isotropic floor), noise_var what no taste explains. `fit_prior`
estimates (mu, Sigma, noise_var) by EM over the training raters, then chooses among its variants
(full / low-rank covariance; with or without a nu-SVR on what the prior leaves, and its C) by
cross-validation over training raters (folds of raters: a rater is never scored by a prior that saw
them). The same folds score PAM on the same splits: `beats_pam` says whether the chosen prior's
model beat PAM on held-out raters (the mean over the cross-validated k of the paired difference in
improvement), and the service serves Prior-PAM only when it did not lose (True, or None when too
few ratings per rater to measure). A prior holds plain arrays and is stored as npz (no pickle) beside the feature version whose
features it standardizes.

`PriorPAM` (a scikit-learn regressor, PAM's X = [x, aes_score] convention) is the personal model:
the posterior of theta_j given the user's ratings (Gaussian, closed form) plus, from
`prior.residual_min_ratings` ratings on, PAM's nu-SVR on what the posterior mean leaves.
`predict(X, return_std=True)` also returns the posterior s.d. of each predicted score. With
`prior=None` it is exactly PAM. With no rating, the prediction is the generic score plus the
population offset phi(x) . mu when the prior measured that to beat the generic score on held-out
raters (`prior.use_population_offset`), the generic score otherwise.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from sklearn.base import BaseEstimator, RegressorMixin
from sklearn.utils.validation import check_is_fitted, validate_data

from personalize.metrics import spearman_rho
from personalize.pam import DEFAULT_C, DEFAULT_GAMMA, DEFAULT_NU, PAM

FORMAT = "pam-prior/1"
PRIOR_FILE = "_taste_prior.npz"  # beside a feature version's parts (engines skip "_" names)
EM_ITERATIONS = 60
# the variants cross-validation chooses among
RANKS = (None, 8, 4)  # None: full covariance; r: the top-r taste directions + an isotropic floor
RESIDUAL_C = (None, 0.1, 1.0)  # None: no residual nu-SVR; else its (per-sample, libsvm) C
RESIDUAL_NU = 0.5
CV_KS = (10, 30, 100)


@dataclass
class TastePrior:
    """(mu, Sigma, noise_var) over phi(x) = [1, standardized x], with its feature statistics."""

    x_mean: np.ndarray  # [d]
    x_scale: np.ndarray  # [d]
    mu: np.ndarray  # [d + 1]
    cov: np.ndarray  # [d + 1, d + 1]
    noise_var: float
    rank: int | None = None
    residual_C: float | None = None  # nu-SVR on what the posterior leaves (None: off)
    residual_min_ratings: int = 0  # ... from this many ratings on
    use_population_offset: bool = False
    # cross-validated over training raters: does Prior-PAM beat PAM (paired, held-out raters)?
    # None when it was not measured (too few ratings per rater, or choose=False)
    beats_pam: bool | None = None
    info: dict = field(default_factory=dict)  # how it was chosen (CV figures), JSON-safe

    def __post_init__(self):
        self.cov_inv = np.linalg.inv(self.cov)
        self.cov_inv_mu = self.cov_inv @ self.mu

    @property
    def n_features(self) -> int:
        return self.x_mean.shape[0]

    @property
    def residual_gamma(self) -> float:
        return 1.0 / self.n_features  # unit-variance features: scikit-learn's "scale"

    def phi(self, x: np.ndarray) -> np.ndarray:
        z = (np.asarray(x, dtype=np.float64) - self.x_mean) / self.x_scale
        return np.hstack([np.ones((z.shape[0], 1)), z])

    def posterior(self, phi: np.ndarray, offsets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(mean, covariance) of a user's theta given their ratings' phi rows and offsets."""
        precision = self.cov_inv + phi.T @ phi / self.noise_var
        chol = np.linalg.cholesky(precision)
        cov = np.linalg.inv(chol).T @ np.linalg.inv(chol)
        mean = cov @ (self.cov_inv_mu + phi.T @ offsets / self.noise_var)
        return mean, cov

    # --- storage: npz of plain arrays + one JSON string --------------------------------------
    def to_arrays(self) -> dict[str, np.ndarray]:
        meta = {"format": FORMAT, "noise_var": self.noise_var, "rank": self.rank, "residual_C": self.residual_C,
                "residual_min_ratings": self.residual_min_ratings,
                "use_population_offset": self.use_population_offset, "beats_pam": self.beats_pam,
                "info": self.info}
        return {"x_mean": self.x_mean, "x_scale": self.x_scale, "mu": self.mu, "cov": self.cov,
                "meta": np.str_(json.dumps(meta, default=float))}

    def save(self, path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp.npz")
        np.savez(tmp, **self.to_arrays())
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path) -> TastePrior:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            if meta.get("format") != FORMAT:
                raise ValueError(f"{path}: not a taste prior (format {meta.get('format')!r}, want {FORMAT!r})")
            arrays = {k: np.asarray(z[k], dtype=np.float64) for k in ("x_mean", "x_scale", "mu", "cov")}
        d = arrays["x_mean"].shape[0]
        if arrays["x_scale"].shape != (d,) or arrays["mu"].shape != (d + 1,) or arrays["cov"].shape != (d + 1, d + 1):
            raise ValueError(f"{path}: inconsistent shapes {[a.shape for a in arrays.values()]}")
        return cls(**arrays, noise_var=float(meta["noise_var"]), rank=meta["rank"], residual_C=meta["residual_C"],
                   residual_min_ratings=int(meta["residual_min_ratings"]),
                   use_population_offset=bool(meta["use_population_offset"]), beats_pam=meta.get("beats_pam"),
                   info=meta.get("info", {}))


# --- the personal model ---------------------------------------------------------------------------
class PriorPAM(RegressorMixin, BaseEstimator):
    """The personal model: posterior under a population taste prior (+ PAM's nu-SVR on what it
    leaves). X = [x, aes_score] as for PAM; with prior=None it is exactly PAM(nu, C, gamma, tol).

    nu, C, gamma, tol: PAM's, used when prior is None. With a prior, the residual nu-SVR takes
    nu=0.5, C=prior.residual_C (libsvm's C is per sample: eq. 3's C is this times k) and
    gamma=1/d on the standardized features.
    """

    def __init__(self, prior: TastePrior | None = None, nu: float = DEFAULT_NU, C: float = DEFAULT_C,
                 gamma: float | str = DEFAULT_GAMMA, tol: float = 1e-3):
        self.prior = prior
        self.nu = nu
        self.C = C
        self.gamma = gamma
        self.tol = tol

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.regressor_tags.poor_score = True  # shrinks towards the generic score, as PAM does
        return tags

    def fit(self, X, y):
        X, y = validate_data(self, X, y, y_numeric=True, dtype=np.float64)
        prior = self.prior
        if prior is None:
            self.pam_ = PAM(nu=self.nu, C=self.C, gamma=self.gamma, tol=self.tol).fit(X, y)
            return self
        if X.shape[1] - 1 != prior.n_features:
            raise ValueError(f"X has {X.shape[1] - 1} features but the prior was fit on {prior.n_features}")
        phi = prior.phi(X[:, :-1])
        self.theta_, self.theta_cov_ = prior.posterior(phi, y - X[:, -1])
        self.residual_ = None
        if prior.residual_C is not None and X.shape[0] >= max(prior.residual_min_ratings, 2):
            Xr = np.hstack([phi[:, 1:], (X[:, -1] + phi @ self.theta_)[:, None]])
            self.residual_ = PAM(nu=RESIDUAL_NU, C=prior.residual_C, gamma=prior.residual_gamma,
                                 tol=self.tol).fit(Xr, y)
        return self

    def fit_empty(self, n_features: int) -> PriorPAM:
        """The model of a user with no rating yet (population offset or generic score)."""
        self.n_features_in_ = n_features + 1
        prior = self.prior
        if prior is None:
            self.pam_ = None
            return self
        self.theta_ = prior.mu.copy() if prior.use_population_offset else np.zeros_like(prior.mu)
        self.theta_cov_ = prior.cov.copy()
        self.residual_ = None
        return self

    def predict(self, X, return_std: bool = False):
        """The user's predicted scores; with return_std, also the posterior s.d. of each (NaN
        without a prior: PAM has no predictive distribution)."""
        check_is_fitted(self, "n_features_in_")
        X = validate_data(self, X, reset=False, dtype=np.float64)
        if self.prior is None:
            mean = X[:, -1].copy() if self.pam_ is None else self.pam_.predict(X)
            return (mean, np.full(X.shape[0], np.nan)) if return_std else mean
        phi = self.prior.phi(X[:, :-1])
        mean = X[:, -1] + phi @ self.theta_
        if self.residual_ is not None:
            mean = self.residual_.predict(np.hstack([phi[:, 1:], mean[:, None]]))
        if not return_std:
            return mean
        var = np.einsum("ij,jk,ik->i", phi, self.theta_cov_, phi)
        return mean, np.sqrt(np.maximum(var, 0.0))


# --- fitting the prior -------------------------------------------------------------------------------
@dataclass
class RaterData:
    """One rater's ratings: X = [x, aes_score] rows and scores."""

    X: np.ndarray
    y: np.ndarray


def _stats(prior_x_mean, prior_x_scale, raters: Sequence[RaterData]):
    A, b, c, n = [], [], [], []
    for r in raters:
        z = (r.X[:, :-1] - prior_x_mean) / prior_x_scale
        phi = np.hstack([np.ones((z.shape[0], 1)), z])
        off = r.y - r.X[:, -1]
        A.append(phi.T @ phi)
        b.append(phi.T @ off)
        c.append(off @ off)
        n.append(off.size)
    return np.asarray(A), np.asarray(b), np.asarray(c), np.asarray(n)


def em_prior(A: np.ndarray, b: np.ndarray, c: np.ndarray, n: np.ndarray,
             iterations: int = EM_ITERATIONS) -> tuple[np.ndarray, np.ndarray, float]:
    """(mu, Sigma, noise_var) maximizing the marginal likelihood of the raters' offsets (EM)."""
    d = A.shape[1]
    mu = np.zeros(d)
    cov = 0.1 * np.eye(d)
    s2 = float(c.sum() / n.sum())
    for _ in range(iterations):
        cov_inv = np.linalg.inv(cov)
        S = np.linalg.inv(cov_inv[None] + A / s2)  # [J, d, d]
        m = np.einsum("jkl,jl->jk", S, (cov_inv @ mu)[None] + b / s2)
        mu = m.mean(0)
        dev = m - mu
        cov = S.mean(0) + dev.T @ dev / m.shape[0] + 1e-8 * np.eye(d)
        second = S + np.einsum("jk,jl->jkl", m, m)
        s2 = float((c - 2 * np.einsum("jk,jk->j", m, b) + np.einsum("jkl,jkl->j", A, second)).sum() / n.sum())
    return mu, cov, s2


def low_rank(cov: np.ndarray, rank: int | None) -> np.ndarray:
    """The top-`rank` taste directions of cov plus an isotropic floor (their mean remaining
    variance, as probabilistic PCA); the intercept's variance (index 0) is kept."""
    if rank is None or rank >= cov.shape[0] - 1:
        return cov
    vals, vecs = np.linalg.eigh(cov)
    vals, vecs = vals[::-1], vecs[:, ::-1]
    floor = float(vals[rank:].mean())
    return (vecs[:, :rank] * (vals[:rank] - floor)) @ vecs[:, :rank].T + floor * np.eye(cov.shape[0])


def feature_statistics(X_images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(X_images, dtype=np.float64)[:, :-1]
    sd = x.std(0)
    return x.mean(0), np.where(sd > 1e-12, sd, 1.0)


def _improvement(y, pred, generic) -> float:
    return spearman_rho(y, pred) - spearman_rho(y, generic)


def fit_prior(raters: Sequence[RaterData], X_images: np.ndarray | None = None, *, folds: int = 5,
              ks: Sequence[int] = CV_KS, repeats: int = 2, max_test: int = 300, min_cv_ratings: int = 150,
              seed: int = 0, choose: bool = True) -> TastePrior:
    """Fit the prior on training raters and choose its variant by cross-validation over raters.

    raters: each training rater's X = [x, aes_score] and scores. X_images: the rated photos'
    rows (unique) for the feature statistics; default: every rater's rows stacked. choose=False
    skips the cross-validation (full covariance, no residual SVR, population offset on).
    """
    raters = [RaterData(np.asarray(r.X, dtype=np.float64), np.asarray(r.y, dtype=np.float64)) for r in raters]
    if len(raters) < 2:
        raise ValueError(f"a taste prior needs at least 2 training raters, got {len(raters)}")
    x_mean, x_scale = feature_statistics(np.vstack([r.X for r in raters]) if X_images is None else X_images)
    A, b, c, n = _stats(x_mean, x_scale, raters)
    mu, cov, s2 = em_prior(A, b, c, n)
    prior = TastePrior(x_mean, x_scale, mu, cov, s2, use_population_offset=True)
    if not choose:
        return prior
    return _choose(prior, raters, A, b, c, n, folds=folds, ks=ks, repeats=repeats, max_test=max_test,
                   min_cv_ratings=min_cv_ratings, seed=seed)


def _choose(full: TastePrior, raters, A, b, c, n, *, folds, ks, repeats, max_test, min_cv_ratings, seed) -> TastePrior:
    # small panels (a demo's raters rate ~40 photos): score whoever has a median rater's ratings
    min_cv_ratings = int(min(min_cv_ratings, np.median(n)))
    ks = tuple(k for k in ks if k + 20 <= min_cv_ratings)
    folds = min(folds, len(raters))
    if not ks or folds < 2:
        full.info = {"cv": None, "note": f"too few ratings per rater to cross-validate (median {int(np.median(n))})"}
        return full
    rng = np.random.default_rng(seed)
    fold_of = rng.permutation(len(raters)) % folds
    variants = [(rank, C) for rank in RANKS for C in RESIDUAL_C]
    gains = {v: {k: [] for k in ks} for v in variants}  # per held-out rater, mean over repeats
    pam_gains = {k: [] for k in ks}  # PAM on the same splits: the comparison that decides serving
    zero = []  # population offset vs generic, per held-out rater
    for f in range(folds):
        train = fold_of != f
        mu, cov, s2 = em_prior(A[train], b[train], c[train], n[train])
        priors = {rank: TastePrior(full.x_mean, full.x_scale, mu, low_rank(cov, rank), s2) for rank in RANKS}
        for j in np.flatnonzero(~train):
            r = raters[j]
            if r.y.size < min_cv_ratings:
                continue
            phi_all = priors[None].phi(r.X[:, :-1])
            zero.append(_improvement(r.y, r.X[:, -1] + phi_all @ mu, r.X[:, -1]))
            for k in ks:
                if r.y.size < k + 20:
                    continue
                per = {v: [] for v in variants}
                per_pam = []
                for _ in range(repeats):
                    perm = rng.permutation(r.y.size)
                    tr, te = perm[:k], perm[k:k + max_test]
                    per_pam.append(_improvement(r.y[te], PAM().fit(r.X[tr], r.y[tr]).predict(r.X[te]), r.X[te, -1]))
                    for rank, prior in priors.items():
                        for C in RESIDUAL_C:
                            prior.residual_C, prior.residual_min_ratings = C, 0
                            pred = PriorPAM(prior).fit(r.X[tr], r.y[tr]).predict(r.X[te])
                            per[rank, C].append(_improvement(r.y[te], pred, r.X[te, -1]))
                for v in variants:
                    gains[v][k].append(float(np.nanmean(per[v])))
                pam_gains[k].append(float(np.nanmean(per_pam)))
    table = {v: {k: float(np.nanmean(g)) if g else float("nan") for k, g in by_k.items()} for v, by_k in gains.items()}
    # the covariance: best mean over ks without the residual SVR; the residual SVR: per k, kept
    # from the smallest k on from which it helps at every larger k
    rank = max(RANKS, key=lambda r: np.nanmean([table[r, None][k] for k in ks]))
    best_C, min_ratings = None, 0
    for i, k in enumerate(ks):
        helps = [C for C in RESIDUAL_C[1:] if all(table[rank, C][kk] > table[rank, None][kk] for kk in ks[i:])]
        if helps:
            best_C = max(helps, key=lambda C: np.nanmean([table[rank, C][kk] for kk in ks[i:]]))
            min_ratings = k if i else 0
            break
    vs_pam = {}
    for k in ks:
        diff = np.asarray(gains[rank, best_C if best_C is not None and k >= min_ratings else None][k]) - pam_gains[k]
        diff = diff[np.isfinite(diff)]
        if diff.size:
            vs_pam[str(k)] = {"mean": float(diff.mean()), "se": float(diff.std(ddof=1) / np.sqrt(diff.size))
                              if diff.size > 1 else float("nan"), "raters": int(diff.size)}
    beats_pam = bool(np.mean([v["mean"] for v in vs_pam.values()]) > 0) if vs_pam else None
    zero_gain = float(np.nanmean(zero)) if zero else float("nan")
    zero_se = float(np.nanstd(zero) / np.sqrt(max(1, np.sum(np.isfinite(zero))))) if zero else float("nan")
    info = {"cv": {"folds": folds, "ks": list(ks), "repeats": repeats, "raters_scored": len(zero),
                   "improvement": [{"rank": v[0], "residual_C": v[1], **{str(k): table[v][k] for k in ks}}
                                   for v in variants]},
            "zero_ratings": {"population_offset_gain": zero_gain, "se": zero_se},
            "vs_pam": vs_pam}
    cov = low_rank(full.cov, rank)
    return TastePrior(full.x_mean, full.x_scale, full.mu, cov, full.noise_var, rank=rank, residual_C=best_C,
                      residual_min_ratings=min_ratings, use_population_offset=bool(zero_gain > 2 * zero_se),
                      beats_pam=beats_pam, info=info)


def load_prior(path) -> TastePrior | None:
    """The prior stored at `path` (serving: FeatureTable(root).version(v).sidecar_path(PRIOR_FILE)),
    or None when that version has none."""
    path = Path(path)
    return TastePrior.load(path) if path.is_file() else None
