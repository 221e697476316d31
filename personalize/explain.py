"""What a personal model has learnt about its user: per-feature effects on the personal offset
(the user's "taste") and, per photo, the features that moved its score.

A personal model follows PAM's contract: predict(X) with X = [x, aes_score], x the 20 feature-
contract columns (10 attributes, then 10 content probabilities); its offset is predict(X) - aes.

Taste (`taste`): for each feature j, the average partial effect of the offset over the user's
album, times the feature's standard deviation over the album: the change in the user's score per
standard deviation of the feature. Content is a softmax, so its partial effects are taken along
the simplex (d offset / d c_k minus the row's content-weighted mean of the content gradients:
relative to the user's average content effect). Gradients are exact for PAM (its RBF expansion)
and for PriorPAM (its posterior-mean linear model in the scaled features phi(x), plus the residual
nu-SVR's RBF expansion in those features when it has one, chain rule through the scaling); any
other model is differentiated numerically (central differences of +-half a standard deviation),
so the summary is always of the model itself, never of a surrogate.

Uncertainty (`std`): for PriorPAM, the linear part's average partial effect is a linear function
A theta of the user's taste vector, so its posterior s.d. is exact: sqrt(diag(A Cov A')) with Cov
the posterior covariance of theta (`theta_cov_`), the same Gaussian that gives the model's
predictive s.d. When the residual nu-SVR is on, the s.d. of its effect (the Gaussian-process
smoother below, on the offsets the linear part leaves, its noise 1/C of theirs, and an isotropic
width in x with the residual kernel's mean squared scale, gamma_z * mean(1/x_scale^2)) is added in
quadrature. For every other model: the posterior s.d. of the same average partial effect under
a Gaussian process with the model's RBF kernel (its gamma; PAM's default for models without one),
prior variance the variance of the user's offsets and noise variance 1/C of it, given the rated
photos: large with few ratings or where the ratings do not reach, shrinking as they accumulate
(the double sum over the album runs over STD_ROWS evenly spaced album rows). `supported` is False
when the ratings cannot carry the effect: fewer than MIN_RATINGS ratings, rated photos that barely
vary in the feature (s.d. under MIN_COVERAGE of the album's), or |effect| <= 2 std.

Reasons (`reasons`): for each photo, gradient x (x - album mean) per feature, the first-order
share of each feature in the photo's offset relative to the album's average photo; the top few
by magnitude. For PAM and PriorPAM the gradient is the photo's own; for other models the album's
average partial effect.

numpy and scipy.linalg only, no fitting: the taste of a user with 100 ratings over a 1,000-photo
album is a few kernel matrices and one 100x100 Cholesky factorisation; the reasons of 1,000
candidates one kernel matrix (pam bench personalize times both).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from personalize.features import ATTRIBUTE_NAMES, N_ATTRIBUTES, N_CONTENT, PAM_INPUT_DIM
from personalize.prior import PriorPAM

# The paper's AADB attributes (section 4.1), in words a user reads.
ATTRIBUTE_WORDS: dict[str, str] = {
    "IC": "interesting content", "OE": "object emphasis", "GL": "good lighting",
    "CH": "colour harmony", "VC": "vivid colour", "DoF": "shallow depth of field",
    "RoT": "rule of thirds", "BE": "balancing elements", "RE": "repetition", "SY": "symmetry",
}
CONTENT_KEYS: tuple[str, ...] = tuple(str(k) for k in range(N_CONTENT))
FEATURE_KEYS: tuple[str, ...] = (*ATTRIBUTE_NAMES, *CONTENT_KEYS)
CONTENT = slice(N_ATTRIBUTES, N_ATTRIBUTES + N_CONTENT)

MIN_RATINGS = 5
MIN_COVERAGE = 0.25  # rated photos' s.d. of a feature, as a fraction of the album's
FALLBACK_GAMMA = 0.1  # RBF width of the uncertainty smoother for models without one (PAM's default)
FALLBACK_C = 1.0
N_REASONS = 3
STD_ROWS = 96  # album rows (evenly spaced) the uncertainty's double sum runs over


def content_names(names: list[list[str]] | None) -> list[str]:
    """Display names of the content classes: 'a, b, c' from up to three ImageNet class names per
    cluster, or 'content class k' where a cluster has none."""
    out = []
    for k in range(N_CONTENT):
        words = [w for w in (names[k] if names and k < len(names) and names[k] else []) if w]
        out.append(", ".join(words[:3]) if words else f"content class {k}")
    return out


def feature_names(content: list[list[str]] | None = None) -> list[str]:
    return [ATTRIBUTE_WORDS[a] for a in ATTRIBUTE_NAMES] + content_names(content)


@dataclass(frozen=True)
class Taste:
    """Per-feature effects (score per s.d. of the feature, content centred), in FEATURE_KEYS order."""

    effect: np.ndarray  # [20]
    std: np.ndarray  # [20]
    supported: np.ndarray  # bool [20]
    n_ratings: int
    album_mean: np.ndarray  # [20]: the reasons' baseline photo
    album_sd: np.ndarray  # [20]
    slope: np.ndarray  # [20]: average partial effect per unit of the feature (effect / sd)

    def rows(self, which: slice, names: list[str]) -> list[dict]:
        """[{key, name, effect, std, supported}] of one block, sorted by |effect| (largest first)."""
        idx = np.arange(PAM_INPUT_DIM)[which]
        order = idx[np.argsort(-np.abs(self.effect[idx]), kind="stable")]
        return [{"key": FEATURE_KEYS[j], "name": names[j], "effect": float(self.effect[j]),
                 "std": float(self.std[j]), "supported": bool(self.supported[j])} for j in order]

    def as_dict(self, content: list[list[str]] | None = None) -> dict:
        names = feature_names(content)
        return {"n_ratings": self.n_ratings, "attributes": self.rows(slice(0, N_ATTRIBUTES), names),
                "content": self.rows(CONTENT, names)}


def _x(X) -> np.ndarray:
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2 or X.shape[1] != PAM_INPUT_DIM + 1:
        raise ValueError(f"X must be [n, {PAM_INPUT_DIM + 1}] = [attributes, content, aes_score], got {X.shape}")
    return X


def _rbf_parts(model):
    """(support vectors, dual coefs, gamma) of a PAM-like RBF expansion, or None."""
    sv = getattr(model, "support_vectors_", None)
    coef = getattr(model, "dual_coef_", None)
    gamma = getattr(model, "gamma_", None)
    if sv is None or coef is None or gamma is None:
        return None
    return np.asarray(sv, dtype=np.float64), np.asarray(coef, dtype=np.float64).ravel(), float(gamma)


@dataclass(frozen=True)
class _Expansion:
    """A model's offset in closed form: w . x + sum_s coef_s exp(-gamma |z - sv_s|^2) + const,
    z = (x - shift) / scale (z = x when scale is None)."""

    w: np.ndarray | None  # [20] linear gradient, or None
    sv: np.ndarray  # [s, 20]
    coef: np.ndarray  # [s]
    gamma: float
    shift: np.ndarray | None = None
    scale: np.ndarray | None = None

    def z(self, x: np.ndarray) -> np.ndarray:
        return x if self.scale is None else (x - self.shift) / self.scale


_NO_RBF = (np.zeros((0, PAM_INPUT_DIM)), np.zeros(0), FALLBACK_GAMMA)


def _expansion(model) -> _Expansion | None:
    """The closed form of PAM and PriorPAM (None for any other model: differentiated numerically)."""
    if isinstance(model, PriorPAM) and hasattr(model, "n_features_in_"):
        prior = model.prior
        if prior is None:  # exactly PAM (or the generic score before any rating)
            pam = getattr(model, "pam_", None)
            return _Expansion(None, *(_rbf_parts(pam) if pam is not None else _NO_RBF))
        residual = getattr(model, "residual_", None)
        sv, coef, gamma = _rbf_parts(residual) if residual is not None else _NO_RBF
        return _Expansion(np.asarray(model.theta_[1:], dtype=np.float64) / prior.x_scale, sv, coef, gamma,
                          prior.x_mean, prior.x_scale)
    parts = _rbf_parts(model)
    return None if parts is None else _Expansion(None, *parts)


def _kernel(a: np.ndarray, b: np.ndarray, gamma: float) -> np.ndarray:
    sq = (np.einsum("ij,ij->i", a, a)[:, None] + np.einsum("ij,ij->i", b, b)[None, :] - 2.0 * (a @ b.T))
    np.maximum(sq, 0.0, out=sq)
    np.multiply(sq, -gamma, out=sq)
    return np.exp(sq, out=sq)


def _centre_content(grad: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Content gradients along the simplex: g_k - sum_k' c_k' g_k' per row (in place)."""
    g = grad[:, CONTENT]
    g -= np.einsum("ij,ij->i", g, x[:, CONTENT])[:, None]
    return grad


