import numpy as np
import pytest
from scipy.spatial.distance import cdist

from personalize.active import ActivePAM, eq5_weights
from personalize.features import AES_FEAT_DIM, visual_vector
from personalize.pam import PAM


def _album(rng, n):
    aes = rng.uniform(1.5, 4.5, n)
    feat = rng.gamma(2.0, 10.0, (n, AES_FEAT_DIM))
    x = np.hstack([rng.uniform(-1, 1, (n, 10)), rng.dirichlet(np.ones(10) * 0.3, n)])
    return visual_vector(feat, aes), np.hstack([x, aes[:, None]])


def _user_scores(X, rng):
    return np.clip(np.round(X[:, -1] + 1.5 * X[:, 0] + rng.normal(0, 0.3, X.shape[0])), 1, 5)


def test_eq5_by_hand():
    np.testing.assert_allclose(eq5_weights([1.0, -1.0, 2.0]), [0.75, 0.75, 0.5])
    np.testing.assert_allclose(eq5_weights([0.0, 0.0, 0.0]), [1.0, 1.0, 1.0])  # 0/0: uniform
    np.testing.assert_allclose(eq5_weights([0.3]), [1.0])  # one photo: 1 - 1 = 0 -> uniform


def test_algorithm1_on_five_photos_by_hand():
    # photos on a line in v-space; offsets all equal -> zero residuals -> uniform weights,
    # eq. 6 = sum of distances to the rated photos {0, 1} at positions 0 and 1:
    # photo 2 (pos 2): 2 + 1 = 3, photo 3 (pos 3.5): 6, photo 4 (pos 1.2): 1.4 -> photo 3.
    V = np.array([[0.0], [1.0], [2.0], [3.5], [1.2]])
    aes = np.array([3.0, 2.0, 4.0, 3.0, 1.0])
    X = np.hstack([np.eye(5)[:, :2], aes[:, None]])
    state = ActivePAM(V, X, seed_indices=[0, 1])
    assert state.suggest() == [0]
    assert state.suggest(2) == [0, 1]
    state.add_rating(0, 3.5)
    state.add_rating(1, 2.5)  # both offsets +0.5
    np.testing.assert_allclose(state.objective()[[2, 3, 4]], [3.0, 6.0, 1.4])
    assert state.suggest() == [3]
    assert state.suggest(3) == [3, 2, 4]


def test_weights_lean_towards_the_photo_with_the_larger_residual():
    # rated A at 0 and B, C at 10; candidates at 2 (near A) and 8 (near B, C). A's offset (+2)
    # disagrees with B's and C's (0), so a regularized model leaves A the largest residual, its
    # weight is the smallest, and eq. 6 leans towards the photo near A.
    V = np.array([[0.0], [10.0], [10.0], [2.0], [8.0]])
    X = np.array([[0.0, 3.0], [1.0, 3.0], [1.0, 3.0], [0.1, 3.0], [0.9, 3.0]])
    t = np.array([5.0, 3.0, 3.0])
    state = ActivePAM(V, X, seed_indices=[0, 1, 2], pam_params={"C": 0.1, "gamma": 1.0})
    state.add_ratings(zip([0, 1, 2], t, strict=True))
    residuals = np.abs(state.model.predict(X[:3]) - t)
    assert residuals[0] > residuals[1] == pytest.approx(residuals[2])
    w = 1 - residuals / residuals.sum()
    np.testing.assert_allclose(state.weights(), w)
    np.testing.assert_allclose(state.objective()[[3, 4]], [w[0] * 2 + (w[1] + w[2]) * 8,
                                                          w[0] * 8 + (w[1] + w[2]) * 2])
    assert state.suggest() == [3]


def _brute_force_algorithm1(V, X, t, seed_idx, steps, pam_params):
    """Algorithm 1 written plainly: full distances every step, a Python loop over candidates."""
    R = list(seed_idx)
    for _ in range(steps):
        model = PAM(**pam_params).fit(X[R], t[R])
        o = model.predict(X[R])
        res = np.abs(o - t[R])
        w = np.ones(len(R)) if res.sum() == 0 else 1 - res / res.sum()
        best, best_q = -np.inf, None
        for q in range(V.shape[0]):
            if q in R:
                continue
            d = cdist(V[q:q + 1], V[R])[0] @ w
            if d > best + 1e-12:
                best, best_q = d, q
        R.append(best_q)
    return R


def test_matches_a_plain_implementation(rng):
    V, X = _album(rng, 150)
    t = _user_scores(X, rng)
    state = ActivePAM(V, X, seed=7)
    seeds = state.seed_indices.tolist()
    for _ in range(10):
        (i,) = state.suggest()
        state.add_rating(i, t[i])
    for _ in range(15):
        (i,) = state.suggest()
        state.add_rating(i, t[i])
    assert state.rated_indices.tolist() == _brute_force_algorithm1(V, X, t, seeds, 15, {})


