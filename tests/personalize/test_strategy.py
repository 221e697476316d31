"""The posterior rating strategy (personalize/strategy.py)."""

import numpy as np
import pytest
from scipy.stats import norm

from personalize.prior import PriorPAM, RaterData, fit_prior
from personalize.strategy import HIGH, LOW, PosteriorStrategy

D = 20


@pytest.fixture(scope="module")
def prior():
    rng = np.random.default_rng(5)
    mu = np.r_[0.1, rng.normal(0, 0.1, D)]
    a = rng.normal(size=(D + 1, 4))
    cov = a @ a.T * 0.03 + 0.01 * np.eye(D + 1)
    raters = []
    for _ in range(40):
        theta = rng.multivariate_normal(mu, cov)
        x = rng.normal(size=(150, D))
        g = rng.uniform(1.5, 4.5, 150)
        raters.append(RaterData(np.hstack([x, g[:, None]]), g + np.hstack([np.ones((150, 1)), x]) @ theta
                                + rng.normal(0, 0.4, 150)))
    return fit_prior(raters, choose=False)


def _album(rng, n=200):
    return np.hstack([rng.normal(size=(n, D)), rng.uniform(1, 5, (n, 1))])


def _brute_gain(prior, X, S, mean, q):
    """Conditioning explicitly on a rating of q: the drop of the album's centred prediction
    variance, times the chance the rating is not clipped."""
    phi = prior.phi(X[:, :-1])
    c = phi - phi.mean(0)
    s = S @ phi[q]
    S_after = S - np.outer(s, s) / (phi[q] @ s + prior.noise_var)
    drop = np.trace(c @ S @ c.T) - np.trace(c @ S_after @ c.T)
    sd = np.sqrt(phi[q] @ S @ phi[q] + prior.noise_var)
    return (norm.cdf((HIGH - mean[q]) / sd) - norm.cdf((LOW - mean[q]) / sd)) * drop


def test_gain_is_the_expected_variance_reduction(prior, rng):
    X = _album(rng, 60)
    state = PosteriorStrategy(None, X, prior=prior)
    state.add_ratings([(0, 4.0), (5, 2.0), (9, 3.0)])
    m = state.model
    mean = X[:, -1] + prior.phi(X[:, :-1]) @ m.theta_
    brute = [_brute_gain(prior, X, m.theta_cov_, mean, q) for q in range(60)]
    np.testing.assert_allclose(state.gains(), brute, rtol=1e-8)
    assert state.suggest() == [int(np.argmax(np.where(np.isin(np.arange(60), [0, 5, 9]), -np.inf, brute)))]


def test_batch_conditions_on_pending_picks(prior, rng):
    X = _album(rng, 80)
    state = PosteriorStrategy(None, X, prior=prior)
    state.add_ratings([(1, 3.0), (2, 4.0)])
    batch = state.suggest(4)
    m = state.model
    S = m.theta_cov_.copy()
    phi = prior.phi(X[:, :-1])
    mean = X[:, -1] + phi @ m.theta_
    expected, taken = [], {1, 2}
    for _ in range(4):
        g = [(-np.inf if q in taken else _brute_gain(prior, X, S, mean, q)) for q in range(80)]
        q = int(np.argmax(g))
        expected.append(q)
        taken.add(q)
        s = S @ phi[q]
        S = S - np.outer(s, s) / (phi[q] @ s + prior.noise_var)
    assert batch == expected and len(set(batch)) == 4


def test_works_from_the_first_rating_and_never_repeats(prior, rng):
    X = _album(rng, 30)
    state = PosteriorStrategy(None, X, prior=prior)
    np.testing.assert_array_equal(state.predict(), PriorPAM(prior).fit_empty(D).predict(X))
    picked = []
    for _ in range(30):
        (i,) = state.suggest()
        picked.append(i)
        state.add_rating(i, 3.0)
    assert sorted(picked) == list(range(30)) and state.suggest(3) == []


def test_seed_photos_first_and_rebuild(prior, rng):
    X = _album(rng, 50)
    live = PosteriorStrategy(None, X, prior=prior, seed_indices=[7, 3])
    assert live.suggest(3)[:2] == [7, 3]
    for _ in range(8):
        (i,) = live.suggest()
        live.add_rating(i, float(np.clip(np.rint(X[i, -1]), 1, 5)))
    again = PosteriorStrategy.rebuild(None, X, live.ratings(), prior=prior, seed_indices=[7, 3])
    assert again.suggest(5) == live.suggest(5)
    np.testing.assert_array_equal(again.predict(), live.predict())


def test_reduces_uncertainty_faster_than_random(prior, rng):
    X = _album(rng, 300)
    chosen = PosteriorStrategy(None, X, prior=prior)
    picks = chosen.suggest(15)
    rand = rng.choice(300, 15, replace=False)

    def total_var(idx):
        m = PriorPAM(prior).fit(X[idx], X[idx, -1])
        return float((m.predict(X, return_std=True)[1] ** 2).sum())

    assert total_var(np.asarray(picks)) < total_var(rand)


def test_bad_input(prior, rng):
    X = _album(rng, 10)
    with pytest.raises(ValueError, match="X must be"):
        PosteriorStrategy(None, X[:, 3:], prior=prior)
    state = PosteriorStrategy(None, X, prior=prior)
    with pytest.raises(IndexError):
        state.add_rating(10, 3.0)
    with pytest.raises(ValueError):
        state.add_rating(0, float("nan"))
    with pytest.raises(ValueError):
        state.suggest(0)