def _expansion_gradients(e: _Expansion, x: np.ndarray, kernel: np.ndarray | None = None) -> np.ndarray:
    grad = np.zeros_like(x) if e.w is None else np.repeat(e.w[None], x.shape[0], axis=0)
    if e.sv.shape[0]:
        z = e.z(x)
        k = _kernel(z, e.sv, e.gamma) if kernel is None else kernel
        g = -2.0 * e.gamma * ((k @ e.coef)[:, None] * z - k @ (e.coef[:, None] * e.sv))
        grad += g if e.scale is None else g / e.scale
    return _centre_content(grad, x)


def row_gradients(model, X, sd: np.ndarray | None = None, kernel: np.ndarray | None = None) -> np.ndarray:
    """d offset / d x per row of X [n, 21] -> [n, 20], content centred. PAM and PriorPAM
    analytically; others by central differences of +-sd/2 (sd: the album's s.d. per feature).
    `kernel`: PAM's RBF kernel of X's rows against its support vectors, when the caller has it."""
    X = _x(X)
    x = X[:, :-1]
    e = _expansion(model)
    if e is not None:
        return _expansion_gradients(e, x, kernel if e.scale is None else None)
    if sd is None:
        sd = x.std(0)
    h = np.where(sd > 0, sd / 2, 1e-3)
    n, d = x.shape
    stacked = np.repeat(X[None], 2 * d, axis=0)  # [2d, n, 21]
    for j in range(d):
        stacked[2 * j, :, j] += h[j]
        stacked[2 * j + 1, :, j] -= h[j]
    pred = np.asarray(model.predict(stacked.reshape(2 * d * n, -1)), dtype=np.float64).reshape(2 * d, n)
    grad = ((pred[0::2] - pred[1::2]) / (2 * h[:, None])).T
    return _centre_content(grad, x)


