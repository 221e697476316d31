"""Protocols on small panels (the full-size runs are commands: docs/personalize.md)."""

import json
from pathlib import Path

import numpy as np
import pytest

from personalize import protocols as P
from personalize.simulate import PanelConfig, simulate_panel

ROOT = Path(__file__).resolve().parents[2]


class _Small(tuple):
    panel = None


@pytest.fixture(scope="module")
def small():
    panel = simulate_panel(PanelConfig().scaled(0.03))
    out = _Small((panel.dataset(), panel.properties.features()))
    out.panel = panel
    return out


def test_table4_is_deterministic_and_independent_of_processes(small):
    data, fm = small
    fpmf = P.fpmf_for(data, fm, max_iter=20)
    one = P.table4(data, fm, ks=(10,), repeats=3, n_jobs=1, fpmf=fpmf)
    two = P.table4(data, fm, ks=(10,), repeats=3, n_jobs=2, fpmf=fpmf)
    np.testing.assert_array_equal(one["raw"], two["raw"])
    assert one["raw"].shape == (len(data.test_workers), 1, 3, len(P.TABLE4_METHODS))
    assert set(one["rows"][10]) == {"SVM", "FPMF", "PAM"}  # no prior, no oracle given
    assert np.isfinite(one["raw"][..., :3]).all()


def test_table4_with_the_prior_and_the_oracle(small):
    panel, data, fm = small.panel, *small
    prior = P.prior_for(data, fm, folds=2, ks=(10,), repeats=1)
    result = P.table4(data, fm, ks=(0, 10), repeats=2, n_jobs=1, prior=prior, oracle=panel.true_taste)
    rows = result["rows"]
    assert set(rows[10]) == {"SVM", "PAM", "Prior-PAM", "Oracle"}
    assert rows[0]["PAM"]["mean"] == 0.0  # no rating: PAM is the generic score
    assert rows[10]["Oracle"]["mean"] > rows[10]["PAM"]["mean"]
    for row in rows[10].values():
        assert row["helped"] + row["hurt"] <= row["users"] and np.isfinite(row["se_vs_PAM"])
    assert np.isfinite(rows[10]["Prior-PAM"]["headroom_share"])


def test_prior_never_sees_a_test_worker(small):
    data, fm = small
    prior = P.prior_for(data, fm, choose=False)
    # the test workers' ratings changed: the prior is the same
    from personalize.data import FlickrAES

    r = data.ratings
    flipped = np.where(np.isin(r.workers, sorted(data.test_workers)), 6 - r.scores, r.scores)
    other = FlickrAES(type(r)(r.workers, r.images, flipped), data.test_workers, data.worker_performance)
    again = P.prior_for(other, fm, choose=False)
    np.testing.assert_array_equal(prior.mu, again.mu)
    np.testing.assert_array_equal(prior.cov, again.cov)


def test_active_curves_start_from_the_shared_seed_set(small):
    data, fm = small
    result = P.active_curves(data, fm, budgets=[10, 14], trials=1, n_jobs=1)
    first = [c["mean"][0] for c in result["curves"].values()]
    assert np.allclose(first, first[0])  # at 10 images every strategy has the same seed set
    assert result["raw"].shape == (len(data.test_workers), 1, 5, 2, 2)  # no prior: no posterior strategy


def test_active_curves_with_the_posterior_strategy(small):
    data, fm = small
    prior = P.prior_for(data, fm, choose=False)
    result = P.active_curves(data, fm, budgets=[10, 13], trials=1, n_jobs=1, holdout=0.3, prior=prior,
                             strategies=["posterior", "random"])
    curves = result["curves"]
    assert set(curves) == {"posterior / PAM", "posterior / Prior-PAM", "random / PAM", "random / Prior-PAM"}
    assert curves["posterior / Prior-PAM"]["diff_vs_random"][0] == 0.0  # the shared random start
    assert np.isfinite(curves["posterior / Prior-PAM"]["se_vs_random"][1])


def test_active_curves_with_a_fixed_held_out_set(small):
    data, fm = small
    result = P.active_curves(data, fm, budgets=[10, 13], trials=1, n_jobs=1, holdout=0.3,
                             strategies=["active-pam", "random"])
    at10 = [c["mean"][0] for c in result["curves"].values() if c["model"] == "PAM"]
    assert np.isfinite(result["raw"][..., 0, :]).all() and at10[0] == at10[1]


def test_taste_experiment_ranks(small):
    data, fm = small
    result = P.taste_experiment(data, fm, ks=(10, 40), sigmas=(0.5,), runs=2, n_jobs=1)
    ranks = np.asarray(result["mean_fake_rank"])
    assert ranks.shape == (2, 1) and (ranks >= 1).all() and (ranks <= result["n_ranked"]).all()
    assert result["n_real_workers"] > 0


def test_tune_on_training_workers_only(small):
    data, fm = small
    grid = [{"nu": 0.5, "C": 1.0, "gamma": 0.1}, {"nu": 0.5, "C": 0.1, "gamma": 0.1}]
    result = P.tune_pam(data, fm, grid, ks=(10,), n_workers=3, repeats=1, n_jobs=1)
    assert not set(result["workers"]) & data.test_workers
    assert result["best"] in grid


def test_pam_eval_commands_write_tables_and_plots(tmp_path, capsys):
    from pam.cli import main

    panel_dir = tmp_path / "panel"
    assert main(["simulate", "--out", str(panel_dir), "--scale", "0.03"]) == 0
    runs = {
        "table4": ["--repeats", "2", "--fpmf-iter", "10", "--jobs", "1", "--ks", "0", "10"],
        "active": ["--trials", "1", "--budgets", "10", "12", "--strategies", "active-pam", "random", "--jobs", "1"],
        "taste": ["--ks", "10", "--sigmas", "0.5", "--runs", "2", "--jobs", "1"],
    }
    capsys.readouterr()
    for protocol, extra in runs.items():
        out = tmp_path / protocol
        assert main(["eval", protocol, "--panel", str(panel_dir), "--out", str(out), "--json", "--no-progress",
                     *extra]) == 0
        summary = json.loads(capsys.readouterr().out)
        for name in summary["files"]:
            assert (out / name).stat().st_size > 0, name
        assert (out / "summary.json").is_file()
    assert main(["eval", "table4", "--panel", str(panel_dir), "--out", str(tmp_path / "human"), "--repeats", "1",
                 "--fpmf-iter", "5", "--jobs", "1", "--no-progress", "--ks", "10", "--no-prior"]) == 0
    assert "| images per user | SVM | FPMF | PAM |" in capsys.readouterr().out
    # the robustness panel, generated in memory, with its oracle
    assert main(["eval", "table4", "--panel-kind", "robust", "--scale", "0.03", "--out", str(tmp_path / "robust"),
                 "--repeats", "1", "--fpmf-iter", "5", "--jobs", "1", "--no-progress", "--ks", "10", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["data"].startswith("robustness panel") and "Oracle" in summary["table"]["10"]
    assert summary["prior"]["cv"]["raters_scored"] >= 0


def test_pam_eval_reports_a_bad_ratings_file(tmp_path):
    from pam.cli import main

    bad = tmp_path / "r.csv"
    bad.write_text("worker,imagePair,score\nw,a,9\n")
    with pytest.raises(SystemExit, match=r"r\.csv:2: score '9' is outside \[1, 5\]"):
        main(["eval", "table4", "--ratings", str(bad), "--features", str(tmp_path / "none.parquet"),
              "--out", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()
