"""personalize.taste_recovery and `pam eval explain` on a small simulated panel."""

from __future__ import annotations

import argparse
import json

import numpy as np

from personalize.simulate import PanelConfig, simulate_panel
from personalize.taste_recovery import METHODS, taste_recovery, worker_inputs, worker_recovery


def test_recovery_beats_the_permutation_baseline_and_the_oracle_beats_both():
    panel = simulate_panel(PanelConfig().scaled(0.1))
    result = taste_recovery(panel, ks=(20, 100), repeats=3, seed=0)
    assert result["n_workers"] == len(panel.test_workers) and result["raw"].shape[-1] == len(METHODS)
    row = result["rows"][100]
    assert row["oracle"]["mean"] > row["pam"]["mean"] > row["permutation"]["mean"] + 0.1
    assert row["oracle"]["mean"] > 0.8
    again = taste_recovery(panel, ks=(20, 100), repeats=3, seed=0)
    np.testing.assert_array_equal(again["raw"], result["raw"])  # seeded: the same draws


def test_a_worker_with_fewer_ratings_than_k_is_left_out():
    panel = simulate_panel(PanelConfig().scaled(0.05))
    inputs = worker_inputs(panel, panel.test_workers[0])
    out = worker_recovery(*inputs, ks=(10, 10_000), repeats=2, seed=[0, 0])
    assert np.isfinite(out[0]).all() and np.isnan(out[1]).all()


def test_pam_eval_explain_writes_its_table_and_plot(tmp_path):
    from pam.commands import eval as ev

    parser = argparse.ArgumentParser()
    ev.add_arguments(parser)
    args = parser.parse_args(["explain", "--scale", "0.05", "--repeats", "2", "--ks", "10", "20",
                              "--jobs", "1", "--no-progress", "--out", str(tmp_path)])
    summary = ev.run(args)
    assert summary["protocol"] == "explain" and summary["panel_kind"] == "default"
    assert set(summary["rows"][10]) >= {"pam", "oracle", "permutation", "pam_minus_permutation"}
    for name in ("explain.md", "explain.png", "explain_raw.csv", "summary.json"):
        assert (tmp_path / name).stat().st_size > 0
    assert json.loads((tmp_path / "summary.json").read_text())["ks"] == [10, 20]
    assert "| 20 |" in ev.render(summary)


def test_the_robust_panels_true_taste_is_the_average_partial_effect_of_its_true_function():
    """Computed apart from the code under test: central differences of the worker's exact offset
    in the RAW true features (attributes along e_j, content along the simplex, e_k - c), averaged
    over the worker's photos, times each feature's s.d. there."""
    from personalize.robust_panel import simulate_robust_panel

    panel = simulate_robust_panel(PanelConfig().scaled(0.05))
    taste = panel.raters.taste
    mu, sd = taste.x_raw.mean(0), taste.x_raw.std(0)
    data, fm = panel.dataset(), panel.properties.features()
    for worker in panel.test_workers[:2]:
        X, y, y_oracle, truth = worker_inputs(panel, worker, data, fm)
        rows = fm.rows(data.worker_ratings(worker)[0])
        raw, index, h = taste.x_raw[rows], panel.worker_index[worker], 1e-5
        expected = np.empty(20)
        for j in range(20):
            step = np.zeros_like(raw)
            step[:, j] = 1.0
            if j >= 10:  # content: more of class j at the expense of the photo's mix
                step[:, 10:] -= raw[:, 10:]
            up = taste.offset(index, (raw + h * step - mu) / sd)
            down = taste.offset(index, (raw - h * step - mu) / sd)
            expected[j] = ((up - down) / (2 * h)).mean() * raw[:, j].std()
        np.testing.assert_allclose(truth, expected, rtol=1e-6, atol=1e-9)
        # the oracle's ratings: the generic score plus the worker's true taste, nothing else
        np.testing.assert_allclose(y_oracle, np.clip(X[:, -1] + panel.true_taste(worker, data.worker_ratings(worker)[0]),
                                                     1, 5))
        assert y.shape == y_oracle.shape


def test_recovery_on_the_robust_panel_beats_the_permutation_baseline():
    from personalize.robust_panel import simulate_robust_panel

    panel = simulate_robust_panel(PanelConfig().scaled(0.1))
    result = taste_recovery(panel, ks=(100,), repeats=3, seed=0)
    row = result["rows"][100]
    assert row["oracle"]["mean"] > row["pam"]["mean"] > row["permutation"]["mean"] + 0.1


def test_pam_eval_explain_on_the_robustness_panel(tmp_path):
    from pam.commands import eval as ev

    parser = argparse.ArgumentParser()
    ev.add_arguments(parser)
    args = parser.parse_args(["explain", "--panel-kind", "robust", "--scale", "0.05", "--repeats", "2",
                              "--ks", "10", "50", "--jobs", "1", "--no-progress", "--out", str(tmp_path)])
    summary = ev.run(args)
    assert summary["panel_kind"] == "robust" and "robustness panel" in summary["data"]
    assert np.isfinite(summary["rows"][50]["pam"]["mean"])
    assert (tmp_path / "explain.png").stat().st_size > 0
