"""`pam train`, `pam export` and `pam bench scoring` from the command line: one JSON object on
stdout with --json, the files they promise, clear errors for bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytestmark = pytest.mark.torch
ROOT = Path(__file__).resolve().parents[2]


def pam(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pam.cli", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=600)


def test_train_then_export_from_the_command_line(photo_set, tmp_path):
    run = tmp_path / "run"
    out = pam("train", "--ratings", str(photo_set["ratings"]), "--images", str(photo_set["photos"]),
              "--attributes", str(photo_set["attributes"]), "--backbone", "tiny", "--epochs", "1",
              "--attribute-epochs", "1", "--content-epochs", "1", "--batch-size", "8",
              "--random-crops", "0", "--out", str(run), "--json")
    assert out.returncode == 0, out.stderr[-3000:]
    trained = json.loads(out.stdout)  # exactly one JSON object on stdout
    assert trained["model"] == str(run / "model.safetensors")
    assert trained["stages"]["aesthetics"]["last"]["val_rho"] is not None

    model_dir, repo = tmp_path / "model", tmp_path / "triton-cpu"
    out = pam("export", str(run), "--out", str(model_dir), "--triton-flavor", "cpu",
              "--triton-repo", str(repo), "--parity-images", "4", "--json")
    assert out.returncode == 0, out.stderr[-3000:]
    exported = json.loads(out.stdout)
    assert exported["parity"]["ok"] and exported["parity"]["max_abs_diff"] <= 1e-4
    assert exported["triton"]["written"] and exported["triton"]["flavor"] == "cpu"
    assert (repo / "pam_features" / "config.pbtxt").is_file()
    assert exported["model_version"] in (repo / "pam_features" / "config.pbtxt").read_text()
    assert "not installed" in exported["tensorrt"]["reason"] or "not asked" in exported["tensorrt"]["reason"]
    assert sorted(p.name for p in model_dir.iterdir()) == ["model_card.json", "model_card.md",
                                                            "pam_features.onnx", "pam_features.safetensors"]
    assert exported["files"]["torch_weights"] == str(model_dir / "pam_features.safetensors")
    card = json.loads((model_dir / "model_card.json").read_text())
    assert card["model_version"] == exported["model_version"]
    assert card["validation"]["aesthetics_spearman_rho"] == trained["stages"]["aesthetics"]["last"]["val_rho"]
    assert "pam train --backbone inception_bn" in (model_dir / "model_card.md").read_text()

    human = pam("export", str(run), "--out", str(tmp_path / "m2"), "--triton-flavor", "cpu",
                "--parity-images", "2")
    assert human.returncode != 0 and "--triton-flavor cpu needs --triton-repo" in human.stderr


def test_train_says_what_is_wrong_with_its_data(tmp_path):
    (tmp_path / "ratings.csv").write_text("worker,imagePair,score\nw1,a.jpg,7\n")
    out = pam("train", "--ratings", str(tmp_path / "ratings.csv"), "--images", str(tmp_path),
              "--backbone", "tiny", "--out", str(tmp_path / "run"))
    assert out.returncode != 0
    assert "ratings.csv:2: score '7' is outside [1, 5]" in out.stderr


def test_bench_scoring_reports_rates_ratio_and_peak(photo_set, tmp_path):
    out = pam("bench", "scoring", "--backbone", "tiny", "--photos", str(photo_set["photos"]),
              "--images", "4", "--eager-images", "2", "--batch", "2", "--repeat", "1",
              "--calibration-images", "2", "--out", str(tmp_path / "bench.json"), "--json")
    assert out.returncode == 0, out.stderr[-3000:]
    summary = json.loads(out.stdout)
    assert summary["fused_onnxruntime"]["images_per_s"] > 0
    assert summary["torch_eager_per_crop"]["images_per_s"] > 0
    assert summary["speedup"] == pytest.approx(summary["fused_onnxruntime"]["images_per_s"]
                                               / summary["torch_eager_per_crop"]["images_per_s"])
    assert summary["peak_gflops"] > 0 and 0 < summary["fused_onnxruntime"]["fraction_of_peak"] < 1
    assert "score_rho_vs_fp32" in summary["int8"]
    assert json.loads((tmp_path / "bench.json").read_text())["flops_per_image"] == summary["flops_per_image"]
