"""Active-PAM (Algorithm 1, section 4.2): which photos of an album a user should rate next.

State for one user's album: the visual vectors v = [w_aes * aes_feat, aes_score] (eq. 6's space),
the PAM inputs X = [x, aes_score], and the rated set R with the user's scores. Steps:

1. a seeded random set S of `n_seed` (10) photos is suggested first, in a fixed order;
2. afterwards PAM is refit on R, eq. 5 weights each rated photo by its training residual,
   w_j = 1 - |o_j - t_j| / sum_i |o_i - t_i|, and the next photo is the unrated q maximising
   eq. 6, sum_j w_j * ||v_q - v_j||.

Any rating joins R, suggested or not; re-rating a photo replaces its score and keeps its place.
`suggest(n)` with n > 1 (batch mode) returns the unrated seed photos first, then n photos chosen
greedily by eq. 6 under the current model, each pick counted as rated (with the mean eq. 5
weight) before the next, so a client can show a page of photos at once without near-duplicates.

Incremental: the distances from every album photo to each rated photo are kept as columns of a
matrix, one column computed when a photo is first rated (one [N, d] x [d] product), so a step
costs a PAM refit plus an [N, |R|] x [|R|] product, never a full distance recomputation. The
model is refit lazily when a suggestion or prediction needs it; a state rebuilt from stored
(index, score) pairs in their original order is therefore identical to the incrementally built
one (`ActivePAM.rebuild`).

Edge cases: an album smaller than the seed set only ever suggests seeds; when every residual is
zero (eq. 5 would divide by zero) or R has one photo (every weight 0), the weights are uniform,
i.e. pure diversity; ties in eq. 6 (e.g. duplicate photos) go to the lowest album index;
`suggest` returns fewer than n indices when fewer photos are unrated.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from personalize.features import pam_input, visual_vector
from personalize.pam import PAM
from personalize.rated import RatedAlbum

N_SEED = 10


def eq5_weights(residuals: np.ndarray) -> np.ndarray:
    """w_j = 1 - |r_j| / sum_i |r_i| (eq. 5); uniform when that is undefined or all zero."""
    abs_res = np.abs(np.asarray(residuals, dtype=np.float64))
    total = abs_res.sum()
    if abs_res.size == 0:
        return abs_res
    if total <= 0.0 or not np.isfinite(total):
        return np.ones_like(abs_res)
    weights = 1.0 - abs_res / total
    if not weights.any():  # a single rated photo: 1 - |r|/|r| = 0
        return np.ones_like(abs_res)
    return weights


class ActivePAM(RatedAlbum):
    """Algorithm 1 over one album. `V` [N, d] visual vectors, `X` [N, 21] = [x, aes_score].

    seed: the random seed set S and its order derive from it (the service derives it from the
    user id). seed_indices: give S explicitly instead (protocols share S between strategies).
    pam_params: keyword arguments for each refit PAM.
    """

    def __init__(self, V, X, *, seed: int = 0, n_seed: int = N_SEED,
                 seed_indices: Iterable[int] | None = None, pam_params: dict | None = None):
        self.V = np.ascontiguousarray(V, dtype=np.float64)
        self.X = np.ascontiguousarray(X, dtype=np.float64)
        if self.V.ndim != 2 or self.X.ndim != 2 or self.V.shape[0] != self.X.shape[0]:
            raise ValueError(f"V and X must be 2-d with one row per photo, got {self.V.shape} and {self.X.shape}")
        self.n_photos = self.V.shape[0]
        self.seed = seed
        self.pam_params = dict(pam_params or {})
        if seed_indices is None:
            order = np.random.default_rng(seed).permutation(self.n_photos)
            self.seed_indices = order[: min(n_seed, self.n_photos)]
        else:
            self.seed_indices = np.asarray(list(seed_indices), dtype=np.int64)
            self._check_indices(self.seed_indices)
        self._sq_norms = np.einsum("ij,ij->i", self.V, self.V)
        self._dist = np.zeros((0, self.n_photos))  # [rated, album] distances, eq. 6
        self._n_cols = 0
        self._init_ratings(self.n_photos)

    @classmethod
    def from_features(cls, aes_feat, aes_score, attributes, content, *, w_aes: float | None = None,
                      **kwargs) -> ActivePAM:
        """Build from feature-contract columns (visual_vector and pam_input of personalize.features)."""
        V = visual_vector(aes_feat, aes_score) if w_aes is None else visual_vector(aes_feat, aes_score, w_aes)
        X = np.hstack([pam_input(attributes, content), np.asarray(aes_score, dtype=np.float64).reshape(-1, 1)])
        return cls(V, X, **kwargs)

    # --- ratings ----------------------------------------------------------------------------
    def _check_indices(self, idx: np.ndarray) -> None:
        if idx.size and (idx.min() < 0 or idx.max() >= self.n_photos):
            raise IndexError(f"album index out of range [0, {self.n_photos}): {idx.tolist()}")

    def _on_new_rated(self, new: np.ndarray) -> None:
        self._append_distance_columns(new)

    def _append_distance_columns(self, new: np.ndarray) -> None:
        # stored as rows (one per rated photo) so appending writes, and eq. 6 reads, contiguous memory
        need = self._n_cols + new.size
        if need > self._dist.shape[0]:
            grown = np.empty((max(need, 2 * self._dist.shape[0], 16), self.n_photos))
            grown[: self._n_cols] = self._dist[: self._n_cols]
            self._dist = grown
        sq = self._sq_norms[None, :] + self._sq_norms[new][:, None] - 2.0 * (self.V[new] @ self.V.T)
        np.maximum(sq, 0.0, out=sq)
        sq[np.arange(new.size), new] = 0.0  # exact zero to itself despite rounding
        np.sqrt(sq, out=self._dist[self._n_cols:need])
        self._n_cols = need

    # --- model -------------------------------------------------------------------------------
    def _fit_model(self) -> PAM | None:
        """PAM fit on every rating so far; None before any rating."""
        if not self._scores:
            return None
        return PAM(**self.pam_params).fit(self.X[self.rated_indices], self.rated_scores)

    def predict(self) -> np.ndarray:
        """The user's predicted score for every album photo (the generic score before any rating)."""
        model = self.model
        return self.X[:, -1].copy() if model is None else model.predict(self.X)

    def weights(self) -> np.ndarray:
        """Eq. 5 weights of the rated photos, in rating order."""
        model = self.model
        if model is None:
            return np.zeros(0)
        rated = self.rated_indices
        return eq5_weights(model.predict(self.X[rated]) - self.rated_scores)

    def objective(self) -> np.ndarray:
        """Eq. 6 for every album photo (rated ones included; suggest masks them)."""
        if not self._scores:
            return np.zeros(self.n_photos)
        return self.weights() @ self._dist[: self._n_cols]

    # --- suggestions -------------------------------------------------------------------------
    def suggest(self, n: int = 1) -> list[int]:
        """The next n album indices to rate: unrated seed photos first, then the best by eq. 6."""
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        chosen = [int(i) for i in self.seed_indices if not self._rated_mask[i]][:n]
        if len(chosen) == n:
            return chosen
        candidates = ~self._rated_mask
        candidates[chosen] = False
        n_left = min(n - len(chosen), int(candidates.sum()))
        if n_left == 0:
            return chosen
        if not self._scores:  # no rating yet and the seeds ran out: continue the seeded order
            order = np.random.default_rng(self.seed).permutation(self.n_photos)
            return chosen + [int(i) for i in order if candidates[i]][:n_left]
        score = np.where(candidates, self.objective(), -np.inf)
        # Greedy batch: each pick joins R as if rated, with the mean eq. 5 weight (its residual is
        # unknown), before the next pick. The n best by eq. 6 alone are near-duplicates of one
        # another whenever one region of v is far from R; this is Algorithm 1's diversity
        # criterion applied within the batch. argmax returns the first maximum: ties go to the
        # lowest index.
        pending_weight = float(self.weights().mean())
        picks: list[int] = []
        for _ in range(n_left):
            q = int(np.argmax(score))
            picks.append(q)
            score[q] = -np.inf
            if len(picks) < n_left:
                score += pending_weight * self._distances_to(q)
        return chosen + picks

    def _distances_to(self, index: int) -> np.ndarray:
        sq = self._sq_norms + self._sq_norms[index] - 2.0 * (self.V @ self.V[index])
        np.maximum(sq, 0.0, out=sq)
        return np.sqrt(sq, out=sq)
