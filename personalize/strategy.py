"""Which photos a user should rate next, chosen on the posterior of a population taste prior.

The user's offsets are phi(x) . theta with theta ~ N(m, S) given the ratings so far
(personalize.prior). A rating of photo q, with noise variance s2, shrinks S to
S - S phi_q phi_q' S / (phi_q' S phi_q + s2). What decides the album's ranking is the spread of the
predicted scores around their album mean, so the criterion is the expected reduction of the
posterior variance of the centred predictions summed over the album:

    gain(q) = phi_q' S G S phi_q / (phi_q' S phi_q + s2),    G = sum_i (phi_i - phi_bar)(phi_i - phi_bar)'

times the probability that the rating is not clipped by the 1-5 scale (a rating of 1 or 5 only
says the latent score is beyond 1.5 or 4.5, so it tells less): P(1.5 < y_q < 4.5) under the
predictive N(prediction_q, phi_q' S phi_q + s2). This is expected variance reduction (V-optimal
design) on the quantity the user sees; it needs no seed set (it works from the first rating).

Batch mode (`suggest(n)`) conditions on the pending picks: after each pick S is updated as if the
photo were rated (the update does not depend on the score), so a page of suggestions spreads over
the directions of taste still unknown. A step costs two [N, d] x [d, d] products (d = 21).

`PosteriorStrategy` has ActivePAM's interface (add_rating, add_ratings, suggest, model, predict,
rated_indices, rated_scores, ratings, rebuild: the rating bookkeeping is personalize.rated's,
shared by both), so the service and the protocols use either.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from scipy.special import ndtr

from personalize.prior import PriorPAM, TastePrior
from personalize.rated import RatedAlbum

LOW, HIGH = 1.5, 4.5  # latent scores outside round to the scale's ends


class PosteriorStrategy(RatedAlbum):
    """The posterior rating strategy over one album. X [N, d + 1] = [x, aes_score]; `prior` a
    TastePrior; `V` is accepted (and ignored) for ActivePAM's signature. seed_indices: photos to
    suggest first (the protocols share a random start between strategies); none by default."""

    def __init__(self, V=None, X=None, *, prior: TastePrior, seed: int = 0,
                 seed_indices: Iterable[int] | None = None, pam_params: dict | None = None):
        if X is None:
            raise ValueError("X is required")
        self.X = np.ascontiguousarray(X, dtype=np.float64)
        if self.X.ndim != 2 or self.X.shape[1] - 1 != prior.n_features:
            raise ValueError(f"X must be [N, {prior.n_features + 1}], got {self.X.shape}")
        self.prior = prior
        self._init_ratings(self.X.shape[0])
        self.seed = seed
        self.seed_indices = np.asarray([] if seed_indices is None else list(seed_indices), dtype=np.int64)
        if self.seed_indices.size and (self.seed_indices.min() < 0 or self.seed_indices.max() >= self.n_photos):
            raise IndexError(f"seed index out of range [0, {self.n_photos})")
        self.phi = prior.phi(self.X[:, :-1])
        centred = self.phi - self.phi.mean(0)
        self.G = centred.T @ centred

    # --- model ---------------------------------------------------------------------------------------
    def _fit_model(self) -> PriorPAM:
        """PriorPAM on every rating so far (the prior's zero-rating model before any)."""
        model = PriorPAM(self.prior)
        if self._scores:
            return model.fit(self.X[self.rated_indices], self.rated_scores)
        return model.fit_empty(self.prior.n_features)

    def predict(self, return_std: bool = False):
        return self.model.predict(self.X, return_std=return_std)

    def gains(self, cov: np.ndarray | None = None, mean: np.ndarray | None = None) -> np.ndarray:
        """The criterion for every album photo under posterior covariance `cov` (default: now)."""
        model = self.model
        S = model.theta_cov_ if cov is None else cov
        pred = self.X[:, -1] + self.phi @ model.theta_ if mean is None else mean
        T = self.phi @ S  # [N, d]
        v = np.einsum("ij,ij->i", T, self.phi)
        u = np.einsum("ij,ij->i", T @ self.G, T)
        total = v + self.prior.noise_var
        sd = np.sqrt(total)
        inside = ndtr((HIGH - pred) / sd) - ndtr((LOW - pred) / sd)
        return inside * u / total

    def suggest(self, n: int = 1) -> list[int]:
        """The next n album indices to rate: unrated seed photos first, then by the criterion,
        each pick conditioned on as pending."""
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        chosen = [int(i) for i in self.seed_indices if not self._rated_mask[i]][:n]
        candidates = ~self._rated_mask
        candidates[chosen] = False
        n_left = min(n - len(chosen), int(candidates.sum()))
        if n_left <= 0:
            return chosen
        model = self.model
        S = model.theta_cov_.copy()
        pred = self.X[:, -1] + self.phi @ model.theta_
        for p in chosen:
            S = _condition(S, self.phi[p], self.prior.noise_var)
        picks: list[int] = []
        for _ in range(n_left):
            score = np.where(candidates, self.gains(S, pred), -np.inf)
            q = int(np.argmax(score))
            picks.append(q)
            candidates[q] = False
            if len(picks) < n_left:
                S = _condition(S, self.phi[q], self.prior.noise_var)
        return chosen + picks


def _condition(S: np.ndarray, phi_q: np.ndarray, noise_var: float) -> np.ndarray:
    s = S @ phi_q
    return S - np.outer(s, s) / (phi_q @ s + noise_var)
