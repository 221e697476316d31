"""The report generator on small inputs: PNGs that are real images, an HTML page that states
what was simulated, and Figure 3's rows computed as the paper's figure shows them."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from PIL import Image

from pam.demo.report import figure3_rows, render_html, write_report
from pam.demo.sessions import SessionResult, mean_curves


def test_figure3_rows_rank_the_unrated_photos_by_each_score():
    ids = ["a", "b", "c", "d", "e"]
    personal = [4.0, 1.0, 3.0, 5.0, 2.0]
    generic = [1.0, 5.0, 4.0, 2.0, 3.0]
    truth = {"a": 5.0, "b": 1.0, "c": 3.0, "d": 4.0, "e": 2.0}
    fig = figure3_rows(ids, personal, generic, truth, rated={"d"}, k=2)
    assert [r["image_id"] for r in fig["rows"]["personalized"]] == ["a", "c"]  # d is rated: left out
    assert [r["image_id"] for r in fig["rows"]["generic"]] == ["b", "c"]
    assert fig["rows"]["generic"][0] == {"image_id": "b", "user_score": 1.0, "score": 5.0}
    assert fig["mean_user_score"] == {"generic": 2.0, "personalized": 4.0}


def test_mean_curves_average_users_per_strategy():
    a = SessionResult("u1", "active", "u1-a", n_ratings=[1, 2, 3], improvement=[0.0, 0.1, 0.2])
    b = SessionResult("u2", "active", "u2-a", n_ratings=[1, 2], improvement=[0.2, 0.3])
    r = SessionResult("u1", "random", "u1-r", n_ratings=[1, 2], improvement=[-0.1, math.nan])
    curves = mean_curves([a, b, r])
    assert curves["active"]["n_ratings"] == [1, 2]
    assert np.allclose(curves["active"]["mean"], [0.1, 0.2])
    assert curves["random"]["mean"][0] == -0.1 and math.isnan(curves["random"]["mean"][1])


def _summary(tmp_path: Path) -> tuple[dict, Path]:
    root = tmp_path / "album"
    (root / "x").mkdir(parents=True)
    ids = [f"x/p{k}.jpg" for k in range(10)]
    rng = np.random.default_rng(0)
    for image_id in ids:
        Image.fromarray(rng.integers(0, 255, (30, 40, 3), dtype=np.uint8)).save(root / image_id)
    truth = {i: float(k % 5 + 1) for k, i in enumerate(ids)}
    fig = figure3_rows(ids, list(rng.normal(3, 1, 10)), list(rng.normal(3, 1, 10)), truth, {ids[0]})
    stages = [{"name": "album", "title": "album: the photos", "seconds": 1.5, "items": 10, "unit": "images",
               "per_s": 6.7},
              {"name": "train", "title": "train: heads", "seconds": 12.0, "items": None, "unit": "images",
               "per_s": None}]
    curves = {"active": {"n_ratings": [1, 2, 3], "mean": [0.0, 0.05, 0.1], "per_user": {"u1": [0.0, 0.05, 0.1]}},
              "random": {"n_ratings": [1, 2, 3], "mean": [0.0, 0.0, 0.02], "per_user": {"u1": [0.0, 0.0, 0.02]}}}
    summary = {
        "out": str(tmp_path / "out"), "finished": "2026-01-01 00:00", "total_seconds": 13.5,
        "album": {"description": "10 photos <made up> for a test", "sources": [
            {"name": "chelsea", "licence": "CC0", "credit": "Stefan van der Walt", "url": "https://example.org/c"}]},
        "stages": stages,
        "panel": {"config": {"n_images": 10, "n_train_workers": 6, "n_test_workers": 1, "n_test_images": 4,
                             "n_random_labellers": 2}, "n_train_images": 6,
                  "statistics": {"excluded_workers": ["W0003"], "weighted_std_mean": 0.8}},
        "generic": {"backbone": "tiny", "model_version": "tiny-test-0", "validation_rho": 0.41,
                    "validation_images": 2, "rho_vs_users_mean": None, "attributes_rho": 0.25,
                    "content_accuracy": 0.5, "training_plot": "train/training.png",
                    "model_card": "model/model_card.md"},
        "personalization": {"budget": 3, "curves": curves, "final": {"active": 0.1, "random": 0.02},
                            "users": ["u1", "u2"]},
        "service": {"url": "http://127.0.0.1:1234", "requests": 30, "p50_ms": 4.0, "p99_ms": 9.5},
        "figure3": {"user": "u1", "n_ratings": 3, **fig,
                    "all_users_mean_user_score": {"generic": 3.25, "personalized": 3.5}},
        "curation_page": "http://127.0.0.1:1234/ui/?user=you",
        "commands": ["pam train --out x", "pam serve --features f"],
    }
    return summary, root


def test_write_report_makes_the_page_and_its_plots(tmp_path):
    summary, root = _summary(tmp_path)
    files = write_report(summary, tmp_path / "out", root)
    for key in ("timings", "curves", "figure3"):
        with Image.open(files[key]) as im:
            assert im.format == "PNG" and im.size[0] > 300 and im.size[1] > 200
            assert np.asarray(im.convert("L")).std() > 5  # something was drawn
    page = Path(files["report"]).read_text()
    assert "SIMULATED" in page and "not a measure of real taste" in page
    assert "&lt;made up&gt;" in page  # text is escaped
    for text in ("demo-timings.png", "demo-curves.png", "demo-figure3.png", "CC0", "Stefan van der Walt",
                 "album: the photos", "6.7 images/s", "0.410", "W0003", "pam serve --features f",
                 "http://127.0.0.1:1234/ui/?user=you", "0.100", "train/training.png",
                 "href='model/model_card.md'", "0.250", "not picked for the result",
                 "Over all 2 simulated users", "generic 3.25, personalized 3.50"):
        assert text in page, text


def test_report_without_figure3_or_service(tmp_path):
    summary, _ = _summary(tmp_path)
    del summary["figure3"], summary["curation_page"], summary["service"]
    html = render_html(summary, {"timings": "t.png", "curves": "c.png"})
    assert "Figure 3" not in html and "Curation page" not in html and "n/a" in html