def _linear_effect_std(model: PriorPAM, content_mean: np.ndarray) -> np.ndarray:
    """Posterior s.d. (per unit of each feature) of the linear part's average partial effect:
    slope = A theta, content rows along the simplex (e_k - the album's mean content)."""
    scale = model.prior.x_scale
    A = np.zeros((PAM_INPUT_DIM, PAM_INPUT_DIM + 1))
    A[np.arange(N_ATTRIBUTES), 1 + np.arange(N_ATTRIBUTES)] = 1.0 / scale[:N_ATTRIBUTES]
    A[CONTENT, 1 + N_ATTRIBUTES:] = (np.eye(N_CONTENT) - content_mean[None, :]) / scale[None, CONTENT]
    return np.sqrt(np.maximum(np.einsum("ij,jk,ik->i", A, model.theta_cov_, A), 0.0))


def _posterior_std(x_sub: np.ndarray, kar_sub: np.ndarray, krr: np.ndarray, lam: float, gamma: float,
                   x_rated: np.ndarray, prior_var: float) -> np.ndarray:
    """Posterior s.d. (per unit of each feature) of the average partial effect over the album rows
    x_sub, under a Gaussian process with the model's RBF kernel times prior_var and noise
    lam * prior_var, given the rated photos x_rated (module docstring). The partial effect of
    row i is taken along e_j for an attribute and along e_k - c_i (the simplex) for content k."""
    from scipy.linalg import cho_factor, cho_solve

    m, n = x_sub.shape[0], x_rated.shape[0]
    g2 = 2.0 * gamma
    # d[s, j] = mean_i u_ij . d k(x_i, x_s) / d x_i  (covariance of the effect with f(x_s))
    d = -g2 * (kar_sub.T @ x_sub - kar_sub.sum(0)[:, None] * x_rated) / m
    c_sub, c_rated = x_sub[:, CONTENT], x_rated[:, CONTENT]
    q = np.einsum("ij,ij->i", c_sub, c_sub)
    d[:, CONTENT] += (g2 * (kar_sub.T @ q - np.einsum("sj,sj->s", kar_sub.T @ c_sub, c_rated)) / m)[:, None]
    # prior[j] = mean_{i,i'} u_ij^T (d^2 k(x_i, x_i') / dx_i dx_i') u_i'j
    kss = _kernel(x_sub, x_sub, gamma)
    k1 = kss.sum(1)
    kx = kss @ x_sub
    sq = 2.0 * (k1 @ (x_sub * x_sub) - np.einsum("ij,ij->j", x_sub, kx))  # sum k (x_ij - x_i'j)^2
    prior = g2 * kss.sum() - g2 * g2 * sq
    # content: u_i = e_k - c_i, so u_i.u_i' = 1 - c_ik - c_i'k + G_ii' (G = C C^T, q_i = G_ii) and
    # u_i.(x_i - x_i') u_i'.(x_i - x_i') = (dc + P)(dc - P^T), dc = c_ik - c_i'k, P = G - q_i
    G = c_sub @ c_sub.T
    P = G - q[:, None]
    R = kss * (P - P.T)
    uu = kss.sum() - 2.0 * (k1 @ c_sub) + (kss * G).sum()
    dd = sq[CONTENT] + c_sub.T @ (R.sum(1) - R.sum(0)) - (kss * P * P.T).sum()
    prior[CONTENT] = g2 * uu - g2 * g2 * dd
    prior /= m * m
    try:
        factor = cho_factor(krr + lam * np.eye(n), lower=True, check_finite=False)
    except np.linalg.LinAlgError:
        return np.full(PAM_INPUT_DIM, np.inf)
    explained = np.einsum("sj,sj->j", d, cho_solve(factor, d, check_finite=False))
    return np.sqrt(prior_var * np.maximum(prior - explained, 0.0))


