import numpy as np
import pytest
from scipy.stats import spearmanr

from personalize.metrics import correlation_improvement, spearman_rho


def test_spearman_matches_scipy_with_ties(rng):
    for _ in range(50):
        n = int(rng.integers(3, 60))
        a = rng.integers(1, 6, n)  # 1-5 ratings: ties everywhere
        b = rng.integers(1, 4, n) + rng.normal(0, 0.01, n).round(1)
        expected = spearmanr(a, b).statistic
        if np.isnan(expected):
            assert np.isnan(spearman_rho(a, b))
        else:
            assert spearman_rho(a, b) == pytest.approx(expected, abs=1e-12)


def test_spearman_hand_values():
    assert spearman_rho([1, 2, 3, 4], [10, 20, 30, 40]) == 1.0
    assert spearman_rho([1, 2, 3, 4], [4, 3, 2, 1]) == -1.0
    # no ties: the paper's 1 - 6 sum d^2 / (N^3 - N); d = (0, 1, -1) -> 1 - 12/24
    assert spearman_rho([1, 2, 3], [1, 3, 2]) == pytest.approx(0.5)


def test_spearman_undefined_cases():
    assert np.isnan(spearman_rho([3, 3, 3], [1, 2, 3]))
    assert np.isnan(spearman_rho([1], [2]))
    with pytest.raises(ValueError, match="lengths differ"):
        spearman_rho([1, 2], [1, 2, 3])


def test_correlation_improvement():
    y = np.array([1, 2, 3, 4, 5])
    generic = np.array([2, 1, 3, 5, 4])  # rho 0.8
    assert correlation_improvement(y, y * 2.0, generic) == pytest.approx(0.2)
