import numpy as np
import pytest
from sklearn.svm import NuSVR

from personalize.baselines import DirectSVR, fpmf_objective, train_fpmf
from personalize.selection import (
    SELECTORS,
    GreedySelector,
    MCALSelector,
    QBCSelector,
    RandomSelector,
)


def test_direct_svr_ignores_the_generic_score(rng):
    X = np.hstack([rng.uniform(-1, 1, (50, 20)), rng.uniform(1, 5, (50, 1))])
    y = rng.integers(1, 6, 50).astype(float)
    ours = DirectSVR(nu=0.5, C=1.0, gamma=0.1).fit(X, y)
    ref = NuSVR(nu=0.5, C=1.0, gamma=0.1).fit(X[:, :-1], y)
    X2 = X.copy()
    X2[:, -1] = 0.0
    np.testing.assert_allclose(ours.predict(X2), ref.predict(X[:, :-1]))
    assert DirectSVR().fit(X[:1], [3.0]).predict(X[:4]).tolist() == [3.0] * 4


def test_fpmf_gradient_is_exact(rng):
    n_images, n_users = 30, 4
    z = rng.normal(size=(n_images, 20))
    pairs = rng.choice(n_images * n_users, 80, replace=False)
    loss_grad, _, sizes = fpmf_objective(z, pairs % n_images, pairs // n_images, rng.normal(size=80), n_users, 1e-2)
    theta = rng.normal(0, 0.3, sum(sizes))
    _, grad = loss_grad(theta)
    for _ in range(5):  # central differences along random directions
        d = rng.normal(size=theta.size)
        h = 1e-5
        numeric = (loss_grad(theta + h * d)[0] - loss_grad(theta - h * d)[0]) / (2 * h)
        assert numeric == pytest.approx(grad @ d, rel=1e-6, abs=1e-9)


def test_fpmf_learns_a_shared_offset_structure_and_fits_a_new_user(rng):
    # offsets of every user = their weight * a function of x; FPMF should recover it for a new user
    n_images, n_users = 300, 12
    X = np.hstack([rng.uniform(-1, 1, (n_images, 20)), rng.uniform(2, 4, (n_images, 1))])
    signal = np.tanh(2 * X[:, 0])
    weights = rng.choice([-1.0, 1.0], n_users)
    img = np.concatenate([rng.choice(n_images, 120, replace=False) for _ in range(n_users)])
    usr = np.repeat(np.arange(n_users), 120)
    scores = X[img, -1] + weights[usr] * signal[img] + rng.normal(0, 0.1, img.size)
    net = train_fpmf(X, img, usr, scores, max_iter=200)
    assert net.W1.shape == (20, 200) and net.W2.shape == (200, 15)
    new = rng.choice(n_images, 40, replace=False)
    user = net.fit_user(X[new], X[new, -1] - signal[new])  # a new user with weight -1
    rest = np.setdiff1d(np.arange(n_images), new)
    pred_offset = user.predict(X[rest]) - X[rest, -1]
    assert np.corrcoef(pred_offset, -signal[rest])[0, 1] > 0.8
    with pytest.raises(ValueError, match="target"):
        train_fpmf(X, img, usr, scores, target="rank")


def _album(rng, n=60):
    X = np.hstack([rng.uniform(-1, 1, (n, 20)), rng.uniform(1, 5, (n, 1))])
    return np.hstack([0.001 * rng.gamma(2, 10, (n, 176)), X[:, -1:]]), X


@pytest.mark.parametrize("name", sorted(SELECTORS))
def test_selectors_share_the_seed_set_and_never_repeat(rng, name):
    V, X = _album(rng)
    y = np.clip(np.round(X[:, -1] + X[:, 0]), 1, 5)
    seeds = [5, 7, 9]
    sel = SELECTORS[name](V, X, seed=1, seed_indices=seeds)
    picked = []
    for _ in range(20):
        (i,) = sel.suggest()
        picked.append(i)
        sel.add_rating(i, y[i])
    assert picked[:3] == seeds and len(set(picked)) == 20


def test_greedy_by_hand():
    X = np.array([[0.0, 3], [1.0, 3], [5.0, 3], [2.0, 3]])
    sel = GreedySelector(X, X, seed_indices=[0])
    sel.add_rating(0, 3.0)
    assert sel.suggest() == [2]  # farthest from photo 0
    sel.add_rating(2, 3.0)
    assert sel.suggest() == [3]  # min distances: photo 1 -> 1, photo 3 -> 2


def test_random_follows_its_seeded_order(rng):
    V, X = _album(rng)
    a, b = RandomSelector(V, X, seed=4, seed_indices=[]), RandomSelector(V, X, seed=4, seed_indices=[])
    assert a.suggest() == b.suggest() == [int(a.order[0])]


def test_qbc_picks_where_the_bagged_committee_disagrees(rng):
    import copy

    from personalize.pam import PAM

    V, X = _album(rng, 40)
    y = np.clip(np.round(X[:, -1] + 2 * X[:, 0]), 1, 5)
    sel = QBCSelector(V, X, seed=0, seed_indices=list(range(12)))
    for i in range(12):
        sel.add_rating(i, y[i])
    replica = copy.deepcopy(sel.rng)
    unrated = np.arange(12, 40)
    preds = []
    for _ in range(5):  # 5 committees, each on a bootstrap resample of the rated photos
        boot = replica.integers(0, 12, 12)
        preds.append(PAM().fit(X[boot], y[boot]).predict(X[unrated]))
    assert sel.suggest() == [int(unrated[np.argmax(np.var(preds, axis=0))])]


def test_mcal_avoids_clusters_of_non_support_vectors(rng):
    V, X = _album(rng, 80)
    y = np.clip(np.round(X[:, -1] + X[:, 0]), 1, 5)
    sel = MCALSelector(V, X, seed=0, seed_indices=list(range(15)))
    for i in range(15):
        sel.add_rating(i, y[i])
    (i,) = sel.suggest()
    assert i >= 15
