"""The demo report's taste section: recovered beside TRUE taste per simulated user."""

from __future__ import annotations

import numpy as np
from PIL import Image

from pam.demo.report import write_report
from personalize import explain
from personalize.simulate import PanelConfig, simulate_panel
from personalize.taste_recovery import true_score_effects
from tests.demo.test_report import _summary


def test_report_shows_recovered_beside_true_taste(tmp_path):
    summary, root = _summary(tmp_path)
    rng = np.random.default_rng(0)
    users = []
    for k in range(3):
        true = rng.normal(0, 0.1, 20)
        users.append({"user": f"W{k:04d}", "n_ratings": 30, "keys": list(explain.FEATURE_KEYS),
                      "names": explain.feature_names([["tabby", "tiger cat", "lynx"]] + [[]] * 9),
                      "recovered": (0.3 * true + rng.normal(0, 0.01, 20)).tolist(), "std": [0.02] * 20,
                      "supported": [bool(v) for v in rng.integers(0, 2, 20)], "true": true.tolist(),
                      "rho": 0.8})
    summary["taste"] = {"strategy": "active", "users": users}
    files = write_report(summary, tmp_path / "out", root)
    page = (tmp_path / "out" / "report.html").read_text()
    assert "recovered vs TRUE taste" in page and "W0002" in page and "TRUE: top 3" in page
    with Image.open(files["taste"]) as im:
        assert im.size[0] > 600


def test_true_effects_follow_the_simulated_weights():
    panel = simulate_panel(PanelConfig().scaled(0.02))
    worker = panel.workers[panel.test_workers[0]]
    fm = panel.properties.features()
    X = fm.X(np.arange(200))
    effects = true_score_effects(panel, worker, X)
    sd = X[:, :10].std(0)
    # attributes: proportional to u_j * sd_j with one positive scale
    ratio = effects[:10] / (np.asarray(worker["attribute_taste"]) * sd)
    assert np.allclose(ratio, ratio[0]) and ratio[0] > 0
    assert np.isclose(explain.true_taste(worker["attribute_taste"], worker["content_taste"], X)[0] * ratio[0],
                      effects[0])
