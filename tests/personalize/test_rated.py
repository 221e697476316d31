"""The rating bookkeeping shared by the strategies (personalize/rated.py)."""

import numpy as np
import pytest

from personalize.active import ActivePAM
from personalize.prior import TastePrior
from personalize.selection import SELECTORS
from personalize.strategy import PosteriorStrategy

N, D = 40, 20


def _states():
    rng = np.random.default_rng(0)
    X = np.hstack([rng.normal(size=(N, D)), rng.uniform(1, 5, (N, 1))])
    V = rng.normal(size=(N, 5))
    prior = TastePrior(np.zeros(D), np.ones(D), np.zeros(D + 1), 0.1 * np.eye(D + 1), 0.3)
    return [ActivePAM(V, X), PosteriorStrategy(V, X, prior=prior),
            *(cls(V, X) for cls in SELECTORS.values())]


@pytest.mark.parametrize("state", _states(), ids=lambda s: type(s).__name__)
def test_every_strategy_keeps_ratings_the_same_way(state):
    state.add_ratings([(3, 4.0), (7, 2.0)])
    state.add_rating(3, 5.0)  # re-rating replaces the score and keeps the place
    assert state.ratings() == [(3, 5.0), (7, 2.0)] and state.n_rated == 2
    assert state.rated_indices.tolist() == [3, 7] and state.rated_scores.tolist() == [5.0, 2.0]
    first = state.model
    assert state.model is first  # no refit without a change
    with pytest.raises(IndexError):
        state.add_ratings([(8, 3.0), (N, 3.0)])
    with pytest.raises(ValueError):
        state.add_ratings([(8, 3.0), (9, float("nan"))])
    assert state.ratings() == [(3, 5.0), (7, 2.0)] and state.model is first  # a bad batch changes nothing
    state.add_rating(8, 1.0)
    assert state.model is not first and 8 not in state.suggest(3)
    again = type(state).rebuild(state.V if hasattr(state, "V") else None, state.X, state.ratings(),
                                **({"prior": state.prior} if isinstance(state, PosteriorStrategy) else {}))
    assert again.ratings() == state.ratings()
