"""The robustness panel's definition and calibration, pinned (personalize/robust_panel.py)."""

import numpy as np
import pytest

from personalize import robust_panel as R
from personalize.simulate import PanelConfig, panel_statistics


@pytest.fixture(scope="module")
def panel():
    return R.simulate_robust_panel(PanelConfig())


def test_definition_is_pinned():
    fixed = {n: getattr(R, n) for n in ("NONLINEAR_TASTE", "CLUSTER_SHARE", "N_CLUSTERS", "GENERIC_ERROR_ON_X",
                                        "TRAIN_CLUSTERS", "TEST_CLUSTERS", "N_PROJECTIONS", "PROJECTION_SCALE",
                                        "STREAM", "DEVIATION_R", "SIGMA_E_R")}
    assert fixed == {"NONLINEAR_TASTE": 0.5, "CLUSTER_SHARE": 0.5, "N_CLUSTERS": 4, "GENERIC_ERROR_ON_X": 0.4,
                     "TRAIN_CLUSTERS": (0.25, 0.25, 0.25, 0.25), "TEST_CLUSTERS": (0.4, 0.2, 0.2, 0.2),
                     "N_PROJECTIONS": 8, "PROJECTION_SCALE": 1.5, "STREAM": 20261203,
                     "DEVIATION_R": 0.867, "SIGMA_E_R": 0.341}
    assert R.TABLE3_RHO == {"VC": 0.6938, "GL": 0.4963, "IC": 0.5641, "SY": 0.2558, "DoF": 0.5476,
                            "OE": 0.6718, "BE": 0.3104, "CH": 0.5176, "RE": 0.3749, "RoT": 0.2737}


def test_calibrated_to_the_paper_statistics(panel):
    s = panel_statistics(panel)
    assert s["weighted_std_mean"] == pytest.approx(0.79, abs=0.01)  # Table 1
    assert s["generic_rho_vs_im"] == pytest.approx(0.702, abs=0.01)  # section 5.1
    assert s["n_test_images"] == 4737
    assert s["excluded_workers"] == s["planted_random_labellers"]


def test_observed_attributes_have_table3_rank_correlations():
    measured = R.measured_attribute_rho(PanelConfig())
    for name, target in R.TABLE3_RHO.items():
        assert measured[name] == pytest.approx(target, abs=0.02), name


def test_taste_is_half_non_linear_and_the_test_raters_are_shifted(panel):
    stats = R.robust_statistics(panel)
    train, test = stats["cluster_shares"]["train"], stats["cluster_shares"]["test"]
    assert sum(train) == 173 and sum(test) == 37
    assert test[0] / sum(test) > 1.4 * max(train[0] / sum(train), 0.25)  # cluster 0 ~twice as common
    # a linear function of the TRUE x explains about half of a rater's taste
    _, _, x_true = R.true_inputs(PanelConfig())
    rows = np.random.default_rng(0).choice(x_true.shape[0], 5000, replace=False)
    design = np.hstack([np.ones((rows.size, 1)), x_true[rows]])
    r2 = []
    for w in panel.test_workers:
        t = panel.true_taste(w, panel.properties.image_ids[rows])
        fit = design @ np.linalg.lstsq(design, t, rcond=None)[0]
        r2.append(1 - np.var(t - fit) / np.var(t))
    assert np.mean(r2) == pytest.approx(0.5, abs=0.1)


def test_seeded_and_distinct_from_the_default_panel():
    from personalize.simulate import simulate_panel

    small = PanelConfig().scaled(0.05)
    a, b = R.simulate_robust_panel(small), R.simulate_robust_panel(small)
    assert np.array_equal(a.ratings.scores, b.ratings.scores)
    assert not np.array_equal(a.properties.aes_score, simulate_panel(small).properties.aes_score)


def test_the_taste_function_and_its_exact_derivative(panel):
    taste = panel.raters.taste
    rows = np.random.default_rng(1).choice(taste.x_true.shape[0], 200, replace=False)
    for w in (0, 50, 200):
        x = taste.x_true[rows]
        # at the panel's images it is the rater model's taste term
        np.testing.assert_allclose(taste.offset(w, x), taste(np.full(rows.size, w), rows), atol=1e-12)
        # the analytic gradient is the central difference of the exact function, also off the panel's images
        for at in (x, x + np.random.default_rng(w).normal(0, 0.5, x.shape)):
            h = 1e-5
            fd = np.stack([(taste.offset(w, at + h * e) - taste.offset(w, at - h * e)) / (2 * h) for e in np.eye(20)], 1)
            np.testing.assert_allclose(taste.gradient(w, at), fd, atol=1e-8)
        # non-linear: the gradient varies from photo to photo (a linear taste's would be constant)
        assert taste.gradient(w, x).std(0).mean() > 0.1 * np.abs(taste.gradient(w, x).mean(0)).mean()
