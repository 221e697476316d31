"""personalize.explain: taste effects, their uncertainty and the per-photo reasons."""

from __future__ import annotations

import numpy as np
import pytest

from personalize import explain as E
from personalize.pam import PAM


def _album(seed: int, n: int = 600):
    rng = np.random.default_rng(seed)
    a = np.tanh(rng.normal(0, 0.6, (n, 10)))
    c = rng.dirichlet(np.full(10, 0.5), n)
    aes = rng.uniform(1.5, 4.5, n)
    return rng, np.hstack([a, c, aes[:, None]])


class Linear:
    """A personal model with PAM's predict contract and a known linear offset w . x."""

    def __init__(self, w):
        self.w = np.asarray(w, dtype=np.float64)

    def predict(self, X):
        X = np.asarray(X, dtype=np.float64)
        return X[:, -1] + X[:, :-1] @ self.w


def test_planted_taste_is_recovered_by_pam_per_block():
    rng, X = _album(0)
    sd = X[:, :-1].std(0)
    hits = 0
    for _ in range(20):
        ja, jc = rng.integers(10), rng.integers(10)
        offset = 0.5 * (X[:, ja] - X[:, ja].mean()) / sd[ja] - 0.5 * (X[:, 10 + jc] - X[:, 10 + jc].mean()) / sd[10 + jc]
        y = np.clip(X[:, -1] + offset + rng.normal(0, 0.3, len(X)), 1, 5)
        rated = rng.choice(len(X), 30, replace=False)
        taste = E.taste(PAM().fit(X[rated], y[rated]), X, X[rated], y[rated])
        d = taste.as_dict()
        top_a = [r["key"] for r in d["attributes"][:3]]
        top_c = [r["key"] for r in d["content"][:3]]
        hits += (E.FEATURE_KEYS[ja] in top_a and taste.effect[ja] > 0
                 and str(jc) in top_c and taste.effect[10 + jc] < 0)
    assert hits >= 17, hits


def test_analytic_gradients_match_the_model_numerically():
    rng, X = _album(1, 300)
    y = np.clip(X[:, -1] + X[:, 0] - 2 * X[:, 13] + rng.normal(0, 0.3, len(X)), 1, 5)
    pam = PAM().fit(X[:80], y[:80])
    analytic = E.taste(pam, X, X[:80], y[:80])

    class Opaque:  # the same function, seen only through predict(): the numerical path
        def predict(self, X):
            return pam.predict(X)

    numeric = E.taste(Opaque(), X, X[:80], y[:80])
    assert np.abs(analytic.effect).max() > 0.05
    np.testing.assert_allclose(numeric.effect, analytic.effect, atol=0.01 * np.abs(analytic.effect).max())
    np.testing.assert_allclose(numeric.std, analytic.std, rtol=1e-9)  # same smoother, same kernel


def test_linear_model_effects_are_its_weights_per_sd_and_content_is_centred():
    _, X = _album(2)
    w = np.r_[np.linspace(-1, 1, 10), np.full(10, 3.0)]  # a constant over the simplex: no content taste
    taste = E.taste(Linear(w), X, X[:50], Linear(w).predict(X[:50]))
    sd = X[:, :-1].std(0)
    np.testing.assert_allclose(taste.effect[:10], w[:10] * sd[:10], rtol=1e-6)
    np.testing.assert_allclose(taste.effect[10:], 0.0, atol=1e-9)
    w[12] += 1.0  # content class 2 liked: positive for it, slightly negative for the rest
    taste = E.taste(Linear(w), X, X[:50], Linear(w).predict(X[:50]))
    assert taste.effect[12] > 0 and (taste.effect[[10, 11, 13]] < 0).all()
    np.testing.assert_allclose(taste.effect, E.true_taste(w[:10], w[10:], X), rtol=1e-6, atol=1e-9)


