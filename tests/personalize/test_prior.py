"""The population taste prior and the personal model on it (personalize/prior.py)."""

import json

import numpy as np
import pytest
from sklearn.utils.estimator_checks import check_estimator

from personalize.pam import PAM
from personalize.prior import (
    PRIOR_FILE,
    PriorPAM,
    RaterData,
    TastePrior,
    em_prior,
    fit_prior,
    load_prior,
    low_rank,
)

D = 20


def _population(rng, n_raters=60, n_per=200, noise=0.3):
    """Raters whose offsets are phi(x) . theta_j, theta_j ~ N(mu, Sigma) (the prior's own model)."""
    mu = np.r_[0.2, rng.normal(0, 0.1, D)]
    basis = rng.normal(size=(D + 1, 3))
    cov = basis @ basis.T * 0.05 + 0.01 * np.eye(D + 1)
    raters = []
    for _ in range(n_raters):
        theta = rng.multivariate_normal(mu, cov)
        x = rng.normal(size=(n_per, D))
        g = rng.uniform(1.5, 4.5, n_per)
        y = g + np.hstack([np.ones((n_per, 1)), x]) @ theta + rng.normal(0, noise, n_per)
        raters.append(RaterData(np.hstack([x, g[:, None]]), y))
    return raters, mu, cov, noise**2


def test_em_recovers_the_population(rng):
    raters, mu, cov, s2 = _population(rng, n_raters=150)
    prior = fit_prior(raters, choose=False)
    # features are standardized with the raters' statistics (close to N(0, 1) here)
    assert prior.noise_var == pytest.approx(s2, rel=0.1)
    assert np.abs(prior.mu - mu).max() < 0.12  # ~3.5 s.e. of a mean over 150 raters
    assert np.abs(prior.cov - cov).max() < 0.05


def test_posterior_is_bayesian_linear_regression(rng):
    raters, *_ = _population(rng, n_raters=30)
    prior = fit_prior(raters, choose=False)
    X, y = raters[0].X[:12], raters[0].y[:12]
    model = PriorPAM(prior).fit(X, y)
    phi = prior.phi(X[:, :-1])
    P = np.linalg.inv(prior.cov) + phi.T @ phi / prior.noise_var
    S = np.linalg.inv(P)
    m = S @ (np.linalg.solve(prior.cov, prior.mu) + phi.T @ (y - X[:, -1]) / prior.noise_var)
    np.testing.assert_allclose(model.theta_, m, rtol=1e-8, atol=1e-10)
    Xt = raters[1].X[:50]
    pred, std = model.predict(Xt, return_std=True)
    pt = prior.phi(Xt[:, :-1])
    np.testing.assert_allclose(pred, Xt[:, -1] + pt @ m, atol=1e-9)
    np.testing.assert_allclose(std, np.sqrt(np.einsum("ij,jk,ik->i", pt, S, pt)), rtol=1e-7)
    assert (std > 0).all()


def test_without_a_prior_it_is_exactly_pam(rng):
    raters, *_ = _population(rng, n_raters=2)
    X, y = raters[0].X[:80], raters[0].y[:80]
    ours = PriorPAM(nu=0.4, C=2.0, gamma=0.2).fit(X, y)
    pam = PAM(nu=0.4, C=2.0, gamma=0.2).fit(X, y)
    assert np.array_equal(ours.predict(X), pam.predict(X))
    mean, std = ours.predict(X, return_std=True)
    assert np.array_equal(mean, pam.predict(X)) and np.isnan(std).all()


def test_check_estimator_without_a_prior():
    failed = [r for r in check_estimator(PriorPAM(), on_fail=None) if r["status"] == "failed"]
    assert not failed, [(r["check_name"], str(r["exception"])) for r in failed]


def test_zero_ratings_population_offset_or_generic(rng):
    raters, *_ = _population(rng, n_raters=20)
    prior = fit_prior(raters, choose=False)
    X = raters[0].X[:30]
    prior.use_population_offset = True
    np.testing.assert_allclose(PriorPAM(prior).fit_empty(D).predict(X), X[:, -1] + prior.phi(X[:, :-1]) @ prior.mu)
    prior.use_population_offset = False
    np.testing.assert_array_equal(PriorPAM(prior).fit_empty(D).predict(X), X[:, -1])
    mean, std = PriorPAM(None).fit_empty(D).predict(X, return_std=True)
    assert np.array_equal(mean, X[:, -1]) and np.isnan(std).all()


def test_residual_svr_is_pam_on_what_the_posterior_leaves(rng):
    raters, *_ = _population(rng, n_raters=20)
    prior = fit_prior(raters, choose=False)
    prior.residual_C, prior.residual_min_ratings = 1.0, 30
    X, y = raters[0].X[:40], raters[0].y[:40]
    assert PriorPAM(prior).fit(X[:20], y[:20]).residual_ is None  # below residual_min_ratings
    model = PriorPAM(prior).fit(X, y)
    phi = prior.phi(X[:, :-1])
    base = X[:, -1] + phi @ model.theta_
    pam = PAM(nu=0.5, C=1.0, gamma=1 / D).fit(np.hstack([phi[:, 1:], base[:, None]]), y)
    np.testing.assert_allclose(model.predict(X), pam.predict(np.hstack([phi[:, 1:], base[:, None]])))


