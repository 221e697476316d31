"""The demo report's measured comparison of models and strategies (pam/demo/quality.py), on a
small simulated panel of the demo's shape (no photos, no service)."""

import json

import numpy as np
import pytest

from pam.demo import quality
from pam.demo.panel import panel_config
from personalize import protocols as P
from personalize.data import FeatureMatrix
from personalize.simulate import simulate_panel, simulate_properties


@pytest.fixture(scope="module")
def demo_like():
    props = simulate_properties(200, np.random.default_rng(0))
    base = FeatureMatrix(props.image_ids, props.aes_score, props.aes_feat, props.attributes, props.content)
    panel = simulate_panel(panel_config(200, 3, 0), base=base)
    features = panel.properties.features()
    return panel, features, P.prior_for(panel.dataset(), features)


def test_every_model_and_strategy_on_the_same_splits(demo_like):
    panel, features, prior = demo_like
    q = quality.measure(panel, features, prior)
    json.dumps(q, allow_nan=False)  # the demo's --json summary carries it
    assert q["users"] == 3 and q["prior"] and q["ratings_per_user"] == [80, 80]
    assert list(q["models"]) == ["10", "20"] and q["budgets"] == [10, 20, 30]
    for rows in q["models"].values():
        assert set(rows) == {"PAM", "Prior-PAM", "FPMF", "Oracle"}
        assert rows["PAM"]["diff_vs_PAM"] == 0.0
        assert rows["Oracle"]["diff_vs_PAM"] > 2 * rows["Oracle"]["se_vs_PAM"]  # knowing the taste helps
        for row in rows.values():
            assert row["users"] == 3 and row["helped"] + row["hurt"] <= 3 and row["se_vs_PAM"] is not None
    names = set(q["strategies"])
    assert names == {f"{s} / {m}" for s in ("active-pam", "posterior", "random") for m in ("PAM", "Prior-PAM")}
    for name, curve in q["strategies"].items():
        assert len(curve["mean"]) == 3
        if not name.startswith("random"):
            assert curve["diff_vs_random"][0] == 0.0  # all start from the same 10 random photos
            assert all(se is not None for se in curve["se_vs_random"])
    page = "\n".join(quality.html_section(q))
    assert "paired difference to PAM" in page and "posterior strategy" in page and "Active-PAM (eq. 6)" in page
    assert page.count("<table>") == 2


def test_without_a_prior_and_with_few_ratings(demo_like):
    panel, features, _ = demo_like
    q = quality.measure(panel, features, None)
    assert not q["prior"] and "Prior-PAM" not in q["models"]["10"]
    assert all(not name.startswith("posterior") and "Prior-PAM" not in name for name in q["strategies"])
    assert "No taste prior" in "\n".join(quality.html_section(q))
    small = simulate_panel(panel_config(30, 2, 0), base=FeatureMatrix(
        features.image_ids[:30], features.aes_score[:30], features.aes_feat[:30], features.attributes[:30],
        features.content[:30]))
    few = quality.measure(small, small.properties.features(), None)  # 12 photos per user: nothing fits
    assert few["models"] == {} and few["strategies"] == {}
    quality.html_section(few)