def _smoother_std(x_album: np.ndarray, x_rated: np.ndarray, offsets: np.ndarray, gamma: float, lam: float,
                  kar: np.ndarray | None = None) -> np.ndarray:
    """The Gaussian-process smoother's posterior s.d. per unit of each feature (module docstring)."""
    if kar is None:
        kar = _kernel(x_album, x_rated, gamma)
    sub = np.unique(np.linspace(0, x_album.shape[0] - 1, min(x_album.shape[0], STD_ROWS)).astype(np.int64))
    return _posterior_std(x_album[sub], kar[sub], _kernel(x_rated, x_rated, gamma), lam, gamma, x_rated,
                          float(offsets.var(ddof=1)))


def taste(model, X_album, X_rated, y_rated) -> Taste:
    """The user's taste from a fitted personal model (see the module docstring).

    X_album [N, 21]: the user's album (the photos the summary is over; the rated ones when empty);
    X_rated [n, 21], y_rated [n]: the ratings the model was fit on (for the uncertainty)."""
    X_rated = _x(X_rated)
    y_rated = np.asarray(y_rated, dtype=np.float64).ravel()
    X_album = _x(X_album) if np.asarray(X_album).size else X_rated
    if X_rated.shape[0] != y_rated.shape[0]:
        raise ValueError(f"{X_rated.shape[0]} rated rows but {y_rated.shape[0]} scores")
    n = y_rated.shape[0]
    x_album = X_album[:, :-1]
    if x_album.shape[0]:
        mean, sd = x_album.mean(0), x_album.std(0)
    else:
        mean, sd = np.zeros(PAM_INPUT_DIM), np.zeros(PAM_INPUT_DIM)
    has_spread = sd > 1e-12
    if n == 0 or X_album.shape[0] == 0:
        zeros = np.zeros(PAM_INPUT_DIM)
        return Taste(zeros, np.full(PAM_INPUT_DIM, np.inf), np.zeros(PAM_INPUT_DIM, bool), n, mean, sd, zeros)
    x_rated = X_rated[:, :-1]
    if isinstance(model, PriorPAM) and model.prior is None and getattr(model, "pam_", None) is not None:
        model = model.pam_  # no prior: exactly PAM
    if isinstance(model, PriorPAM) and model.prior is not None and hasattr(model, "theta_"):
        slope = row_gradients(model, X_album, sd).mean(0)
        std = _linear_effect_std(model, mean[CONTENT]) * sd
        residual = getattr(model, "residual_", None)
        if residual is not None and n >= 2:
            prior = model.prior
            left = y_rated - (X_rated[:, -1] + prior.phi(x_rated) @ model.theta_)
            gamma = float(residual.gamma_) * float(np.mean(1.0 / prior.x_scale**2))
            std = np.hypot(std, _smoother_std(x_album, x_rated, left, gamma, 1.0 / float(residual.C)) * sd)
    else:
        parts = _rbf_parts(model)
        gamma = parts[2] if parts is not None else FALLBACK_GAMMA
        kar = _kernel(x_album, x_rated, gamma)
        kernel = None
        support = getattr(model, "support_", None)
        if (parts is not None and support is not None and len(support) == parts[0].shape[0]
                and (len(support) == 0 or support.max() < n) and np.array_equal(x_rated[support], parts[0])):
            kernel = kar[:, support]  # PAM fit on these rows: its support vectors are rated photos
        slope = row_gradients(model, X_album, sd, kernel).mean(0)
        if n >= 2:
            lam = 1.0 / float(getattr(model, "C", FALLBACK_C) or FALLBACK_C)
            std = _smoother_std(x_album, x_rated, y_rated - X_rated[:, -1], gamma, lam, kar) * sd
        else:
            std = np.full(PAM_INPUT_DIM, np.inf)
    effect = np.where(has_spread, slope * sd, 0.0)
    coverage = x_rated.std(0) >= MIN_COVERAGE * sd
    supported = (n >= MIN_RATINGS) & has_spread & coverage & (np.abs(effect) > 2 * std)
    return Taste(effect, std, supported, n, mean, sd, slope)


