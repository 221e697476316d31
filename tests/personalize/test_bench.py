"""`pam bench personalize` runs at a small size (timings are not asserted; the protocol part is
covered by test_protocols' n_jobs test)."""

import argparse

from pam.bench import personalize as bench


def test_bench_runs_small_and_reports_ratios():
    args = argparse.Namespace(album=600, rated=15, table4_repeats=1, table4_scale=0.03, skip_table4=True,
                              quick=True)
    summary = bench.run(args)
    assert summary["fit_predict"]["predict_1000_ms"]["max_abs_diff_vs_libsvm"] < 1e-9
    assert summary["active_step"]["step_ms"]["speedup_vs_full"] > 0
    assert "| PAM fit, 100 ratings |" in summary["_render"]
    assert summary["prior"]["rerank_1000_with_std_ms"]["max_abs_diff"] < 1e-9
    assert "| posterior strategy step, 600 photos" in summary["_render"]
    explain = summary["explain"]
    for part in (explain, explain["prior_pam"], explain["prior_pam_linear"]):
        assert part["taste_100_ratings_1000_album_ms"]["speedup"] > 0
    assert "| Prior-PAM + residual SVR taste, 100 ratings" in summary["_render"]
