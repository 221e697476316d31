"""`pam fit-prior`: the prior is an artifact of a feature version."""

import json

import numpy as np
import pytest

from pam.cli import main
from personalize.prior import PRIOR_FILE, PriorPAM, load_prior


@pytest.fixture(scope="module")
def panel_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("panel")
    assert main(["simulate", "--out", str(out), "--scale", "0.03"]) == 0
    return out


def test_fit_prior_writes_it_into_the_version_directory(panel_dir, capsys):
    capsys.readouterr()
    assert main(["fit-prior", "--ratings", str(panel_dir / "ratings.csv"), "--features", str(panel_dir / "features"),
                 "--test-workers", str(panel_dir / "test_workers.txt"), "--check-images",
                 str(panel_dir / "check_images.csv"), "--no-cv", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    version_dir = panel_dir / "features" / f"model_version={summary['model_version']}"
    assert summary["path"] == str(version_dir / PRIOR_FILE)
    prior = load_prior(summary["path"])
    assert prior is not None and prior.n_features == 20 and summary["raters"] == 10
    assert len(summary["excluded_workers"]) == 5  # the planted random labellers
    X = np.hstack([np.zeros((3, 20)), np.full((3, 1), 3.0)])
    mean, std = PriorPAM(prior).fit(X[:2], [4.0, 2.0]).predict(X, return_std=True)
    assert np.isfinite(mean).all() and (std > 0).all()
    # the human form
    assert main(["fit-prior", "--ratings", str(panel_dir / "ratings.csv"), "--features",
                 str(panel_dir / "features"), "--no-cv"]) == 0
    assert "taste prior for simulated-panel-seed0" in capsys.readouterr().out


def test_fit_prior_reports_bad_input(panel_dir, tmp_path):
    with pytest.raises(SystemExit, match="not a feature-store folder"):
        main(["fit-prior", "--ratings", str(panel_dir / "ratings.csv"), "--features", str(tmp_path / "nope")])
    bad = tmp_path / "r.csv"
    bad.write_text("worker,imagePair,score\nw,a,9\n")
    with pytest.raises(SystemExit, match=r"r\.csv:2: score '9' is outside"):
        main(["fit-prior", "--ratings", str(bad), "--features", str(panel_dir / "features")])
    other = tmp_path / "o.csv"
    other.write_text("worker,imagePair,score\nw1,nowhere.jpg,3\nw2,nowhere.jpg,4\n")
    with pytest.raises(SystemExit, match="0 rater"):
        main(["fit-prior", "--ratings", str(other), "--features", str(panel_dir / "features")])
