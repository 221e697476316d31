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