def test_save_load_round_trip_without_pickle(rng, tmp_path):
    raters, *_ = _population(rng, n_raters=20)
    prior = fit_prior(raters, choose=False)
    prior.rank, prior.residual_C, prior.residual_min_ratings = 4, 0.1, 30
    prior.info = {"cv": {"k": [1.0, 2.0]}}
    path = prior.save(tmp_path / "v1" / PRIOR_FILE)
    again = load_prior(tmp_path / "v1" / PRIOR_FILE)
    with np.load(path, allow_pickle=False) as z:
        assert all(z[k].dtype != object for k in z.files)
    X, y = raters[1].X[:40], raters[1].y[:40]
    a, b = PriorPAM(prior).fit(X, y), PriorPAM(again).fit(X, y)
    assert np.array_equal(a.predict(X, return_std=True)[1], b.predict(X, return_std=True)[1])
    assert np.array_equal(a.predict(X), b.predict(X))
    assert again.info == prior.info and again.rank == 4
    assert load_prior(tmp_path / "none" / PRIOR_FILE) is None
    bad = tmp_path / "bad.npz"
    np.savez(bad, x_mean=prior.x_mean, x_scale=prior.x_scale, mu=prior.mu, cov=prior.cov,
             meta=np.str_(json.dumps({"format": "other"})))
    with pytest.raises(ValueError, match="not a taste prior"):
        TastePrior.load(bad)
    with pytest.raises(ValueError, match="features"):
        PriorPAM(prior).fit(X[:, 5:], y)


def test_low_rank_keeps_the_top_directions():
    rng = np.random.default_rng(1)
    a = rng.normal(size=(6, 6))
    cov = a @ a.T
    lr = low_rank(cov, 2)
    vals = np.linalg.eigvalsh(cov)[::-1]
    np.testing.assert_allclose(np.linalg.eigvalsh(lr)[::-1][:2], vals[:2], rtol=1e-9)
    np.testing.assert_allclose(np.linalg.eigvalsh(lr)[:4], vals[2:].mean(), rtol=1e-9)
    assert low_rank(cov, None) is cov


def test_em_is_the_marginal_likelihood_maximum_on_a_hand_case():
    # one feature-free rater set: phi = [1]; offsets r_j ~ N(mu, tau2 + s2 / n) per rater mean
    rng = np.random.default_rng(3)
    n, J = 50, 400
    theta = rng.normal(0.5, 0.3, J)
    r = theta[:, None] + rng.normal(0, 0.6, (J, n))
    A = np.full((J, 1, 1), float(n))
    b = r.sum(1)[:, None]
    c = (r**2).sum(1)
    mu, cov, s2 = em_prior(A, b, c, np.full(J, n), iterations=200)
    assert mu[0] == pytest.approx(0.5, abs=0.04)
    assert np.sqrt(cov[0, 0]) == pytest.approx(0.3, abs=0.04)
    assert np.sqrt(s2) == pytest.approx(0.6, abs=0.02)


def test_cross_validation_chooses_among_variants(rng):
    raters, *_ = _population(rng, n_raters=25, n_per=200)
    prior = fit_prior(raters, folds=3, ks=(10, 50), repeats=1, min_cv_ratings=100)
    rows = prior.info["cv"]["improvement"]
    assert len(rows) == 9 and all(np.isfinite(r["10"]) for r in rows)
    assert prior.rank in (None, 8, 4)
    zero = prior.info["zero_ratings"]  # used only when measured to beat the generic score
    assert prior.use_population_offset == (zero["population_offset_gain"] > 2 * zero["se"])


def test_cross_validation_measures_the_prior_against_pam_on_the_same_splits(rng, tmp_path):
    # raters drawn from the prior's own model: the prior must beat PAM, and say so
    raters, *_ = _population(rng, n_raters=25, n_per=200)
    prior = fit_prior(raters, folds=3, ks=(10, 50), repeats=1, min_cv_ratings=100)
    vs_pam = prior.info["vs_pam"]
    assert set(vs_pam) == {"10", "50"} and all(v["raters"] == 25 for v in vs_pam.values())
    assert prior.beats_pam is True and vs_pam["10"]["mean"] > 2 * vs_pam["10"]["se"]
    assert load_prior(prior.save(tmp_path / PRIOR_FILE)).beats_pam is True

    # offsets with no shared linear structure (each rater a different non-linear taste): nothing to
    # borrow, and the verdict follows the measured mean whichever way it goes
    lone = []
    for _ in range(25):
        x = rng.normal(size=(200, D))
        g = rng.uniform(1.5, 4.5, 200)
        w = rng.normal(size=D)
        lone.append(RaterData(np.hstack([x, g[:, None]]), g + np.sin(3 * x @ w / np.sqrt(D)) + rng.normal(0, .3, 200)))
    other = fit_prior(lone, folds=3, ks=(10, 50), repeats=1, min_cv_ratings=100)
    assert other.beats_pam == (np.mean([v["mean"] for v in other.info["vs_pam"].values()]) > 0)


def test_unmeasured_prior_says_so(rng):
    raters, *_ = _population(rng, n_raters=6, n_per=25)
    assert fit_prior(raters, choose=False).beats_pam is None
    assert fit_prior(raters, min_cv_ratings=25).beats_pam is None  # 25 ratings: no k leaves 20 to score
