import json

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.model_selection import cross_val_score
from sklearn.svm import NuSVR
from sklearn.utils.estimator_checks import check_estimator

from personalize.pam import PAM, estimate_gain, rbf_offsets


def _user(rng, n, taste=1.0, noise=0.2):
    x = np.hstack([rng.uniform(-1, 1, (n, 10)), rng.dirichlet(np.ones(10) * 0.3, n)])
    aes = rng.uniform(1.5, 4.5, n)
    y = aes + taste * (x[:, 0] - 0.5 * x[:, 3] + 2 * x[:, 10]) + rng.normal(0, noise, n)
    return np.hstack([x, aes[:, None]]), y


def test_check_estimator():
    failed = [r for r in check_estimator(PAM(), on_fail=None) if r["status"] == "failed"]
    assert not failed, [(r["check_name"], str(r["exception"])) for r in failed]


def test_predict_is_generic_score_plus_libsvm_offset(rng):
    X, y = _user(rng, 100)
    model = PAM(nu=0.4, C=2.0, gamma=0.2).fit(X, y)
    svr = NuSVR(nu=0.4, C=2.0, gamma=0.2).fit(X[:, :-1], y - X[:, -1])
    Xt, _ = _user(rng, 1000)
    np.testing.assert_allclose(model.predict(Xt), Xt[:, -1] + svr.predict(Xt[:, :-1]), rtol=0, atol=1e-9)
    np.testing.assert_allclose(model.predict_offsets(Xt), svr.predict(Xt[:, :-1]), rtol=0, atol=1e-9)


def test_rbf_offsets_hand_value():
    sv = np.array([[0.0, 0.0], [1.0, 0.0]])
    x = np.array([[0.0, 1.0]])
    # 2 * exp(-0.5 * 1) - 1 * exp(-0.5 * 2) + 0.25
    expected = 2 * np.exp(-0.5) - np.exp(-1.0) + 0.25
    assert rbf_offsets(x, sv, np.array([2.0, -1.0]), 0.25, 0.5)[0] == pytest.approx(expected, abs=1e-15)


def test_json_round_trip_predicts_identically(rng, tmp_path):
    X, y = _user(rng, 60)
    model = PAM(gamma="scale").fit(X, y)
    text = json.dumps(model.to_dict())
    again = PAM.from_dict(json.loads(text))
    Xt, _ = _user(rng, 500)
    assert np.array_equal(model.predict(Xt), again.predict(Xt))
    assert again.get_params() == model.get_params()
    model.save_npz(tmp_path / "m.npz")
    assert np.array_equal(model.predict(Xt), PAM.load_npz(tmp_path / "m.npz").predict(Xt))


def test_from_dict_rejects_other_formats():
    with pytest.raises(ValueError, match="not a serialized PAM"):
        PAM.from_dict({"format": "pickle"})


def test_one_rating_and_constant_offsets(rng):
    X, _ = _user(rng, 5)
    one = PAM().fit(X[:1], [4.0])
    np.testing.assert_allclose(one.predict(X), X[:, -1] + (4.0 - X[0, -1]))
    const = PAM().fit(X, X[:, -1] + 0.5)
    np.testing.assert_allclose(const.predict(X), X[:, -1] + 0.5)
    assert PAM.from_dict(json.loads(json.dumps(const.to_dict()))).predict(X).tolist() == const.predict(X).tolist()


def test_learns_a_taste_and_works_with_sklearn_tools(rng):
    X, y = _user(rng, 200, taste=1.0, noise=0.1)
    Xt, yt = _user(rng, 500, taste=1.0, noise=0.1)
    model = clone(PAM()).fit(X, y)
    assert np.mean((model.predict(Xt) - yt) ** 2) < 0.5 * np.mean((Xt[:, -1] - yt) ** 2)
    assert np.all(np.isfinite(cross_val_score(PAM(), X, y, cv=3)))


def test_estimate_gain(rng):
    X, y = _user(rng, 8)
    assert estimate_gain(X, y) is None
    X, y = _user(rng, 120, taste=1.0, noise=0.1)
    gain = estimate_gain(X, y)
    assert gain is not None and gain > 0.05
    X, _ = _user(rng, 40)
    assert estimate_gain(X, X[:, -1].round()) is not None  # generic-only user: gain near 0