def test_seeded_random_set_first_and_deterministic(rng):
    V, X = _album(rng, 300)
    a, b, c = ActivePAM(V, X, seed=42), ActivePAM(V, X, seed=42), ActivePAM(V, X, seed=43)
    assert a.suggest(10) == b.suggest(10) == a.seed_indices.tolist()
    assert a.suggest(10) != c.suggest(10)
    t = _user_scores(X, rng)
    for state in (a, b):
        for _ in range(14):
            (i,) = state.suggest()
            state.add_rating(i, t[i])
    assert a.rated_indices[:10].tolist() == a.seed_indices.tolist()
    assert a.ratings() == b.ratings()


def test_rebuild_equals_incremental(rng):
    V, X = _album(rng, 200)
    t = _user_scores(X, rng)
    live = ActivePAM(V, X, seed=3)
    live.add_rating(150, 2.0)  # an unsuggested rating joins R too
    for _ in range(20):
        (i,) = live.suggest()
        live.add_rating(i, t[i])
    live.add_rating(150, 4.0)  # re-rating replaces the score, keeps the place
    assert len(live.ratings()) == 21 and dict(live.ratings())[150] == 4.0
    again = ActivePAM.rebuild(V, X, [(150, 2.0), *live.ratings()[1:], (150, 4.0)], seed=3)
    assert again.ratings() == live.ratings()
    np.testing.assert_array_equal(again.weights(), live.weights())
    np.testing.assert_allclose(again.objective(), live.objective(), rtol=0, atol=1e-12)
    assert again.suggest(5) == live.suggest(5)
    np.testing.assert_array_equal(again.predict(), live.predict())


def test_batch_mode_returns_unrated_seeds_then_greedy_eq6_picks(rng):
    V, X = _album(rng, 100)
    t = _user_scores(X, rng)
    state = ActivePAM(V, X, seed=1)
    seeds = state.seed_indices.tolist()
    for i in seeds[:7]:
        state.add_rating(i, t[i])
    batch = state.suggest(6)
    assert batch[:3] == seeds[7:]
    # plain greedy: each pick joins R with the mean eq. 5 weight before the next one
    score = np.where(np.isin(np.arange(100), seeds), -np.inf, state.objective())
    expected = []
    for _ in range(3):
        q = int(np.argmax(score))
        expected.append(q)
        score[q] = -np.inf
        score = score + state.weights().mean() * np.linalg.norm(V - V[q], axis=1)
    assert batch[3:] == expected
    assert not set(batch) & set(state.rated_indices.tolist())


def test_batch_mode_does_not_suggest_near_duplicates_by_hand():
    # rated photos at 0 and 1 (zero residuals: uniform weights); candidates A at 10, A' at 10.1
    # (a near-duplicate), B at -6. Eq. 6: A 10 + 9 = 19, A' 10.1 + 9.1 = 19.2, B 6 + 7 = 13, so
    # the two best by eq. 6 alone would be A' and A. Greedy: A' first, then counted as rated
    # (weight 1): A 19 + 0.1 = 19.1, B 13 + 16.1 = 29.1 -> B.
    V = np.array([[0.0], [1.0], [10.0], [10.1], [-6.0]])
    aes = np.array([3.0, 2.0, 4.0, 3.0, 1.0])
    X = np.hstack([np.eye(5)[:, :2], aes[:, None]])
    state = ActivePAM(V, X, seed_indices=[0, 1])
    state.add_ratings([(0, 3.5), (1, 2.5)])  # both offsets +0.5
    np.testing.assert_allclose(state.objective()[[2, 3, 4]], [19.0, 19.2, 13.0])
    assert state.suggest(1) == [3]
    assert state.suggest(2) == [3, 4]
    assert state.suggest(3) == [3, 4, 2]


def test_album_smaller_than_seed_set_and_exhaustion(rng):
    V, X = _album(rng, 4)
    state = ActivePAM(V, X, seed=0)
    assert sorted(state.suggest(10)) == [0, 1, 2, 3]
    for i in state.suggest(10):
        state.add_rating(i, 3.0)
    assert state.suggest() == [] and state.suggest(5) == []
    assert state.predict().shape == (4,)


def test_duplicates_and_zero_residuals(rng):
    V, X = _album(rng, 30)
    V[5] = V[6] = V[7]
    X[5] = X[6] = X[7]
    state = ActivePAM(V, X, seed_indices=[7, 0])
    state.add_ratings([(7, X[7, -1] + 1.0), (0, X[0, -1] + 1.0)])  # all residuals zero
    np.testing.assert_allclose(state.weights(), [1.0, 1.0])
    obj = state.objective()
    assert obj[5] == obj[6] == pytest.approx(obj[0] + 0.0 + np.linalg.norm(V[5] - V[0]) - obj[0])
    picks = state.suggest(28)
    assert len(picks) == 28 and len(set(picks)) == 28 and {7, 0}.isdisjoint(picks)
    assert picks.index(5) < picks.index(6)  # ties go to the lower index


def test_bad_ratings_rejected(rng):
    V, X = _album(rng, 5)
    state = ActivePAM(V, X)
    with pytest.raises(IndexError):
        state.add_rating(5, 3.0)
    with pytest.raises(ValueError):
        state.add_rating(0, float("nan"))
    with pytest.raises(ValueError):
        ActivePAM(V, X[:4])