def test_contributions_add_up_to_the_offset_for_a_linear_model():
    _, X = _album(3, 200)
    w = np.random.default_rng(3).normal(size=20)
    model = Linear(w)
    taste = E.taste(model, X, X[:40], model.predict(X[:40]))
    contrib = E.contributions(model, taste, X[:25])
    offset = X[:25, :-1] @ w - taste.album_mean @ w
    np.testing.assert_allclose(contrib.sum(1), offset, atol=1e-6)
    top, vals = E.top_reasons(model, taste, X[:25], k=3)
    assert top.shape == vals.shape == (25, 3)
    assert (np.abs(vals[:, 0]) >= np.abs(vals[:, 1])).all() and (np.abs(vals[:, 1]) >= np.abs(vals[:, 2])).all()
    np.testing.assert_allclose(np.abs(vals[:, 0]), np.abs(contrib).max(1))
    rows = E.reasons(model, taste, X[:2])
    assert [set(r) for r in rows[0]] == [{"key", "name", "contribution"}] * 3


def test_pam_reasons_use_each_photos_own_gradient():
    rng, X = _album(4, 300)
    y = np.clip(X[:, -1] + 2 * X[:, 4] + rng.normal(0, 0.2, len(X)), 1, 5)
    pam = PAM().fit(X[:100], y[:100])
    taste = E.taste(pam, X, X[:100], y[:100])
    top, _ = E.top_reasons(pam, taste, X)
    strong = np.abs(X[:, 4] - taste.album_mean[4]) > 1.5 * taste.album_sd[4]
    assert strong.any() and (top[strong, 0] == 4).mean() > 0.9  # VC dominates where VC is extreme
    assert E.FEATURE_KEYS[4] == "VC" and E.ATTRIBUTE_WORDS["VC"] == "vivid colour"


def test_uncertainty_shrinks_with_ratings_and_flags_what_ratings_cannot_support():
    rng, X = _album(5)
    y = np.clip(X[:, -1] + X[:, 0] + rng.normal(0, 0.4, len(X)), 1, 5)
    stds = []
    for n in (10, 40, 160):
        taste = E.taste(PAM().fit(X[:n], y[:n]), X, X[:n], y[:n])
        assert np.isfinite(taste.std).all() and (taste.std > 0).all()
        stds.append(taste.std[:10].mean())
    assert stds[0] > stds[1] > stds[2]
    assert taste.supported[0] and taste.effect[0] > 0
    few = E.taste(PAM().fit(X[:3], y[:3]), X, X[:3], y[:3])
    assert not few.supported.any()  # below MIN_RATINGS
    Xc = X.copy()
    Xc[:40, 2] = 0.0  # the rated photos do not vary in GL: no claim about it
    narrow = E.taste(PAM().fit(Xc[:40], y[:40]), Xc, Xc[:40], y[:40])
    assert not narrow.supported[2]


def test_edge_cases():
    _, X = _album(6, 50)
    empty = E.taste(PAM().fit(X[:1], [3.0]), X, X[:0], np.zeros(0))
    assert empty.n_ratings == 0 and not empty.supported.any() and (empty.effect == 0).all()
    one = E.taste(PAM().fit(X[:1], [3.0]), X, X[:1], [3.0])  # constant-offset model
    assert (one.effect == 0).all() and not one.supported.any()
    with pytest.raises(ValueError, match="21"):
        E.taste(PAM().fit(X[:5], np.full(5, 3.0)), X[:, :5], X[:5], np.full(5, 3.0))
    d = one.as_dict([["tabby", "tiger cat", "Egyptian cat", "lynx"], [], None])
    assert d["content"][0]["name"] in {"tabby, tiger cat, Egyptian cat", *(f"content class {k}" for k in range(1, 10))}
    assert {r["name"] for r in d["content"]} >= {"tabby, tiger cat, Egyptian cat", "content class 1", "content class 9"}
    assert [r["key"] for r in d["attributes"]] == list(E.FEATURE_KEYS[:10])  # all zero: stable order


def _prior(X, residual_C):
    from personalize.prior import TastePrior, feature_statistics

    mean, scale = feature_statistics(X)
    rng = np.random.default_rng(11)
    a = rng.normal(size=(21, 5))
    return TastePrior(mean, scale, np.r_[0.05, rng.normal(0, 0.05, 20)], a @ a.T * 0.02 + 0.01 * np.eye(21), 0.2,
                      residual_C=residual_C)