def contributions(model, taste_: Taste, X) -> np.ndarray:
    """[n, 20]: each feature's first-order share of each photo's offset, relative to the album's
    average photo (gradient x (x - album mean)); content gradients centred."""
    X = _x(X)
    dx = X[:, :-1] - taste_.album_mean
    e = _expansion(model)
    if e is not None:
        return _expansion_gradients(e, X[:, :-1]) * dx
    return taste_.slope * dx


def top_reasons(model, taste_: Taste, X, k: int = N_REASONS) -> tuple[np.ndarray, np.ndarray]:
    """Per photo (rows of X [n, 21]): the k features that contributed most to its personal offset,
    as (feature indices [n, k] into FEATURE_KEYS, contributions [n, k] in score units), largest
    |contribution| first. Arrays, so a 1,000-candidate reply needs no Python loop."""
    contrib = contributions(model, taste_, X)
    k = max(0, min(k, PAM_INPUT_DIM))
    n = contrib.shape[0]
    if n == 0 or k == 0:
        return np.zeros((n, 0), np.int64), np.zeros((n, 0))
    mag = np.abs(contrib)
    top = np.argpartition(-mag, k - 1, axis=1)[:, :k] if k < PAM_INPUT_DIM else np.tile(np.arange(k), (n, 1))
    top.sort(axis=1)  # then a stable sort by |contribution|: ties keep the feature order
    top = np.take_along_axis(top, np.argsort(-np.take_along_axis(mag, top, 1), axis=1, kind="stable"), 1)
    return top, np.take_along_axis(contrib, top, 1)


def reasons(model, taste_: Taste, X, k: int = N_REASONS, content: list[list[str]] | None = None
            ) -> list[list[dict]]:
    """top_reasons as [[{key, name, contribution}]] per photo (for reports and small replies)."""
    top, vals = top_reasons(model, taste_, X, k)
    names = feature_names(content)
    return [[{"key": FEATURE_KEYS[j], "name": names[j], "contribution": v} for j, v in zip(r, w, strict=True)]
            for r, w in zip(top.tolist(), vals.tolist(), strict=True)]


def average_partial_effect(gradients, x) -> np.ndarray:
    """Per-row gradients [n, 20] of any offset function with respect to the raw features x [n, 20]
    (attributes, content probabilities) -> the effects in `taste().effect`'s units: content
    centred along the simplex, averaged over the rows, times each feature's s.d. over them."""
    x = np.asarray(x, dtype=np.float64)
    grad = _centre_content(np.array(gradients, dtype=np.float64), x)
    return grad.mean(0) * x.std(0)


def true_taste(attribute_weights, content_weights, X_album) -> np.ndarray:
    """A linear taste offset = a . attribute_weights + c . content_weights in the same units as
    `taste().effect` (score per album s.d., content centred): the reference a recovered taste is
    compared with (for the simulated panel, its worker's u and z; the scale is irrelevant to rank
    correlation)."""
    X_album = _x(X_album)
    x = X_album[:, :-1]
    w = np.concatenate([np.asarray(attribute_weights, np.float64).ravel(),
                        np.asarray(content_weights, np.float64).ravel()])
    return average_partial_effect(np.repeat(w[None], x.shape[0], axis=0), x)
