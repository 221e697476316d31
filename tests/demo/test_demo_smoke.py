"""`pam demo` end to end at a reduced size: the wheels' sample photos, the simulated panel, `pam
train`, `pam export`, `pam features` (Ray Data), `pam serve` (Ray Serve) and the HTTP sessions,
then the report. Everything real, only smaller (CI budget: a few minutes)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from PIL import Image

from tests.conftest import ROOT

pytestmark = [pytest.mark.ray, pytest.mark.torch, pytest.mark.slow]
STAGES = ["album", "properties", "panel", "train", "export", "features", "prior", "serve", "sessions", "report"]


def test_pam_demo_runs_the_whole_pipeline(tmp_path):
    pytest.importorskip("torch")
    out = tmp_path / "demo"
    argv = [sys.executable, "-m", "pam.cli", "demo", "--sample-photos", "--out", str(out), "--album-size", "40",
            "--users", "2", "--ratings", "12", "--epochs", "4",
            "--attribute-epochs", "1", "--content-epochs", "2", "--num-cpus", "2", "--no-serve", "--json"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=1200, cwd=ROOT)
    assert done.returncode == 0, f"pam demo failed:\n{done.stdout[-3000:]}\n{done.stderr[-6000:]}"
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert "failed" not in summary
    assert [s["name"] for s in summary["stages"]] == STAGES
    for stage in STAGES:  # every stage announced itself on stderr
        assert any(line.startswith(f"[{STAGES.index(stage) + 1}/{len(STAGES)}] {stage}") for line in done.stderr.splitlines())

    assert summary["album"]["kind"] == "sample-crops" and summary["album"]["photos"] == 40
    assert summary["panel"]["simulated"] and summary["panel"]["config"]["n_test_workers"] == 2
    features = summary["features"]
    assert features["rows_failed"] == 0 and features["processed"] + features["already_written"] == 40
    generic = summary["generic"]
    assert generic["model_version"].startswith("efficientnet_lite0-")
    assert -1 <= generic["rho_vs_users_mean"] <= 1
    personal = summary["personalization"]
    assert set(personal["curves"]) == {"active", "random"}
    for curve in personal["curves"].values():
        assert curve["n_ratings"] == list(range(1, personal["budget"] + 1))
    sessions = personal["sessions"]
    assert {s["strategy"] for s in sessions} == {"active", "random"} and len(sessions) == 4
    active = next(s for s in sessions if s["strategy"] == "active")
    # the demo fits a taste prior; the service serves it unless it lost to PAM in its own
    # cross-validation, and then suggests by the posterior strategy (no random start)
    from personalize.prior import load_prior
    from serving.online.prior_model import served

    if served(load_prior(summary["prior"]["path"])) is not None:
        assert set(active["phases"]) == {"active"}
    else:
        assert active["phases"][:10] == ["seed"] * 10 and "active" in active["phases"][10:]
    assert summary["service"]["requests"] > 4 * personal["budget"]
    assert [c.split()[1] for c in summary["commands"]] == ["train", "export", "features", "index", "fit-prior",
                                                           "serve"]
    assert summary["search_index"]["documents"] == 40  # the text index beside the feature table
    quality = summary["quality"]  # models and strategies measured in the report stage
    assert quality["users"] == 2 and quality["prior"] and set(quality["models"]["10"]) >= {"PAM", "Prior-PAM", "FPMF"}
    assert quality["budgets"] == [10] and "posterior / Prior-PAM" in quality["strategies"]

    page = Path(summary["files"]["report"]).read_text()
    assert "SIMULATED" in page and "CC BY 2.0" in page and "crops" in page
    assert "Personal models and rating strategies, measured" in page
    for key in ("timings", "curves", "figure3"):
        with Image.open(summary["files"][key]) as im:
            assert im.format == "PNG"
    assert (out / "model" / "model_card.md").is_file() and (out / "properties.parquet").is_file()
    assert len(summary["figure3"]["rows"]["personalized"]) == min(8, 16 - personal["budget"])

    # the service is gone: nothing listens where it served
    url = urlsplit(summary["service"]["url"])
    with socket.socket() as s, pytest.raises(OSError):
        s.settimeout(2)
        s.connect((url.hostname, url.port))
