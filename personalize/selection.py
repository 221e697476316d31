"""Active-learning baselines of Figure 6, with ActivePAM's interface (add_rating, suggest, model).

All start from the same seeded random set as Active-PAM (the protocol passes seed_indices), then:
- Random: the next photo of a seeded random order.
- Greedy (GSx): the unrated photo whose nearest rated photo is farthest, in the regressor's input
  space x.
- MCAL (Demir & Bruzzone's multiple criteria for SVR, as the paper summarizes it): cluster the
  album in x with k-means; clusters holding a rated photo that is not a support vector of the
  current PAM are irrelevant (their photos would fall inside the tube); among the rest, the
  cluster with the most unrated photos per rated one (density, diversity) gives its unrated
  photo nearest the centre.
- QBC: a committee of 5 PAMs fit on bootstrap resamples of R (bagging); the unrated photo
  where their predictions disagree most (variance).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from sklearn.cluster import KMeans

from personalize.pam import PAM
from personalize.rated import RatedAlbum


class _Selector(RatedAlbum):
    name = "base"

    def __init__(self, V, X, *, seed: int = 0, seed_indices: Iterable[int] | None = None, n_seed: int = 10,
                 pam_params: dict | None = None):
        self.X = np.asarray(X, dtype=np.float64)
        self.V = np.asarray(V, dtype=np.float64)
        self._init_ratings(self.X.shape[0])
        self.rng = np.random.default_rng(seed)
        self.order = self.rng.permutation(self.n_photos)
        self.seed_indices = (self.order[:n_seed] if seed_indices is None
                             else np.asarray(list(seed_indices), dtype=np.int64))
        self.pam_params = dict(pam_params or {})

    def _fit_model(self) -> PAM | None:
        if not self._scores:
            return None
        return PAM(**self.pam_params).fit(self.X[self.rated_indices], self.rated_scores)

    def _unrated(self) -> np.ndarray:
        return np.flatnonzero(~self._rated_mask)

    def suggest(self, n: int = 1) -> list[int]:
        seeds = [int(i) for i in self.seed_indices if int(i) not in self._scores][:n]
        if seeds:
            return seeds
        unrated = self._unrated()
        if unrated.size == 0:
            return []
        return [int(self._choose(unrated))]

    def _choose(self, unrated: np.ndarray) -> int:
        raise NotImplementedError


class RandomSelector(_Selector):
    name = "random"

    def _choose(self, unrated):
        rated = set(self._scores)
        return next(int(i) for i in self.order if int(i) not in rated)


class GreedySelector(_Selector):
    name = "greedy"

    def _choose(self, unrated):
        x = self.X[:, :-1]
        rated = self.rated_indices
        d = np.sqrt(((x[unrated, None, :] - x[None, rated, :]) ** 2).sum(-1)).min(1)
        return int(unrated[np.argmax(d)])


class MCALSelector(_Selector):
    name = "mcal"
    n_clusters = 10

    def _choose(self, unrated):
        x = self.X[:, :-1]
        k = int(min(self.n_clusters, unrated.size))
        labels = KMeans(n_clusters=k, n_init=1, random_state=int(self.rng.integers(2**31))).fit(x).labels_
        rated = self.rated_indices
        model = self.model
        non_sv = np.setdiff1d(np.arange(rated.size), model.support_) if model is not None else np.zeros(0, int)
        irrelevant = set(labels[rated[non_sv]].tolist())
        candidates = [c for c in range(k) if c not in irrelevant and (labels[unrated] == c).any()]
        if not candidates:
            candidates = [c for c in range(k) if (labels[unrated] == c).any()]
        n_unrated = np.array([(labels[unrated] == c).sum() for c in candidates])
        n_rated = np.array([(labels[rated] == c).sum() for c in candidates])
        cluster = candidates[int(np.argmax(n_unrated / (1 + n_rated)))]
        members = unrated[labels[unrated] == cluster]
        centre = x[labels == cluster].mean(0)
        return int(members[np.argmin(((x[members] - centre) ** 2).sum(1))])


class QBCSelector(_Selector):
    name = "qbc"
    committee = 5

    def _choose(self, unrated):
        rated = self.rated_indices
        scores = self.rated_scores
        preds = []
        for _ in range(self.committee):
            boot = self.rng.integers(0, rated.size, rated.size)
            preds.append(PAM(**self.pam_params).fit(self.X[rated[boot]], scores[boot]).predict(self.X[unrated]))
        return int(unrated[np.argmax(np.var(preds, axis=0))])


SELECTORS = {cls.name: cls for cls in (RandomSelector, GreedySelector, MCALSelector, QBCSelector)}
