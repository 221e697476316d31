"""One user's ratings of one album, for the rating strategies (ActivePAM, PosteriorStrategy and the
baseline selectors of personalize.selection).

Ratings are album index -> score in first-rating order; re-rating a photo replaces its score and
keeps its place. A batch is checked whole before any of it is applied (an index out of range or
a score that is not finite rejects the batch). The personal model is refit lazily: `model` fits
it (the subclass's `_fit_model`) the first time it is asked for after a change, so a state
rebuilt from stored (index, score) pairs in their original order (`rebuild`) is identical to the
incrementally built one.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np


class RatedAlbum:
    """Rating bookkeeping over an album of `n_photos`; subclasses call `_init_ratings` in
    __init__, implement `_fit_model` and may react to first ratings in `_on_new_rated`."""

    n_photos: int

    def _init_ratings(self, n_photos: int) -> None:
        self.n_photos = n_photos
        self._scores: dict[int, float] = {}  # album index -> user score, in first-rating order
        self._rated_mask = np.zeros(n_photos, dtype=bool)
        self._model = None
        self._model_version = -1
        self._version = 0

    @classmethod
    def rebuild(cls, V, X, ratings: Iterable[tuple[int, float]], **kwargs):
        """The state after replaying stored (index, score) pairs in order, without intermediate refits."""
        state = cls(V, X, **kwargs)
        state.add_ratings(ratings)
        return state

    def add_rating(self, index: int, score: float) -> None:
        self.add_ratings([(index, score)])

    def add_ratings(self, ratings: Iterable[tuple[int, float]]) -> None:
        batch = [(int(index), float(score)) for index, score in ratings]
        for index, score in batch:
            if not 0 <= index < self.n_photos:
                raise IndexError(f"album index {index} out of range [0, {self.n_photos})")
            if not np.isfinite(score):
                raise ValueError(f"score for album index {index} is not finite: {score}")
        new: list[int] = []
        for index, score in batch:
            if index not in self._scores:
                new.append(index)
            self._scores[index] = score
        if new:
            new_idx = np.asarray(new, dtype=np.int64)
            self._on_new_rated(new_idx)
            self._rated_mask[new_idx] = True
        self._version += 1

    def _on_new_rated(self, new: np.ndarray) -> None:
        """Called with the photos rated for the first time, before they are marked rated."""

    @property
    def rated_indices(self) -> np.ndarray:
        return np.fromiter(self._scores.keys(), dtype=np.int64, count=len(self._scores))

    @property
    def rated_scores(self) -> np.ndarray:
        return np.fromiter(self._scores.values(), dtype=np.float64, count=len(self._scores))

    @property
    def n_rated(self) -> int:
        return len(self._scores)

    def ratings(self) -> list[tuple[int, float]]:
        return list(self._scores.items())

    @property
    def model(self):
        """The personal model on every rating so far (refit lazily after a change)."""
        if self._model_version != self._version:
            self._model, self._model_version = self._fit_model(), self._version
        return self._model

    def _fit_model(self):
        raise NotImplementedError
