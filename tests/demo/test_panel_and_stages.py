"""The demo's simulated panel sized to an album, and its stage runner's failure messages."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from pam.demo.panel import RANDOM_LABELLERS, panel_config, simulate
from pam.demo.properties import PhotoProperties
from pam.demo.stages import StageFailed, Stages, run_json
from personalize.features import AES_FEAT_DIM, N_ATTRIBUTES, N_CONTENT


def _properties(n: int, seed: int = 0) -> PhotoProperties:
    rng = np.random.default_rng(seed)
    return PhotoProperties([f"a/p{k:03d}.jpg" for k in range(n)],
                           np.tanh(rng.normal(size=(n, N_ATTRIBUTES))).astype(np.float32),
                           rng.dirichlet(np.ones(N_CONTENT), n).astype(np.float32),
                           rng.normal(size=(n, AES_FEAT_DIM)).astype(np.float32),
                           rng.uniform(1, 5, n).astype(np.float32), np.zeros((n, 4), np.float32))


def test_panel_keeps_the_papers_structure_at_album_size(tmp_path):
    demo = simulate(_properties(80), n_users=3, seed=1, out=tmp_path / "panel")
    p = demo.panel
    test_ids = {str(i) for i, s in zip(p.properties.image_ids, p.properties.split, strict=True) if s == "test"}
    assert len(test_ids) == 32 and len(demo.train_ids) == 48
    assert len(demo.users) == 3
    for user in demo.users:
        assert set(user.image_ids) == test_ids  # every simulated user rates every test photo
        assert np.all(np.isin(user.scores, [1, 2, 3, 4, 5]))
    train_workers = set(p.train_workers)
    rated_by_train = set(p.ratings.images[np.isin(p.ratings.workers, list(train_workers))].tolist())
    assert not rated_by_train & test_ids  # the generic model never sees the users' photos
    assert set(demo.statistics["excluded_workers"]) == set(p.random_labellers)
    assert len(p.random_labellers) == RANDOM_LABELLERS
    for name in ("ratings", "test_workers", "check_images", "features"):
        assert (tmp_path / "panel").joinpath(demo.files[name].split("/")[-1]).exists()


def test_panel_config_refuses_an_album_too_small_to_train_on():
    with pytest.raises(ValueError, match="album-size"):
        panel_config(12, 2, 0)
    config = panel_config(300, 5, 0)
    assert (config.n_test_images, config.n_test_workers, config.test_ratings_range) == (120, 5, (120, 120))


def test_a_failing_stage_names_itself_and_what_to_do(tmp_path):
    stages = Stages(total=2)
    with pytest.raises(StageFailed) as info:
        with stages.stage("album", "album: the photos", "pass --photos DIR"):
            raise FileNotFoundError("no such folder /x")
    assert info.value.stage == "album" and "FileNotFoundError: no such folder /x" in str(info.value)
    assert "what to do: pass --photos DIR" in str(info.value)


def test_a_failing_child_command_shows_its_last_lines(tmp_path):
    argv = [sys.executable, "-c", "import sys; print('first'); print('the reason', file=sys.stderr); sys.exit(3)"]
    with pytest.raises(StageFailed) as info:
        run_json("train", argv, "read train.log", log_path=tmp_path / "train.log")
    assert "exited with status 3" in info.value.problem and "the reason" in info.value.problem
    assert "the reason" in (tmp_path / "train.log").read_text()
    ok = [sys.executable, "-c", "import json; print(json.dumps({'ok': 1}))"]
    assert run_json("x", ok, "") == {"ok": 1}


def test_pam_demo_reports_a_bad_photos_folder_as_a_failed_stage(tmp_path):
    out = subprocess.run([sys.executable, "-m", "pam.cli", "demo", "--photos", str(tmp_path / "missing"),
                          "--out", str(tmp_path / "out"), "--json"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 1
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    assert summary["failed"]["stage"] == "album" and "not a folder" in summary["failed"]["problem"]
    assert "stage 'album' failed" in out.stderr