@pytest.mark.parametrize("residual_C", [None, 1.0], ids=["linear", "with-residual"])
def test_prior_pam_gradients_are_exact(residual_C):
    from personalize.prior import PriorPAM

    rng, X = _album(7, 300)
    y = np.clip(X[:, -1] + 0.8 * X[:, 1] - 1.5 * X[:, 15] + np.sin(3 * X[:, 2]) + rng.normal(0, 0.3, len(X)), 1, 5)
    model = PriorPAM(_prior(X, residual_C)).fit(X[:100], y[:100])
    assert (model.residual_ is None) == (residual_C is None)
    if residual_C is not None:
        assert model.residual_.support_vectors_.shape[0] > 10
    analytic = E.row_gradients(model, X[100:160])
    h = 1e-5
    raw = np.empty((60, 20))
    for j in range(20):
        up, down = X[100:160].copy(), X[100:160].copy()
        up[:, j] += h
        down[:, j] -= h
        raw[:, j] = (model.predict(up) - model.predict(down)) / (2 * h)
    numeric = E._centre_content(raw, X[100:160, :-1])
    np.testing.assert_allclose(analytic, numeric, atol=1e-6 * np.abs(numeric).max())

    class Opaque:  # the same model through predict() only: the numerical path of taste()
        def predict(self, X):
            return model.predict(X)

    exact, approx = E.taste(model, X, X[:100], y[:100]), E.taste(Opaque(), X, X[:100], y[:100])
    np.testing.assert_allclose(exact.effect, approx.effect, atol=0.02 * np.abs(exact.effect).max())
    top, vals = E.top_reasons(model, exact, X[:50])
    own = E.row_gradients(model, X[:50]) * (X[:50, :-1] - exact.album_mean)  # each photo's own gradient
    np.testing.assert_allclose(vals, np.take_along_axis(own, top, 1))


def test_prior_pam_uncertainty_is_its_posterior():
    from personalize.prior import PriorPAM

    rng, X = _album(8)
    y = np.clip(X[:, -1] + 1.0 * X[:, 0] + rng.normal(0, 0.4, len(X)), 1, 5)
    prior = _prior(X, None)
    stds = []
    for n in (10, 40, 160):
        model = PriorPAM(prior).fit(X[:n], y[:n])
        taste = E.taste(model, X, X[:n], y[:n])
        sd = X[:, :-1].std(0)
        # an attribute's slope is theta_j / x_scale_j: its s.d. is the posterior's, exactly
        np.testing.assert_allclose(taste.std[:10], np.sqrt(np.diag(model.theta_cov_))[1:11] / prior.x_scale[:10]
                                   * sd[:10], rtol=1e-9)
        # a content effect is (e_k - mean content) . theta_content / x_scale: its s.d. by sampling
        draws = rng.multivariate_normal(model.theta_, model.theta_cov_, 4000)[:, 11:] / prior.x_scale[10:]
        effects = (draws - (draws @ X[:, 10:20].mean(0))[:, None]) * sd[10:]
        np.testing.assert_allclose(taste.std[10:], effects.std(0), rtol=0.08)
        stds.append(taste.std.mean())
    assert stds[0] > stds[1] > stds[2] and taste.supported[0] and taste.effect[0] > 0
    with_residual = E.taste(PriorPAM(_prior(X, 1.0)).fit(X[:40], y[:40]), X, X[:40], y[:40])
    linear = E.taste(PriorPAM(prior).fit(X[:40], y[:40]), X, X[:40], y[:40])
    assert (with_residual.std > linear.std).all()  # the residual's own uncertainty adds to it


def test_prior_pam_without_a_prior_is_explained_as_pam():
    from personalize.prior import PriorPAM

    rng, X = _album(9, 300)
    y = np.clip(X[:, -1] + X[:, 3] + rng.normal(0, 0.3, len(X)), 1, 5)
    a, b = E.taste(PriorPAM().fit(X[:60], y[:60]), X, X[:60], y[:60]), E.taste(PAM().fit(X[:60], y[:60]), X, X[:60], y[:60])
    np.testing.assert_allclose(a.effect, b.effect, rtol=1e-9)
    np.testing.assert_allclose(a.std, b.std, rtol=1e-9)
